//! `rtml._core.Reference`, `rtml._core.Monitor`, `rtml._core.monitor_report`: the pyo3 skin of
//! `crate::monitor` (issue 16). `python/rtml/monitor.py` wraps them: it turns any table into
//! Arrow, durations into nanoseconds and the report into a table, and calls the triggers'
//! callbacks; this layer only converts and calls.

use std::collections::HashMap;

use numpy::IntoPyArray;
use parking_lot::{Mutex, MutexGuard};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3_arrow::PyTable;

use super::errors::{detached, entry, IntoPy, Poison};
use crate::error::Error;
use crate::monitor::metrics::Metric;
use crate::monitor::read::{codes, fit, times};
use crate::monitor::trigger::TriggerCounters;
use crate::monitor::{
    report, ColumnRef, Fired, Metrics, Monitor, PredictionRef, Reference, Transition, TriggerSpec,
    PREDICTION,
};

/// Lock without waiting while holding the GIL.
fn lock<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        if let Some(g) = m.try_lock() {
            return g;
        }
        py.detach(|| drop(m.lock()));
    }
}

fn metrics_dict<'py>(py: Python<'py>, m: &Metrics) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("rows", m.rows)?;
    d.set_item("non_null", m.non_null)?;
    for k in Metric::ALL {
        d.set_item(k.name(), m.get(k))?;
    }
    Ok(d)
}

fn fired_list<'py>(py: Python<'py>, fired: Vec<Fired>) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for f in fired {
        let kind = match f.transition {
            Transition::Enter => "enter",
            Transition::Leave => "leave",
        };
        out.append((f.trigger, kind, f.window_end, f.value))?;
    }
    Ok(out)
}

fn counters_dict<'py>(py: Python<'py>, c: &TriggerCounters) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("evaluated", c.evaluated)?;
    d.set_item("skipped", c.skipped)?;
    d.set_item("entered", c.entered)?;
    d.set_item("left", c.left)?;
    d.set_item("suppressed", c.suppressed)?;
    Ok(d)
}

/// The prediction's record across the boundary: (source column, (lo, hi) of equal-width bins).
type PredictionArg = (Option<String>, Option<(f64, f64)>);

/// A fitted reference distribution (use `rtml.monitor.Reference`).
#[pyclass(frozen, name = "Reference", module = "rtml._core")]
pub struct PyReference {
    inner: Reference,
}

#[pymethods]
impl PyReference {
    /// Fit on `table` for `columns` (numeric: quantile bins; string: categories, or the given
    /// encoder `vocabularies` per column). `prediction=(source, range)`: the table's column
    /// "prediction" is the model's prediction (read from `source`; equal-width bins over
    /// `range` when given).
    #[staticmethod]
    #[pyo3(signature = (table, columns, bins=20, max_categories=1000, feature_set=None, vocabularies=None, prediction=None))]
    #[allow(clippy::too_many_arguments)]
    fn fit(
        py: Python<'_>,
        table: PyTable,
        columns: Vec<String>,
        bins: usize,
        max_categories: usize,
        feature_set: Option<String>,
        vocabularies: Option<HashMap<String, Vec<String>>>,
        prediction: Option<PredictionArg>,
    ) -> PyResult<PyReference> {
        entry(None, || {
            let (batches, _) = table.into_inner();
            let vocabularies = vocabularies.unwrap_or_default();
            let prediction = prediction.map(|(source, range)| PredictionRef {
                source,
                range: range.map(|(lo, hi)| [lo, hi]),
            });
            let inner = detached(py, || {
                fit(
                    &batches,
                    &columns,
                    bins,
                    max_categories,
                    feature_set,
                    &vocabularies,
                    prediction,
                )
            })?;
            Ok(PyReference { inner })
        })
    }

    #[staticmethod]
    fn from_json(text: &str) -> PyResult<PyReference> {
        entry(None, || {
            Ok(PyReference {
                inner: Reference::from_json(text).py_err()?,
            })
        })
    }

    fn to_json(&self) -> PyResult<String> {
        self.inner.to_json().py_err()
    }

    #[getter]
    fn rows(&self) -> u64 {
        self.inner.rows
    }

    #[getter]
    fn feature_set(&self) -> Option<String> {
        self.inner.feature_set.clone()
    }

    #[getter]
    fn version(&self) -> u32 {
        self.inner.version
    }

    /// The prediction's record: None, or (source column or None, (lo, hi) or None).
    #[getter]
    fn prediction(&self) -> Option<PredictionArg> {
        self.inner
            .prediction
            .as_ref()
            .map(|p| (p.source.clone(), p.range.map(|[lo, hi]| (lo, hi))))
    }

    /// (name, "numeric" | "categorical") per column.
    #[getter]
    fn columns(&self) -> Vec<(String, &'static str)> {
        self.inner
            .columns
            .iter()
            .map(|c| (c.name().to_string(), c.kind()))
            .collect()
    }

