//! What a step computes: [`Op`], its parameter types, and the scalar functions every driver
//! (reference, dense, row) calls for the arithmetic. Null (NaN) in gives null out, except for
//! the filling steps.

use chrono::{Datelike, TimeZone, Timelike};
use serde_json::{json, Value};

use crate::error::{Error, Result};

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
    pub(super) fn as_ref(&self) -> CatRef<'_> {
        match self {
            Cat::Int(i) => CatRef::Int(*i),
            Cat::Str(s) => CatRef::Str(s),
        }
    }
    pub(super) fn label(&self) -> String {
        match self {
            Cat::Int(i) => i.to_string(),
            Cat::Str(s) => s.clone(),
        }
    }
    pub(super) fn to_json(&self) -> Value {
        match self {
            Cat::Int(i) => json!(i),
            Cat::Str(s) => json!(s),
        }
    }
    pub(super) fn from_json(v: &Value, field: &str) -> Result<Cat> {
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
    pub(super) fn name(&self) -> &'static str {
        match self {
            TimePart::Hour => "hour",
            TimePart::DayOfWeek => "day_of_week",
            TimePart::DayOfMonth => "day_of_month",
            TimePart::Month => "month",
        }
    }
    pub(super) fn op(&self) -> &'static str {
        match self {
            TimePart::Hour => "hour_of_day",
            TimePart::DayOfWeek => "day_of_week",
            TimePart::DayOfMonth => "day_of_month",
            TimePart::Month => "month",
        }
    }
    /// (value, period) for cyclical encodings: position in [0, period).
    pub(super) fn of(&self, dt: &chrono::DateTime<chrono_tz::Tz>) -> (f64, f64) {
        match self {
            TimePart::Hour => (dt.hour() as f64, 24.0),
            TimePart::DayOfWeek => (dt.weekday().num_days_from_monday() as f64, 7.0),
            TimePart::DayOfMonth => (dt.day() as f64, 31.0),
            TimePart::Month => (dt.month() as f64, 12.0),
        }
    }
    pub(super) fn offset(&self) -> f64 {
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
    pub(super) fn new(cats: Vec<Cat>) -> Vocab {
        let index = cats
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| (c, i))
            .collect();
        Vocab { cats, index }
    }
    pub(super) fn get(&self, c: &CatRef<'_>) -> Option<usize> {
        self.index.get(c).copied()
    }
}

/// The arithmetic of a two-column step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Ratio,
}

impl BinaryOp {
    /// The op's name in the document (`add`, `sub`, `mul`, `ratio`).
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Ratio => "ratio",
        }
    }

    /// The op of a document name.
    pub fn from_name(name: &str) -> Option<BinaryOp> {
        match name {
            "add" => Some(BinaryOp::Add),
            "sub" => Some(BinaryOp::Sub),
            "mul" => Some(BinaryOp::Mul),
            "ratio" => Some(BinaryOp::Ratio),
            _ => None,
        }
    }

    /// The word of the default output name (`{column}_{word}_{other}`).
    pub fn word(self) -> &'static str {
        match self {
            BinaryOp::Add => "plus",
            BinaryOp::Sub => "minus",
            BinaryOp::Mul => "times",
            BinaryOp::Ratio => "per",
        }
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
        kind: BinaryOp,
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
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Log1p => "log1p",
            Op::Abs => "abs",
            Op::Clip { .. } => "clip",
            Op::Power { .. } => "power",
            Op::Binary { kind, .. } => kind.name(),
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
    pub(super) fn reset(&mut self) {
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

    pub(super) fn is_fitted(&self) -> bool {
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

/// A borrowed category value read from Arrow (ordered like [`Cat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CatRef<'a> {
    Int(i64),
    Str(&'a str),
}

impl CatRef<'_> {
    pub(super) fn to_cat(self) -> Cat {
        match self {
            CatRef::Int(i) => Cat::Int(i),
            CatRef::Str(s) => Cat::Str(s.to_string()),
        }
    }
}

#[inline]
pub(super) fn apply_num(op: &Op, x: f64) -> f64 {
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
pub(super) fn filled(x: f64, value: f64) -> f64 {
    if x.is_nan() {
        value
    } else {
        x
    }
}

#[inline]
pub(super) fn log1p_or_null(x: f64) -> f64 {
    if x > -1.0 {
        x.ln_1p()
    } else {
        f64::NAN // x <= -1, or null
    }
}

#[inline]
pub(super) fn abs(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        x.abs()
    }
}

#[inline]
pub(super) fn clip(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        x.max(lo).min(hi)
    }
}

#[inline]
pub(super) fn power(x: f64, p: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        libm::pow(x, p)
    }
}

/// `(x - center) / scale`: standard, robust and min-max scaling.
#[inline]
pub(super) fn scaled(x: f64, center: f64, scale: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else {
        (x - center) / scale
    }
}

/// The number of `edges` (strictly increasing, as parsing and fitting guarantee) that are
/// `<= x`: the bucket index.
#[inline]
pub(super) fn bucket(x: f64, edges: &[f64]) -> f64 {
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
pub(super) fn inner_edges(e: &[f64]) -> &[f64] {
    if e.len() >= 2 {
        &e[1..e.len() - 1]
    } else {
        &e[0..0]
    }
}

// ---- per-value math shared by the table driver and the one-row driver

/// Vocabulary index of a category; infrequent and unseen values get `len(vocabulary)`.
#[inline]
pub(super) fn vocab_index(voc: &Vocab, c: CatRef<'_>) -> usize {
    voc.get(&c).unwrap_or(voc.cats.len())
}

/// Cell `k` of a one-hot encoding of vocabulary index `idx` (null stays null).
#[inline]
pub(super) fn one_hot_cell(idx: Option<usize>, k: usize) -> f64 {
    match idx {
        None => f64::NAN,
        Some(i) if i == k => 1.0,
        Some(_) => 0.0,
    }
}

#[inline]
pub(super) fn ordinal_value(idx: Option<usize>) -> f64 {
    idx.map(|i| i as f64).unwrap_or(f64::NAN)
}

/// Fitted encoding of a category (`mean` for unseen ones, null for null).
#[inline]
pub(super) fn target_value(table: &[(Cat, f64)], mean: f64, c: Option<CatRef<'_>>) -> f64 {
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
pub(super) fn time_part(
    part: TimePart,
    zone: &chrono_tz::Tz,
    t: Option<i64>,
    cyclical: bool,
) -> (f64, f64) {
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

/// `x (op) y`; null if either side is null; a ratio by zero is `on_zero` (default null).
#[inline]
pub(super) fn binary(kind: BinaryOp, x: f64, y: f64, on_zero: Option<f64>) -> f64 {
    if x.is_nan() || y.is_nan() {
        return f64::NAN;
    }
    match kind {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Ratio => {
            if y == 0.0 {
                on_zero.unwrap_or(f64::NAN)
            } else {
                x / y
            }
        }
    }
}

#[inline]
pub(super) fn hash_bucket(c: &CatRef<'_>, n: u64) -> f64 {
    let h = match c {
        CatRef::Str(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        CatRef::Int(i) => xxhash_rust::xxh3::xxh3_64(i.to_string().as_bytes()),
    };
    (h % n) as f64
}
