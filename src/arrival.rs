//! The arrival order of a batch: its rows by time, ties by value words (in column order), then
//! by row. A batch is one arrival and its events apply in this order, whatever their order in
//! the batch (`online::Engine::ingest`).
//!
//! [`order`] sorts `(time, row)` as single 128-bit integers (a sort of plain integers, no
//! comparator reading the columns), then sorts only the runs of equal times by their value
//! words: the same permutation as [`order_general`], a sort by the whole comparison, because
//! that comparison is a total order (rows are distinct) and has exactly one sorted
//! permutation.

use std::cmp::Ordering;

/// Rows `i` and `j` by their value words, column by column.
#[inline]
fn cmp_values(values: &[Vec<u64>], i: usize, j: usize) -> Ordering {
    for col in values {
        let o = col[i].cmp(&col[j]);
        if o.is_ne() {
            return o;
        }
    }
    Ordering::Equal
}

/// Rows `i` and `j` in arrival order, rows aside: by time, then by value words.
#[inline]
pub fn cmp(ts: &[i64], values: &[Vec<u64>], i: usize, j: usize) -> Ordering {
    ts[i].cmp(&ts[j]).then_with(|| cmp_values(values, i, j))
}

/// Row indices (fewer than 2^32 rows) in arrival order: by time, ties by value words, then by
/// row.
pub fn order(ts: &[i64], values: &[Vec<u64>]) -> Vec<u32> {
    debug_assert!(ts.len() <= u32::MAX as usize);
    // time with its sign bit flipped orders as an unsigned integer; the row below it
    let mut keys: Vec<u128> = ts
        .iter()
        .enumerate()
        .map(|(i, &t)| (((t as u64) ^ (1 << 63)) as u128) << 32 | i as u128)
        .collect();
    keys.sort_unstable();
    let mut out: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
    drop(keys);
    if values.is_empty() {
        return out;
    }
    // runs of one time, already by row: by value words, then by row
    let mut i = 0;
    while i < out.len() {
        let t = ts[out[i] as usize];
        let mut j = i + 1;
        while j < out.len() && ts[out[j] as usize] == t {
            j += 1;
        }
        if j - i > 1 {
            out[i..j].sort_unstable_by(|&a, &b| {
                cmp_values(values, a as usize, b as usize).then_with(|| a.cmp(&b))
            });
        }
        i = j;
    }
    out
}

/// [`order`] by one sort with the whole comparison (the reference for tests).
pub fn order_general(ts: &[i64], values: &[Vec<u64>]) -> Vec<u32> {
    let mut out: Vec<u32> = (0..ts.len() as u32).collect();
    out.sort_unstable_by(|&a, &b| cmp(ts, values, a as usize, b as usize).then_with(|| a.cmp(&b)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Value words that tie often, and the words of NaN, infinities, -0.0, huge and tiny
    /// magnitudes and the null word.
    fn word() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0u64..4),
            prop::sample::select(vec![
                f64::NAN.to_bits(),
                (-f64::NAN).to_bits(),
                f64::INFINITY.to_bits(),
                f64::NEG_INFINITY.to_bits(),
                (-0.0f64).to_bits(),
                0.0f64.to_bits(),
                f64::MAX.to_bits(),
                f64::MIN_POSITIVE.to_bits(),
                5e-324f64.to_bits(),
                (-1e300f64).to_bits(),
                crate::input::row::NULL,
            ]),
            any::<u64>(),
        ]
    }

    fn time() -> impl Strategy<Value = i64> {
        prop_oneof![
            (-3i64..3),
            prop::sample::select(vec![
                i64::MIN,
                i64::MIN + 1,
                -1,
                0,
                1,
                i64::MAX - 1,
                i64::MAX
            ]),
            any::<i64>(),
        ]
    }

    proptest! {
        // The integer sort with tie runs is the comparison sort, on times with many ties (equal
        // timestamps), the extremes of i64, and value words that tie or are special floats.
        #[test]
        fn fast_order_is_the_general_order(
            rows in prop::collection::vec((time(), word(), word()), 0..200),
            columns in 0usize..3,
        ) {
            let ts: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let values: Vec<Vec<u64>> = (0..columns)
                .map(|c| rows.iter().map(|r| if c == 0 { r.1 } else { r.2 }).collect())
                .collect();
            prop_assert_eq!(order(&ts, &values), order_general(&ts, &values));
        }
    }

    #[test]
    fn late_rows_go_first_and_ties_by_value_then_row() {
        let ts = [5, 3, 5, 5, -7, 3];
        let values = vec![vec![9, 1, 2, 9, 0, 1]];
        // -7; 3 (rows 1, 5: same value, by row); 5 (value 2, then the two 9s by row)
        assert_eq!(order(&ts, &values), vec![4, 1, 5, 2, 0, 3]);
        assert_eq!(order(&ts, &[]), vec![4, 1, 5, 0, 2, 3]);
        assert_eq!(order(&[], &values[..0]), Vec::<u32>::new());
    }
}
