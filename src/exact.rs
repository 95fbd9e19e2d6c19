//! Exact summation of f64 values.
//!
//! [`ExactSum`] holds `int * 2^exp` where `int` is a two's-complement integer of as many 64-bit
//! limbs as the data needs (four inline, more on the heap). Adding or removing an f64 is exact,
//! so the state after any sequence of additions and removals is the exact sum of the multiset,
//! whatever the order. Reading it rounds once (round-to-nearest-even), which is what makes the
//! online and offline paths agree bit for bit, and makes `sum` equal to `math.fsum`.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

type Limbs = SmallVec<[u64; 4]>;
/// Scratch magnitudes of reads (products, squares): inline up to 512 bits, no allocation.
type Mag = SmallVec<[u64; 8]>;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExactSum {
    /// Weight of bit 0 of limb 0.
    exp: i32,
    /// Little-endian two's complement; zero is empty or all zero limbs.
    limbs: Limbs,
}

/// Equal values (whatever their width and exponent).
impl PartialEq for ExactSum {
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        a.trim();
        b.trim();
        a.limbs == b.limbs && (a.limbs.is_empty() || a.exp == b.exp)
    }
}

impl Eq for ExactSum {}

/// Split a finite non-zero f64 into (negative, odd mantissa, exponent): |x| = m * 2^e.
#[inline]
fn decompose(x: f64) -> Option<(bool, u64, i32)> {
    let bits = x.to_bits();
    let neg = bits >> 63 == 1;
    let biased = ((bits >> 52) & 0x7FF) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mut m, mut e) = if biased == 0 {
        if frac == 0 {
            return None;
        }
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    let tz = m.trailing_zeros();
    m >>= tz;
    e += tz as i32;
    Some((neg, m, e))
}

impl ExactSum {
    pub fn new() -> Self {
        ExactSum {
            exp: 0,
            limbs: SmallVec::new(),
        }
    }

    #[inline]
    pub fn is_zero(&self) -> bool {
        self.limbs.iter().all(|&l| l == 0)
    }

    #[inline]
    fn is_negative(&self) -> bool {
        self.limbs.last().is_some_and(|&top| top >> 63 == 1)
    }

    #[inline]
    fn sign_fill(&self) -> u64 {
        if self.is_negative() {
            u64::MAX
        } else {
            0
        }
    }

    /// Sign-extend to at least `len` limbs.
    #[inline]
    fn extend_to(&mut self, len: usize) {
        let fill = self.sign_fill();
        while self.limbs.len() < len {
            self.limbs.push(fill);
        }
    }

    /// Multiply by 2^k (k >= 0) while lowering `exp` by k: the value is unchanged.
    fn lower_exp(&mut self, k: u32) {
        if k == 0 || self.limbs.is_empty() {
            self.exp -= k as i32;
            return;
        }
        // Trim first, so the usual small shift of a four-limb sum stays in the inline limbs.
        self.trim_top();
        let whole = (k / 64) as usize;
        let bits = k % 64;
        if bits != 0 {
            let fill = self.sign_fill();
            self.limbs.push(fill);
            let mut carry = 0u64;
            for limb in self.limbs.iter_mut() {
                let v = *limb;
                *limb = (v << bits) | carry;
                carry = v >> (64 - bits);
            }
        }
        if whole > 0 {
            self.limbs.insert_many(0, std::iter::repeat_n(0u64, whole));
        }
        self.exp -= k as i32;
        self.trim_top();
        self.unspill();
    }

    /// Move the limbs back inline when they fit (a spilled vector stays spilled otherwise, and
    /// the fast path of [`Self::add_scaled_wide`] only takes inline limbs).
    #[inline]
    fn unspill(&mut self) {
        if self.limbs.spilled() && self.limbs.len() <= 4 {
            self.limbs.shrink_to_fit();
        }
    }

    /// Drop redundant sign limbs at the top.
    fn trim_top(&mut self) {
        while self.limbs.len() >= 2 {
            let n = self.limbs.len();
            let top = self.limbs[n - 1];
            let next_neg = self.limbs[n - 2] >> 63 == 1;
            if (top == 0 && !next_neg) || (top == u64::MAX && next_neg) {
                self.limbs.pop();
            } else {
                break;
            }
        }
    }

    /// Drop redundant sign limbs at the top and zero limbs at the bottom.
    fn trim(&mut self) {
        self.trim_top();
        if self.limbs.len() == 1 && self.limbs[0] == 0 {
            self.limbs.clear();
            return;
        }
        let zeros = self.limbs.iter().take_while(|&&l| l == 0).count();
        if zeros > 0 && zeros < self.limbs.len() {
            self.limbs.drain(0..zeros);
            self.exp += 64 * zeros as i32;
        }
        self.unspill();
    }

