//! Progressive validation metrics (test-then-train): each example is scored by the model
//! before it is learned, and the scores are kept by event time (the example's release time).
//!
//! `Progressive` keeps the scored rows of a rolling window `(t_last - window, t_last]` (or of
//! the whole stream when `window` is `None`) and computes, on demand, log loss, ROC AUC (ties
//! counted half, as scikit-learn's `roc_auc_score`), mean squared error and a calibration table.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// Predictions are clipped to `[EPS, 1 - EPS]` in the log loss (scikit-learn's rule for float64).
pub const EPS: f64 = f64::EPSILON;

/// One calibration bin: predictions in `[lo, hi)` (the last bin includes 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: u64,
    pub mean_prediction: f64,
    pub mean_label: f64,
}

/// Rolling progressive-validation metrics by event time.
#[derive(Clone, Debug)]
pub struct Progressive {
    window: Option<i64>,
    rows: VecDeque<(i64, f64, f64)>,
    last: Option<i64>,
    seen: u64,
}

impl Progressive {
    /// `window`: nanoseconds of event time kept (None: the whole stream).
    pub fn new(window: Option<i64>) -> Result<Progressive> {
        if let Some(w) = window {
            if w <= 0 {
                return Err(Error::spec("window", format!("must be > 0, got {w} ns")));
            }
        }
        Ok(Progressive {
            window,
            rows: VecDeque::new(),
            last: None,
            seen: 0,
        })
    }

    /// Record one scored example: event time `t` (ns), prediction `p`, label `y` (finite).
    /// Times may go backwards (the window is cut at the largest time seen).
    pub fn add(&mut self, t: i64, p: f64, y: f64) {
        self.seen += 1;
        self.rows.push_back((t, p, y));
        let last = self.last.map_or(t, |l| l.max(t));
        self.last = Some(last);
        if let Some(w) = self.window {
            let cut = last.saturating_sub(w);
            while self.rows.front().is_some_and(|r| r.0 <= cut) {
                self.rows.pop_front();
            }
            // rows that arrived out of time order and fell out of the window
            if self.rows.iter().any(|r| r.0 <= cut) {
                self.rows.retain(|r| r.0 > cut);
            }
        }
    }

    /// Rows in the window.
    pub fn count(&self) -> usize {
        self.rows.len()
    }
    /// Rows ever recorded.
    pub fn seen(&self) -> u64 {
        self.seen
    }
    /// The largest event time recorded.
    pub fn last_time(&self) -> Option<i64> {
        self.last
    }

    /// The window's rows as (time, prediction, label), in the order recorded.
    pub fn rows(&self) -> impl Iterator<Item = &(i64, f64, f64)> {
        self.rows.iter()
    }

    /// Mean log loss over the window (predictions clipped to `[EPS, 1 - EPS]`); None when empty.
    pub fn log_loss(&self) -> Option<f64> {
        if self.rows.is_empty() {
            return None;
        }
        let mut s = 0.0;
        for &(_, p, y) in &self.rows {
            let p = p.clamp(EPS, 1.0 - EPS);
            s -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
        }
        Some(s / self.rows.len() as f64)
    }

    /// Mean squared error over the window; None when empty.
    pub fn mse(&self) -> Option<f64> {
        if self.rows.is_empty() {
            return None;
        }
        let mut s = 0.0;
        for &(_, p, y) in &self.rows {
            s += (p - y) * (p - y);
        }
        Some(s / self.rows.len() as f64)
    }

    /// ROC AUC over the window (label > 0.5 is positive; tied predictions count half); None
    /// unless both classes are present.
    pub fn auc(&self) -> Option<f64> {
        let mut v: Vec<(f64, bool)> = self.rows.iter().map(|&(_, p, y)| (p, y > 0.5)).collect();
        let pos = v.iter().filter(|r| r.1).count();
        let neg = v.len() - pos;
        if pos == 0 || neg == 0 {
            return None;
        }
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        // sum of the positives' ranks, ties given their average rank
        let mut rank_sum = 0.0;
        let mut i = 0;
        while i < v.len() {
            let mut j = i;
            while j < v.len() && v[j].0 == v[i].0 {
                j += 1;
            }
            let avg = (i + 1 + j) as f64 / 2.0;
            let p = v[i..j].iter().filter(|r| r.1).count();
            rank_sum += avg * p as f64;
            i = j;
        }
        let (pos, neg) = (pos as f64, neg as f64);
        Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
    }

    /// Calibration table: `bins` equal-width bins of the prediction over [0, 1] (predictions
    /// outside are put in the first / last bin); empty bins are included with count 0.
    pub fn calibration(&self, bins: usize) -> Result<Vec<Bin>> {
        if bins == 0 {
            return Err(Error::spec("bins", "must be >= 1"));
        }
        let mut n = vec![0u64; bins];
        let mut sp = vec![0.0; bins];
        let mut sy = vec![0.0; bins];
        for &(_, p, y) in &self.rows {
            let b = ((p * bins as f64).floor().max(0.0) as usize).min(bins - 1);
            n[b] += 1;
            sp[b] += p;
            sy[b] += y;
        }
        Ok((0..bins)
            .map(|b| Bin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count: n[b],
                mean_prediction: if n[b] > 0 {
                    sp[b] / n[b] as f64
                } else {
                    f64::NAN
                },
                mean_label: if n[b] > 0 {
                    sy[b] / n[b] as f64
                } else {
                    f64::NAN
                },
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_half_and_window_cuts_by_time() {
        let mut m = Progressive::new(Some(10)).unwrap();
        m.add(0, 0.9, 0.0); // falls out of the window below
        m.add(5, 0.2, 0.0);
        m.add(6, 0.5, 1.0);
        m.add(7, 0.5, 0.0);
        m.add(10, 0.8, 1.0);
        assert_eq!(m.count(), 4);
        // pairs (pos, neg): (0.5,0.2)=1, (0.5,0.5)=0.5, (0.8,0.2)=1, (0.8,0.5)=1 -> 3.5 / 4
        assert_eq!(m.auc(), Some(3.5 / 4.0));
    }
}
