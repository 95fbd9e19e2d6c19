//! The one-row driver: a request row through the fitted steps with the scalar functions of
//! [`super::op`], into preassigned slots (no allocation for up to 64 slots).

use std::collections::HashMap;
use std::str::FromStr;

use smallvec::SmallVec;

use super::op::{
    apply_num, binary, hash_bucket, one_hot_cell, ordinal_value, target_value, time_part,
    vocab_index, CatRef, Op,
};
use super::{RowValue, Transforms};
use crate::error::{Error, Result};

/// Slots for the one-row driver: every column name read or written gets one.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct RowPlan {
    pub(super) inputs: Vec<String>,
    /// Per slot: the input index, if the name is a required input.
    pub(super) slot_input: Vec<Option<usize>>,
    /// Per step: (column slot, other slot for binary ops, output slots).
    pub(super) steps: Vec<(usize, Option<usize>, Vec<usize>)>,
    /// Per feature name: its slot.
    pub(super) outputs: Vec<usize>,
}

impl Transforms {
    pub(super) fn row_plan(&self) -> RowPlan {
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
}