    /// Make the top limb a redundant sign limb (0 above a non-negative limb, all ones above a
    /// negative one), so that adding anything that fits below it cannot overflow.
    #[inline]
    fn ensure_headroom(&mut self) {
        let n = self.limbs.len();
        if n == 0 {
            return;
        }
        let top = self.limbs[n - 1];
        let redundant = n >= 2 && {
            let below_neg = self.limbs[n - 2] >> 63 == 1;
            (top == 0 && !below_neg) || (top == u64::MAX && below_neg)
        };
        if !redundant {
            self.limbs.push(if top >> 63 == 1 { u64::MAX } else { 0 });
        }
    }

    /// Add (or subtract) `m * 2^e`.
    ///
    /// The hot path of every sum: no trimming (low zero limbs and redundant sign limbs stay, so
    /// the width only changes when the data needs more), one headroom check, a short carry loop.
    #[inline]
    fn add_scaled(&mut self, negative: bool, m: u64, e: i32) {
        self.add_scaled_wide(negative, m as u128, e)
    }

    /// Add (or subtract) `m * 2^e` for `m < 2^107` (a mantissa or the square of one).
    #[inline]
    fn add_scaled_wide(&mut self, negative: bool, m: u128, e: i32) {
        debug_assert!(m >> 107 == 0);
        if m == 0 || self.try_add_inline(negative, m, e) {
            return;
        }
        self.add_scaled_slow(negative, m, e)
    }

    /// The fast path, the steady state of a running sum: four inline limbs whose top one is a
    /// redundant sign limb (so the value is below 2^191 in magnitude) and an addend `m << p`
    /// below 2^191: the 256-bit sum cannot overflow. Returns false (nothing done) otherwise.
    #[inline(always)]
    fn try_add_inline(&mut self, negative: bool, m: u128, e: i32) -> bool {
        let p = e.wrapping_sub(self.exp);
        if p < 0
            || p + (128 - m.leading_zeros() as i32) > 191
            || self.limbs.spilled()
            || self.limbs.len() != 4
        {
            return false;
        }
        let l: &mut [u64] = &mut self.limbs;
        let below_neg = l[2] >> 63 == 1;
        if !((l[3] == 0 && !below_neg) || (l[3] == u64::MAX && below_neg)) {
            return false;
        }
        let lo = l[0] as u128 | (l[1] as u128) << 64;
        let hi = l[2] as u128 | (l[3] as u128) << 64;
        let sh = p as u32;
        let (a_lo, a_hi) = match sh {
            0 => (m, 0),
            1..128 => (m << sh, m >> (128 - sh)),
            _ => (0, m << (sh - 128)),
        };
        let (lo, hi) = if negative {
            let (lo, b) = lo.overflowing_sub(a_lo);
            (lo, hi.wrapping_sub(a_hi).wrapping_sub(b as u128))
        } else {
            let (lo, c) = lo.overflowing_add(a_lo);
            (lo, hi.wrapping_add(a_hi).wrapping_add(c as u128))
        };
        // A sum that returns to zero keeps its limbs and exponent: a window that empties and
        // fills again (most windows of a cold key) stays on this path.
        l[0] = lo as u64;
        l[1] = (lo >> 64) as u64;
        l[2] = hi as u64;
        l[3] = (hi >> 64) as u64;
        true
    }

    /// [`Self::add_scaled_wide`] in general: resets a zero, lowers the exponent, widens a short
    /// sum to the four inline limbs and retries the fast path; else any width, on the heap.
    #[inline(never)]
    fn add_scaled_slow(&mut self, negative: bool, m: u128, e: i32) {
        if !self.limbs.spilled() && self.is_zero() {
            // A zero in inline limbs (a new sum, a window that emptied): the state that
            // clearing and widening it in `add_scaled_general` reaches (four zero limbs at
            // `e`), in one step.
            self.limbs = SmallVec::from_buf([0; 4]);
            self.exp = e;
            if self.try_add_inline(negative, m, e) {
                return;
            }
        }
        self.add_scaled_general(negative, m, e)
    }