    /// One column's summary as a dict.
    fn column<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let col = self
            .inner
            .columns
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::schema(name, "not a column of the reference"))
            .py_err()?;
        let d = PyDict::new(py);
        d.set_item("name", col.name())?;
        d.set_item("kind", col.kind())?;
        d.set_item("counts", col.counts().to_vec())?;
        d.set_item("nulls", col.nulls())?;
        match col {
            ColumnRef::Numeric {
                edges, min, max, ..
            } => {
                d.set_item("edges", edges.clone())?;
                d.set_item("min", *min)?;
                d.set_item("max", *max)?;
                if let (PREDICTION, Some(p)) = (name, &self.inner.prediction) {
                    d.set_item("source", p.source.clone())?;
                    d.set_item("range", p.range.map(|[lo, hi]| (lo, hi)))?;
                }
            }
            ColumnRef::Categorical { categories, .. } => {
                d.set_item("categories", categories.clone())?;
            }
        }
        Ok(d)
    }

    /// The metrics of `table`'s rows against the reference as one period: {column: metrics}.
    fn compare<'py>(&self, py: Python<'py>, table: PyTable) -> PyResult<Bound<'py, PyDict>> {
        entry(None, || {
            let (batches, _) = table.into_inner();
            let reference = &self.inner;
            let rows = detached(py, || {
                let c = codes(reference, &batches)?;
                report(reference, &c, None, None)
            })?;
            let d = PyDict::new(py);
            for r in rows {
                if let Some(col) = self.inner.columns.get(r.column) {
                    d.set_item(col.name(), metrics_dict(py, &r.metrics)?)?;
                }
            }
            Ok(d)
        })
    }
}

/// The batch report: a dict of columns (`period_start` int64 ns, `column` names, `kind`, `rows`,
/// `non_null`, then one float64 array per metric with NaN for a null metric).
#[pyfunction]
#[pyo3(signature = (reference, table, timestamp=None, period=None))]
pub fn monitor_report<'py>(
    py: Python<'py>,
    reference: &PyReference,
    table: PyTable,
    timestamp: Option<String>,
    period: Option<i64>,
) -> PyResult<Bound<'py, PyDict>> {
    entry(None, || {
        let (batches, _) = table.into_inner();
        let r = &reference.inner;
        let rows = detached(py, || {
            let c = codes(r, &batches)?;
            let t = match &timestamp {
                Some(name) => Some(times(&batches, name)?),
                None => None,
            };
            report(r, &c, t.as_deref(), period)
        })?;
        let d = PyDict::new(py);
        let starts: Vec<Option<i64>> = rows.iter().map(|x| x.period_start).collect();
        d.set_item("period_start", starts)?;
        let names: Vec<&str> = rows
            .iter()
            .map(|x| r.columns.get(x.column).map_or("", |c| c.name()))
            .collect();
        d.set_item("column", names)?;
        let kinds: Vec<&str> = rows
            .iter()
            .map(|x| r.columns.get(x.column).map_or("", |c| c.kind()))
            .collect();
        d.set_item("kind", kinds)?;
        let n: Vec<u64> = rows.iter().map(|x| x.metrics.rows).collect();
        d.set_item("rows", n.into_pyarray(py))?;
        let nn: Vec<u64> = rows.iter().map(|x| x.metrics.non_null).collect();
        d.set_item("non_null", nn.into_pyarray(py))?;
        for m in Metric::ALL {
            let v: Vec<f64> = rows
                .iter()
                .map(|x| x.metrics.get(m).unwrap_or(f64::NAN))
                .collect();
            d.set_item(m.name(), v.into_pyarray(py))?;
        }
        Ok(d)
    })
}

/// The online monitor (use `rtml.monitor.Monitor`).
#[pyclass(frozen, name = "Monitor", module = "rtml._core")]
pub struct PyMonitor {
    inner: Mutex<Monitor>,
    poison: Poison,
}

#[pymethods]
impl PyMonitor {
    /// `window`, `step`, `allowed_lateness`: ns.
    #[new]
    fn new(
        reference: &PyReference,
        window: i64,
        step: i64,
        allowed_lateness: i64,
    ) -> PyResult<PyMonitor> {
        entry(None, || {
            let m =
                Monitor::new(reference.inner.clone(), window, step, allowed_lateness).py_err()?;
            Ok(PyMonitor {
                inner: Mutex::new(m),
                poison: Poison::default(),
            })
        })
    }

    /// Add a trigger; returns its index. `low`: low is bad (breach `< below`, clear `>= above`).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (metric, column, above, below, for_, cooldown, min_samples, low=false))]
    fn add_trigger(
        &self,
        py: Python<'_>,
        metric: &str,
        column: &str,
        above: f64,
        below: f64,
        for_: i64,
        cooldown: i64,
        min_samples: u64,
        low: bool,
    ) -> PyResult<usize> {
        entry(Some(&self.poison), || {
            let mut m = lock(py, &self.inner);
            let metric = Metric::parse(metric)
                .ok_or_else(|| {
                    let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                    Error::spec(
                        "metric",
                        format!("unknown metric {metric:?} (one of {})", names.join(", ")),
                    )
                })
                .py_err()?;
            let col = m
                .reference()
                .column_index(column)
                .ok_or_else(|| {
                    Error::spec(
                        "column",
                        format!("'{column}' is not a column of the reference"),
                    )
                })
                .py_err()?;
            m.add_trigger(TriggerSpec {
                metric,
                column: col,
                above,
                below,
                for_,
                cooldown,
                min_samples,
                low,
            })
            .py_err()
        })
    }

