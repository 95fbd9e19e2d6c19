//! Shared online state (docs/shared-state.md): the writer's side (`publish_changes`: every
//! changed key of an engine as a store key and a value, `online::keystate`) and the reader's
//! (`RemoteReader`: the values a store returned, decoded and evaluated with the function the
//! in-process engine's `get` runs). No network here: python/rtml/remote.py talks to Redis.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::convert::{self, PyKey, Zone};
use super::engine::{self, zone_code, zone_of, PyEngine, ZONE_AWARE, ZONE_NAIVE, ZONE_UNKNOWN};
use super::errors::{self, detached, entry, IntoPy};
use super::transforms::PyTransforms;
use super::PySpec;
use crate::error::Error;
use crate::input::{Key, KeyRef};
use crate::online::keystate::{self, answer};
use crate::plan::Plan;
use crate::resp::{self, Conn, Reply, Target};

pyo3::create_exception!(
    _core,
    RedisIoError,
    pyo3::exceptions::PyConnectionError,
    "Redis did not answer within the timeout, refused the connection, or answered an error (rtml.RemoteEngine raises rtml.RemoteUnavailableError for it)."
);

/// Start (or stop) tracking the keys an engine changes (`publish_changes` lists them).
#[pyfunction]
pub fn track_changes(py: Python<'_>, engine: &Bound<'_, PyEngine>, on: bool) -> PyResult<()> {
    let e = engine.get();
    entry(Some(&e.poison), || {
        let inner = &e.inner;
        py.detach(|| inner.track_changes(on));
        Ok(())
    })
}

/// Keys changed since the last publish (0 when not tracking).
#[pyfunction]
pub fn changed_keys(py: Python<'_>, engine: &Bound<'_, PyEngine>) -> PyResult<usize> {
    let e = engine.get();
    entry(Some(&e.poison), || {
        let inner = &e.inner;
        Ok(py.detach(|| inner.changed_keys()))
    })
}

/// Encode every key of `engine` changed since the last call (every key with `all`):
/// `(watermark, settle_point, keys, bytes, key_is_int, [(store key, value, last event time), ...],
/// key_kind)`, the watermark and settled point None before any event, `key_is_int` and
/// `key_kind` (the exact [`crate::key`] kind: a composite key's part kinds) None before any key.
/// Clears the changed set.
#[pyfunction]
#[pyo3(signature = (engine, ns, spec_id, all=false))]
pub fn publish_changes<'py>(
    py: Python<'py>,
    engine: &Bound<'py, PyEngine>,
    ns: &str,
    spec_id: u64,
    all: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let e = engine.get();
    entry(Some(&e.poison), || {
        let zone = e.zone.load(Ordering::Acquire);
        let inner = &e.inner;
        let (published, items) = detached(py, || {
            let mut items: Vec<(Vec<u8>, Vec<u8>, i64)> = Vec::new();
            // redis-py writes whole values (SET): no delta segments on this path
            let p = inner.publish_changed(all, false, spec_id, zone, |k, st, v| {
                if let keystate::Value::Full(v) = v {
                    items.push((keystate::store_key(ns, k.as_ref()), v.to_vec(), st.last_ts));
                }
                true
            })?;
            Ok((p, items))
        })?;
        let key_kind = inner.key_kind();
        let key_is_int = key_kind.map(|k| k == crate::key::KIND_INT);
        let list = PyList::empty(py);
        for (name, value, last) in items {
            list.append((PyBytes::new(py, &name), PyBytes::new(py, &value), last))?;
        }
        (
            published.watermark,
            published.settle_point,
            published.keys,
            published.bytes,
            key_is_int,
            list,
            key_kind,
        )
            .into_pyobject(py)
    })
}

/// Features as one column per feature, the string features' strings as one column per string
/// feature, and each key's watermark (None: no stored value).
type Evaluated = (Vec<Vec<f64>>, Vec<Vec<Option<String>>>, Vec<Option<i64>>);

/// Decodes the values a store holds for one feature set and answers queries over them with
/// the in-process engine's code (use `rtml.RemoteEngine`, which wraps it).
#[pyclass(frozen, name = "RemoteReader", module = "rtml._core")]
pub struct PyRemoteReader {
    plan: Arc<Plan>,
    ns: String,
    spec_id: u64,
    /// The writers' key kind (0 unknown, else a [`crate::key`] kind: 1 integers, 2 strings, a
    /// composite key's part kinds) and clock (`ZONE_*`), as the store's info record says.
    kind: AtomicU64,
    zone: AtomicU8,
    names: Vec<Py<PyString>>,
    template: Py<PyDict>,
}

impl PyRemoteReader {
    /// The engine's key of `key` (a tuple for a composite entity, encoded as the writers'
    /// engines encode it), checked against the writers' kind.
    fn key(&self, key: &Bound<'_, PyAny>) -> PyResult<PyKey> {
        let k = convert::entity_key(key, &self.plan.spec.entity).py_err()?;
        self.check_kind(self.kind_of(k.as_ref()))?;
        Ok(k)
    }

    /// The in-process engine's key-kind check, against the writers' kind.
    /// The kind ([`crate::key`]) of an engine key of this entity.
    fn kind_of(&self, k: KeyRef<'_>) -> u64 {
        crate::key::kind_of(k, self.plan.spec.entity.parts())
    }

