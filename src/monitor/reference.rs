//! The reference: a training table's distribution, per column, as binned counts.
//!
//! * A numeric column: quantile bin edges (default [`DEFAULT_BINS`] bins; the edges are values
//!   of the data, so ties never split across bins and fewer bins remain on discrete data), the
//!   reference's count per bin, its exact minimum and maximum, and its nulls (NaN counts as
//!   null). Bins are `(-inf, e0)`, `[e0, e1)`, ..., `[e_last, +inf)`.
//! * A categorical (string) column: the categories (the `max_categories` most frequent, ties by
//!   name), their counts, and one last "other" bucket: categories beyond the kept ones (in the
//!   reference) or never seen (in monitored rows).
//!
//! * The model's prediction (optional): a numeric column named [`PREDICTION`], fitted from the
//!   model's predictions on the training rows (quantile bins, or `bins` equal-width bins over a
//!   given range such as `[0, 1]` for a probability), monitored like any numeric column. The
//!   document's `prediction` field says that this column is the prediction (and where it came
//!   from); without it a column named "prediction" is an ordinary column.
//!
//! The document is versioned JSON: a newer version, an unknown field, counts that do not fit
//! the bins, or (checked by the caller) another feature set's reference is refused. Version 2
//! added the `prediction` field; version 1 documents (no prediction) are still read.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::counts::{numeric_code, Counts, NULL_CODE, OUT_OF_RANGE};
use crate::error::{Error, Result};

/// The reference document's version (documents of a newer version are refused).
pub const REFERENCE_VERSION: u32 = 2;
/// The name under which the model's prediction is recorded, reported and watched by triggers.
pub const PREDICTION: &str = "prediction";
/// Quantile bins of a numeric column unless told otherwise.
pub const DEFAULT_BINS: usize = 20;
/// Categories kept per categorical column unless told otherwise (the rest: "other").
pub const DEFAULT_MAX_CATEGORIES: usize = 1000;

/// One column of the reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ColumnRef {
    Numeric {
        name: String,
        /// Strictly increasing, finite; `edges.len() + 1` bins.
        edges: Vec<f64>,
        counts: Vec<u64>,
        nulls: u64,
        /// Exact extremes of the reference's values (None: no value).
        min: Option<f64>,
        max: Option<f64>,
    },
    Categorical {
        name: String,
        categories: Vec<String>,
        /// One per category, then the "other" bucket.
        counts: Vec<u64>,
        nulls: u64,
        #[serde(skip)]
        index: HashMap<String, u32>,
    },
}

