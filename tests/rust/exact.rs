//! Exact summation against an independent reference: values that are multiples of 2^-40 with
//! magnitude below 2^80 are summed exactly in i128 (scaled by 2^40); `i128 as f64` rounds to
//! nearest, ties to even, which is what `ExactSum::to_f64` promises.

use proptest::prelude::*;
use rtml::exact::ExactSum;

const SCALE: f64 = (1u64 << 40) as f64;

fn scaled(x: f64) -> i128 {
    (x * SCALE) as i128
}

fn value() -> impl Strategy<Value = f64> {
    // m * 2^j with |m| < 2^53 and j in -40..27: exponents spread over 120 bits, all multiples
    // of 2^-40; sums of 60 of them stay below 2^126 in the scaled i128
    (-(1i64 << 53) + 1..(1i64 << 53), -40i32..27).prop_map(|(m, j)| m as f64 * 2f64.powi(j))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sums_and_removals_match_i128_reference(
        xs in prop::collection::vec(value(), 0..60),
        removed in prop::collection::vec(any::<bool>(), 60),
        order in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()),
    ) {
        let mut s = ExactSum::new();
        let mut want: i128 = 0;
        for &x in &xs {
            s.add(x);
            want += scaled(x);
        }
        // remove a subset, in a scrambled order
        let mut idx: Vec<usize> = (0..xs.len()).filter(|&i| removed[i]).collect();
        idx.sort_by_key(|&i| (i as u64).wrapping_mul(order | 1).rotate_left(17));
        for &i in &idx {
            s.sub(xs[i]);
            want -= scaled(xs[i]);
        }
        let expected = want as f64 / SCALE;
        prop_assert_eq!(s.to_f64().to_bits(), expected.to_bits());
        // the pair: the rounded value and the rounded exact remainder
        let (hi, lo) = s.to_f64_pair();
        prop_assert_eq!(hi.to_bits(), expected.to_bits());
        let rest = want - (hi * SCALE) as i128;
        prop_assert_eq!(lo.to_bits(), (rest as f64 / SCALE).to_bits());
        prop_assert_eq!(s.is_zero(), want == 0);
    }

    #[test]
    fn squares_match_i128_reference(xs in prop::collection::vec((-(1i64 << 30)..(1i64 << 30), 0u32..20), 0..40)) {
        // x = m / 2^k with |m| < 2^30: x^2 = m^2 / 2^2k, exact in i128 scaled by 2^40
        let mut s = ExactSum::new();
        let mut want: i128 = 0;
        for &(m, k) in &xs {
            let x = m as f64 / (1u64 << k) as f64;
            s.add_square(x);
            want += (m as i128 * m as i128) << (40 - 2 * k);
        }
        for &(m, k) in xs.iter().step_by(2) {
            let x = m as f64 / (1u64 << k) as f64;
            s.sub_square(x);
            want -= (m as i128 * m as i128) << (40 - 2 * k);
        }
        prop_assert_eq!(s.to_f64().to_bits(), (want as f64 / SCALE).to_bits());
    }
}

#[test]
fn far_apart_exponents() {
    // a value whose bits land above the current top limb (80 bits up), then removed again
    let small = 3.0 * 2f64.powi(-40);
    let big = ((1u64 << 53) - 1) as f64 * 2f64.powi(40);
    let mut s = ExactSum::new();
    s.add(small);
    s.add(big);
    assert_eq!(s.to_f64(), big);
    s.sub(big);
    assert_eq!(s.to_f64(), small);
    s.add(-big);
    s.add(big);
    s.sub(small);
    assert!(s.is_zero());
}

#[test]
fn running_sum_grows_past_the_inline_limbs() {
    // Adding 2^24 squares of ~2^84 to a sum whose lowest bit is 2^0 carries the value past 2^191,
    // where the four inline limbs run out of headroom: the width must grow, exactly.
    let x = ((1u64 << 53) - 1) as f64 * 2f64.powi(31);
    let n = 1u64 << 24;
    let mut s = ExactSum::new();
    s.add(1.0);
    for _ in 0..n {
        s.add_square(x);
    }
    // x * x rounds m^2 * 2^62 once; scaling by 2^24 is exact, and the +1 is far below the ulp
    assert_eq!(s.to_f64(), x * x * n as f64);
    for _ in 0..n {
        s.sub_square(x);
    }
    assert_eq!(s.to_f64(), 1.0);
    s.sub(1.0);
    assert!(s.is_zero());
    // and downwards through zero: negative running sums
    for _ in 0..1000 {
        s.sub(0.1);
    }
    for _ in 0..999 {
        s.add(0.1);
    }
    assert_eq!(s.to_f64(), -0.1);
}
