//! A value as a bin code, and the counts of one column over a set of rows.
//!
//! Every row of a monitored column becomes one `u32` code: [`NULL_CODE`] for a null (and a NaN,
//! which counts as null), else the index of its bin, with the [`OUT_OF_RANGE`] flag set when the
//! value lies outside what the reference saw (a number below the reference's minimum or above
//! its maximum, a category outside its vocabulary). [`Counts`] adds codes: its size depends on
//! the number of bins only, never on the number of rows, and adding is commutative, so any
//! arrival order gives the same counts.

use serde::{Deserialize, Serialize};

/// The code of a null (or NaN) value.
pub const NULL_CODE: u32 = u32::MAX;
/// Flag of a value outside the reference's range or vocabulary (still counted in its bin).
pub const OUT_OF_RANGE: u32 = 1 << 31;

/// The bin of a number: bins are `(-inf, e0)`, `[e0, e1)`, ..., `[e_last, +inf)`, i.e. the
/// number of edges `<= x`. `x` must not be NaN.
#[inline]
pub fn bin_of(edges: &[f64], x: f64) -> usize {
    edges.partition_point(|e| *e <= x)
}

/// The code of a number against edges and the reference's `[min, max]` (NaN: null).
#[inline]
pub fn numeric_code(edges: &[f64], min: f64, max: f64, x: f64) -> u32 {
    if x.is_nan() {
        return NULL_CODE;
    }
    let b = bin_of(edges, x) as u32;
    if x < min || x > max {
        b | OUT_OF_RANGE
    } else {
        b
    }
}

/// Counts of one column over a set of rows: per bin, plus nulls and out-of-range values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub bins: Vec<u64>,
    pub nulls: u64,
    pub out_of_range: u64,
}

impl Counts {
    pub fn new(n_bins: usize) -> Counts {
        Counts {
            bins: vec![0; n_bins],
            nulls: 0,
            out_of_range: 0,
        }
    }

    /// Add one row's code (a bin index beyond the bins is counted in the last bin: codes
    /// come from [`numeric_code`] / the categorical reader, which never make one).
    #[inline]
    pub fn add(&mut self, code: u32) {
        if code == NULL_CODE {
            self.nulls += 1;
            return;
        }
        if code & OUT_OF_RANGE != 0 {
            self.out_of_range += 1;
        }
        let b = (code & !OUT_OF_RANGE) as usize;
        let last = self.bins.len().saturating_sub(1);
        if let Some(c) = self.bins.get_mut(b.min(last)) {
            *c += 1;
        }
    }

    /// Add every code.
    pub fn add_all(&mut self, codes: &[u32]) {
        for &c in codes {
            self.add(c);
        }
    }

    /// Add another set of counts of the same column.
    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            *a += b;
        }
        self.nulls += other.nulls;
        self.out_of_range += other.out_of_range;
    }

    /// Rows with a value (not null).
    pub fn non_null(&self) -> u64 {
        self.bins.iter().sum()
    }

    /// Every row counted.
    pub fn rows(&self) -> u64 {
        self.non_null() + self.nulls
    }

    pub fn is_empty(&self) -> bool {
        self.nulls == 0 && self.bins.iter().all(|&c| c == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_left_closed() {
        let e = [1.0, 2.0];
        assert_eq!(bin_of(&e, 0.5), 0);
        assert_eq!(bin_of(&e, 1.0), 1);
        assert_eq!(bin_of(&e, 1.5), 1);
        assert_eq!(bin_of(&e, 2.0), 2);
        assert_eq!(bin_of(&e, f64::INFINITY), 2);
        assert_eq!(numeric_code(&e, 0.0, 3.0, f64::NAN), NULL_CODE);
        assert_eq!(numeric_code(&e, 0.0, 3.0, 3.5), 2 | OUT_OF_RANGE);
        let mut c = Counts::new(3);
        for x in [0.5, 1.0, 3.5, f64::NAN] {
            c.add(numeric_code(&e, 0.0, 3.0, x));
        }
        assert_eq!(c.bins, vec![1, 1, 1]);
        assert_eq!((c.nulls, c.out_of_range, c.rows()), (1, 1, 4));
    }
}
