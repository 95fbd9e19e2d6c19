//! Feature transforms: fitted once, applied by the same code to a table and to one row.
//!
//! A pipeline is an ordered list of [`Step`]s. Applying it to a record batch computes every step
//! row by row with scalar functions; a single request row is a one-row record batch, so it runs
//! exactly the same code and gets the same bits. Semantics: `docs/transforms.md`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use chrono::{Datelike, TimeZone, Timelike};
use rayon::prelude::*;
use serde_json::{json, Map, Value};
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::exact::{div_exact, ExactSum};
use crate::input::read_times;

pub const FORMAT: &str = "rtml.Transforms";
/// Largest `n` of `quantile_bucketize`.
pub const MAX_QUANTILE_BUCKETS: u64 = 100_000;
pub const VERSION: u64 = 1;

/// A category value: an integer or a string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cat {
    Int(i64),
    Str(String),
}

// Hashes like its borrowed form, so a vocabulary is probed with a `CatRef` (no allocation).
impl std::hash::Hash for Cat {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state)
    }
}

impl hashbrown::Equivalent<Cat> for CatRef<'_> {
    fn equivalent(&self, key: &Cat) -> bool {
        *self == key.as_ref()
    }
}

impl Cat {
    fn as_ref(&self) -> CatRef<'_> {
        match self {
            Cat::Int(i) => CatRef::Int(*i),
            Cat::Str(s) => CatRef::Str(s),
        }
    }
    fn label(&self) -> String {
        match self {
            Cat::Int(i) => i.to_string(),
            Cat::Str(s) => s.clone(),
        }
    }
    fn to_json(&self) -> Value {
        match self {
            Cat::Int(i) => json!(i),
            Cat::Str(s) => json!(s),
        }
    }
    fn from_json(v: &Value, field: &str) -> Result<Cat> {
        match v {
            Value::String(s) => Ok(Cat::Str(s.clone())),
            Value::Number(n) if n.as_i64().is_some() => Ok(Cat::Int(n.as_i64().unwrap_or(0))),
            other => Err(Error::spec(
                field,
                format!("a category must be a string or an integer, got {other}"),
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimePart {
    Hour,
    DayOfWeek,
    DayOfMonth,
    Month,
}

impl TimePart {
    fn name(&self) -> &'static str {
        match self {
            TimePart::Hour => "hour",
            TimePart::DayOfWeek => "day_of_week",
            TimePart::DayOfMonth => "day_of_month",
            TimePart::Month => "month",
        }
    }
    fn op(&self) -> &'static str {
        match self {
            TimePart::Hour => "hour_of_day",
            TimePart::DayOfWeek => "day_of_week",
            TimePart::DayOfMonth => "day_of_month",
            TimePart::Month => "month",
        }
    }
    /// (value, period) for cyclical encodings: position in [0, period).
    fn of(&self, dt: &chrono::DateTime<chrono_tz::Tz>) -> (f64, f64) {
        match self {
            TimePart::Hour => (dt.hour() as f64, 24.0),
            TimePart::DayOfWeek => (dt.weekday().num_days_from_monday() as f64, 7.0),
            TimePart::DayOfMonth => (dt.day() as f64, 31.0),
            TimePart::Month => (dt.month() as f64, 12.0),
        }
    }
    fn offset(&self) -> f64 {
        match self {
            TimePart::Hour | TimePart::DayOfWeek => 0.0,
            TimePart::DayOfMonth | TimePart::Month => 1.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Impute {
    Mean,
    Median,
    MostFrequent,
    Constant,
}

/// Vocabulary of a categorical encoder: kept categories, sorted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vocab {
    pub cats: Vec<Cat>,
    index: hashbrown::HashMap<Cat, usize>,
}

impl Vocab {
    fn new(cats: Vec<Cat>) -> Vocab {
        let index = cats
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| (c, i))
            .collect();
        Vocab { cats, index }
    }
    fn get(&self, c: &CatRef<'_>) -> Option<usize> {
        self.index.get(c).copied()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Log1p,
    Abs,
    Clip {
        lo: f64,
        hi: f64,
    },
    Power {
        p: f64,
    },
    Binary {
        kind: char,
        other: String,
        on_zero: Option<f64>,
    },
    IsNull,
    FillNull {
        value: f64,
    },
    HashBucket {
        n: u64,
    },
    Time {
        part: TimePart,
        tz: String,
        cyclical: bool,
    },
    StandardScale {
        fitted: Option<(f64, f64)>,
    },
    MinMaxScale {
        fitted: Option<(f64, f64)>,
    },
    RobustScale {
        fitted: Option<(f64, f64)>,
    },
    Bucketize {
        boundaries: Vec<f64>,
    },
    QuantileBucketize {
        n: usize,
        edges: Option<Vec<f64>>,
    },
    OneHot {
        min_frequency: u64,
        max_categories: Option<usize>,
        vocab: Option<Vocab>,
    },
    Ordinal {
        min_frequency: u64,
        max_categories: Option<usize>,
        vocab: Option<Vocab>,
    },
    Impute {
        strategy: Impute,
        value: Option<f64>,
    },
    TargetEncode {
        target: String,
        smooth: f64,
        folds: usize,
        fitted: Option<(Vec<(Cat, f64)>, f64)>,
    },
    Passthrough,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Log1p => "log1p",
            Op::Abs => "abs",
            Op::Clip { .. } => "clip",
            Op::Power { .. } => "power",
            Op::Binary { kind: '+', .. } => "add",
            Op::Binary { kind: '-', .. } => "sub",
            Op::Binary { kind: '*', .. } => "mul",
            Op::Binary { .. } => "ratio",
            Op::IsNull => "is_null",
            Op::FillNull { .. } => "fill_null",
            Op::HashBucket { .. } => "hash_bucket",
            Op::Time { part, .. } => part.op(),
            Op::StandardScale { .. } => "standard_scale",
            Op::MinMaxScale { .. } => "min_max_scale",
            Op::RobustScale { .. } => "robust_scale",
            Op::Bucketize { .. } => "bucketize",
            Op::QuantileBucketize { .. } => "quantile_bucketize",
            Op::OneHot { .. } => "one_hot",
            Op::Ordinal { .. } => "ordinal",
            Op::Impute { .. } => "impute",
            Op::TargetEncode { .. } => "target_encode",
            Op::Passthrough => "passthrough",
        }
    }
    /// Forget fitted state (a new `fit` starts from scratch, as in scikit-learn).
    fn reset(&mut self) {
        match self {
            Op::StandardScale { fitted }
            | Op::MinMaxScale { fitted }
            | Op::RobustScale { fitted } => *fitted = None,
            Op::QuantileBucketize { edges, .. } => *edges = None,
            Op::OneHot { vocab, .. } | Op::Ordinal { vocab, .. } => *vocab = None,
            Op::Impute { strategy, value } if *strategy != Impute::Constant => *value = None,
            Op::TargetEncode { fitted, .. } => *fitted = None,
            _ => {}
        }
    }

    fn is_fitted(&self) -> bool {
        match self {
            Op::StandardScale { fitted }
            | Op::MinMaxScale { fitted }
            | Op::RobustScale { fitted } => fitted.is_some(),
            Op::QuantileBucketize { edges, .. } => edges.is_some(),
            Op::OneHot { vocab, .. } | Op::Ordinal { vocab, .. } => vocab.is_some(),
            Op::Impute { strategy, value } => *strategy == Impute::Constant || value.is_some(),
            Op::TargetEncode { fitted, .. } => fitted.is_some(),
            _ => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub op: Op,
    pub column: String,
    /// Output name (for one_hot: the prefix of `{name}={category}` columns).
    pub name: String,
    /// `outputs()` as of the last change of fitted state (one_hot names are per category).
    outs: Vec<String>,
}

impl Step {
    /// Columns this step reads.
    fn reads(&self) -> Vec<&str> {
        let mut r = vec![self.column.as_str()];
        match &self.op {
            Op::Binary { other, .. } => r.push(other),
            Op::TargetEncode { target, .. } => r.push(target),
            _ => {}
        }
        r
    }

    fn new(op: Op, column: String, name: String) -> Step {
        let mut s = Step {
            op,
            column,
            name,
            outs: Vec::new(),
        };
        s.outs = s.compute_outputs();
        s
    }

    /// Output column names of this step (one_hot: one per category plus `__other__`).
    pub fn outputs(&self) -> &[String] {
        &self.outs
    }

    fn refresh(&mut self) {
        self.outs = self.compute_outputs();
    }

    fn compute_outputs(&self) -> Vec<String> {
        match &self.op {
            Op::OneHot { vocab: Some(v), .. } => v
                .cats
                .iter()
                .map(|c| format!("{}={}", self.name, c.label()))
                .chain(std::iter::once(format!("{}=__other__", self.name)))
                .collect(),
            Op::OneHot { vocab: None, .. } => Vec::new(),
            Op::Time {
                cyclical: true,
                part,
                ..
            } => vec![
                format!("{}_{}_sin", self.column, part.name()),
                format!("{}_{}_cos", self.column, part.name()),
            ]
            .into_iter()
            .map(|n| {
                if self.name == self.column {
                    n
                } else {
                    n.replacen(&self.column, &self.name, 1)
                }
            })
            .collect(),
            _ => vec![self.name.clone()],
        }
    }
    fn field(&self, i: usize) -> String {
        format!("steps[{i}] ({} of '{}')", self.op.name(), self.column)
    }
}

/// A borrowed category value read from Arrow (ordered like [`Cat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CatRef<'a> {
    Int(i64),
    Str(&'a str),
}

impl CatRef<'_> {
    fn to_cat(self) -> Cat {
        match self {
            CatRef::Int(i) => Cat::Int(i),
            CatRef::Str(s) => Cat::Str(s.to_string()),
        }
    }
}

/// Columns of one batch as the pipeline sees them: inputs from the batch, outputs of steps.
struct Frame<'a> {
    batch: &'a RecordBatch,
    /// Step outputs by name (a later write replaces an earlier one).
    computed: HashMap<String, Vec<f64>>,
}

/// Null flags that also see NullArray (which has no validity buffer).
fn null_flags(a: &ArrayRef) -> Vec<bool> {
    match a.logical_nulls() {
        Some(n) => (0..a.len()).map(|i| n.is_null(i)).collect(),
        None => vec![false; a.len()],
    }
}

fn numeric_of(a: &ArrayRef, name: &str, step: &str) -> Result<Vec<f64>> {
    if a.data_type() == &DataType::Null {
        return Ok(vec![f64::NAN; a.len()]);
    }
    let Some(f) = crate::input::float_values(a.as_ref(), name)? else {
        return Err(Error::schema(
            name,
            format!("{step} needs a numeric column, got {}", a.data_type()),
        ));
    };
    let mut out = f;
    let nulls = null_flags(a);
    for (i, x) in out.iter_mut().enumerate() {
        if nulls[i] {
            *x = f64::NAN;
        } else if !x.is_finite() {
            return Err(Error::schema(
                name,
                format!("{step}: {x} at row {i}: NaN and infinite inputs are rejected"),
            ));
        }
    }
    Ok(out)
}

/// Integer categories of a primitive column, exactly.
fn ints<'a, T>(
    p: &arrow_array::PrimitiveArray<T>,
    null: &impl Fn(usize) -> bool,
) -> Vec<Option<CatRef<'a>>>
where
    T: arrow_array::ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    p.values()
        .iter()
        .enumerate()
        .map(|(i, &v)| (!null(i)).then(|| CatRef::Int(v.into())))
        .collect()
}

