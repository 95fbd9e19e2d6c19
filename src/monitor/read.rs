//! Arrow batches in: a reference fitted from a table, and a table's rows as bin codes per
//! reference column. Every check on user data happens here, before any state changes.
//!
//! Numeric columns: any integer, float or boolean type (read as f64; null and NaN are null,
//! infinities are values outside any reference's range). Categorical columns: strings (utf8,
//! large, view or dictionary-encoded). The time column: timestamps, dates or int64 ns.

use std::collections::HashMap;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use rayon::prelude::*;

use super::counts::{numeric_code, NULL_CODE};
use super::reference::{ColumnRef, PredictionRef, Reference, PREDICTION};
use crate::error::{Error, Result};
use crate::input::{float_values, read_dictionary_strings, read_times, StrArr};

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        Error::schema(
            name,
            "missing from the table (the reference monitors it)".to_string(),
        )
    })
}

fn is_string(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

/// A numeric column as f64 with NaN for null.
fn numbers(a: &ArrayRef, name: &str) -> Result<Vec<f64>> {
    if a.data_type() == &DataType::Null {
        return Ok(vec![f64::NAN; a.len()]);
    }
    let Some(mut v) = float_values(a.as_ref(), name)? else {
        return Err(Error::schema(
            name,
            format!(
                "expected numbers (the reference column is numeric), got {}",
                a.data_type()
            ),
        ));
    };
    if let Some(nulls) = a.logical_nulls() {
        if nulls.null_count() > 0 {
            for (x, valid) in v.iter_mut().zip(nulls.iter()) {
                if !valid {
                    *x = f64::NAN;
                }
            }
        }
    }
    Ok(v)
}

type Strings<'a> = (StrArr<'a>, Option<arrow_buffer::NullBuffer>);

fn strings<'a>(a: &'a ArrayRef, name: &str) -> Result<Strings<'a>> {
    if !is_string(a.data_type()) {
        return Err(Error::schema(
            name,
            format!(
                "expected strings (the reference column is categorical), got {}",
                a.data_type()
            ),
        ));
    }
    let s = read_dictionary_strings(a)
        .ok_or_else(|| Error::schema(name, format!("unsupported string type {}", a.data_type())))?;
    Ok((s, a.logical_nulls()))
}

/// Which columns a table's schema can be monitored on: numbers (numeric) and strings
/// (categorical); every other type is left out when no columns are named.
pub fn monitorable(dt: &DataType) -> Option<bool> {
    if is_string(dt) {
        return Some(false);
    }
    match dt {
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float16
        | DataType::Float32
        | DataType::Float64 => Some(true),
        _ => None,
    }
}

/// Fit a reference on `batches` for the named columns (each: numeric or categorical by its
/// Arrow type). Columns are fitted in parallel. A column named in `vocabularies` (a fitted
/// encoder's categories) must be categorical: its known categories are that vocabulary
/// instead of its most frequent values. With `prediction`, the batches' column named
/// [`PREDICTION`] (numbers) is fitted last as the model's prediction (equal-width bins over
/// its `range` when given, else quantile bins); `columns` must not name it.
pub fn fit(
    batches: &[RecordBatch],
    columns: &[String],
    bins: usize,
    max_categories: usize,
    feature_set: Option<String>,
    vocabularies: &HashMap<String, Vec<String>>,
    prediction: Option<PredictionRef>,
) -> Result<Reference> {
    if bins == 0 {
        return Err(Error::spec("bins", "must be >= 1"));
    }
    if max_categories == 0 {
        return Err(Error::spec("max_categories", "must be >= 1"));
    }
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let fitted: Vec<Result<ColumnRef>> = crate::pool::install(|| {
        columns
            .par_iter()
            .map(|name| fit_column(batches, name, bins, max_categories, vocabularies.get(name)))
            .collect()
    });
    let mut cols = fitted.into_iter().collect::<Result<Vec<_>>>()?;
    let Some(p) = prediction else {
        return Reference::new(feature_set, rows as u64, cols);
    };
    if columns.iter().any(|c| c == PREDICTION) {
        return Err(Error::spec(
            "columns",
            format!("'{PREDICTION}' is the name of the model's prediction: rename that column"),
        ));
    }
    let mut v = Vec::with_capacity(rows);
    for b in batches {
        let a = column(b, PREDICTION)?;
        if a.data_type() != &DataType::Null && monitorable(a.data_type()) != Some(true) {
            return Err(Error::schema(
                PREDICTION,
                format!("the prediction must be numbers, got {}", a.data_type()),
            ));
        }
        v.extend(numbers(a, PREDICTION)?);
    }
    cols.push(match p.range {
        Some([lo, hi]) => ColumnRef::fit_numeric_range(PREDICTION, &v, bins, lo, hi)?,
        None => ColumnRef::fit_numeric(PREDICTION, &v, bins)?,
    });
    Reference::new(feature_set, rows as u64, cols)?.with_prediction(p)
}

