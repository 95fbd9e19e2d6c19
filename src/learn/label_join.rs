//! The label join: served rows (request id, `at`, feature vector) wait for their label.
//!
//! Labels are events with their own event time `t`. The label stream has a watermark `W` (the
//! largest label time accepted, or a time given to [`LabelJoin::advance`]) and an allowed
//! lateness `L`; the *settled point* is `S = W - L`.
//!
//! * A label with `t < S` is late: counted, ignored. A label for a pending row with
//!   `t <= at + wait` attaches to it: the row's release time is `max(t, at)`. A label with
//!   `t > at + wait` comes after the wait: counted, ignored (the row times out).
//! * A row without a label times out at release time `at + wait`: it is dropped (counted) or
//!   released with the default label, per [`OnTimeout`].
//! * Rows are released, as [`Example`]s, once their release time is `< S`, in
//!   (release time, request id) order. Every label accepted later has `t >= S`, so the whole
//!   sequence of examples is sorted by (release time, request id): it does not depend on the
//!   arrival order of rows and labels as long as nothing arrives later than the lateness allows.
//! * A served row with `at + wait < S` is late (its fate is already decided): counted, ignored.
//! * At most `max_pending` rows wait; serving one more evicts the row that would be released
//!   first (counted as evicted, never released).
//!
//! Bad input (a label for an unknown or already released request id, a second label for a row,
//! a NaN / inf label, a request id served twice) is refused with a typed error naming the
//! request id, counted, and changes nothing else. Released, timed-out and evicted ids are
//! remembered until `S` passes `at + wait` (afterwards no label could attach anyway), so a label
//! for them is told apart from one for an id never served; after that it counts as unknown.

use std::fmt;

use std::hash::{Hash, Hasher};

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use super::frame;
use super::release_queue::{ReleaseQueue, Run};

use crate::error::{Error, Result};

/// A request id: an integer or a string (integers order before strings).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RequestId {
    Int(i64),
    Str(String),
}

/// One write per id (the derived `Hash` also hashes the variant): an int and a string may
/// collide, which costs a comparison, never a wrong match (`Eq` tells them apart).
impl Hash for RequestId {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            RequestId::Int(i) => state.write_i64(*i),
            RequestId::Str(s) => s.as_str().hash(state),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Int(i) => write!(f, "{i}"),
            RequestId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// What happens to a served row whose label did not come within `wait`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum OnTimeout {
    /// Not released (counted as `timeouts_dropped`).
    Drop,
    /// Released with this label (`timed_out = true`).
    Label(f64),
}

/// A released training example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: RequestId,
    /// When the row was served (its features are as of `at`).
    pub at: i64,
    /// Release time: the label's time (at least `at`), or `at + wait` for a timeout.
    pub release: i64,
    pub x: Vec<f64>,
    pub y: f64,
    pub timed_out: bool,
}

/// What a served row or a label did (the refusals are errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Taken into the join.
    Accepted,
    /// Older than the settled point: ignored (counted).
    Late,
    /// A label later than its row's `at + wait`: ignored (counted); the row times out.
    AfterWait,
}
pub type LabelOutcome = Outcome;

/// The join's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub served: u64,
    pub labels: u64,
    pub released_labeled: u64,
    pub released_timeout: u64,
    pub timeouts_dropped: u64,
    pub late_served: u64,
    pub late_labels: u64,
    pub labels_after_wait: u64,
    pub unknown_labels: u64,
    pub labels_for_released: u64,
    pub duplicate_labels: u64,
    pub bad_labels: u64,
    pub reused_ids: u64,
    pub evicted: u64,
}

