//! The pyo3 skin: the only place that knows about Python. No engine logic here.

mod convert;
mod decode;
mod engine;
mod errors;
mod transforms;

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_buffer::{NullBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use pyo3::prelude::*;
use pyo3_arrow::{PyRecordBatch, PyTable};

use crate::input::{read_events, read_spine};
use crate::offline::{backfill, FeatureColumn};
use crate::plan::Plan;
use crate::spec::Spec;
use errors::IntoPy;

/// A validated feature-set document (the engine's side of `rtml.FeatureSet`).
#[pyclass(frozen, name = "Spec", module = "rtml._core")]
pub struct PySpec {
    pub(crate) plan: Arc<Plan>,
}

fn feature_columns_to_batch(plan: &Plan, cols: Vec<FeatureColumn>) -> PyResult<RecordBatch> {
    let mut fields = Vec::with_capacity(cols.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(cols.len());
    for (f, col) in plan.spec.features.iter().zip(cols) {
        match col {
            FeatureColumn::Int(v) => {
                fields.push(Field::new(&f.name, DataType::Int64, false));
                arrays.push(Arc::new(Int64Array::new(ScalarBuffer::from(v), None)));
            }
            FeatureColumn::Float(v) => {
                let nulls = NullBuffer::from_iter(v.iter().map(|x| !x.is_nan()));
                let nulls = (nulls.null_count() > 0).then_some(nulls);
                fields.push(Field::new(&f.name, DataType::Float64, true));
                arrays.push(Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls)));
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let n = arrays.first().map(|a| a.len()).unwrap_or(0);
    RecordBatch::try_new_with_options(
        schema,
        arrays,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(n)),
    )
    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
}

#[pymethods]
impl PySpec {
    /// Parse and validate a feature-set JSON document.
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<PySpec> {
        let spec = Spec::from_json(text).py_err()?;
        Ok(PySpec {
            plan: Arc::new(Plan::new(spec)),
        })
    }

    /// The canonical JSON document.
    fn to_json(&self) -> String {
        self.plan.spec.to_json()
    }

    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.plan.spec.feature_names()
    }

    /// "int64" or "float64" per feature.
    #[getter]
    fn feature_dtypes(&self) -> Vec<&'static str> {
        self.plan
            .outputs
            .iter()
            .map(|o| if o.integer { "int64" } else { "float64" })
            .collect()
    }

    #[getter]
    fn entity(&self) -> String {
        self.plan.spec.entity.clone()
    }

    #[getter]
    fn timestamp(&self) -> String {
        self.plan.spec.timestamp.clone()
    }

    #[getter]
    fn timestamp_unit(&self) -> Option<String> {
        self.plan.spec.timestamp_unit.clone()
    }

    /// Value columns the features read, and whether each must be numeric.
    #[getter]
    fn value_columns(&self) -> Vec<(String, bool)> {
        self.plan
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.kind == crate::plan::ColKind::Numeric))
            .collect()
    }

    /// Compute features for every spine row. `events` and `spine` provide
    /// `__arrow_c_stream__`; returns a pyarrow.RecordBatch of feature columns in spine order.
    /// `progress(done, total)` is called between chunks; Ctrl-C stops the work.
    #[pyo3(signature = (events, spine, key, time, progress=None))]
    fn backfill<'py>(
        &self,
        py: Python<'py>,
        events: PyTable,
        spine: PyTable,
        key: &str,
        time: &str,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (ev_batches, _) = events.into_inner();
        let (sp_batches, _) = spine.into_inner();
        let plan = Arc::clone(&self.plan);
        let progress = progress.map(|p| p.unbind());
        let cols = py.detach(|| {
            let events = read_events(&plan, &ev_batches)?;
            let spine = read_spine(&plan, &sp_batches, key, time)?;
            let mut failed: Option<PyErr> = None;
            let mut tick = |done: usize, total: usize| -> bool {
                Python::attach(|py| {
                    if let Err(e) = py.check_signals() {
                        failed = Some(e);
                        return false;
                    }
                    if let Some(p) = &progress {
                        if let Err(e) = p.call1(py, (done, total)) {
                            failed = Some(e);
                            return false;
                        }
                    }
                    true
                })
            };
            let result = backfill(&plan, &events, &spine, &mut tick);
            Ok::<_, crate::Error>((result, failed))
        });
        let (result, failed) = cols.py_err()?;
        if let Some(e) = failed {
            return Err(e);
        }
        let batch = feature_columns_to_batch(&self.plan, result.py_err()?)?;
        PyRecordBatch::new(batch).into_pyarrow(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "Spec(entity={:?}, features={:?})",
            self.plan.spec.entity,
            self.plan.spec.feature_names()
        )
    }
}

/// Whether this extension was built without optimizations.
#[pyfunction]
fn debug_build() -> bool {
    cfg!(debug_assertions)
}

/// Threads of rtml's parallel pool in this process (`RTML_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else the CPU count); built on first use, rebuilt after a fork.
#[pyfunction]
fn num_threads(py: Python<'_>) -> usize {
    py.detach(crate::pool::num_threads)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySpec>()?;
    m.add_class::<engine::OnlineEngine>()?;
    m.add_class::<transforms::PyTransforms>()?;
    m.add_class::<decode::PyJsonDecoder>()?;
    m.add_function(wrap_pyfunction!(debug_build, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SNAPSHOT_VERSION", crate::snapshot::SNAPSHOT_VERSION)?;
    m.add("SPEC_VERSION", crate::spec::VERSION)?;
    Ok(())
}
