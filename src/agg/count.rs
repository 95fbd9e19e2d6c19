//! `count`: of events (from row positions: no accumulator), or of a column's non-null values
//! ([`NonNull`]).

use serde::{Deserialize, Serialize};

use super::{Acc, AccPlan, Family, Output, View};
use crate::input::row::NULL;

/// Non-null values of a column.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NonNull(pub i64);

impl Family for NonNull {
    const EAGER: bool = true;
    const INVERTIBLE: bool = true;

    fn reset(&mut self) {
        self.0 = 0;
    }

    fn merge(&mut self, _p: &AccPlan, other: &Self) {
        self.0 += other.0;
    }

    #[inline(always)]
    fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, _lifetime: bool) {
        if let AccPlan::NonNull { col } = p {
            if row[1 + col] != NULL {
                self.0 += sign;
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        0
    }
}

/// `count`: of a column's non-null values, or (no column) of every event in the window.
pub fn eval(v: &View<'_>, o: &Output) -> f64 {
    if let Some(i) = o.acc {
        return match v.acc(i) {
            Acc::NonNull(n) => n.0 as f64,
            _ => f64::NAN,
        };
    }
    let c = v.corr;
    // Absolute positions count every row ever stored, evicted ones included, so for a lifetime
    // group `hi` is the number of settled events.
    if let Some(h) = v.hop {
        let first = crate::time::floor_div(v.t, h).saturating_sub(v.window.unwrap_or(0) / h);
        let (a0, a1) = c.settled_add;
        ((v.tile_events)(v.group, first) + (a1 - a0)) as f64
    } else if v.window.is_none() {
        // every row before `hi_q`, evicted ones included
        c.hi_q as f64
    } else {
        (c.hi_q - c.lo_q) as f64
    }
}
