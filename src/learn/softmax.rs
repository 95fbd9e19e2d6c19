//! Online multiclass logistic (softmax) regression, trained with FTRL-Proximal or plain SGD:
//! the multiclass sibling of [`crate::learn::linear`], with the same optimizers, the same
//! determinism rule (a fixed sequence of IEEE operations: `learn_many` is the loop of
//! `learn_one` bit for bit, and tests/python/learn_reference.py's `RefSoftmax` gives the same
//! bits) and a versioned JSON document.
//!
//! `C` classes, `k` features; class `c` has its own weights `w_c0 .. w_c(k-1)` and intercept
//! `w_ck` (never regularized), kept class after class. For one example `(x, y)`, `y` the index
//! of the true class:
//!
//! * margins `m_c = (((0 + w_c0 x0) + w_c1 x1) + ...) + w_ck`, class by class;
//! * `mx = m_0`, then `mx = m_c` whenever `m_c > mx` (c = 1, 2, ...); `e_c = exp(m_c - mx)`;
//!   `s = ((0 + e_0) + e_1) + ...`; probabilities `p_c = e_c / s`;
//! * gradient `g_c = p_c - 1` for the true class, `p_c - 0` otherwise;
//! * each class's coordinates are updated exactly as the binary learner's with `g = g_c`
//!   (FTRL: per-coordinate `z`, `n`; SGD: the same `eta` for every class, from the updates so far).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::learn::linear::{ftrl_weight, Optimizer, Schedule};
use crate::learn::rows;

/// The softmax document's `format` value.
pub const SOFTMAX_FORMAT: &str = "rtml.softmax";
/// The softmax document's version (documents of a newer version are refused).
pub const SOFTMAX_VERSION: u32 = 1;

/// A class label as given by the user: an integer or a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassLabel {
    Int(i64),
    Str(String),
}

/// An online softmax regression over dense feature vectors of a fixed length.
#[derive(Clone, Debug)]
pub struct Softmax {
    opt: Optimizer,
    n_features: usize,
    classes: Vec<ClassLabel>,
    updates: u64,
    /// FTRL: `z`; SGD: the weights. `classes.len() * (n_features + 1)` values, class after class.
    a: Vec<f64>,
    /// FTRL: `n`; SGD: empty.
    b: Vec<f64>,
    /// Scratch (not state): FTRL weights of the current example.
    w: Vec<f64>,
    /// Scratch (not state): margins, then probabilities.
    p: Vec<f64>,
}

