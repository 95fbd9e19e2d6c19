//! `rtml._core.Engine`: the online engine (sharded, internally locked) and its typed calls.
//! `rtml.OnlineEngine` (python/rtml/online.py) wraps it: it turns whatever the user has into
//! one of the typed inputs below (a row dict, a list of row dicts, an Arrow table, a
//! `_core.Transforms`) and adds the Python-level conveniences.
//!
//! Every call goes through `errors::entry` (panic guard; an engine that saw a panic is poisoned
//! and refuses further calls). No lock is ever waited for while holding the GIL: every
//! acquisition tries first and, if the lock is taken, waits with the GIL released (a writer
//! never needs the GIL).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, StringArray};
use arrow_buffer::ScalarBuffer;
use parking_lot::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple};
use pyo3_arrow::{PyRecordBatch, PyTable};

use super::arrow::{self, Column};
use super::convert::{self, PyKey, RowNames, Zone};
use super::errors::{self, detached, entry, IntoPy, Poison};
use super::transforms::PyTransforms;
use super::PySpec;
use crate::input::{read_events, KeyRef};
use crate::online::{Engine, Ingested, Meta, Read, Shard};
use crate::plan::Plan;

/// The clock of an engine's events, as [`Zone`] (0: none seen yet, or only epoch integers).
pub(super) const ZONE_UNKNOWN: u8 = 0;
pub(super) const ZONE_NAIVE: u8 = 1;
pub(super) const ZONE_AWARE: u8 = 2;

/// The compiled online feature engine (use `rtml.OnlineEngine`, which wraps it).
#[pyclass(frozen, name = "Engine", module = "rtml._core")]
pub struct PyEngine {
    pub(super) inner: Engine,
    /// Set when a call panicked: every later call is refused.
    pub(super) poison: Poison,
    /// The clock of the events ingested so far (`ZONE_*`): naive and aware times never mix.
    pub(super) zone: AtomicU8,
    plan: Arc<Plan>,
    names: Vec<Py<PyString>>,
    /// Field names of an event row dict, interned.
    rows: RowNames,
    /// Every feature name mapped to None, in output order: `get` copies it (one allocation,
    /// no rehashing) and overwrites the values.
    template: Py<PyDict>,
}

