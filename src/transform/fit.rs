//! Fitting: the statistics a fitted step learns from a column (scales, quantile edges,
//! vocabularies, imputed values, target encodings).

use std::collections::HashMap;

use rayon::prelude::*;

use super::op::{Cat, CatRef, Impute, Op, Vocab};
use super::read::Frame;
use super::Step;
use crate::error::{Error, Result};
use crate::exact::{div_exact, ExactSum};

pub(super) fn sorted_values(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    crate::pool::install(|| s.par_sort_unstable_by(|a, b| a.total_cmp(b)));
    s
}

/// numpy's default ('linear') percentile of sorted values, q in [0, 1] (callers pass constants
/// and k/n with k <= n, so `lo <= n - 1` and the indexing is in bounds).
pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let t = pos - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    // numpy's _lerp: symmetric form for t >= 0.5
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// Exact mean and population variance of the non-null values (parallel, thread-count independent).
pub(super) fn moments(v: &[f64]) -> (usize, f64, f64) {
    let (n, s1, s2) = crate::pool::install(|| {
        v.par_chunks(1 << 16)
            .map(|c| {
                let (mut s1, mut s2, mut n) = (ExactSum::new(), ExactSum::new(), 0usize);
                for &x in c {
                    if !x.is_nan() {
                        s1.add(x);
                        s2.add_square(x);
                        n += 1;
                    }
                }
                (n, s1, s2)
            })
            .reduce(
                || (0, ExactSum::new(), ExactSum::new()),
                |mut a, b| {
                    a.0 += b.0;
                    a.1.add_assign(&b.1);
                    a.2.add_assign(&b.2);
                    a
                },
            )
    });
    if n == 0 {
        return (0, f64::NAN, f64::NAN);
    }
    let mean = div_exact(&s1, n as f64);
    let mut num = s2.mul_u64(n as u64);
    num.add_assign(&s1.square().negated());
    let var = div_exact(&num, (n as f64) * (n as f64)).max(0.0);
    (n, mean, var)
}