    /// The in-process engine's key-kind check (same message), against the writers' kind.
    fn check_kind(&self, kind: u64) -> PyResult<()> {
        let held = self.kind.load(Ordering::Acquire);
        if held != 0 && held != kind {
            let entity = &self.plan.spec.entity;
            return Err(errors::schema_error(
                entity.label(),
                format!(
                    "this engine holds {} keys, got {} keys",
                    entity.describe_kind(held),
                    entity.describe_kind(kind)
                ),
            ));
        }
        Ok(())
    }

    fn check_zone(&self, z: Zone, held: u8, what: &str) -> PyResult<()> {
        engine::check_clock(held, z, what)
    }

    fn instant(&self, at: Option<&Bound<'_, PyAny>>) -> PyResult<(i64, u8)> {
        match at {
            Some(a) if !a.is_none() => {
                let (t, z) =
                    convert::instant_zoned(a, self.plan.spec.timestamp_unit.as_deref(), "at")
                        .py_err()?;
                self.check_zone(z, self.zone.load(Ordering::Acquire), "at")?;
                Ok((t, zone_code(z)))
            }
            _ => Ok((engine::now_ns(), ZONE_UNKNOWN)),
        }
    }

    /// The state a stored value holds for `key` (None: no value, or only delta segments whose
    /// base expired), checked against the clock of the query's `at`.
    fn state_of(
        &self,
        key: KeyRef<'_>,
        at_zone: u8,
        value: Option<&[u8]>,
    ) -> PyResult<Option<keystate::Decoded>> {
        let Some(bytes) = value else {
            return Ok(None);
        };
        let d = keystate::decode_value(bytes, &self.plan, self.spec_id, key).py_err()?;
        if let (Some(d), Some(z)) = (&d, zone_of(at_zone)) {
            self.check_zone(z, d.header.zone, "at")?;
        }
        Ok(d)
    }

    /// Features of a decoded state (None: no stored state) at `t` into `out`, the strings of
    /// its string features into `texts`: the in-process engine's `get` code
    /// ([`answer`], [`keystate::texts`]). The watermark the value was written at.
    fn evaluate(
        &self,
        d: Option<&keystate::Decoded>,
        t: i64,
        out: &mut [f64],
        mask: Option<&[bool]>,
        texts: &mut Vec<Option<String>>,
    ) -> PyResult<Option<i64>> {
        let state = d.map(|d| &d.state);
        answer(&self.plan, state, t, out, mask).py_err()?;
        if self.plan.has_text() {
            keystate::texts(&self.plan, state, out, texts);
        }
        Ok(d.map(|d| d.header.watermark))
    }

