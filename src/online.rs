//! The online engine: per-key state fed by a live, possibly out-of-order event stream.
//!
//! Arrival rules: the watermark is the largest event time seen; an event older than
//! `watermark - allowed_lateness` is late and dropped (counted); every other event is applied
//! exactly as if it had arrived in order, because each key settles only up to
//! `watermark - allowed_lateness` and an accepted event is never older than that.

use std::path::Path;
use std::sync::Arc;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::input::{Events, Key, KeyRef};
use crate::plan::Plan;
use crate::spec::Spec;
use crate::state::KeyState;

/// A read settles a key first (under the write lock) only when that saves walking more rows.
pub const SETTLE_ON_READ_ROWS: u64 = 64;

/// Counters reported by [`Engine::stats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events_ingested: u64,
    pub late_events_dropped: u64,
    pub keys_evicted: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub keys: usize,
    pub counters: Counters,
    pub state_bytes: usize,
    /// Largest event time seen, ns (None before the first event).
    pub watermark: Option<i64>,
}

/// Result of one ingest call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ingested {
    pub accepted: u64,
    pub late: u64,
}

pub struct Engine {
    pub plan: Arc<Plan>,
    pub(crate) keys: HashMap<Key, KeyState>,
    pub(crate) key_is_int: Option<bool>,
    pub(crate) watermark: i64,
    pub(crate) counters: Counters,
    pub(crate) last_sweep: i64,
}

impl Engine {
    pub fn new(plan: Arc<Plan>) -> Engine {
        Engine {
            plan,
            keys: HashMap::new(),
            key_is_int: None,
            watermark: i64::MIN,
            counters: Counters::default(),
            last_sweep: i64::MIN,
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.plan.spec
    }

    /// The earliest instant every key can still be queried at.
    pub fn settle_point(&self) -> i64 {
        self.watermark
            .saturating_sub(self.plan.spec.allowed_lateness)
    }

    /// Check that a key kind matches what this engine holds.
    pub fn check_key_kind(&self, is_int: bool) -> Result<()> {
        match self.key_is_int {
            Some(k) if k != is_int => {
                let kind = |int: bool| if int { "integer" } else { "string" };
                Err(Error::schema(
                    &self.plan.spec.entity,
                    format!(
                        "this engine holds {} keys, got {} keys",
                        kind(k),
                        kind(is_int)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Apply validated events in row (arrival) order. Fails only on a key-kind mismatch,
    /// before changing anything.
    pub fn ingest(&mut self, events: &Events<'_>) -> Result<Ingested> {
        let Some(is_int) = events.key_is_int() else {
            return Ok(Ingested::default());
        };
        self.check_key_kind(is_int)?;
        self.key_is_int = Some(is_int);
        let plan = Arc::clone(&self.plan);
        let lateness = plan.spec.allowed_lateness;
        let step = lateness / 8;
        let mut report = Ingested::default();
        let mut vals: SmallVec<[u64; 8]> = SmallVec::from_elem(0, plan.columns.len());
        let keys = &mut self.keys;
        let mut watermark = self.watermark;
        events.for_each_key(|i, key| {
            let ts = events.ts[i];
            if ts < watermark.saturating_sub(lateness) {
                report.late += 1;
                return;
            }
            watermark = watermark.max(ts);
            let settle = watermark.saturating_sub(lateness);
            let state = keys
                .entry_ref(&key)
                .or_insert_with(|| KeyState::new(&plan, settle));
            // Settling is bookkeeping (no answer depends on it): do it in steps of
            // `lateness / 8` rather than on every event.
            if settle.saturating_sub(state.settled) > step {
                state.settle(&plan, settle, lateness);
            }
            for (c, v) in vals.iter_mut().enumerate() {
                *v = events.values[c][i];
            }
            state.insert(&plan, ts, &vals);
            report.accepted += 1;
        });
        self.watermark = watermark;
        self.counters.events_ingested += report.accepted;
        self.counters.late_events_dropped += report.late;
        self.maybe_sweep();
        Ok(report)
    }

    /// Evict keys idle for longer than the TTL (amortized: at most every ttl/4 of event time).
    fn maybe_sweep(&mut self) {
        let Some(ttl) = self.plan.spec.ttl else {
            return;
        };
        if self.watermark == i64::MIN {
            return;
        }
        if self.last_sweep != i64::MIN && self.watermark < self.last_sweep.saturating_add(ttl / 4) {
            return;
        }
        self.evict_idle();
    }

    /// Evict every key whose latest event is older than `watermark - ttl`. Returns how many.
    pub fn evict_idle(&mut self) -> usize {
        let Some(ttl) = self.plan.spec.ttl else {
            return 0;
        };
        let cutoff = self.watermark.saturating_sub(ttl);
        let before = self.keys.len();
        self.keys.retain(|_, s| s.last_ts >= cutoff);
        let evicted = before - self.keys.len();
        self.counters.keys_evicted += evicted as u64;
        self.last_sweep = self.watermark;
        evicted
    }

    /// Features of `key` at instant `t` (NaN = null) into `out`.
    pub fn get(&self, key: KeyRef<'_>, t: i64, out: &mut [f64]) -> Result<()> {
        self.check_key_kind(key.is_int())?;
        match self.keys.get(&key) {
            Some(state) => state.query(&self.plan, t, out),
            None => {
                out.copy_from_slice(&self.plan.empty);
                Ok(())
            }
        }
    }

    /// Whether a query of `key` at `t` would walk so many rows of a lagging settled point
    /// (more than [`SETTLE_ON_READ_ROWS`]) that settling the key first with
    /// [`Engine::settle_key`] pays off (for this query and later ones). Usually false: the
    /// ingest path keeps keys settled, and reads then stay read-only.
    pub fn would_settle(&self, key: KeyRef<'_>, t: i64) -> bool {
        let s = t.min(self.settle_point());
        self.keys.get(&key).is_some_and(|st| {
            st.settled < s
                && st.settle_backlog(&self.plan, s, self.plan.spec.allowed_lateness)
                    > SETTLE_ON_READ_ROWS
        })
    }

    /// Settle one key up to `min(t, watermark - allowed_lateness)`. Pure bookkeeping: no answer
    /// that the engine promises changes.
    pub fn settle_key(&mut self, key: KeyRef<'_>, t: i64) {
        let s = t.min(self.settle_point());
        let plan = Arc::clone(&self.plan);
        if let Some(state) = self.keys.get_mut(&key) {
            state.settle(&plan, s, plan.spec.allowed_lateness);
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            keys: self.keys.len(),
            counters: self.counters.clone(),
            state_bytes: self.state_bytes(),
            watermark: (self.watermark != i64::MIN).then_some(self.watermark),
        }
    }

    /// Approximate bytes of online state: per-key state plus the hash table.
    pub fn state_bytes(&self) -> usize {
        let table = self.keys.capacity()
            * (std::mem::size_of::<Key>() + std::mem::size_of::<KeyState>() + 1);
        let keys: usize = self
            .keys
            .iter()
            .map(|(k, s)| {
                s.bytes() - std::mem::size_of::<KeyState>()
                    + match k {
                        Key::Str(s) => s.len(),
                        Key::Int(_) => 0,
                    }
            })
            .sum();
        table + keys
    }

    pub fn snapshot(&self, path: &Path) -> Result<()> {
        crate::snapshot::write(self, path)
    }

    pub fn restore(path: &Path) -> Result<Engine> {
        crate::snapshot::read(path)
    }
}