    /// [`Self::add_scaled_slow`] without its shortcut for a zero: any state, any addend.
    fn add_scaled_general(&mut self, negative: bool, m: u128, e: i32) {
        if self.is_zero() {
            self.limbs.clear();
            self.exp = e;
        } else if e < self.exp {
            self.lower_exp((self.exp - e) as u32);
        }
        if self.limbs.len() < 4 {
            self.extend_to(4);
            if self.try_add_inline(negative, m, e) {
                return;
            }
        }
        let p = (e - self.exp) as u32;
        let at = (p / 64) as usize;
        let sh = p % 64;
        // m << sh spans at most three limbs (107 + 63 bits)
        let parts = [
            (m << sh) as u64,
            ((m << sh) >> 64) as u64,
            if sh == 0 { 0 } else { (m >> (128 - sh)) as u64 },
        ];
        // The value fits below a redundant top limb, and so does the addend (limbs at..at + 3):
        // their sum fits in the limbs we have.
        self.ensure_headroom();
        self.extend_to(at + 4);
        if !negative {
            let mut carry = false;
            for (i, limb) in self.limbs[at..].iter_mut().enumerate() {
                let add = if i < 3 { parts[i] } else { 0 };
                if i >= 3 && !carry {
                    break;
                }
                let (s1, c1) = limb.overflowing_add(add);
                let (s2, c2) = s1.overflowing_add(carry as u64);
                *limb = s2;
                carry = c1 || c2;
            }
        } else {
            let mut borrow = false;
            for (i, limb) in self.limbs[at..].iter_mut().enumerate() {
                let sub = if i < 3 { parts[i] } else { 0 };
                if i >= 3 && !borrow {
                    break;
                }
                let (s1, b1) = limb.overflowing_sub(sub);
                let (s2, b2) = s1.overflowing_sub(borrow as u64);
                *limb = s2;
                borrow = b1 || b2;
            }
        }
        // Zero: no limbs (the next addition starts afresh at its own exponent).
        if self.limbs.iter().all(|&l| l == 0) {
            self.limbs.clear();
        }
    }

    /// Add a finite f64 exactly.
    #[inline]
    pub fn add(&mut self, x: f64) {
        if let Some((neg, m, e)) = decompose(x) {
            self.add_scaled(neg, m, e);
        }
    }

    /// Subtract a finite f64 exactly.
    #[inline]
    pub fn sub(&mut self, x: f64) {
        if let Some((neg, m, e)) = decompose(x) {
            self.add_scaled(!neg, m, e);
        }
    }

    /// Add (or with `negative`, subtract) `x * 2^k` exactly, for every finite `x`.
    #[inline]
    pub fn add_pow2_scaled(&mut self, x: f64, k: i32, negative: bool) {
        if let Some((neg, m, e)) = decompose(x) {
            self.add_scaled(neg != negative, m, e.saturating_add(k));
        }
    }

    /// Add `x * x` exactly, for every finite `x` (the 106-bit square of the mantissa is added
    /// in two 64-bit halves: no overflow, no underflow).
    #[inline]
    pub fn add_square(&mut self, x: f64) {
        self.square_term(x, false);
    }

    #[inline]
    pub fn sub_square(&mut self, x: f64) {
        self.square_term(x, true);
    }

    #[inline]
    fn square_term(&mut self, x: f64, negative: bool) {
        if let Some((_, m, e)) = decompose(x) {
            // the square of an odd mantissa is odd: its exponent is exact as is
            self.add_scaled_wide(negative, m as u128 * m as u128, 2 * e);
        }
    }

    /// Fold `x` into (or with `negative`, out of) a sum and, if given, a sum of squares,
    /// splitting `x` once.
    #[inline]
    pub fn fold_moment(s1: &mut ExactSum, s2: Option<&mut ExactSum>, x: f64, negative: bool) {
        if let Some((neg, m, e)) = decompose(x) {
            s1.add_scaled(neg != negative, m, e);
            if let Some(s2) = s2 {
                s2.add_scaled_wide(negative, m as u128 * m as u128, 2 * e);
            }
        }
    }

    /// Multiply by 2^k exactly.
    #[inline]
    pub fn scale_pow2(&mut self, k: i32) {
        if !self.is_zero() {
            self.exp += k;
        }
    }

    /// Sign and magnitude (little-endian, unsigned).
    fn sign_magnitude(&self) -> (bool, Mag) {
        let neg = self.is_negative();
        let mut mag: Mag = SmallVec::from_slice(&self.limbs);
        if neg {
            let mut carry = true;
            for limb in mag.iter_mut() {
                let (v, c) = (!*limb).overflowing_add(carry as u64);
                *limb = v;
                carry = c;
            }
        }
        while mag.last() == Some(&0) {
            mag.pop();
        }
        (neg, mag)
    }