    /// Decode and evaluate a batch without the GIL (across the pool's threads from 32 keys),
    /// then check, in key order, what [`Self::state_of`] and [`Self::evaluate`] check: the
    /// features as one column per feature, the string features' columns, and each key's
    /// watermark.
    fn evaluate_many(
        &self,
        py: Python<'_>,
        keys: &[PyKey],
        times: &[i64],
        zones: &[u8],
        values: &[Option<&[u8]>],
    ) -> PyResult<Evaluated> {
        /// (watermark, clock of the stored events, the answer, its strings)
        type One = crate::error::Result<(
            Option<i64>,
            u8,
            crate::error::Result<()>,
            Vec<Option<String>>,
        )>;
        let nf = self.plan.n_features().max(1);
        let plan = &*self.plan;
        let spec_id = self.spec_id;
        let has_text = plan.has_text();
        let one = |k: &PyKey, t: i64, v: &Option<&[u8]>, out: &mut [f64]| -> One {
            let d = match v {
                None => None,
                // None again for only delta segments (the base expired): no stored state
                Some(b) => keystate::decode_value(b, plan, spec_id, k.as_ref())?,
            };
            let state = d.as_ref().map(|d| &d.state);
            let answered = answer(plan, state, t, out, None);
            let mut texts = Vec::new();
            if has_text && answered.is_ok() {
                keystate::texts(plan, state, out, &mut texts);
            }
            let (wm, zone) = d.as_ref().map_or((None, ZONE_UNKNOWN), |d| {
                (Some(d.header.watermark), d.header.zone)
            });
            Ok((wm, zone, answered, texts))
        };
        let (flat, results) = py.detach(|| {
            use rayon::prelude::*;
            let mut flat = vec![0f64; keys.len() * nf];
            let results: Vec<One> = if keys.len() >= 32 {
                crate::pool::install(|| {
                    flat.par_chunks_mut(nf)
                        .zip(keys.par_iter().zip(times.par_iter().zip(values.par_iter())))
                        .map(|(out, (k, (&t, v)))| one(k, t, v, out))
                        .collect()
                })
            } else {
                flat.chunks_mut(nf)
                    .zip(keys.iter().zip(times.iter().zip(values.iter())))
                    .map(|(out, (k, (&t, v)))| one(k, t, v, out))
                    .collect()
            };
            (flat, results)
        });
        let nt = self.plan.outputs.iter().filter(|o| o.text).count();
        let mut text_cols: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(keys.len()); nt];
        let mut wms = Vec::with_capacity(keys.len());
        for (r, &at_zone) in results.into_iter().zip(zones) {
            let (wm, stored, answered, texts) = r.py_err()?;
            if let (Some(z), Some(_)) = (zone_of(at_zone), wm) {
                self.check_zone(z, stored, "at")?;
            }
            answered.py_err()?;
            for (c, s) in text_cols.iter_mut().zip(texts) {
                c.push(s);
            }
            wms.push(wm);
        }
        let mut cols = vec![Vec::with_capacity(keys.len()); nf];
        for row in flat.chunks(nf) {
            for (c, v) in cols.iter_mut().zip(row) {
                c.push(*v);
            }
        }
        Ok((cols, text_cols, wms))
    }

    fn row_dict<'py>(
        &self,
        py: Python<'py>,
        values: &[f64],
        texts: &[Option<String>],
    ) -> PyResult<Bound<'py, PyDict>> {
        super::engine::row_dict(py, &self.template, &self.names, &self.plan, values, texts)
    }

    /// `get` of `key` at `t` from its stored value: `(dict, watermark)`.
    fn get_of<'py>(
        &self,
        py: Python<'py>,
        k: KeyRef<'_>,
        t: i64,
        zone: u8,
        value: Option<&[u8]>,
    ) -> PyResult<(Bound<'py, PyDict>, Option<i64>)> {
        let d = self.state_of(k, zone, value)?;
        let mut out = vec![0f64; self.plan.n_features()];
        let mut texts = Vec::new();
        let wm = self.evaluate(d.as_ref(), t, &mut out, None, &mut texts)?;
        Ok((self.row_dict(py, &out, &texts)?, wm))
    }

    /// `vector` of `key` at `t` from its stored value, decoded once: `(vector, the `get` dict
    /// with `with_features`, watermark)`, both answers from the same state.
    #[allow(clippy::too_many_arguments)]
    fn vector_of<'py>(
        &self,
        py: Python<'py>,
        k: KeyRef<'_>,
        t: i64,
        zone: u8,
        value: Option<&[u8]>,
        transforms: &Bound<'py, PyTransforms>,
        fields: Option<&Bound<'py, PyAny>>,
        with_features: bool,
    ) -> PyResult<VectorAnswer<'py>> {
        let d = self.state_of(k, zone, value)?;
        let d = d.as_ref();
        let tf = transforms.get();
        let held = self.zone.load(Ordering::Acquire);
        let clock = |name: &str, z: Zone| self.check_zone(z, held, name);
        let mut buf = vec![0f64; self.plan.n_features()];
        let mut texts = Vec::new();
        let changed = || {
            errors::to_py(Error::Query(
                "vector: transforms changed while reading".into(),
            ))
        };
        let (vec, wm) = if with_features {
            // every feature (the dict needs them all): no slot check needed
            let wm = self.evaluate(d, t, &mut buf, None, &mut texts)?;
            let vec = super::transforms::vector_with_features(
                py, tf, &self.plan, fields, &buf, &texts, None, &clock,
            )?
            .ok_or_else(changed)?;
            (vec, wm)
        } else {
            let slots = super::transforms::row_slots(py, tf, &self.plan);
            let wm = self.evaluate(d, t, &mut buf, Some(slots.mask()), &mut texts)?;
            let vec = match super::transforms::vector_with_features(
                py,
                tf,
                &self.plan,
                fields,
                &buf,
                &texts,
                Some(&slots),
                &clock,
            )? {
                Some(v) => v,
                None => {
                    // the transforms were refit meanwhile: every feature, then apply
                    self.evaluate(d, t, &mut buf, None, &mut texts)?;
                    super::transforms::vector_with_features(
                        py, tf, &self.plan, fields, &buf, &texts, None, &clock,
                    )?
                    .ok_or_else(changed)?
                }
            };
            (vec, wm)
        };
        let feats = if with_features {
            Some(self.row_dict(py, &buf, &texts)?)
        } else {
            None
        };
        Ok((vec, feats, wm))
    }

    /// The engine keys, instants and clocks of a `get_many` (checked like the engine's).
    fn keys_and_times(
        &self,
        keys: &Bound<'_, PyAny>,
        at: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Vec<PyKey>, Vec<i64>, Vec<u8>)> {
        let entity = &self.plan.spec.entity;
        let keys: Vec<PyKey> = keys
            .try_iter()?
            .map(|k| k.and_then(|k| convert::entity_key(&k, entity).py_err()))
            .collect::<PyResult<_>>()?;
        for k in &keys {
            self.check_kind(self.kind_of(k.as_ref()))?;
        }
        let (times, zones): (Vec<i64>, Vec<u8>) = match at {
            Some(a) if a.is_instance_of::<PyList>() || a.is_instance_of::<PyTuple>() => {
                let ts: Vec<(i64, u8)> = a
                    .try_iter()?
                    .map(|t| t.and_then(|t| self.instant(Some(&t))))
                    .collect::<PyResult<_>>()?;
                if ts.len() != keys.len() {
                    return Err(errors::query_error(format!(
                        "at: {} instants for {} keys (give one instant, or one per key)",
                        ts.len(),
                        keys.len()
                    )));
                }
                ts.into_iter().unzip()
            }
            other => {
                let (t, z) = self.instant(other)?;
                (vec![t; keys.len()], vec![z; keys.len()])
            }
        };
        Ok((keys, times, zones))
    }
}