impl ColumnRef {
    pub fn name(&self) -> &str {
        match self {
            ColumnRef::Numeric { name, .. } | ColumnRef::Categorical { name, .. } => name,
        }
    }
    pub fn is_numeric(&self) -> bool {
        matches!(self, ColumnRef::Numeric { .. })
    }
    pub fn kind(&self) -> &'static str {
        if self.is_numeric() {
            "numeric"
        } else {
            "categorical"
        }
    }
    /// The reference's counts per bin (the "other" bucket last for a categorical column).
    pub fn counts(&self) -> &[u64] {
        match self {
            ColumnRef::Numeric { counts, .. } | ColumnRef::Categorical { counts, .. } => counts,
        }
    }
    pub fn n_bins(&self) -> usize {
        self.counts().len()
    }
    pub fn nulls(&self) -> u64 {
        match self {
            ColumnRef::Numeric { nulls, .. } | ColumnRef::Categorical { nulls, .. } => *nulls,
        }
    }
    /// The reference's own counts as [`Counts`] (out-of-range: the "other" bucket of a
    /// categorical column; none for a numeric one).
    pub fn as_counts(&self) -> Counts {
        let bins = self.counts().to_vec();
        let out_of_range = match self {
            ColumnRef::Numeric { .. } => 0,
            ColumnRef::Categorical { counts, .. } => counts.last().copied().unwrap_or(0),
        };
        Counts {
            bins,
            nulls: self.nulls(),
            out_of_range,
        }
    }

    /// Fit a numeric column: `values` with NaN for null. Infinite values are refused.
    pub fn fit_numeric(name: &str, values: &[f64], bins: usize) -> Result<ColumnRef> {
        if bins == 0 {
            return Err(Error::spec("bins", "must be >= 1"));
        }
        ColumnRef::numeric(name, values, |v| quantile_edges(v, bins))
    }

    /// Fit a numeric column on `bins` equal-width bins over `[lo, hi]` (edges `lo + (hi - lo)
    /// * i / bins`, `i = 1..bins`): for a probability, `[0, 1]`. `values` with NaN for null; a
    /// value outside `[lo, hi]` (or infinite) is refused. Min and max stay the data's own.
    pub fn fit_numeric_range(
        name: &str,
        values: &[f64],
        bins: usize,
        lo: f64,
        hi: f64,
    ) -> Result<ColumnRef> {
        if bins == 0 {
            return Err(Error::spec("bins", "must be >= 1"));
        }
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::spec(
                "prediction_range",
                format!("expected finite lo < hi, got ({lo}, {hi})"),
            ));
        }
        if let Some((i, x)) = values
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_nan() && !(lo..=hi).contains(*x))
        {
            return Err(Error::schema(
                name,
                format!("{x} at row {i} is outside the prediction range [{lo}, {hi}]"),
            ));
        }
        ColumnRef::numeric(name, values, |_| {
            (1..bins)
                .map(|i| lo + (hi - lo) * (i as f64) / (bins as f64))
                .collect()
        })
    }

    /// A numeric column on the bin edges `edges` makes of its non-null values (NaN is null,
    /// infinite is refused); min and max are the data's.
    fn numeric(
        name: &str,
        values: &[f64],
        edges: impl FnOnce(&mut Vec<f64>) -> Vec<f64>,
    ) -> Result<ColumnRef> {
        let mut v: Vec<f64> = Vec::with_capacity(values.len());
        for (i, &x) in values.iter().enumerate() {
            if x.is_infinite() {
                return Err(Error::schema(
                    name,
                    format!("{x} at row {i}: a reference needs finite values (NaN counts as null)"),
                ));
            }
            if !x.is_nan() {
                v.push(x);
            }
        }
        let nulls = (values.len() - v.len()) as u64;
        let edges = edges(&mut v);
        let (min, max) = if v.is_empty() {
            (None, None)
        } else {
            (
                Some(v.iter().copied().fold(f64::INFINITY, f64::min)),
                Some(v.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            )
        };
        let mut counts = Counts::new(edges.len() + 1);
        let (lo, hi) = (
            min.unwrap_or(f64::NEG_INFINITY),
            max.unwrap_or(f64::INFINITY),
        );
        for &x in &v {
            counts.add(numeric_code(&edges, lo, hi, x));
        }
        Ok(ColumnRef::Numeric {
            name: name.to_string(),
            edges,
            counts: counts.bins,
            nulls,
            min,
            max,
        })
    }

    /// Fit a categorical column from its values (None: null).
    pub fn fit_categorical<'a>(
        name: &str,
        values: impl Iterator<Item = Option<&'a str>>,
        max_categories: usize,
    ) -> Result<ColumnRef> {
        let mut freq: HashMap<&'a str, u64> = HashMap::new();
        let mut nulls = 0u64;
        for v in values {
            match v {
                Some(s) => *freq.entry(s).or_insert(0) += 1,
                None => nulls += 1,
            }
        }
        let mut cats: Vec<(&str, u64)> = freq.into_iter().collect();
        cats.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let other: u64 = cats.iter().skip(max_categories).map(|c| c.1).sum();
        cats.truncate(max_categories);
        let mut counts: Vec<u64> = cats.iter().map(|c| c.1).collect();
        counts.push(other);
        let categories: Vec<String> = cats.iter().map(|c| c.0.to_string()).collect();
        let mut col = ColumnRef::Categorical {
            name: name.to_string(),
            categories,
            counts,
            nulls,
            index: HashMap::new(),
        };
        col.build_index();
        Ok(col)
    }

    /// Fit a categorical column whose known categories are given (a fitted encoder's
    /// vocabulary, in its order): the counts of each in `values`, every other value in the
    /// "other" bucket (so the unseen rate counts values the encoder has never seen).
    pub fn fit_categorical_known<'a>(
        name: &str,
        values: impl Iterator<Item = Option<&'a str>>,
        known: &[String],
    ) -> Result<ColumnRef> {
        let mut col = ColumnRef::Categorical {
            name: name.to_string(),
            categories: known.to_vec(),
            counts: vec![0; known.len() + 1],
            nulls: 0,
            index: HashMap::new(),
        };
        col.validate()?;
        col.build_index();
        let mut codes = vec![0u64; known.len() + 1];
        let mut null_count = 0u64;
        for v in values {
            match v {
                Some(s) => {
                    let c = (col.category_code(s) & !OUT_OF_RANGE) as usize;
                    if let Some(slot) = codes.get_mut(c) {
                        *slot += 1;
                    }
                }
                None => null_count += 1,
            }
        }
        if let ColumnRef::Categorical { counts, nulls, .. } = &mut col {
            *counts = codes;
            *nulls = null_count;
        }
        Ok(col)
    }

    fn build_index(&mut self) {
        if let ColumnRef::Categorical {
            categories, index, ..
        } = self
        {
            *index = categories
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i as u32))
                .collect();
        }
    }

    /// The code of a category (not in the vocabulary: the "other" bucket, flagged out of
    /// range). Only for a categorical column; a numeric one answers null.
    #[inline]
    pub fn category_code(&self, value: &str) -> u32 {
        match self {
            ColumnRef::Categorical {
                index, categories, ..
            } => match index.get(value) {
                Some(&i) => i,
                None => categories.len() as u32 | OUT_OF_RANGE,
            },
            ColumnRef::Numeric { .. } => NULL_CODE,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::spec(format!("columns.{}", self.name()), msg));
        match self {
            ColumnRef::Numeric {
                edges,
                counts,
                min,
                max,
                ..
            } => {
                if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
                    return bad("edges must be finite and strictly increasing".into());
                }
                if counts.len() != edges.len() + 1 {
                    return bad(format!(
                        "expected {} counts (edges + 1), got {}",
                        edges.len() + 1,
                        counts.len()
                    ));
                }
                match (min, max) {
                    (Some(a), Some(b)) if a.is_finite() && b.is_finite() && a <= b => {}
                    (None, None) if counts.iter().all(|&c| c == 0) => {}
                    _ => return bad("min and max must be finite numbers with min <= max (or both null without values)".into()),
                }
            }
            ColumnRef::Categorical {
                categories, counts, ..
            } => {
                if counts.len() != categories.len() + 1 {
                    return bad(format!(
                        "expected {} counts (categories + other), got {}",
                        categories.len() + 1,
                        counts.len()
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(c) = categories.iter().find(|c| !seen.insert(c.as_str())) {
                    return bad(format!("category {c:?} is listed twice"));
                }
            }
        }
        Ok(())
    }
}

/// Quantile edges of `v` (reordered in place): the values at ranks `floor(i * n / bins)` for
/// `i = 1..bins` in sorted order, above the minimum, without repeats. The order statistics are
/// found by recursive selection (O(n log bins)), not a full sort.
fn quantile_edges(v: &mut [f64], bins: usize) -> Vec<f64> {
    let n = v.len();
    let mut edges: Vec<f64> = Vec::with_capacity(bins.saturating_sub(1));
    if n == 0 {
        return edges;
    }
    let mut ranks: Vec<usize> = (1..bins)
        .map(|i| ((i as u128 * n as u128) / bins as u128) as usize)
        .filter(|&r| r < n)
        .collect();
    ranks.dedup();
    select_ranks(v, &ranks);
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    for &r in &ranks {
        let Some(&e) = v.get(r) else { break };
        // -0.0 and 0.0 are one edge
        let e = if e == 0.0 { 0.0 } else { e };
        if e > lo && edges.last().is_none_or(|&l| e > l) {
            edges.push(e);
        }
    }
    edges
}

/// Reorder `v` so that `v[r]` is its `r`-th smallest value for every `r` in `ranks` (sorted).
fn select_ranks(v: &mut [f64], ranks: &[usize]) {
    let Some(&mid) = ranks.get(ranks.len() / 2) else {
        return;
    };
    if mid >= v.len() {
        return;
    }
    v.select_nth_unstable_by(mid, f64::total_cmp);
    let (left, right) = v.split_at_mut(mid);
    let below: Vec<usize> = ranks.iter().copied().filter(|&r| r < mid).collect();
    let above: Vec<usize> = ranks
        .iter()
        .filter(|&&r| r > mid)
        .map(|&r| r - mid - 1)
        .collect();
    select_ranks(left, &below);
    if let Some(rest) = right.get_mut(1..) {
        select_ranks(rest, &above);
    }
}

/// The reference's record of the model's prediction (its distribution is the numeric column
/// named [`PREDICTION`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictionRef {
    /// The training table's column the predictions were read from (None: given as an array).
    pub source: Option<String>,
    /// `[lo, hi]` of equal-width bins (None: quantile bins).
    pub range: Option<[f64; 2]>,
}