impl Stats {
    /// (name, value) pairs, in a fixed order.
    pub fn items(&self) -> [(&'static str, u64); 14] {
        [
            ("served", self.served),
            ("labels", self.labels),
            ("released_labeled", self.released_labeled),
            ("released_timeout", self.released_timeout),
            ("timeouts_dropped", self.timeouts_dropped),
            ("late_served", self.late_served),
            ("late_labels", self.late_labels),
            ("labels_after_wait", self.labels_after_wait),
            ("unknown_labels", self.unknown_labels),
            ("labels_for_released", self.labels_for_released),
            ("duplicate_labels", self.duplicate_labels),
            ("bad_labels", self.bad_labels),
            ("reused_ids", self.reused_ids),
            ("evicted", self.evicted),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Gone {
    Released,
    TimedOut,
    Evicted,
}

/// What the join knows of a request id: its row while it waits, then (until the settled point
/// passes its `at + wait`) how it left. One map for both, so serving, releasing and forgetting
/// an id each touch one hash table entry.
#[derive(Debug, Serialize, Deserialize)]
enum Slot {
    Pending(Row),
    /// No longer pending; remembered until `until` (its `at + wait`).
    Gone {
        until: i64,
        how: Gone,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    at: i64,
    x: Vec<f64>,
    label: Option<f64>,
    /// The row's key in `queue`.
    release: i64,
}

/// The label join (see the module documentation).
#[derive(Debug, Serialize, Deserialize)]
pub struct LabelJoin {
    wait: i64,
    on_timeout: OnTimeout,
    max_pending: usize,
    lateness: i64,
    /// Every id the join knows: pending rows and remembered ("gone") ids.
    ids: HashMap<RequestId, Slot>,
    /// How many of `ids` are pending (not serialized: counted again when read).
    #[serde(skip)]
    n_pending: usize,
    /// (release time, id) of every pending row, smallest first, with lazy deletion: a row
    /// whose release time moved (a label attached) leaves its old entry behind, skipped when
    /// popped because it no longer matches the row ([`LabelJoin::pop_live`]). Nothing is ever
    /// searched for or removed from the middle, and for rows and labels arriving nearly in
    /// time order a push and a pop are O(1) ([`ReleaseQueue`]).
    queue: ReleaseQueue<(i64, RequestId)>,
    /// (until, id) of the gone ids whose deadline entry is no longer in `queue` (for the
    /// others, that stale entry forgets them: [`LabelJoin::pop_live`]), smallest first.
    /// Serialized as a sorted sequence.
    #[serde(with = "super::release_queue::as_sequence")]
    forget: ReleaseQueue<(i64, RequestId)>,
    watermark: Option<i64>,
    out: Vec<Example>,
    stats: Stats,
}

impl LabelJoin {
    /// `wait` and `allowed_lateness` in nanoseconds (>= 0), `max_pending` >= 1.
    pub fn new(
        wait: i64,
        on_timeout: OnTimeout,
        max_pending: usize,
        allowed_lateness: i64,
    ) -> Result<LabelJoin> {
        if wait < 0 {
            return Err(Error::spec("wait", format!("must be >= 0, got {wait} ns")));
        }
        if allowed_lateness < 0 {
            return Err(Error::spec(
                "allowed_lateness",
                format!("must be >= 0, got {allowed_lateness} ns"),
            ));
        }
        if max_pending == 0 {
            return Err(Error::spec("max_pending", "must be >= 1"));
        }
        if let OnTimeout::Label(v) = on_timeout {
            if !v.is_finite() {
                return Err(Error::spec(
                    "on_timeout",
                    format!("a default label must be finite, got {v}"),
                ));
            }
        }
        Ok(LabelJoin {
            wait,
            on_timeout,
            max_pending,
            lateness: allowed_lateness,
            ids: HashMap::new(),
            n_pending: 0,
            queue: ReleaseQueue::default(),
            forget: ReleaseQueue::default(),
            watermark: None,
            out: Vec::new(),
            stats: Stats::default(),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn pending(&self) -> usize {
        self.n_pending
    }
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }
    /// Examples released and not yet drained.
    pub fn ready(&self) -> usize {
        self.out.len()
    }

    fn settled(&self) -> Option<i64> {
        self.watermark.map(|w| w.saturating_sub(self.lateness))
    }

    /// A row served at `at` with feature vector `x`.
    pub fn serve(&mut self, id: RequestId, at: i64, x: Vec<f64>) -> Result<Outcome> {
        if self.ids.contains_key(&id) {
            self.stats.reused_ids += 1;
            return Err(Error::schema(
                "request_id",
                format!("request id {id} was already served: a request id names one prediction"),
            ));
        }
        Ok(self.serve_new(id, at, x))
    }

    /// [`LabelJoin::serve`] for an id known to be new.
    fn serve_new(&mut self, id: RequestId, at: i64, x: Vec<f64>) -> Outcome {
        let deadline = at.saturating_add(self.wait);
        if self.settled().is_some_and(|s| deadline < s) {
            self.stats.late_served += 1;
            return Outcome::Late;
        }
        if self.n_pending >= self.max_pending && self.pop_live(None, true).is_some() {
            self.stats.evicted += 1;
        }
        self.stats.served += 1;
        self.queue.push(Run::Deadline, (deadline, id.clone()));
        self.n_pending += 1;
        self.ids.insert(
            id,
            Slot::Pending(Row {
                at,
                x,
                label: None,
                release: deadline,
            }),
        );
        Outcome::Accepted
    }

    /// Serve rows in order, all or nothing: a request id already used (or twice in `rows`)
    /// refuses the whole batch (counted once). Returns (accepted, late).
    pub fn serve_many(&mut self, rows: Vec<(RequestId, i64, Vec<f64>)>) -> Result<(u64, u64)> {
        let mut seen = hashbrown::HashSet::with_capacity(rows.len());
        for (id, _, _) in &rows {
            if self.ids.contains_key(id) || !seen.insert(id) {
                self.stats.reused_ids += 1;
                return Err(Error::schema(
                    "request_id",
                    format!(
                        "request id {id} was already served: a request id names one prediction \
                         (nothing in this batch was served)"
                    ),
                ));
            }
        }
        drop(seen);
        let (mut accepted, mut late) = (0, 0);
        // every id checked new above (an eviction only turns a pending id gone)
        for (id, at, x) in rows {
            match self.serve_new(id, at, x) {
                Outcome::Accepted => accepted += 1,
                _ => late += 1,
            }
        }
        Ok((accepted, late))
    }

    /// The examples released and not yet drained.
    pub fn released(&self) -> &[Example] {
        &self.out
    }

    /// Remove and return the pending row released first (smallest (release time, id)), if
    /// there is one and, with `before = Some(s)`, its release time is `< s`. Its id stays in
    /// `ids` as gone (evicted with `evict`, else released or timed out per its label) until
    /// the settled point passes its `at + wait` (`until`). Returns (release time, id, row).
    ///
    /// Stale queue entries met on the way are dropped, with one exception that saves a
    /// second queue per id: a row released at its label's time `< until` leaves its deadline
    /// entry `(until, id)` in the queue, and that entry, when popped, *is* the id's forget
    /// entry: it forgets the id at once when popped by a release (`before = Some(s)`, so
    /// `until < s`), else (an eviction or a flush) it moves to `forget`. Only a row whose
    /// live entry was its deadline entry (a timeout, or a label at `until`) is queued in
    /// `forget` when it leaves.
    fn pop_live(&mut self, before: Option<i64>, evict: bool) -> Option<(i64, RequestId, Row)> {
        enum Met {
            Live { until: i64, how: Gone },
            ForgetEntry,
            Stale,
        }
        loop {
            // an entry at or after `before`: every entry from there on is later, live or
            // stale, nothing to release
            let (r, id) = self.queue.pop_if(|(r, _)| before.is_none_or(|s| *r < s))?;
            // one hash of the id: the entry found is read, turned gone or removed in place
            let EntryRef::Occupied(mut slot) = self.ids.entry_ref(&id) else {
                continue; // stale: the id was forgotten
            };
            let met = match slot.get() {
                Slot::Pending(row) if row.release == r => Met::Live {
                    until: row.at.saturating_add(self.wait),
                    how: if evict {
                        Gone::Evicted
                    } else if row.label.is_some() {
                        Gone::Released
                    } else {
                        Gone::TimedOut
                    },
                },
                // (a label entry never has r == until: a label at `until` pushes none)
                Slot::Gone { until, .. } if *until == r => Met::ForgetEntry,
                _ => Met::Stale,
            };
            match met {
                Met::Live { until, how } => {
                    let Slot::Pending(row) =
                        std::mem::replace(slot.get_mut(), Slot::Gone { until, how })
                    else {
                        continue; // (matched Pending just above)
                    };
                    self.n_pending -= 1;
                    if r == until {
                        // its deadline entry, just popped: nothing else would forget it
                        self.forget.push(Run::Deadline, (until, id.clone()));
                    }
                    return Some((r, id, row));
                }
                Met::ForgetEntry if before.is_some() => {
                    slot.remove();
                }
                Met::ForgetEntry => self.forget.push(Run::Deadline, (r, id)),
                Met::Stale => {}
            }
        }
    }

    /// The label `y` of request `id`, known at event time `t`.
    pub fn label(&mut self, id: &RequestId, t: i64, y: f64) -> Result<Outcome> {
        if !y.is_finite() {
            self.stats.bad_labels += 1;
            return Err(Error::schema(
                "label",
                format!("request id {id}: labels must be finite, got {y}"),
            ));
        }
        if self.settled().is_some_and(|s| t < s) {
            self.stats.late_labels += 1;
            return Ok(Outcome::Late);
        }
        let outcome = match self.ids.get_mut(id) {
            Some(Slot::Pending(row)) if row.label.is_some() => {
                self.stats.duplicate_labels += 1;
                return Err(Error::schema(
                    "request_id",
                    format!("request id {id} already has a label"),
                ));
            }
            Some(Slot::Pending(row)) if t > row.at.saturating_add(self.wait) => {
                self.stats.labels_after_wait += 1;
                Outcome::AfterWait
            }
            Some(Slot::Pending(row)) => {
                let release = t.max(row.at);
                let moved = release != row.release;
                row.label = Some(y);
                row.release = release;
                if moved {
                    // the old entry stays behind, stale (pop_live skips it)
                    self.queue.push(Run::Label, (release, id.clone()));
                }
                Outcome::Accepted
            }
            slot => {
                let what = match slot {
                    Some(Slot::Gone { how, .. }) => {
                        self.stats.labels_for_released += 1;
                        match how {
                            Gone::Released => "was already released with its label",
                            Gone::TimedOut => "was already released as timed out",
                            Gone::Evicted => "was evicted (max_pending reached)",
                        }
                    }
                    _ => {
                        self.stats.unknown_labels += 1;
                        "is unknown (never served, or forgotten after its wait)"
                    }
                };
                return Err(Error::schema(
                    "request_id",
                    format!("label for request id {id}: it {what}"),
                ));
            }
        };
        self.stats.labels += 1;
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        self.release();
        Ok(outcome)
    }

    /// Labels from a stream, in order, each as by [`LabelJoin::label`]; the refused ones are
    /// counted in [`LabelJoin::stats`], not returned. Returns how many were accepted.
    pub fn labels(&mut self, labels: impl IntoIterator<Item = (RequestId, i64, f64)>) -> u64 {
        let labels = labels.into_iter();
        // each accepted label releases one example, sooner or later
        self.out.reserve(labels.size_hint().0);
        let mut n = 0;
        for (id, t, y) in labels {
            if let Ok(Outcome::Accepted) = self.label(&id, t, y) {
                n += 1;
            }
        }
        n
    }

    /// Move the label watermark to `t` (never backwards): "no label older than `t` is coming
    /// except within the allowed lateness". Releases what that settles.
    pub fn advance(&mut self, t: i64) {
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        self.release();
    }

    /// End of stream: release every pending row (labeled ones, the rest as timeouts).
    pub fn flush(&mut self) {
        self.watermark = Some(i64::MAX);
        let lateness = std::mem::replace(&mut self.lateness, 0);
        self.release();
        self.lateness = lateness;
    }

    fn release(&mut self) {
        let Some(s) = self.settled() else { return };
        // a flush settles everything, including rows released at i64::MAX
        let all = s == i64::MAX;
        while let Some((release, id, row)) = self.pop_live((!all).then_some(s), false) {
            match (row.label, self.on_timeout) {
                (Some(y), _) => {
                    self.stats.released_labeled += 1;
                    self.out.push(Example {
                        id,
                        at: row.at,
                        release,
                        x: row.x,
                        y,
                        timed_out: false,
                    });
                }
                (None, OnTimeout::Label(y)) => {
                    self.stats.released_timeout += 1;
                    self.out.push(Example {
                        id,
                        at: row.at,
                        release,
                        x: row.x,
                        y,
                        timed_out: true,
                    });
                }
                (None, OnTimeout::Drop) => {
                    self.stats.timeouts_dropped += 1;
                }
            }
        }
        // (a flush keeps the memory: a later label is "already released")
        while let Some((until, id)) = self.forget.pop_if(|(until, _)| *until < s && !all) {
            // the slot removed is the gone slot this entry was queued for (not a pending
            // one, nor one already forgotten: a version 1 or 2 snapshot queues a labeled
            // row's forget entry here and keeps its stale deadline entry too)
            if let EntryRef::Occupied(slot) = self.ids.entry_ref(&id) {
                if matches!(slot.get(), Slot::Gone { until: u, .. } if *u == until) {
                    slot.remove();
                }
            }
        }
    }

    /// Take the examples released so far, in release order.
    pub fn drain(&mut self) -> Vec<Example> {
        std::mem::take(&mut self.out)
    }

    /// Drop the examples released so far (after reading them with [`LabelJoin::released`]),
    /// keeping their vector's capacity for the next ones.
    pub fn clear_released(&mut self) {
        self.out.clear();
    }

    /// The whole join (pending rows, remembered ids, released examples not yet drained,
    /// counters) as bytes: `RTLJ`, format version (u32 LE), CRC-32 of the body (u32 LE), body
    /// length (u64 LE), body (bincode). [`LabelJoin::from_bytes`] gives back an equal join: a
    /// service can checkpoint the rows still waiting for their labels.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        frame::seal(JOIN_MAGIC, JOIN_VERSION, self, snapshot_error)
    }

    /// A join from [`LabelJoin::to_bytes`]; anything else (another format, a newer version,
    /// truncated or corrupted bytes) is a typed error, never a partial join.
    pub fn from_bytes(bytes: &[u8]) -> Result<LabelJoin> {
        let bad = snapshot_error;
        let span = (1, JOIN_VERSION);
        let (version, body) = frame::unseal(JOIN_MAGIC, bytes, span, "a label join snapshot", bad)?;
        let decode = |e: bincode::Error| bad(format!("cannot decode: {e}"));
        let mut j: LabelJoin = if version == 1 {
            bincode::deserialize::<LabelJoinV1>(body)
                .map_err(decode)?
                .upgrade()
                .ok_or_else(|| bad("an id both pending and gone".into()))?
        } else {
            bincode::deserialize(body).map_err(decode)?
        };
        if j.wait < 0 || j.lateness < 0 || j.max_pending == 0 {
            return Err(bad("invalid parameters".into()));
        }
        j.n_pending = j
            .ids
            .values()
            .filter(|s| matches!(s, Slot::Pending(_)))
            .count();
        Ok(j)
    }
}

const JOIN_MAGIC: &[u8; 4] = b"RTLJ";

/// Snapshot bytes that are not a label join's (a `SnapshotError` in Python).
fn snapshot_error(message: String) -> Error {
    Error::Snapshot {
        path: "<label join bytes>".into(),
        message,
    }
}
/// The label join snapshot's format version: 3 since session 9 (the body is laid out as in
/// version 2, but a labeled row's stale deadline entry stands for its forget entry, see
/// [`LabelJoin::pop_live`]: a version 2 reader would never forget those ids). Version 2 (one
/// map for pending and gone ids, session 8) and version 1 (two maps) are still read.
pub const JOIN_VERSION: u32 = 3;

/// The body of a version 1 snapshot: pending and gone ids in two maps.
#[derive(Serialize, Deserialize)]
struct LabelJoinV1 {
    wait: i64,
    on_timeout: OnTimeout,
    max_pending: usize,
    lateness: i64,
    pending: HashMap<RequestId, Row>,
    queue: ReleaseQueue<(i64, RequestId)>,
    gone: HashMap<RequestId, (i64, Gone)>,
    #[serde(with = "super::release_queue::as_sequence")]
    forget: ReleaseQueue<(i64, RequestId)>,
    watermark: Option<i64>,
    out: Vec<Example>,
    stats: Stats,
}

impl LabelJoinV1 {
    /// The same join in today's layout (None if an id is both pending and gone).
    fn upgrade(self) -> Option<LabelJoin> {
        let mut ids = HashMap::with_capacity(self.pending.len() + self.gone.len());
        for (id, row) in self.pending {
            ids.insert(id, Slot::Pending(row));
        }
        for (id, (until, how)) in self.gone {
            if ids.insert(id, Slot::Gone { until, how }).is_some() {
                return None;
            }
        }
        Some(LabelJoin {
            wait: self.wait,
            on_timeout: self.on_timeout,
            max_pending: self.max_pending,
            lateness: self.lateness,
            ids,
            n_pending: 0,
            queue: self.queue,
            forget: self.forget,
            watermark: self.watermark,
            out: self.out,
            stats: self.stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: i64) -> RequestId {
        RequestId::Int(i)
    }

    #[test]
    fn label_releases_after_the_settled_point_and_timeouts_use_the_default() {
        let mut j = LabelJoin::new(100, OnTimeout::Label(0.0), 10, 5).unwrap();
        j.serve(id(1), 0, vec![1.0]).unwrap();
        j.serve(id(2), 10, vec![2.0]).unwrap();
        assert_eq!(j.label(&id(2), 50, 1.0).unwrap(), Outcome::Accepted);
        assert!(j.drain().is_empty()); // S = 45 < 50
        j.advance(56); // S = 51 > 50
        let ex = j.drain();
        assert_eq!(ex.len(), 1);
        assert_eq!((ex[0].id.clone(), ex[0].release, ex[0].y), (id(2), 50, 1.0));
        j.advance(106); // S = 101 > 0 + 100
        let ex = j.drain();
        assert_eq!(
            (ex[0].id.clone(), ex[0].release, ex[0].timed_out),
            (id(1), 100, true)
        );
        // bad input: typed errors, counted
        assert!(j
            .label(&id(2), 105, 1.0)
            .unwrap_err()
            .to_string()
            .contains("already released"));
        // id 1 timed out and, with S = 101 past its at + wait = 100, is forgotten
        assert!(j
            .label(&id(1), 105, 1.0)
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        assert!(j
            .label(&id(9), 101, 1.0)
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        assert!(j.serve(id(2), 200, vec![]).is_err());
        assert_eq!(j.stats().labels_for_released, 1);
        assert_eq!(j.stats().unknown_labels, 2);
        assert_eq!(j.stats().reused_ids, 1);
    }
}
