//! The column-at-a-time reference driver: every step computes a whole column with the scalar
//! functions of [`super::op`]. `fit` and `fit_transform` run it; its errors are the ones every
//! table driver reports.

use std::collections::HashMap;
use std::str::FromStr;

use arrow_array::RecordBatch;

use super::fit::fit_step;
use super::op::{
    apply_num, binary, hash_bucket, one_hot_cell, ordinal_value, target_value, time_part,
    vocab_index, Op,
};
use super::read::Frame;
use super::{Step, Transforms};
use crate::error::{Error, Result};

impl Transforms {
    /// Run every step on one batch. `fit`: fit each unfitted step on this batch first (on the
    /// outputs of the steps before it). `oof`: target encodings out of fold (fit_transform).
    pub(super) fn run(
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
    pub(super) fn apply(&self, batch: &RecordBatch) -> Result<Vec<Vec<f64>>> {
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

    pub(super) fn collect(&self, mut frame: Frame<'_>) -> Result<Vec<Vec<f64>>> {
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

    /// The column-at-a-time reference driver (the one `fit_transform` runs): every step
    /// computes a whole column. The same bits as [`Transforms::transform_dense`], slower; its
    /// errors are the ones every table driver reports.
    pub fn transform_reference(&self, batch: &RecordBatch) -> Result<Vec<Vec<f64>>> {
        self.apply(batch)
    }
}

/// Read (and so check) a step's inputs without computing its outputs.
pub(super) fn validate_step(step: &Step, i: usize, frame: &Frame<'_>) -> Result<()> {
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
pub(super) fn apply_step(
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
