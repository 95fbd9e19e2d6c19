//! Progressive validation metrics (test-then-train): each example is scored by the model
//! before it is learned, and the scores are kept by event time (the example's release time).
//!
//! `Progressive` keeps the scored rows of a rolling window `(t_last - window, t_last]` (or of
//! the whole stream when `window` is `None`) and computes, on demand, log loss, ROC AUC (ties
//! counted half, as scikit-learn's `roc_auc_score`), mean squared error and a calibration table.
//! `ProgressiveMulticlass` does the same for a multiclass model: log loss, accuracy and the
//! one-vs-rest macro ROC AUC (as scikit-learn's `roc_auc_score(multi_class="ovr")`).
//!
//! Both survive restarts: `to_bytes` / `from_bytes` carry the whole state (the window's rows,
//! the largest time, the count), so a restored run's metrics equal an uninterrupted run's bit
//! for bit. Format: magic (`RTPM` binary, `RTPC` multiclass), version, CRC-32, length, bincode.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::frame;
use crate::error::{Error, Result};

/// The binary metrics snapshot's format version.
pub const METRICS_VERSION: u32 = 1;
/// The multiclass metrics snapshot's format version: 2 since session 9 (each row keeps every
/// class's probability and the true class, for the AUC); version 1 (the true class's
/// probability and the hit only) is still read, its rows without the probabilities.
pub const MULTICLASS_VERSION: u32 = 2;

fn snapshot_error(message: String) -> Error {
    Error::Snapshot {
        path: "<metrics bytes>".into(),
        message,
    }
}

fn seal<T: Serialize>(magic: &[u8; 4], version: u32, v: &T) -> Result<Vec<u8>> {
    frame::seal(magic, version, v, snapshot_error)
}

