//! `rtml.OnlineEngine`: the online engine (sharded, internally locked) and its Python calls.
//!
//! No lock is ever waited for while holding the GIL: every acquisition tries first and, if the
//! lock is taken, waits with the GIL released (a writer never needs the GIL).

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parking_lot::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};
use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3_arrow::{PyRecordBatch, PyTable};

use super::convert::{self, PyKey, RowNames};
use super::errors::IntoPy;
use super::transforms::PyTransforms;
use super::{feature_columns_to_batch, PySpec};
use crate::input::{read_events, KeyRef};
use crate::offline::FeatureColumn;
use crate::online::{Engine, Meta, Shard};
use crate::plan::Plan;
use crate::spec::Spec;

/// The online feature engine: ingest a live event stream, read features at request time.
///
/// Create one with `FeatureSet.online()`, `OnlineEngine(feature_set)` or
/// `OnlineEngine.restore(path)`. Safe to share between threads: reads run concurrently with
/// each other and with an ingest, which locks one key shard at a time.
#[pyclass(frozen, name = "OnlineEngine", module = "rtml")]
pub struct OnlineEngine {
    inner: Engine,
    plan: Arc<Plan>,
    names: Vec<Py<PyString>>,
    /// Field names of an event row dict, interned.
    rows: RowNames,
    /// Every feature name mapped to None, in output order: `get` copies it (one allocation,
    /// no rehashing) and overwrites the values.
    template: Py<PyDict>,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl OnlineEngine {
    fn from_engine(py: Python<'_>, engine: Engine) -> OnlineEngine {
        let plan = Arc::clone(engine.plan());
        let names = plan
            .spec
            .features
            .iter()
            .map(|f| PyString::intern(py, &f.name).unbind())
            .collect::<Vec<_>>();
        let template = PyDict::new(py);
        for n in &names {
            // cannot fail: str keys, fresh dict
            let _ = template.set_item(n.bind(py), py.None());
        }
        OnlineEngine {
            rows: RowNames::new(py, &plan),
            inner: engine,
            plan,
            names,
            template: template.unbind(),
        }
    }

    fn shard_read(&self, py: Python<'_>, key: KeyRef<'_>) -> RwLockReadGuard<'_, Shard> {
        let lock = self.inner.shard(key);
        loop {
            if let Some(g) = lock.try_read() {
                return g;
            }
            // Wait for the writer without holding the GIL.
            py.detach(|| drop(lock.read()));
        }
    }

