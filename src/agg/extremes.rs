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
    // (a sliding window's deque may be a longer window's: its entries from `start` on are this
    // window's deque, `GroupPlan::shared`)
    let best: Option<f64> = match v.stored_acc(i) {
        Acc::Extreme(Extreme(dq)) => match dq.front() {
            // the usual deque: its own window's, expired to the settled window's start
            Some(&(ts, x)) if ts >= start => Some(x),
            None => None,
            Some(_) => {
                let k = dq.partition_point(|&(ts, _)| ts < start);
                dq.get(k).map(|&(_, v)| v)
            }
        },
        _ => None,
    };
    // The extreme of a set under `total_cmp` (a total order: equal only for the same bits) is
    // one value whatever the order it is scanned in, so the deque's front against the rows'
    // extreme is the answer of a scan that starts from the front.
    pick(best, row_extremes(v, col), max).unwrap_or(f64::NAN)
}

/// The better of the deque's front `best` and the rows' extremes `rows` (min or max).
#[inline]
fn pick(best: Option<f64>, rows: Option<(f64, f64)>, max: bool) -> Option<f64> {
    let Some((lo, hi)) = rows else {
        return best;
    };
    let x = if max { hi } else { lo };
    let better = best.is_none_or(|b| {
        let c = x.total_cmp(&b);
        if max {
            c.is_gt()
        } else {
            c.is_lt()
        }
    });
    if better {
        Some(x)
    } else {
        best
    }
}

/// The least and greatest non-null value of column `col` over the buffered rows past the
/// settled region of the view (`None`: no such value), scanned once per query for all the
/// min / max outputs that read the same rows ([`super::ExtremesCache`]).
#[inline]
fn row_extremes(v: &View<'_>, col: usize) -> Option<(f64, f64)> {
    let r = v.corr.settled_add;
    if r.0 >= r.1 {
        return None;
    }
    row_extremes_cached(v, r, col)
}

/// [`row_extremes`] of a non-empty run of rows `r`: out of line (most reads have no rows past
/// the settled region; `eval` then needs no stack frame for the scan).
#[inline(never)]
fn row_extremes_cached(v: &View<'_>, r: (u64, u64), col: usize) -> Option<(f64, f64)> {
    let key = (r.0, r.1, col);
    if let Some(c) = v.extremes_cache.borrow().iter().find(|c| c.0 == key) {
        return c.1;
    }
    let ext = scan_extremes(v.rows.run(r), col);
    v.extremes_cache.borrow_mut().push((key, ext));
    ext
}

