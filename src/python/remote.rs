//! Shared online state (docs/shared-state.md): the writer's side (`publish_changes`: every
//! changed key of an engine as a store key and a value, `online::keystate`) and the reader's
//! (`RemoteReader`: the values a store returned, decoded and evaluated with the function the
//! in-process engine's `get` runs). No network here: python/rtml/remote.py talks to Redis.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::convert::{self, PyKey, Zone};
use super::engine::{self, PyEngine, ZONE_AWARE, ZONE_NAIVE, ZONE_UNKNOWN};
use super::errors::{self, detached, entry, IntoPy};
use super::transforms::PyTransforms;
use super::PySpec;
use crate::error::Error;
use crate::input::KeyRef;
use crate::online::keystate::{self, answer};
use crate::plan::Plan;

fn zone_code(z: Zone) -> u8 {
    match z {
        Zone::Epoch => ZONE_UNKNOWN,
        Zone::Naive => ZONE_NAIVE,
        Zone::Aware => ZONE_AWARE,
    }
}

fn zone_of(code: u8) -> Option<Zone> {
    match code {
        ZONE_NAIVE => Some(Zone::Naive),
        ZONE_AWARE => Some(Zone::Aware),
        _ => None,
    }
}

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
/// `(watermark, settle_point, keys, bytes, key_is_int, [(store key, value, last event time), ...])`,
/// the watermark and settled point None before any event, `key_is_int` None before any key.
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
            let p = inner.publish_changed(all, spec_id, zone, |k, st, v| {
                items.push((keystate::store_key(ns, k.as_ref()), v.to_vec(), st.last_ts))
            })?;
            Ok((p, items))
        })?;
        let key_is_int = match (inner.check_key_kind(true), inner.check_key_kind(false)) {
            (Ok(()), Err(_)) => Some(true),
            (Err(_), Ok(())) => Some(false),
            _ => None,
        };
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
        )
            .into_pyobject(py)
    })
}

/// Decodes the values a store holds for one feature set and answers queries over them with
/// the in-process engine's code (use `rtml.RemoteEngine`, which wraps it).
#[pyclass(frozen, name = "RemoteReader", module = "rtml._core")]
pub struct PyRemoteReader {
    plan: Arc<Plan>,
    ns: String,
    spec_id: u64,
    /// The writers' key kind (0 unknown, 1 integers, 2 strings) and clock (`ZONE_*`), as the
    /// store's info record says.
    kind: AtomicU8,
    zone: AtomicU8,
    names: Vec<Py<PyString>>,
    template: Py<PyDict>,
}

impl PyRemoteReader {
    fn key_ref<'a>(&self, key: &'a Bound<'_, PyAny>) -> PyResult<KeyRef<'a>> {
        let k = convert::key_ref(key, &self.plan.spec.entity).py_err()?;
        self.check_kind(k.is_int())?;
        Ok(k)
    }

    /// The in-process engine's key-kind check, against the writers' kind.
    fn check_kind(&self, is_int: bool) -> PyResult<()> {
        let held = match self.kind.load(Ordering::Acquire) {
            1 => true,
            2 => false,
            _ => return Ok(()),
        };
        if held != is_int {
            let kind = |int: bool| if int { "integer" } else { "string" };
            return Err(errors::schema_error(
                &self.plan.spec.entity,
                format!(
                    "this engine holds {} keys, got {} keys",
                    kind(held),
                    kind(is_int)
                ),
            ));
        }
        Ok(())
    }

