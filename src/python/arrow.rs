//! Engine output -> Arrow: the one builder of record batches handed to Python.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, RecordBatchOptions};
use arrow_buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use pyo3::prelude::*;

use crate::offline::FeatureColumn;

/// One output column.
pub(crate) enum Column {
    /// int64, never null.
    Int(ScalarBuffer<i64>),
    /// float64 where NaN means null. `may_hold_nan: false` when the producer knows there is no
    /// NaN (no scan, no validity bitmap).
    Float(ScalarBuffer<f64>, bool),
    /// Any ready-made array (e.g. the key column of `get_many`), never null.
    Array(ArrayRef),
    /// A string feature (utf8, nullable).
    Text(Vec<Option<String>>),
}

impl From<FeatureColumn> for Column {
    fn from(c: FeatureColumn) -> Column {
        match c {
            FeatureColumn::Int(v) => Column::Int(ScalarBuffer::from(v)),
            FeatureColumn::Float(v) => Column::Float(ScalarBuffer::from(v), true),
            FeatureColumn::Text(v) => Column::Text(v),
        }
    }
}

/// From this many rows on, `batch` builds the float columns' validity bitmaps in parallel.
const PARALLEL_NULLS_ROWS: usize = 1 << 16;

/// Null where NaN, packed 64 values per word (a bit-by-bit builder cost ~20 instructions per
/// value, a sixth of a backfill's serial output phase); `None` when nothing is NaN.
fn nan_nulls(v: &ScalarBuffer<f64>) -> Option<NullBuffer> {
    Some(NullBuffer::new(BooleanBuffer::collect_bool(v.len(), |i| {
        v.get(i).is_some_and(|x| !x.is_nan())
    })))
    .filter(|n| n.null_count() > 0)
}

/// A record batch of `rows` rows from named columns. Float columns get a validity bitmap
/// (null where NaN) only when they hold a NaN.
pub(crate) fn batch<S: AsRef<str>>(
    columns: impl IntoIterator<Item = (S, Column)>,
    rows: usize,
) -> PyResult<RecordBatch> {
    let columns: Vec<(S, Column)> = columns.into_iter().collect();
    // The validity bitmaps of float columns (null where NaN): one column per task on rtml's
    // pool for large batches (a backfill's output), on the calling thread otherwise.
    let nulls_of = |col: &Column| match col {
        Column::Float(v, true) => nan_nulls(v),
        _ => None,
    };
    let nulls: Vec<Option<NullBuffer>> = if rows >= PARALLEL_NULLS_ROWS && columns.len() > 1 {
        use rayon::prelude::*;
        let cols: Vec<&Column> = columns.iter().map(|(_, c)| c).collect();
        crate::pool::install(|| cols.par_iter().map(|c| nulls_of(c)).collect())
    } else {
        columns.iter().map(|(_, c)| nulls_of(c)).collect()
    };
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for ((name, col), nulls) in columns.into_iter().zip(nulls) {
        let name = name.as_ref();
        match col {
            Column::Int(v) => {
                fields.push(Field::new(name, DataType::Int64, false));
                arrays.push(Arc::new(Int64Array::new(v, None)));
            }
            Column::Float(v, _) => {
                fields.push(Field::new(name, DataType::Float64, true));
                arrays.push(Arc::new(Float64Array::new(v, nulls)));
            }
            Column::Array(a) => {
                fields.push(Field::new(name, a.data_type().clone(), a.null_count() > 0));
                arrays.push(a);
            }
            Column::Text(v) => {
                fields.push(Field::new(name, DataType::Utf8, true));
                arrays.push(Arc::new(arrow_array::StringArray::from(v)));
            }
        }
    }
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
}
