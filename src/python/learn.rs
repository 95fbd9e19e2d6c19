//! `rtml._core.Linear`, `rtml._core.Softmax`, `rtml._core.Metrics`,
//! `rtml._core.MulticlassMetrics`, `rtml._core.LabelJoin`: the pyo3 skin of
//! `crate::learn` (issue 15). `python/rtml/learn.py` wraps them: it turns times into epoch
//! nanoseconds, vectors into contiguous float64 arrays and hyper-parameters into the
//! optimizer document; this layer only converts and calls. Every call that does work goes
//! through `errors::entry` (panic guard; a learner or join that saw a panic is poisoned); the
//! plain getters only read a counter under the lock.

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use parking_lot::{Mutex, MutexGuard};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString};

use super::errors::{entry, schema_error, IntoPy, Poison};
use crate::error::Error;
use crate::learn::label_join::{Example, Outcome};
use crate::learn::{
    ClassLabel, LabelJoin, Linear, Loss, OnTimeout, Optimizer, Progressive, ProgressiveMulticlass,
    RequestId, Softmax,
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

fn slice1<'a>(a: &'a PyReadonlyArray1<'_, f64>, what: &str) -> PyResult<&'a [f64]> {
    a.as_slice()
        .map_err(|_| schema_error(what, "expected a contiguous float64 array"))
}

fn slice2<'a>(a: &'a PyReadonlyArray2<'_, f64>, what: &str) -> PyResult<(&'a [f64], usize, usize)> {
    let (rows, cols) = match a.shape() {
        [r, c] => (*r, *c),
        _ => return Err(schema_error(what, "expected a 2-D float64 array")),
    };
    let s = a
        .as_slice()
        .map_err(|_| schema_error(what, "expected a C-contiguous 2-D float64 array"))?;
    Ok((s, rows, cols))
}

fn request_id(obj: &Bound<'_, PyAny>) -> PyResult<RequestId> {
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(RequestId::Int(i));
        }
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(RequestId::Str(s.to_str()?.to_string()));
    }
    Err(schema_error(
        "request_id",
        format!(
            "request ids must be int (64-bit) or str, got {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ),
    ))
}

fn id_to_py<'py>(py: Python<'py>, id: &RequestId) -> PyResult<Bound<'py, PyAny>> {
    Ok(match id {
        RequestId::Int(i) => i.into_pyobject(py)?.into_any(),
        RequestId::Str(s) => PyString::new(py, s).into_any(),
    })
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Accepted => "accepted",
        Outcome::Late => "late",
        Outcome::AfterWait => "after_wait",
    }
}

/// An online linear model (use `rtml.learn.Logistic` / `rtml.learn.LinearRegression`).
#[pyclass(frozen, name = "Linear", module = "rtml._core")]
pub struct PyLinear {
    inner: Mutex<Linear>,
    poison: Poison,
}

#[pymethods]
impl PyLinear {
    /// `loss`: "logistic" | "squared"; `optimizer`: the optimizer document (JSON).
    #[new]
    fn new(loss: &str, optimizer: &str, n_features: usize) -> PyResult<PyLinear> {
        entry(None, || {
            let loss = match loss {
                "logistic" => Loss::Logistic,
                "squared" => Loss::Squared,
                other => {
                    return Err(Error::spec(
                        "loss",
                        format!("expected \"logistic\" or \"squared\", got {other:?}"),
                    ))
                    .py_err()
                }
            };
            let opt: Optimizer = serde_json::from_str(optimizer)
                .map_err(|e| Error::spec("optimizer", e.to_string()))
                .py_err()?;
            Ok(PyLinear {
                inner: Mutex::new(Linear::new(loss, opt, n_features).py_err()?),
                poison: Poison::default(),
            })
        })
    }