/// A fitted reference: every monitored column, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub version: u32,
    /// Identity of the feature set the reference was fitted for (None: any).
    pub feature_set: Option<String>,
    /// Rows of the reference table.
    pub rows: u64,
    /// Present when the column named [`PREDICTION`] is the model's prediction (version >= 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionRef>,
    pub columns: Vec<ColumnRef>,
}

impl Reference {
    pub fn new(feature_set: Option<String>, rows: u64, columns: Vec<ColumnRef>) -> Result<Self> {
        let r = Reference {
            version: REFERENCE_VERSION,
            feature_set,
            rows,
            prediction: None,
            columns,
        };
        r.validate()?;
        Ok(r)
    }

    /// Mark the column named [`PREDICTION`] as the model's prediction.
    pub fn with_prediction(mut self, prediction: PredictionRef) -> Result<Self> {
        self.prediction = Some(prediction);
        self.validate()?;
        Ok(self)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name() == name)
    }

    fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for c in &self.columns {
            if !seen.insert(c.name()) {
                return Err(Error::spec(
                    "columns",
                    format!("column '{}' is listed twice", c.name()),
                ));
            }
            c.validate()?;
            if c.name() == PREDICTION && self.prediction.is_some() && !c.is_numeric() {
                return Err(Error::spec(
                    "prediction",
                    "the prediction's column must be numeric",
                ));
            }
            let total: u64 = c.counts().iter().sum::<u64>() + c.nulls();
            if total != self.rows {
                return Err(Error::spec(
                    format!("columns.{}", c.name()),
                    format!(
                        "counts and nulls add up to {total} rows, the reference has {}",
                        self.rows
                    ),
                ));
            }
        }
        if let Some(p) = &self.prediction {
            if self.column_index(PREDICTION).is_none() {
                return Err(Error::spec(
                    "prediction",
                    format!("the document has a prediction but no column '{PREDICTION}'"),
                ));
            }
            if let Some([lo, hi]) = p.range {
                if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                    return Err(Error::spec(
                        "prediction.range",
                        format!("expected finite lo < hi, got [{lo}, {hi}]"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Result<String> {
        crate::doc_version::write(self, "monitor reference")
    }

    /// Read a document; refuses a newer version, unknown fields and inconsistent counts.
    pub fn from_json(text: &str) -> Result<Reference> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::spec("reference", e.to_string()))?;
        let version = crate::doc_version::check(&value, "reference document", REFERENCE_VERSION)
            .map_err(|m| Error::spec("version", m))?;
        if version < 2 && value.get("prediction").is_some() {
            return Err(Error::spec(
                "prediction",
                format!("a version {version} reference document has no prediction field"),
            ));
        }
        let mut r: Reference =
            serde_json::from_value(value).map_err(|e| Error::spec("reference", e.to_string()))?;
        for c in &mut r.columns {
            c.build_index();
        }
        r.validate()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_data_values_without_repeats() {
        let v: Vec<f64> = (0..100).map(|i| (i / 10) as f64).collect();
        let c = ColumnRef::fit_numeric("x", &v, 20).unwrap();
        let ColumnRef::Numeric {
            edges,
            counts,
            min,
            max,
            ..
        } = &c
        else {
            panic!()
        };
        assert_eq!(edges, &(1..10).map(|i| i as f64).collect::<Vec<_>>());
        assert_eq!(counts, &vec![10; 10]);
        assert_eq!((*min, *max), (Some(0.0), Some(9.0)));
        let r = Reference::new(None, 100, vec![c]).unwrap();
        assert_eq!(Reference::from_json(&r.to_json().unwrap()).unwrap(), r);
    }

    #[test]
    fn selection_finds_the_sorted_ranks() {
        let mut s = 12345u64;
        for n in [1usize, 2, 3, 19, 20, 21, 100, 997] {
            for bins in [1usize, 2, 7, 20, 50] {
                let v: Vec<f64> = (0..n)
                    .map(|_| {
                        s = s
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((s >> 33) % 13) as f64 - 6.0
                    })
                    .collect();
                let mut sorted = v.clone();
                sorted.sort_by(f64::total_cmp);
                let mut want: Vec<f64> = Vec::new();
                for i in 1..bins {
                    let e = sorted[i * n / bins];
                    if e > sorted[0] && want.last().is_none_or(|&l| e > l) {
                        want.push(e);
                    }
                }
                let mut w = v.clone();
                assert_eq!(quantile_edges(&mut w, bins), want, "n={n} bins={bins}");
            }
        }
    }

    #[test]
    fn a_prediction_on_range_bins_round_trips_and_version_1_still_reads() {
        let p: Vec<f64> = vec![0.05, 0.1, 0.12, 0.5, f64::NAN, 0.99];
        let c = ColumnRef::fit_numeric_range(PREDICTION, &p, 4, 0.0, 1.0).unwrap();
        let ColumnRef::Numeric {
            edges,
            counts,
            nulls,
            min,
            max,
            ..
        } = &c
        else {
            panic!()
        };
        assert_eq!(edges, &vec![0.25, 0.5, 0.75]);
        assert_eq!(counts, &vec![3, 0, 1, 1]);
        assert_eq!((*nulls, *min, *max), (1, Some(0.05), Some(0.99)));
        let r = Reference::new(None, 6, vec![c])
            .unwrap()
            .with_prediction(PredictionRef {
                source: Some("p_late".into()),
                range: Some([0.0, 1.0]),
            })
            .unwrap();
        let text = r.to_json().unwrap();
        assert!(text.contains(r#""version":2"#), "{text}");
        assert_eq!(Reference::from_json(&text).unwrap(), r);
        // outside the range: refused, naming the column
        let e = ColumnRef::fit_numeric_range(PREDICTION, &[0.5, 1.5], 4, 0.0, 1.0).unwrap_err();
        assert!(e.to_string().contains("1.5 at row 1"), "{e}");
        // a version 1 document (no prediction field) still reads; one with the field does not
        let v1 = r#"{"version":1,"feature_set":null,"rows":2,"columns":[{"kind":"numeric","name":"prediction","edges":[],"counts":[2],"nulls":0,"min":0.0,"max":1.0}]}"#;
        let old = Reference::from_json(v1).unwrap();
        assert_eq!((old.version, old.prediction.is_none()), (1, true));
        let bad = v1.replace(
            r#""rows":2,"#,
            r#""rows":2,"prediction":{"source":null,"range":null},"#,
        );
        assert!(Reference::from_json(&bad).is_err());
        // a prediction without its column is refused
        let lost = text.replace(r#""name":"prediction""#, r#""name":"p""#);
        assert!(Reference::from_json(&lost).is_err());
    }
}