pub(super) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl PyEngine {
    fn from_engine(py: Python<'_>, engine: Engine) -> PyEngine {
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
        PyEngine {
            rows: RowNames::new(py, &plan),
            inner: engine,
            poison: Poison::default(),
            zone: AtomicU8::new(ZONE_UNKNOWN),
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

    fn ingest_guard(&self, py: Python<'_>) -> MutexGuard<'_, Meta> {
        loop {
            if let Some(g) = self.inner.try_ingest_lock() {
                return g;
            }
            py.detach(|| drop(self.inner.ingest_lock()));
        }
    }

    /// Features of one key at `t` into `buf`. A key with rows that left its windows since it
    /// last settled has them folded out first when its shard's write lock is free at once
    /// (`Shard::advance_key`), then is read under the same hold, downgraded.
    fn features_at(
        &self,
        py: Python<'_>,
        key: KeyRef<'_>,
        t: i64,
        buf: &mut [f64],
        mask: Option<&[bool]>,
        texts: &mut Vec<Option<String>>,
    ) -> PyResult<()> {
        self.inner.check_key(key).py_err()?;
        let s = t.min(self.inner.settle_point());
        let plan = &*self.plan;
        let shard = self.shard_read(py, key);
        match shard.get_unless_advance(plan, key, s, t, buf, mask) {
            Read::Done(r) => {
                r.py_err()?;
                if plan.has_text() {
                    shard.texts(plan, key, buf, texts);
                }
                return Ok(());
            }
            Read::Advance => {}
        }
        drop(shard);
        // Rows to fold out: fold them out only if the lock is free at once (no other reader),
        // else read with the corrections. A read never settles the key (`online::Read`).
        let r = match self.inner.shard(key).try_write() {
            Some(mut w) => {
                w.advance_key(plan, key, s);
                RwLockWriteGuard::downgrade(w)
            }
            None => self.shard_read(py, key),
        };
        r.get_masked(plan, key, t, buf, mask).py_err()?;
        if plan.has_text() {
            r.texts(plan, key, buf, texts);
        }
        Ok(())
    }

    /// Refuse times on a clock other than the engine's events' (`what` names the column or
    /// argument).
    fn check_zone(&self, z: Zone, what: &str) -> PyResult<()> {
        check_clock(self.zone.load(Ordering::Acquire), z, what)
    }

    /// After an ingest that applied: remember the events' clock.
    fn note_zone(&self, z: Zone) {
        let v = zone_code(z);
        if v == ZONE_UNKNOWN {
            return;
        }
        let _ = self
            .zone
            .compare_exchange(ZONE_UNKNOWN, v, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Features of `key` at `at` into a stack buffer (the heap only past 32 features), then `f`.
    fn with_features<R>(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        at: Option<&Bound<'_, PyAny>>,
        mask: Option<&[bool]>,
        f: impl FnOnce(&[f64], &[Option<String>]) -> PyResult<R>,
    ) -> PyResult<R> {
        convert::with_entity_key(key, &self.plan.spec.entity, |k| {
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
            let mut texts = Vec::new();
            self.features_at(py, k, t, buf, mask, &mut texts)?;
            f(buf, &texts)
        })
        .py_err()?
    }

    fn at(&self, at: Option<&Bound<'_, PyAny>>) -> PyResult<i64> {
        match at {
            None => Ok(now_ns()),
            Some(a) if a.is_none() => Ok(now_ns()),
            Some(a) => self.instant(a, "at"),
        }
    }

    /// One instant given by the caller (`at=`), on the engine's clock.
    fn instant(&self, a: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
        let (t, z) =
            convert::instant_zoned(a, self.plan.spec.timestamp_unit.as_deref(), what).py_err()?;
        self.check_zone(z, what)?;
        Ok(t)
    }

    fn row_dict<'py>(
        &self,
        py: Python<'py>,
        values: &[f64],
        texts: &[Option<String>],
    ) -> PyResult<Bound<'py, PyDict>> {
        row_dict(py, &self.template, &self.names, &self.plan, values, texts)
    }
}

/// The `get` answer as a dict (None = null) from the feature values in `plan` order: the
/// in-process engine's and the remote reader's one builder. `template` holds every name with
/// None; `names` are the interned feature names; `texts` the string outputs' strings, in
/// output order.
pub(super) fn row_dict<'py>(
    py: Python<'py>,
    template: &Py<PyDict>,
    names: &[Py<PyString>],
    plan: &Plan,
    values: &[f64],
    texts: &[Option<String>],
) -> PyResult<Bound<'py, PyDict>> {
    // A copy of the template has every key in place: each insertion below replaces a value (no
    // insertion, no resize), and the order stays the output order.
    let d = template.bind(py).copy()?;
    let mut texts = texts.iter();
    for ((name, out), v) in names.iter().zip(&plan.outputs).zip(values) {
        let value = if out.text {
            match texts.next() {
                Some(Some(s)) => PyString::new(py, s).into_any(),
                _ => continue,
            }
        } else if out.integer {
            (*v as i64).into_pyobject(py)?.into_any()
        } else if v.is_nan() {
            continue;
        } else {
            PyFloat::new(py, *v).into_any()
        };
        // The interned name and the value straight into the dict (`set_item` would convert the
        // key again and take an extra reference per item).
        // SAFETY: `d`, `name` and `value` are live objects while the GIL is held;
        // PyDict_SetItem takes its own references to both (it steals none).
        if unsafe { pyo3::ffi::PyDict_SetItem(d.as_ptr(), name.as_ptr(), value.as_ptr()) } < 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(d)
}

/// A key column: int64 if every key is an integer, else strings.
fn key_column<'k>(keys: impl Iterator<Item = KeyRef<'k>> + Clone) -> ArrayRef {
    if keys.clone().all(|k| k.is_int()) {
        Arc::new(Int64Array::from_iter_values(keys.map(|k| match k {
            KeyRef::Int(i) => i,
            KeyRef::Str(_) => 0,
        })))
    } else {
        Arc::new(StringArray::from_iter_values(keys.map(|k| match k {
            KeyRef::Str(s) => s.to_string(),
            KeyRef::Int(i) => i.to_string(),
        })))
    }
}

/// The `get_many` result: the key column(s), then one column per feature (`cols`, NaN = null).
/// A composite key gives one column per part, named as the entity's columns.
pub(super) fn features_table<'py>(
    py: Python<'py>,
    plan: &Plan,
    keys: &[PyKey],
    cols: Vec<Vec<f64>>,
    texts: Vec<Vec<Option<String>>>,
) -> PyResult<Bound<'py, PyAny>> {
    let entity = &plan.spec.entity;
    let key_arrays: Vec<ArrayRef> = if entity.is_composite() {
        let decoded: Vec<smallvec::SmallVec<[KeyRef<'_>; 4]>> = keys
            .iter()
            .map(|k| match k.as_ref() {
                KeyRef::Str(s) => crate::key::decode(s).unwrap_or_default(),
                KeyRef::Int(_) => smallvec::SmallVec::new(),
            })
            .collect();
        (0..entity.parts())
            .map(|j| {
                key_column(
                    decoded
                        .iter()
                        .map(move |p| p.get(j).copied().unwrap_or(KeyRef::Str(""))),
                )
            })
            .collect()
    } else {
        vec![key_column(keys.iter().map(PyKey::as_ref))]
    };
    let mut texts = texts.into_iter();
    let features = cols.into_iter().zip(&plan.outputs).map(|(c, o)| {
        if o.text {
            Column::Text(texts.next().unwrap_or_default())
        } else if o.integer {
            Column::Int(ScalarBuffer::from(
                c.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            ))
        } else {
            Column::Float(ScalarBuffer::from(c), true)
        }
    });
    let names = entity
        .columns()
        .iter()
        .map(String::as_str)
        .chain(plan.spec.features.iter().map(|f| f.name.as_str()));
    let columns = names.zip(key_arrays.into_iter().map(Column::Array).chain(features));
    let batch = arrow::batch(columns, keys.len())?;
    let rb = PyRecordBatch::new(batch).into_pyarrow(py)?;
    py.import("pyarrow")?
        .getattr("Table")?
        .call_method1("from_batches", (vec![rb],))
}