/// A `vector` answer: the vector, the features dict (when asked for), the watermark.
type VectorAnswer<'py> = (
    Bound<'py, numpy::PyArray1<f64>>,
    Option<Bound<'py, PyDict>>,
    Option<i64>,
);

fn bytes_of<'a>(v: &'a Option<Bound<'_, PyAny>>) -> PyResult<Option<&'a [u8]>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => Ok(Some(v.cast::<PyBytes>()?.as_bytes())),
    }
}

#[pymethods]
impl PyRemoteReader {
    /// A reader of the values published under namespace `ns` for `spec` (`spec_id`: the first
    /// 8 bytes of the SHA-256 of the spec's JSON, big-endian).
    #[new]
    fn new(py: Python<'_>, spec: &Bound<'_, PySpec>, ns: String, spec_id: u64) -> PyResult<Self> {
        let plan = Arc::clone(&spec.get().plan);
        let names: Vec<Py<PyString>> = plan
            .spec
            .features
            .iter()
            .map(|f| PyString::intern(py, &f.name).unbind())
            .collect();
        let template = PyDict::new(py);
        for n in &names {
            template.set_item(n.bind(py), py.None())?;
        }
        Ok(PyRemoteReader {
            plan,
            ns,
            spec_id,
            kind: AtomicU64::new(0),
            zone: AtomicU8::new(ZONE_UNKNOWN),
            names,
            template: template.unbind(),
        })
    }

    /// Record the writers' key kind (True: integers; `key_kind`, when the info record has it,
    /// the exact kind, a composite key's part kinds included) and clock ("naive" / "aware" /
    /// None).
    #[pyo3(signature = (key_is_int, zone, key_kind=None))]
    fn set_info(&self, key_is_int: Option<bool>, zone: Option<&str>, key_kind: Option<u64>) {
        let k = match (key_kind, key_is_int) {
            (Some(k), _) => k,
            (None, None) => 0,
            (None, Some(true)) => crate::key::KIND_INT,
            (None, Some(false)) => crate::key::KIND_STR,
        };
        self.kind.store(k, Ordering::Release);
        let z = match zone {
            Some("naive") => ZONE_NAIVE,
            Some("aware") => ZONE_AWARE,
            _ => ZONE_UNKNOWN,
        };
        self.zone.store(z, Ordering::Release);
    }