fn cats_of<'a>(a: &'a ArrayRef, name: &str, step: &str) -> Result<Vec<Option<CatRef<'a>>>> {
    let n = a.len();
    let flags = null_flags(a);
    let null = |i: usize| flags[i];
    let out: Vec<Option<CatRef<'a>>> = match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            (0..n)
                .map(|i| (!null(i)).then(|| CatRef::Str(s.value(i))))
                .collect()
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            (0..n)
                .map(|i| (!null(i)).then(|| CatRef::Str(s.value(i))))
                .collect()
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            (0..n)
                .map(|i| (!null(i)).then(|| CatRef::Str(s.value(i))))
                .collect()
        }
        DataType::Dictionary(_, _) => {
            let keys = crate::input::read_dictionary_strings(a).ok_or_else(|| {
                Error::schema(
                    name,
                    format!("{step} needs strings or integers, got {}", a.data_type()),
                )
            })?;
            (0..n)
                .map(|i| (!null(i)).then(|| CatRef::Str(keys.get(i))))
                .collect()
        }
        // Integer categories exactly (not through f64: beyond 2^53 that would merge
        // categories, and disagree with the one-row driver, which reads the exact integer).
        DataType::Int64 => ints(a.as_primitive::<Int64Type>(), &null),
        DataType::Int32 => ints(a.as_primitive::<Int32Type>(), &null),
        DataType::Int16 => ints(a.as_primitive::<Int16Type>(), &null),
        DataType::Int8 => ints(a.as_primitive::<Int8Type>(), &null),
        DataType::UInt32 => ints(a.as_primitive::<UInt32Type>(), &null),
        DataType::UInt16 => ints(a.as_primitive::<UInt16Type>(), &null),
        DataType::UInt8 => ints(a.as_primitive::<UInt8Type>(), &null),
        DataType::Boolean => {
            let b = a.as_boolean();
            (0..n)
                .map(|i| (!null(i)).then(|| CatRef::Int(b.value(i) as i64)))
                .collect()
        }
        DataType::Null => vec![None; n],
        dt => {
            return Err(Error::schema(
                name,
                format!("{step} needs strings or integers, got {dt}"),
            ))
        }
    };
    Ok(out)
}

impl<'a> Frame<'a> {
    fn input(&self, name: &str, step: &str) -> Result<&'a ArrayRef> {
        self.batch.column_by_name(name).ok_or_else(|| {
            let have: Vec<String> = self
                .batch
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .chain(self.computed.keys().cloned())
                .collect();
            Error::schema(
                name,
                format!("{step}: column not found (available: {})", have.join(", ")),
            )
        })
    }
    fn num(&self, name: &str, step: &str) -> Result<std::borrow::Cow<'_, [f64]>> {
        if let Some(v) = self.computed.get(name) {
            return Ok(std::borrow::Cow::Borrowed(v));
        }
        Ok(std::borrow::Cow::Owned(numeric_of(
            self.input(name, step)?,
            name,
            step,
        )?))
    }
    fn cats(&self, name: &str, step: &str) -> Result<Vec<Option<CatRef<'a>>>> {
        if self.computed.contains_key(name) {
            return Err(Error::schema(name, format!("{step} needs the raw categorical input, but an earlier step rewrote it as numbers")));
        }
        cats_of(self.input(name, step)?, name, step)
    }
    fn times(&self, name: &str, step: &str) -> Result<Vec<Option<i64>>> {
        times_of(self.input(name, step)?, name, step)
    }
    fn is_null(&self, name: &str, step: &str) -> Result<Vec<f64>> {
        if let Some(v) = self.computed.get(name) {
            return Ok(v
                .iter()
                .map(|x| if x.is_nan() { 1.0 } else { 0.0 })
                .collect());
        }
        let a = self.input(name, step)?;
        Ok(null_flags(a)
            .into_iter()
            .map(|n| if n { 1.0 } else { 0.0 })
            .collect())
    }
    fn set(&mut self, name: String, v: Vec<f64>) {
        self.computed.insert(name, v);
    }
}

/// Instants (ns since the epoch) of a time column; null stays null.
fn times_of(a: &ArrayRef, name: &str, step: &str) -> Result<Vec<Option<i64>>> {
    if a.data_type() == &DataType::Null {
        return Ok(vec![None; a.len()]);
    }
    let with_step = |e: Error| match e {
        Error::Schema { column, message } => Error::schema(column, format!("{step}: {message}")),
        other => other,
    };
    if a.null_count() == 0 {
        return Ok(read_times(a, name, None, 0)
            .map_err(with_step)?
            .into_iter()
            .map(Some)
            .collect());
    }
    // fill nulls with 0 for conversion, then restore them
    let valid: Vec<bool> = (0..a.len()).map(|i| a.is_valid(i)).collect();
    let filled = arrow_select_fill(a);
    let t = read_times(&filled, name, None, 0).map_err(with_step)?;
    Ok(t.into_iter()
        .zip(valid)
        .map(|(t, v)| v.then_some(t))
        .collect())
}

/// A time array with nulls replaced by zero (same type), for conversion.
fn arrow_select_fill(a: &ArrayRef) -> ArrayRef {
    let data = a.to_data();
    let no_nulls = data.into_builder().nulls(None).build();
    match no_nulls {
        Ok(d) => arrow_array::make_array(d),
        Err(_) => Arc::clone(a),
    }
}

#[inline]
fn apply_num(op: &Op, x: f64) -> f64 {
    match op {
        Op::FillNull { value } => filled(x, *value),
        Op::Impute { value, .. } => filled(x, value.unwrap_or(f64::NAN)),
        Op::Log1p => log1p_or_null(x),
        Op::Abs => abs(x),
        Op::Clip { lo, hi } => clip(x, *lo, *hi),
        Op::Power { p } => power(x, *p),
        Op::StandardScale {
            fitted: Some((m, s)),
        }
        | Op::RobustScale {
            fitted: Some((m, s)),
        }
        | Op::MinMaxScale {
            fitted: Some((m, s)),
        } => scaled(x, *m, *s),
        Op::Bucketize { boundaries } => bucket(x, boundaries),
        Op::QuantileBucketize { edges: Some(e), .. } => bucket(x, inner_edges(e)),
        _ => f64::NAN,
    }
}

// The scalar functions of the unary numeric steps (both drivers call these). Null (NaN) in gives
// null out (the canonical NaN), except for the filling steps.

#[inline]
fn filled(x: f64, value: f64) -> f64 {
    if x.is_nan() {
        value
    } else {
        x
    }
}

#[inline]
fn log1p_or_null(x: f64) -> f64 {
    if x > -1.0 {
        x.ln_1p()
    } else {
        f64::NAN // x <= -1, or null
    }
}

#[inline]
fn abs(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        x.abs()
    }
}

#[inline]
fn clip(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        x.max(lo).min(hi)
    }
}

#[inline]
fn power(x: f64, p: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        libm::pow(x, p)
    }
}

/// `(x - center) / scale`: standard, robust and min-max scaling.
#[inline]
fn scaled(x: f64, center: f64, scale: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        (x - center) / scale
    }
}

/// The number of `edges` (strictly increasing, as parsing and fitting guarantee) that are
/// `<= x`: the bucket index.
#[inline]
fn bucket(x: f64, edges: &[f64]) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if edges.len() <= 32 {
        // the same count as the binary search on sorted edges, without unpredictable branches
        edges.iter().map(|b| usize::from(*b <= x)).sum::<usize>() as f64
    } else {
        edges.partition_point(|b| *b <= x) as f64
    }
}

/// The inner edges of fitted quantile edges (the outer two bound nothing).
#[inline]
fn inner_edges(e: &[f64]) -> &[f64] {
    if e.len() >= 2 {
        &e[1..e.len() - 1]
    } else {
        &e[0..0]
    }
}

fn sorted_values(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    crate::pool::install(|| s.par_sort_unstable_by(|a, b| a.total_cmp(b)));
    s
}