    fn shard_write(&self, py: Python<'_>, key: KeyRef<'_>) -> RwLockWriteGuard<'_, Shard> {
        let lock = self.inner.shard(key);
        loop {
            if let Some(g) = lock.try_write() {
                return g;
            }
            py.detach(|| drop(lock.write()));
        }
    }

    fn ingest_guard(&self, py: Python<'_>) -> MutexGuard<'_, Meta> {
        loop {
            if let Some(g) = self.inner.try_ingest_lock() {
                return g;
            }
            py.detach(|| drop(self.inner.ingest_lock()));
        }
    }

    /// Features of one key at `t` into `buf`. A key whose settled point lags far behind the
    /// stream is settled once under its shard's write lock, then read under the read lock.
    fn features_at(
        &self,
        py: Python<'_>,
        key: KeyRef<'_>,
        t: i64,
        buf: &mut [f64],
        mask: Option<&[bool]>,
    ) -> PyResult<()> {
        self.inner.check_key_kind(key.is_int()).py_err()?;
        let s = t.min(self.inner.settle_point());
        let plan = &*self.plan;
        let shard = self.shard_read(py, key);
        if let Some(r) = shard.get_unless_settle(plan, key, s, t, buf, mask) {
            r.py_err()
        } else {
            drop(shard);
            let mut w = self.shard_write(py, key);
            w.settle_key(plan, key, s);
            RwLockWriteGuard::downgrade(w)
                .get_masked(plan, key, t, buf, mask)
                .py_err()
        }
    }

    /// Whether a dict given to `ingest` is one row (its key field holds a scalar, or is
    /// missing) rather than a dict of columns (its key field holds a sequence). `key` is the
    /// dict's key field.
    fn is_row(key: Option<&Bound<'_, PyAny>>) -> bool {
        match key {
            Some(v) => {
                // the usual scalars first: none of them has a __len__
                if v.is_exact_instance_of::<PyInt>()
                    || v.is_instance_of::<PyString>()
                    || v.is_exact_instance_of::<PyFloat>()
                    || v.is_none()
                {
                    return true;
                }
                !v.hasattr(intern!(v.py(), "__len__")).unwrap_or(false)
            }
            None => true,
        }
    }

    /// Features of `key` at `at` into a stack buffer (the heap only past 32 features), then `f`.
    fn with_features<R>(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        at: Option<&Bound<'_, PyAny>>,
        mask: Option<&[bool]>,
        f: impl FnOnce(&[f64]) -> PyResult<R>,
    ) -> PyResult<R> {
        let k = convert::key_ref(key, &self.plan.spec.entity).py_err()?;
        let t = self.at(at)?;
        let n = self.plan.n_features();
        let mut out = [0f64; 32];
        let mut heap;
        let buf: &mut [f64] = match out.get_mut(..n) {
            Some(b) => b,
            None => {
                heap = vec![0f64; n];
                &mut heap
            }
        };
        self.features_at(py, k, t, buf, mask)?;
        f(buf)
    }

    fn at(&self, at: Option<&Bound<'_, PyAny>>) -> PyResult<i64> {
        match at {
            None => Ok(now_ns()),
            Some(a) if a.is_none() => Ok(now_ns()),
            Some(a) => convert::instant(a, self.plan.spec.timestamp_unit.as_deref(), "at").py_err(),
        }
    }

    fn row_dict<'py>(&self, py: Python<'py>, values: &[f64]) -> PyResult<Bound<'py, PyDict>> {
        // A copy of the template has every key in place: each set_item below replaces a
        // value (no insertion, no resize), and the order stays the output order.
        let d = self.template.bind(py).copy()?;
        for ((name, out), v) in self.names.iter().zip(&self.plan.outputs).zip(values) {
            if out.integer {
                d.set_item(name.bind(py), *v as i64)?;
            } else if !v.is_nan() {
                d.set_item(name.bind(py), *v)?;
            }
        }
        Ok(d)
    }
}