    #[staticmethod]
    fn from_json(text: &str) -> PyResult<PyLinear> {
        entry(None, || {
            Ok(PyLinear {
                inner: Mutex::new(Linear::from_json(text).py_err()?),
                poison: Poison::default(),
            })
        })
    }

    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        entry(Some(&self.poison), || {
            lock(py, &self.inner).to_json().py_err()
        })
    }

    fn predict_one(&self, py: Python<'_>, x: PyReadonlyArray1<'_, f64>) -> PyResult<f64> {
        entry(Some(&self.poison), || {
            lock(py, &self.inner).predict_one(slice1(&x, "x")?).py_err()
        })
    }

    fn predict_many<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        entry(Some(&self.poison), || {
            let (s, rows, _) = slice2(&x, "x")?;
            let m = lock(py, &self.inner);
            Ok(m.predict_many(s, rows).py_err()?.into_pyarray(py))
        })
    }

    /// Learn one example; returns the prediction made before the update.
    fn learn_one(&self, py: Python<'_>, x: PyReadonlyArray1<'_, f64>, y: f64) -> PyResult<f64> {
        entry(Some(&self.poison), || {
            lock(py, &self.inner)
                .learn_one(slice1(&x, "x")?, y)
                .py_err()
        })
    }

    /// Learn the rows in order (the loop of learn_one); the batch is checked first.
    fn learn_many<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        y: PyReadonlyArray1<'py, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        entry(Some(&self.poison), || {
            let (s, _, _) = slice2(&x, "x")?;
            let ys = slice1(&y, "y")?;
            let mut m = lock(py, &self.inner);
            Ok(m.learn_many(s, ys).py_err()?.into_pyarray(py))
        })
    }

    /// Test-then-train: score each row, record (t, score, y) in `metrics`, learn it.
    fn progressive<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        y: PyReadonlyArray1<'py, f64>,
        t: PyReadonlyArray1<'py, i64>,
        metrics: &PyMetrics,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        entry(Some(&self.poison), || {
            let (s, _, _) = slice2(&x, "x")?;
            let ys = slice1(&y, "y")?;
            let ts = t
                .as_slice()
                .map_err(|_| schema_error("t", "expected a contiguous int64 array"))?;
            if ts.len() != ys.len() {
                return Err(schema_error(
                    "t",
                    format!(
                        "expected {} times (one per row), got {}",
                        ys.len(),
                        ts.len()
                    ),
                ));
            }
            let mut m = lock(py, &self.inner);
            let preds = m.learn_many(s, ys).py_err()?;
            let mut g = lock(py, &metrics.inner);
            for ((&t, &p), &y) in ts.iter().zip(&preds).zip(ys) {
                g.add(t, p, y);
            }
            Ok(preds.into_pyarray(py))
        })
    }

    /// The weights, the intercept last.
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        entry(Some(&self.poison), || {
            Ok(lock(py, &self.inner).weights().into_pyarray(py))
        })
    }

    #[getter]
    fn n_features(&self, py: Python<'_>) -> usize {
        lock(py, &self.inner).n_features()
    }

    #[getter]
    fn updates(&self, py: Python<'_>) -> u64 {
        lock(py, &self.inner).updates()
    }

    /// Bit-for-bit equality of the model state.
    fn same_state(&self, py: Python<'_>, other: &PyLinear) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        let a = lock(py, &self.inner).clone();
        let b = lock(py, &other.inner);
        a == *b
    }
}

/// Rolling progressive-validation metrics by event time (use `rtml.learn.Metrics`).
#[pyclass(frozen, name = "Metrics", module = "rtml._core")]
pub struct PyMetrics {
    inner: Mutex<Progressive>,
}

#[pymethods]
impl PyMetrics {
    #[new]
    #[pyo3(signature = (window=None))]
    fn new(window: Option<i64>) -> PyResult<PyMetrics> {
        entry(None, || {
            Ok(PyMetrics {
                inner: Mutex::new(Progressive::new(window).py_err()?),
            })
        })
    }

