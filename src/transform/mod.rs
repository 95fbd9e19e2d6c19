//! Feature transforms: fitted once, applied by the same code to a table and to one row.
//!
//! A pipeline is an ordered list of [`Step`]s. Applying it to a record batch computes every step
//! row by row with scalar functions; a single request row is a one-row record batch, so it runs
//! exactly the same code and gets the same bits. Semantics: `docs/transforms.md`.
//!
//! * [`op`]: what a step computes ([`Op`], [`BinaryOp`]) and the scalar functions;
//! * `read`: a step's inputs read from Arrow;
//! * `fit`: the statistics fitted steps learn;
//! * `json`: the versioned document;
//! * the drivers, which call only [`op`] for the arithmetic: `reference` (column at a time, the
//!   errors every table driver reports), `dense` (blocks of rows into one matrix, parallel) and
//!   `row` (one request row).

mod dense;
mod fit;
mod json;
pub mod op;
mod read;
mod reference;
mod row;

pub use dense::{Dense, Layout};
pub use json::default_output;
pub use op::{BinaryOp, Cat, CatRef, Impute, Op, TimePart, Vocab};

use row::RowPlan;

pub const FORMAT: &str = "rtml.Transforms";
/// Largest `n` of `quantile_bucketize`.
pub const MAX_QUANTILE_BUCKETS: u64 = 100_000;
pub const VERSION: u64 = 1;

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
}
