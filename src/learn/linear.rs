//! Online linear models: logistic regression (log loss) and linear regression (squared loss),
//! trained with FTRL-Proximal (McMahan et al. 2013, "Ad Click Prediction: a View from the
//! Trenches", Algorithm 1, per-coordinate learning rates) or with plain SGD.
//!
//! Determinism: every update is a fixed sequence of IEEE operations in coordinate order (no
//! fused multiply-add, no parallelism), so `learn_many` is the loop of `learn_one` bit for bit
//! and a slow reference written with the same operation order (tests/python/learn_reference.py)
//! gives the same bits.
//!
//! The update equations, for one example `(x, y)` with `x` of length `k` and an intercept kept
//! as coordinate `k` with input 1 (the intercept is never regularized):
//!
//! * margin `m = (((0 + w0*x0) + w1*x1) + ...) + wk`; prediction `p = 1 / (1 + exp(-m))`
//!   (logistic, `m` clamped to [-35, 35]) or `p = m` (squared); gradient `g = p - y`.
//! * FTRL: `w_i = 0` if `|z_i| <= l1`, else `-(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)`;
//!   then `g_i = g x_i`, `s = (sqrt(n_i + g_i g_i) - sqrt(n_i)) / alpha`,
//!   `z_i += g_i - s w_i`, `n_i += g_i g_i`.
//! * SGD: `eta = eta0` (constant) or `eta0 / (t + 1)^power_t` (inverse scaling, `t` = updates so
//!   far); `w_i = w_i - eta (g x_i + l2 w_i)`, then the L1 step `w_i = sign(w_i) max(0, |w_i| - eta l1)`;
//!   intercept `w_k = w_k - eta g`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::learn::optimizer::Coefs;
pub use crate::learn::optimizer::{Optimizer, Schedule};
use crate::learn::rows;

/// The model document's `format` value.
pub const MODEL_FORMAT: &str = "rtml.linear";
/// The model document's version (documents of a newer version are refused).
pub const MODEL_VERSION: u32 = 1;

/// Margin clamp of the logistic link (exp stays finite, p stays strictly inside (0, 1)).
const MARGIN_CLAMP: f64 = 35.0;

/// The loss, i.e. the model: logistic regression or linear (least-squares) regression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    Logistic,
    Squared,
}

/// An online linear model over dense feature vectors of a fixed length.
#[derive(Clone, Debug)]
pub struct Linear {
    loss: Loss,
    n_features: usize,
    /// Updates applied so far.
    updates: u64,
    /// One block of `n_features + 1` coefficients, the intercept last.
    c: Coefs,
}