    /// The store key of `key` (checks the key like the engine's `get`).
    fn store_key<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        entry(None, || {
            let k = self.key(key)?;
            let k = k.as_ref();
            Ok(PyBytes::new(py, &keystate::store_key(&self.ns, k)))
        })
    }

    /// Check a query before any network call: `(store key, t ns, clock of at)`.
    #[pyo3(signature = (key, at=None))]
    fn prepare<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyBytes>, i64, u8)> {
        entry(None, || {
            let k = self.key(key)?;
            let k = k.as_ref();
            let (t, z) = self.instant(at)?;
            Ok((PyBytes::new(py, &keystate::store_key(&self.ns, k)), t, z))
        })
    }

    /// `prepare` of many keys: `(store keys, instants, clocks)`; `at` is one instant or one per
    /// key.
    #[pyo3(signature = (keys, at=None))]
    fn prepare_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyList>, Vec<i64>, Vec<u8>)> {
        entry(None, || {
            let (keys, times, zones) = self.keys_and_times(keys, at)?;
            let names = PyList::empty(py);
            for k in &keys {
                names.append(PyBytes::new(py, &keystate::store_key(&self.ns, k.as_ref())))?;
            }
            Ok((names, times, zones))
        })
    }

    /// Features of `key` at `t` (from `prepare`) given its stored value (bytes, or None when
    /// the store has none): `(dict, watermark of the value or None)`.
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        t: i64,
        zone: u8,
        value: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyDict>, Option<i64>)> {
        entry(None, || {
            let k = self.key(key)?;
            self.get_of(py, k.as_ref(), t, zone, bytes_of(&value)?)
        })
    }

    /// `get` of many keys (`times`, `zones` from `prepare_many`, `values` as the store returned
    /// them): `(pyarrow.Table, [watermark or None per key])`.
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        times: Vec<i64>,
        zones: Vec<u8>,
        values: Vec<Option<Bound<'py, PyAny>>>,
    ) -> PyResult<(Bound<'py, PyAny>, Vec<Option<i64>>)> {
        entry(None, || {
            let entity = &self.plan.spec.entity;
            let keys: Vec<PyKey> = keys
                .try_iter()?
                .map(|k| k.and_then(|k| convert::entity_key(&k, entity).py_err()))
                .collect::<PyResult<_>>()?;
            if times.len() != keys.len() || values.len() != keys.len() || zones.len() != keys.len()
            {
                return Err(errors::query_error(format!(
                    "get_many: {} keys, {} instants, {} values",
                    keys.len(),
                    times.len(),
                    values.len()
                )));
            }
            let values: Vec<Option<&[u8]>> =
                values.iter().map(bytes_of).collect::<PyResult<_>>()?;
            let (cols, texts, wms) = self.evaluate_many(py, &keys, &times, &zones, &values)?;
            Ok((
                engine::features_table(py, &self.plan, &keys, cols, texts)?,
                wms,
            ))
        })
    }

    /// `OnlineEngine.vector` over a stored value: `(vector, the features dict with
    /// with_features else None, watermark of the value or None)`, decoded once.
    #[pyo3(signature = (key, t, zone, value, transforms, fields=None, with_features=false))]
    #[allow(clippy::too_many_arguments)]
    fn vector<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        t: i64,
        zone: u8,
        value: Option<Bound<'py, PyAny>>,
        transforms: &Bound<'py, PyTransforms>,
        fields: Option<&Bound<'py, PyAny>>,
        with_features: bool,
    ) -> PyResult<VectorAnswer<'py>> {
        entry(None, || {
            let k = self.key(key)?;
            let v = bytes_of(&value)?;
            self.vector_of(
                py,
                k.as_ref(),
                t,
                zone,
                v,
                transforms,
                fields,
                with_features,
            )
        })
    }

    /// The namespace this reader reads.
    #[getter]
    fn ns(&self) -> &str {
        &self.ns
    }

    /// Output feature names, in order.
    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.plan.spec.feature_names()
    }

    /// `get` through the Rust client: one round trip, then decode and evaluate.
    #[pyo3(signature = (conn, key, at=None))]
    fn fetch_get<'py>(
        &self,
        py: Python<'py>,
        conn: &Bound<'py, PyRedisConn>,
        key: &Bound<'py, PyAny>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyDict>, Option<i64>)> {
        entry(None, || {
            let k = self.key(key)?;
            let (t, z) = self.instant(at)?;
            let name = keystate::store_key(&self.ns, k.as_ref());
            let values = self.fetch(py, conn.get(), vec![name])?;
            self.check_kind(self.kind_of(k.as_ref()))?; // against the key kind just learned
            let value = values.into_iter().next().flatten();
            self.get_of(py, k.as_ref(), t, z, value.as_deref())
        })
    }

    /// `get_many` through the Rust client: one MGET, no Python object per key before the
    /// answer's table.
    #[pyo3(signature = (conn, keys, at=None))]
    fn fetch_get_many<'py>(
        &self,
        py: Python<'py>,
        conn: &Bound<'py, PyRedisConn>,
        keys: &Bound<'py, PyAny>,
        at: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Vec<Option<i64>>)> {
        entry(None, || {
            let (keys, times, zones) = self.keys_and_times(keys, at)?;
            let names: Vec<Vec<u8>> = keys
                .iter()
                .map(|k| keystate::store_key(&self.ns, k.as_ref()))
                .collect();
            let values = if names.is_empty() {
                Vec::new()
            } else {
                self.fetch(py, conn.get(), names)?
            };
            if values.len() != keys.len() {
                return Err(RedisIoError::new_err("redis: a reply of the wrong length"));
            }
            for k in &keys {
                self.check_kind(self.kind_of(k.as_ref()))?; // against the key kind just learned
            }
            let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            let (cols, texts, wms) = self.evaluate_many(py, &keys, &times, &zones, &values)?;
            Ok((
                engine::features_table(py, &self.plan, &keys, cols, texts)?,
                wms,
            ))
        })
    }

    /// `vector` through the Rust client: one round trip (GET), the value decoded once;
    /// `(vector, the features dict with with_features else None, watermark)`.
    #[pyo3(signature = (conn, key, transforms, fields=None, at=None, with_features=false))]
    #[allow(clippy::too_many_arguments)]
    fn fetch_vector<'py>(
        &self,
        py: Python<'py>,
        conn: &Bound<'py, PyRedisConn>,
        key: &Bound<'py, PyAny>,
        transforms: &Bound<'py, PyTransforms>,
        fields: Option<&Bound<'py, PyAny>>,
        at: Option<&Bound<'py, PyAny>>,
        with_features: bool,
    ) -> PyResult<VectorAnswer<'py>> {
        entry(None, || {
            let k = self.key(key)?;
            let (t, z) = self.instant(at)?;
            let name = keystate::store_key(&self.ns, k.as_ref());
            let values = self.fetch(py, conn.get(), vec![name])?;
            self.check_kind(self.kind_of(k.as_ref()))?; // against the key kind just learned
            let value = values.into_iter().next().flatten();
            let k = k.as_ref();
            self.vector_of(
                py,
                k,
                t,
                z,
                value.as_deref(),
                transforms,
                fields,
                with_features,
            )
        })
    }

    /// Whether the store holds a value for `key`.
    fn fetch_exists(
        &self,
        py: Python<'_>,
        conn: &Bound<'_, PyRedisConn>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        entry(None, || {
            let k = convert::entity_key(key, &self.plan.spec.entity).py_err()?;
            let name = keystate::store_key(&self.ns, k.as_ref());
            match conn.get().command(py, &[b"EXISTS", &name])? {
                Reply::Int(n) => Ok(n > 0),
                _ => Err(RedisIoError::new_err("redis: unexpected reply to EXISTS")),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The Rust client path (`crate::resp`): one call = the round trip (GIL released) + decode +
// evaluation.
// ---------------------------------------------------------------------------------------------

/// An `APPEND` of a publish: its place among the commands, the length it must answer, its key.
struct Append {
    command: usize,
    len: usize,
    key: Key,
}

/// Connections to one Redis through the Rust client, every call bounded by `timeout`.
#[pyclass(frozen, name = "RedisConn", module = "rtml._core")]
pub struct PyRedisConn {
    target: Target,
    timeout: Duration,
    /// Idle connections (a call takes one, or connects, and puts it back after success).
    pool: Mutex<Vec<Conn>>,
    /// The process the pooled connections belong to: a forked child (gunicorn, multiprocessing)
    /// must not share its parent's sockets, whose replies would interleave.
    pid: std::sync::atomic::AtomicU32,
}

impl PyRedisConn {
    /// `f` on a pooled connection, without the GIL, within the timeout; an I/O error drops the
    /// connection and raises `RedisIoError`.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl Fn(&mut Conn, Instant) -> std::io::Result<T> + Send + Sync,
    ) -> PyResult<T> {
        let r = py.detach(|| {
            let deadline = Instant::now() + self.timeout;
            let me = std::process::id();
            if self.pid.swap(me, Ordering::AcqRel) != me {
                // forked: forget the parent's connections (closing our copies of the file
                // descriptors leaves the parent's sockets open)
                self.pool.lock().clear();
            }
            let pooled = self.pool.lock().pop();
            let out = match pooled {
                Some(mut conn) => match f(&mut conn, deadline) {
                    Ok(out) => Ok((conn, out)),
                    // an idle connection the server closed (restart, idle timeout): once more
                    // on a new one, within the same deadline (every command sent is idempotent)
                    Err(e) if e.kind() != std::io::ErrorKind::TimedOut => {
                        drop(conn);
                        self.pool.lock().clear();
                        let mut conn = Conn::connect(&self.target, deadline)?;
                        f(&mut conn, deadline).map(|out| (conn, out))
                    }
                    Err(e) => Err(e),
                },
                None => {
                    let mut conn = Conn::connect(&self.target, deadline)?;
                    f(&mut conn, deadline).map(|out| (conn, out))
                }
            };
            let (conn, out) = out?;
            self.pool.lock().push(conn);
            Ok::<T, std::io::Error>(out)
        });
        r.map_err(|e| {
            RedisIoError::new_err(format!(
                "redis {}:{}: {e} (timeout {}s)",
                self.target.host,
                self.target.port,
                self.timeout.as_secs_f64()
            ))
        })
    }

    fn command(&self, py: Python<'_>, args: &[&[u8]]) -> PyResult<Reply> {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        let reply = self.with(py, move |c, d| {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            c.command(&refs, d)
        })?;
        if let Reply::Error(e) = &reply {
            return Err(RedisIoError::new_err(format!(
                "redis {}:{} answered an error: {e}",
                self.target.host, self.target.port
            )));
        }
        Ok(reply)
    }
}