#[pymethods]
impl OnlineEngine {
    /// `OnlineEngine(feature_set)`: an empty engine for a FeatureSet, `_core.Spec` or JSON text.
    #[new]
    fn new(py: Python<'_>, spec: &Bound<'_, PyAny>) -> PyResult<OnlineEngine> {
        let spec_obj = if spec.hasattr("_spec")? {
            spec.getattr("_spec")?
        } else {
            spec.clone()
        };
        let plan = if let Ok(s) = spec_obj.cast::<PySpec>() {
            Arc::clone(&s.get().plan)
        } else if let Ok(text) = spec_obj.extract::<String>() {
            Arc::new(Plan::new(Spec::from_json(&text).py_err()?))
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "OnlineEngine(spec): expected a FeatureSet or its JSON document",
            ));
        };
        Ok(OnlineEngine::from_engine(py, Engine::new(plan)))
    }

    /// Ingest events: a row dict, a list of row dicts, or anything `FeatureSet.backfill` takes
    /// as events (pyarrow, pandas, polars, Parquet paths). Validates the whole input first: on
    /// error nothing is applied. Returns the number of events accepted (late ones are dropped
    /// and counted in `stats()`).
    fn ingest(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<u64> {
        let rows: Option<Vec<Bound<'_, PyAny>>> = if let Ok(d) = data.cast::<PyDict>() {
            // (a failed lookup reads as a row: `with_row` looks again and reports it)
            let key = d.get_item(self.rows.entity.bind(py)).ok().flatten();
            if Self::is_row(key.as_ref()) {
                // One row: checked, then applied directly (no batch is built).
                let r = convert::with_row(&self.plan, &self.rows, d, key, |key, ts, vals| {
                    let mut meta = self.ingest_guard(py);
                    self.inner.ingest_one_locked(&mut meta, key, ts, vals)
                })
                .py_err()?;
                return Ok(r.py_err()?.accepted);
            }
            None
        } else if let Ok(list) = data.cast::<PyList>() {
            if list.is_empty() || list.get_item(0)?.is_instance_of::<PyDict>() {
                Some(list.iter().collect())
            } else {
                None
            }
        } else if let Ok(t) = data.cast::<PyTuple>() {
            if !t.is_empty() && t.get_item(0)?.is_instance_of::<PyDict>() {
                Some(t.iter().collect())
            } else {
                None
            }
        } else {
            None
        };
        if let Some(rows) = rows {
            let events = convert::rows(&self.plan, &self.rows, &rows).py_err()?;
            let mut meta = self.ingest_guard(py);
            return Ok(self
                .inner
                .ingest_locked(&mut meta, &events)
                .py_err()?
                .accepted);
        }
        let table = py
            .import("rtml._io")?
            .call_method1("events_table", (data, &self.plan.spec.timestamp))?;
        let table: PyTable = table.extract()?;
        let (batches, _) = table.into_inner();
        let plan = Arc::clone(&self.plan);
        let inner = &self.inner;
        py.detach(|| {
            let events = read_events(&plan, &batches)?;
            inner.ingest(&events).map(|r| r.accepted)
        })
        .py_err()
    }

    /// Features of one entity at instant `at` (default: now, UTC) as a dict.
    #[pyo3(signature = (key, at=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.with_features(py, key, at, None, |buf| self.row_dict(py, buf))
    }

    /// The model-ready vector for one request: the entity's window features at `at`, plus the
    /// request-time `fields`, through the fitted `transforms`, in `transforms.feature_names`
    /// order (NaN = null). One call, no Python-level loop.
    #[pyo3(signature = (key, transforms, fields=None, at=None))]
    fn vector<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        transforms: &Bound<'py, PyAny>,
        fields: Option<&Bound<'py, PyAny>>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, numpy::PyArray1<f64>>> {
        let tobj;
        let tf = match transforms.cast::<PyTransforms>() {
            Ok(tf) => tf,
            Err(_) => {
                let type_err = || {
                    pyo3::exceptions::PyTypeError::new_err(
                        "transforms: expected an rtml.Transforms",
                    )
                };
                // an rtml.Transforms holds its engine object in `_t`
                tobj = match transforms.getattr(intern!(py, "_t")) {
                    Ok(o) => o,
                    Err(e) if e.is_instance_of::<PyAttributeError>(py) => return Err(type_err()),
                    Err(e) => return Err(e),
                };
                tobj.cast::<PyTransforms>().map_err(|_| type_err())?
            }
        };
        // Read only the window features the transforms use; if the transforms were refit
        // between taking that list and applying them (another thread), read all and retry.
        let slots = super::transforms::row_slots(py, tf.get(), &self.plan);
        let read = |slots: Option<&Arc<super::transforms::RowSlots>>| {
            self.with_features(py, key, at, slots.map(|s| s.mask()), |buf| {
                super::transforms::vector_with_features(
                    py,
                    tf.get(),
                    &self.plan,
                    fields,
                    buf,
                    slots,
                )
            })
        };
        match read(Some(&slots))? {
            Some(v) => Ok(v),
            None => read(None)?.ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err(
                    "vector: transforms changed while reading",
                )
            }),
        }
    }

    /// Features of many entities as a pyarrow.Table (key column first). `at` is one instant
    /// for all keys, or a list with one instant per key.
    #[pyo3(signature = (keys, at=None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let entity = &self.plan.spec.entity;
        let keys: Vec<PyKey> = keys
            .try_iter()?
            .map(|k| k.and_then(|k| convert::key(&k, entity).py_err()))
            .collect::<PyResult<_>>()?;
        let times: Vec<i64> = match at {
            Some(a) if a.is_instance_of::<PyList>() || a.is_instance_of::<PyTuple>() => {
                let ts: Vec<i64> = a
                    .try_iter()?
                    .map(|t| {
                        t.and_then(|t| {
                            convert::instant(&t, self.plan.spec.timestamp_unit.as_deref(), "at")
                                .py_err()
                        })
                    })
                    .collect::<PyResult<_>>()?;
                if ts.len() != keys.len() {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "at has {} instants for {} keys",
                        ts.len(),
                        keys.len()
                    )));
                }
                ts
            }
            other => vec![self.at(other)?; keys.len()],
        };
        let nf = self.plan.n_features();
        let mut cols = vec![Vec::with_capacity(keys.len()); nf];
        let mut row = vec![0f64; nf];
        for (k, &t) in keys.iter().zip(&times) {
            self.features_at(py, k.as_ref(), t, &mut row, None)?;
            for (c, v) in cols.iter_mut().zip(&row) {
                c.push(*v);
            }
        }
        let feature_cols = cols
            .into_iter()
            .zip(&self.plan.outputs)
            .map(|(c, o)| {
                if o.integer {
                    FeatureColumn::Int(c.iter().map(|&v| v as i64).collect())
                } else {
                    FeatureColumn::Float(c)
                }
            })
            .collect();
        let feats = feature_columns_to_batch(&self.plan, feature_cols)?;
        let key_array: ArrayRef = if keys.iter().all(|k| matches!(k, PyKey::Int(_))) {
            Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| match k {
                PyKey::Int(i) => *i,
                PyKey::Str(_) => 0,
            })))
        } else {
            Arc::new(StringArray::from_iter_values(keys.iter().map(
                |k| match k {
                    PyKey::Str(s) => s.clone(),
                    PyKey::Int(i) => i.to_string(),
                },
            )))
        };
        let mut fields = vec![Field::new(entity, key_array.data_type().clone(), false)];
        fields.extend(feats.schema().fields().iter().map(|f| f.as_ref().clone()));
        let mut arrays = vec![key_array];
        arrays.extend(feats.columns().iter().cloned());
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        let rb = PyRecordBatch::new(batch).into_pyarrow(py)?;
        py.import("pyarrow")?
            .getattr("Table")?
            .call_method1("from_batches", (vec![rb],))
    }

    /// Write the whole state to `path` atomically (temporary file, fsync, rename), checksummed.
    fn snapshot(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let engine = &self.inner;
        py.detach(|| engine.snapshot(&path)).py_err()
    }

    /// Load an engine written by `snapshot`. Raises `rtml.SnapshotError` for a truncated,
    /// corrupted or foreign file.
    #[staticmethod]
    fn restore(py: Python<'_>, path: PathBuf) -> PyResult<OnlineEngine> {
        let engine = py.detach(|| Engine::restore(&path)).py_err()?;
        Ok(OnlineEngine::from_engine(py, engine))
    }

    /// Counters and sizes: keys, events_ingested, late_events_dropped, keys_evicted,
    /// state_bytes (approximate bytes of per-key state and the key table), watermark (ns or None).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let engine = &self.inner;
        let s = py.detach(|| engine.stats());
        let d = PyDict::new(py);
        d.set_item("keys", s.keys)?;
        d.set_item("events_ingested", s.counters.events_ingested)?;
        d.set_item("late_events_dropped", s.counters.late_events_dropped)?;
        d.set_item("keys_evicted", s.counters.keys_evicted)?;
        d.set_item("state_bytes", s.state_bytes)?;
        d.set_item("watermark", s.watermark)?;
        Ok(d)
    }

    /// Evict keys idle longer than the feature set's ttl now (it also happens during ingest).
    fn evict_idle(&self, py: Python<'_>) -> usize {
        let engine = &self.inner;
        py.detach(|| engine.evict_idle())
    }

    /// Output column names, in order.
    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.plan.spec.feature_names()
    }

    /// The feature-set document this engine computes.
    #[getter]
    fn spec_json(&self) -> String {
        self.plan.spec.to_json()
    }

    /// Largest event time seen, as int nanoseconds since the epoch (None before any event).
    #[getter]
    fn watermark(&self) -> Option<i64> {
        let w = self.inner.watermark();
        (w != i64::MIN).then_some(w)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let engine = &self.inner;
        let s = py.detach(|| engine.stats());
        format!(
            "OnlineEngine(entity={:?}, features={}, keys={}, events_ingested={})",
            self.plan.spec.entity,
            self.plan.n_features(),
            s.keys,
            s.counters.events_ingested
        )
    }
}

#[allow(dead_code)]
fn _assert_types() {
    let _ = DataType::Int64;
}
