//! `distinct_count`: the multiset of a column's value words (f64 bits, or string identities).

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use super::{Acc, AccPlan, Family, Output, View};
use crate::input::row::NULL;

/// Count of each distinct value word.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Distinct(pub HashMap<u64, u32>);

/// -0.0 and 0.0 are one value.
#[inline]
fn norm(v: u64) -> u64 {
    if v == (-0.0f64).to_bits() {
        0
    } else {
        v
    }
}

impl Family for Distinct {
    const EAGER: bool = true;
    const INVERTIBLE: bool = false;

    fn reset(&mut self) {
        self.0.clear();
    }

    fn merge(&mut self, _p: &AccPlan, other: &Self) {
        for (k, c) in &other.0 {
            *self.0.entry(*k).or_insert(0) += c;
        }
    }

    #[inline(always)]
    fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, _lifetime: bool) {
        let AccPlan::Distinct { col } = p else {
            return;
        };
        let v = row[1 + col];
        if v != NULL {
            let key = norm(v);
            let map = &mut self.0;
            if sign > 0 {
                *map.entry(key).or_insert(0) += 1;
            } else if let Some(c) = map.get_mut(&key) {
                *c -= 1;
                if *c == 0 {
                    map.remove(&key);
                }
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() * 13 + 16
    }
}

/// `distinct_count`: the stored multiset corrected by the query's rows, without copying it.
pub fn eval(v: &View<'_>, o: &Output) -> f64 {
    let Some(i) = o.acc else {
        return f64::NAN;
    };
    let (Acc::Distinct(Distinct(map)), AccPlan::Distinct { col }) = (v.acc(i), &v.plans[i]) else {
        return f64::NAN;
    };
    if !v.corr.corrects() {
        return map.len() as f64;
    }
    let col = *col;
    let mut delta: HashMap<u64, i64> = HashMap::new();
    for row in v.removed() {
        if row[1 + col] != NULL {
            *delta.entry(norm(row[1 + col])).or_insert(0) -= 1;
        }
    }
    for row in v.added() {
        if row[1 + col] != NULL {
            *delta.entry(norm(row[1 + col])).or_insert(0) += 1;
        }
    }
    let mut n = map.len() as i64;
    for (k, d) in delta {
        let old = map.get(&k).copied().unwrap_or(0) as i64;
        let new = old + d;
        n += (new > 0) as i64 - (old > 0) as i64;
    }
    n as f64
}
