//! `sum`, `mean`, `var`, `std`: exact sums of a column's values (and of their squares).

use serde::{Deserialize, Serialize};

use super::{Acc, AccPlan, Family, Output, View};
use crate::exact::{
    dd_div, div_exact, mul_u128, mul_u192_u64, shl256, sub256, u256_pair, ExactSum,
};
use crate::input::row::num;

/// Count, exact sum and (for var / std) exact sum of squares of the non-null values.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Moments {
    pub n: i64,
    pub s1: ExactSum,
    pub s2: ExactSum,
}

impl Family for Moments {
    const EAGER: bool = true;
    const INVERTIBLE: bool = true;

    fn reset(&mut self) {
        self.n = 0;
        self.s1 = ExactSum::new();
        self.s2 = ExactSum::new();
    }

    fn merge(&mut self, _p: &AccPlan, other: &Self) {
        self.n += other.n;
        self.s1.add_assign(&other.s1);
        self.s2.add_assign(&other.s2);
    }

    #[inline(always)]
    fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, _lifetime: bool) {
        if let AccPlan::Moments { col, squares } = p {
            if let Some(x) = num(row[1 + col]) {
                self.n += sign;
                ExactSum::fold_moment(&mut self.s1, squares.then_some(&mut self.s2), x, sign < 0);
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.s1.bytes() + self.s2.bytes() - 2 * std::mem::size_of::<ExactSum>()
    }
}

fn moments<'a>(v: &View<'a>, o: &Output) -> Option<&'a Moments> {
    match o.acc.map(|i| v.acc(i)) {
        Some(Acc::Moments(m)) => Some(m),
        _ => None,
    }
}

pub fn sum(v: &View<'_>, o: &Output) -> f64 {
    moments(v, o).map_or(f64::NAN, |m| m.s1.to_f64())
}

pub fn mean(v: &View<'_>, o: &Output) -> f64 {
    match moments(v, o) {
        Some(m) if m.n != 0 => div_exact(&m.s1, m.n as f64),
        _ => f64::NAN,
    }
}

/// The sample variance of the output's accumulator, computed once per query (var and std of
/// one column share it).
fn cached_var(v: &View<'_>, o: &Output) -> f64 {
    let Some(i) = o.acc else {
        return f64::NAN;
    };
    let key = (v.group, i);
    if let Some(var) = v.var_cache.get(key) {
        return var;
    }
    let var = moments(v, o).map_or(f64::NAN, |m| variance(m.n, &m.s1, &m.s2));
    v.var_cache.put(key, var);
    var
}

pub fn var(v: &View<'_>, o: &Output) -> f64 {
    cached_var(v, o)
}

pub fn std(v: &View<'_>, o: &Output) -> f64 {
    cached_var(v, o).sqrt()
}

/// Sample variance: `(n * S2 - S1^2) / (n (n - 1))`, numerator exact.
pub fn variance(n: i64, s1: &ExactSum, s2: &ExactSum) -> f64 {
    if n < 2 {
        return f64::NAN;
    }
    let d = n as f64 * (n - 1) as f64;
    let num = match variance_numerator(n as u64, s1, s2) {
        Some((mag, exp)) => {
            if let Some((hi, lo)) = u256_pair(mag, exp) {
                return dd_div(hi, lo, d).max(0.0);
            }
            ExactSum::from_u256(false, mag, exp)
        }
        None => {
            let mut num = s2.mul_u64(n as u64);
            num.add_assign(&s1.square().negated());
            num
        }
    };
    div_exact(&num, d).max(0.0)
}

