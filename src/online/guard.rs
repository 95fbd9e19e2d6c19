//! What an arrival may change: the watermark guard and deduplication by event id.
//!
//! Both online ingest paths and the backfill's arrival replay ([`replay`]) judge events with
//! this one piece of code, in a batch's arrival order (time, ties by value), so they agree on
//! every event: applied, late, ahead of the watermark, or a duplicate.
//!
//! * **Late**: older than the watermark before the batch minus the allowed lateness.
//! * **Ahead**: later than the *reference* plus `max_ahead`. The reference is the latest time
//!   applied before the event in arrival order: the watermark before the batch, then each
//!   event of the batch applied before it (an engine without a watermark starts from the
//!   batch's lower median time). So a batch that covers a long stretch densely (a catch-up, a
//!   replay in chunks) is applied whole, while an event separated from everything before it by
//!   a gap wider than `max_ahead` is not. An event ahead is not applied and never moves the
//!   watermark; its time is remembered (at most [`AHEAD_CONFIRM`]` - 1` of them). When
//!   [`AHEAD_CONFIRM`] events ahead (the newest one included) lie within `max_ahead` of each
//!   other's time, the stream really jumped: that event is applied, the reference moves to it,
//!   and the remembered times are forgotten.
//! * **Duplicate**: its id was applied before and is still within the horizon: its first copy's
//!   time is at least the watermark minus the allowed lateness minus the longest window. Within
//!   that horizon a copy could still change an answer: an identical copy is late only once its
//!   time is older than the lateness, but a copy re-stamped with a later time would land in a
//!   window that still holds the first copy, for up to the longest window. First arrival wins.

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::input::EventId;
use crate::spec::Spec;

/// How many events ahead of the watermark, within `max_ahead` of each other, show that the
/// stream jumped (the last of them is applied).
pub const AHEAD_CONFIRM: usize = 16;

/// The guard's state: part of the engine's ingest state (and of its snapshots).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    /// Times of events rejected as ahead, oldest first (at most `AHEAD_CONFIRM - 1`).
    pub pending: Vec<i64>,
    /// Event id -> time of its applied copy, for ids within the horizon.
    pub seen: HashMap<EventId, i64>,
    /// The watermark at the last sweep of `seen`.
    pub swept: i64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            pending: Vec::new(),
            seen: HashMap::new(),
            swept: i64::MIN,
        }
    }
}

/// The bounds a batch is judged by, resolved once per batch from the feature set.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// `max_ahead` in force, ns (`None`: no guard).
    pub max_ahead: Option<i64>,
    pub lateness: i64,
    /// How far behind the watermark an applied id is remembered: the allowed lateness plus
    /// the longest window (its hop added for a tiled one).
    pub horizon: i64,
}

impl Rules {
    pub fn of(spec: &Spec) -> Rules {
        Rules {
            max_ahead: spec.max_ahead_ns(),
            lateness: spec.allowed_lateness,
            horizon: spec.allowed_lateness.saturating_add(spec.longest_window()),
        }
    }
}

/// What happens to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    Late,
    Ahead,
    Duplicate,
}

/// The reference a batch is guarded from: the watermark before it, or (no watermark yet) the
/// batch's lower median time.
#[inline]
pub fn reference(watermark: i64, lower_median: i64) -> i64 {
    if watermark == i64::MIN {
        lower_median
    } else {
        watermark
    }
}

impl Guard {
    /// Before a batch guarded from `reference`: forget remembered times no longer ahead.
    pub fn start_batch(&mut self, rules: Rules, reference: i64) {
        if let Some(m) = rules.max_ahead {
            let bound = reference.saturating_add(m);
            self.pending.retain(|&t| t > bound);
        }
    }