/// (accepted, late, ahead, duplicates, rows rejected as ahead).
type Counts = (u64, u64, u64, u64, Vec<u32>);

fn counts(r: Ingested) -> Counts {
    (r.accepted, r.late, r.ahead, r.duplicates, r.rejected)
}

#[pymethods]
impl PyEngine {
    /// An empty engine for a validated feature-set document.
    #[new]
    fn new(py: Python<'_>, spec: &Bound<'_, PySpec>) -> PyResult<PyEngine> {
        entry(None, || {
            Ok(PyEngine::from_engine(
                py,
                Engine::new(Arc::clone(&spec.get().plan)),
            ))
        })
    }

    /// Ingest one event row (a dict: entity, timestamp and every value column the features
    /// read). Checked, then applied directly. Returns (accepted, late).
    fn ingest_row(&self, py: Python<'_>, row: &Bound<'_, PyDict>) -> PyResult<Counts> {
        entry(Some(&self.poison), || {
            let ts_name = &self.plan.spec.timestamp;
            let r = convert::with_row(
                &self.plan,
                &self.rows,
                row,
                None,
                |key, ts, zone, vals, id, texts| {
                    self.check_zone(zone, ts_name)?;
                    let mut meta = self.ingest_guard(py);
                    let r = self
                        .inner
                        .ingest_one_with_texts(&mut meta, key, ts, vals, id, texts)
                        .py_err()?;
                    self.note_zone(zone);
                    Ok::<_, PyErr>(r)
                },
            )
            .py_err()??;
            Ok(counts(r))
        })
    }