fn reply_to_py<'py>(py: Python<'py>, r: &Reply) -> PyResult<Bound<'py, PyAny>> {
    Ok(match r {
        Reply::Nil => py.None().into_bound(py),
        Reply::Status(s) | Reply::Error(s) => PyString::new(py, s).into_any(),
        Reply::Int(i) => i.into_pyobject(py)?.into_any(),
        Reply::Bulk(b) => PyBytes::new(py, b).into_any(),
        Reply::Array(items) => {
            let l = PyList::empty(py);
            for i in items {
                l.append(reply_to_py(py, i)?)?;
            }
            l.into_any()
        }
    })
}

#[pymethods]
impl PyRedisConn {
    #[new]
    #[pyo3(signature = (host, port, db=0, username=None, password=None, timeout=0.05))]
    fn new(
        host: String,
        port: u16,
        db: i64,
        username: Option<String>,
        password: Option<String>,
        timeout: f64,
    ) -> PyResult<Self> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(errors::to_py(Error::spec(
                "timeout",
                "must be a positive number of seconds",
            )));
        }
        Ok(PyRedisConn {
            target: Target {
                host,
                port,
                db,
                username,
                password,
            },
            timeout: Duration::from_secs_f64(timeout),
            pool: Mutex::new(Vec::new()),
            pid: std::sync::atomic::AtomicU32::new(std::process::id()),
        })
    }

    /// One command (arguments as bytes or str), its reply as Python values.
    #[pyo3(name = "command", signature = (*args))]
    fn py_command<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut owned: Vec<Vec<u8>> = Vec::with_capacity(args.len());
        for a in &args {
            if let Ok(b) = a.cast::<PyBytes>() {
                owned.push(b.as_bytes().to_vec());
            } else {
                owned.push(a.str()?.to_str()?.as_bytes().to_vec());
            }
        }
        let refs: Vec<&[u8]> = owned.iter().map(|a| a.as_slice()).collect();
        let r = self.command(py, &refs)?;
        reply_to_py(py, &r)
    }

    /// Drop the idle connections.
    fn close(&self) {
        self.pool.lock().clear();
    }

    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout.as_secs_f64()
    }
}

