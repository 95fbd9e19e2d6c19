//! `rtml._core.Transforms`: the fitted-transform pipeline behind a lock (fit mutates it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::{Buffer, ScalarBuffer};
use numpy::ndarray::{Array2, ShapeBuilder};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDate, PyDict, PyFloat, PyInt, PyString};
use pyo3_arrow::{PyRecordBatch, PyTable};

use super::arrow::{self, Column};
use super::convert::{self, Zone};
use super::errors::{detached, entry, IntoPy};
use crate::error::Error;
use crate::plan::Plan;
use crate::transform::{Dense, Layout, RowValue, Transforms};
use smallvec::SmallVec;

#[pyclass(frozen, name = "Transforms", module = "rtml._core")]
pub struct PyTransforms {
    pub(crate) inner: RwLock<Transforms>,
    /// Bumped, under `inner`'s write lock, whenever `inner` is replaced.
    generation: AtomicU64,
    /// Where each row input comes from for the online engine last seen (see [`RowSlots`]).
    slots: RwLock<Option<Arc<RowSlots>>>,
    /// The clock (naive or tz-aware) of each time column of the last fit table: a later table
    /// or request row may not give that column on the other clock. Not part of the JSON
    /// document (a loaded pipeline learns nothing until it is fit again).
    fit_zones: RwLock<Vec<(String, Zone)>>,
}

impl PyTransforms {
    fn new(t: Transforms) -> PyTransforms {
        PyTransforms {
            inner: RwLock::new(t),
            generation: AtomicU64::new(0),
            slots: RwLock::new(None),
            fit_zones: RwLock::new(Vec::new()),
        }
    }

    /// Remember the clock of the fit table's time columns.
    fn note_fit_zones(&self, schema: &arrow_schema::Schema) {
        *self.fit_zones.write() = schema
            .fields()
            .iter()
            .filter_map(|f| match Zone::of_arrow(f.data_type()) {
                Some(z @ (Zone::Naive | Zone::Aware)) => Some((f.name().clone(), z)),
                _ => None,
            })
            .collect();
    }

    /// Refuse a time of column `name` on the other clock than the fit table's.
    pub(crate) fn check_zone(&self, name: &str, z: Zone) -> PyResult<()> {
        let zones = self.fit_zones.read();
        if let Some((_, fit)) = zones.iter().find(|(n, _)| n == name) {
            if z.clash(*fit) {
                let against = format!("the transforms were fit on {}", fit.describe());
                return Err(super::errors::schema_error(
                    name,
                    convert::zone_clash_message(z, &against),
                ));
            }
        }
        Ok(())
    }

    /// [`Self::check_zone`] for every time column of a table.
    fn check_table_zones(&self, schema: &arrow_schema::Schema) -> PyResult<()> {
        for f in schema.fields() {
            if let Some(z) = Zone::of_arrow(f.data_type()) {
                self.check_zone(f.name(), z)?;
            }
        }
        Ok(())
    }

    fn replace(&self, t: Transforms) {
        let mut w = self.inner.write();
        *w = t;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The row-input sources for the engine plan `plan` (cached for one plan at a time).
    /// `t` is `inner` read-locked, so the generation cannot move meanwhile.
    fn slots_for(&self, py: Python<'_>, t: &Transforms, plan: &Arc<Plan>) -> Arc<RowSlots> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(c) = &*self.slots.read() {
            if c.generation == generation && Arc::ptr_eq(&c.plan, plan) {
                return Arc::clone(c);
            }
        }
        let slots: Vec<Slot> = t
            .row_inputs()
            .iter()
            .map(
                |name| match plan.spec.features.iter().position(|f| &f.name == name) {
                    Some(j) => Slot::Feature(j),
                    None => Slot::Field(PyString::intern(py, name).unbind()),
                },
            )
            .collect();
        let mut mask = vec![false; plan.n_features()];
        for slot in &slots {
            if let Slot::Feature(j) = slot {
                if let Some(m) = mask.get_mut(*j) {
                    *m = true;
                }
            }
        }
        let c = Arc::new(RowSlots {
            generation,
            plan: Arc::clone(plan),
            slots,
            mask,
        });
        *self.slots.write() = Some(Arc::clone(&c));
        c
    }
}