    fn from_sign_magnitude(neg: bool, mut mag: Mag, exp: i32) -> Self {
        mag.push(0);
        if neg {
            let mut carry = true;
            for limb in mag.iter_mut() {
                let (v, c) = (!*limb).overflowing_add(carry as u64);
                *limb = v;
                carry = c;
            }
        }
        let mut out = ExactSum {
            exp,
            limbs: SmallVec::from_slice(&mag),
        };
        out.trim();
        out
    }

    /// `self += other`, exactly.
    pub fn add_assign(&mut self, other: &ExactSum) {
        if other.is_zero() {
            return;
        }
        if self.is_zero() {
            *self = other.clone();
            return;
        }
        // Narrow operands (all everyday sums): add the magnitude limb by limb through the fast
        // path of `add_scaled_wide`, no copies of either operand.
        if other.limbs.len() <= 4 && other.exp.unsigned_abs() < 1 << 30 {
            let (neg, mag) = other.sign_magnitude();
            for (i, &limb) in mag.iter().enumerate() {
                if limb != 0 {
                    self.add_scaled_wide(neg, limb as u128, other.exp + 64 * i as i32);
                }
            }
            return;
        }
        let mut o = other.clone();
        if o.exp < self.exp {
            self.lower_exp((self.exp - o.exp) as u32);
        } else if o.exp > self.exp {
            o.lower_exp((o.exp - self.exp) as u32);
        }
        let len = self.limbs.len().max(o.limbs.len()) + 1;
        self.extend_to(len);
        o.extend_to(len);
        let mut carry = false;
        for (a, b) in self.limbs.iter_mut().zip(o.limbs.iter()) {
            let (s1, c1) = a.overflowing_add(*b);
            let (s2, c2) = s1.overflowing_add(carry as u64);
            *a = s2;
            carry = c1 || c2;
        }
        self.trim();
    }

    pub fn negated(&self) -> ExactSum {
        let (neg, mag) = self.sign_magnitude();
        ExactSum::from_sign_magnitude(!neg && !mag.is_empty(), mag, self.exp)
    }

    /// `self * n`, exactly.
    pub fn mul_u64(&self, n: u64) -> ExactSum {
        let (neg, mag) = self.sign_magnitude();
        let mut out = Mag::with_capacity(mag.len() + 1);
        let mut carry = 0u128;
        for &limb in &mag {
            let v = limb as u128 * n as u128 + carry;
            out.push(v as u64);
            carry = v >> 64;
        }
        out.push(carry as u64);
        ExactSum::from_sign_magnitude(neg, out, self.exp)
    }

    /// `self * self`, exactly.
    pub fn square(&self) -> ExactSum {
        let (_, mag) = self.sign_magnitude();
        let mut out: Mag = SmallVec::from_elem(0u64, 2 * mag.len() + 1);
        for (i, &a) in mag.iter().enumerate() {
            let mut carry = 0u128;
            for (j, &b) in mag.iter().enumerate() {
                let v = a as u128 * b as u128 + out[i + j] as u128 + carry;
                out[i + j] = v as u64;
                carry = v >> 64;
            }
            let mut k = i + mag.len();
            while carry != 0 {
                let v = out[k] as u128 + carry;
                out[k] = v as u64;
                carry = v >> 64;
                k += 1;
            }
        }
        ExactSum::from_sign_magnitude(false, out, self.exp.saturating_mul(2))
    }

    /// The value as `(int, exp)` with `int` an i128, when it fits (every limb above the second
    /// is a sign limb).
    #[inline]
    pub fn as_i128(&self) -> Option<(i128, i32)> {
        let l: &[u64] = &self.limbs;
        let v = match l.len() {
            0 => 0,
            1 => l[0] as i64 as i128,
            _ => {
                let v = (l[0] as u128 | (l[1] as u128) << 64) as i128;
                let fill = if v < 0 { u64::MAX } else { 0 };
                if l[2..].iter().any(|&x| x != fill) {
                    return None;
                }
                v
            }
        };
        Some((v, self.exp))
    }

    /// A non-negative value as `(int, exp)` with `int` below 2^192 (little-endian limbs), when
    /// it fits.
    #[inline]
    pub fn as_u192(&self) -> Option<([u64; 3], i32)> {
        let l: &[u64] = &self.limbs;
        if self.is_negative() || l[l.len().min(3)..].iter().any(|&x| x != 0) {
            return None;
        }
        let mut v = [0u64; 3];
        for (d, &x) in v.iter_mut().zip(l) {
            *d = x;
        }
        Some((v, self.exp))
    }

    /// An exact value built from a 256-bit magnitude (little-endian limbs) times `2^exp`.
    pub fn from_u256(negative: bool, mag: [u64; 4], exp: i32) -> ExactSum {
        let mut m: Mag = SmallVec::from_slice(&mag);
        while m.last() == Some(&0) {
            m.pop();
        }
        ExactSum::from_sign_magnitude(negative, m, exp)
    }