/// `n * S2 - S1^2` exactly in fixed-width integers when S1 fits in i128, S2 in 192 bits and the aligned
/// terms in 256 bits (sums of everyday values: the numerator of nearly every variance); `None`
/// otherwise. The same exact value as the general computation, so the same answer.
fn variance_numerator(n: u64, s1: &ExactSum, s2: &ExactSum) -> Option<([u64; 4], i32)> {
    let (a, ea) = s1.as_i128()?;
    let (b, eb) = s2.as_u192()?;
    let a = a.unsigned_abs();
    // x = n * b * 2^eb, y = a^2 * 2^(2 ea), aligned at the lower exponent c
    let e2a = ea.checked_mul(2)?;
    let c = eb.min(e2a);
    let x = shl256(mul_u192_u64(b, n), (eb - c) as u32)?;
    let y = shl256(mul_u128(a, a), (e2a - c) as u32)?;
    let (num, borrow) = sub256(x, y);
    if borrow {
        return None;
    }
    Some((num, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exact::u256_pair;
    use proptest::prelude::*;

    fn general(n: u64, s1: &ExactSum, s2: &ExactSum) -> ExactSum {
        let mut num = s2.mul_u64(n);
        num.add_assign(&s1.square().negated());
        num
    }

    #[test]
    fn wide_products_match_u128_halves() {
        let a = u128::MAX;
        // (2^128 - 1)^2 = 2^256 - 2^129 + 1
        assert_eq!(mul_u128(a, a), [1, 0, u64::MAX - 1, u64::MAX]);
        assert_eq!(
            mul_u192_u64([u64::MAX; 3], 2),
            [u64::MAX - 1, u64::MAX, u64::MAX, 1]
        );
        assert_eq!(shl256([1, 0, 0, 0], 255), Some([0, 0, 0, 1 << 63]));
        assert_eq!(shl256([2, 0, 0, 0], 255), None);
        assert_eq!(shl256([u64::MAX, 1, 0, 0], 64), Some([0, u64::MAX, 1, 0]));
        assert_eq!(
            sub256([0, 1, 0, 0], [1, 0, 0, 0]),
            ([u64::MAX, 0, 0, 0], false)
        );
        assert!(sub256([0, 0, 0, 0], [1, 0, 0, 0]).1);
    }

    proptest! {
        // The fixed-width numerator equals the general exact one whenever it answers, over
        // values whose exponents spread far (so both the fast and the fallback paths run).
        #[test]
        fn numerator_matches_general(
            xs in prop::collection::vec((-(1i64 << 53)..(1i64 << 53), -60i32..60), 2..40),
            removed in 0usize..10,
        ) {
            let (mut s1, mut s2) = (ExactSum::new(), ExactSum::new());
            for &(m, e) in &xs {
                let x = m as f64 * 2f64.powi(e);
                s1.add(x);
                s2.add_square(x);
            }
            let k = removed.min(xs.len() - 2);
            for &(m, e) in &xs[..k] {
                let x = m as f64 * 2f64.powi(e);
                s1.sub(x);
                s2.sub_square(x);
            }
            let n = (xs.len() - k) as u64;
            let want = general(n, &s1, &s2);
            if let Some((mag, exp)) = variance_numerator(n, &s1, &s2) {
                let got = ExactSum::from_u256(false, mag, exp);
                prop_assert_eq!(&got, &want);
                if let Some(pair) = u256_pair(mag, exp) {
                    prop_assert_eq!(pair, want.to_f64_pair());
                }
            }
        }

        #[test]
        fn everyday_values_take_the_fixed_width_path(
            cents in prop::collection::vec(1u32..1_000_000, 2..300),
        ) {
            let (mut s1, mut s2) = (ExactSum::new(), ExactSum::new());
            for &c in &cents {
                let x = c as f64 / 100.0;
                s1.add(x);
                s2.add_square(x);
            }
            let n = cents.len() as u64;
            let (mag, exp) = variance_numerator(n, &s1, &s2).unwrap();
            let want = general(n, &s1, &s2);
            prop_assert_eq!(ExactSum::from_u256(false, mag, exp), want.clone());
            prop_assert_eq!(u256_pair(mag, exp), Some(want.to_f64_pair()));
        }
    }
}