/// Where each row input (in `Transforms::row_inputs` order) of an online engine's `vector`
/// comes from: a window feature of the engine's plan (which takes precedence, as a preset
/// does), or the request-row dict (looked up by an interned name).
pub(crate) struct RowSlots {
    generation: u64,
    /// Held so that the pointer compared in `slots_for` cannot be reused by another plan.
    plan: Arc<Plan>,
    slots: Vec<Slot>,
    /// Which of the plan's features the slots read.
    mask: Vec<bool>,
}

impl RowSlots {
    pub(crate) fn mask(&self) -> &[bool] {
        &self.mask
    }
}

/// The row slots of `tf` for an engine's `plan` (cached; see `PyTransforms::slots_for`).
pub(crate) fn row_slots(py: Python<'_>, tf: &PyTransforms, plan: &Arc<Plan>) -> Arc<RowSlots> {
    let t = tf.inner.read();
    tf.slots_for(py, &t, plan)
}

enum Slot {
    Feature(usize),
    Field(Py<PyString>),
}

fn one_batch(table: PyTable) -> PyResult<RecordBatch> {
    // (every batch of a table has the table's schema)
    let (batches, schema) = table.into_inner();
    if batches.len() == 1 {
        return Ok(batches
            .into_iter()
            .next()
            .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())));
    }
    arrow_select::concat::concat_batches(&schema, &batches)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

/// The record batches of a table, without concatenating them (an empty table: one empty
/// batch, so that missing columns are still reported).
fn batches(table: PyTable) -> Vec<RecordBatch> {
    let (batches, schema) = table.into_inner();
    if batches.is_empty() {
        return vec![RecordBatch::new_empty(schema)];
    }
    batches
}

/// A column-major dense result as a record batch: every column a zero-copy slice of the one
/// buffer; a validity bitmap only for the columns that hold a null (NaN).
fn dense_to_batch(names: &[String], d: Dense) -> PyResult<RecordBatch> {
    debug_assert_eq!(d.layout, Layout::ColumnMajor);
    let rows = d.rows;
    let buffer = Buffer::from_vec(d.values);
    let cols = names.iter().enumerate().take(d.cols).map(|(j, n)| {
        let values = ScalarBuffer::<f64>::new(buffer.clone(), j * rows, rows);
        let may_hold_nan = d.has_null.get(j).copied().unwrap_or(true);
        (n, Column::Float(values, may_hold_nan))
    });
    arrow::batch(cols, rows)
}

/// Columns of the reference driver as a record batch.
fn to_batch(names: &[String], cols: Vec<Vec<f64>>) -> PyResult<RecordBatch> {
    let rows = cols.first().map(|c| c.len()).unwrap_or(0);
    arrow::batch(
        names
            .iter()
            .zip(cols)
            .map(|(n, c)| (n, Column::Float(ScalarBuffer::from(c), true))),
        rows,
    )
}

/// One input of a request row: a Python object, or a preset (value, is integer).
pub(crate) type RowInput<'py> = Result<Bound<'py, PyAny>, (f64, bool)>;

/// Python objects of one request row, in `Transforms::row_inputs` order. `preset` values
/// (window features from the online engine) take precedence over `row`.
pub(crate) fn row_objects<'py>(
    t: &Transforms,
    row: Option<&Bound<'py, PyAny>>,
    preset: &[(&str, f64, bool)],
) -> PyResult<Vec<RowInput<'py>>> {
    let d = match row {
        Some(r) => Some(
            r.cast::<PyDict>()
                .map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err("expected a dict (one request row)")
                })?
                .clone(),
        ),
        None => None,
    };
    let mut out = Vec::with_capacity(t.row_inputs().len());
    for name in t.row_inputs() {
        if let Some(&(_, v, integer)) = preset.iter().find(|(n, _, _)| n == name) {
            out.push(Err((v, integer)));
            continue;
        }
        let found = match &d {
            Some(d) => d.get_item(name)?,
            None => None,
        };
        match found {
            Some(v) => out.push(Ok(v)),
            None => {
                let step = t.step_reading(name).unwrap_or_default();
                return Err(super::errors::to_py(Error::schema(
                    name,
                    format!("missing from the request row (needed by {step})"),
                )));
            }
        }
    }
    Ok(out)
}