    /// The exact value rounded to the nearest f64 (ties to even); +-inf on overflow.
    #[inline]
    pub fn to_f64(&self) -> f64 {
        // Fast path: an i128 at a moderate exponent. `i128 as f64` rounds to nearest even, and
        // scaling by 2^exp is exact when the result is normal and finite (|int| >= 1 and
        // exp >= -1000; |int| < 2^127 and exp <= 800).
        if let Some((v, exp)) = self.as_i128() {
            if (-1000..=800).contains(&exp) {
                return i128_to_f64(v) * pow2(exp);
            }
        }
        self.to_f64_general()
    }

    /// `self * 2^k` rounded to the nearest f64: the same as `to_f64` of a scaled copy
    /// ([`Self::scale_pow2`]), without the copy when the value is an i128 at a moderate
    /// exponent.
    #[inline]
    pub fn to_f64_scaled(&self, k: i32) -> f64 {
        if let Some((v, exp)) = self.as_i128() {
            // a zero keeps its exponent when scaled (and reads 0 either way)
            let exp = if v == 0 { exp } else { exp + k };
            if (-1000..=800).contains(&exp) {
                return i128_to_f64(v) * pow2(exp);
            }
        }
        let mut scaled = self.clone();
        scaled.scale_pow2(k);
        scaled.to_f64()
    }

    fn to_f64_general(&self) -> f64 {
        let (neg, mag) = self.sign_magnitude();
        let Some(&top_limb) = mag.last() else {
            return 0.0;
        };
        let i = mag.len() - 1;
        let hb = 63 - top_limb.leading_zeros() as i64;
        let h = 64 * i as i64 + hb; // bit index of the leading one
                                    // 64-bit window whose bit 63 is bit h of the magnitude, and a sticky bit below it.
        let lo = h - 63;
        let window = if lo >= 0 {
            let (li, lb) = ((lo / 64) as usize, (lo % 64) as u32);
            let low = mag[li] >> lb;
            let high = if lb == 0 || li + 1 >= mag.len() {
                0
            } else {
                mag[li + 1] << (64 - lb)
            };
            low | high
        } else {
            // fewer than 64 significant bits: they all sit in limb 0
            mag[0] << (-lo) as u32
        };
        let sticky = if lo > 0 {
            let (li, lb) = ((lo / 64) as usize, (lo % 64) as u32);
            mag[..li].iter().any(|&l| l != 0) || (lb > 0 && (mag[li] & ((1u64 << lb) - 1)) != 0)
        } else {
            false
        };
        let scale = lo + self.exp as i64; // value = (window + frac) * 2^scale
        round_window(neg, window, scale, sticky)
    }

    /// The exact value as an unevaluated pair `hi + lo` (both correctly rounded).
    pub fn to_f64_pair(&self) -> (f64, f64) {
        if let Some(pair) = self.as_i128().and_then(|(v, e)| i128_pair(v, e)) {
            return pair;
        }
        let hi = self.to_f64();
        if !hi.is_finite() {
            return (hi, 0.0);
        }
        let mut rest = self.clone();
        rest.sub(hi);
        (hi, rest.to_f64())
    }

    /// Approximate heap + inline size in bytes.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + if self.limbs.spilled() {
                8 * self.limbs.capacity()
            } else {
                0
            }
    }
}

/// Round `(window + sticky fraction) * 2^scale` (window has bit 63 set) to f64.
fn round_window(neg: bool, window: u64, scale: i64, sticky: bool) -> f64 {
    let sign = (neg as u64) << 63;
    let e = scale + 63; // exponent of the leading bit
    if e > 1023 {
        return f64::from_bits(sign | 0x7FF0_0000_0000_0000);
    }
    let round = |q: u64, rem: u64, half: u64| -> u64 {
        if rem > half || (rem == half && (sticky || q & 1 == 1)) {
            q + 1
        } else {
            q
        }
    };
    let bits = if e >= -1022 {
        let q = round(window >> 11, window & 0x7FF, 0x400);
        (((e + 1022) as u64) << 52) + q
    } else {
        // Subnormal: count units of 2^-1074.
        let sh = -(scale + 1074); // right shift of the window, > 11 here
        if sh > 64 {
            0
        } else if sh == 64 {
            (window > (1u64 << 63) || (window == (1u64 << 63) && sticky)) as u64
        } else {
            let sh = sh as u32;
            round(window >> sh, window & ((1u64 << sh) - 1), 1u64 << (sh - 1))
        }
    };
    if bits >= 0x7FF0_0000_0000_0000 {
        return f64::from_bits(sign | 0x7FF0_0000_0000_0000);
    }
    f64::from_bits(sign | bits)
}