/// The values of an MGET (or GET) reply.
fn values_of(r: Reply, n: usize) -> PyResult<Vec<Option<Vec<u8>>>> {
    let bad = || RedisIoError::new_err("redis: unexpected reply to GET / MGET");
    match r {
        Reply::Nil if n == 1 => Ok(vec![None]),
        Reply::Bulk(b) if n == 1 => Ok(vec![Some(b)]),
        Reply::Array(items) if items.len() == n => items
            .into_iter()
            .map(|i| match i {
                Reply::Nil => Ok(None),
                Reply::Bulk(b) => Ok(Some(b)),
                _ => Err(bad()),
            })
            .collect(),
        Reply::Error(e) => Err(RedisIoError::new_err(format!(
            "redis answered an error: {e}"
        ))),
        _ => Err(bad()),
    }
}

impl PyRemoteReader {
    fn info_key(&self) -> Vec<u8> {
        format!("{}:info", self.ns).into_bytes()
    }

    /// The stored values of `names`, one round trip (with the info record while the writers'
    /// key kind is unknown, which is then learned).
    fn fetch(
        &self,
        py: Python<'_>,
        conn: &PyRedisConn,
        names: Vec<Vec<u8>>,
    ) -> PyResult<Vec<Option<Vec<u8>>>> {
        let with_info = self.kind.load(Ordering::Acquire) == 0;
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(names.len() + 2);
        if with_info || names.len() != 1 {
            args.push(b"MGET".to_vec());
        } else {
            args.push(b"GET".to_vec());
        }
        if with_info {
            args.push(self.info_key());
        }
        let n = names.len() + with_info as usize;
        args.extend(names);
        let reply = conn.with(py, move |c, d| {
            let mut out = Vec::new();
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            resp::pack(&mut out, &refs);
            c.send(&out, d)?;
            c.read(d)
        })?;
        let mut values = values_of(reply, n)?;
        if with_info {
            let info = values.remove(0);
            if let Some(info) = info {
                self.learn(&info)?;
            }
        }
        Ok(values)
    }

    fn learn(&self, info: &[u8]) -> PyResult<()> {
        let bad = || {
            errors::to_py(Error::KeyState {
                key: format!("{}:info", self.ns),
                message: "not an rtml info record".into(),
            })
        };
        let v: serde_json::Value = serde_json::from_slice(info).map_err(|_| bad())?;
        let kind = match (v.get("key_kind"), v.get("key_is_int")) {
            (Some(serde_json::Value::Number(n)), _) => n.as_u64().ok_or_else(bad)?,
            (Some(serde_json::Value::Null) | None, Some(serde_json::Value::Bool(true))) => {
                crate::key::KIND_INT
            }
            (Some(serde_json::Value::Null) | None, Some(serde_json::Value::Bool(false))) => {
                crate::key::KIND_STR
            }
            (Some(serde_json::Value::Null) | None, Some(serde_json::Value::Null) | None) => 0,
            _ => return Err(bad()),
        };
        let zone = match v.get("zone").and_then(|z| z.as_str()) {
            Some("naive") => ZONE_NAIVE,
            Some("aware") => ZONE_AWARE,
            _ => ZONE_UNKNOWN,
        };
        self.kind.store(kind, Ordering::Release);
        self.zone.store(zone, Ordering::Release);
        Ok(())
    }
}