/// numpy's default ('linear') percentile of sorted values, q in [0, 1] (callers pass constants
/// and k/n with k <= n, so `lo <= n - 1` and the indexing is in bounds).
fn percentile(sorted: &[f64], q: f64) -> f64 {
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
fn moments(v: &[f64]) -> (usize, f64, f64) {
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

fn vocabulary(
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

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transforms {
    pub steps: Vec<Step>,
    names: Vec<String>,
    row: RowPlan,
}

/// One input value of a request row (see [`Transforms::apply_row`]).
#[derive(Clone, Debug, PartialEq)]
pub enum RowValue<'a> {
    Null,
    Num(f64),
    Int(i64),
    Bool(bool),
    Str(&'a str),
    /// An instant, ns since the epoch (UTC).
    Time(i64),
}

/// Slots for the one-row driver: every column name read or written gets one.
#[derive(Clone, Debug, Default, PartialEq)]
struct RowPlan {
    inputs: Vec<String>,
    /// Per slot: the input index, if the name is a required input.
    slot_input: Vec<Option<usize>>,
    /// Per step: (column slot, other slot for binary ops, output slots).
    steps: Vec<(usize, Option<usize>, Vec<usize>)>,
    /// Per feature name: its slot.
    outputs: Vec<usize>,
}

impl Transforms {
    pub fn is_fitted(&self) -> bool {
        self.steps.iter().all(|s| s.op.is_fitted())
    }

    /// Output columns, in order of first write.
    pub fn feature_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn refresh(&mut self) {
        for s in self.steps.iter_mut() {
            s.refresh();
        }
        let mut out: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in &self.steps {
            for o in s.outputs() {
                if seen.insert(o.clone()) {
                    out.push(o.clone());
                }
            }
        }
        self.names = out;
        self.row = self.row_plan();
    }

    fn row_plan(&self) -> RowPlan {
        let inputs = self.required_inputs();
        let mut slots: HashMap<String, usize> = HashMap::new();
        let mut slot_input: Vec<Option<usize>> = Vec::new();
        let slot = |name: &str,
                    slots: &mut HashMap<String, usize>,
                    slot_input: &mut Vec<Option<usize>>|
         -> usize {
            if let Some(&i) = slots.get(name) {
                return i;
            }
            slots.insert(name.to_string(), slot_input.len());
            slot_input.push(inputs.iter().position(|n| n == name));
            slot_input.len() - 1
        };
        let steps = self
            .steps
            .iter()
            .map(|st| {
                let c = slot(&st.column, &mut slots, &mut slot_input);
                let o = match &st.op {
                    Op::Binary { other, .. } => Some(slot(other, &mut slots, &mut slot_input)),
                    _ => None,
                };
                let outs = st
                    .outputs()
                    .iter()
                    .map(|n| slot(n, &mut slots, &mut slot_input))
                    .collect();
                (c, o, outs)
            })
            .collect();
        let outputs = self
            .names
            .iter()
            .map(|n| slot(n, &mut slots, &mut slot_input))
            .collect();
        RowPlan {
            inputs,
            slot_input,
            steps,
            outputs,
        }
    }

    /// The one-row driver: `inputs` holds one value per [`Transforms::required_inputs`] name, in
    /// that order; `out` receives one value per feature name (NaN = null). Every step computes
    /// with the same scalar functions as the table driver, and the property tests hold the two
    /// drivers to the same bits.
    pub fn apply_row(&self, inputs: &[RowValue<'_>], out: &mut [f64]) -> Result<()> {
        if !self.is_fitted() {
            return Err(Error::spec(
                "transforms",
                "not fitted: call fit(table) first",
            ));
        }
        let plan = &self.row;
        if inputs.len() != plan.inputs.len() {
            return Err(Error::spec(
                "transforms",
                format!(
                    "apply_row: {} inputs given, {} expected (row_inputs order)",
                    inputs.len(),
                    plan.inputs.len()
                ),
            ));
        }
        let mut computed: SmallVec<[Option<f64>; 64]> =
            SmallVec::from_elem(None, plan.slot_input.len());
        let input =
            |slot: usize| -> Option<&RowValue<'_>> { plan.slot_input[slot].map(|i| &inputs[i]) };
        for (i, (step, (cs, os, outs))) in self.steps.iter().zip(&plan.steps).enumerate() {
            let field = || step.field(i);
            let col = &step.column;
            let num = |slot: usize, name: &str, computed: &[Option<f64>]| -> Result<f64> {
                if let Some(v) = computed[slot] {
                    return Ok(v);
                }
                match input(slot) {
                    None => Err(Error::schema(
                        name,
                        format!("{}: column not found", field()),
                    )),
                    Some(RowValue::Null) => Ok(f64::NAN),
                    Some(RowValue::Num(x)) if x.is_finite() => Ok(*x),
                    Some(RowValue::Num(x)) => Err(Error::schema(
                        name,
                        format!(
                            "{}: {x} at row 0: NaN and infinite inputs are rejected",
                            field()
                        ),
                    )),
                    Some(RowValue::Int(v)) => Ok(*v as f64),
                    Some(RowValue::Bool(b)) => Ok(if *b { 1.0 } else { 0.0 }),
                    Some(RowValue::Str(_)) => Err(Error::schema(
                        name,
                        format!("{} needs a numeric column, got Utf8", field()),
                    )),
                    Some(RowValue::Time(_)) => Err(Error::schema(
                        name,
                        format!("{} needs a numeric column, got Timestamp", field()),
                    )),
                }
            };
            let cat = |slot: usize, computed: &[Option<f64>]| -> Result<Option<CatRef<'_>>> {
                if computed[slot].is_some() {
                    return Err(Error::schema(col, format!("{} needs the raw categorical input, but an earlier step rewrote it as numbers", field())));
                }
                match input(slot) {
                    None => Err(Error::schema(col, format!("{}: column not found", field()))),
                    Some(RowValue::Null) => Ok(None),
                    Some(RowValue::Str(s)) => Ok(Some(CatRef::Str(s))),
                    Some(RowValue::Int(v)) => Ok(Some(CatRef::Int(*v))),
                    Some(RowValue::Bool(b)) => Ok(Some(CatRef::Int(*b as i64))),
                    Some(RowValue::Num(_)) => Err(Error::schema(
                        col,
                        format!("{} needs strings or integers, got Float64", field()),
                    )),
                    Some(RowValue::Time(_)) => Err(Error::schema(
                        col,
                        format!("{} needs strings or integers, got Timestamp", field()),
                    )),
                }
            };
            match &step.op {
                Op::Passthrough => computed[outs[0]] = Some(num(*cs, col, &computed)?),
                Op::IsNull => {
                    let null = match computed[*cs] {
                        Some(v) => v.is_nan(),
                        None => match input(*cs) {
                            None => {
                                return Err(Error::schema(
                                    col,
                                    format!("{}: column not found", field()),
                                ))
                            }
                            Some(v) => *v == RowValue::Null,
                        },
                    };
                    computed[outs[0]] = Some(if null { 1.0 } else { 0.0 });
                }
                Op::Binary {
                    kind,
                    other,
                    on_zero,
                } => {
                    let a = num(*cs, col, &computed)?;
                    let b = num(os.unwrap_or(*cs), other, &computed)?;
                    computed[outs[0]] = Some(binary(*kind, a, b, *on_zero));
                }
                Op::HashBucket { n } => {
                    computed[outs[0]] = Some(
                        cat(*cs, &computed)?
                            .map(|c| hash_bucket(&c, *n))
                            .unwrap_or(f64::NAN),
                    );
                }
                Op::Time { part, tz, cyclical } => {
                    let zone = chrono_tz::Tz::from_str(tz)
                        .map_err(|_| Error::spec(field(), format!("unknown time zone {tz:?}")))?;
                    let t = match input(*cs) {
                        None => {
                            return Err(Error::schema(
                                col,
                                format!("{}: column not found", field()),
                            ))
                        }
                        Some(RowValue::Null) => None,
                        Some(RowValue::Time(ns)) => Some(*ns),
                        Some(RowValue::Int(_)) => {
                            return Err(Error::schema(
                                col,
                                format!("{}: integer timestamps need a declared unit", field()),
                            ))
                        }
                        Some(_) => {
                            return Err(Error::schema(
                                col,
                                format!(
                                    "{}: expected a timestamp, date or integer column",
                                    field()
                                ),
                            ))
                        }
                    };
                    let (a, b) = time_part(*part, &zone, t, *cyclical);
                    computed[outs[0]] = Some(a);
                    if *cyclical {
                        computed[outs[1]] = Some(b);
                    }
                }
                Op::OneHot { vocab, .. } | Op::Ordinal { vocab, .. } => {
                    let c = cat(*cs, &computed)?;
                    let voc = vocab
                        .as_ref()
                        .ok_or_else(|| Error::spec(field(), "not fitted"))?;
                    let idx = c.map(|c| vocab_index(voc, c));
                    if matches!(step.op, Op::OneHot { .. }) {
                        for (k, &o) in outs.iter().enumerate() {
                            computed[o] = Some(one_hot_cell(idx, k));
                        }
                    } else {
                        computed[outs[0]] = Some(ordinal_value(idx));
                    }
                }
                Op::TargetEncode { fitted, .. } => {
                    let c = cat(*cs, &computed)?;
                    let (table, mean) = fitted
                        .as_ref()
                        .ok_or_else(|| Error::spec(field(), "not fitted"))?;
                    computed[outs[0]] = Some(target_value(table, *mean, c));
                }
                op => {
                    let x = num(*cs, col, &computed)?;
                    computed[outs[0]] = Some(apply_num(op, x));
                }
            }
        }
        for (o, &slot) in out.iter_mut().zip(&plan.outputs) {
            *o = computed[slot].unwrap_or(f64::NAN);
        }
        Ok(())
    }

    /// Whether a step is a target encoding (whose `fit_transform` output is out of fold).
    pub fn has_target_encoding(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.op, Op::TargetEncode { .. }))
    }

    pub fn feature_names_len(&self) -> usize {
        self.names.len()
    }

    /// Names of the inputs [`Transforms::apply_row`] expects, in order.
    pub fn row_inputs(&self) -> &[String] {
        &self.row.inputs
    }

    /// The first step reading input column `name`, described for error messages.
    pub fn step_reading(&self, name: &str) -> Option<String> {
        self.steps.iter().enumerate().find_map(|(i, s)| {
            let reads =
                s.column == name || matches!(&s.op, Op::Binary { other, .. } if other == name);
            reads.then(|| s.field(i))
        })
    }

    /// Input columns a request row must carry (read before any step writes them).
    pub fn required_inputs(&self) -> Vec<String> {
        let mut written: Vec<String> = Vec::new();
        let mut need: Vec<String> = Vec::new();
        for s in &self.steps {
            let mut reads = vec![s.column.clone()];
            if let Op::Binary { other, .. } = &s.op {
                reads.push(other.clone());
            }
            for r in reads {
                if !written.contains(&r) && !need.contains(&r) {
                    need.push(r);
                }
            }
            written.extend(s.outputs().iter().cloned());
        }
        need
    }

    /// Run every step on one batch. `fit`: fit each unfitted step on this batch first (on the
    /// outputs of the steps before it). `oof`: target encodings out of fold (fit_transform).
    fn run(
        &mut self,
        batch: &RecordBatch,
        fit: bool,
        oof: bool,
        want_outputs: bool,
    ) -> Result<Vec<Vec<f64>>> {
        let mut frame = Frame {
            batch,
            computed: HashMap::new(),
        };
        // For a plain fit, a column is dropped after its last reader: memory is the input plus
        // the columns in flight plus one step's outputs.
        let last_read: HashMap<&str, usize> = if want_outputs {
            HashMap::new()
        } else {
            let mut m = HashMap::new();
            for (j, s) in self.steps.iter().enumerate() {
                for r in s.reads() {
                    m.insert(r, j);
                }
            }
            m
        };
        let last_read: HashMap<String, usize> = last_read
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        for i in 0..self.steps.len() {
            let replaced = if fit && !self.steps[i].op.is_fitted() {
                let r = fit_step(&mut self.steps[i], i, &frame, oof)?;
                self.steps[i].refresh();
                r
            } else {
                None
            };
            // A plain fit materializes only outputs that a later step reads; the other steps
            // still read (and so validate) their inputs.
            let needed = want_outputs
                || self.steps[i]
                    .outputs()
                    .iter()
                    .any(|o| last_read.get(o).is_some_and(|&j| j > i));
            if needed {
                apply_step(&self.steps[i], i, &mut frame, replaced)?;
            } else {
                validate_step(&self.steps[i], i, &frame)?;
            }
            if !want_outputs {
                frame
                    .computed
                    .retain(|n, _| last_read.get(n).is_some_and(|&j| j > i));
            }
        }
        self.refresh();
        if want_outputs {
            self.collect(frame)
        } else {
            Ok(Vec::new())
        }
    }

    /// Apply the fitted steps to one batch.
    fn apply(&self, batch: &RecordBatch) -> Result<Vec<Vec<f64>>> {
        if !self.is_fitted() {
            return Err(Error::spec(
                "transforms",
                "not fitted: call fit(table) first",
            ));
        }
        let mut frame = Frame {
            batch,
            computed: HashMap::new(),
        };
        for (i, step) in self.steps.iter().enumerate() {
            apply_step(step, i, &mut frame, None)?;
        }
        self.collect(frame)
    }

    fn collect(&self, mut frame: Frame<'_>) -> Result<Vec<Vec<f64>>> {
        self.names
            .iter()
            .map(|name| {
                frame
                    .computed
                    .remove(name)
                    .ok_or_else(|| Error::spec(name, "output was not computed"))
            })
            .collect()
    }

    /// Fit every step on `batch`, from scratch (steps see the outputs of the steps before them).
    /// On error `self` is unchanged.
    pub fn fit(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut trial = self.clone();
        trial.steps.iter_mut().for_each(|s| s.op.reset());
        trial.run(batch, true, false, false)?;
        *self = trial;
        self.refresh();
        Ok(())
    }

    /// Fit, and return the transformed batch with out-of-fold target encodings.
    pub fn fit_transform(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<f64>>> {
        let mut trial = self.clone();
        trial.steps.iter_mut().for_each(|s| s.op.reset());
        let out = trial.run(batch, true, true, true)?;
        *self = trial;
        self.refresh();
        Ok(out)
    }

    /// Apply the fitted pipeline: one column per feature name (NaN = null). Runs the dense
    /// driver ([`Transforms::transform_dense`]) and copies the columns out.
    pub fn transform(&self, batch: &RecordBatch) -> Result<Vec<Vec<f64>>> {
        let d = self.transform_dense(std::slice::from_ref(batch), Layout::ColumnMajor)?;
        Ok((0..d.cols).map(|j| d.column(j)).collect())
    }

    /// The column-at-a-time reference driver (the one `fit_transform` runs): every step
    /// computes a whole column. The same bits as [`Transforms::transform_dense`], slower; its
    /// errors are the ones every table driver reports.
    pub fn transform_reference(&self, batch: &RecordBatch) -> Result<Vec<Vec<f64>>> {
        self.apply(batch)
    }
}

// ---- the dense table driver
//
// The table is cut into blocks of rows; each block runs a plan compiled once per call: per step
// a kernel looping over the block's rows with the step's scalar function (the same functions
// the one-row driver calls), on working columns that stay in cache. Outputs go straight into
// one preallocated, zeroed float64 matrix: a one-hot step writes only its 1.0 (or the NaNs of
// a null category). Blocks run in parallel. Any error falls back to the reference driver, so
// the error reported is the reference driver's (first failing step, absolute row).

/// Rows per block: a block's working columns stay in L1/L2.
const BLOCK: usize = 512;
/// A null entry of a block's category-index column.
const NULL_IDX: u32 = u32::MAX;

/// Memory order of a [`Dense`] matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row after row (C order), as a model's `predict` takes it.
    RowMajor,
    /// Column after column (Fortran order): every column is one contiguous slice.
    ColumnMajor,
}

/// The result of [`Transforms::transform_dense`]: `rows x cols` float64 values, one column per
/// feature name, NaN = null.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub values: Vec<f64>,
    pub rows: usize,
    pub cols: usize,
    pub layout: Layout,
    /// Per column: whether it holds a null (NaN).
    pub has_null: Vec<bool>,
}

