//! The online monitor: rows arrive in any order; their counts are kept per pane of `step` of
//! event time, and the metrics of a window `[t - W, t)` (`t` a multiple of `step`, `W` a
//! multiple of `step`) are computed from the sum of its panes' counts, with the same function
//! as the batch report: for the same rows, the same numbers bit for bit.
//!
//! Event time, as in the feature engine (`docs/semantics.md`):
//! * the **watermark** is the largest event time applied; it moves once per `update` call, to
//!   the largest time in it;
//! * a row older than `watermark - allowed_lateness` (the watermark before the call) is
//!   **late**: dropped and counted;
//! * a window `[t - W, t)` is **closed** once `t <= watermark - allowed_lateness`: no row
//!   can change it any more. Triggers see closed windows only, in window-end order, so what
//!   they fire does not depend on the arrival order of the rows within the lateness.
//!   Windows without any row are not evaluated.
//!
//! Memory: the panes of `[last closed window end - W, watermark]`: at most
//! `(W + allowed_lateness) / step + 2` panes of O(bins) counts per column, whatever the traffic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::counts::Counts;
use super::metrics::{compute, Metrics};
use super::reference::Reference;
use super::trigger::{Transition, Trigger, TriggerSpec};
use crate::error::{Error, Result};
use crate::time::{floor_div, format_duration, iso};

/// The most steps a window may hold (`window / step`).
pub const MAX_STEPS_PER_WINDOW: i64 = 10_000;

/// A trigger that fired.
#[derive(Clone, Debug, PartialEq)]
pub struct Fired {
    /// Index of the trigger (in the order added).
    pub trigger: usize,
    pub transition: Transition,
    /// End of the window (ns): the window is `[window_end - W, window_end)`.
    pub window_end: i64,
    pub value: f64,
}

/// Counters of the monitor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStats {
    pub rows_applied: u64,
    pub rows_late: u64,
    pub windows_closed: u64,
    pub panes: usize,
}

/// The version of the monitor state document (`Monitor::to_json`).
/// 2: a trigger may be `low` (low is bad); version 1 documents are read (no low triggers).
pub const MONITOR_STATE_VERSION: u32 = 2;

/// The online drift monitor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Monitor {
    #[serde(skip, default = "empty_reference")]
    reference: Reference,
    window: i64,
    step: i64,
    lateness: i64,
    /// pane start -> counts per reference column
    panes: BTreeMap<i64, Vec<Counts>>,
    watermark: Option<i64>,
    /// Windows ending at or before this are closed (evaluated).
    closed_until: Option<i64>,
    /// Panes starting before this were dropped.
    evicted_below: Option<i64>,
    triggers: Vec<Trigger>,
    stats: MonitorStats,
}

fn empty_reference() -> Reference {
    Reference {
        version: super::reference::REFERENCE_VERSION,
        feature_set: None,
        rows: 0,
        prediction: None,
        columns: Vec::new(),
    }
}

/// The state document: the reference's own document, then the monitor's state.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDoc {
    version: u32,
    reference: String,
    monitor: Monitor,
}

impl Monitor {
    /// The whole state (reference, windows' counts, watermark, triggers and their state,
    /// counters) as a versioned JSON document: [`Monitor::from_json`] continues exactly.
    pub fn to_json(&self) -> Result<String> {
        let doc = StateDoc {
            version: MONITOR_STATE_VERSION,
            reference: self.reference.to_json()?,
            monitor: self.clone(),
        };
        crate::doc_version::write(&doc, "monitor state")
    }

    /// A monitor from [`Monitor::to_json`]; anything else (corrupted, truncated, newer) is a
    /// snapshot error.
    pub fn from_json(text: &str) -> Result<Monitor> {
        let bad = |m: String| Error::snapshot("monitor state", m);
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        crate::doc_version::check(&value, "monitor state", MONITOR_STATE_VERSION).map_err(bad)?;
        let doc: StateDoc = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let reference = Reference::from_json(&doc.reference).map_err(|e| bad(e.to_string()))?;
        let mut m = doc.monitor;
        let fresh = Monitor::new(reference, m.window, m.step, m.lateness)
            .map_err(|e| bad(e.to_string()))?;
        let bins: Vec<usize> = fresh.reference.columns.iter().map(|c| c.n_bins()).collect();
        let fits = |cs: &Vec<Counts>| {
            cs.len() == bins.len() && cs.iter().zip(&bins).all(|(c, &b)| c.bins.len() == b)
        };
        if !m.panes.values().all(fits) {
            return Err(bad("window counts do not fit the reference's bins".into()));
        }
        for t in &m.triggers {
            t.spec.check().map_err(|e| bad(e.to_string()))?;
            if t.spec.column >= bins.len() {
                return Err(bad(
                    "a trigger watches a column the reference does not have".into(),
                ));
            }
        }
        m.reference = fresh.reference;
        Ok(m)
    }

