//! Backfill: events x spine -> one feature row per spine row, point-in-time correct.
//!
//! Cost model: events and spine rows are bucketed by key (one hash lookup each, a counting
//! sort), each key's events and queries are sorted by time, and then each key is one pass
//! through [`KeyState`] in parallel (rayon): every event is folded in once and out once.
//! Memory: the converted input columns, 16 bytes per event and per spine row for the sort,
//! the live window of one key per worker, and the output columns.

use hashbrown::HashMap;
use rayon::prelude::*;
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::input::{Events, KeyArr, KeyRef};
use crate::plan::Plan;
use crate::state::KeyState;

/// One output column.
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureColumn {
    Int(Vec<i64>),
    /// NaN marks null.
    Float(Vec<f64>),
}

#[derive(Clone, Copy)]
struct Entry {
    ts: i64,
    idx: u32,
}

const NO_GROUP: u32 = u32::MAX;

/// Bucket `(group, ts, idx)` rows by group (counting sort), then sort each bucket by time.
fn bucket(groups: &[u32], ts: &[i64], n_groups: usize) -> (Vec<usize>, Vec<Entry>) {
    let mut starts = vec![0usize; n_groups + 1];
    for &g in groups {
        if g != NO_GROUP {
            starts[g as usize + 1] += 1;
        }
    }
    for i in 0..n_groups {
        starts[i + 1] += starts[i];
    }
    let mut fill = starts.clone();
    let mut entries = vec![Entry { ts: 0, idx: 0 }; starts[n_groups]];
    for (i, &g) in groups.iter().enumerate() {
        if g != NO_GROUP {
            entries[fill[g as usize]] = Entry {
                ts: ts[i],
                idx: i as u32,
            };
            fill[g as usize] += 1;
        }
    }
    // Sort every bucket by time, in parallel.
    let mut slices: Vec<&mut [Entry]> = Vec::with_capacity(n_groups);
    let mut rest: &mut [Entry] = &mut entries;
    for g in 0..n_groups {
        let (head, tail) = rest.split_at_mut(starts[g + 1] - starts[g]);
        slices.push(head);
        rest = tail;
    }
    crate::pool::install(|| slices.into_par_iter().for_each(|s| s.sort_by_key(|e| e.ts)));
    (starts, entries)
}

/// Raw output pointer shared by workers that write disjoint rows.
struct Out {
    ptr: *mut f64,
    rows: usize,
}
// SAFETY: workers write disjoint cells only (see `set`).
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    /// # Safety
    /// `feature * rows + row` is in bounds and no other thread writes the same cell.
    #[inline]
    unsafe fn set(&self, feature: usize, row: usize, v: f64) {
        unsafe { *self.ptr.add(feature * self.rows + row) = v };
    }
}

/// Compute every feature for every spine row. `progress(done, total)` is called between
/// chunks of work on the calling thread; returning `false` stops with [`Error::Interrupted`].
pub fn backfill(
    plan: &Plan,
    events: &Events<'_>,
    spine: &[(KeyArr<'_>, Vec<i64>)],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<FeatureColumn>> {
    let n_spine: usize = spine.iter().map(|(_, t)| t.len()).sum();
    if events.len() >= u32::MAX as usize || n_spine >= u32::MAX as usize {
        return Err(Error::schema(
            &plan.spec.entity,
            "more than 4 billion rows in one backfill: split it",
        ));
    }
    if let (Some(ek), Some((sk, _))) = (
        events.key_is_int(),
        spine.iter().find(|(_, t)| !t.is_empty()),
    ) {
        if ek != sk.is_int() {
            let kind = |int: bool| if int { "integers" } else { "strings" };
            return Err(Error::schema(
                &plan.spec.entity,
                format!(
                    "spine keys are {} but event keys are {}",
                    kind(sk.is_int()),
                    kind(ek)
                ),
            ));
        }
    }
    // Key -> dense group id.
    let mut ids: HashMap<KeyRef<'_>, u32> = HashMap::new();
    let mut event_group = vec![0u32; events.len()];
    events.for_each_key(|i, k| {
        let next = ids.len() as u32;
        event_group[i] = *ids.entry(k).or_insert(next);
    });
    let n_groups = ids.len();
    let mut spine_group = Vec::with_capacity(n_spine);
    let mut spine_ts = Vec::with_capacity(n_spine);
    for (keys, ts) in spine {
        for (i, &t) in ts.iter().enumerate() {
            spine_group.push(ids.get(&keys.get(i)).copied().unwrap_or(NO_GROUP));
            spine_ts.push(t);
        }
    }
    drop(ids);
    let (ev_starts, ev) = bucket(&event_group, &events.ts, n_groups);
    drop(event_group);
    let (sp_starts, sp) = bucket(&spine_group, &spine_ts, n_groups);

    let nf = plan.n_features();
    let mut out = vec![f64::NAN; nf * n_spine];
    // Spine rows whose key never occurs in the events get the empty-history values.
    for (row, &g) in spine_group.iter().enumerate() {
        if g == NO_GROUP {
            for (f, v) in plan.empty.iter().enumerate() {
                out[f * n_spine + row] = *v;
            }
        }
    }
    drop(spine_group);
    drop(spine_ts);
    let shared = Out {
        ptr: out.as_mut_ptr(),
        rows: n_spine,
    };

    let run_group = |g: usize| {
        let evs = &ev[ev_starts[g]..ev_starts[g + 1]];
        let qs = &sp[sp_starts[g]..sp_starts[g + 1]];
        if qs.is_empty() {
            return;
        }
        let mut state = KeyState::new(plan, i64::MIN);
        let mut row = vec![f64::NAN; nf];
        let mut vals: SmallVec<[u64; 8]> = SmallVec::from_elem(0, plan.columns.len());
        let mut j = 0;
        for q in qs {
            while j < evs.len() && evs[j].ts < q.ts {
                let idx = evs[j].idx as usize;
                for (c, v) in vals.iter_mut().enumerate() {
                    *v = events.values[c][idx];
                }
                state.insert(plan, evs[j].ts, &vals);
                j += 1;
            }
            state.settle(plan, q.ts, 0);
            // Cannot fail: the query time equals the settled point.
            let _ = state.query(plan, q.ts, &mut row);
            for (f, v) in row.iter().enumerate() {
                // SAFETY: each spine row belongs to exactly one group, so no two workers
                // write the same cell; `out` outlives the parallel loop.
                unsafe { shared.set(f, q.idx as usize, *v) };
            }
        }
    };

    // Chunks of groups of about 1% of the spine each, so progress and Ctrl-C stay responsive.
    let target = (n_spine / 100).max(1024);
    let mut g = 0;
    let mut done = 0;
    while g < n_groups {
        let start = g;
        let mut rows = 0;
        while g < n_groups && (rows < target || g == start) {
            rows += sp_starts[g + 1] - sp_starts[g];
            g += 1;
        }
        crate::pool::install(|| (start..g).into_par_iter().for_each(run_group));
        done += rows;
        if !progress(done, sp_starts[n_groups]) {
            return Err(Error::Interrupted);
        }
    }
    Ok((0..nf)
        .map(|f| {
            let col = &out[f * n_spine..(f + 1) * n_spine];
            if plan.outputs[f].integer {
                FeatureColumn::Int(col.iter().map(|&v| v as i64).collect())
            } else {
                FeatureColumn::Float(col.to_vec())
            }
        })
        .collect())
}