impl Dense {
    /// The value at (`row`, `col`).
    pub fn get(&self, row: usize, col: usize) -> f64 {
        match self.layout {
            Layout::RowMajor => self.values[row * self.cols + col],
            Layout::ColumnMajor => self.values[col * self.rows + row],
        }
    }

    /// Column `col`, copied out.
    pub fn column(&self, col: usize) -> Vec<f64> {
        match self.layout {
            Layout::ColumnMajor => self.values[col * self.rows..(col + 1) * self.rows].to_vec(),
            Layout::RowMajor => (0..self.rows).map(|r| self.get(r, col)).collect(),
        }
    }
}

/// A numeric input column as the dense driver reads it.
enum NumCol<'a> {
    F64(&'a arrow_array::Float64Array),
    /// Any other type: the reference reader on a slice per block.
    Other(&'a ArrayRef),
}

/// A categorical input column as the dense driver reads it (one-hot, ordinal).
enum CatCol<'a> {
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
    /// Dictionary-encoded strings, with the vocabulary index of every dictionary value.
    Dict(&'a ArrayRef, Vec<u32>),
    /// Integers, booleans, nulls: the reference reader on a slice per block.
    Other(&'a ArrayRef),
}

/// How a per-category step turns a category into a number.
enum CatValue<'a> {
    Hash(u64),
    Target(&'a [(Cat, f64)], f64),
}

/// One step's work on a block. `usize` fields index the block's working columns (`f64`
/// columns, or `u32` vocabulary-index columns for `idx`).
enum Kernel<'a> {
    Load {
        col: NumCol<'a>,
        name: &'a str,
        field: String,
        dst: usize,
    },
    Map {
        op: &'a Op,
        src: usize,
        dst: usize,
    },
    NullOfInput {
        nulls: Option<arrow_buffer::NullBuffer>,
        dst: usize,
    },
    NullOf {
        src: usize,
        dst: usize,
    },
    Cell {
        idx: usize,
        k: usize,
        dst: usize,
    },
    Binary {
        kind: char,
        on_zero: Option<f64>,
        a: usize,
        b: usize,
        dst: usize,
    },
    Index {
        col: CatCol<'a>,
        vocab: &'a Vocab,
        name: &'a str,
        field: String,
        idx: usize,
    },
    Ordinal {
        idx: usize,
        dst: usize,
    },
    PerCat {
        col: &'a ArrayRef,
        value: CatValue<'a>,
        name: &'a str,
        field: String,
        dst: usize,
    },
    Time {
        col: &'a ArrayRef,
        part: TimePart,
        zone: chrono_tz::Tz,
        cyclical: bool,
        name: &'a str,
        field: String,
        a: usize,
        b: Option<usize>,
    },
}

/// How output column `j` is written from a block.
#[derive(Debug)]
enum Emit {
    Num {
        j: usize,
        src: usize,
    },
    /// A whole one-hot step at output columns `j0 .. j0 + width`, in vocabulary order.
    OneHot {
        idx: usize,
        j0: usize,
        width: usize,
    },
    /// One one-hot cell elsewhere (its step's columns are not adjacent, or partly rewritten).
    Cell {
        j: usize,
        idx: usize,
        k: usize,
    },
}

/// What a column name holds at some point of the pipeline.
#[derive(Clone, Copy, Debug)]
enum Rep {
    Num(usize),
    /// Cell `k` of the one-hot encoding in index column `idx`.
    Cell {
        idx: usize,
        k: usize,
    },
}

struct BlockPlan<'a> {
    kernels: Vec<Kernel<'a>>,
    n_num: usize,
    n_idx: usize,
    emits: Vec<Emit>,
}

struct PlanBuilder<'a> {
    batch: &'a RecordBatch,
    /// Columns written by the steps so far.
    cur: HashMap<&'a str, Rep>,
    /// Input columns already read as numbers.
    loaded: HashMap<&'a str, usize>,
    kernels: Vec<Kernel<'a>>,
    n_num: usize,
    /// Per index column: one-hot width (vocabulary size + 1).
    widths: Vec<usize>,
}

impl<'a> PlanBuilder<'a> {
    fn num_col(&mut self) -> usize {
        self.n_num += 1;
        self.n_num - 1
    }

    fn input(&self, name: &str, field: &str) -> Result<&'a ArrayRef> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| Error::schema(name, format!("{field}: column not found")))
    }

    /// `name` read as numbers: written by an earlier step, else the input column.
    fn num(&mut self, name: &'a str, field: &str) -> Result<usize> {
        match self.cur.get(name) {
            Some(&Rep::Num(c)) => return Ok(c),
            Some(&Rep::Cell { idx, k }) => {
                let dst = self.num_col();
                self.kernels.push(Kernel::Cell { idx, k, dst });
                return Ok(dst);
            }
            None => {}
        }
        if let Some(&c) = self.loaded.get(name) {
            return Ok(c);
        }
        let a = self.input(name, field)?;
        numeric_of(&a.slice(0, 0), name, field)?; // the reference reader's type check
        let col = match a.as_primitive_opt::<arrow_array::types::Float64Type>() {
            Some(f) => NumCol::F64(f),
            None => NumCol::Other(a),
        };
        let dst = self.num_col();
        self.kernels.push(Kernel::Load {
            col,
            name,
            field: field.to_string(),
            dst,
        });
        self.loaded.insert(name, dst);
        Ok(dst)
    }

    /// `name` as a raw categorical input column.
    fn cats(&self, name: &'a str, field: &str) -> Result<&'a ArrayRef> {
        if self.cur.contains_key(name) {
            return Err(Error::schema(name, format!("{field} needs the raw categorical input, but an earlier step rewrote it as numbers")));
        }
        let a = self.input(name, field)?;
        cats_of(&a.slice(0, 0), name, field)?;
        Ok(a)
    }

    fn set(&mut self, name: &'a str, rep: Rep) {
        self.cur.insert(name, rep);
    }
}

fn cat_col<'a>(a: &'a ArrayRef, voc: &Vocab) -> CatCol<'a> {
    match a.data_type() {
        DataType::Utf8 => CatCol::Utf8(a.as_string::<i32>()),
        DataType::LargeUtf8 => CatCol::LargeUtf8(a.as_string::<i64>()),
        DataType::Utf8View => CatCol::View(a.as_string_view()),
        DataType::Dictionary(_, v)
            if matches!(
                v.as_ref(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            match cats_of(a.as_any_dictionary().values(), "", "") {
                Ok(values) => CatCol::Dict(
                    a,
                    values
                        .iter()
                        .map(|c| c.map_or(NULL_IDX, |c| vocab_index(voc, c) as u32))
                        .collect(),
                ),
                Err(_) => CatCol::Other(a),
            }
        }
        _ => CatCol::Other(a),
    }
}

/// Vocabulary indices of rows `r0 .. r0 + out.len()` of a string column.
fn index_strings<'s>(
    nulls: Option<&arrow_buffer::NullBuffer>,
    value: impl Fn(usize) -> &'s str,
    voc: &Vocab,
    r0: usize,
    out: &mut [u32],
) {
    match nulls {
        None => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = vocab_index(voc, CatRef::Str(value(r0 + i))) as u32;
            }
        }
        Some(n) => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = if n.is_null(r0 + i) {
                    NULL_IDX
                } else {
                    vocab_index(voc, CatRef::Str(value(r0 + i))) as u32
                };
            }
        }
    }
}

#[inline]
fn idx_opt(i: u32) -> Option<usize> {
    (i != NULL_IDX).then_some(i as usize)
}

/// `dst[i] = f(src[i])` for a unary numeric step, with the step's scalar function chosen once.
fn map_op(op: &Op, src: &[f64], dst: &mut [f64]) {
    fn each(src: &[f64], dst: &mut [f64], f: impl Fn(f64) -> f64) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = f(x);
        }
    }
    match op {
        Op::FillNull { value } => {
            let v = *value;
            each(src, dst, |x| filled(x, v))
        }
        Op::Impute { value, .. } => {
            let v = value.unwrap_or(f64::NAN);
            each(src, dst, |x| filled(x, v))
        }
        Op::StandardScale {
            fitted: Some((m, s)),
        }
        | Op::RobustScale {
            fitted: Some((m, s)),
        }
        | Op::MinMaxScale {
            fitted: Some((m, s)),
        } => {
            let (m, s) = (*m, *s);
            each(src, dst, |x| scaled(x, m, s))
        }
        Op::Bucketize { boundaries } => each(src, dst, |x| bucket(x, boundaries)),
        Op::QuantileBucketize { edges: Some(e), .. } => {
            let inner = inner_edges(e);
            each(src, dst, |x| bucket(x, inner))
        }
        op => each(src, dst, |x| apply_num(op, x)),
    }
}