    fn add_many(
        &self,
        py: Python<'_>,
        t: PyReadonlyArray1<'_, i64>,
        p: PyReadonlyArray1<'_, f64>,
        y: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<()> {
        entry(None, || {
            let ts = t
                .as_slice()
                .map_err(|_| schema_error("t", "expected a contiguous int64 array"))?;
            let ps = slice1(&p, "p")?;
            let ys = slice1(&y, "y")?;
            if ts.len() != ps.len() || ps.len() != ys.len() {
                return Err(schema_error("p", "t, p and y must have the same length"));
            }
            if let Some(i) = ps.iter().chain(ys).position(|v| !v.is_finite()) {
                let (col, row) = if i < ps.len() {
                    ("p", i)
                } else {
                    ("y", i - ps.len())
                };
                return Err(schema_error(
                    col,
                    format!("row {row}: values must be finite"),
                ));
            }
            let mut g = lock(py, &self.inner);
            for ((&t, &p), &y) in ts.iter().zip(ps).zip(ys) {
                g.add(t, p, y);
            }
            Ok(())
        })
    }

    fn log_loss(&self, py: Python<'_>) -> Option<f64> {
        lock(py, &self.inner).log_loss()
    }

    /// The whole state as bytes (`Progressive::to_bytes`).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        entry(None, || {
            let bytes = lock(py, &self.inner).to_bytes().py_err()?;
            Ok(PyBytes::new(py, &bytes))
        })
    }

    /// Metrics from `to_bytes` (rtml.SnapshotError for anything else).
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<PyMetrics> {
        entry(None, || {
            Ok(PyMetrics {
                inner: Mutex::new(Progressive::from_bytes(data).py_err()?),
            })
        })
    }

    fn auc(&self, py: Python<'_>) -> Option<f64> {
        lock(py, &self.inner).auc()
    }
    fn mse(&self, py: Python<'_>) -> Option<f64> {
        lock(py, &self.inner).mse()
    }
    #[getter]
    fn count(&self, py: Python<'_>) -> usize {
        lock(py, &self.inner).count()
    }
    #[getter]
    fn seen(&self, py: Python<'_>) -> u64 {
        lock(py, &self.inner).seen()
    }
    #[getter]
    fn last_time(&self, py: Python<'_>) -> Option<i64> {
        lock(py, &self.inner).last_time()
    }

    /// Calibration table: a list of dicts (lo, hi, count, mean_prediction, mean_label).
    #[pyo3(signature = (bins=10))]
    fn calibration<'py>(&self, py: Python<'py>, bins: usize) -> PyResult<Bound<'py, PyList>> {
        entry(None, || {
            let table = lock(py, &self.inner).calibration(bins).py_err()?;
            let out = PyList::empty(py);
            for b in table {
                let d = PyDict::new(py);
                d.set_item("lo", b.lo)?;
                d.set_item("hi", b.hi)?;
                d.set_item("count", b.count)?;
                d.set_item("mean_prediction", b.mean_prediction)?;
                d.set_item("mean_label", b.mean_label)?;
                out.append(d)?;
            }
            Ok(out)
        })
    }
}

fn matrix<'py>(py: Python<'py>, v: Vec<f64>, cols: usize) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let rows = v.len().checked_div(cols).unwrap_or(0);
    let a =
        Array2::from_shape_vec((rows, cols), v).map_err(|e| schema_error("x", e.to_string()))?;
    Ok(a.into_pyarray(py))
}

fn labels_i64<'a>(a: &'a PyReadonlyArray1<'_, i64>) -> PyResult<&'a [i64]> {
    a.as_slice()
        .map_err(|_| schema_error("y", "expected a contiguous int64 array"))
}

impl PyLinear {
    /// `predict_one` of a vector the engine computed in Rust (`OnlineEngine.predict`).
    pub(crate) fn predict_values(&self, py: Python<'_>, x: &[f64]) -> PyResult<f64> {
        entry(Some(&self.poison), || {
            lock(py, &self.inner).predict_one(x).py_err()
        })
    }
}

impl PySoftmax {
    /// `predict_one` of a vector the engine computed in Rust (`OnlineEngine.predict`).
    pub(crate) fn predict_values<'py>(
        &self,
        py: Python<'py>,
        x: &[f64],
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        entry(Some(&self.poison), || {
            let p = lock(py, &self.inner).predict_one(x).py_err()?;
            Ok(p.into_pyarray(py))
        })
    }
}

/// An online softmax (multiclass logistic) model (use `rtml.learn.Softmax`). Labels here are
/// class indices; the wrapper maps class labels to them.
#[pyclass(frozen, name = "Softmax", module = "rtml._core")]
pub struct PySoftmax {
    inner: Mutex<Softmax>,
    poison: Poison,
}

