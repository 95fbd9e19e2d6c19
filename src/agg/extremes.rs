//! `min`, `max`: a monotonic deque of (ts, value) over sliding windows (increasing values for
//! min, decreasing for max), a single extreme in summaries (lifetime windows, tiles).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Acc, AccPlan, Family, Output, View};
use crate::input::row::num;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Extreme(pub VecDeque<(i64, f64)>);

fn is_max(p: &AccPlan) -> bool {
    matches!(p, AccPlan::Extreme { max: true, .. })
}

impl Extreme {
    /// Drop entries older than `start` (the settled window moved on).
    #[inline]
    pub fn expire(&mut self, start: i64) {
        while self.0.front().is_some_and(|&(ts, _)| ts < start) {
            self.0.pop_front();
        }
    }
}

impl Family for Extreme {
    /// Needs events in time order: folded only into the settled region; expired by time.
    const EAGER: bool = false;
    const INVERTIBLE: bool = false;

    fn reset(&mut self) {
        self.0.clear();
    }

    fn merge(&mut self, p: &AccPlan, other: &Self) {
        let dq = &mut self.0;
        if let Some(&(ts, v)) = other.0.front() {
            let max = is_max(p);
            let better = dq.front().is_none_or(|&(_, cur)| {
                let c = v.total_cmp(&cur);
                if max {
                    c.is_gt()
                } else {
                    c.is_lt()
                }
            });
            if better {
                dq.clear();
                dq.push_back((ts, v));
            }
        }
    }

    #[inline(always)]
    fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, lifetime: bool) {
        let AccPlan::Extreme { col, max } = p else {
            return;
        };
        if sign < 0 {
            return;
        }
        let ts = row[0] as i64;
        let dq = &mut self.0;
        if let Some(x) = num(row[1 + col]) {
            let dominated = |old: f64| {
                let o = old.total_cmp(&x);
                if *max {
                    o.is_le()
                } else {
                    o.is_ge()
                }
            };
            if lifetime {
                if dq.front().is_none_or(|&(_, old)| dominated(old)) {
                    dq.clear();
                    dq.push_back((ts, x));
                }
            } else {
                while dq.back().is_some_and(|&(_, old)| dominated(old)) {
                    dq.pop_back();
                }
                dq.push_back((ts, x));
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() * 16
    }
}

/// `min` / `max`: the deque's front inside the window, against the buffered rows past the
/// settled region.
pub fn eval(v: &View<'_>, o: &Output) -> f64 {
    let Some(i) = o.acc else {
        return f64::NAN;
    };
    let (col, max) = match &v.plans[i] {
        AccPlan::Extreme { col, max } => (*col, *max),
        _ => return f64::NAN,
    };
    // summaries (lifetime, tiles) are already restricted to the window
    let start = if v.summarizing() { i64::MIN } else { v.start() };
    let mut best: Option<f64> = match v.acc(i) {
        Acc::Extreme(Extreme(dq)) => {
            let k = dq.partition_point(|&(ts, _)| ts < start);
            dq.get(k).map(|&(_, v)| v)
        }
        _ => None,
    };
    for row in v.rows.range(v.corr.settled_add) {
        if let Some(x) = num(row[1 + col]) {
            let better = best.is_none_or(|b| {
                let c = x.total_cmp(&b);
                if max {
                    c.is_gt()
                } else {
                    c.is_lt()
                }
            });
            if better {
                best = Some(x);
            }
        }
    }
    best.unwrap_or(f64::NAN)
}

/// `min` / `max` of a string column (lifetime: [`super::strings::eval`]); sliding: a scan of the window's buffered rows,
/// strings compared by their UTF-8 bytes. The answer is a string word ([`super::text_answer`]).
fn text_extreme(v: &View<'_>, o: &Output, max: bool) -> f64 {
    if let Some(i) = o.acc {
        let pick = if max {
            super::Pick::Max
        } else {
            super::Pick::Min
        };
        return super::strings::eval(v, o, i, pick);
    }
    let Some(col) = o.col else {
        return super::text_answer(None);
    };
    let c = v.corr;
    let mut best: Option<u64> = None;
    for row in v.rows.range((c.lo_q, c.hi_q)) {
        let w = row[1 + col];
        if w == crate::input::row::NULL {
            continue;
        }
        let better = best.is_none_or(|b| {
            let ord = v.texts.cmp(w, b);
            if max {
                ord.is_gt()
            } else {
                ord.is_lt()
            }
        });
        if better {
            best = Some(w);
        }
    }
    super::text_answer(best)
}

pub fn text_min(v: &View<'_>, o: &Output) -> f64 {
    text_extreme(v, o, false)
}

pub fn text_max(v: &View<'_>, o: &Output) -> f64 {
    text_extreme(v, o, true)
}