/// The least and greatest non-null value (`total_cmp`) of column `col` over `rows`.
#[inline]
fn scan_extremes<'a>(rows: impl Iterator<Item = &'a [u64]>, col: usize) -> Option<(f64, f64)> {
    let mut ext: Option<(f64, f64)> = None;
    for row in rows {
        if let Some(x) = num(row[1 + col]) {
            ext = Some(match ext {
                None => (x, x),
                Some((lo, hi)) => (
                    if x.total_cmp(&lo).is_lt() { x } else { lo },
                    if x.total_cmp(&hi).is_gt() { x } else { hi },
                ),
            });
        }
    }
    ext
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::row::NULL;
    use proptest::prelude::*;

    /// The general path: the deque's front (`best`), then every row in order, kept when strictly
    /// better (the scan `eval` did per output before the shared one).
    fn sequential(best: Option<f64>, words: &[u64], max: bool) -> Option<f64> {
        let mut best = best;
        for &w in words {
            if let Some(x) = num(w) {
                let c = x.total_cmp(&best.unwrap_or(x));
                if best.is_none() || (max && c.is_gt()) || (!max && c.is_lt()) {
                    best = Some(x);
                }
            }
        }
        best
    }

    fn word() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(NULL),
            Just(0f64.to_bits()),
            Just((-0f64).to_bits()),
            Just(f64::NAN.to_bits()),
            Just((-f64::NAN).to_bits()),
            Just(f64::INFINITY.to_bits()),
            Just(f64::NEG_INFINITY.to_bits()),
            (-1000i32..1000).prop_map(|c| (c as f64 / 8.0).to_bits()),
            any::<u64>().prop_filter("not the null word", |w| *w != NULL),
        ]
    }

    /// A feature set with min and max of one column over nested sliding windows (whose deques
    /// `Plan::new` shares), of a second column over one window (nothing to share), tiled and
    /// lifetime ones (never shared), and a sum (an eager accumulator beside them).
    fn nested_plan() -> crate::plan::Plan {
        let mut feats = Vec::new();
        for (w, extra) in [
            ("\"10m\"", ""),
            ("\"1h\"", ""),
            ("\"24h\"", ""),
            ("\"1h\"", r#", "hop": "15m""#),
            ("null", ""),
        ] {
            for a in ["min", "max"] {
                feats.push(format!(
                    r#"{{"agg": "{a}", "column": "v", "window": {w}{extra}, "name": "f{}"}}"#,
                    feats.len()
                ));
            }
        }
        for f in [
            r#"{"agg": "max", "column": "u", "window": "1h", "name": "u_max"}"#,
            r#"{"agg": "sum", "column": "v", "window": "1h", "name": "v_sum"}"#,
        ] {
            feats.push(f.to_string());
        }
        let doc = format!(
            r#"{{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "5m", "features": [{}]}}"#,
            feats.join(", ")
        );
        crate::plan::Plan::new(crate::spec::Spec::from_json(&doc).unwrap())
    }

    #[test]
    fn nested_sliding_windows_share_the_longest_deque() {
        let plan = nested_plan();
        let window = |g: &crate::plan::GroupPlan| (g.window, g.hop);
        let longest = plan
            .groups
            .iter()
            .position(|g| g.window == Some(24 * 3_600_000_000_000) && g.hop.is_none())
            .unwrap();
        let mut shared = 0;
        for g in &plan.groups {
            for (a, sh) in g.accs.iter().zip(&g.shared) {
                let nested_v = matches!(a, AccPlan::Extreme { col: 0, .. })
                    && g.hop.is_none()
                    && g.window.is_some_and(|w| w < 24 * 3_600_000_000_000);
                if nested_v {
                    let (gj, j) = sh.expect("a shorter sliding window's deque is shared");
                    assert_eq!(gj, longest);
                    assert_eq!(&plan.groups[gj].accs[j], a);
                    shared += 1;
                } else {
                    assert_eq!(*sh, None, "{:?} {:?}", window(g), a);
                }
            }
        }
        assert_eq!(shared, 4); // min and max over 10m and 1h
    }

    proptest! {
        // The shared deques (the general path: each window its own deque, `shared` cleared)
        // answer the same bits after any arrivals, settles and queries.
        #[test]
        fn shared_deques_answer_as_own_deques(
            steps in prop::collection::vec(
                (
                    prop_oneof![0i64..120, 0i64..900, 0i64..30_000],
                    0i64..300,
                    word(),
                    word(),
                    any::<bool>(),
                    0i64..8_000,
                ),
                1..120,
            ),
        ) {
            use crate::state::KeyState;
            const S: i64 = 1_000_000_000;
            let plan = nested_plan();
            let mut general = plan.clone();
            for g in general.groups.iter_mut() {
                g.shared.iter_mut().for_each(|s| *s = None);
            }
            let lateness = 300 * S;
            let t0 = 1_700_000_000 * S;
            let mut fast = KeyState::new(&plan, i64::MIN);
            let mut slow = KeyState::new(&general, i64::MIN);
            let (mut now, mut watermark) = (t0, i64::MIN);
            let n = plan.n_features();
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            for (advance, back, v, u, settle, ahead) in steps {
                now += advance * S;
                let ts = now - back * S;
                if ts >= fast.settled {
                    // columns in plan order: v, u
                    let vals = [v, u];
                    fast.insert(&plan, ts, &vals);
                    slow.insert(&general, ts, &vals);
                    watermark = watermark.max(ts);
                }
                if settle {
                    let s = watermark.saturating_sub(lateness);
                    fast.settle(&plan, s, lateness);
                    slow.settle(&general, s, lateness);
                }
                let t = fast.settled.max(t0) + ahead * S;
                fast.query(&plan, t, &mut a).unwrap();
                slow.query(&general, t, &mut b).unwrap();
                let bits = |x: &[f64]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&a), bits(&b));
            }
        }
    }

    proptest! {
        // One scan for min and max, combined with the deque's front, answers what the scan per
        // output answered, bit for bit (signed zeros, NaNs of both signs, nulls, infinities).
        #[test]
        fn shared_scan_matches_sequential(
            words in prop::collection::vec(word(), 0..40),
            front in prop::option::of(word().prop_filter("a value", |w| *w != NULL)),
        ) {
            let rows: Vec<u64> = words.iter().flat_map(|&w| [0u64, w]).collect();
            let ext = scan_extremes(rows.chunks_exact(2), 0);
            let front = front.map(f64::from_bits);
            for max in [false, true] {
                let want = sequential(front, &words, max).map(f64::to_bits);
                let got = pick(front, ext, max).map(f64::to_bits);
                prop_assert_eq!(got, want);
            }
        }
    }
}
