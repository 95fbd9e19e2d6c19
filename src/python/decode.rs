//! `rtml._core.JsonDecoder`: message payloads -> an Arrow batch of events (see `src/decode.rs`).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use pyo3_arrow::PyRecordBatch;

use super::errors::{detached, entry, IntoPy};
use crate::decode::{decode_json, unit_factor, ColumnMap, JsonMapping, ValueType};

/// Parses JSON message payloads straight into the feature set's event columns.
///
/// `entity` / `timestamp`: (event column, JSON field), `entity` a list of them for a composite
/// key; `values`: (event column, JSON field, numeric); `timestamp_unit`: unit of numeric
/// timestamps (None: only RFC 3339 strings).
/// (accepted events as a pyarrow.RecordBatch, [(index, reason)] rejected, key kind: a bool,
/// a list of bools for a composite key, or None)
type DecodeResult<'py> = (
    Bound<'py, PyAny>,
    Vec<(usize, String)>,
    Option<Bound<'py, PyAny>>,
);

#[pyclass(frozen, name = "JsonDecoder", module = "rtml._core")]
pub struct PyJsonDecoder {
    mapping: JsonMapping,
    /// The entity was given as a list (key kinds are lists of bools).
    composite: bool,
}

#[pymethods]
impl PyJsonDecoder {
    #[new]
    #[pyo3(signature = (entity, timestamp, values, timestamp_unit=None, event_id=None))]
    fn new(
        entity: &Bound<'_, PyAny>,
        timestamp: (String, String),
        values: Vec<(String, String, bool)>,
        timestamp_unit: Option<&str>,
        event_id: Option<(String, String)>,
    ) -> PyResult<PyJsonDecoder> {
        let ts_factor = timestamp_unit.map(unit_factor).transpose().py_err()?;
        let (entity, composite) = match entity.extract::<(String, String)>() {
            Ok(one) => (vec![one], false),
            Err(_) => (entity.extract::<Vec<(String, String)>>()?, true),
        };
        let ids = event_id.map(|(column, field)| ColumnMap {
            column,
            field,
            kind: ValueType::Id,
        });
        Ok(PyJsonDecoder {
            composite,
            mapping: JsonMapping {
                entity,
                timestamp,
                ts_factor,
                values: values
                    .into_iter()
                    .map(|(column, field, numeric)| ColumnMap {
                        column,
                        field,
                        kind: if numeric {
                            ValueType::Float
                        } else {
                            ValueType::Str
                        },
                    })
                    .chain(ids)
                    .collect(),
            },
        })
    }

    /// Decode a list of payloads (bytes; None reads as an empty, rejected message). Returns
    /// (pyarrow.RecordBatch of the accepted events in message order, [(index, reason)] of the
    /// rejected ones, whether keys are integers or None if still undecided). For a composite
    /// entity `key_is_int` and the returned kind are lists of bools, one per part.
    #[pyo3(signature = (messages, key_is_int=None))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyList>,
        key_is_int: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<DecodeResult<'py>> {
        let kinds: Option<Vec<bool>> = match key_is_int {
            None => None,
            Some(k) if k.is_none() => None,
            Some(k) if self.composite => Some(k.extract::<Vec<bool>>()?),
            Some(k) => Some(vec![k.extract::<bool>()?]),
        };
        let items: Vec<Bound<'py, PyAny>> = messages.iter().collect();
        let mut slices: Vec<&[u8]> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if item.is_none() {
                slices.push(b"");
            } else if let Ok(b) = item.cast::<PyBytes>() {
                slices.push(b.as_bytes());
            } else {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "messages[{i}]: expected bytes, got {}",
                    item.get_type().name()?
                )));
            }
        }
        let mapping = &self.mapping;
        let decoded = entry(None, || {
            detached(py, || decode_json(mapping, &slices, kinds.as_deref()))
        })?;
        let batch = PyRecordBatch::new(decoded.batch).into_pyarrow(py)?;
        let kind = match decoded.key_is_int {
            None => None,
            Some(k) if self.composite => Some(k.into_pyobject(py)?.into_any()),
            Some(k) => Some(
                k.iter()
                    .all(|&b| b)
                    .into_pyobject(py)?
                    .to_owned()
                    .into_any(),
            ),
        };
        Ok((batch, decoded.rejected, kind))
    }
}
