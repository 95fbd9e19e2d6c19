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
use crate::learn::optimizer::{Coefs, Optimizer};
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
    n_features: usize,
    classes: Vec<ClassLabel>,
    updates: u64,
    /// One block of `n_features + 1` coefficients per class, class after class.
    c: Coefs,
    /// Scratch (not state): margins, then probabilities.
    p: Vec<f64>,
}

impl PartialEq for Softmax {
    /// Bit-for-bit equality of the model state (not of the scratch space).
    fn eq(&self, o: &Softmax) -> bool {
        self.n_features == o.n_features
            && self.classes == o.classes
            && self.updates == o.updates
            && self.c.same_bits(&o.c)
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
        Ok(Softmax {
            n_features,
            updates: 0,
            c: Coefs::new(opt, n_features, len),
            p: vec![0.0; classes.len()],
            classes,
        })
    }

    pub fn optimizer(&self) -> Optimizer {
        self.c.optimizer()
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
        self.c.weights()
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

    /// Class probabilities for `x` (in the order of `classes`).
    pub fn predict_one(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.check_x(x, None)?;
        let mut p: Vec<f64> = (0..self.classes.len())
            .map(|c| self.c.margin(c, x))
            .collect();
        softmax_in_place(&mut p);
        Ok(p)
    }

    /// Probabilities for `rows` vectors laid out row after row in `xs`: `rows * C` values.
    pub fn predict_many(&self, xs: &[f64], rows: usize) -> Result<Vec<f64>> {
        self.check_batch(xs, rows, None)?;
        let (k, nc) = (self.n_features, self.classes.len());
        let mut out = vec![0.0; rows * nc];
        for r in 0..rows {
            let (x, p) = (&xs[r * k..(r + 1) * k], &mut out[r * nc..(r + 1) * nc]);
            for (c, pc) in p.iter_mut().enumerate() {
                *pc = self.c.margin(c, x);
            }
            softmax_in_place(p);
        }
        Ok(out)
    }

    /// One update on checked input; the probabilities before the update go to `out`.
    #[inline]
    fn update(&mut self, x: &[f64], y: usize, out: &mut [f64]) {
        let mut p = std::mem::take(&mut self.p);
        for (c, pc) in p.iter_mut().enumerate() {
            *pc = self.c.margin_keep(c, x);
        }
        softmax_in_place(&mut p);
        let eta = self.c.eta(self.updates);
        for (c, &pc) in p.iter().enumerate() {
            self.c.step(c, x, pc - if c == y { 1.0 } else { 0.0 }, eta);
        }
        out.copy_from_slice(&p);
        self.p = p;
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
    pub fn to_json(&self) -> Result<String> {
        let (z, n, w) = self.c.to_doc();
        let doc = Doc {
            format: SOFTMAX_FORMAT.to_string(),
            version: SOFTMAX_VERSION,
            classes: self.classes.clone(),
            optimizer: self.c.optimizer(),
            n_features: self.n_features,
            updates: self.updates,
            z,
            n,
            w,
        };
        crate::doc_version::write(&doc, "model document")
    }

    /// Read a softmax document. Refused (`Error::Spec` naming the field): another format, a
    /// newer version, unknown fields, missing or mis-sized state, non-finite state.
    pub fn from_json(text: &str) -> Result<Softmax> {
        let doc: Doc = crate::learn::optimizer::read_doc(text, SOFTMAX_FORMAT, SOFTMAX_VERSION)?;
        let mut m = Softmax::new(doc.classes, doc.optimizer, doc.n_features)?;
        m.updates = doc.updates;
        let len = m.classes.len() * (doc.n_features + 1);
        m.c = Coefs::from_doc(
            doc.optimizer,
            doc.n_features,
            len,
            "classes x (n_features + 1)",
            (doc.z, doc.n, doc.w),
        )?;
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
        let text = m.to_json().unwrap();
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