/// 256-bit helpers for exact variance numerators (little-endian u64 limbs).
pub(crate) fn mul_u128(a: u128, b: u128) -> [u64; 4] {
    let (a0, a1) = (a as u64 as u128, (a >> 64) as u64 as u128);
    let (b0, b1) = (b as u64 as u128, (b >> 64) as u64 as u128);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 64) + (p01 as u64 as u128) + (p10 as u64 as u128);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    [p00 as u64, mid as u64, hi as u64, (hi >> 64) as u64]
}

pub(crate) fn mul_u192_u64(a: [u64; 3], n: u64) -> [u64; 4] {
    let mut out = [0u64; 4];
    let mut carry = 0u128;
    for (o, &x) in out.iter_mut().zip(&a) {
        let v = x as u128 * n as u128 + carry;
        *o = v as u64;
        carry = v >> 64;
    }
    out[3] = carry as u64;
    out
}

/// `v << k`, or `None` if bits would be lost.
pub(crate) fn shl256(v: [u64; 4], k: u32) -> Option<[u64; 4]> {
    if k == 0 {
        return Some(v);
    }
    let bits = (0..4)
        .rev()
        .find(|&i| v[i] != 0)
        .map_or(0, |i| 64 * i as u32 + 64 - v[i].leading_zeros());
    if bits + k > 256 {
        return None;
    }
    let (whole, sh) = ((k / 64) as usize, k % 64);
    let mut out = [0u64; 4];
    for i in (whole..4).rev() {
        let src = i - whole;
        out[i] = v[src] << sh;
        if sh > 0 && src > 0 {
            out[i] |= v[src - 1] >> (64 - sh);
        }
    }
    Some(out)
}

pub(crate) fn sub256(x: [u64; 4], y: [u64; 4]) -> ([u64; 4], bool) {
    let mut out = [0u64; 4];
    let mut borrow = false;
    for i in 0..4 {
        let (d1, b1) = x[i].overflowing_sub(y[i]);
        let (d2, b2) = d1.overflowing_sub(borrow as u64);
        out[i] = d2;
        borrow = b1 || b2;
    }
    (out, borrow)
}

/// `v as f64` (round to nearest, ties to even) without the generic 128-bit conversion routine
/// (`__floattidf`, ~35 instructions, called by every read of a sum): an i64 converts in one
/// instruction; a wider value keeps its top 63 bits with a sticky bit below the rounding point,
/// which rounds the same, then scales by a power of two (exact).
#[inline]
pub(crate) fn i128_to_f64(v: i128) -> f64 {
    if v as i64 as i128 == v {
        return v as i64 as f64;
    }
    let m = v.unsigned_abs();
    // m >= 2^63: keep bits (sh .. sh + 63) of m, the top one at bit 62 of an i64
    let sh = 65 - m.leading_zeros();
    let top = (m >> sh) as u64;
    let sticky = (m << (128 - sh)) != 0;
    let x = (top | sticky as u64) as i64 as f64 * pow2(sh as i32);
    if v < 0 {
        -x
    } else {
        x
    }
}

/// `2^e` for a normal exponent `e`.
#[inline]
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// [`ExactSum::to_f64_pair`] of `v * 2^exp` for an i128 at a moderate exponent (both parts
/// normal or zero); `None` otherwise.
#[inline]
fn i128_pair(v: i128, exp: i32) -> Option<(f64, f64)> {
    if !(-1000..=800).contains(&exp) {
        return None;
    }
    let hi = i128_to_f64(v);
    if hi.abs() >= 2f64.powi(127) {
        return None;
    }
    // |v - hi| is at most half an ulp of hi: exact in i128
    let rest = v - hi as i128;
    let s = pow2(exp);
    Some((hi * s, i128_to_f64(rest) * s))
}

