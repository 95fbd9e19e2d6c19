//! `quantile`: counts per log bucket (sign, exponent and the top 7 mantissa bits: relative
//! error at most 2^-8).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Acc, AccPlan, Family, Output, View};
use crate::input::row::num;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sketch {
    pub n: i64,
    pub buckets: BTreeMap<i32, u32>,
}

/// Bucket of a value for quantiles: sign, exponent and the top 7 mantissa bits.
#[inline]
pub fn bucket(x: f64) -> i32 {
    if x == 0.0 {
        return 0;
    }
    let b = ((x.abs().to_bits() >> 45) + 1) as i32;
    if x < 0.0 {
        -b
    } else {
        b
    }
}

/// The midpoint of a bucket: relative error at most 2^-8 for every value in it.
#[inline]
pub fn bucket_value(k: i32) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let m = f64::from_bits(((k.unsigned_abs() as u64 - 1) << 45) | (1u64 << 44));
    if k < 0 {
        -m
    } else {
        m
    }
}

impl Family for Sketch {
    const EAGER: bool = true;
    const INVERTIBLE: bool = false;

    fn reset(&mut self) {
        self.n = 0;
        self.buckets.clear();
    }

    fn merge(&mut self, _p: &AccPlan, other: &Self) {
        self.n += other.n;
        for (k, c) in &other.buckets {
            *self.buckets.entry(*k).or_insert(0) += c;
        }
    }

    #[inline(always)]
    fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, _lifetime: bool) {
        let AccPlan::Sketch { col } = p else {
            return;
        };
        if let Some(x) = num(row[1 + col]) {
            let b = bucket(x);
            self.n += sign;
            if sign > 0 {
                *self.buckets.entry(b).or_insert(0) += 1;
            } else if let Some(c) = self.buckets.get_mut(&b) {
                *c -= 1;
                if *c == 0 {
                    self.buckets.remove(&b);
                }
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.buckets.len() * 24
    }
}

/// `quantile`: the bucket holding rank `ceil(q n)` of the stored buckets corrected by the
/// query's rows.
pub fn eval(v: &View<'_>, o: &Output) -> f64 {
    let Some(i) = o.acc else {
        return f64::NAN;
    };
    let (Acc::Sketch(Sketch { n, buckets }), AccPlan::Sketch { col }) = (v.acc(i), &v.plans[i])
    else {
        return f64::NAN;
    };
    let (col, q) = (*col, o.q);
    // Corrections as a small sorted delta list, walked together with the settled buckets
    // (no copy of the bucket map).
    let mut delta: Vec<(i32, i64)> = Vec::new();
    for row in v.removed() {
        if let Some(x) = num(row[1 + col]) {
            delta.push((bucket(x), -1));
        }
    }
    for row in v.added() {
        if let Some(x) = num(row[1 + col]) {
            delta.push((bucket(x), 1));
        }
    }
    delta.sort_unstable_by_key(|d| d.0);
    let n = n + delta.iter().map(|d| d.1).sum::<i64>();
    if n <= 0 {
        return f64::NAN;
    }
    let rank = ((q * n as f64).ceil() as i64).clamp(1, n);
    let mut seen = 0i64;
    let mut base = buckets.iter().peekable();
    let mut d = 0;
    loop {
        let next_base = base.peek().map(|(&k, _)| k);
        let next_delta = delta.get(d).map(|x| x.0);
        let key = match (next_base, next_delta) {
            (None, None) => return f64::NAN,
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (Some(a), Some(b)) => a.min(b),
        };
        let mut count = 0i64;
        if next_base == Some(key) {
            count += *base.next().map(|(_, c)| c).unwrap_or(&0) as i64;
        }
        while d < delta.len() && delta[d].0 == key {
            count += delta[d].1;
            d += 1;
        }
        seen += count;
        if count > 0 && seen >= rank {
            return bucket_value(key);
        }
    }
}
