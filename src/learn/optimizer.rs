//! The optimizers the online learners share ([`super::linear::Linear`],
//! [`super::softmax::Softmax`]): their hyper-parameters ([`Optimizer`], [`Schedule`]) and the
//! coefficients they train (`Coefs`).
//!
//! The coefficients are laid out in blocks of `k + 1` values, `k` feature weights and then the
//! intercept (never regularized): one block for a binary or regression model, one per class for
//! softmax. FTRL keeps `z` and `n` per coordinate (`a`, `b`) and computes the weights of an
//! example on the fly; SGD keeps the weights themselves in `a`. Every step is a fixed sequence
//! of IEEE operations in coordinate order, the order tests/python/learn_reference.py follows.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The SGD learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `eta = eta0`.
    Constant { eta0: f64 },
    /// `eta = eta0 / (t + 1)^power_t`, `t` the number of updates so far.
    InvScaling { eta0: f64, power_t: f64 },
}

/// How the weights are updated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// FTRL-Proximal with per-coordinate learning rates.
    Ftrl {
        alpha: f64,
        beta: f64,
        l1: f64,
        l2: f64,
    },
    /// Plain SGD with L2 (weight decay) and L1 (soft threshold) penalties.
    Sgd {
        schedule: Schedule,
        l1: f64,
        l2: f64,
    },
}

impl Optimizer {
    /// Check the hyper-parameters (finite; alpha, eta0 > 0; the rest >= 0).
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::spec(
                    name,
                    format!("must be a finite number > 0, got {v}"),
                ))
            }
        };
        let nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::spec(
                    name,
                    format!("must be a finite number >= 0, got {v}"),
                ))
            }
        };
        match *self {
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
            } => {
                pos("alpha", alpha)?;
                nonneg("beta", beta)?;
                nonneg("l1", l1)?;
                nonneg("l2", l2)
            }
            Optimizer::Sgd { schedule, l1, l2 } => {
                match schedule {
                    Schedule::Constant { eta0 } => pos("eta0", eta0)?,
                    Schedule::InvScaling { eta0, power_t } => {
                        pos("eta0", eta0)?;
                        nonneg("power_t", power_t)?
                    }
                }
                nonneg("l1", l1)?;
                nonneg("l2", l2)
            }
        }
    }
}

#[inline]
pub(crate) fn ftrl_weight(z: f64, n: f64, alpha: f64, beta: f64, l1: f64, l2: f64) -> f64 {
    if z.abs() <= l1 {
        0.0
    } else {
        let sign = if z > 0.0 { 1.0 } else { -1.0 };
        -(z - sign * l1) / ((beta + n.sqrt()) / alpha + l2)
    }
}

/// A model document `text` of `format` (its "format" field) as `T`, refused with `Error::Spec`
/// naming the field: not JSON, another format, a version newer than `version` (or none), or
/// fields `T` does not read. The one reader of every model document (`Linear`, `Softmax`).
pub(crate) fn read_doc<T: serde::de::DeserializeOwned>(
    text: &str,
    format: &str,
    version: u32,
) -> Result<T> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::spec("model document", format!("not JSON: {e}")))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(f) if f == format => {}
        other => {
            return Err(Error::spec(
                "format",
                format!("expected {format:?}, got {other:?}"),
            ))
        }
    }
    crate::doc_version::check(&value, "model document", version)
        .map_err(|m| Error::spec("version", m))?;
    serde_json::from_value(value).map_err(|e| Error::spec("model document", e.to_string()))
}

/// A model document's optimizer state fields `(z, n, w)`: FTRL writes `z` and `n`, SGD `w`.
pub(crate) type DocState = (Option<Vec<f64>>, Option<Vec<f64>>, Option<Vec<f64>>);

/// The trained coefficients of `blocks` blocks of `k + 1` values, and the optimizer's scratch.
#[derive(Clone, Debug)]
pub(crate) struct Coefs {
    opt: Optimizer,
    /// `k`: the features per block (each block has `k + 1` coefficients, the intercept last).
    k: usize,
    /// FTRL: `z`. SGD: the weights.
    a: Vec<f64>,
    /// FTRL: `n`, the sums of squared gradients. SGD: empty.
    b: Vec<f64>,
    /// FTRL scratch (not state): the weights of the current example, from [`Coefs::margin_keep`].
    w: Vec<f64>,
}

// Indexed loops on purpose: they spell the per-coordinate equations in the reference's order.
#[allow(clippy::needless_range_loop)]
impl Coefs {
    /// All-zero coefficients (the optimizer already validated). `len`: `blocks * (k + 1)`.
    pub(crate) fn new(opt: Optimizer, k: usize, len: usize) -> Coefs {
        let ftrl = matches!(opt, Optimizer::Ftrl { .. });
        let state = |on: bool| if on { vec![0.0; len] } else { Vec::new() };
        Coefs {
            opt,
            k,
            a: vec![0.0; len],
            b: state(ftrl),
            w: state(ftrl),
        }
    }

    pub(crate) fn optimizer(&self) -> Optimizer {
        self.opt
    }

    /// Bit-for-bit equality of the state (not of the scratch space).
    pub(crate) fn same_bits(&self, o: &Coefs) -> bool {
        let bits = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        self.opt == o.opt && self.k == o.k && bits(&self.a, &o.a) && bits(&self.b, &o.b)
    }