impl PartialEq for Linear {
    /// Bit-for-bit equality of the model state (not of the scratch space).
    fn eq(&self, o: &Linear) -> bool {
        self.loss == o.loss
            && self.n_features == o.n_features
            && self.updates == o.updates
            && self.c.same_bits(&o.c)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    format: String,
    version: u32,
    loss: Loss,
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

#[inline]
fn sigmoid(m: f64) -> f64 {
    let m = m.clamp(-MARGIN_CLAMP, MARGIN_CLAMP);
    1.0 / (1.0 + (-m).exp())
}

// Indexed loops on purpose: they spell the per-coordinate equations in the order the reference
// (tests/python/learn_reference.py) follows.
#[allow(clippy::needless_range_loop)]
impl Linear {
    /// A fresh model (all weights zero) for vectors of `n_features` values.
    pub fn new(loss: Loss, opt: Optimizer, n_features: usize) -> Result<Linear> {
        opt.validate()?;
        Ok(Linear {
            loss,
            n_features,
            updates: 0,
            c: Coefs::new(opt, n_features, n_features + 1),
        })
    }

    pub fn loss(&self) -> Loss {
        self.loss
    }
    pub fn optimizer(&self) -> Optimizer {
        self.c.optimizer()
    }
    pub fn n_features(&self) -> usize {
        self.n_features
    }
    /// Number of examples learned.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The current weights (the intercept last).
    pub fn weights(&self) -> Vec<f64> {
        self.c.weights()
    }

    /// Check one feature vector (length, finite values). `row`: the row index in a batch.
    fn check_x(&self, x: &[f64], row: Option<usize>) -> Result<()> {
        rows::check_x(self.n_features, x, row)
    }

    fn check_y(&self, y: f64, row: Option<usize>) -> Result<()> {
        let at = |what: String| rows::at(row, what);
        if !y.is_finite() {
            return Err(Error::schema(
                "y",
                at(format!("labels must be finite, got {y}")),
            ));
        }
        if self.loss == Loss::Logistic && y != 0.0 && y != 1.0 {
            return Err(Error::schema(
                "y",
                at(format!(
                    "logistic regression labels must be 0 or 1, got {y}"
                )),
            ));
        }
        Ok(())
    }

    #[inline]
    fn link(&self, m: f64) -> f64 {
        match self.loss {
            Loss::Logistic => sigmoid(m),
            Loss::Squared => m,
        }
    }

    /// The prediction for `x`: P(y = 1) (logistic) or the regression value (squared).
    pub fn predict_one(&self, x: &[f64]) -> Result<f64> {
        self.check_x(x, None)?;
        Ok(self.link(self.c.margin(0, x)))
    }

    /// Predictions for `rows` vectors laid out row after row in `xs`.
    pub fn predict_many(&self, xs: &[f64], rows: usize) -> Result<Vec<f64>> {
        self.check_batch(xs, rows, None)?;
        let k = self.n_features;
        Ok((0..rows)
            .map(|r| self.link(self.c.margin(0, &xs[r * k..(r + 1) * k])))
            .collect())
    }

    /// One update on checked input; returns the prediction made before the update.
    #[inline]
    fn update(&mut self, x: &[f64], y: f64) -> f64 {
        let p = {
            let m = self.c.margin_keep(0, x);
            self.link(m)
        };
        let eta = self.c.eta(self.updates);
        self.c.step(0, x, p - y, eta);
        self.updates += 1;
        p
    }

    /// Learn one example. On bad input (wrong length, NaN / inf, a logistic label other than
    /// 0 / 1) a typed error and the model is unchanged. Returns the prediction made before the
    /// update (progressive validation scores it).
    pub fn learn_one(&mut self, x: &[f64], y: f64) -> Result<f64> {
        self.check_x(x, None)?;
        self.check_y(y, None)?;
        Ok(self.update(x, y))
    }

    fn check_batch(&self, xs: &[f64], rows: usize, ys: Option<&[f64]>) -> Result<()> {
        rows::check_batch(self.n_features, xs, rows, ys, |y, r| self.check_y(y, r))
    }

    /// Learn `rows` examples (vectors row after row in `xs`), in order: exactly the loop of
    /// `learn_one`. The whole batch is checked first: on error nothing is learned. Returns the
    /// predictions made before each update.
    pub fn learn_many(&mut self, xs: &[f64], ys: &[f64]) -> Result<Vec<f64>> {
        let k = self.n_features;
        let rows = rows::batch_rows(k, xs, ys.len());
        self.check_batch(xs, rows, Some(ys))?;
        Ok((0..rows)
            .map(|r| self.update(&xs[r * k..(r + 1) * k], ys[r]))
            .collect())
    }

    /// The versioned JSON document of the model (the saved artifact and the pickle state).
    pub fn to_json(&self) -> Result<String> {
        let (z, n, w) = self.c.to_doc();
        let doc = Doc {
            format: MODEL_FORMAT.to_string(),
            version: MODEL_VERSION,
            loss: self.loss,
            optimizer: self.c.optimizer(),
            n_features: self.n_features,
            updates: self.updates,
            z,
            n,
            w,
        };
        crate::doc_version::write(&doc, "model document")
    }

    /// Read a model document. Refused (`Error::Spec` naming the field): another format, a newer
    /// version, unknown fields, missing or mis-sized state, non-finite state.
    pub fn from_json(text: &str) -> Result<Linear> {
        let doc: Doc = crate::learn::optimizer::read_doc(text, MODEL_FORMAT, MODEL_VERSION)?;
        let mut m = Linear::new(doc.loss, doc.optimizer, doc.n_features)?;
        m.updates = doc.updates;
        let k = doc.n_features;
        m.c = Coefs::from_doc(
            doc.optimizer,
            k,
            k + 1,
            "n_features + 1",
            (doc.z, doc.n, doc.w),
        )?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ftrl() -> Optimizer {
        Optimizer::Ftrl {
            alpha: 0.1,
            beta: 1.0,
            l1: 0.01,
            l2: 0.1,
        }
    }

    #[test]
    fn a_failed_learn_many_changes_nothing() {
        let mut m = Linear::new(Loss::Logistic, ftrl(), 2).unwrap();
        m.learn_one(&[1.0, 2.0], 1.0).unwrap();
        let before = m.clone();
        let err = m
            .learn_many(&[1.0, 2.0, 3.0, f64::NAN], &[0.0, 1.0])
            .unwrap_err();
        assert!(err.to_string().contains("x[1]"), "{err}");
        assert_eq!(m, before);
        let err = m
            .learn_many(&[1.0, 2.0, 3.0, 4.0], &[0.0, 0.5])
            .unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert_eq!(m, before);
    }

    #[test]
    fn document_round_trips_and_refuses_newer_and_unknown() {
        let mut m = Linear::new(Loss::Squared, ftrl(), 3).unwrap();
        m.learn_one(&[0.1, -0.2, 3.0], 0.7).unwrap();
        let text = m.to_json().unwrap();
        assert_eq!(Linear::from_json(&text).unwrap(), m);
        let newer = text.replace("\"version\":1", "\"version\":2");
        assert!(Linear::from_json(&newer)
            .unwrap_err()
            .to_string()
            .contains("newer"));
        let unknown = text.replacen('{', "{\"extra\":1,", 1);
        assert!(Linear::from_json(&unknown)
            .unwrap_err()
            .to_string()
            .contains("extra"));
    }
}
