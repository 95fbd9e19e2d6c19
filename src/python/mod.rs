//! The pyo3 skin: the only place that knows about Python. No engine logic here.

mod arrow;
mod convert;
mod decode;
mod engine;
mod errors;
mod learn;
mod monitor;
mod remote;
mod transforms;
mod wal;

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3_arrow::{PyRecordBatch, PyTable};

use crate::input::{read_arrival, read_events, read_spine};
use crate::offline::backfill;
use crate::online::guard::{verdicts, Verdict};
use crate::plan::Plan;
use crate::spec::Spec;
use convert::Zone;
use errors::{entry, IntoPy};

/// A validated feature-set document (the engine's side of `rtml.FeatureSet`).
#[pyclass(frozen, name = "Spec", module = "rtml._core")]
pub struct PySpec {
    pub(crate) plan: Arc<Plan>,
}

/// Refuse a spine whose time column is on another clock than the events' (naive vs tz-aware).
fn check_zones(
    events: &arrow_schema::Schema,
    spine: &arrow_schema::Schema,
    ev_time: &str,
    sp_time: &str,
) -> PyResult<()> {
    let zone = |s: &arrow_schema::Schema, c: &str| {
        s.field_with_name(c)
            .ok()
            .and_then(|f| Zone::of_arrow(f.data_type()))
    };
    if let (Some(e), Some(s)) = (zone(events, ev_time), zone(spine, sp_time)) {
        if s.clash(e) {
            let against = format!("the events' column '{ev_time}' holds {}", e.describe());
            return Err(errors::schema_error(
                sp_time,
                format!("spine: {}", convert::zone_clash_message(s, &against)),
            ));
        }
    }
    Ok(())
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

    /// "int64", "float64" or "string" (a string feature) per feature.
    #[getter]
    fn feature_dtypes(&self) -> Vec<&'static str> {
        self.plan
            .outputs
            .iter()
            .map(|o| {
                if o.text {
                    "string"
                } else if o.integer {
                    "int64"
                } else {
                    "float64"
                }
            })
            .collect()
    }

    /// The key column (a str), or the key columns of a composite key (a list of str).
    #[getter]
    fn entity<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = &self.plan.spec.entity;
        Ok(match e.single() {
            Some(one) => one.into_pyobject(py)?.into_any(),
            None => e.columns().into_pyobject(py)?.into_any(),
        })
    }

    /// The key columns, in key order (one for a single key).
    #[getter]
    fn entity_columns(&self) -> Vec<String> {
        self.plan.spec.entity.columns().to_vec()
    }

    #[getter]
    fn timestamp(&self) -> String {
        self.plan.spec.timestamp.clone()
    }

    /// The watermark guard's bound in force, ns (None: off).
    #[getter]
    fn max_ahead_ns(&self) -> Option<i64> {
        self.plan.spec.max_ahead_ns()
    }

    /// How far behind the watermark an applied event id is remembered, ns (None: no
    /// `dedupe_on`).
    #[getter]
    fn dedupe_horizon_ns(&self) -> Option<i64> {
        let spec = &self.plan.spec;
        spec.dedupe_on
            .as_ref()
            .map(|_| crate::online::guard::Rules::of(spec).horizon)
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
    /// `arrival`: an events column of integers, the arrival batch of each event (the online
    /// guard, lateness and deduplication applied as a stream in that order would).
    #[pyo3(signature = (events, spine, key, time, progress=None, arrival=None))]
    #[allow(clippy::too_many_arguments)]
    fn backfill<'py>(
        &self,
        py: Python<'py>,
        events: PyTable,
        spine: PyTable,
        key: Vec<String>,
        time: &str,
        progress: Option<Bound<'py, PyAny>>,
        arrival: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        entry(None, || {
            self.backfill_inner(py, events, spine, &key, time, progress, arrival)
        })
    }

    /// What an online engine does with each event ("applied", "late", "ahead",
    /// "duplicate") when the events arrive in the batches of the integer column `arrival`
    /// (None: one table without arrival order: only duplicates are dropped).
    #[pyo3(signature = (events, arrival=None))]
    fn verdicts(
        &self,
        py: Python<'_>,
        events: PyTable,
        arrival: Option<String>,
    ) -> PyResult<Vec<&'static str>> {
        entry(None, || {
            let (batches, _) = events.into_inner();
            let plan = Arc::clone(&self.plan);
            let out = py.detach(|| {
                let events = read_events(&plan, &batches)?;
                let arrival = match &arrival {
                    Some(c) => Some(read_arrival(&batches, c)?),
                    None => None,
                };
                let v = verdicts(&plan.spec, &events, arrival.as_deref());
                Ok::<_, crate::Error>(match v {
                    Some(v) => v.into_iter().map(verdict_name).collect(),
                    None => vec!["applied"; events.len()],
                })
            });
            out.py_err()
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Spec(entity={:?}, features={:?})",
            self.plan.spec.entity.label(),
            self.plan.spec.feature_names()
        )
    }
}