#[pymethods]
impl PySoftmax {
    /// `classes`: a JSON list of ints / strs; `optimizer`: the optimizer document (JSON).
    #[new]
    fn new(classes: &str, optimizer: &str, n_features: usize) -> PyResult<PySoftmax> {
        entry(None, || {
            let classes: Vec<ClassLabel> = serde_json::from_str(classes)
                .map_err(|e| Error::spec("classes", format!("expected ints or strs: {e}")))
                .py_err()?;
            let opt: Optimizer = serde_json::from_str(optimizer)
                .map_err(|e| Error::spec("optimizer", e.to_string()))
                .py_err()?;
            Ok(PySoftmax {
                inner: Mutex::new(Softmax::new(classes, opt, n_features).py_err()?),
                poison: Poison::default(),
            })
        })
    }

    #[staticmethod]
    fn from_json(text: &str) -> PyResult<PySoftmax> {
        entry(None, || {
            Ok(PySoftmax {
                inner: Mutex::new(Softmax::from_json(text).py_err()?),
                poison: Poison::default(),
            })
        })
    }

    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        entry(Some(&self.poison), || {
            lock(py, &self.inner).to_json().py_err()
        })
    }

    /// The class labels as a JSON list.
    fn classes_json(&self, py: Python<'_>) -> PyResult<String> {
        entry(Some(&self.poison), || {
            serde_json::to_string(lock(py, &self.inner).classes())
                .map_err(|e| Error::spec("classes", e.to_string()))
                .py_err()
        })
    }

    fn predict_one<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray1<'py, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        entry(Some(&self.poison), || {
            let p = lock(py, &self.inner)
                .predict_one(slice1(&x, "x")?)
                .py_err()?;
            Ok(p.into_pyarray(py))
        })
    }

    fn predict_many<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        entry(Some(&self.poison), || {
            let (s, rows, _) = slice2(&x, "x")?;
            let m = lock(py, &self.inner);
            let c = m.n_classes();
            matrix(py, m.predict_many(s, rows).py_err()?, c)
        })
    }

    /// Learn one example (`y`: class index); returns the probabilities before the update.
    fn learn_one<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray1<'py, f64>,
        y: i64,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        entry(Some(&self.poison), || {
            let p = lock(py, &self.inner)
                .learn_one(slice1(&x, "x")?, y)
                .py_err()?;
            Ok(p.into_pyarray(py))
        })
    }

    /// Learn the rows in order (the loop of learn_one); the batch is checked first.
    fn learn_many<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        y: PyReadonlyArray1<'py, i64>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        entry(Some(&self.poison), || {
            let (s, _, _) = slice2(&x, "x")?;
            let ys = labels_i64(&y)?;
            let mut m = lock(py, &self.inner);
            let c = m.n_classes();
            matrix(py, m.learn_many(s, ys).py_err()?, c)
        })
    }

    /// Test-then-train: score each row, record it in `metrics`, learn it.
    fn progressive<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        y: PyReadonlyArray1<'py, i64>,
        t: PyReadonlyArray1<'py, i64>,
        metrics: &PyMulticlassMetrics,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        entry(Some(&self.poison), || {
            let (s, _, _) = slice2(&x, "x")?;
            let ys = labels_i64(&y)?;
            let ts = t
                .as_slice()
                .map_err(|_| schema_error("t", "expected a contiguous int64 array"))?;
            if ts.len() != ys.len() {
                return Err(schema_error(
                    "t",
                    format!(
                        "expected {} times (one per row), got {}",
                        ys.len(),
                        ts.len()
                    ),
                ));
            }
            let mut m = lock(py, &self.inner);
            let c = m.n_classes();
            let probs = m.learn_many(s, ys).py_err()?;
            let mut g = lock(py, &metrics.inner);
            for ((&t, &y), p) in ts.iter().zip(ys).zip(probs.chunks(c.max(1))) {
                // learn_many checked every label: a class index
                g.add(t, p, usize::try_from(y).unwrap_or(usize::MAX));
            }
            matrix(py, probs, c)
        })
    }

    /// The weights, one row per class, each class's intercept last.
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        entry(Some(&self.poison), || {
            let m = lock(py, &self.inner);
            matrix(py, m.weights(), m.n_features() + 1)
        })
    }

    #[getter]
    fn n_features(&self, py: Python<'_>) -> usize {
        lock(py, &self.inner).n_features()
    }

    #[getter]
    fn n_classes(&self, py: Python<'_>) -> usize {
        lock(py, &self.inner).n_classes()
    }

    #[getter]
    fn updates(&self, py: Python<'_>) -> u64 {
        lock(py, &self.inner).updates()
    }

    /// Bit-for-bit equality of the model state.
    fn same_state(&self, py: Python<'_>, other: &PySoftmax) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        let a = lock(py, &self.inner).clone();
        let b = lock(py, &other.inner);
        a == *b
    }
}