    /// `window`, `step`, `lateness`: ns; `window` a positive multiple of `step`.
    pub fn new(reference: Reference, window: i64, step: i64, lateness: i64) -> Result<Monitor> {
        if step <= 0 || window <= 0 {
            return Err(Error::spec("window", "window and step must be > 0"));
        }
        if window % step != 0 {
            return Err(Error::spec(
                "step",
                format!(
                    "the window ({}) must be a whole number of steps ({})",
                    format_duration(window),
                    format_duration(step)
                ),
            ));
        }
        if window / step > MAX_STEPS_PER_WINDOW {
            return Err(Error::spec(
                "step",
                format!(
                    "a window of {} holds {} steps of {}: at most {MAX_STEPS_PER_WINDOW} \
                     (each closed window sums its steps' counts)",
                    format_duration(window),
                    window / step,
                    format_duration(step)
                ),
            ));
        }
        if lateness < 0 {
            return Err(Error::spec("allowed_lateness", "must be >= 0"));
        }
        Ok(Monitor {
            reference,
            window,
            step,
            lateness,
            panes: BTreeMap::new(),
            watermark: None,
            closed_until: None,
            evicted_below: None,
            triggers: Vec::new(),
            stats: MonitorStats::default(),
        })
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }
    /// The end of the last closed window boundary (windows ending at or before it are final).
    pub fn closed_until(&self) -> Option<i64> {
        self.closed_until
    }
    pub fn stats(&self) -> MonitorStats {
        MonitorStats {
            panes: self.panes.len(),
            ..self.stats.clone()
        }
    }
    pub fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }

    /// Add a trigger; returns its index.
    pub fn add_trigger(&mut self, spec: TriggerSpec) -> Result<usize> {
        if spec.column >= self.reference.columns.len() {
            return Err(Error::spec("column", "not a column of the reference"));
        }
        self.triggers.push(Trigger::new(spec)?);
        Ok(self.triggers.len() - 1)
    }

    /// Apply one arrival of rows: `codes[column][row]` (from [`super::read::codes`]) and
    /// their event times (ns). Returns the triggers fired by the windows it closed.
    pub fn update(&mut self, codes: &[Vec<u32>], times: &[i64]) -> Result<Vec<Fired>> {
        let nc = self.reference.columns.len();
        if codes.len() != nc || codes.iter().any(|c| c.len() != times.len()) {
            return Err(Error::spec(
                "codes",
                format!("expected {nc} columns of {} rows", times.len()),
            ));
        }
        let horizon = self.watermark.map(|w| w.saturating_sub(self.lateness));
        // per pane of this call, its rows' counts (a call usually touches one or two panes)
        let mut local: Vec<(i64, Vec<Counts>)> = Vec::new();
        let mut slot_of_row: Vec<Option<usize>> = Vec::with_capacity(times.len());
        let mut last: Option<(i64, usize)> = None;
        let mut max_t: Option<i64> = None;
        for &t in times {
            if horizon.is_some_and(|h| t < h) {
                self.stats.rows_late += 1;
                slot_of_row.push(None);
                continue;
            }
            max_t = Some(max_t.map_or(t, |m| m.max(t)));
            let pane = floor_div(t, self.step).saturating_mul(self.step);
            let slot = match last {
                Some((p, s)) if p == pane => s,
                _ => {
                    let s = match local.iter().position(|(p, _)| *p == pane) {
                        Some(s) => s,
                        None => {
                            local.push((pane, self.empty_counts()));
                            local.len() - 1
                        }
                    };
                    last = Some((pane, s));
                    s
                }
            };
            slot_of_row.push(Some(slot));
        }
        for (ci, col_codes) in codes.iter().enumerate() {
            for (&code, slot) in col_codes.iter().zip(&slot_of_row) {
                if let Some(c) = slot
                    .and_then(|s| local.get_mut(s))
                    .and_then(|(_, cs)| cs.get_mut(ci))
                {
                    c.add(code);
                }
            }
        }
        let applied = slot_of_row.iter().filter(|s| s.is_some()).count() as u64;
        self.stats.rows_applied += applied;
        for (pane, counts) in local {
            match self.panes.get_mut(&pane) {
                Some(cs) => cs.iter_mut().zip(&counts).for_each(|(a, b)| a.merge(b)),
                None => {
                    self.panes.insert(pane, counts);
                }
            }
        }
        if let Some(m) = max_t {
            self.watermark = Some(self.watermark.map_or(m, |w| w.max(m)));
        }
        Ok(self.close())
    }

    /// Move the watermark forward to `t` (never back): closes the windows that end by
    /// `t - allowed_lateness` and returns what their triggers fired.
    pub fn advance(&mut self, t: i64) -> Vec<Fired> {
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        self.close()
    }

    fn empty_counts(&self) -> Vec<Counts> {
        self.reference
            .columns
            .iter()
            .map(|c| Counts::new(c.n_bins()))
            .collect()
    }

    /// Close every window ending at or before `watermark - lateness`, evaluate the triggers
    /// on the ones with rows (in end order), and drop the panes no open or last-closed window
    /// needs.
    fn close(&mut self) -> Vec<Fired> {
        let Some(w) = self.watermark else {
            return Vec::new();
        };
        let limit = floor_div(w.saturating_sub(self.lateness), self.step).saturating_mul(self.step);
        if self.closed_until.is_some_and(|c| c >= limit) {
            return Vec::new();
        }
        // window ends in (closed_until, limit] whose window holds a pane with rows
        let per = self.window / self.step;
        let mut ends: Vec<i64> = Vec::new();
        for &p in self.panes.keys() {
            for j in 1..=per {
                let e = p.saturating_add(j.saturating_mul(self.step));
                if e > limit {
                    break;
                }
                if self.closed_until.is_none_or(|c| e > c) {
                    ends.push(e);
                }
            }
        }
        ends.sort_unstable();
        ends.dedup();
        let mut fired = Vec::new();
        for e in ends {
            self.stats.windows_closed += 1;
            if self.triggers.is_empty() {
                continue;
            }
            let metrics = self.window_metrics(e);
            for (i, trig) in self.triggers.iter_mut().enumerate() {
                let Some(m) = metrics.get(trig.spec.column) else {
                    continue;
                };
                let value = m.get(trig.spec.metric);
                if let Some(tr) = trig.observe(e, value, m.non_null) {
                    fired.push(Fired {
                        trigger: i,
                        transition: tr,
                        window_end: e,
                        value: value.unwrap_or(f64::NAN),
                    });
                }
            }
        }
        self.closed_until = Some(limit);
        let keep_from = limit.saturating_sub(self.window);
        self.panes = self.panes.split_off(&keep_from);
        self.evicted_below = Some(self.evicted_below.map_or(keep_from, |e| e.max(keep_from)));
        fired
    }

    /// Counts per column of the window `[end - W, end)`.
    fn window_counts(&self, end: i64) -> Vec<Counts> {
        let mut acc = self.empty_counts();
        for (_, cs) in self.panes.range(end.saturating_sub(self.window)..end) {
            for (a, b) in acc.iter_mut().zip(cs) {
                a.merge(b);
            }
        }
        acc
    }

    fn window_metrics(&self, end: i64) -> Vec<Metrics> {
        self.window_counts(end)
            .iter()
            .zip(&self.reference.columns)
            .map(|(c, col)| compute(col, c))
            .collect()
    }

    /// The metrics of every column over the window `[at - W, at)`; `at` a multiple of `step`.
    /// A window after `watermark - allowed_lateness` is not closed: late rows may still change it.
    pub fn values(&self, at: i64) -> Result<Vec<Metrics>> {
        if at % self.step != 0 {
            return Err(Error::Query(format!(
                "at={} ({at} ns): window ends are multiples of the step ({}) since the epoch",
                iso(at),
                format_duration(self.step)
            )));
        }
        if let Some(ev) = self.evicted_below {
            if at.saturating_sub(self.window) < ev {
                return Err(Error::Query(format!(
                    "the window ending at {} is no longer held: the earliest window the monitor \
                     can answer ends at {}",
                    iso(at),
                    iso(ev.saturating_add(self.window))
                )));
            }
        }
        Ok(self.window_metrics(at))
    }
}