    /// Apply one arrival of rows; returns the fired triggers as
    /// (trigger index, "enter" | "leave", window end ns, value).
    fn update<'py>(
        &self,
        py: Python<'py>,
        table: PyTable,
        timestamp: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        entry(Some(&self.poison), || {
            let (batches, _) = table.into_inner();
            let mut m = lock(py, &self.inner);
            let fired = {
                let r = m.reference();
                let (c, t) = detached(py, || {
                    Ok((codes(r, &batches)?, times(&batches, timestamp)?))
                })?;
                m.update(&c, &t).py_err()?
            };
            fired_list(py, fired)
        })
    }

    /// Move the watermark forward to `t` (ns); returns the fired triggers.
    fn advance<'py>(&self, py: Python<'py>, t: i64) -> PyResult<Bound<'py, PyList>> {
        entry(Some(&self.poison), || {
            let fired = lock(py, &self.inner).advance(t);
            fired_list(py, fired)
        })
    }

    /// {column: metrics} over the window `[at - W, at)`.
    fn values<'py>(&self, py: Python<'py>, at: i64) -> PyResult<Bound<'py, PyDict>> {
        entry(Some(&self.poison), || {
            let m = lock(py, &self.inner);
            let vals = m.values(at).py_err()?;
            let d = PyDict::new(py);
            for (col, v) in m.reference().columns.iter().zip(&vals) {
                d.set_item(col.name(), metrics_dict(py, v)?)?;
            }
            Ok(d)
        })
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = lock(py, &self.inner);
        let s = m.stats();
        let d = PyDict::new(py);
        d.set_item("rows_applied", s.rows_applied)?;
        d.set_item("rows_late", s.rows_late)?;
        d.set_item("windows_closed", s.windows_closed)?;
        d.set_item("panes", s.panes)?;
        d.set_item("watermark", m.watermark())?;
        d.set_item("closed_until", m.closed_until())?;
        Ok(d)
    }

    /// Counters and state of trigger `i`.
    fn trigger_stats<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyDict>> {
        let m = lock(py, &self.inner);
        let t = m
            .triggers()
            .get(i)
            .ok_or_else(|| Error::spec("trigger", format!("no trigger {i}")))
            .py_err()?;
        let d = counters_dict(py, &t.counters)?;
        d.set_item("alerting", t.alerting)?;
        Ok(d)
    }

    /// The whole state as a versioned JSON document.
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        entry(Some(&self.poison), || {
            lock(py, &self.inner).to_json().py_err()
        })
    }

    #[staticmethod]
    fn from_json(text: &str) -> PyResult<PyMonitor> {
        entry(None, || {
            Ok(PyMonitor {
                inner: Mutex::new(Monitor::from_json(text).py_err()?),
                poison: Poison::default(),
            })
        })
    }

    /// (metric, column, above, below, for_, cooldown, min_samples, low) per trigger.
    #[allow(clippy::type_complexity)]
    fn trigger_specs(
        &self,
        py: Python<'_>,
    ) -> Vec<(&'static str, String, f64, f64, i64, i64, u64, bool)> {
        let m = lock(py, &self.inner);
        m.triggers()
            .iter()
            .map(|t| {
                let s = &t.spec;
                let col = m
                    .reference()
                    .columns
                    .get(s.column)
                    .map_or(String::new(), |c| c.name().to_string());
                (
                    s.metric.name(),
                    col,
                    s.above,
                    s.below,
                    s.for_,
                    s.cooldown,
                    s.min_samples,
                    s.low,
                )
            })
            .collect()
    }

    /// The reference's document.
    fn reference_json(&self, py: Python<'_>) -> PyResult<String> {
        lock(py, &self.inner).reference().to_json().py_err()
    }

    #[getter]
    fn watermark(&self, py: Python<'_>) -> Option<i64> {
        lock(py, &self.inner).watermark()
    }

    #[getter]
    fn closed_until(&self, py: Python<'_>) -> Option<i64> {
        lock(py, &self.inner).closed_until()
    }
}

/// Add the monitoring classes to `rtml._core` (the one line in `src/python/mod.rs`).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyReference>()?;
    m.add_class::<PyMonitor>()?;
    m.add_function(wrap_pyfunction!(monitor_report, m)?)?;
    m.add(
        "REFERENCE_VERSION",
        crate::monitor::reference::REFERENCE_VERSION,
    )?;
    Ok(())
}