/// Publish `engine`'s changed keys (every key with `all`) through the Rust client: a key whose
/// stored value the writer knows gets `APPEND name <delta segment>` (then `PEXPIREAT name at`
/// with a ttl), the others `SET name value [PXAT at]` (or `DEL` when already expired),
/// pipelined `batch` keys per round trip, the last batch with the meta record
/// (`HSET <ns>:meta <field> <json>`) and the info record: one round trip for a publish of at
/// most `batch` keys. An `APPEND` answering another length than the writer expects (the value
/// expired or was deleted meanwhile) marks the key to be written whole at the next publish.
/// With `check_meta` (the partition published before), an `HSET` that creates the meta field
/// means Redis lost it (restarted empty, flushed): `meta_lost`, and the caller publishes every
/// key next time. The values are encoded under the engine's ingest lock; the network I/O
/// happens after it is released, without the GIL. `deltas=False` writes every value whole.
/// Returns `(values, bytes, meta_lost, deltas, rewrites)` (`rewrites`: keys whose append found
/// another length). Raises `RedisIoError`.
#[pyfunction]
#[pyo3(signature = (conn, engine, ns, spec_id, field, position_json, now_ms, ttl_ns=None, all=false, check_meta=false, batch=2000, deltas=true))]
#[allow(clippy::too_many_arguments)]
pub fn publish_redis(
    py: Python<'_>,
    conn: &Bound<'_, PyRedisConn>,
    engine: &Bound<'_, PyEngine>,
    ns: &str,
    spec_id: u64,
    field: &str,
    position_json: &str,
    now_ms: i64,
    ttl_ns: Option<i64>,
    all: bool,
    check_meta: bool,
    batch: usize,
    deltas: bool,
) -> PyResult<(usize, usize, bool, usize, usize)> {
    let e = engine.get();
    let conn = conn.get();
    let position: serde_json::Value = serde_json::from_str(position_json)
        .map_err(|err| errors::to_py(Error::spec("position", err.to_string())))?;
    entry(Some(&e.poison), || {
        let meta_key = format!("{ns}:meta");
        let zone = e.zone.load(Ordering::Acquire);
        let inner = &e.inner;
        let key_kind = inner.key_kind();
        let key_is_int = key_kind.map(|k| k == crate::key::KIND_INT);
        let batch = batch.max(1);
        // encode (ingest lock held, GIL released): the commands, where each batch ends, and
        // the length each APPEND must answer
        let (published, buf, cuts, appends) = detached(py, || {
            let mut buf: Vec<u8> = Vec::new();
            let mut cuts: Vec<(usize, usize)> = Vec::new(); // (end offset, commands)
            let mut appends: Vec<Append> = Vec::new();
            let (mut n, mut cmds) = (0usize, 0usize);
            let mut digits = [0u8; 20];
            let p = inner.publish_changed(all, deltas, spec_id, zone, |k, st, v| {
                let name = keystate::store_key(ns, k.as_ref());
                let at = ttl_ns.map(|ttl| {
                    let left = st
                        .last_ts
                        .saturating_add(ttl)
                        .saturating_sub(keystate::watermark_of(v));
                    now_ms.saturating_add(crate::time::floor_div(left, 1_000_000))
                });
                let kept = match (v, at) {
                    (_, Some(at)) if at <= now_ms => {
                        resp::pack(&mut buf, &[b"DEL", &name]);
                        cmds += 1;
                        false
                    }
                    (keystate::Value::Full(v), None) => {
                        resp::pack(&mut buf, &[b"SET", &name, v]);
                        cmds += 1;
                        true
                    }
                    (keystate::Value::Full(v), Some(at)) => {
                        let at = resp::int_bytes(&mut digits, at);
                        resp::pack(&mut buf, &[b"SET", &name, v, b"PXAT", at]);
                        cmds += 1;
                        true
                    }
                    (keystate::Value::Delta { bytes, len }, at) => {
                        resp::pack(&mut buf, &[b"APPEND", &name, bytes]);
                        appends.push(Append {
                            command: cmds,
                            len,
                            key: k.clone(),
                        });
                        cmds += 1;
                        if let Some(at) = at {
                            let at = resp::int_bytes(&mut digits, at);
                            resp::pack(&mut buf, &[b"PEXPIREAT", &name, at]);
                            cmds += 1;
                        }
                        true
                    }
                };
                n += 1;
                if n % batch == 0 {
                    let done: usize = cuts.iter().map(|c| c.1).sum();
                    cuts.push((buf.len(), cmds - done));
                }
                kept
            })?;
            let done: usize = cuts.iter().map(|c| c.1).sum();
            if cmds > done {
                cuts.push((buf.len(), cmds - done));
            }
            Ok((p, buf, cuts, appends))
        })?;
        let record = serde_json::json!({
            "watermark": published.watermark,
            "settle_point": published.settle_point,
            "keys": published.keys,
            "key_is_int": key_is_int,
            "key_kind": key_kind,
            "position": position,
            "published_at_ms": now_ms,
            "keystate_version": keystate::KEYSTATE_VERSION,
        })
        .to_string();
        let zone_name = match zone {
            ZONE_NAIVE => serde_json::Value::from("naive"),
            ZONE_AWARE => serde_json::Value::from("aware"),
            _ => serde_json::Value::Null,
        };
        let info =
            serde_json::json!({"key_is_int": key_is_int, "key_kind": key_kind, "zone": zone_name})
                .to_string();
        // the meta and info records go with the last batch
        let (mut buf, mut cuts) = (buf, cuts);
        let hset_at: usize = cuts.iter().map(|c| c.1).sum();
        resp::pack(
            &mut buf,
            &[
                b"HSET",
                meta_key.as_bytes(),
                field.as_bytes(),
                record.as_bytes(),
            ],
        );
        resp::pack(
            &mut buf,
            &[b"SET", format!("{ns}:info").as_bytes(), info.as_bytes()],
        );
        match cuts.last_mut() {
            Some(last) => *last = (buf.len(), last.1 + 2),
            None => cuts.push((buf.len(), 2)),
        }
        // send (GIL released): each batch, then its replies; the first error reply fails it;
        // an APPEND answering another length than expected: that key is rewritten next time
        let (failed, stale, created) = conn.with(py, move |c, d| {
            let mut start = 0;
            let mut first_error: Option<String> = None;
            let mut stale: Vec<Key> = Vec::new();
            let mut created = false;
            let mut next = appends.iter().peekable();
            let mut command = 0usize;
            for &(end, n) in &cuts {
                c.send(buf.get(start..end).unwrap_or_default(), d)?;
                start = end;
                for _ in 0..n {
                    let reply = c.read(d)?;
                    if let Some(a) = next.next_if(|a| a.command == command) {
                        if reply != Reply::Int(a.len as i64) {
                            stale.push(a.key.clone());
                        }
                    }
                    if command == hset_at {
                        created = reply == Reply::Int(1);
                    }
                    if let Reply::Error(m) = reply {
                        first_error.get_or_insert(m);
                    }
                    command += 1;
                }
            }
            Ok((first_error, stale, created))
        })?;
        if let Some(m) = failed {
            return Err(RedisIoError::new_err(format!(
                "redis answered an error: {m}"
            )));
        }
        let rewrites = stale.len();
        if rewrites > 0 {
            py.detach(|| inner.mark_full(&stale));
        }
        let meta_lost = check_meta && created;
        Ok((
            published.values,
            published.bytes,
            meta_lost,
            published.deltas,
            rewrites,
        ))
    })
}