    /// The weights, block after block, each block's intercept last.
    pub(crate) fn weights(&self) -> Vec<f64> {
        match self.opt {
            Optimizer::Sgd { .. } => self.a.clone(),
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
            } => {
                let k1 = self.k + 1;
                (0..self.a.len())
                    .map(|j| {
                        let (l1, l2) = if j % k1 == self.k {
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

    /// The margin of block `block` for `x` (already checked: `k` finite values), a read.
    #[inline]
    pub(crate) fn margin(&self, block: usize, x: &[f64]) -> f64 {
        let r = block * (self.k + 1)..(block + 1) * (self.k + 1);
        let b = if self.b.is_empty() {
            &[][..]
        } else {
            &self.b[r.clone()]
        };
        margin(self.opt, &self.a[r], b, x, None)
    }

    /// The margin of block `block`, keeping the FTRL weights it computed for [`Coefs::step`].
    #[inline]
    pub(crate) fn margin_keep(&mut self, block: usize, x: &[f64]) -> f64 {
        let r = block * (self.k + 1)..(block + 1) * (self.k + 1);
        match self.opt {
            Optimizer::Sgd { .. } => margin(self.opt, &self.a[r], &[], x, None),
            Optimizer::Ftrl { .. } => margin(
                self.opt,
                &self.a[r.clone()],
                &self.b[r.clone()],
                x,
                Some(&mut self.w[r]),
            ),
        }
    }

    /// The SGD learning rate of the next update, `updates` updates done so far (FTRL: unused).
    #[inline]
    pub(crate) fn eta(&self, updates: u64) -> f64 {
        match self.opt {
            Optimizer::Ftrl { .. } => 0.0,
            Optimizer::Sgd { schedule, .. } => match schedule {
                Schedule::Constant { eta0 } => eta0,
                Schedule::InvScaling { eta0, power_t } => {
                    eta0 / ((updates + 1) as f64).powf(power_t)
                }
            },
        }
    }

    /// Update block `block` by the gradient `g` of the margin at `x` (FTRL: after
    /// [`Coefs::margin_keep`] of the same block; SGD: at the rate `eta`).
    #[inline]
    pub(crate) fn step(&mut self, block: usize, x: &[f64], g: f64, eta: f64) {
        let k = self.k;
        let base = block * (k + 1);
        match self.opt {
            Optimizer::Ftrl { alpha, .. } => {
                for i in 0..=k {
                    let j = base + i;
                    let xi = if i == k { 1.0 } else { x[i] };
                    let gi = g * xi;
                    let gg = gi * gi;
                    let ni = self.b[j];
                    let s = ((ni + gg).sqrt() - ni.sqrt()) / alpha;
                    self.a[j] += gi - s * self.w[j];
                    self.b[j] = ni + gg;
                }
            }
            Optimizer::Sgd { l1, l2, .. } => {
                let shrink = eta * l1;
                for i in 0..k {
                    let j = base + i;
                    let wi = self.a[j];
                    let wi = wi - eta * (g * x[i] + l2 * wi);
                    self.a[j] = if wi > shrink {
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

    /// The model document's state fields `(z, n, w)`: FTRL writes `z` and `n`, SGD `w`.
    pub(crate) fn to_doc(&self) -> DocState {
        match self.opt {
            Optimizer::Ftrl { .. } => (Some(self.a.clone()), Some(self.b.clone()), None),
            Optimizer::Sgd { .. } => (None, None, Some(self.a.clone())),
        }
    }

    /// Coefficients from a model document's state fields, refused (`Error::Spec` naming the
    /// field) when missing, not of this optimizer, mis-sized (`shape` says what `len` counts),
    /// non-finite, or (FTRL `n`) negative.
    pub(crate) fn from_doc(
        opt: Optimizer,
        k: usize,
        len: usize,
        shape: &str,
        (z, n, w): DocState,
    ) -> Result<Coefs> {
        let take = |name: &str, v: Option<Vec<f64>>| -> Result<Vec<f64>> {
            let v = v.ok_or_else(|| Error::spec(name, "missing for this optimizer"))?;
            if v.len() != len {
                return Err(Error::spec(
                    name,
                    format!("expected {len} values ({shape}), got {}", v.len()),
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
        let mut c = Coefs::new(opt, k, len);
        match opt {
            Optimizer::Ftrl { .. } => {
                extra("w", &w)?;
                c.a = take("z", z)?;
                c.b = take("n", n)?;
                if c.b.iter().any(|v| *v < 0.0) {
                    return Err(Error::spec(
                        "n",
                        "sums of squared gradients cannot be negative",
                    ));
                }
            }
            Optimizer::Sgd { .. } => {
                extra("z", &z)?;
                extra("n", &n)?;
                c.a = take("w", w)?;
            }
        }
        Ok(c)
    }
}

/// The margin `(((0 + w0 x0) + w1 x1) + ...) + wk` of one block (`a`, `b`: its `k + 1`
/// coefficients; `b` empty for SGD), writing the FTRL weights to `keep` when given.
#[inline]
#[allow(clippy::needless_range_loop)]
fn margin(opt: Optimizer, a: &[f64], b: &[f64], x: &[f64], mut keep: Option<&mut [f64]>) -> f64 {
    let k = x.len();
    let mut m = 0.0;
    match opt {
        Optimizer::Sgd { .. } => {
            for i in 0..k {
                m += a[i] * x[i];
            }
            m += a[k];
        }
        Optimizer::Ftrl {
            alpha,
            beta,
            l1,
            l2,
        } => {
            for i in 0..k {
                let wi = ftrl_weight(a[i], b[i], alpha, beta, l1, l2);
                if let Some(w) = keep.as_deref_mut() {
                    w[i] = wi;
                }
                m += wi * x[i];
            }
            let wb = ftrl_weight(a[k], b[k], alpha, beta, 0.0, 0.0);
            if let Some(w) = keep {
                w[k] = wb;
            }
            m += wb;
        }
    }
    m
}