/// Rolling progressive-validation metrics of a multiclass model (use
/// `rtml.learn.MulticlassMetrics`).
#[pyclass(frozen, name = "MulticlassMetrics", module = "rtml._core")]
pub struct PyMulticlassMetrics {
    inner: Mutex<ProgressiveMulticlass>,
}

#[pymethods]
impl PyMulticlassMetrics {
    #[new]
    #[pyo3(signature = (window=None))]
    fn new(window: Option<i64>) -> PyResult<PyMulticlassMetrics> {
        entry(None, || {
            Ok(PyMulticlassMetrics {
                inner: Mutex::new(ProgressiveMulticlass::new(window).py_err()?),
            })
        })
    }

    /// Rows of class probabilities `p` (rows x classes), true class indices `y`.
    fn add_many(
        &self,
        py: Python<'_>,
        t: PyReadonlyArray1<'_, i64>,
        p: PyReadonlyArray2<'_, f64>,
        y: PyReadonlyArray1<'_, i64>,
    ) -> PyResult<()> {
        entry(None, || {
            let ts = t
                .as_slice()
                .map_err(|_| schema_error("t", "expected a contiguous int64 array"))?;
            let (ps, rows, cols) = slice2(&p, "p")?;
            let ys = labels_i64(&y)?;
            if ts.len() != rows || ys.len() != rows {
                return Err(schema_error("p", "t, p and y must have the same length"));
            }
            if let Some(i) = ps.iter().position(|v| !v.is_finite()) {
                return Err(schema_error(
                    "p",
                    format!("row {}: values must be finite", i / cols.max(1)),
                ));
            }
            if let Some(r) = ys.iter().position(|&y| y < 0 || y as usize >= cols) {
                return Err(schema_error(
                    "y",
                    format!("row {r}: class index out of range (0..{cols})"),
                ));
            }
            let mut g = lock(py, &self.inner);
            for ((&t, &y), p) in ts.iter().zip(ys).zip(ps.chunks(cols.max(1))) {
                g.add(t, p, y as usize);
            }
            Ok(())
        })
    }

    fn log_loss(&self, py: Python<'_>) -> Option<f64> {
        lock(py, &self.inner).log_loss()
    }
    fn accuracy(&self, py: Python<'_>) -> Option<f64> {
        lock(py, &self.inner).accuracy()
    }
    fn auc(&self, py: Python<'_>) -> Option<f64> {
        lock(py, &self.inner).auc()
    }
    #[getter]
    fn count(&self, py: Python<'_>) -> usize {
        lock(py, &self.inner).count()
    }
    #[getter]
    fn seen(&self, py: Python<'_>) -> u64 {
        lock(py, &self.inner).seen()
    }
    #[getter]
    fn last_time(&self, py: Python<'_>) -> Option<i64> {
        lock(py, &self.inner).last_time()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        entry(None, || {
            let bytes = lock(py, &self.inner).to_bytes().py_err()?;
            Ok(PyBytes::new(py, &bytes))
        })
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<PyMulticlassMetrics> {
        entry(None, || {
            Ok(PyMulticlassMetrics {
                inner: Mutex::new(ProgressiveMulticlass::from_bytes(data).py_err()?),
            })
        })
    }
}

type Drained<'py> = (
    Bound<'py, PyList>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray2<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<bool>>,
);

/// The label join (use `rtml.learn.LabelJoin`). Times are epoch nanoseconds.
#[pyclass(frozen, name = "LabelJoin", module = "rtml._core")]
pub struct PyLabelJoin {
    inner: Mutex<LabelJoin>,
    poison: Poison,
}