/// [`ExactSum::to_f64_pair`] of `mag * 2^exp` for a 256-bit magnitude, without building the
/// exact value: the high part rounds the top 64 bits with a sticky bit, the remainder is
/// exact in i128. `None` when a part would leave the normal range or the remainder i128.
pub(crate) fn u256_pair(mag: [u64; 4], exp: i32) -> Option<(f64, f64)> {
    if mag[2] == 0 && mag[3] == 0 && mag[1] >> 63 == 0 {
        return i128_pair((mag[0] as u128 | (mag[1] as u128) << 64) as i128, exp);
    }
    let top = (0..4).rev().find(|&i| mag[i] != 0)?;
    let h = 64 * top as u32 + 63 - mag[top].leading_zeros(); // >= 127 here
    if !(-1000..=800).contains(&exp) || h as i32 + exp > 1000 {
        return None;
    }
    let lo_bit = h - 63;
    let (li, lb) = ((lo_bit / 64) as usize, lo_bit % 64);
    let window = if lb == 0 {
        mag[li]
    } else {
        mag[li] >> lb | mag.get(li + 1).map_or(0, |&x| x << (64 - lb))
    };
    let sticky = mag[..li].iter().any(|&x| x != 0) || (lb > 0 && mag[li] << (64 - lb) != 0);
    let hi = round_window(false, window, lo_bit as i64 + exp as i64, sticky);
    let (_, m, e) = decompose(hi)?;
    // hi as an integer at 2^exp (its ulp is far above 2^exp), then the exact remainder
    let hi_int = shl256([m, 0, 0, 0], u32::try_from(e - exp).ok()?)?;
    let (d, negative) = sub256(mag, hi_int);
    let d = if negative { sub256([0; 4], d).0 } else { d };
    if d[2] != 0 || d[3] != 0 || d[1] >> 63 != 0 {
        return None;
    }
    let r = (d[0] as u128 | (d[1] as u128) << 64) as i128;
    let lo = i128_to_f64(if negative { -r } else { r }) * pow2(exp);
    Some((hi, lo))
}

/// `value / d` for an exact value and a positive divisor, in double-double arithmetic; exact
/// values beyond the f64 range are scaled down first, so a representable quotient (e.g. the mean
/// of values near f64::MAX) does not overflow.
pub fn div_exact(value: &ExactSum, d: f64) -> f64 {
    let (hi, lo) = value.to_f64_pair();
    if hi.is_finite() {
        return dd_div(hi, lo, d);
    }
    let mut scaled = value.clone();
    scaled.scale_pow2(-256);
    let (hi, lo) = scaled.to_f64_pair();
    dd_div(hi, lo, d) * 2f64.powi(128) * 2f64.powi(128)
}