    /// Ingest event rows given as a list (or tuple) of dicts. Every row is checked first: on
    /// error nothing is applied. Returns (accepted, late).
    fn ingest_rows(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<Counts> {
        entry(Some(&self.poison), || {
            let rows: Vec<Bound<'_, PyAny>> = if let Ok(l) = rows.cast::<PyList>() {
                l.iter().collect()
            } else if let Ok(t) = rows.cast::<PyTuple>() {
                t.iter().collect()
            } else {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "ingest_rows: expected a list of row dicts",
                ));
            };
            let (events, zone) = convert::rows(&self.plan, &self.rows, &rows).py_err()?;
            self.check_zone(zone, &self.plan.spec.timestamp)?;
            let mut meta = self.ingest_guard(py);
            let r = self.inner.ingest_locked(&mut meta, &events).py_err()?;
            self.note_zone(zone);
            Ok(counts(r))
        })
    }

    /// Ingest events given as an Arrow table (anything with `__arrow_c_stream__`), GIL
    /// released. Validated first: on error nothing is applied. Returns (accepted, late).
    #[pyo3(signature = (table, trusted=false))]
    fn ingest_table(&self, py: Python<'_>, table: PyTable, trusted: bool) -> PyResult<Counts> {
        entry(Some(&self.poison), || {
            let (batches, schema) = table.into_inner();
            let ts = &self.plan.spec.timestamp;
            let zone = schema
                .field_with_name(ts)
                .ok()
                .and_then(|f| Zone::of_arrow(f.data_type()));
            if let Some(z) = zone {
                self.check_zone(z, ts)?;
            }
            let plan = Arc::clone(&self.plan);
            let inner = &self.inner;
            let r = detached(py, || {
                let events = read_events(&plan, &batches)?;
                if trusted {
                    inner.ingest_trusted(&events)
                } else {
                    inner.ingest(&events)
                }
            })?;
            if let Some(z) = zone {
                self.note_zone(z);
            }
            Ok(counts(r))
        })
    }

    /// Features of one entity at instant `at` (default: now, UTC) as a dict.
    #[pyo3(signature = (key, at=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        entry(Some(&self.poison), || {
            self.with_features(py, key, at, None, |buf, texts| {
                self.row_dict(py, buf, texts)
            })
        })
    }

    /// The model-ready vector for one request: the entity's window features at `at`, plus the
    /// request-time `fields`, through the fitted `transforms`, in `transforms.feature_names`
    /// order (NaN = null). One call, no Python-level loop.
    #[pyo3(signature = (key, transforms, fields=None, at=None))]
    fn vector<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        transforms: &Bound<'py, PyTransforms>,
        fields: Option<&Bound<'py, PyAny>>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, numpy::PyArray1<f64>>> {
        entry(Some(&self.poison), || {
            let tf = transforms.get();
            // Read only the window features the transforms use; if the transforms were refit
            // between taking that list and applying them (another thread), read all and retry.
            let slots = super::transforms::row_slots(py, tf, &self.plan);
            let read = |slots: Option<&Arc<super::transforms::RowSlots>>| {
                self.with_features(py, key, at, slots.map(|s| s.mask()), |buf, texts| {
                    // a request time is on the engine's clock too
                    let clock = |name: &str, z: Zone| self.check_zone(z, name);
                    super::transforms::vector_with_features(
                        py, tf, &self.plan, fields, buf, texts, slots, &clock,
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
        })
    }

    /// `model.predict_one(self.vector(key, transforms, fields, at))` in one call: the vector
    /// goes from the engine to the model without a Python round trip. A float for a linear
    /// model, the class probabilities for a softmax.
    #[pyo3(signature = (key, transforms, model, fields=None, at=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        transforms: &Bound<'py, PyTransforms>,
        model: &Bound<'py, PyAny>,
        fields: Option<&Bound<'py, PyAny>>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let linear = model.cast::<super::learn::PyLinear>().ok();
        let softmax = model.cast::<super::learn::PySoftmax>().ok();
        if linear.is_none() && softmax.is_none() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "model: expected an rtml.learn model (Logistic, LinearRegression, Softmax), got {}",
                model.get_type().name()?
            )));
        }
        let vec = self.vector(py, key, transforms, fields, at)?;
        let ro = numpy::PyArrayMethods::readonly(&vec);
        let x = ro.as_slice().map_err(|_| {
            pyo3::exceptions::PyRuntimeError::new_err("predict: the vector is not contiguous")
        })?;
        match (linear, softmax) {
            (Some(m), _) => {
                Ok(pyo3::types::PyFloat::new(py, m.get().predict_values(py, x)?).into_any())
            }
            (_, Some(m)) => Ok(m.get().predict_values(py, x)?.into_any()),
            (None, None) => Err(pyo3::exceptions::PyTypeError::new_err("model: unsupported")),
        }
    }

    /// `vector` and `get` of one entity from one read of its state (the same instant, one
    /// shard lock, so a concurrent ingest cannot fall between them): `(vector, features dict)`.
    #[pyo3(signature = (key, transforms, fields=None, at=None))]
    fn vector_get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        transforms: &Bound<'py, PyTransforms>,
        fields: Option<&Bound<'py, PyAny>>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, numpy::PyArray1<f64>>, Bound<'py, PyDict>)> {
        entry(Some(&self.poison), || {
            let tf = transforms.get();
            // every feature (the dict needs them all), so the transforms' slots need no check
            self.with_features(py, key, at, None, |buf, texts| {
                let clock = |name: &str, z: Zone| self.check_zone(z, name);
                let vec = super::transforms::vector_with_features(
                    py, tf, &self.plan, fields, buf, texts, None, &clock,
                )?
                .ok_or_else(|| {
                    pyo3::exceptions::PyRuntimeError::new_err(
                        "vector: transforms changed while reading",
                    )
                })?;
                Ok((vec, self.row_dict(py, buf, texts)?))
            })
        })
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
        entry(Some(&self.poison), || {
            let entity = &self.plan.spec.entity;
            let keys: Vec<PyKey> = keys
                .try_iter()?
                .map(|k| k.and_then(|k| convert::entity_key(&k, entity).py_err()))
                .collect::<PyResult<_>>()?;
            let times: Vec<i64> = match at {
                Some(a) if a.is_instance_of::<PyList>() || a.is_instance_of::<PyTuple>() => {
                    let ts: Vec<i64> = a
                        .try_iter()?
                        .map(|t| t.and_then(|t| self.instant(&t, "at")))
                        .collect::<PyResult<_>>()?;
                    if ts.len() != keys.len() {
                        return Err(errors::query_error(format!(
                            "at: {} instants for {} keys (give one instant, or one per key)",
                            ts.len(),
                            keys.len()
                        )));
                    }
                    ts
                }
                other => vec![self.at(other)?; keys.len()],
            };
            let nf = self.plan.n_features();
            let nt = self.plan.outputs.iter().filter(|o| o.text).count();
            let mut cols = vec![Vec::with_capacity(keys.len()); nf];
            let mut text_cols: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(keys.len()); nt];
            let mut row = vec![0f64; nf];
            let mut texts = Vec::new();
            for (k, &t) in keys.iter().zip(&times) {
                self.features_at(py, k.as_ref(), t, &mut row, None, &mut texts)?;
                for (c, v) in cols.iter_mut().zip(&row) {
                    c.push(*v);
                }
                for (c, s) in text_cols.iter_mut().zip(texts.drain(..)) {
                    c.push(s);
                }
            }
            features_table(py, &self.plan, &keys, cols, text_cols)
        })
    }

    /// Whether the engine holds state for `key` (an entity seen and not evicted).
    fn contains(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        entry(Some(&self.poison), || {
            convert::with_entity_key(key, &self.plan.spec.entity, |k| {
                if self.inner.check_key(k).is_err() {
                    return false;
                }
                self.shard_read(py, k).contains(k)
            })
            .py_err()
        })
    }

    /// Number of keys with state (seen and not evicted).
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        entry(Some(&self.poison), || {
            let engine = &self.inner;
            Ok(py.detach(|| engine.stats()).keys)
        })
    }

    /// Write the whole state to `path` atomically (temporary file, fsync, rename), checksummed.
    fn snapshot(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        entry(Some(&self.poison), || {
            let engine = &self.inner;
            detached(py, || engine.snapshot(&path))
        })
    }

    /// The snapshot's bytes, without a file (`OnlineEngine.to_bytes`).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        entry(Some(&self.poison), || {
            let engine = &self.inner;
            let bytes = detached(py, || engine.to_bytes())?;
            Ok(PyBytes::new(py, &bytes))
        })
    }

    /// An engine from `to_bytes` (or a snapshot file's bytes). Raises `rtml.SnapshotError` for
    /// truncated, corrupted or foreign bytes.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<PyEngine> {
        entry(None, || {
            let engine = detached(py, || Engine::from_bytes(data))?;
            Ok(PyEngine::from_engine(py, engine))
        })
    }

    /// Load an engine written by `snapshot`. Raises `rtml.SnapshotError` for a truncated,
    /// corrupted or foreign file.
    #[staticmethod]
    fn restore(py: Python<'_>, path: PathBuf) -> PyResult<PyEngine> {
        entry(None, || {
            let engine = detached(py, || Engine::restore(&path))?;
            Ok(PyEngine::from_engine(py, engine))
        })
    }

    /// Counters and sizes: keys, events_ingested, late_events_dropped, keys_evicted,
    /// state_bytes (approximate bytes of per-key state and the key table), watermark (ns or None).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        entry(Some(&self.poison), || {
            let engine = &self.inner;
            let s = py.detach(|| engine.stats());
            let d = PyDict::new(py);
            d.set_item("keys", s.keys)?;
            d.set_item("events_ingested", s.counters.events_ingested)?;
            d.set_item("late_events_dropped", s.counters.late_events_dropped)?;
            d.set_item("keys_evicted", s.counters.keys_evicted)?;
            d.set_item("ahead_events_rejected", s.counters.ahead_events_rejected)?;
            d.set_item("duplicates_dropped", s.counters.duplicates_dropped)?;
            d.set_item("state_bytes", s.state_bytes)?;
            d.set_item("watermark", s.watermark)?;
            Ok(d)
        })
    }

    /// Move the watermark forward to `t` (ns); returns the watermark (see
    /// `OnlineEngine.advance_watermark`).
    fn advance_watermark(&self, py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<i64> {
        entry(Some(&self.poison), || {
            let t = self.instant(t, "t")?;
            let engine = &self.inner;
            Ok(py.detach(|| engine.advance_watermark(t)))
        })
    }

    /// Evict keys idle longer than the feature set's ttl now (it also happens during ingest).
    fn evict_idle(&self, py: Python<'_>) -> PyResult<usize> {
        entry(Some(&self.poison), || {
            let engine = &self.inner;
            Ok(py.detach(|| engine.evict_idle()))
        })
    }

    /// Output column names, in order.
    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.plan.spec.feature_names()
    }

    /// The validated feature-set document this engine computes (shares the engine's plan).
    #[getter]
    fn spec(&self) -> PySpec {
        PySpec {
            plan: Arc::clone(&self.plan),
        }
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

    /// The clock of the events ingested so far: "naive", "aware" or None (no event with a
    /// datetime yet, or only integer times).
    #[getter]
    fn time_zone_kind(&self) -> Option<&'static str> {
        match self.zone.load(Ordering::Acquire) {
            ZONE_NAIVE => Some("naive"),
            ZONE_AWARE => Some("aware"),
            _ => None,
        }
    }

    /// Whether a call panicked (the engine then refuses every call).
    #[getter]
    fn poisoned(&self) -> bool {
        self.poison.is_set()
    }

    /// Test hook (private, always compiled): panic inside the guarded entry path, as a bug in
    /// the engine would, so the tests can check the poisoning. Never call it otherwise: it
    /// poisons the engine.
    fn _panic_for_test(&self) -> PyResult<()> {
        entry(Some(&self.poison), || -> PyResult<()> {
            panic!("deliberate panic (rtml test hook)")
        })
    }
}

/// A clock as stored in an engine's (or a remote reader's) atomic: `ZONE_UNKNOWN` for epoch
/// integers, which fix no clock.
pub(super) fn zone_code(z: Zone) -> u8 {
    match z {
        Zone::Epoch => ZONE_UNKNOWN,
        Zone::Naive => ZONE_NAIVE,
        Zone::Aware => ZONE_AWARE,
    }
}

/// The clock a stored code names, if any.
pub(super) fn zone_of(code: u8) -> Option<Zone> {
    match code {
        ZONE_NAIVE => Some(Zone::Naive),
        ZONE_AWARE => Some(Zone::Aware),
        _ => None,
    }
}

/// Refuse a time `z` on another clock than the events' (`held`, a stored code); `what` names
/// the column or argument. The in-process engine's and the remote reader's one check.
pub(super) fn check_clock(held: u8, z: Zone, what: &str) -> PyResult<()> {
    if let Some(cur) = zone_of(held) {
        if z.clash(cur) {
            let against = format!("this engine's events hold {}", cur.describe());
            return Err(errors::schema_error(
                what,
                convert::zone_clash_message(z, &against),
            ));
        }
    }
    Ok(())
}