#[pymethods]
impl PyLabelJoin {
    /// `on_timeout`: None drops timed-out rows, a float releases them with that label.
    #[new]
    #[pyo3(signature = (wait, on_timeout, max_pending, allowed_lateness))]
    fn new(
        wait: i64,
        on_timeout: Option<f64>,
        max_pending: usize,
        allowed_lateness: i64,
    ) -> PyResult<PyLabelJoin> {
        entry(None, || {
            let on = on_timeout.map_or(OnTimeout::Drop, OnTimeout::Label);
            Ok(PyLabelJoin {
                inner: Mutex::new(
                    LabelJoin::new(wait, on, max_pending, allowed_lateness).py_err()?,
                ),
                poison: Poison::default(),
            })
        })
    }

    fn serve(
        &self,
        py: Python<'_>,
        request_id: &Bound<'_, PyAny>,
        at: i64,
        x: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<&'static str> {
        entry(Some(&self.poison), || {
            let id = request_id_checked(request_id)?;
            let v = slice1(&x, "x")?.to_vec();
            Ok(outcome(lock(py, &self.inner).serve(id, at, v).py_err()?))
        })
    }

    /// Serve rows in order, all or nothing; returns the outcome counts (accepted, late). A
    /// reused request id refuses the whole batch.
    fn serve_many(
        &self,
        py: Python<'_>,
        request_ids: &Bound<'_, PyAny>,
        at: PyReadonlyArray1<'_, i64>,
        x: PyReadonlyArray2<'_, f64>,
    ) -> PyResult<(u64, u64)> {
        entry(Some(&self.poison), || {
            let ids = ids_of(request_ids)?;
            let ats = at
                .as_slice()
                .map_err(|_| schema_error("at", "expected a contiguous int64 array"))?;
            let (s, rows, cols) = slice2(&x, "x")?;
            if ids.len() != rows || ats.len() != rows {
                return Err(schema_error(
                    "request_id",
                    format!(
                        "request ids ({}), times ({}) and vectors ({rows}) differ in length",
                        ids.len(),
                        ats.len()
                    ),
                ));
            }
            // lengths checked above: every row's slice is in bounds
            let rows = ids
                .into_iter()
                .zip(ats.iter().copied())
                .enumerate()
                .map(|(r, (id, at))| {
                    let x = s.get(r * cols..(r + 1) * cols).unwrap_or_default();
                    (id, at, x.to_vec())
                })
                .collect();
            lock(py, &self.inner).serve_many(rows).py_err()
        })
    }