    /// Judge one event (in arrival order). `watermark` is the running watermark and
    /// `reference` the running reference; both move on [`Verdict::Apply`].
    #[inline]
    pub fn judge(
        &mut self,
        rules: Rules,
        watermark: &mut i64,
        reference: &mut i64,
        ts: i64,
        id: Option<EventId>,
    ) -> Verdict {
        if ts < watermark.saturating_sub(rules.lateness) {
            return Verdict::Late;
        }
        if let Some(m) = rules.max_ahead {
            if ts > reference.saturating_add(m) {
                let agree = self
                    .pending
                    .iter()
                    .filter(|&&t| t.abs_diff(ts) <= m as u64)
                    .count();
                if agree + 1 < AHEAD_CONFIRM {
                    if self.pending.len() + 1 >= AHEAD_CONFIRM {
                        self.pending.remove(0);
                    }
                    self.pending.push(ts);
                    return Verdict::Ahead;
                }
                // the stream jumped: this event leads it
                *reference = ts;
                self.pending.clear();
            }
        }
        if let Some(id) = id {
            match self.seen.entry(id) {
                hashbrown::hash_map::Entry::Occupied(_) => return Verdict::Duplicate,
                hashbrown::hash_map::Entry::Vacant(v) => {
                    v.insert(ts);
                }
            }
        }
        *watermark = (*watermark).max(ts);
        *reference = (*reference).max(ts);
        Verdict::Apply
    }

    /// After a batch: forget ids older than the horizon (amortized: when the watermark moved
    /// a quarter of the horizon since the last sweep, or at all with a zero horizon).
    pub fn end_batch(&mut self, rules: Rules, watermark: i64) {
        if self.seen.is_empty() || watermark == i64::MIN {
            self.swept = watermark;
            return;
        }
        let horizon = rules.horizon;
        if self.swept != i64::MIN && watermark <= self.swept.saturating_add(horizon / 4) {
            return;
        }
        let cutoff = watermark.saturating_sub(horizon);
        self.seen.retain(|_, t| *t >= cutoff);
        self.swept = watermark;
    }

    /// Bytes held (approximate).
    pub fn bytes(&self) -> usize {
        self.pending.capacity() * 8
            + self.seen.capacity() * (std::mem::size_of::<(EventId, i64)>() + 1)
    }
}

/// What the online engine would do with each event when `ts` / `ids` arrive in batches
/// `arrival` (equal values: one batch; batches in ascending order), starting empty: the
/// backfill's way to agree with a stream. Within a batch, events are judged in the order
/// `order_key` gives (time, then the value words: the engine's arrival order).
pub fn replay(
    spec: &Spec,
    ts: &[i64],
    ids: &[EventId],
    arrival: &[i64],
    tie: &dyn Fn(usize, usize) -> std::cmp::Ordering,
) -> Vec<Verdict> {
    let n = ts.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        arrival[a]
            .cmp(&arrival[b])
            .then(ts[a].cmp(&ts[b]))
            .then_with(|| tie(a, b))
            .then(a.cmp(&b))
    });
    let mut out = vec![Verdict::Apply; n];
    let rules = Rules::of(spec);
    let mut guard = Guard::default();
    let mut watermark = i64::MIN;
    for batch in order.chunk_by(|&a, &b| arrival[a] == arrival[b]) {
        let mut reference = reference(watermark, ts[batch[(batch.len() - 1) / 2]]);
        guard.start_batch(rules, reference);
        for &i in batch {
            out[i] = guard.judge(
                rules,
                &mut watermark,
                &mut reference,
                ts[i],
                ids.get(i).copied(),
            );
        }
        guard.end_batch(rules, watermark);
    }
    out
}

/// What the online engine does with each of `events` when they arrive in the batches
/// `arrival` gives ([`replay`]); with no `arrival`, the events are one table with no arrival
/// order: only duplicates are dropped (first in time order, ties by value words, then row),
/// nothing is late or ahead. `None` when nothing would be dropped either way (no arrival, no
/// `dedupe_on`).
pub fn verdicts(
    spec: &Spec,
    events: &crate::input::Events<'_>,
    arrival: Option<&[i64]>,
) -> Option<Vec<Verdict>> {
    let tie = |a: usize, b: usize| {
        for col in &events.values {
            let o = col[a].cmp(&col[b]);
            if o.is_ne() {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    };
    match arrival {
        Some(arrival) => Some(replay(spec, &events.ts, &events.ids, arrival, &tie)),
        None if spec.dedupe_on.is_some() => {
            let mut one = spec.clone();
            one.max_ahead = crate::spec::MaxAhead::Off;
            let zeros = vec![0i64; events.len()];
            Some(replay(&one, &events.ts, &events.ids, &zeros, &tie))
        }
        None => None,
    }
}