impl PartialEq for Softmax {
    /// Bit-for-bit equality of the model state (not of the scratch space).
    fn eq(&self, o: &Softmax) -> bool {
        let bits = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        self.opt == o.opt
            && self.n_features == o.n_features
            && self.classes == o.classes
            && self.updates == o.updates
            && bits(&self.a, &o.a)
            && bits(&self.b, &o.b)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    format: String,
    version: u32,
    classes: Vec<ClassLabel>,
    optimizer: Optimizer,
    n_features: usize,
    updates: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    z: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    w: Option<Vec<f64>>,
}

/// Margins in `m` -> probabilities in `m`, in the documented operation order.
#[inline]
fn softmax_in_place(m: &mut [f64]) {
    let mut mx = m.first().copied().unwrap_or(0.0);
    for &v in m.iter().skip(1) {
        if v > mx {
            mx = v;
        }
    }
    let mut s = 0.0;
    for v in m.iter_mut() {
        *v = (*v - mx).exp();
        s += *v;
    }
    for v in m.iter_mut() {
        *v /= s;
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

// Indexed loops on purpose: they spell the per-coordinate equations in the reference's order.
#[allow(clippy::needless_range_loop)]
impl Softmax {
    /// A fresh model (all weights zero): `classes` (at least 2, distinct), vectors of
    /// `n_features` values.
    pub fn new(classes: Vec<ClassLabel>, opt: Optimizer, n_features: usize) -> Result<Softmax> {
        opt.validate()?;
        if classes.len() < 2 {
            return Err(Error::spec(
                "classes",
                format!("expected at least 2 classes, got {}", classes.len()),
            ));
        }
        for (i, c) in classes.iter().enumerate() {
            if classes[..i].contains(c) {
                return Err(Error::spec(
                    "classes",
                    format!("class {c:?} is listed twice"),
                ));
            }
        }
        let len = classes
            .len()
            .checked_mul(n_features + 1)
            .ok_or_else(|| Error::spec("n_features", "too many weights"))?;
        let b = match opt {
            Optimizer::Ftrl { .. } => vec![0.0; len],
            Optimizer::Sgd { .. } => Vec::new(),
        };
        Ok(Softmax {
            opt,
            n_features,
            updates: 0,
            a: vec![0.0; len],
            w: vec![0.0; if b.is_empty() { 0 } else { len }],
            b,
            p: vec![0.0; classes.len()],
            classes,
        })
    }

    pub fn optimizer(&self) -> Optimizer {
        self.opt
    }
    pub fn n_features(&self) -> usize {
        self.n_features
    }
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }
    pub fn classes(&self) -> &[ClassLabel] {
        &self.classes
    }
    /// Number of examples learned.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The weights, class after class, each class's intercept last (`C * (k + 1)` values).
    pub fn weights(&self) -> Vec<f64> {
        match self.opt {
            Optimizer::Sgd { .. } => self.a.clone(),
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
            } => {
                let k1 = self.n_features + 1;
                (0..self.a.len())
                    .map(|j| {
                        let (l1, l2) = if j % k1 == k1 - 1 {
                            (0.0, 0.0)
                        } else {
                            (l1, l2)
                        };
                        ftrl_weight(self.a[j], self.b[j], alpha, beta, l1, l2)
                    })
                    .collect()
            }
        }
    }

    fn check_x(&self, x: &[f64], row: Option<usize>) -> Result<()> {
        rows::check_x(self.n_features, x, row)
    }

    fn check_y(&self, y: i64, row: Option<usize>) -> Result<usize> {
        match usize::try_from(y) {
            Ok(c) if c < self.classes.len() => Ok(c),
            _ => Err(Error::schema(
                "y",
                rows::at(
                    row,
                    format!(
                        "class index {y} out of range: the model has {} classes (0..{})",
                        self.classes.len(),
                        self.classes.len() - 1
                    ),
                ),
            )),
        }
    }

    /// Margins of `x` into `out` (FTRL: from weights computed into `w` when given).
    #[inline]
    fn margins(&self, x: &[f64], out: &mut [f64], mut w: Option<&mut [f64]>) {
        let k = self.n_features;
        let k1 = k + 1;
        for (c, mc) in out.iter_mut().enumerate() {
            let base = c * k1;
            let mut m = 0.0;
            match self.opt {
                Optimizer::Sgd { .. } => {
                    for i in 0..k {
                        m += self.a[base + i] * x[i];
                    }
                    m += self.a[base + k];
                }
                Optimizer::Ftrl {
                    alpha,
                    beta,
                    l1,
                    l2,
                } => {
                    for i in 0..=k {
                        let (l1, l2) = if i == k { (0.0, 0.0) } else { (l1, l2) };
                        let wi =
                            ftrl_weight(self.a[base + i], self.b[base + i], alpha, beta, l1, l2);
                        if let Some(w) = w.as_deref_mut() {
                            w[base + i] = wi;
                        }
                        if i == k {
                            m += wi;
                        } else {
                            m += wi * x[i];
                        }
                    }
                }
            }
            *mc = m;
        }
    }

    /// Class probabilities for `x` (in the order of `classes`).
    pub fn predict_one(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.check_x(x, None)?;
        let mut p = vec![0.0; self.classes.len()];
        self.margins(x, &mut p, None);
        softmax_in_place(&mut p);
        Ok(p)
    }

    /// Probabilities for `rows` vectors laid out row after row in `xs`: `rows * C` values.
    pub fn predict_many(&self, xs: &[f64], rows: usize) -> Result<Vec<f64>> {
        self.check_batch(xs, rows, None)?;
        let (k, nc) = (self.n_features, self.classes.len());
        let mut out = vec![0.0; rows * nc];
        for r in 0..rows {
            let p = &mut out[r * nc..(r + 1) * nc];
            self.margins(&xs[r * k..(r + 1) * k], p, None);
            softmax_in_place(p);
        }
        Ok(out)
    }

    /// One update on checked input; the probabilities before the update go to `out`.
    #[inline]
    fn update(&mut self, x: &[f64], y: usize, out: &mut [f64]) {
        let mut p = std::mem::take(&mut self.p);
        let mut w = std::mem::take(&mut self.w);
        let ftrl = matches!(self.opt, Optimizer::Ftrl { .. });
        self.margins(x, &mut p, if ftrl { Some(w.as_mut_slice()) } else { None });
        softmax_in_place(&mut p);
        let k = self.n_features;
        let k1 = k + 1;
        match self.opt {
            Optimizer::Ftrl { alpha, .. } => {
                for (c, &pc) in p.iter().enumerate() {
                    let g = pc - if c == y { 1.0 } else { 0.0 };
                    let base = c * k1;
                    for i in 0..=k {
                        let xi = if i == k { 1.0 } else { x[i] };
                        let gi = g * xi;
                        let gg = gi * gi;
                        let ni = self.b[base + i];
                        let s = ((ni + gg).sqrt() - ni.sqrt()) / alpha;
                        self.a[base + i] += gi - s * w[base + i];
                        self.b[base + i] = ni + gg;
                    }
                }
            }
            Optimizer::Sgd { schedule, l1, l2 } => {
                let eta = match schedule {
                    Schedule::Constant { eta0 } => eta0,
                    Schedule::InvScaling { eta0, power_t } => {
                        eta0 / ((self.updates + 1) as f64).powf(power_t)
                    }
                };
                let shrink = eta * l1;
                for (c, &pc) in p.iter().enumerate() {
                    let g = pc - if c == y { 1.0 } else { 0.0 };
                    let base = c * k1;
                    for i in 0..k {
                        let wi = self.a[base + i];
                        let wi = wi - eta * (g * x[i] + l2 * wi);
                        self.a[base + i] = if wi > shrink {
                            wi - shrink
                        } else if wi < -shrink {
                            wi + shrink
                        } else {
                            0.0
                        };
                    }
                    self.a[base + k] -= eta * g;
                }
            }
        }
        out.copy_from_slice(&p);
        self.p = p;
        self.w = w;
        self.updates += 1;
    }

    /// Learn one example (`y`: the class index). On bad input (wrong length, NaN / inf, a class
    /// index out of range) a typed error and the model is unchanged. Returns the probabilities
    /// before the update (progressive validation scores them).
    pub fn learn_one(&mut self, x: &[f64], y: i64) -> Result<Vec<f64>> {
        self.check_x(x, None)?;
        let y = self.check_y(y, None)?;
        let mut out = vec![0.0; self.classes.len()];
        self.update(x, y, &mut out);
        Ok(out)
    }

    fn check_batch(&self, xs: &[f64], rows: usize, ys: Option<&[i64]>) -> Result<()> {
        rows::check_batch(self.n_features, xs, rows, ys, |y, r| {
            self.check_y(y, r).map(|_| ())
        })
    }

    /// Learn `rows` examples in order: exactly the loop of `learn_one`. The whole batch is
    /// checked first (on error nothing is learned). Returns the probabilities before each
    /// update, `rows * C` values.
    pub fn learn_many(&mut self, xs: &[f64], ys: &[i64]) -> Result<Vec<f64>> {
        let k = self.n_features;
        let rows = rows::batch_rows(k, xs, ys.len());
        self.check_batch(xs, rows, Some(ys))?;
        let nc = self.classes.len();
        let mut out = vec![0.0; rows * nc];
        for r in 0..rows {
            // checked above: every label is a class index
            let y = ys[r] as usize;
            self.update(&xs[r * k..(r + 1) * k], y, &mut out[r * nc..(r + 1) * nc]);
        }
        Ok(out)
    }

    /// The versioned JSON document of the model.
    pub fn to_json(&self) -> String {
        let (z, n, w) = match self.opt {
            Optimizer::Ftrl { .. } => (Some(self.a.clone()), Some(self.b.clone()), None),
            Optimizer::Sgd { .. } => (None, None, Some(self.a.clone())),
        };
        let doc = Doc {
            format: SOFTMAX_FORMAT.to_string(),
            version: SOFTMAX_VERSION,
            classes: self.classes.clone(),
            optimizer: self.opt,
            n_features: self.n_features,
            updates: self.updates,
            z,
            n,
            w,
        };
        serde_json::to_string(&doc).expect("a model document always serializes")
    }

    /// Read a softmax document. Refused (`Error::Spec` naming the field): another format, a
    /// newer version, unknown fields, missing or mis-sized state, non-finite state.
    pub fn from_json(text: &str) -> Result<Softmax> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::spec("model document", format!("not JSON: {e}")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(SOFTMAX_FORMAT) => {}
            other => {
                return Err(Error::spec(
                    "format",
                    format!("expected {SOFTMAX_FORMAT:?}, got {other:?}"),
                ))
            }
        }
        crate::doc_version::check(&value, "model document", SOFTMAX_VERSION)
            .map_err(|m| Error::spec("version", m))?;
        let doc: Doc = serde_json::from_value(value)
            .map_err(|e| Error::spec("model document", e.to_string()))?;
        let mut m = Softmax::new(doc.classes, doc.optimizer, doc.n_features)?;
        m.updates = doc.updates;
        let len = m.a.len();
        let take = |name: &str, v: Option<Vec<f64>>| -> Result<Vec<f64>> {
            let v = v.ok_or_else(|| Error::spec(name, "missing for this optimizer"))?;
            if v.len() != len {
                return Err(Error::spec(
                    name,
                    format!(
                        "expected {len} values (classes x (n_features + 1)), got {}",
                        v.len()
                    ),
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::spec(name, "holds a non-finite value"));
            }
            Ok(v)
        };
        let extra = |name: &str, v: &Option<Vec<f64>>| {
            if v.is_some() {
                Err(Error::spec(name, "not a field of this optimizer's state"))
            } else {
                Ok(())
            }
        };
        match doc.optimizer {
            Optimizer::Ftrl { .. } => {
                extra("w", &doc.w)?;
                m.a = take("z", doc.z)?;
                m.b = take("n", doc.n)?;
                if m.b.iter().any(|v| *v < 0.0) {
                    return Err(Error::spec(
                        "n",
                        "sums of squared gradients cannot be negative",
                    ));
                }
            }
            Optimizer::Sgd { .. } => {
                extra("z", &doc.z)?;
                extra("n", &doc.n)?;
                m.a = take("w", doc.w)?;
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(n: i64) -> Vec<ClassLabel> {
        (0..n).map(ClassLabel::Int).collect()
    }

    fn ftrl() -> Optimizer {
        Optimizer::Ftrl {
            alpha: 0.1,
            beta: 1.0,
            l1: 0.01,
            l2: 0.1,
        }
    }

    #[test]
    fn probabilities_sum_to_one_and_a_fresh_model_is_uniform() {
        let m = Softmax::new(classes(4), ftrl(), 2).unwrap();
        assert_eq!(m.predict_one(&[1.0, -2.0]).unwrap(), vec![0.25; 4]);
        let mut m = m;
        for _ in 0..20 {
            m.learn_one(&[1.0, 0.0], 2).unwrap();
        }
        let p = m.predict_one(&[1.0, 0.0]).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&p), 2);
    }

    #[test]
    fn a_failed_learn_many_changes_nothing() {
        let mut m = Softmax::new(classes(3), ftrl(), 2).unwrap();
        m.learn_one(&[1.0, 2.0], 1).unwrap();
        let before = m.clone();
        let err = m.learn_many(&[1.0, 2.0, 3.0, 4.0], &[0, 3]).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        let err = m.learn_many(&[1.0, 2.0, 3.0, 4.0], &[-1, 0]).unwrap_err();
        assert!(err.to_string().contains("row 0"), "{err}");
        let err = m
            .learn_many(&[1.0, f64::NAN, 3.0, 4.0], &[0, 0])
            .unwrap_err();
        assert!(err.to_string().contains("x[1]"), "{err}");
        assert_eq!(m, before);
    }

    #[test]
    fn document_round_trips_and_refuses_newer_and_bad_classes() {
        let mut m = Softmax::new(
            vec![ClassLabel::Str("a".into()), ClassLabel::Int(7)],
            ftrl(),
            2,
        )
        .unwrap();
        m.learn_one(&[0.5, -1.0], 1).unwrap();
        let text = m.to_json();
        assert_eq!(Softmax::from_json(&text).unwrap(), m);
        let newer = text.replace("\"version\":1", "\"version\":2");
        assert!(Softmax::from_json(&newer)
            .unwrap_err()
            .to_string()
            .contains("newer"));
        assert!(Softmax::new(vec![ClassLabel::Int(1), ClassLabel::Int(1)], ftrl(), 1).is_err());
        assert!(Softmax::new(classes(1), ftrl(), 1).is_err());
    }
}
