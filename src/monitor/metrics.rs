//! Drift metrics from two count vectors over the same bins: the reference's and the current
//! rows'. Everything is computed from counts (O(bins)), never from the rows, so the online
//! monitor and the batch report give the same numbers bit for bit for the same rows.
//!
//! With `p` the reference's and `q` the current share of the non-null values per bin
//! (`docs/monitoring.md` has the formulas and their independent checks):
//!
//! * `psi`: population stability index `sum (q' - p') ln(q' / p')` with every share floored at
//!   [`PSI_EPSILON`] (an empty bin on either side would make it infinite);
//! * `js`: Jensen-Shannon distance, base 2 (in `[0, 1]`; scipy's `jensenshannon(p, q, base=2)`);
//! * `wasserstein`: Wasserstein-1 between the two binned distributions, each bin's mass placed
//!   at its representative point (interior bins: the midpoint of the edges; the first and last
//!   bin: the midpoint of the reference's min / max and the nearest edge), in the column's
//!   units (numeric columns);
//! * `ks`, `ks_pvalue`: Kolmogorov-Smirnov statistic `max |P - Q|` over the bin edges (the
//!   two-sample statistic of the binned values) and its asymptotic p-value
//!   `kolmogorov_sf(sqrt(n m / (n + m)) D)` (numeric columns);
//! * `chi2`, `chi2_pvalue`: Pearson's chi-square test of homogeneity of the 2 x bins table
//!   (bins empty on both sides left out; scipy's `chi2_contingency(correction=False)`);
//! * `null_rate`: nulls (and NaN) / rows; `out_of_range_rate` (numeric): values outside the
//!   reference's `[min, max]` / non-null values; `unseen_rate` (categorical): values outside
//!   the reference's categories / non-null values.
//!
//! A metric that cannot be computed is `None` (the "null metric"): every metric of a window
//! without rows, the distribution metrics of a window without non-null values (or of a
//! reference column without any), and the numeric-only metrics of a categorical column.

use serde::{Deserialize, Serialize};

use super::counts::Counts;
use super::reference::ColumnRef;
use super::stats::{chi2_sf, kolmogorov_sf};

/// Floor of a bin's share in the PSI.
pub const PSI_EPSILON: f64 = 1e-4;

/// A metric's name, as triggers and reports spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Psi,
    Js,
    Wasserstein,
    Ks,
    KsPvalue,
    Chi2,
    Chi2Pvalue,
    NullRate,
    OutOfRangeRate,
    UnseenRate,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::Psi,
        Metric::Js,
        Metric::Wasserstein,
        Metric::Ks,
        Metric::KsPvalue,
        Metric::Chi2,
        Metric::Chi2Pvalue,
        Metric::NullRate,
        Metric::OutOfRangeRate,
        Metric::UnseenRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Psi => "psi",
            Metric::Js => "js",
            Metric::Wasserstein => "wasserstein",
            Metric::Ks => "ks",
            Metric::KsPvalue => "ks_pvalue",
            Metric::Chi2 => "chi2",
            Metric::Chi2Pvalue => "chi2_pvalue",
            Metric::NullRate => "null_rate",
            Metric::OutOfRangeRate => "out_of_range_rate",
            Metric::UnseenRate => "unseen_rate",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Every metric of one column over one set of rows.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Metrics {
    pub rows: u64,
    pub non_null: u64,
    pub psi: Option<f64>,
    pub js: Option<f64>,
    pub wasserstein: Option<f64>,
    pub ks: Option<f64>,
    pub ks_pvalue: Option<f64>,
    pub chi2: Option<f64>,
    pub chi2_pvalue: Option<f64>,
    pub null_rate: Option<f64>,
    pub out_of_range_rate: Option<f64>,
    pub unseen_rate: Option<f64>,
}

impl Metrics {
    pub fn get(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::Psi => self.psi,
            Metric::Js => self.js,
            Metric::Wasserstein => self.wasserstein,
            Metric::Ks => self.ks,
            Metric::KsPvalue => self.ks_pvalue,
            Metric::Chi2 => self.chi2,
            Metric::Chi2Pvalue => self.chi2_pvalue,
            Metric::NullRate => self.null_rate,
            Metric::OutOfRangeRate => self.out_of_range_rate,
            Metric::UnseenRate => self.unseen_rate,
        }
    }
}

/// Every metric of `cur` against the reference column `col` (same bins).
pub fn compute(col: &ColumnRef, cur: &Counts) -> Metrics {
    let rows = cur.rows();
    let n = cur.non_null();
    let mut m = Metrics {
        rows,
        non_null: n,
        ..Metrics::default()
    };
    if rows == 0 {
        return m;
    }
    m.null_rate = Some(cur.nulls as f64 / rows as f64);
    if n == 0 {
        return m;
    }
    let rate = cur.out_of_range as f64 / n as f64;
    if col.is_numeric() {
        m.out_of_range_rate = Some(rate);
    } else {
        m.unseen_rate = Some(rate);
    }
    let p = col.counts();
    let q = &cur.bins;
    if p.len() != q.len() || p.iter().sum::<u64>() == 0 {
        return m;
    }
    m.psi = Some(psi(p, q));
    m.js = Some(js_distance(p, q));
    let (chi2, pvalue) = chi2_homogeneity(p, q);
    m.chi2 = Some(chi2);
    m.chi2_pvalue = Some(pvalue);
    if let ColumnRef::Numeric {
        edges,
        min: Some(lo),
        max: Some(hi),
        ..
    } = col
    {
        let (d, pv) = ks(p, q);
        m.ks = Some(d);
        m.ks_pvalue = Some(pv);
        m.wasserstein = Some(wasserstein(&representatives(edges, *lo, *hi), p, q));
    }
    m
}