    /// One label; bad input raises (a typed rtml error), and is counted.
    fn label(
        &self,
        py: Python<'_>,
        request_id: &Bound<'_, PyAny>,
        t: i64,
        y: f64,
    ) -> PyResult<&'static str> {
        entry(Some(&self.poison), || {
            let id = request_id_checked(request_id)?;
            Ok(outcome(lock(py, &self.inner).label(&id, t, y).py_err()?))
        })
    }

    /// Labels from a stream, in order: bad ones are counted in stats(), not raised. Returns
    /// the number taken into the join.
    fn labels(
        &self,
        py: Python<'_>,
        request_ids: &Bound<'_, PyAny>,
        t: PyReadonlyArray1<'_, i64>,
        y: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<u64> {
        entry(Some(&self.poison), || {
            let ids = ids_of(request_ids)?;
            let ts = t
                .as_slice()
                .map_err(|_| schema_error("t", "expected a contiguous int64 array"))?;
            let ys = slice1(&y, "y")?;
            if ids.len() != ts.len() || ts.len() != ys.len() {
                return Err(schema_error(
                    "request_id",
                    "request ids, times and labels differ in length",
                ));
            }
            let labels = ids
                .into_iter()
                .zip(ts.iter().copied())
                .zip(ys.iter().copied())
                .map(|((id, t), y)| (id, t, y));
            Ok(lock(py, &self.inner).labels(labels))
        })
    }

    fn advance(&self, py: Python<'_>, t: i64) -> PyResult<()> {
        entry(Some(&self.poison), || {
            lock(py, &self.inner).advance(t);
            Ok(())
        })
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        entry(Some(&self.poison), || {
            lock(py, &self.inner).flush();
            Ok(())
        })
    }

    /// The released examples, as (request ids, at, release, X, y, timed_out). They are read
    /// in place and then cleared (the join keeps the vector's capacity for the next ones).
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Drained<'py>> {
        entry(Some(&self.poison), || {
            let mut j = lock(py, &self.inner);
            let ex = j.released();
            let k = ex.first().map_or(0, |e| e.x.len());
            if let Some(e) = ex.iter().find(|e| e.x.len() != k) {
                // rows of different lengths cannot form one matrix: refuse, drain nothing
                return Err(schema_error(
                    "x",
                    format!(
                        "request id {}: served vectors differ in length ({} vs {k}); \
                         serve vectors of one length per join",
                        e.id,
                        e.x.len()
                    ),
                ));
            }
            let ids = ids_to_list(py, ex)?;
            let mut at = Vec::with_capacity(ex.len());
            let mut rel = Vec::with_capacity(ex.len());
            let mut xs = Vec::with_capacity(ex.len() * k);
            let mut ys = Vec::with_capacity(ex.len());
            let mut to = Vec::with_capacity(ex.len());
            for e in ex {
                at.push(e.at);
                rel.push(e.release);
                xs.extend_from_slice(&e.x);
                ys.push(e.y);
                to.push(e.timed_out);
            }
            let x = Array2::from_shape_vec((ex.len(), k), xs)
                .map_err(|e| schema_error("x", e.to_string()))?;
            // everything built: only now are the examples gone from the join
            j.clear_released();
            drop(j);
            Ok((
                ids,
                at.into_pyarray(py),
                rel.into_pyarray(py),
                x.into_pyarray(py),
                ys.into_pyarray(py),
                to.into_pyarray(py),
            ))
        })
    }

    /// The whole join as bytes (`LabelJoin::to_bytes`).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        entry(Some(&self.poison), || {
            let bytes = lock(py, &self.inner).to_bytes().py_err()?;
            Ok(PyBytes::new(py, &bytes))
        })
    }

    /// A join from `to_bytes` (rtml.SnapshotError for anything else).
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<PyLabelJoin> {
        entry(None, || {
            Ok(PyLabelJoin {
                inner: Mutex::new(LabelJoin::from_bytes(data).py_err()?),
                poison: Poison::default(),
            })
        })
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        entry(Some(&self.poison), || {
            let j = lock(py, &self.inner);
            let d = PyDict::new(py);
            for (k, v) in j.stats().items() {
                d.set_item(k, v)?;
            }
            d.set_item("pending", j.pending())?;
            d.set_item("ready", j.ready())?;
            d.set_item("watermark", j.watermark())?;
            Ok(d)
        })
    }

    #[getter]
    fn pending(&self, py: Python<'_>) -> usize {
        lock(py, &self.inner).pending()
    }

    #[getter]
    fn watermark(&self, py: Python<'_>) -> Option<i64> {
        lock(py, &self.inner).watermark()
    }
}

fn request_id_checked(obj: &Bound<'_, PyAny>) -> PyResult<RequestId> {
    request_id(obj)
}

/// The examples' request ids as a Python list, made in one allocation (ints, the common
/// case, without a temporary object per id beyond the int itself).
fn ids_to_list<'py>(py: Python<'py>, ex: &[Example]) -> PyResult<Bound<'py, PyList>> {
    if ex.iter().all(|e| matches!(e.id, RequestId::Int(_))) {
        let ints = ex.iter().map(|e| match e.id {
            RequestId::Int(i) => i,
            RequestId::Str(_) => 0, // (none: checked just above)
        });
        return PyList::new(py, ints);
    }
    let ids = ex
        .iter()
        .map(|e| id_to_py(py, &e.id))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, ids)
}

/// Request ids from an int64 numpy array or any sequence of int / str.
fn ids_of(obj: &Bound<'_, PyAny>) -> PyResult<Vec<RequestId>> {
    if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, i64>>() {
        return Ok(a.as_array().iter().map(|&i| RequestId::Int(i)).collect());
    }
    let mut out = Vec::new();
    for item in obj.try_iter()? {
        out.push(request_id(&item?)?);
    }
    Ok(out)
}

/// Add the learning classes to `rtml._core` (the one line in `src/python/mod.rs`).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLinear>()?;
    m.add_class::<PyMetrics>()?;
    m.add_class::<PySoftmax>()?;
    m.add_class::<PyMulticlassMetrics>()?;
    m.add("SOFTMAX_VERSION", crate::learn::softmax::SOFTMAX_VERSION)?;
    m.add_class::<PyLabelJoin>()?;
    m.add("MODEL_VERSION", crate::learn::linear::MODEL_VERSION)?;
    Ok(())
}