/// Convert the objects to engine row values (borrowing strings from them).
/// `check` refuses a time given on the wrong clock (naive vs tz-aware) for its input.
pub(crate) fn row_values<'a, 'py>(
    t: &Transforms,
    objs: &'a [Result<Bound<'py, PyAny>, (f64, bool)>],
    check: &dyn Fn(&str, Zone) -> PyResult<()>,
) -> PyResult<SmallVec<[RowValue<'a>; 16]>> {
    let mut out = SmallVec::with_capacity(objs.len());
    for (o, name) in objs.iter().zip(t.row_inputs()) {
        let v = match o {
            Err((v, integer)) => {
                if *integer {
                    RowValue::Int(*v as i64)
                } else if v.is_nan() {
                    RowValue::Null
                } else {
                    RowValue::Num(*v)
                }
            }
            Ok(v) => {
                // exact floats and strs first (neither is None, a bool or an int)
                if v.is_exact_instance_of::<PyFloat>() {
                    RowValue::Num(v.cast::<PyFloat>()?.value())
                } else if v.is_exact_instance_of::<PyString>() {
                    RowValue::Str(v.cast::<PyString>()?.to_str()?)
                } else if v.is_none() {
                    RowValue::Null
                } else if v.is_instance_of::<PyBool>() {
                    RowValue::Bool(v.is_truthy()?)
                } else if v.is_instance_of::<PyInt>() {
                    match v.extract::<i64>() {
                        Ok(i) => RowValue::Int(i),
                        Err(_) => RowValue::Num(v.extract::<f64>()?),
                    }
                } else if let Ok(f) = v.cast::<PyFloat>() {
                    RowValue::Num(f.value())
                } else if let Ok(s) = v.cast::<PyString>() {
                    RowValue::Str(s.to_str()?)
                } else if v.is_instance_of::<PyDate>() || v.get_type().name()? == "datetime64" {
                    let (t, z) = convert::instant_zoned(v, None, name).py_err()?;
                    check(name, z)?;
                    RowValue::Time(t)
                } else if let Ok(f) = v.extract::<f64>() {
                    RowValue::Num(f)
                } else {
                    return Err(super::errors::to_py(Error::schema(
                        name,
                        format!("unsupported value of type {}", v.get_type().name()?),
                    )));
                }
            }
        };
        out.push(v);
    }
    Ok(out)
}

