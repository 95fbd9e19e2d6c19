//! `decayed_sum`: exact sums of `x * 2^(offset / h)` per period of 32 half-lives, so that an
//! event's weight is fixed when it arrives and the decay to the query instant is one scaling.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{Acc, AccPlan, Family, Output, View};
use crate::exact::ExactSum;
use crate::input::row::num;
use crate::time::floor_div;

const DECAY_PERIOD_HALF_LIVES: i64 = 32;
const DECAY_MAX_AGE_PERIODS: i64 = 40;

#[inline]
fn decay_cell(ts: i64, h: i64) -> (i64, f64) {
    let p = DECAY_PERIOD_HALF_LIVES * h;
    let c = floor_div(ts, p);
    // ts - c * p, in 0..p
    let offset = ts.rem_euclid(p) as f64;
    (c, libm::exp2(offset / h as f64))
}

/// Decayed-sum cells (exact sums of `x * 2^(offset / h)`) by period, oldest first: one or two
/// per window, so inline, where a B-tree spent a ~700-byte node per key (and per tile).
/// Serialized as the map it replaced (the same bincode bytes: a length, then the pairs).
#[derive(Clone, Debug, Default)]
pub struct DecayCells(SmallVec<[(i64, ExactSum); 1]>);

impl DecayCells {
    /// The cell of period `c`, created empty if missing.
    #[inline]
    pub fn entry(&mut self, c: i64) -> &mut ExactSum {
        let i = match self.0.binary_search_by_key(&c, |e| e.0) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (c, ExactSum::new()));
                i
            }
        };
        &mut self.0[i].1
    }

    #[inline]
    fn remove(&mut self, c: i64) {
        if let Ok(i) = self.0.binary_search_by_key(&c, |e| e.0) {
            self.0.remove(i);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(i64) -> bool) {
        self.0.retain(|e| keep(e.0));
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &ExactSum)> {
        self.0.iter().map(|(c, e)| (*c, e))
    }

    /// Cells of periods `lo..=hi`, oldest first.
    fn range(&self, lo: i64, hi: i64) -> impl Iterator<Item = (i64, &ExactSum)> {
        let from = self.0.partition_point(|e| e.0 < lo);
        let to = self.0.partition_point(|e| e.0 <= hi);
        self.0[from..to.max(from)].iter().map(|(c, e)| (*c, e))
    }

    /// Forget cells too old to matter at settled point `s` (lifetime windows).
    pub fn age(&mut self, p: &AccPlan, s: i64) {
        if let AccPlan::Decay { half_life, .. } = p {
            let (cs, _) = decay_cell(s, *half_life);
            self.retain(|c| cs - c <= DECAY_MAX_AGE_PERIODS);
        }
    }
}

impl Serialize for DecayCells {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(c, e)| (c, e)))
    }
}

impl<'de> Deserialize<'de> for DecayCells {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = BTreeMap::<i64, ExactSum>::deserialize(d)?;
        Ok(DecayCells(map.into_iter().collect()))
    }
}

impl Family for DecayCells {
    const EAGER: bool = true;
    const INVERTIBLE: bool = false;

    fn reset(&mut self) {
        self.0.clear();
    }

    fn merge(&mut self, _p: &AccPlan, other: &Self) {
        for (c, e) in other.iter() {
            self.entry(c).add_assign(e);
        }
    }