/// Where a block writes its outputs: element (i, j) of the block is `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct OutBlock {
    ptr: *mut f64,
    rs: usize,
    cs: usize,
}

impl OutBlock {
    /// # Safety
    /// (i, j) must lie in this block's rows and the matrix's columns, and no other thread may
    /// write this block's rows.
    #[inline(always)]
    unsafe fn put(&self, i: usize, j: usize, v: f64) {
        *self.ptr.add(i * self.rs + j * self.cs) = v;
    }
}

/// The output matrix, shared by the parallel blocks (each writes only its own rows).
#[derive(Clone, Copy)]
struct OutMatrix {
    ptr: *mut f64,
    rows: usize,
    cols: usize,
    layout: Layout,
}
// SAFETY: blocks write disjoint row ranges of the matrix (see `Transforms::transform_dense`).
unsafe impl Send for OutMatrix {}
unsafe impl Sync for OutMatrix {}

impl OutMatrix {
    fn block(&self, row: usize) -> OutBlock {
        match self.layout {
            // SAFETY (of the `add`s): row < rows, so the offsets stay inside the allocation.
            Layout::RowMajor => OutBlock {
                ptr: unsafe { self.ptr.add(row * self.cols) },
                rs: self.cols,
                cs: 1,
            },
            Layout::ColumnMajor => OutBlock {
                ptr: unsafe { self.ptr.add(row) },
                rs: 1,
                cs: self.rows,
            },
        }
    }
}

/// `len` zeroed float64 values. A large buffer comes straight from the OS as zero pages (not
/// written here); on Linux it is also marked for transparent huge pages, so that the first
/// writes fault it in 2 MB at a time instead of 4 KB (numpy does the same for its arrays):
/// page faults were the largest cost of writing a large output.
fn zeroed(len: usize) -> Vec<f64> {
    let v = vec![0f64; len];
    #[cfg(target_os = "linux")]
    advise_huge_pages(&v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &[f64]) {
    use std::ffi::{c_int, c_void};
    extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    }
    const MADV_HUGEPAGE: c_int = 14;
    const PAGE: usize = 4096;
    let bytes = std::mem::size_of_val(v);
    // above glibc's largest mmap threshold (32 MB): the allocation is a mapping of its own
    if bytes < 64 << 20 {
        return;
    }
    let start = (v.as_ptr() as usize).div_ceil(PAGE) * PAGE;
    let end = (v.as_ptr() as usize + bytes) / PAGE * PAGE;
    if end > start {
        // SAFETY: the range lies inside `v`'s allocation; the advice changes no contents (an
        // error, e.g. THP unsupported, just leaves 4 KB pages).
        unsafe { madvise(start as *mut c_void, end - start, MADV_HUGEPAGE) };
    }
}

/// Working columns of one block (reused from block to block by a worker).
struct Scratch {
    num: Vec<Vec<f64>>,
    idx: Vec<Vec<u32>>,
}

impl<'a> BlockPlan<'a> {
    /// Run rows `r0 .. r0 + len` of the plan's batch and write them to `out` (whose row 0 is
    /// row `r0`). Marks in `has_null` the output columns that got a null.
    fn run(
        &self,
        r0: usize,
        len: usize,
        s: &mut Scratch,
        out: OutBlock,
        has_null: &mut [bool],
    ) -> Result<()> {
        let non_finite = |name: &str, field: &str| {
            Error::schema(
                name,
                format!("{field}: NaN and infinite inputs are rejected"),
            )
        };
        for k in &self.kernels {
            match k {
                Kernel::Load {
                    col,
                    name,
                    field,
                    dst,
                } => {
                    let d = &mut s.num[*dst][..len];
                    match col {
                        NumCol::F64(f) => {
                            let vals = &f.values()[r0..r0 + len];
                            let mut bad = false;
                            match f.nulls() {
                                None => {
                                    d.copy_from_slice(vals);
                                    bad = vals.iter().fold(false, |e, x| e | !x.is_finite());
                                }
                                Some(n) => {
                                    // nulls are NaN; valid runs are copied and checked
                                    d.fill(f64::NAN);
                                    for (a, b) in n.inner().slice(r0, len).set_slices() {
                                        let v = &vals[a..b];
                                        d[a..b].copy_from_slice(v);
                                        bad |= v.iter().fold(false, |e, x| e | !x.is_finite());
                                    }
                                }
                            }
                            if bad {
                                return Err(non_finite(name, field));
                            }
                        }
                        NumCol::Other(a) => {
                            d.copy_from_slice(&numeric_of(&a.slice(r0, len), name, field)?);
                        }
                    }
                }
                Kernel::Map { op, src, dst } => {
                    let mut d = std::mem::take(&mut s.num[*dst]);
                    map_op(op, &s.num[*src][..len], &mut d[..len]);
                    s.num[*dst] = d;
                }
                Kernel::NullOfInput { nulls, dst } => {
                    for (i, d) in s.num[*dst][..len].iter_mut().enumerate() {
                        let null = nulls.as_ref().is_some_and(|n| n.is_null(r0 + i));
                        *d = if null { 1.0 } else { 0.0 };
                    }
                }
                Kernel::NullOf { src, dst } => {
                    let mut d = std::mem::take(&mut s.num[*dst]);
                    for (d, &x) in d[..len].iter_mut().zip(&s.num[*src][..len]) {
                        *d = if x.is_nan() { 1.0 } else { 0.0 };
                    }
                    s.num[*dst] = d;
                }
                Kernel::Cell { idx, k, dst } => {
                    for (d, &i) in s.num[*dst][..len].iter_mut().zip(&s.idx[*idx][..len]) {
                        *d = one_hot_cell(idx_opt(i), *k);
                    }
                }
                Kernel::Binary {
                    kind,
                    on_zero,
                    a,
                    b,
                    dst,
                } => {
                    let mut d = std::mem::take(&mut s.num[*dst]);
                    let (xa, xb) = (&s.num[*a][..len], &s.num[*b][..len]);
                    for ((d, &x), &y) in d[..len].iter_mut().zip(xa).zip(xb) {
                        *d = binary(*kind, x, y, *on_zero);
                    }
                    s.num[*dst] = d;
                }
                Kernel::Index {
                    col,
                    vocab,
                    name,
                    field,
                    idx,
                } => {
                    let o = &mut s.idx[*idx][..len];
                    match col {
                        CatCol::Utf8(a) => index_strings(a.nulls(), |i| a.value(i), vocab, r0, o),
                        CatCol::LargeUtf8(a) => {
                            index_strings(a.nulls(), |i| a.value(i), vocab, r0, o)
                        }
                        CatCol::View(a) => index_strings(a.nulls(), |i| a.value(i), vocab, r0, o),
                        CatCol::Dict(_, map) if map.is_empty() => o.fill(NULL_IDX), // all null
                        CatCol::Dict(a, map) => {
                            let part = a.slice(r0, len);
                            let d = part.as_any_dictionary();
                            let keys = d.normalized_keys();
                            let nulls = part.logical_nulls();
                            for (i, o) in o.iter_mut().enumerate() {
                                *o = if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                                    NULL_IDX
                                } else {
                                    map[keys[i]]
                                };
                            }
                        }
                        CatCol::Other(a) => {
                            let part = a.slice(r0, len);
                            let c = cats_of(&part, name, field)?;
                            for (o, c) in o.iter_mut().zip(c) {
                                *o = c.map_or(NULL_IDX, |c| vocab_index(vocab, c) as u32);
                            }
                        }
                    }
                }
                Kernel::Ordinal { idx, dst } => {
                    for (d, &i) in s.num[*dst][..len].iter_mut().zip(&s.idx[*idx][..len]) {
                        *d = ordinal_value(idx_opt(i));
                    }
                }
                Kernel::PerCat {
                    col,
                    value,
                    name,
                    field,
                    dst,
                } => {
                    let part = col.slice(r0, len);
                    let c = cats_of(&part, name, field)?;
                    let d = &mut s.num[*dst][..len];
                    match value {
                        CatValue::Hash(n) => {
                            for (d, c) in d.iter_mut().zip(c) {
                                *d = c.map(|c| hash_bucket(&c, *n)).unwrap_or(f64::NAN);
                            }
                        }
                        CatValue::Target(table, mean) => {
                            for (d, c) in d.iter_mut().zip(c) {
                                *d = target_value(table, *mean, c);
                            }
                        }
                    }
                }
                Kernel::Time {
                    col,
                    part,
                    zone,
                    cyclical,
                    name,
                    field,
                    a,
                    b,
                } => {
                    let t = times_of(&col.slice(r0, len), name, field)?;
                    let mut da = std::mem::take(&mut s.num[*a]);
                    for (i, &t) in t.iter().enumerate() {
                        let (x, y) = time_part(*part, zone, t, *cyclical);
                        da[i] = x;
                        if let Some(b) = b {
                            s.num[*b][i] = y;
                        }
                    }
                    s.num[*a] = da;
                }
            }
        }
        self.emit(s, len, out, has_null);
        Ok(())
    }

    /// Write the block's outputs. The matrix is zeroed: a one-hot step writes only the 1.0 of
    /// a row (or the NaNs of a null category).
    fn emit(&self, s: &Scratch, len: usize, out: OutBlock, has_null: &mut [bool]) {
        for e in &self.emits {
            match *e {
                Emit::Num { j, src } => {
                    has_null[j] |= s.num[src][..len].iter().fold(false, |n, x| n | x.is_nan());
                }
                Emit::OneHot { idx, j0, width } => {
                    if s.idx[idx][..len].contains(&NULL_IDX) {
                        has_null[j0..j0 + width].iter_mut().for_each(|n| *n = true);
                    }
                }
                Emit::Cell { j, idx, .. } => {
                    has_null[j] |= s.idx[idx][..len].contains(&NULL_IDX);
                }
            }
        }
        // SAFETY (of every `put`): i < len rows of this block, j < the matrix's columns.
        if out.cs == 1 {
            // row-major: row by row, so that the writes of a row are adjacent
            let nums: SmallVec<[(usize, &[f64]); 32]> = self
                .emits
                .iter()
                .filter_map(|e| match *e {
                    Emit::Num { j, src } => Some((j, &s.num[src][..len])),
                    _ => None,
                })
                .collect();
            let hots: SmallVec<[(usize, usize, &[u32]); 16]> = self
                .emits
                .iter()
                .filter_map(|e| match *e {
                    Emit::OneHot { idx, j0, width } => Some((j0, width, &s.idx[idx][..len])),
                    _ => None,
                })
                .collect();
            for i in 0..len {
                for &(j, v) in &nums {
                    unsafe { out.put(i, j, v[i]) };
                }
                for &(j0, width, c) in &hots {
                    one_hot_row(out, i, j0, width, c[i]);
                }
            }
        } else {
            for e in &self.emits {
                match *e {
                    Emit::Num { j, src } => {
                        for (i, &x) in s.num[src][..len].iter().enumerate() {
                            unsafe { out.put(i, j, x) };
                        }
                    }
                    Emit::OneHot { idx, j0, width } => {
                        for (i, &c) in s.idx[idx][..len].iter().enumerate() {
                            one_hot_row(out, i, j0, width, c);
                        }
                    }
                    Emit::Cell { .. } => {}
                }
            }
        }
        for e in &self.emits {
            if let Emit::Cell { j, idx, k } = *e {
                for (i, &c) in s.idx[idx][..len].iter().enumerate() {
                    unsafe { out.put(i, j, one_hot_cell(idx_opt(c), k)) };
                }
            }
        }
    }
}