/// `OnlineEngine.vector` after the window read: the engine's features `feats` (in `plan`
/// order; `texts`: the strings of its string features, in their order: each enters as a str,
/// or None) and the request row `fields` through the one-row driver, into a new numpy vector.
/// Same checks, order and messages as [`apply_one`] with the features as presets.
#[allow(clippy::too_many_arguments)]
pub(crate) fn vector_with_features<'py>(
    py: Python<'py>,
    tf: &PyTransforms,
    plan: &Arc<Plan>,
    fields: Option<&Bound<'py, PyAny>>,
    feats: &[f64],
    texts: &[Option<String>],
    expect: Option<&Arc<RowSlots>>,
    clock: &dyn Fn(&str, Zone) -> PyResult<()>,
) -> PyResult<Option<Bound<'py, PyArray1<f64>>>> {
    let t = tf.inner.read();
    let d = match fields {
        Some(r) => Some(r.cast::<PyDict>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err("expected a dict (one request row)")
        })?),
        None => None,
    };
    let slots = tf.slots_for(py, &t, plan);
    if expect.is_some_and(|e| !Arc::ptr_eq(e, &slots)) {
        // `feats` holds only the features of other slots: the caller reads all and retries
        return Ok(None);
    }
    if let Some(d) = d {
        // A request field named like a window feature would be silently ignored (the engine's
        // value is what the model was trained on): refuse it. Only a dict holding more keys than
        // the request fields the Transforms reads can hold one, so the common call skips this.
        let n_fields = slots
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Field(_)))
            .count();
        if d.len() > n_fields {
            for (slot, name) in slots.slots.iter().zip(t.row_inputs()) {
                if matches!(slot, Slot::Feature(_)) && d.contains(name)? {
                    return Err(super::errors::to_py(Error::schema(
                        name,
                        "is a window feature the engine computes; the request row must not \
                         carry it too (drop it from the fields, or rename the feature)",
                    )));
                }
            }
        }
    }
    let mut objs: SmallVec<[RowInput<'py>; 16]> = SmallVec::with_capacity(slots.slots.len());
    for (slot, name) in slots.slots.iter().zip(t.row_inputs()) {
        let found = match slot {
            Slot::Feature(j) => {
                // `j` indexes `plan`'s features, which `feats` holds (checked, never fails)
                let (Some(&v), Some(o)) = (feats.get(*j), plan.outputs.get(*j)) else {
                    return Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "vector: engine features and plan disagree",
                    ));
                };
                if o.text {
                    // a string feature enters as a str (or None), as a request field would
                    let k = plan.outputs.iter().take(*j).filter(|o| o.text).count();
                    match texts.get(k) {
                        Some(Some(s)) => objs.push(Ok(PyString::new(py, s).into_any())),
                        _ => objs.push(Ok(py.None().into_bound(py))),
                    }
                    continue;
                }
                objs.push(Err((v, o.integer)));
                continue;
            }
            Slot::Field(key) => match d {
                Some(d) => d.get_item(key.bind(py))?,
                None => None,
            },
        };
        match found {
            Some(v) => objs.push(Ok(v)),
            None => {
                let step = t.step_reading(name).unwrap_or_default();
                return Err(super::errors::to_py(Error::schema(
                    name,
                    format!("missing from the request row (needed by {step})"),
                )));
            }
        }
    }
    let check = |name: &str, z: Zone| {
        clock(name, z)?;
        tf.check_zone(name, z)
    };
    let vals = row_values(&t, &objs, &check)?;
    let out = PyArray1::<f64>::zeros(py, t.feature_names_len(), false);
    // SAFETY: a fresh array (contiguous), not yet visible to Python or any other borrow.
    let slice = unsafe { out.as_slice_mut() }
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    t.apply_row(&vals, slice).py_err()?;
    Ok(Some(out))
}

/// Run the one-row driver on a request row.
pub(crate) fn apply_one(
    tf: &PyTransforms,
    t: &Transforms,
    row: Option<&Bound<'_, PyAny>>,
    preset: &[(&str, f64, bool)],
) -> PyResult<Vec<f64>> {
    let objs = row_objects(t, row, preset)?;
    let vals = row_values(t, &objs, &|name, z| tf.check_zone(name, z))?;
    let mut out = vec![0f64; t.feature_names_len()];
    t.apply_row(&vals, &mut out).py_err()?;
    Ok(out)
}

#[pymethods]
impl PyTransforms {
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<PyTransforms> {
        entry(None, || {
            Ok(PyTransforms::new(Transforms::from_json(text).py_err()?))
        })
    }

    fn to_json(&self) -> PyResult<String> {
        entry(None, || Ok(self.inner.read().to_json()))
    }

    #[getter]
    fn feature_names(&self) -> PyResult<Vec<String>> {
        entry(None, || Ok(self.inner.read().feature_names()))
    }

    #[getter]
    fn required_inputs(&self) -> PyResult<Vec<String>> {
        entry(None, || Ok(self.inner.read().required_inputs()))
    }

    #[getter]
    fn is_fitted(&self) -> bool {
        self.inner.read().is_fitted()
    }

