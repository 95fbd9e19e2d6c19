//! `first`, `last`, `time_since_last`: over sliding windows, scans of the buffered rows (which
//! are sorted by time); over lifetime windows and tiles, the earliest and latest (ts, value)
//! ([`Edges`]) plus a scan of the rows past the settled region.

use serde::{Deserialize, Serialize};

use super::{Acc, AccPlan, Family, Output, Rows, View};
use crate::input::row::num;

/// Earliest and latest (ts, value) of a column, or (no column) of any event. Ties: the smaller
/// value is first, the larger last.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Edges {
    pub first: Option<(i64, f64)>,
    pub last: Option<(i64, f64)>,
}

#[inline]
fn total_lt(a: (i64, f64), b: (i64, f64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1.total_cmp(&b.1).is_lt())
}

impl Family for Edges {
    /// Needs events in time order: folded only into the settled region.
    const EAGER: bool = false;
    const INVERTIBLE: bool = false;

    fn reset(&mut self) {
        *self = Edges::default();
    }

    fn merge(&mut self, _p: &AccPlan, other: &Self) {
        if let Some(f) = other.first {
            if self.first.is_none_or(|cur| total_lt(f, cur)) {
                self.first = Some(f);
            }
        }
        if let Some(l) = other.last {
            if self.last.is_none_or(|cur| total_lt(cur, l)) {
                self.last = Some(l);
            }
        }
    }

    #[inline(always)]
    fn apply(&mut self, p: &AccPlan, row: &[u64], _sign: i64, _lifetime: bool) {
        let AccPlan::Edges { col } = p else {
            return;
        };
        let ts = row[0] as i64;
        let x = match col {
            Some(c) => match num(row[1 + c]) {
                Some(x) => x,
                None => return,
            },
            None => 0.0,
        };
        if self.first.is_none_or(|f| total_lt((ts, x), f)) {
            self.first = Some((ts, x));
        }
        if self.last.is_none_or(|l| total_lt(l, (ts, x))) {
            self.last = Some((ts, x));
        }
    }

    fn heap_bytes(&self) -> usize {
        0
    }
}

fn edges<'a>(v: &View<'a>, o: &Output) -> Option<&'a Edges> {
    match o.acc.map(|i| v.acc(i)) {
        Some(Acc::Edges(e)) => Some(e),
        _ => None,
    }
}

/// Earliest non-null value in rows `from..to` (ties: smallest value).
fn scan_first(rows: Rows<'_>, from: u64, to: u64, col: usize) -> f64 {
    let mut best: Option<(i64, f64)> = None;
    for row in rows.range((from, to)) {
        let ts = row[0] as i64;
        if let Some((bts, _)) = best {
            if ts > bts {
                break;
            }
        }
        if let Some(x) = num(row[1 + col]) {
            if best.is_none_or(|b| total_lt((ts, x), b)) {
                best = Some((ts, x));
            }
        }
    }
    best.map(|b| b.1).unwrap_or(f64::NAN)
}

/// Latest non-null (ts, value) in rows `from..to` (ties: largest value); `col = None`: any row.
fn scan_last(rows: Rows<'_>, from: u64, to: u64, col: Option<usize>) -> Option<(i64, f64)> {
    let mut best: Option<(i64, f64)> = None;
    for row in rows.range((from, to)).rev() {
        let ts = row[0] as i64;
        if let Some((bts, _)) = best {
            if ts < bts {
                break;
            }
        }
        let x = match col {
            Some(c) => num(row[1 + c]),
            None => Some(0.0),
        };
        if let Some(x) = x {
            if best.is_none_or(|b| total_lt(b, (ts, x))) {
                best = Some((ts, x));
            }
        }
    }
    best
}

pub fn first(v: &View<'_>, o: &Output) -> f64 {
    let col = o.col.unwrap_or(0);
    let c = v.corr;
    if o.acc.is_some() {
        match edges(v, o).and_then(|e| e.first) {
            Some((_, x)) => x,
            None => scan_first(v.rows, c.settled_add.0, c.settled_add.1, col),
        }
    } else {
        scan_first(v.rows, c.lo_q, c.hi_q, col)
    }
}

pub fn last(v: &View<'_>, o: &Output) -> f64 {
    let c = v.corr;
    let from = if o.acc.is_some() {
        c.settled_add.0
    } else {
        c.lo_q
    };
    match scan_last(v.rows, from, c.hi_q, o.col) {
        Some((_, x)) => x,
        None => match edges(v, o).and_then(|e| e.last) {
            Some((_, x)) => x,
            None => f64::NAN,
        },
    }
}

/// Seconds from the latest event in the window to the query instant.
pub fn time_since_last(v: &View<'_>, o: &Output) -> f64 {
    let c = v.corr;
    let from = if o.acc.is_some() {
        c.settled_add.0
    } else {
        c.lo_q
    };
    let last_ts = if c.hi_q > from {
        Some(v.rows.ts(c.hi_q - 1))
    } else {
        edges(v, o).and_then(|e| e.last).map(|(ts, _)| ts)
    };
    match last_ts {
        // an i64 difference converts as its i128 does (both round to nearest), in one instruction
        Some(ts) => match v.t.checked_sub(ts) {
            Some(d) => d as f64 / 1e9,
            None => (v.t as i128 - ts as i128) as f64 / 1e9,
        },
        None => f64::NAN,
    }
}

/// `first` of a string column (lifetime: [`super::strings::eval`]): the earliest non-null string in the window;
/// among events at the same earliest time, the smallest string (by UTF-8 bytes), as numbers
/// take the smallest value.
pub fn text_first(v: &View<'_>, o: &Output) -> f64 {
    if let Some(i) = o.acc {
        return super::strings::eval(v, o, i, super::Pick::First);
    }
    let Some(col) = o.col else {
        return super::text_answer(None);
    };
    let c = v.corr;
    let mut best: Option<(i64, u64)> = None;
    for row in v.rows.range((c.lo_q, c.hi_q)) {
        let ts = row[0] as i64;
        if best.is_some_and(|(bts, _)| ts > bts) {
            break;
        }
        let w = row[1 + col];
        if w == crate::input::row::NULL {
            continue;
        }
        if best.is_none_or(|(_, b)| v.texts.cmp(w, b).is_lt()) {
            best = Some((ts, w));
        }
    }
    super::text_answer(best.map(|b| b.1))
}

/// `last` of a string column (lifetime: [`super::strings::eval`]): the latest non-null string in the window;
/// among events at the same latest time, the largest string.
pub fn text_last(v: &View<'_>, o: &Output) -> f64 {
    if let Some(i) = o.acc {
        return super::strings::eval(v, o, i, super::Pick::Last);
    }
    let Some(col) = o.col else {
        return super::text_answer(None);
    };
    let c = v.corr;
    let mut best: Option<(i64, u64)> = None;
    for row in v.rows.range((c.lo_q, c.hi_q)).rev() {
        let ts = row[0] as i64;
        if best.is_some_and(|(bts, _)| ts < bts) {
            break;
        }
        let w = row[1 + col];
        if w == crate::input::row::NULL {
            continue;
        }
        if best.is_none_or(|(_, b)| v.texts.cmp(w, b).is_gt()) {
            best = Some((ts, w));
        }
    }
    super::text_answer(best.map(|b| b.1))
}