/// The version and body of a snapshot under `magic` with a version in `span`.
fn open<'a>(magic: &[u8; 4], bytes: &'a [u8], span: (u32, u32)) -> Result<(u32, &'a [u8])> {
    let what = format!("a {} metrics snapshot", String::from_utf8_lossy(magic));
    frame::unseal(magic, bytes, span, &what, snapshot_error)
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T> {
    bincode::deserialize(body).map_err(|e| snapshot_error(format!("cannot decode: {e}")))
}

fn check_window(window: Option<i64>) -> Result<()> {
    if let Some(w) = window {
        if w <= 0 {
            return Err(Error::spec("window", format!("must be > 0, got {w} ns")));
        }
    }
    Ok(())
}

/// Push `row` (time first) and cut the window at the largest time seen. `in_order`: the rows
/// are known to be in time order (false is always safe: it costs one scan of the window).
fn push_row<R>(
    rows: &mut VecDeque<(i64, R)>,
    last: &mut Option<i64>,
    in_order: &mut bool,
    window: Option<i64>,
    t: i64,
    row: R,
) {
    *in_order = *in_order && rows.back().is_none_or(|b| b.0 <= t);
    rows.push_back((t, row));
    let l = last.map_or(t, |l| l.max(t));
    *last = Some(l);
    if let Some(w) = window {
        let cut = l.saturating_sub(w);
        while rows.front().is_some_and(|r| r.0 <= cut) {
            rows.pop_front();
        }
        if !*in_order {
            // rows that arrived out of time order and fell out of the window (in time order,
            // the loop above removed every one)
            if rows.iter().any(|r| r.0 <= cut) {
                rows.retain(|r| r.0 > cut);
            }
            *in_order = rows
                .iter()
                .zip(rows.iter().skip(1))
                .all(|(a, b)| a.0 <= b.0);
        }
    }
}

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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progressive {
    window: Option<i64>,
    rows: VecDeque<(i64, (f64, f64))>,
    last: Option<i64>,
    seen: u64,
    /// The rows are known to be in time order (not state: false after a restore).
    #[serde(skip)]
    in_order: bool,
}

impl Progressive {
    /// `window`: nanoseconds of event time kept (None: the whole stream).
    pub fn new(window: Option<i64>) -> Result<Progressive> {
        check_window(window)?;
        Ok(Progressive {
            window,
            rows: VecDeque::new(),
            last: None,
            seen: 0,
            in_order: true,
        })
    }

    /// Record one scored example: event time `t` (ns), prediction `p`, label `y` (finite).
    /// Times may go backwards (the window is cut at the largest time seen).
    pub fn add(&mut self, t: i64, p: f64, y: f64) {
        self.seen += 1;
        push_row(
            &mut self.rows,
            &mut self.last,
            &mut self.in_order,
            self.window,
            t,
            (p, y),
        );
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
    pub fn rows(&self) -> impl Iterator<Item = (i64, f64, f64)> + '_ {
        self.rows.iter().map(|&(t, (p, y))| (t, p, y))
    }

    /// Mean log loss over the window (predictions clipped to `[EPS, 1 - EPS]`); None when empty.
    pub fn log_loss(&self) -> Option<f64> {
        if self.rows.is_empty() {
            return None;
        }
        let mut s = 0.0;
        for &(_, (p, y)) in &self.rows {
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
        for &(_, (p, y)) in &self.rows {
            s += (p - y) * (p - y);
        }
        Some(s / self.rows.len() as f64)
    }

    /// ROC AUC over the window (label > 0.5 is positive; tied predictions count half); None
    /// unless both classes are present.
    pub fn auc(&self) -> Option<f64> {
        let mut v: Vec<(f64, bool)> = self.rows.iter().map(|&(_, (p, y))| (p, y > 0.5)).collect();
        binary_auc(&mut v)
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
        for &(_, (p, y)) in &self.rows {
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

impl Progressive {
    /// The whole state as bytes (see the module doc).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        seal(MAGIC_BINARY, METRICS_VERSION, self)
    }

    /// Metrics from [`Progressive::to_bytes`]; anything else is a typed error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Progressive> {
        let span = (METRICS_VERSION, METRICS_VERSION);
        let m: Progressive = decode(open(MAGIC_BINARY, bytes, span)?.1)?;
        check_window(m.window).map_err(|e| snapshot_error(e.to_string()))?;
        if m.rows
            .iter()
            .any(|r| !r.1 .0.is_finite() || !r.1 .1.is_finite())
            || (m.seen as usize) < m.rows.len()
        {
            return Err(snapshot_error("invalid rows".into()));
        }
        Ok(m)
    }
}

/// ROC AUC of (score, positive) pairs (sorted in place); ties count half; None unless both
/// classes are present.
fn binary_auc(v: &mut [(f64, bool)]) -> Option<f64> {
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

const MAGIC_BINARY: &[u8; 4] = b"RTPM";
const MAGIC_MULTICLASS: &[u8; 4] = b"RTPC";

/// One scored row of a multiclass model.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClassRow {
    /// The probability given to the true class.
    pt: f64,
    /// Whether the most probable class (the first on ties) was the true one.
    hit: bool,
    /// The true class index.
    y: u32,
    /// Every class's probability; empty for a row read from a version 1 snapshot (which did
    /// not keep them: no AUC while such a row is in the window).
    p: Box<[f64]>,
}

/// Rolling progressive-validation metrics of a multiclass model by event time (one
/// [`ClassRow`] per scored example).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgressiveMulticlass {
    window: Option<i64>,
    rows: VecDeque<(i64, ClassRow)>,
    last: Option<i64>,
    seen: u64,
    /// The rows are known to be in time order (not state: false after a restore).
    #[serde(skip)]
    in_order: bool,
}

impl ProgressiveMulticlass {
    /// `window`: nanoseconds of event time kept (None: the whole stream).
    pub fn new(window: Option<i64>) -> Result<ProgressiveMulticlass> {
        check_window(window)?;
        Ok(ProgressiveMulticlass {
            window,
            rows: VecDeque::new(),
            last: None,
            seen: 0,
            in_order: true,
        })
    }

    /// Record one scored example: event time `t`, the class probabilities `p`, the true class
    /// index `y` (`y < p.len()`, checked by the caller; an index out of range counts as a
    /// wrong answer with probability 0).
    pub fn add(&mut self, t: i64, p: &[f64], y: usize) {
        self.seen += 1;
        let pt = p.get(y).copied().unwrap_or(0.0);
        let hit = y < p.len() && crate::learn::softmax::argmax(p) == y;
        let row = ClassRow {
            pt,
            hit,
            y: u32::try_from(y).unwrap_or(u32::MAX),
            p: p.into(),
        };
        push_row(
            &mut self.rows,
            &mut self.last,
            &mut self.in_order,
            self.window,
            t,
            row,
        );
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

    /// Mean log loss `-ln p(true class)` over the window (probabilities clipped to
    /// `[EPS, 1 - EPS]`); None when empty.
    pub fn log_loss(&self) -> Option<f64> {
        if self.rows.is_empty() {
            return None;
        }
        let mut s = 0.0;
        for (_, r) in &self.rows {
            s -= r.pt.clamp(EPS, 1.0 - EPS).ln();
        }
        Some(s / self.rows.len() as f64)
    }

    /// Share of the window's rows whose most probable class was the true one; None when empty.
    pub fn accuracy(&self) -> Option<f64> {
        if self.rows.is_empty() {
            return None;
        }
        let hits = self.rows.iter().filter(|r| r.1.hit).count();
        Some(hits as f64 / self.rows.len() as f64)
    }

    /// One-vs-rest macro ROC AUC over the window: the mean over classes `c` of the AUC of
    /// `p_c` for "the true class is `c`" (ties count half), as scikit-learn's
    /// `roc_auc_score(y, P, multi_class="ovr", average="macro")`. None unless every class
    /// occurs in the window (scikit-learn raises then), or while a row read from a version 1
    /// snapshot (without its probabilities) is in it.
    pub fn auc(&self) -> Option<f64> {
        let c = self.rows.front()?.1.p.len();
        if c < 2 || self.rows.iter().any(|r| r.1.p.len() != c) {
            return None;
        }
        let mut present = vec![false; c];
        for (_, r) in &self.rows {
            *present.get_mut(r.y as usize)? = true;
        }
        if !present.iter().all(|&b| b) {
            return None;
        }
        let mut v = Vec::with_capacity(self.rows.len());
        let mut sum = 0.0;
        for k in 0..c {
            v.clear();
            v.extend(self.rows.iter().map(|(_, r)| (r.p[k], r.y as usize == k)));
            sum += binary_auc(&mut v)?;
        }
        Some(sum / c as f64)
    }

    /// The whole state as bytes (see the module doc).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        seal(MAGIC_MULTICLASS, MULTICLASS_VERSION, self)
    }

    /// Metrics from [`ProgressiveMulticlass::to_bytes`]; anything else is a typed error.
    pub fn from_bytes(bytes: &[u8]) -> Result<ProgressiveMulticlass> {
        let (version, body) = open(MAGIC_MULTICLASS, bytes, (1, MULTICLASS_VERSION))?;
        let m: ProgressiveMulticlass = if version == 1 {
            decode::<MulticlassV1>(body)?.upgrade()
        } else {
            decode(body)?
        };
        check_window(m.window).map_err(|e| snapshot_error(e.to_string()))?;
        let bad_row = |r: &ClassRow| {
            !r.pt.is_finite()
                || r.p.iter().any(|v| !v.is_finite())
                || (!r.p.is_empty() && r.y as usize >= r.p.len())
        };
        if m.rows.iter().any(|r| bad_row(&r.1)) || (m.seen as usize) < m.rows.len() {
            return Err(snapshot_error("invalid rows".into()));
        }
        Ok(m)
    }
}

/// The body of a version 1 multiclass snapshot: each row (probability of the true class,
/// hit), without the class probabilities.
#[derive(Deserialize)]
struct MulticlassV1 {
    window: Option<i64>,
    rows: VecDeque<(i64, (f64, bool))>,
    last: Option<i64>,
    seen: u64,
}

impl MulticlassV1 {
    fn upgrade(self) -> ProgressiveMulticlass {
        let rows = self.rows.into_iter().map(|(t, (pt, hit))| {
            let p = Box::default(); // (unknown: no AUC while this row is in the window)
            (t, ClassRow { pt, hit, y: 0, p })
        });
        ProgressiveMulticlass {
            window: self.window,
            rows: rows.collect(),
            last: self.last,
            seen: self.seen,
            in_order: false,
        }
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
        let back = Progressive::from_bytes(&m.to_bytes().unwrap()).unwrap();
        assert_eq!(
            back.rows().collect::<Vec<_>>(),
            m.rows().collect::<Vec<_>>()
        );
        assert_eq!((back.seen(), back.last_time()), (m.seen(), m.last_time()));
    }

    #[test]
    fn the_window_is_the_rows_after_the_cut_whatever_the_time_order() {
        // a deterministic mix of in-order runs and late rows, through a restore midway
        let mut m = Progressive::new(Some(50)).unwrap();
        let mut all = Vec::new();
        let mut x: u64 = 7;
        for i in 0..2000i64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let late = if (x >> 33) % 10 == 0 {
                ((x >> 40) % 80) as i64
            } else {
                0
            };
            let t = i - late;
            m.add(t, (i % 7) as f64 / 7.0, (i % 2) as f64);
            all.push((t, (i % 7) as f64 / 7.0, (i % 2) as f64));
            if i == 1000 {
                m = Progressive::from_bytes(&m.to_bytes().unwrap()).unwrap();
            }
            let cut = m.last_time().unwrap() - 50;
            let want: Vec<_> = all.iter().copied().filter(|r| r.0 > cut).collect();
            assert_eq!(m.rows().collect::<Vec<_>>(), want, "after row {i}");
        }
    }

    #[test]
    fn multiclass_auc_is_the_mean_of_the_one_vs_rest_pair_counts() {
        // the obvious definition: for class k, the share of (positive, negative) pairs the
        // positive outscores on p_k, ties half; averaged over the classes
        let rows: Vec<(i64, [f64; 3], usize)> = (0..40)
            .map(|i: i64| {
                let a = ((i * 7) % 5) as f64 / 10.0; // coarse: many ties
                let b = ((i * 3) % 4) as f64 / 10.0;
                (i, [a, b, 1.0 - a - b], ((i * 5 + i / 3) % 3) as usize)
            })
            .collect();
        let pairs = |rows: &[(i64, [f64; 3], usize)]| {
            let mut sum = 0.0;
            for k in 0..3 {
                let (mut wins, mut n) = (0.0, 0.0);
                for p in rows.iter().filter(|r| r.2 == k) {
                    for q in rows.iter().filter(|r| r.2 != k) {
                        n += 1.0;
                        wins += match p.1[k].partial_cmp(&q.1[k]).unwrap() {
                            std::cmp::Ordering::Greater => 1.0,
                            std::cmp::Ordering::Equal => 0.5,
                            std::cmp::Ordering::Less => 0.0,
                        };
                    }
                }
                sum += wins / n;
            }
            sum / 3.0
        };
        let mut all = ProgressiveMulticlass::new(None).unwrap();
        let mut windowed = ProgressiveMulticlass::new(Some(15)).unwrap();
        for (t, p, y) in &rows {
            all.add(*t, p, *y);
            windowed.add(*t, p, *y);
        }
        assert!((all.auc().unwrap() - pairs(&rows)).abs() < 1e-12);
        assert!((windowed.auc().unwrap() - pairs(&rows[25..])).abs() < 1e-12);
        // a class missing from the window: None
        let mut two = ProgressiveMulticlass::new(None).unwrap();
        two.add(1, &[0.5, 0.3, 0.2], 0);
        two.add(2, &[0.2, 0.5, 0.3], 1);
        assert_eq!(two.auc(), None);
    }

    #[test]
    fn snapshots_refuse_damage_and_the_other_kind() {
        let mut m = ProgressiveMulticlass::new(None).unwrap();
        m.add(1, &[0.2, 0.5, 0.3], 1);
        m.add(2, &[0.6, 0.1, 0.3], 2);
        assert_eq!(m.accuracy(), Some(0.5));
        let bytes = m.to_bytes().unwrap();
        let back = ProgressiveMulticlass::from_bytes(&bytes).unwrap();
        assert_eq!(
            back.log_loss().map(f64::to_bits),
            m.log_loss().map(f64::to_bits)
        );
        assert!(Progressive::from_bytes(&bytes).is_err());
        for cut in [0, 10, 19, 20, bytes.len() - 1] {
            assert!(ProgressiveMulticlass::from_bytes(&bytes[..cut]).is_err());
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(ProgressiveMulticlass::from_bytes(&flipped).is_err());
        let mut newer = bytes;
        newer[4] = 3;
        let e = ProgressiveMulticlass::from_bytes(&newer).unwrap_err();
        assert!(e.to_string().contains("upgrade"), "{e}");
    }
}