pub(super) fn vocabulary(
    cats: &[Option<CatRef<'_>>],
    min_frequency: u64,
    max_categories: Option<usize>,
) -> Vocab {
    let mut counts: HashMap<CatRef<'_>, u64> = HashMap::new();
    for c in cats.iter().flatten() {
        *counts.entry(*c).or_insert(0) += 1;
    }
    let mut kept: Vec<(Cat, u64)> = counts
        .into_iter()
        .filter(|(_, n)| *n >= min_frequency)
        .map(|(c, n)| (c.to_cat(), n))
        .collect();
    kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(m) = max_categories {
        // max_categories counts the infrequent (__other__) bucket, as in scikit-learn.
        kept.truncate(m.saturating_sub(1).min(kept.len()));
    }
    let mut cats: Vec<Cat> = kept.into_iter().map(|(c, _)| c).collect();
    cats.sort();
    Vocab::new(cats)
}

/// Fit one step on the current frame. Returns out-of-fold outputs that replace the step's
/// normal output (target encoding in fit_transform).
pub(super) fn fit_step(
    step: &mut Step,
    i: usize,
    frame: &Frame<'_>,
    oof: bool,
) -> Result<Option<Vec<f64>>> {
    let field = step.field(i);
    let col = step.column.clone();
    match &mut step.op {
        Op::OneHot {
            min_frequency,
            max_categories,
            vocab,
        }
        | Op::Ordinal {
            min_frequency,
            max_categories,
            vocab,
        } => {
            let c = frame.cats(&col, &field)?;
            *vocab = Some(vocabulary(&c, *min_frequency, *max_categories));
            Ok(None)
        }
        Op::TargetEncode {
            target,
            smooth,
            folds,
            fitted,
        } => {
            let c = frame.cats(&col, &field)?;
            let y = frame.num(target, &field)?.into_owned();
            let n = c.len();
            let smooth = *smooth;
            let stats = |rows: &mut dyn Iterator<Item = usize>| {
                let mut per: HashMap<CatRef<'_>, (ExactSum, u64)> = HashMap::new();
                let (mut all, mut cnt) = (ExactSum::new(), 0u64);
                for r in rows {
                    if let (Some(cat), false) = (c[r], y[r].is_nan()) {
                        let e = per.entry(cat).or_insert((ExactSum::new(), 0));
                        e.0.add(y[r]);
                        e.1 += 1;
                        all.add(y[r]);
                        cnt += 1;
                    }
                }
                let mean = if cnt == 0 {
                    0.0
                } else {
                    div_exact(&all, cnt as f64)
                };
                let enc: HashMap<Cat, f64> = per
                    .into_iter()
                    .map(|(k, (mut s, k_n))| {
                        s.add(smooth * mean);
                        (k.to_cat(), div_exact(&s, k_n as f64 + smooth))
                    })
                    .collect();
                (enc, mean)
            };
            let mut replaced = None;
            if oof {
                if n < *folds {
                    return Err(Error::schema(
                        &col,
                        format!("{field}: out-of-fold encoding needs at least folds={folds} rows, got {n}"),
                    ));
                }
                let mut v = vec![f64::NAN; n];
                for f in 0..*folds {
                    let (lo, hi) = fold_bounds(n, *folds, f);
                    let (fe, fm) = stats(&mut (0..lo).chain(hi..n));
                    for r in lo..hi {
                        v[r] = c[r]
                            .map(|cat| fe.get(&cat.to_cat()).copied().unwrap_or(fm))
                            .unwrap_or(f64::NAN);
                    }
                }
                replaced = Some(v);
            }
            let (enc, mean) = stats(&mut (0..n));
            let mut table: Vec<(Cat, f64)> = enc.into_iter().collect();
            table.sort_by(|a, b| a.0.cmp(&b.0));
            *fitted = Some((table, mean));
            Ok(replaced)
        }
        op => {
            let x = frame.num(&col, &field)?;
            fit_numeric(op, &x, &field)?;
            Ok(None)
        }
    }
}

pub(super) fn fold_bounds(n: usize, k: usize, f: usize) -> (usize, usize) {
    // like numpy.array_split / sklearn KFold(shuffle=False): the first n % k folds get one more
    let base = n / k;
    let extra = n % k;
    let lo = f * base + f.min(extra);
    let hi = lo + base + usize::from(f < extra);
    (lo, hi)
}

pub(super) fn fit_numeric(op: &mut Op, x: &[f64], field: &str) -> Result<()> {
    fit_numeric_inner(op, x, field)?;
    let finite = match op {
        Op::StandardScale {
            fitted: Some((a, b)),
        }
        | Op::MinMaxScale {
            fitted: Some((a, b)),
        }
        | Op::RobustScale {
            fitted: Some((a, b)),
        } => a.is_finite() && b.is_finite(),
        Op::QuantileBucketize { edges: Some(e), .. } => e.iter().all(|x| x.is_finite()),
        Op::Impute { value: Some(v), .. } => v.is_finite(),
        _ => true,
    };
    if !finite {
        let col = field.to_string();
        return Err(Error::schema(
            col,
            "fitted statistics overflow float64 (values too large): scale the column first",
        ));
    }
    Ok(())
}

pub(super) fn fit_numeric_inner(op: &mut Op, x: &[f64], field: &str) -> Result<()> {
    let empty = || Error::schema(field, "cannot fit on a column with no non-null values");
    match op {
        Op::StandardScale { fitted } => {
            let (n, mean, var) = moments(x);
            if n == 0 {
                return Err(empty());
            }
            let sd = var.sqrt();
            *fitted = Some((mean, if sd == 0.0 { 1.0 } else { sd }));
        }
        Op::MinMaxScale { fitted } => {
            let (lo, hi) = crate::pool::install(|| {
                x.par_iter()
                    .filter(|v| !v.is_nan())
                    .fold(
                        || (f64::INFINITY, f64::NEG_INFINITY),
                        |a, &v| (a.0.min(v), a.1.max(v)),
                    )
                    .reduce(
                        || (f64::INFINITY, f64::NEG_INFINITY),
                        |a, b| (a.0.min(b.0), a.1.max(b.1)),
                    )
            });
            if lo > hi {
                return Err(empty());
            }
            let range = hi - lo;
            *fitted = Some((lo, if range == 0.0 { 1.0 } else { range }));
        }
        Op::RobustScale { fitted } => {
            let s = sorted_values(x);
            if s.is_empty() {
                return Err(empty());
            }
            let iqr = percentile(&s, 0.75) - percentile(&s, 0.25);
            *fitted = Some((percentile(&s, 0.5), if iqr == 0.0 { 1.0 } else { iqr }));
        }
        Op::QuantileBucketize { n, edges } => {
            let s = sorted_values(x);
            if s.is_empty() {
                return Err(empty());
            }
            let raw: Vec<f64> = (0..=*n)
                .map(|k| percentile(&s, k as f64 / *n as f64))
                .collect();
            let mut kept = vec![raw[0]];
            for &e in &raw[1..] {
                if e - kept[kept.len() - 1] > 1e-8 {
                    kept.push(e);
                }
            }
            *edges = Some(kept);
        }
        Op::Impute { strategy, value } => {
            *value = Some(match strategy {
                Impute::Mean => {
                    let (n, mean, _) = moments(x);
                    if n == 0 {
                        return Err(empty());
                    }
                    mean
                }
                Impute::Median => {
                    let s = sorted_values(x);
                    if s.is_empty() {
                        return Err(empty());
                    }
                    let m = s.len() / 2;
                    if s.len() % 2 == 1 {
                        s[m]
                    } else {
                        (s[m - 1] + s[m]) / 2.0
                    }
                }
                Impute::MostFrequent => {
                    let s = sorted_values(x);
                    let mut best: Option<(f64, usize)> = None;
                    let mut i = 0;
                    while i < s.len() {
                        let mut j = i;
                        while j < s.len() && s[j] == s[i] {
                            j += 1;
                        }
                        if best.is_none_or(|b| j - i > b.1) {
                            best = Some((s[i], j - i));
                        }
                        i = j;
                    }
                    best.ok_or_else(empty)?.0
                }
                Impute::Constant => {
                    value.ok_or_else(|| Error::spec(field, "constant impute needs value"))?
                }
            });
        }
        _ => {}
    }
    Ok(())
}