fn fit_column(
    batches: &[RecordBatch],
    name: &str,
    bins: usize,
    max_categories: usize,
    vocabulary: Option<&Vec<String>>,
) -> Result<ColumnRef> {
    let mut kind = None;
    for b in batches {
        let a = column(b, name)?;
        if a.data_type() == &DataType::Null {
            continue;
        }
        let k = monitorable(a.data_type()).ok_or_else(|| {
            Error::schema(
                name,
                format!(
                    "cannot be monitored: expected numbers or strings, got {}",
                    a.data_type()
                ),
            )
        })?;
        if kind.is_some_and(|prev| prev != k) {
            return Err(Error::schema(
                name,
                "numbers in one batch, strings in another",
            ));
        }
        kind = Some(k);
    }
    if vocabulary.is_some() && kind == Some(true) {
        return Err(Error::schema(
            name,
            "has an encoder vocabulary (one_hot / ordinal) but holds numbers: expected strings",
        ));
    }
    if kind.unwrap_or(vocabulary.is_none()) {
        let mut v = Vec::new();
        for b in batches {
            v.extend(numbers(column(b, name)?, name)?);
        }
        ColumnRef::fit_numeric(name, &v, bins)
    } else {
        let mut arrays = Vec::new();
        let mut null_rows = 0usize;
        for b in batches {
            let a = column(b, name)?;
            if a.data_type() == &DataType::Null {
                null_rows += a.len();
            } else {
                arrays.push(strings(a, name)?);
            }
        }
        let values = arrays.iter().flat_map(|(s, nulls)| {
            let n = nulls.as_ref().map_or(usize::MAX, |nb| nb.len());
            let len = match s {
                StrArr::Utf8(a) => a.len(),
                StrArr::Large(a) => a.len(),
                StrArr::View(a) => a.len(),
                StrArr::Dict { keys, .. } => keys.len(),
            };
            (0..len.min(n)).map(move |i| {
                if nulls.as_ref().is_some_and(|nb| nb.is_null(i)) {
                    None
                } else {
                    Some(s.get(i))
                }
            })
        });
        let values = values.chain(std::iter::repeat_n(None, null_rows));
        match vocabulary {
            Some(known) => ColumnRef::fit_categorical_known(name, values, known),
            None => ColumnRef::fit_categorical(name, values, max_categories),
        }
    }
}

/// Every row's bin code for each reference column, `[column][row]`, batches concatenated.
/// Columns are coded in parallel.
pub fn codes(reference: &Reference, batches: &[RecordBatch]) -> Result<Vec<Vec<u32>>> {
    let coded: Vec<Result<Vec<u32>>> = crate::pool::install(|| {
        reference
            .columns
            .par_iter()
            .map(|col| code_column(col, batches))
            .collect()
    });
    coded.into_iter().collect()
}

fn code_column(col: &ColumnRef, batches: &[RecordBatch]) -> Result<Vec<u32>> {
    let name = col.name();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut out = Vec::with_capacity(rows);
    for b in batches {
        let a = column(b, name)?;
        if a.data_type() == &DataType::Null {
            // a column of nulls only (e.g. built from Python Nones): null whatever the kind
            out.extend(std::iter::repeat_n(NULL_CODE, a.len()));
            continue;
        }
        match col {
            ColumnRef::Numeric {
                edges, min, max, ..
            } => {
                let lo = min.unwrap_or(f64::INFINITY);
                let hi = max.unwrap_or(f64::NEG_INFINITY);
                out.extend(
                    numbers(a, name)?
                        .into_iter()
                        .map(|x| numeric_code(edges, lo, hi, x)),
                );
            }
            ColumnRef::Categorical { .. } => {
                let (s, nulls) = strings(a, name)?;
                let null = |i: usize| nulls.as_ref().is_some_and(|nb| nb.is_null(i));
                match &s {
                    StrArr::Dict { keys, values } => {
                        // code each dictionary value once
                        let mut cache: Vec<Option<u32>> = Vec::new();
                        for (i, &k) in keys.iter().enumerate() {
                            if null(i) {
                                out.push(NULL_CODE);
                                continue;
                            }
                            if cache.len() <= k {
                                cache.resize(k + 1, None);
                            }
                            let code = match cache.get(k).copied().flatten() {
                                Some(c) => c,
                                None => {
                                    let c = col.category_code(values.get(k));
                                    if let Some(slot) = cache.get_mut(k) {
                                        *slot = Some(c);
                                    }
                                    c
                                }
                            };
                            out.push(code);
                        }
                    }
                    _ => {
                        for i in 0..a.len() {
                            out.push(if null(i) {
                                NULL_CODE
                            } else {
                                col.category_code(s.get(i))
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The time column as int64 ns, batches concatenated (nulls refused).
pub fn times(batches: &[RecordBatch], name: &str) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for b in batches {
        let a = b
            .column_by_name(name)
            .ok_or_else(|| Error::schema(name, "missing from the table (the time column)"))?;
        out.extend(read_times(a, name, Some("ns"), out.len())?);
    }
    Ok(out)
}