fn shares(c: &[u64]) -> impl Iterator<Item = f64> + '_ {
    let n = c.iter().sum::<u64>() as f64;
    c.iter().map(move |&x| x as f64 / n)
}

/// Population stability index; shares floored at [`PSI_EPSILON`].
pub fn psi(p: &[u64], q: &[u64]) -> f64 {
    shares(p)
        .zip(shares(q))
        .map(|(a, b)| {
            let (a, b) = (a.max(PSI_EPSILON), b.max(PSI_EPSILON));
            (b - a) * (b / a).ln()
        })
        .sum()
}

/// Jensen-Shannon distance, base 2.
pub fn js_distance(p: &[u64], q: &[u64]) -> f64 {
    let mut s = 0.0;
    for (a, b) in shares(p).zip(shares(q)) {
        let m = (a + b) / 2.0;
        if a > 0.0 {
            s += a * (a / m).ln();
        }
        if b > 0.0 {
            s += b * (b / m).ln();
        }
    }
    (s / 2.0 / std::f64::consts::LN_2).max(0.0).sqrt()
}

/// Kolmogorov-Smirnov statistic over the bin edges and its asymptotic p-value.
pub fn ks(p: &[u64], q: &[u64]) -> (f64, f64) {
    let (n, m) = (p.iter().sum::<u64>() as f64, q.iter().sum::<u64>() as f64);
    let (mut cp, mut cq, mut d) = (0u64, 0u64, 0.0f64);
    for (&a, &b) in p.iter().zip(q) {
        cp += a;
        cq += b;
        d = d.max((cp as f64 / n - cq as f64 / m).abs());
    }
    let en = n * m / (n + m);
    (d, kolmogorov_sf(en.sqrt() * d))
}

/// Representative point of each bin of a numeric reference column (see the module doc).
pub fn representatives(edges: &[f64], min: f64, max: f64) -> Vec<f64> {
    let mut r = Vec::with_capacity(edges.len() + 1);
    let mut lo = min;
    for &e in edges {
        r.push((lo + e) / 2.0);
        lo = e;
    }
    r.push((lo + max) / 2.0);
    r
}

/// Wasserstein-1 between two distributions on the points `r` (increasing) with weights `p`, `q`.
pub fn wasserstein(r: &[f64], p: &[u64], q: &[u64]) -> f64 {
    let (n, m) = (p.iter().sum::<u64>() as f64, q.iter().sum::<u64>() as f64);
    let (mut cp, mut cq, mut w) = (0u64, 0u64, 0.0);
    for i in 0..r.len().saturating_sub(1) {
        cp += p.get(i).copied().unwrap_or(0);
        cq += q.get(i).copied().unwrap_or(0);
        let gap = r.get(i + 1).copied().unwrap_or(0.0) - r.get(i).copied().unwrap_or(0.0);
        w += (cp as f64 / n - cq as f64 / m).abs() * gap;
    }
    w
}

/// Pearson's chi-square test of homogeneity of the 2 x k table `[p; q]` (columns empty on
/// both rows left out): (statistic, p-value). One column left: (0, 1).
pub fn chi2_homogeneity(p: &[u64], q: &[u64]) -> (f64, f64) {
    let (n, m) = (p.iter().sum::<u64>() as f64, q.iter().sum::<u64>() as f64);
    let total = n + m;
    let mut chi2 = 0.0;
    let mut k = 0usize;
    for (&a, &b) in p.iter().zip(q) {
        let col = (a + b) as f64;
        if col == 0.0 {
            continue;
        }
        k += 1;
        let (ea, eb) = (n * col / total, m * col / total);
        chi2 += (a as f64 - ea).powi(2) / ea + (b as f64 - eb).powi(2) / eb;
    }
    if k < 2 {
        return (0.0, 1.0);
    }
    (chi2, chi2_sf(chi2, (k - 1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_do_not_drift() {
        let p = [10, 20, 30, 40];
        let q = [1, 2, 3, 4];
        assert!(psi(&p, &q).abs() < 1e-15);
        assert!(js_distance(&p, &q) < 1e-7);
        assert_eq!(ks(&p, &q).0, 0.0);
        assert!(chi2_homogeneity(&p, &q).0 < 1e-12);
        assert_eq!(wasserstein(&[0.0, 1.0, 2.0, 3.0], &p, &q), 0.0);
        // all the mass moved one bin up: W1 = the gap
        assert_eq!(wasserstein(&[0.0, 1.0], &[5, 0], &[0, 5]), 1.0);
    }
}