impl PySpec {
    #[allow(clippy::too_many_arguments)]
    fn backfill_inner<'py>(
        &self,
        py: Python<'py>,
        events: PyTable,
        spine: PyTable,
        key: &[String],
        time: &str,
        progress: Option<Bound<'py, PyAny>>,
        arrival: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (ev_batches, ev_schema) = events.into_inner();
        let (sp_batches, sp_schema) = spine.into_inner();
        check_zones(&ev_schema, &sp_schema, &self.plan.spec.timestamp, time)?;
        py.check_signals()?;
        let plan = Arc::clone(&self.plan);
        let progress = progress.map(|p| p.unbind());
        let cols = py.detach(|| {
            let events = read_events(&plan, &ev_batches)?;
            let arrival = match &arrival {
                Some(c) => Some(read_arrival(&ev_batches, c)?),
                None => None,
            };
            let kept = verdicts(&plan.spec, &events, arrival.as_deref()).map(|v| {
                let keep: Vec<bool> = v.iter().map(|v| *v == Verdict::Apply).collect();
                events.filtered(&keep)
            });
            let events = match &kept {
                Some(k) => k,
                None => &events,
            };
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
            let result = backfill(&plan, events, &spine, &mut tick);
            Ok::<_, crate::Error>((result, failed))
        });
        let (result, failed) = cols.py_err()?;
        if let Some(e) = failed {
            return Err(e);
        }
        let cols = result.py_err()?;
        let rows = sp_batches.iter().map(|b| b.num_rows()).sum();
        let names = self.plan.spec.features.iter().map(|f| f.name.as_str());
        let batch = arrow::batch(names.zip(cols.into_iter().map(arrow::Column::from)), rows)?;
        PyRecordBatch::new(batch).into_pyarrow(py)
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Apply => "applied",
        Verdict::Late => "late",
        Verdict::Ahead => "ahead",
        Verdict::Duplicate => "duplicate",
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

/// The composite-key encoding (`src/key.rs`) of the parts in `columns` for every row of
/// `table`: a one-column pyarrow.RecordBatch (`key`, large_string, null where a part is null).
/// The same bytes an engine of a composite entity with these columns holds as its key.
#[pyfunction]
fn encode_keys<'py>(
    py: Python<'py>,
    table: PyTable,
    columns: Vec<String>,
) -> PyResult<Bound<'py, PyAny>> {
    entry(None, || {
        let (batches, _) = table.into_inner();
        let keys = py.detach(|| {
            let mut out = arrow_array::builder::LargeStringBuilder::new();
            for b in &batches {
                for k in crate::input::encode_parts(b, &columns, "the table")? {
                    out.append_option(k);
                }
            }
            Ok::<_, crate::Error>(out.finish())
        });
        let keys: arrow_array::ArrayRef = Arc::new(keys.py_err()?);
        let schema = arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "key",
            arrow_schema::DataType::LargeUtf8,
            true,
        )]);
        let batch = arrow_array::RecordBatch::try_new(Arc::new(schema), vec![keys])
            .map_err(|e| crate::Error::schema("key", e.to_string()))
            .py_err()?;
        PyRecordBatch::new(batch).into_pyarrow(py)
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySpec>()?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<transforms::PyTransforms>()?;
    m.add_class::<decode::PyJsonDecoder>()?;
    m.add_class::<wal::PyWal>()?;
    m.add_class::<remote::PyRemoteReader>()?;
    m.add_class::<remote::PyRedisConn>()?;
    m.add_function(wrap_pyfunction!(remote::publish_redis, m)?)?;
    m.add("RedisIoError", m.py().get_type::<remote::RedisIoError>())?;
    m.add_function(wrap_pyfunction!(remote::track_changes, m)?)?;
    m.add_function(wrap_pyfunction!(remote::changed_keys, m)?)?;
    m.add_function(wrap_pyfunction!(remote::publish_changes, m)?)?;
    m.add(
        "KEYSTATE_VERSION",
        crate::online::keystate::KEYSTATE_VERSION,
    )?;
    learn::register(m)?;
    monitor::register(m)?;
    m.add_function(wrap_pyfunction!(debug_build, m)?)?;
    m.add_function(wrap_pyfunction!(errors::_init_exceptions, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(encode_keys, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SNAPSHOT_VERSION", crate::snapshot::SNAPSHOT_VERSION)?;
    m.add("SPEC_VERSION", crate::spec::VERSION)?;
    Ok(())
}