    #[inline(always)]
    fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, _lifetime: bool) {
        let AccPlan::Decay { col, half_life } = p else {
            return;
        };
        if let Some(x) = num(row[1 + col]) {
            let (c, w) = decay_cell(row[0] as i64, *half_life);
            let term = x * w;
            let cell = self.entry(c);
            if sign > 0 {
                cell.add(term);
            } else {
                cell.sub(term);
                if cell.is_zero() {
                    self.remove(c);
                }
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        let heap = if self.0.spilled() {
            self.0.capacity() * std::mem::size_of::<(i64, ExactSum)>()
        } else {
            0
        };
        heap + self
            .0
            .iter()
            .map(|(_, e)| e.bytes() - std::mem::size_of::<ExactSum>())
            .sum::<usize>()
    }
}

/// `decayed_sum` at the query instant: the live cells scaled to the query's period, corrected
/// term by term by the query's rows, then decayed from the period start to `t`.
pub fn eval(v: &View<'_>, o: &Output) -> f64 {
    let Some(i) = o.acc else {
        return f64::NAN;
    };
    let (Acc::Decay(cells), AccPlan::Decay { half_life, col }) = (v.acc(i), &v.plans[i]) else {
        return f64::NAN;
    };
    let (h, col, t) = (*half_life, *col, v.t);
    let (ct, w) = decay_cell(t, h);
    let lo = ct.saturating_sub(DECAY_MAX_AGE_PERIODS);
    if !v.corr.corrects() {
        // No corrections (a query at "now", or backfill): one cell is the total; several (a
        // window across a period boundary) add up in an i128 when they fit.
        let mut live = cells.range(lo, ct);
        if let (Some((c, cell)), None) = (live.next(), live.next()) {
            return cell.to_f64_scaled((-(ct - c) * DECAY_PERIOD_HALF_LIVES) as i32) / w;
        }
        if let Some(total) = cells_i128(cells.range(lo, ct), ct) {
            return total / w;
        }
    }
    let (removed, added) = (v.removed(), v.added());
    let mut total = ExactSum::new();
    // Cells after `ct` hold only events after `t` (the eager region of a query in the past):
    // they and their corrections are left out whole.
    for (c, cell) in cells.range(lo, ct) {
        let mut scaled = cell.clone();
        scaled.scale_pow2((-(ct - c) * DECAY_PERIOD_HALF_LIVES) as i32);
        total.add_assign(&scaled);
    }
    // Corrections term by term, exactly: the same exact total as correcting the cells.
    for (row, sign) in removed.map(|r| (r, -1)).chain(added.map(|r| (r, 1))) {
        if let Some(x) = num(row[1 + col]) {
            let (c, wt) = decay_cell(row[0] as i64, h);
            if c > ct || ct - c > DECAY_MAX_AGE_PERIODS {
                continue;
            }
            total.add_pow2_scaled(
                x * wt,
                (-(ct - c) * DECAY_PERIOD_HALF_LIVES) as i32,
                sign < 0,
            );
        }
    }
    // w = 2^((t - ct*P)/h) >= 1: dividing by it is the decay from the cell start to t.
    total.to_f64() / w
}

/// `2^e` for a normal exponent `e`.
#[inline]
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// The exact total of `cells`, each scaled to the period `ct` (`2^(-P (ct - c))`), rounded to
/// the nearest f64: the same value as `to_f64` of their [`ExactSum`] total, computed in an i128
/// at the cells' lowest exponent. `None` when a cell or the total leaves the i128, or the
/// exponent the range where `i128 * 2^exp` rounds in one step (the general path answers).
#[inline]
fn cells_i128<'a>(cells: impl Iterator<Item = (i64, &'a ExactSum)>, ct: i64) -> Option<f64> {
    let mut parts: SmallVec<[(i128, i64); 2]> = SmallVec::new();
    for (c, cell) in cells {
        let (v, e) = cell.as_i128()?;
        if v != 0 {
            parts.push((v, e as i64 - (ct - c) * DECAY_PERIOD_HALF_LIVES));
        }
    }
    let Some(low) = parts.iter().map(|p| p.1).min() else {
        return Some(0.0);
    };
    let mut total: i128 = 0;
    for (v, e) in parts {
        let sh = (e - low) as u32;
        if sh >= 127 {
            return None;
        }
        let shifted = v << sh;
        if shifted >> sh != v {
            return None;
        }
        total = total.checked_add(shifted)?;
    }
    if total == 0 {
        return Some(0.0);
    }
    if !(-1000..=800).contains(&low) {
        return None;
    }
    Some(crate::exact::i128_to_f64(total) * pow2(low as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_cells_encode_like_the_map_they_replaced() {
        let mut map = BTreeMap::new();
        let mut cells = DecayCells::default();
        for (c, x) in [(7i64, 1.5f64), (-3, 2.25), (7, 0.1), (40, -8.0)] {
            map.entry(c).or_insert_with(ExactSum::new).add(x);
            cells.entry(c).add(x);
        }
        let opts = bincode::DefaultOptions::new();
        use bincode::Options;
        let a = opts.serialize(&map).unwrap();
        let b = opts.serialize(&cells).unwrap();
        assert_eq!(a, b);
        let back: DecayCells = opts.deserialize(&a).unwrap();
        let got: Vec<(i64, f64)> = back.iter().map(|(c, e)| (c, e.to_f64())).collect();
        assert_eq!(got, vec![(-3, 2.25), (7, 1.6), (40, -8.0)]);
        assert_eq!(
            back.range(0, 39).map(|(c, _)| c).collect::<Vec<_>>(),
            vec![7]
        );
        let mut back = back;
        back.remove(7);
        back.retain(|c| c > 0);
        assert_eq!(back.iter().map(|(c, _)| c).collect::<Vec<_>>(), vec![40]);
    }

    proptest::proptest! {
        // The i128 total of several cells (a read with no corrections) is the general path's:
        // `to_f64` of the cells' exact total, each scaled to the query's period, whenever it
        // answers; everyday cells (values times weights up to 2^32) always take it.
        #[test]
        fn cells_i128_is_the_exact_total(
            cells in proptest::collection::vec(
                (0i64..4, proptest::collection::vec((-(1i64 << 40)..(1i64 << 40), -60i32..60), 1..6)),
                0..4,
            ),
            ct in 0i64..5,
        ) {
            let mut dc = DecayCells::default();
            for (c, xs) in &cells {
                for &(m, e) in xs {
                    dc.entry(*c).add(m as f64 * 2f64.powi(e));
                }
            }
            let mut total = ExactSum::new();
            for (c, cell) in dc.range(ct - DECAY_MAX_AGE_PERIODS, ct) {
                let mut scaled = cell.clone();
                scaled.scale_pow2((-(ct - c) * DECAY_PERIOD_HALF_LIVES) as i32);
                total.add_assign(&scaled);
            }
            let got = cells_i128(dc.range(ct - DECAY_MAX_AGE_PERIODS, ct), ct);
            if let Some(x) = got {
                proptest::prop_assert_eq!(x.to_bits(), total.to_f64().to_bits());
            }
            let everyday = cells.iter().all(|(_, xs)| xs.iter().all(|&(_, e)| (-20..20).contains(&e)));
            if everyday && cells.iter().all(|(c, _)| ct - c <= 1) {
                proptest::prop_assert!(got.is_some());
            }
        }
    }
}