/// Row `i` of a one-hot step at columns `j0 .. j0 + width` of a zeroed matrix: the 1.0 of
/// vocabulary index `c`, or NaN in every column for a null category.
#[inline(always)]
fn one_hot_row(out: OutBlock, i: usize, j0: usize, width: usize, c: u32) {
    // SAFETY: i is a row of the block; the step's columns are inside the matrix, and
    // c < width (a vocabulary index, or `len(vocabulary)` for other).
    if c == NULL_IDX {
        for k in 0..width {
            unsafe { out.put(i, j0 + k, f64::NAN) };
        }
    } else {
        debug_assert!((c as usize) < width);
        unsafe { out.put(i, j0 + c as usize, 1.0) };
    }
}

impl Transforms {
    /// Compile the fitted pipeline for the dense driver on `batch`'s columns.
    fn block_plan<'a>(&'a self, batch: &'a RecordBatch) -> Result<BlockPlan<'a>> {
        let mut b = PlanBuilder {
            batch,
            cur: HashMap::new(),
            loaded: HashMap::new(),
            kernels: Vec::new(),
            n_num: 0,
            widths: Vec::new(),
        };
        for (i, step) in self.steps.iter().enumerate() {
            let field = step.field(i);
            let col = step.column.as_str();
            let name = step.name.as_str();
            match &step.op {
                Op::Passthrough => {
                    let c = b.num(col, &field)?;
                    b.set(name, Rep::Num(c));
                }
                Op::IsNull => {
                    let dst = b.num_col();
                    if b.cur.contains_key(col) {
                        let src = b.num(col, &field)?;
                        b.kernels.push(Kernel::NullOf { src, dst });
                    } else {
                        let a = b.input(col, &field)?;
                        b.kernels.push(Kernel::NullOfInput {
                            nulls: a.logical_nulls(),
                            dst,
                        });
                    }
                    b.set(name, Rep::Num(dst));
                }
                Op::Binary {
                    kind,
                    other,
                    on_zero,
                } => {
                    let x = b.num(col, &field)?;
                    let y = b.num(other, &field)?;
                    let dst = b.num_col();
                    b.kernels.push(Kernel::Binary {
                        kind: *kind,
                        on_zero: *on_zero,
                        a: x,
                        b: y,
                        dst,
                    });
                    b.set(name, Rep::Num(dst));
                }
                Op::HashBucket { n } => {
                    let a = b.cats(col, &field)?;
                    let dst = b.num_col();
                    b.kernels.push(Kernel::PerCat {
                        col: a,
                        value: CatValue::Hash(*n),
                        name: col,
                        field,
                        dst,
                    });
                    b.set(name, Rep::Num(dst));
                }
                Op::TargetEncode { fitted, .. } => {
                    let a = b.cats(col, &field)?;
                    let (table, mean) = fitted
                        .as_ref()
                        .ok_or_else(|| Error::spec(&field, "not fitted"))?;
                    let dst = b.num_col();
                    b.kernels.push(Kernel::PerCat {
                        col: a,
                        value: CatValue::Target(table, *mean),
                        name: col,
                        field,
                        dst,
                    });
                    b.set(name, Rep::Num(dst));
                }
                Op::Time { part, tz, cyclical } => {
                    let zone = chrono_tz::Tz::from_str(tz)
                        .map_err(|_| Error::spec(&field, format!("unknown time zone {tz:?}")))?;
                    let a = b.input(col, &field)?; // the raw input, as in the reference driver
                    times_of(&a.slice(0, 0), col, &field)?;
                    let da = b.num_col();
                    let db = cyclical.then(|| b.num_col());
                    b.kernels.push(Kernel::Time {
                        col: a,
                        part: *part,
                        zone,
                        cyclical: *cyclical,
                        name: col,
                        field,
                        a: da,
                        b: db,
                    });
                    let outs = step.outputs();
                    b.set(&outs[0], Rep::Num(da));
                    if let Some(db) = db {
                        b.set(&outs[1], Rep::Num(db));
                    }
                }
                Op::OneHot { vocab, .. } | Op::Ordinal { vocab, .. } => {
                    let a = b.cats(col, &field)?;
                    let voc = vocab
                        .as_ref()
                        .ok_or_else(|| Error::spec(&field, "not fitted"))?;
                    if voc.cats.len() >= NULL_IDX as usize {
                        return Err(Error::spec(&field, "vocabulary too large"));
                    }
                    let idx = b.widths.len();
                    b.widths.push(voc.cats.len() + 1);
                    b.kernels.push(Kernel::Index {
                        col: cat_col(a, voc),
                        vocab: voc,
                        name: col,
                        field,
                        idx,
                    });
                    if matches!(step.op, Op::OneHot { .. }) {
                        for (k, out) in step.outputs().iter().enumerate() {
                            b.set(out, Rep::Cell { idx, k });
                        }
                    } else {
                        let dst = b.num_col();
                        b.kernels.push(Kernel::Ordinal { idx, dst });
                        b.set(name, Rep::Num(dst));
                    }
                }
                op => {
                    let src = b.num(col, &field)?;
                    let dst = b.num_col();
                    b.kernels.push(Kernel::Map { op, src, dst });
                    b.set(name, Rep::Num(dst));
                }
            }
        }
        let reps: Vec<Rep> = self
            .names
            .iter()
            .map(|n| {
                b.cur
                    .get(n.as_str())
                    .copied()
                    .ok_or_else(|| Error::spec(n, "output was not computed"))
            })
            .collect::<Result<_>>()?;
        let mut emits = Vec::new();
        let mut j = 0;
        while j < reps.len() {
            match reps[j] {
                Rep::Num(src) => emits.push(Emit::Num { j, src }),
                Rep::Cell { idx, k } => {
                    let width = b.widths[idx];
                    let whole = k == 0
                        && j + width <= reps.len()
                        && (0..width).all(|m| {
                            matches!(reps[j + m], Rep::Cell { idx: i, k } if i == idx && k == m)
                        });
                    if whole {
                        emits.push(Emit::OneHot { idx, j0: j, width });
                        j += width;
                        continue;
                    }
                    emits.push(Emit::Cell { j, idx, k });
                }
            }
            j += 1;
        }
        Ok(BlockPlan {
            kernels: b.kernels,
            n_num: b.n_num,
            n_idx: b.widths.len(),
            emits,
        })
    }

    /// Apply the fitted pipeline to a table given as record batches (all of one schema), into
    /// one dense float64 matrix: a column per feature name, a row per input row, NaN = null.
    /// Bit-identical to the one-row driver and to [`Transforms::transform_reference`]; parallel
    /// over blocks of rows. An error is the one the reference driver reports.
    pub fn transform_dense(&self, batches: &[RecordBatch], layout: Layout) -> Result<Dense> {
        if !self.is_fitted() {
            return Err(Error::spec(
                "transforms",
                "not fitted: call fit(table) first",
            ));
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let cols = self.names.len();
        let result = self.dense_blocks(batches, rows, cols, layout);
        match result {
            Ok((values, has_null)) => Ok(Dense {
                values,
                rows,
                cols,
                layout,
                has_null,
            }),
            Err(e) => {
                // the reference driver's error: the first failing step, with row numbers in
                // the whole table
                match batches {
                    [] => Err(e),
                    [b] => self.apply(b).and(Err(e)),
                    [b, ..] => match arrow_select::concat::concat_batches(&b.schema(), batches) {
                        Ok(all) => self.apply(&all).and(Err(e)),
                        Err(_) => Err(e),
                    },
                }
            }
        }
    }

    fn dense_blocks(
        &self,
        batches: &[RecordBatch],
        rows: usize,
        cols: usize,
        layout: Layout,
    ) -> Result<(Vec<f64>, Vec<bool>)> {
        let plans: Vec<BlockPlan<'_>> = batches
            .iter()
            .map(|b| self.block_plan(b))
            .collect::<Result<_>>()?;
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::spec("transforms", "output too large"))?;
        if len == 0 {
            return Ok((Vec::new(), vec![false; cols])); // (the plans checked the columns)
        }
        // zeroed (fresh pages from the OS for a large matrix): one-hot writes only its 1.0s
        let mut values = zeroed(len);
        let out = OutMatrix {
            ptr: values.as_mut_ptr(),
            rows,
            cols,
            layout,
        };
        // (plan, first row in the batch, first row in the matrix, rows)
        let mut blocks: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut at = 0;
        for (p, b) in batches.iter().enumerate() {
            let n = b.num_rows();
            for r0 in (0..n).step_by(BLOCK) {
                blocks.push((p, r0, at + r0, BLOCK.min(n - r0)));
            }
            at += n;
        }
        let (n_num, n_idx) = plans
            .iter()
            .fold((0, 0), |(a, b), p| (a.max(p.n_num), b.max(p.n_idx)));
        let scratch = || Scratch {
            num: vec![vec![0.0; BLOCK]; n_num],
            idx: vec![vec![0; BLOCK]; n_idx],
        };
        let run = |s: &mut Scratch, &(p, r0, row, n): &(usize, usize, usize, usize)| {
            let mut has_null = vec![false; cols];
            plans[p].run(r0, n, s, out.block(row), &mut has_null)?;
            Ok(has_null)
        };
        let merge = |mut a: Vec<bool>, b: Vec<bool>| -> Result<Vec<bool>> {
            a.iter_mut().zip(b).for_each(|(a, b)| *a |= b);
            Ok(a)
        };
        let has_null = if blocks.len() <= 1 {
            let mut s = scratch();
            blocks
                .iter()
                .try_fold(vec![false; cols], |a, b| merge(a, run(&mut s, b)?))?
        } else {
            crate::pool::install(|| {
                blocks
                    .par_iter()
                    .map_init(scratch, run)
                    .try_reduce(|| vec![false; cols], merge)
            })?
        };
        Ok((values, has_null))
    }
}

