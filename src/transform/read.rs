//! Reading a step's inputs from Arrow: numbers, categories and instants of a column, and the
//! [`Frame`] of one batch (its input columns plus the outputs of the steps so far).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;

use super::op::CatRef;
use crate::error::{Error, Result};
use crate::input::read_times;

/// Columns of one batch as the pipeline sees them: inputs from the batch, outputs of steps.
pub(super) struct Frame<'a> {
    pub(super) batch: &'a RecordBatch,
    /// Step outputs by name (a later write replaces an earlier one).
    pub(super) computed: HashMap<String, Vec<f64>>,
}

/// Null flags that also see NullArray (which has no validity buffer).
pub(super) fn null_flags(a: &ArrayRef) -> Vec<bool> {
    match a.logical_nulls() {
        Some(n) => (0..a.len()).map(|i| n.is_null(i)).collect(),
        None => vec![false; a.len()],
    }
}

pub(super) fn numeric_of(a: &ArrayRef, name: &str, step: &str) -> Result<Vec<f64>> {
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
pub(super) fn ints<'a, T>(
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

pub(super) fn cats_of<'a>(
    a: &'a ArrayRef,
    name: &str,
    step: &str,
) -> Result<Vec<Option<CatRef<'a>>>> {
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
    pub(super) fn input(&self, name: &str, step: &str) -> Result<&'a ArrayRef> {
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
    pub(super) fn num(&self, name: &str, step: &str) -> Result<std::borrow::Cow<'_, [f64]>> {
        if let Some(v) = self.computed.get(name) {
            return Ok(std::borrow::Cow::Borrowed(v));
        }
        Ok(std::borrow::Cow::Owned(numeric_of(
            self.input(name, step)?,
            name,
            step,
        )?))
    }
    pub(super) fn cats(&self, name: &str, step: &str) -> Result<Vec<Option<CatRef<'a>>>> {
        if self.computed.contains_key(name) {
            return Err(Error::schema(name, format!("{step} needs the raw categorical input, but an earlier step rewrote it as numbers")));
        }
        cats_of(self.input(name, step)?, name, step)
    }
    pub(super) fn times(&self, name: &str, step: &str) -> Result<Vec<Option<i64>>> {
        times_of(self.input(name, step)?, name, step)
    }
    pub(super) fn is_null(&self, name: &str, step: &str) -> Result<Vec<f64>> {
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
    pub(super) fn set(&mut self, name: String, v: Vec<f64>) {
        self.computed.insert(name, v);
    }
}

/// Instants (ns since the epoch) of a time column; null stays null.
pub(super) fn times_of(a: &ArrayRef, name: &str, step: &str) -> Result<Vec<Option<i64>>> {
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
pub(super) fn arrow_select_fill(a: &ArrayRef) -> ArrayRef {
    let data = a.to_data();
    let no_nulls = data.into_builder().nulls(None).build();
    match no_nulls {
        Ok(d) => arrow_array::make_array(d),
        Err(_) => Arc::clone(a),
    }
}
