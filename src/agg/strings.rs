//! `first`, `last`, `min`, `max` of a string column (`string_columns`) over a lifetime window:
//! the one (ts, identity word) that wins so far ([`TextPick`]), plus a scan of the buffered rows
//! past the settled region. Strings compare by their UTF-8 bytes ([`crate::text::Texts::cmp`]),
//! so folding a row needs the key's strings: settling calls [`TextPick::fold`] with them (see
//! [`super::Acc::fold_texts`]); the families' [`Family::apply`], which sees words only, leaves a
//! `TextPick` alone.
//!
//! Tiled (`hop=`) string features are refused by the spec: merging tiles would compare
//! strings too.

use serde::{Deserialize, Serialize};

use super::{Acc, AccPlan, Family, Output, View};
use crate::input::row::NULL;
use crate::text::Texts;

/// Which string a [`TextPick`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The earliest; at equal times the smallest string (as numbers take the smallest value).
    First,
    /// The latest; at equal times the largest string.
    Last,
    /// The smallest by UTF-8 bytes.
    Min,
    /// The largest by UTF-8 bytes.
    Max,
}

impl Pick {
    /// Whether `(ts, w)` beats the held `(cts, cw)`.
    #[inline]
    pub fn beats(self, texts: &Texts, (ts, w): (i64, u64), (cts, cw): (i64, u64)) -> bool {
        match self {
            Pick::First => ts < cts || (ts == cts && texts.cmp(w, cw).is_lt()),
            Pick::Last => ts > cts || (ts == cts && texts.cmp(w, cw).is_gt()),
            Pick::Min => texts.cmp(w, cw).is_lt(),
            Pick::Max => texts.cmp(w, cw).is_gt(),
        }
    }
}

/// The winning (ts, identity word) of the events folded in so far (`None`: no non-null string).
/// Its word is kept in the key's [`Texts`] by the sweep (`KeyState::sweep_texts`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TextPick(pub Option<(i64, u64)>);

impl TextPick {
    /// Fold one event row in (`texts` holds the strings of its words). Null is skipped.
    #[inline]
    pub fn fold(&mut self, p: &AccPlan, row: &[u64], texts: &Texts) {
        let AccPlan::TextPick { col, pick } = p else {
            return;
        };
        let w = row[1 + col];
        if w == NULL {
            return;
        }
        let cand = (row[0] as i64, w);
        if self.0.is_none_or(|cur| pick.beats(texts, cand, cur)) {
            self.0 = Some(cand);
        }
    }

    /// The word held, if any.
    pub fn word(&self) -> Option<u64> {
        self.0.map(|(_, w)| w)
    }
}

impl Family for TextPick {
    /// Needs events in time order (first / last): folded only into the settled region.
    const EAGER: bool = false;
    const INVERTIBLE: bool = false;

    fn reset(&mut self) {
        self.0 = None;
    }

    /// Tiles of strings are refused by the spec (merging compares strings, which this does not
    /// see): keeps `other` only into an empty pick.
    fn merge(&mut self, _p: &AccPlan, other: &Self) {
        if self.0.is_none() {
            self.0 = other.0;
        }
    }

    /// Words only: a `TextPick` is folded by [`TextPick::fold`], with the strings.
    #[inline(always)]
    fn apply(&mut self, _p: &AccPlan, _row: &[u64], _sign: i64, _lifetime: bool) {}

    fn heap_bytes(&self) -> usize {
        0
    }
}

/// A lifetime string output reading accumulator `i` (a [`TextPick`] of the settled region) and
/// the buffered rows past the settled region (in time order, all later than the settled ones).
pub fn eval(v: &View<'_>, o: &Output, i: usize, pick: Pick) -> f64 {
    let mut best = match v.acc(i) {
        Acc::TextPick(t) => t.0,
        _ => None,
    };
    if let Some(col) = o.col {
        for row in v.rows.range(v.corr.settled_add) {
            let w = row[1 + col];
            if w == NULL {
                continue;
            }
            let cand = (row[0] as i64, w);
            if best.is_none_or(|cur| pick.beats(v.texts, cand, cur)) {
                best = Some(cand);
            }
        }
    }
    super::text_answer(best.map(|b| b.1))
}