/// Fit one step on the current frame. Returns out-of-fold outputs that replace the step's
/// normal output (target encoding in fit_transform).
fn fit_step(step: &mut Step, i: usize, frame: &Frame<'_>, oof: bool) -> Result<Option<Vec<f64>>> {
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

/// Read (and so check) a step's inputs without computing its outputs.
fn validate_step(step: &Step, i: usize, frame: &Frame<'_>) -> Result<()> {
    let field = step.field(i);
    let col = &step.column;
    match &step.op {
        Op::IsNull => {
            frame.is_null(col, &field)?;
        }
        Op::Binary { other, .. } => {
            frame.num(col, &field)?;
            frame.num(other, &field)?;
        }
        Op::HashBucket { .. }
        | Op::OneHot { .. }
        | Op::Ordinal { .. }
        | Op::TargetEncode { .. } => {
            frame.cats(col, &field)?;
        }
        Op::Time { tz, .. } => {
            chrono_tz::Tz::from_str(tz)
                .map_err(|_| Error::spec(&field, format!("unknown time zone {tz:?}")))?;
            frame.times(col, &field)?;
        }
        _ => {
            frame.num(col, &field)?;
        }
    }
    Ok(())
}

/// Apply one fitted step to the frame (`replaced`: precomputed output to use instead).
fn apply_step(
    step: &Step,
    i: usize,
    frame: &mut Frame<'_>,
    replaced: Option<Vec<f64>>,
) -> Result<()> {
    let field = step.field(i);
    let col = &step.column;
    if let Some(v) = replaced {
        frame.set(step.name.clone(), v);
        return Ok(());
    }
    match &step.op {
        Op::Passthrough => {
            let v = frame.num(col, &field)?.into_owned();
            frame.set(step.name.clone(), v);
        }
        Op::IsNull => {
            let v = frame.is_null(col, &field)?;
            frame.set(step.name.clone(), v);
        }
        Op::Binary {
            kind,
            other,
            on_zero,
        } => {
            let a = frame.num(col, &field)?.into_owned();
            let b = frame.num(other, &field)?;
            let v = a
                .iter()
                .zip(b.iter())
                .map(|(&x, &y)| binary(*kind, x, y, *on_zero))
                .collect();
            frame.set(step.name.clone(), v);
        }
        Op::HashBucket { n: buckets } => {
            let c = frame.cats(col, &field)?;
            let v = c
                .iter()
                .map(|c| c.map(|c| hash_bucket(&c, *buckets)).unwrap_or(f64::NAN))
                .collect();
            frame.set(step.name.clone(), v);
        }
        Op::Time { part, tz, cyclical } => {
            let zone = chrono_tz::Tz::from_str(tz)
                .map_err(|_| Error::spec(&field, format!("unknown time zone {tz:?}")))?;
            let t = frame.times(col, &field)?;
            let (a, b): (Vec<f64>, Vec<f64>) = t
                .iter()
                .map(|&t| time_part(*part, &zone, t, *cyclical))
                .unzip();
            let outs = step.outputs();
            frame.set(outs[0].clone(), a);
            if *cyclical {
                frame.set(outs[1].clone(), b);
            }
        }
        Op::OneHot { vocab, .. } | Op::Ordinal { vocab, .. } => {
            let c = frame.cats(col, &field)?;
            let voc = vocab
                .as_ref()
                .ok_or_else(|| Error::spec(&field, "not fitted"))?;
            let idx: Vec<Option<usize>> =
                c.iter().map(|c| c.map(|c| vocab_index(voc, c))).collect();
            if matches!(step.op, Op::OneHot { .. }) {
                for (k, out) in step.outputs().iter().enumerate() {
                    // null stays null: every column of a null category is null
                    let v = idx.iter().map(|&i| one_hot_cell(i, k)).collect();
                    frame.set(out.clone(), v);
                }
            } else {
                frame.set(
                    step.name.clone(),
                    idx.iter().map(|&i| ordinal_value(i)).collect(),
                );
            }
        }
        Op::TargetEncode { fitted, .. } => {
            let c = frame.cats(col, &field)?;
            let (table, mean) = fitted
                .as_ref()
                .ok_or_else(|| Error::spec(&field, "not fitted"))?;
            let v = c.iter().map(|&c| target_value(table, *mean, c)).collect();
            frame.set(step.name.clone(), v);
        }
        op => {
            let x = frame.num(col, &field)?;
            let v = x.iter().map(|&x| apply_num(op, x)).collect();
            frame.set(step.name.clone(), v);
        }
    }
    Ok(())
}

fn fold_bounds(n: usize, k: usize, f: usize) -> (usize, usize) {
    // like numpy.array_split / sklearn KFold(shuffle=False): the first n % k folds get one more
    let base = n / k;
    let extra = n % k;
    let lo = f * base + f.min(extra);
    let hi = lo + base + usize::from(f < extra);
    (lo, hi)
}

// ---- per-value math shared by the table driver and the one-row driver

/// Vocabulary index of a category; infrequent and unseen values get `len(vocabulary)`.
#[inline]
fn vocab_index(voc: &Vocab, c: CatRef<'_>) -> usize {
    voc.get(&c).unwrap_or(voc.cats.len())
}

/// Cell `k` of a one-hot encoding of vocabulary index `idx` (null stays null).
#[inline]
fn one_hot_cell(idx: Option<usize>, k: usize) -> f64 {
    match idx {
        None => f64::NAN,
        Some(i) if i == k => 1.0,
        Some(_) => 0.0,
    }
}

#[inline]
fn ordinal_value(idx: Option<usize>) -> f64 {
    idx.map(|i| i as f64).unwrap_or(f64::NAN)
}

/// Fitted encoding of a category (`mean` for unseen ones, null for null).
#[inline]
fn target_value(table: &[(Cat, f64)], mean: f64, c: Option<CatRef<'_>>) -> f64 {
    match c {
        None => f64::NAN,
        Some(c) => match table.binary_search_by(|(k, _)| k.as_ref().cmp(&c)) {
            Ok(p) => table[p].1,
            Err(_) => mean,
        },
    }
}

/// A time part in `zone`: (value, NaN), or (sin, cos) when cyclical; nulls stay null.
#[inline]
fn time_part(part: TimePart, zone: &chrono_tz::Tz, t: Option<i64>, cyclical: bool) -> (f64, f64) {
    let Some(ns) = t else {
        return (f64::NAN, f64::NAN);
    };
    let (v, period) = part.of(&zone.timestamp_nanos(ns));
    if cyclical {
        let angle = 2.0 * std::f64::consts::PI * (v - part.offset()) / period;
        (libm::sin(angle), libm::cos(angle))
    } else {
        (v, f64::NAN)
    }
}

#[inline]
fn binary(kind: char, x: f64, y: f64, on_zero: Option<f64>) -> f64 {
    if x.is_nan() || y.is_nan() {
        return f64::NAN;
    }
    match kind {
        '+' => x + y,
        '-' => x - y,
        '*' => x * y,
        _ => {
            if y == 0.0 {
                on_zero.unwrap_or(f64::NAN)
            } else {
                x / y
            }
        }
    }
}

#[inline]
fn hash_bucket(c: &CatRef<'_>, n: u64) -> f64 {
    let h = match c {
        CatRef::Str(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        CatRef::Int(i) => xxhash_rust::xxh3::xxh3_64(i.to_string().as_bytes()),
    };
    (h % n) as f64
}

fn fit_numeric(op: &mut Op, x: &[f64], field: &str) -> Result<()> {
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

fn fit_numeric_inner(op: &mut Op, x: &[f64], field: &str) -> Result<()> {
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

// ---------------------------------------------------------------- the JSON document

fn num_field(o: &Map<String, Value>, key: &str, field: &str) -> Result<Option<f64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| {
                Error::spec(
                    format!("{field}.{key}"),
                    format!("expected a finite number, got {v}"),
                )
            }),
    }
}

fn str_field(o: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(Error::spec(
            format!("{field}.{key}"),
            format!("expected a string, got {v}"),
        )),
    }
}

fn pair(o: &Map<String, Value>, a: &str, b: &str, field: &str) -> Result<Option<(f64, f64)>> {
    match (num_field(o, a, field)?, num_field(o, b, field)?) {
        (Some(x), Some(y)) => {
            if y == 0.0 {
                return Err(Error::spec(format!("{field}.{b}"), "must not be zero"));
            }
            Ok(Some((x, y)))
        }
        (None, None) => Ok(None),
        _ => Err(Error::spec(
            field,
            format!("fitted state needs both {a} and {b}"),
        )),
    }
}

fn vocab_field(o: &Map<String, Value>, field: &str) -> Result<Option<Vocab>> {
    match o.get("vocabulary") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            let cats: Vec<Cat> = a
                .iter()
                .map(|v| Cat::from_json(v, &format!("{field}.vocabulary")))
                .collect::<Result<_>>()?;
            let mut sorted = cats.clone();
            sorted.sort();
            sorted.dedup();
            if sorted != cats {
                return Err(Error::spec(
                    format!("{field}.vocabulary"),
                    "must be sorted and without duplicates",
                ));
            }
            Ok(Some(Vocab::new(cats)))
        }
        Some(v) => Err(Error::spec(
            format!("{field}.vocabulary"),
            format!("expected a list, got {v}"),
        )),
    }
}

impl Transforms {
    pub fn from_json(text: &str) -> Result<Transforms> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::spec("document", format!("not valid JSON: {e}")))?;
        let o = v
            .as_object()
            .ok_or_else(|| Error::spec("document", "expected a JSON object"))?;
        if let Some(f) = o.get("format") {
            if f != FORMAT {
                return Err(Error::spec(
                    "format",
                    format!("expected {FORMAT:?}, got {f}"),
                ));
            }
        }
        let version = o
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::spec("version", "is required"))?;
        if version > VERSION {
            return Err(Error::spec(
                "version",
                format!("document version {version} was written by a newer rtml (this one reads up to {VERSION}): upgrade rtml"),
            ));
        }
        let steps = o
            .get("steps")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::spec("steps", "is required (a list)"))?;
        let mut out = Vec::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            out.push(parse_step(s, i)?);
        }
        if out.is_empty() {
            return Err(Error::spec("steps", "a pipeline needs at least one step"));
        }
        let mut t = Transforms {
            steps: out,
            names: Vec::new(),
            row: RowPlan::default(),
        };
        t.refresh();
        Ok(t)
    }

    pub fn to_json(&self) -> String {
        let steps: Vec<Value> = self.steps.iter().map(step_json).collect();
        serde_json::to_string_pretty(&json!({"format": FORMAT, "version": VERSION, "steps": steps}))
            .unwrap_or_default()
    }
}