    /// Fit unfitted steps on a table (in parallel, GIL released). On error nothing changes.
    fn fit(&self, py: Python<'_>, table: PyTable) -> PyResult<()> {
        entry(None, || {
            let batch = one_batch(table)?;
            let schema = batch.schema();
            let current = self.inner.read().clone();
            let fitted = detached(py, move || {
                let mut t = current;
                t.fit(&batch).map(|_| t)
            })?;
            self.replace(fitted);
            self.note_fit_zones(&schema);
            Ok(())
        })
    }

    /// Fit, then return the transformed table with out-of-fold target encodings.
    fn fit_transform<'py>(&self, py: Python<'py>, table: PyTable) -> PyResult<Bound<'py, PyAny>> {
        entry(None, || {
            let batch = one_batch(table)?;
            let schema = batch.schema();
            let current = self.inner.read().clone();
            let (t, batch) = detached(py, move || -> crate::error::Result<_> {
                let mut t = current;
                if t.has_target_encoding() {
                    // out-of-fold encodings: the reference driver, fitting as it goes
                    let cols = t.fit_transform(&batch)?;
                    Ok((t, Err(cols)))
                } else {
                    // without target encodings fit_transform is fit, then transform
                    t.fit(&batch)?;
                    let d = t.transform_dense(&[batch], Layout::ColumnMajor)?;
                    Ok((t, Ok(d)))
                }
            })?;
            let names = t.feature_names();
            self.replace(t);
            self.note_fit_zones(&schema);
            let batch = match batch {
                Ok(d) => dense_to_batch(&names, d)?,
                Err(cols) => to_batch(&names, cols)?,
            };
            PyRecordBatch::new(batch).into_pyarrow(py)
        })
    }

    /// The table driver: a record batch of float64 columns (GIL released, parallel).
    fn transform<'py>(&self, py: Python<'py>, table: PyTable) -> PyResult<Bound<'py, PyAny>> {
        entry(None, || {
            let batches = batches(table);
            if let Some(b) = batches.first() {
                self.check_table_zones(&b.schema())?;
            }
            let t = self.inner.read().clone();
            let names = t.feature_names();
            let d = detached(py, move || t.transform_dense(&batches, Layout::ColumnMajor))?;
            PyRecordBatch::new(dense_to_batch(&names, d)?).into_pyarrow(py)
        })
    }

    /// The table driver into one 2-D float64 numpy array (rows x feature names, C order by
    /// default, "F" for column-major), NaN = null. The array owns the buffer the driver wrote.
    #[pyo3(signature = (table, order = "C"))]
    fn transform_numpy<'py>(
        &self,
        py: Python<'py>,
        table: PyTable,
        order: &str,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        entry(None, || {
            let layout = match order {
                "C" => Layout::RowMajor,
                "F" => Layout::ColumnMajor,
                other => {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "order must be 'C' or 'F', got {other:?}"
                    )))
                }
            };
            let batches = batches(table);
            if let Some(b) = batches.first() {
                self.check_table_zones(&b.schema())?;
            }
            let t = self.inner.read().clone();
            let d = detached(py, move || t.transform_dense(&batches, layout))?;
            let shape = (d.rows, d.cols);
            let a = match layout {
                Layout::RowMajor => Array2::from_shape_vec(shape, d.values),
                Layout::ColumnMajor => Array2::from_shape_vec(shape.f(), d.values),
            }
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
            Ok(a.into_pyarray(py))
        })
    }

    /// One request row -> dict of outputs (None for null).
    fn transform_one<'py>(
        &self,
        py: Python<'py>,
        row: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        entry(None, || {
            let t = self.inner.read();
            let vals = apply_one(self, &t, Some(row), &[])?;
            let out = PyDict::new(py);
            for (name, &v) in t.feature_names().iter().zip(&vals) {
                if v.is_nan() {
                    out.set_item(name, py.None())?;
                } else {
                    out.set_item(name, v)?;
                }
            }
            Ok(out)
        })
    }

    /// One request row -> float64 vector in feature_names order (NaN = null).
    fn vector<'py>(
        &self,
        py: Python<'py>,
        row: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        entry(None, || {
            let t = self.inner.read();
            Ok(PyArray1::from_vec(py, apply_one(self, &t, Some(row), &[])?))
        })
    }
}