    fn check_zone(&self, z: Zone, held: u8, what: &str) -> PyResult<()> {
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

    fn instant(&self, at: Option<&Bound<'_, PyAny>>) -> PyResult<(i64, u8)> {
        match at {
            Some(a) if !a.is_none() => {
                let (t, z) = convert::instant_zoned(a, self.plan.spec.timestamp_unit.as_deref(), "at")
                    .py_err()?;
                self.check_zone(z, self.zone.load(Ordering::Acquire), "at")?;
                Ok((t, zone_code(z)))
            }
            _ => Ok((engine::now_ns(), ZONE_UNKNOWN)),
        }
    }

    /// Features of `key` at `t` from its stored value (None: no value) into `out`; the
    /// watermark the value was written at.
    fn evaluate(
        &self,
        key: KeyRef<'_>,
        t: i64,
        at_zone: u8,
        value: Option<&[u8]>,
        out: &mut [f64],
        mask: Option<&[bool]>,
    ) -> PyResult<Option<i64>> {
        match value {
            None => {
                answer(&self.plan, None, t, out, mask).py_err()?;
                Ok(None)
            }
            Some(bytes) => {
                let d = keystate::decode(bytes, &self.plan, self.spec_id, key).py_err()?;
                if let Some(z) = zone_of(at_zone) {
                    self.check_zone(z, d.header.zone, "at")?;
                }
                answer(&self.plan, Some(&d.state), t, out, mask).py_err()?;
                Ok(Some(d.header.watermark))
            }
        }
    }

    fn row_dict<'py>(&self, py: Python<'py>, values: &[f64]) -> PyResult<Bound<'py, PyDict>> {
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
            kind: AtomicU8::new(0),
            zone: AtomicU8::new(ZONE_UNKNOWN),
            names,
            template: template.unbind(),
        })
    }

    /// Record the writers' key kind (True: integers) and clock ("naive" / "aware" / None).
    #[pyo3(signature = (key_is_int, zone))]
    fn set_info(&self, key_is_int: Option<bool>, zone: Option<&str>) {
        let k = match key_is_int {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
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
    fn store_key<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        entry(None, || {
            let k = self.key_ref(key)?;
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
            let k = self.key_ref(key)?;
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
            let entity = &self.plan.spec.entity;
            let keys: Vec<PyKey> = keys
                .try_iter()?
                .map(|k| k.and_then(|k| convert::key(&k, entity).py_err()))
                .collect::<PyResult<_>>()?;
            for k in &keys {
                self.check_kind(k.as_ref().is_int())?;
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
            let k = self.key_ref(key)?;
            let v = bytes_of(&value)?;
            let mut out = vec![0f64; self.plan.n_features()];
            let wm = self.evaluate(k, t, zone, v, &mut out, None)?;
            Ok((self.row_dict(py, &out)?, wm))
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
                .map(|k| k.and_then(|k| convert::key(&k, entity).py_err()))
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
            let nf = self.plan.n_features();
            let mut cols = vec![Vec::with_capacity(keys.len()); nf];
            let mut row = vec![0f64; nf];
            let mut wms = Vec::with_capacity(keys.len());
            for (i, k) in keys.iter().enumerate() {
                let v = bytes_of(&values[i])?;
                wms.push(self.evaluate(k.as_ref(), times[i], zones[i], v, &mut row, None)?);
                for (c, v) in cols.iter_mut().zip(&row) {
                    c.push(*v);
                }
            }
            Ok((engine::features_table(py, &self.plan, &keys, cols)?, wms))
        })
    }

    /// `OnlineEngine.vector` over a stored value: `(vector, watermark of the value or None)`.
    #[pyo3(signature = (key, t, zone, value, transforms, fields=None))]
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
    ) -> PyResult<(Bound<'py, numpy::PyArray1<f64>>, Option<i64>)> {
        entry(None, || {
            let k = self.key_ref(key)?;
            let v = bytes_of(&value)?;
            let tf = transforms.get();
            let held = self.zone.load(Ordering::Acquire);
            let clock = |name: &str, z: Zone| self.check_zone(z, held, name);
            let slots = super::transforms::row_slots(py, tf, &self.plan);
            let mut buf = vec![0f64; self.plan.n_features()];
            let wm = self.evaluate(k, t, zone, v, &mut buf, Some(slots.mask()))?;
            let vec = match super::transforms::vector_with_features(
                py,
                tf,
                &self.plan,
                fields,
                &buf,
                Some(&slots),
                &clock,
            )? {
                Some(v) => v,
                None => {
                    // the transforms were refit meanwhile: every feature, then apply
                    self.evaluate(k, t, zone, v, &mut buf, None)?;
                    super::transforms::vector_with_features(
                        py, tf, &self.plan, fields, &buf, None, &clock,
                    )?
                    .ok_or_else(|| {
                        errors::to_py(Error::Query("vector: transforms changed while reading".into()))
                    })?
                }
            };
            Ok((vec, wm))
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
}