fn step_json(s: &Step) -> Value {
    let mut m = Map::new();
    m.insert("op".into(), json!(s.op.name()));
    m.insert("column".into(), json!(s.column));
    m.insert("name".into(), json!(s.name));
    let put = |m: &mut Map<String, Value>, k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match &s.op {
        Op::Clip { lo, hi } => {
            put(&mut m, "lo", json!(lo));
            put(&mut m, "hi", json!(hi));
        }
        Op::Power { p } => put(&mut m, "p", json!(p)),
        Op::Binary { other, on_zero, .. } => {
            put(&mut m, "other", json!(other));
            put(&mut m, "on_zero", json!(on_zero));
        }
        Op::FillNull { value } => put(&mut m, "value", json!(value)),
        Op::HashBucket { n } => put(&mut m, "n", json!(n)),
        Op::Time { tz, cyclical, .. } => {
            put(&mut m, "tz", json!(tz));
            put(&mut m, "cyclical", json!(cyclical));
        }
        Op::StandardScale { fitted } | Op::RobustScale { fitted } => {
            if let Some((c, sc)) = fitted {
                put(&mut m, "center", json!(c));
                put(&mut m, "scale", json!(sc));
            }
        }
        Op::MinMaxScale {
            fitted: Some((lo, r)),
        } => {
            put(&mut m, "min", json!(lo));
            put(&mut m, "range", json!(r));
        }
        Op::MinMaxScale { fitted: None } => {}
        Op::Bucketize { boundaries } => put(&mut m, "boundaries", json!(boundaries)),
        Op::QuantileBucketize { n, edges } => {
            put(&mut m, "n", json!(n));
            if let Some(e) = edges {
                put(&mut m, "edges", json!(e));
            }
        }
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
            put(&mut m, "min_frequency", json!(min_frequency));
            put(&mut m, "max_categories", json!(max_categories));
            if let Some(v) = vocab {
                put(
                    &mut m,
                    "vocabulary",
                    Value::Array(v.cats.iter().map(Cat::to_json).collect()),
                );
            }
        }
        Op::Impute { strategy, value } => {
            let s = match strategy {
                Impute::Mean => "mean",
                Impute::Median => "median",
                Impute::MostFrequent => "most_frequent",
                Impute::Constant => "constant",
            };
            put(&mut m, "strategy", json!(s));
            put(&mut m, "value", json!(value));
        }
        Op::TargetEncode {
            target,
            smooth,
            folds,
            fitted,
        } => {
            put(&mut m, "target", json!(target));
            put(&mut m, "smooth", json!(smooth));
            put(&mut m, "folds", json!(folds));
            if let Some((table, mean)) = fitted {
                put(
                    &mut m,
                    "categories",
                    Value::Array(table.iter().map(|(c, _)| c.to_json()).collect()),
                );
                put(
                    &mut m,
                    "encodings",
                    json!(table.iter().map(|(_, v)| *v).collect::<Vec<f64>>()),
                );
                put(&mut m, "default", json!(mean));
            }
        }
        _ => {}
    }
    Value::Object(m)
}

fn parse_step(v: &Value, i: usize) -> Result<Step> {
    let base = format!("steps[{i}]");
    let o = v
        .as_object()
        .ok_or_else(|| Error::spec(&base, "expected a JSON object"))?;
    let op_name = str_field(o, "op", &base)?
        .ok_or_else(|| Error::spec(format!("{base}.op"), "is required"))?;
    let column = str_field(o, "column", &base)?
        .ok_or_else(|| Error::spec(format!("{base}.column"), "is required"))?;
    let field = format!("{base} ({op_name} of '{column}')");
    let need = |k: &str| -> Result<f64> {
        num_field(o, k, &field)?.ok_or_else(|| Error::spec(format!("{field}.{k}"), "is required"))
    };
    let count = |k: &str| -> Result<Option<u64>> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().filter(|n| *n >= 1).map(Some).ok_or_else(|| {
                Error::spec(
                    format!("{field}.{k}"),
                    format!("expected a positive integer, got {v}"),
                )
            }),
        }
    };
    let op = match op_name.as_str() {
        "log1p" => Op::Log1p,
        "abs" => Op::Abs,
        "clip" => {
            let (lo, hi) = (need("lo")?, need("hi")?);
            if lo > hi {
                return Err(Error::spec(&field, format!("lo ({lo}) > hi ({hi})")));
            }
            Op::Clip { lo, hi }
        }
        "power" => Op::Power { p: need("p")? },
        "add" | "sub" | "mul" | "ratio" => Op::Binary {
            kind: match op_name.as_str() {
                "add" => '+',
                "sub" => '-',
                "mul" => '*',
                _ => '/',
            },
            other: str_field(o, "other", &field)?
                .ok_or_else(|| Error::spec(format!("{field}.other"), "is required"))?,
            on_zero: num_field(o, "on_zero", &field)?,
        },
        "is_null" => Op::IsNull,
        "fill_null" => Op::FillNull {
            value: need("value")?,
        },
        "hash_bucket" => Op::HashBucket {
            n: count("n")?.ok_or_else(|| Error::spec(format!("{field}.n"), "is required"))?,
        },
        "hour_of_day" | "day_of_week" | "day_of_month" | "month" => {
            let tz = str_field(o, "tz", &field)?.ok_or_else(|| {
                Error::spec(
                    format!("{field}.tz"),
                    "is required (e.g. 'UTC', 'America/New_York')",
                )
            })?;
            chrono_tz::Tz::from_str(&tz).map_err(|_| {
                Error::spec(format!("{field}.tz"), format!("unknown time zone {tz:?}"))
            })?;
            Op::Time {
                part: match op_name.as_str() {
                    "hour_of_day" => TimePart::Hour,
                    "day_of_week" => TimePart::DayOfWeek,
                    "day_of_month" => TimePart::DayOfMonth,
                    _ => TimePart::Month,
                },
                tz,
                cyclical: o.get("cyclical").and_then(Value::as_bool).unwrap_or(false),
            }
        }
        "standard_scale" => Op::StandardScale {
            fitted: pair(o, "center", "scale", &field)?,
        },
        "robust_scale" => Op::RobustScale {
            fitted: pair(o, "center", "scale", &field)?,
        },
        "min_max_scale" => Op::MinMaxScale {
            fitted: pair(o, "min", "range", &field)?,
        },
        "bucketize" => {
            let b: Vec<f64> = match o.get("boundaries") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                            Error::spec(format!("{field}.boundaries"), "expected finite numbers")
                        })
                    })
                    .collect::<Result<_>>()?,
                _ => {
                    return Err(Error::spec(
                        format!("{field}.boundaries"),
                        "is required (a list of numbers)",
                    ))
                }
            };
            if b.windows(2).any(|w| w[0] >= w[1]) || b.is_empty() {
                return Err(Error::spec(
                    format!("{field}.boundaries"),
                    "must be a non-empty, strictly increasing list",
                ));
            }
            Op::Bucketize { boundaries: b }
        }
        "quantile_bucketize" => {
            let n = count("n")?.ok_or_else(|| Error::spec(format!("{field}.n"), "is required"))?;
            // fit computes n + 1 quantiles: an absurd n must not allocate without bound
            if n > MAX_QUANTILE_BUCKETS {
                return Err(Error::spec(
                    format!("{field}.n"),
                    format!("at most {MAX_QUANTILE_BUCKETS} buckets, got {n}"),
                ));
            }
            let n = n as usize;
            let edges = match o.get("edges") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => {
                    let e: Vec<f64> = a
                        .iter()
                        .map(|x| {
                            x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                                Error::spec(format!("{field}.edges"), "expected finite numbers")
                            })
                        })
                        .collect::<Result<_>>()?;
                    if e.is_empty() || e.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(Error::spec(
                            format!("{field}.edges"),
                            "must be a non-empty, strictly increasing list",
                        ));
                    }
                    Some(e)
                }
                Some(v) => {
                    return Err(Error::spec(
                        format!("{field}.edges"),
                        format!("expected a list, got {v}"),
                    ))
                }
            };
            Op::QuantileBucketize { n, edges }
        }
        "one_hot" | "ordinal" => {
            let min_frequency = count("min_frequency")?.unwrap_or(1);
            let max_categories = count("max_categories")?.map(|m| m as usize);
            let vocab = vocab_field(o, &field)?;
            if op_name == "one_hot" {
                Op::OneHot {
                    min_frequency,
                    max_categories,
                    vocab,
                }
            } else {
                Op::Ordinal {
                    min_frequency,
                    max_categories,
                    vocab,
                }
            }
        }
        "impute" => {
            let strategy = match str_field(o, "strategy", &field)?.as_deref() {
                Some("mean") => Impute::Mean,
                Some("median") => Impute::Median,
                Some("most_frequent") => Impute::MostFrequent,
                Some("constant") => Impute::Constant,
                other => {
                    return Err(Error::spec(
                        format!("{field}.strategy"),
                        format!("expected mean, median, most_frequent or constant, got {other:?}"),
                    ))
                }
            };
            let value = num_field(o, "value", &field)?;
            if strategy == Impute::Constant && value.is_none() {
                return Err(Error::spec(
                    format!("{field}.value"),
                    "constant impute needs value",
                ));
            }
            Op::Impute { strategy, value }
        }
        "target_encode" => {
            let target = str_field(o, "target", &field)?
                .ok_or_else(|| Error::spec(format!("{field}.target"), "is required"))?;
            let smooth = num_field(o, "smooth", &field)?.unwrap_or(10.0);
            if smooth < 0.0 {
                return Err(Error::spec(format!("{field}.smooth"), "must be >= 0"));
            }
            let folds = count("folds")?.unwrap_or(5) as usize;
            if folds < 2 {
                return Err(Error::spec(format!("{field}.folds"), "must be at least 2"));
            }
            let fitted = match (o.get("categories"), o.get("encodings")) {
                (Some(Value::Array(c)), Some(Value::Array(e))) => {
                    if c.len() != e.len() {
                        return Err(Error::spec(
                            &field,
                            "categories and encodings differ in length",
                        ));
                    }
                    let cats: Vec<Cat> = c
                        .iter()
                        .map(|v| Cat::from_json(v, &field))
                        .collect::<Result<_>>()?;
                    let encs: Vec<f64> = e
                        .iter()
                        .map(|x| {
                            x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                                Error::spec(format!("{field}.encodings"), "expected finite numbers")
                            })
                        })
                        .collect::<Result<_>>()?;
                    let default = need("default")?;
                    // looked up by binary search: sorted, each category once
                    let mut table: Vec<(Cat, f64)> = cats.into_iter().zip(encs).collect();
                    table.sort_by(|a, b| a.0.cmp(&b.0));
                    if table.windows(2).any(|w| w[0].0 == w[1].0) {
                        return Err(Error::spec(
                            format!("{field}.categories"),
                            "a category appears twice",
                        ));
                    }
                    Some((table, default))
                }
                (None, None) => None,
                _ => {
                    return Err(Error::spec(
                        &field,
                        "fitted state needs categories and encodings",
                    ))
                }
            };
            Op::TargetEncode {
                target,
                smooth,
                folds,
                fitted,
            }
        }
        "passthrough" => Op::Passthrough,
        other => {
            return Err(Error::spec(
                format!("{base}.op"),
                format!("unknown transform {other:?}"),
            ))
        }
    };
    let name = str_field(o, "name", &field)?.unwrap_or_else(|| default_output(&op, &column));
    if name.is_empty() {
        return Err(Error::spec(format!("{field}.name"), "must not be empty"));
    }
    Ok(Step::new(op, column, name))
}

/// Default output name: in place for unary numeric steps, a new column otherwise.
pub fn default_output(op: &Op, column: &str) -> String {
    match op {
        Op::IsNull => format!("{column}_is_null"),
        Op::HashBucket { n } => format!("{column}_hash{n}"),
        Op::Binary { kind, other, .. } => {
            let w = match kind {
                '+' => "plus",
                '-' => "minus",
                '*' => "times",
                _ => "per",
            };
            format!("{column}_{w}_{other}")
        }
        Op::Time {
            part,
            cyclical: false,
            ..
        } => format!("{column}_{}", part.name()),
        Op::TargetEncode { .. } => format!("{column}_te"),
        _ => column.to_string(),
    }
}