/// `(hi + lo) / d` in double-double arithmetic, rounded to f64.
#[inline]
pub fn dd_div(hi: f64, lo: f64, d: f64) -> f64 {
    if !hi.is_finite() {
        return hi / d;
    }
    let q1 = hi / d;
    let r = (-q1).mul_add(d, hi) + lo;
    q1 + r / d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(xs: &[f64]) -> f64 {
        let mut s = ExactSum::new();
        for &x in xs {
            s.add(x);
        }
        s.to_f64()
    }

    #[test]
    fn small_sums() {
        assert_eq!(sum_of(&[]), 0.0);
        assert_eq!(sum_of(&[1.5]), 1.5);
        assert_eq!(sum_of(&[0.1, 0.2]), 0.30000000000000004);
        assert_eq!(sum_of(&[1e100, 1.0, -1e100]), 1.0);
        assert_eq!(sum_of(&[-3.25, 1.0]), -2.25);
        assert_eq!(
            sum_of(&[f64::MIN_POSITIVE / 8.0, f64::MIN_POSITIVE / 8.0]),
            f64::MIN_POSITIVE / 4.0
        );
        assert_eq!(sum_of(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert_eq!(sum_of(&[-f64::MAX, -f64::MAX]), f64::NEG_INFINITY);
        assert_eq!(sum_of(&[5e-324]), 5e-324);
    }

    #[test]
    fn ties_round_to_even() {
        // 2^53 + 1 is a tie between 2^53 and 2^53 + 2: even is 2^53.
        assert_eq!(sum_of(&[9007199254740992.0, 1.0]), 9007199254740992.0);
        // 2^53 + 3 -> 2^53 + 4
        assert_eq!(sum_of(&[9007199254740992.0, 3.0]), 9007199254740996.0);
        // a tie broken by a tiny sticky bit
        assert_eq!(
            sum_of(&[9007199254740992.0, 1.0, 1e-300]),
            9007199254740994.0
        );
    }

    #[test]
    fn add_then_remove_returns_to_zero() {
        let xs = [1e-300, 3.5, -7e200, 123456.789, 5e-324];
        let mut s = ExactSum::new();
        for &x in &xs {
            s.add(x);
        }
        for &x in xs.iter().rev() {
            s.sub(x);
        }
        assert!(s.is_zero());
    }

    #[test]
    fn square_and_mul() {
        let mut s = ExactSum::new();
        s.add(3.0);
        s.add(0.5);
        assert_eq!(s.square().to_f64(), 12.25);
        assert_eq!(s.mul_u64(4).to_f64(), 14.0);
        assert_eq!(s.negated().to_f64(), -3.5);
        let mut t = s.clone();
        t.add_assign(&s.negated());
        assert!(t.is_zero());
    }

    #[test]
    fn pair_is_exact_remainder() {
        let mut s = ExactSum::new();
        s.add(1.0);
        s.add(1e-30);
        assert_eq!(s.to_f64_pair(), (1.0, 1e-30));
    }

    #[test]
    fn i128_conversion_edges() {
        for v in [
            0i128,
            1,
            -1,
            i64::MAX as i128,
            i64::MIN as i128,
            i64::MAX as i128 + 1,
            i64::MIN as i128 - 1,
            i128::MAX,
            i128::MIN,
            i128::MIN + 1,
            // ties at and near the rounding point of a 64-bit and a 128-bit value
            (1i128 << 64) + (1 << 11),
            (1i128 << 64) + (1 << 11) + 1,
            (1i128 << 64) + (3 << 11),
            (1i128 << 100) + (1 << 47),
            (1i128 << 100) + (1 << 47) + 1,
            -((1i128 << 100) + (3 << 47)),
        ] {
            assert_eq!(i128_to_f64(v).to_bits(), (v as f64).to_bits(), "{v}");
        }
    }

    proptest::proptest! {
        // The shortcut conversion is the language's `as f64` (round to nearest even) for
        // every width of value, ties included.
        #[test]
        fn i128_conversion_is_as_f64(
            bits in proptest::prelude::any::<i128>(),
            width in 0u32..128,
            tie in proptest::prelude::any::<bool>(),
        ) {
            let mut v = bits >> width;
            if tie {
                // a value whose dropped bits are exactly half an ulp (or just below)
                // (an f64 keeps 53 of the value's 128 - lz bits)
                let lz = v.unsigned_abs().leading_zeros();
                if lz < 74 {
                    let drop = 75 - lz;
                    v = (v >> drop << drop) | (1i128 << (drop - 1));
                }
            }
            proptest::prop_assert_eq!(i128_to_f64(v).to_bits(), (v as f64).to_bits(), "{}", v);
        }

        // `to_f64_scaled` is `to_f64` of a scaled copy (the general path), for sums of any
        // width and scalings that leave or enter the fast path's exponent range.
        #[test]
        fn scaled_read_is_read_of_scaled_copy(
            xs in proptest::collection::vec((-(1i64 << 53)..(1i64 << 53), -1100i32..1000), 0..12),
            k in proptest::prop_oneof![-64i32..64, -2000i32..2000],
        ) {
            let mut s = ExactSum::new();
            for &(m, e) in &xs {
                let x = m as f64 * 2f64.powi(e);
                if x.is_finite() {
                    s.add(x);
                }
            }
            let mut copy = s.clone();
            copy.scale_pow2(k);
            proptest::prop_assert_eq!(s.to_f64_scaled(k).to_bits(), copy.to_f64().to_bits());
        }

        // The slow path's shortcut for a zero (a new sum, or one that returned to zero) leaves
        // the state the general path leaves, limb for limb, across additions and removals
        // that empty the sum and restart it at higher and lower exponents (and sums, squares,
        // wide and spilled ones, which take the general path).
        #[test]
        fn zero_shortcut_is_the_general_path(
            ops in proptest::collection::vec(
                (proptest::prop_oneof![-8i64..8, -(1i64 << 53)..(1i64 << 53)],
                 proptest::prop_oneof![-4i32..4, -300i32..300],
                 proptest::bool::ANY, 0usize..3),
                1..40),
        ) {
            let general = |s: &mut ExactSum, neg: bool, m: u128, e: i32| {
                if m != 0 && !s.try_add_inline(neg, m, e) {
                    s.add_scaled_general(neg, m, e);
                }
            };
            let (mut a, mut b) = (ExactSum::new(), ExactSum::new());
            let mut added: Vec<(bool, u128, i32)> = Vec::new();
            for (mant, e, square, undo) in ops {
                let m = mant.unsigned_abs() as u128;
                let m = if square { (m * m) >> 1 } else { m };
                let op = (mant < 0, m, e);
                a.add_scaled_wide(op.0, op.1, op.2);
                general(&mut b, op.0, op.1, op.2);
                added.push(op);
                proptest::prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
                // take some back out, oldest first (the sum returns to zero when all leave)
                for _ in 0..undo.min(added.len()) {
                    let (neg, m, e) = added.remove(0);
                    a.add_scaled_wide(!neg, m, e);
                    general(&mut b, !neg, m, e);
                    proptest::prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
                }
            }
        }
    }
}
