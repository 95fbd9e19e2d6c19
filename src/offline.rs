//! Backfill: events x spine -> one feature row per spine row, point-in-time correct.
//!
//! Cost model: events and spine rows are bucketed by key (one hash lookup each, a counting
//! sort), each key's events and queries are sorted by time, and then each key is one pass
//! through [`KeyState`] in parallel (rayon): every event is folded in once and out once.
//! Memory: the converted input columns, 16 bytes per event and per spine row for the sort,
//! the live window of one key per worker, and the output columns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    /// A string output (`min` / `max` / `first` / `last` of a `string_columns` column).
    Text(Vec<Option<String>>),
}

#[derive(Clone, Copy)]
struct Entry {
    ts: i64,
    idx: u32,
}

const NO_GROUP: u32 = u32::MAX;

/// Raw pointer to the bucketed entries, shared by scatter workers that write disjoint slots.
struct Slots(*mut Entry);
// SAFETY: every slot is written by exactly one worker (see `bucket`).
unsafe impl Sync for Slots {}
unsafe impl Send for Slots {}

/// From this many rows on, `bucket` counts and scatters with one chunk of rows per thread (a
/// count per group per chunk: 8 bytes x groups x threads).
const BUCKET_PARALLEL_ROWS: usize = 1 << 21;

/// Bucket `(group, ts, idx)` rows by group (counting sort), then sort each bucket by time.
/// Large inputs count and scatter in parallel: chunk `c` of the rows writes, inside each
/// bucket, after the rows of chunks `0..c`, so the result is the same as a sequential pass.
fn bucket(groups: &[u32], ts: &[i64], n_groups: usize) -> (Vec<usize>, Vec<Entry>) {
    let threads = crate::pool::num_threads();
    let n_chunks = if groups.len() >= BUCKET_PARALLEL_ROWS {
        threads
    } else {
        1
    };
    bucket_in(groups, ts, n_groups, n_chunks)
}

fn bucket_in(
    groups: &[u32],
    ts: &[i64],
    n_groups: usize,
    n_chunks: usize,
) -> (Vec<usize>, Vec<Entry>) {
    let chunk_len = groups.len().div_ceil(n_chunks.max(1)).max(1);
    let chunks: Vec<&[u32]> = groups.chunks(chunk_len).collect();
    // counts[c][g]: rows of group g in chunk c
    let count = |chunk: &&[u32]| {
        let mut n = vec![0usize; n_groups];
        for (j, &g) in chunk.iter().enumerate() {
            // groups are random: load a later row's counter while this one is counted
            if let Some(&ahead) = chunk.get(j + PREFETCH_AHEAD) {
                prefetch(&n, ahead as usize);
            }
            if g != NO_GROUP {
                n[g as usize] += 1;
            }
        }
        n
    };
    let mut counts: Vec<Vec<usize>> = if chunks.len() > 1 {
        crate::pool::install(|| chunks.par_iter().map(count).collect())
    } else {
        chunks.iter().map(count).collect()
    };
    // bucket starts, and every chunk's first slot in every bucket (in place of its counts)
    let mut starts = vec![0usize; n_groups + 1];
    for g in 0..n_groups {
        let mut at = starts[g];
        for c in counts.iter_mut() {
            let n = c[g];
            c[g] = at;
            at += n;
        }
        starts[g + 1] = at;
    }
    let total = starts[n_groups];
    let mut entries = vec![Entry { ts: 0, idx: 0 }; total];
    let slots = Slots(entries.as_mut_ptr());
    let slots = &slots;
    let scatter = |(c, (chunk, fill)): (usize, (&[u32], &mut Vec<usize>))| {
        let base = c * chunk_len;
        for (j, &g) in chunk.iter().enumerate() {
            // Two stages ahead: a later row's fill counter, then the slot a nearer row will
            // write (its counter is cached by now; the slot is a hint, exact or not).
            if let Some(&far) = chunk.get(j + 2 * PREFETCH_AHEAD) {
                prefetch(fill, far as usize);
            }
            if let Some(&near) = chunk.get(j + PREFETCH_AHEAD) {
                if let Some(&slot) = fill.get(near as usize) {
                    prefetch_slot(slots, slot, total);
                }
            }
            if g != NO_GROUP {
                let i = base + j;
                let at = &mut fill[g as usize];
                // SAFETY: `*at` runs over this chunk's own slots of bucket g, which no other
                // chunk writes, and stays below `starts[g + 1] <= entries.len()`.
                unsafe {
                    *slots.0.add(*at) = Entry {
                        ts: ts[i],
                        idx: i as u32,
                    }
                };
                *at += 1;
            }
        }
    };
    if chunks.len() > 1 {
        crate::pool::install(|| {
            chunks
                .par_iter()
                .copied()
                .zip(counts.par_iter_mut())
                .enumerate()
                .for_each(|(c, pair)| scatter((c, pair)))
        });
    } else {
        chunks
            .iter()
            .copied()
            .zip(counts.iter_mut())
            .enumerate()
            .for_each(scatter);
    }
    drop(counts);
    // Sort every bucket by time, in parallel.
    let mut slices: Vec<&mut [Entry]> = Vec::with_capacity(n_groups);
    let mut rest: &mut [Entry] = &mut entries;
    for g in 0..n_groups {
        let (head, tail) = rest.split_at_mut(starts[g + 1] - starts[g]);
        slices.push(head);
        rest = tail;
    }
    // (ts, idx) is unique: an unstable sort (no scratch allocation) gives the stable order
    crate::pool::install(|| {
        slices
            .into_par_iter()
            .for_each(|s| s.sort_unstable_by_key(|e| (e.ts, e.idx)))
    });
    (starts, entries)
}

/// How many events ahead the per-key pass prefetches an event's values.
const PREFETCH_AHEAD: usize = 8;

/// A hint to load `col[i]` into the cache (no effect on results; nothing if `i` is out of range).
#[inline(always)]
fn prefetch<T>(col: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = col.get(i) {
        // SAFETY: a prefetch is a hint: it reads nothing into the program and cannot fault.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                (v as *const T).cast::<i8>(),
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (col, i);
}

/// A hint to load slot `at` of the bucketed entries (nothing if `at >= len`).
#[inline(always)]
fn prefetch_slot(slots: &Slots, at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < len {
        // SAFETY: `at < len`, the entries' length, so the address is inside the allocation;
        // a prefetch reads nothing into the program and cannot fault.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                slots.0.add(at).cast::<i8>().cast_const(),
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slots, at, len);
}

/// Raw pointer to a row-major output shared by workers that write disjoint rows.
struct Out {
    ptr: *mut f64,
    width: usize,
}
// SAFETY: workers write disjoint rows only (see `set_row`).
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    /// # Safety
    /// `row` is in bounds, `values.len() == width`, and no other thread writes the same row.
    #[inline]
    unsafe fn set_row(&self, row: usize, values: &[f64]) {
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.ptr.add(row * self.width),
                self.width,
            )
        };
    }
}

/// Raw pointers to output columns shared by workers that write disjoint row ranges.
struct Cols(Vec<*mut u64>);
// SAFETY: workers write disjoint row ranges only (see `transpose`).
unsafe impl Sync for Cols {}
unsafe impl Send for Cols {}

/// Row-major `rows x nf` values into one column per feature (integers cast), in parallel over
/// blocks of rows that stay in cache while every column takes its slice.
fn transpose(plan: &Plan, out: &[f64], rows: usize) -> Vec<FeatureColumn> {
    let nf = plan.n_features();
    let mut cols: Vec<FeatureColumn> = plan
        .outputs
        .iter()
        .map(|o| {
            if o.integer {
                FeatureColumn::Int(vec![0; rows])
            } else {
                FeatureColumn::Float(vec![0.0; rows])
            }
        })
        .collect();
    let ptrs = Cols(
        cols.iter_mut()
            .map(|c| match c {
                FeatureColumn::Int(v) => v.as_mut_ptr() as *mut u64,
                FeatureColumn::Float(v) => v.as_mut_ptr() as *mut u64,
                // never built here
                FeatureColumn::Text(_) => std::ptr::null_mut(),
            })
            .collect(),
    );
    const BLOCK: usize = 2048;
    let ptrs = &ptrs;
    crate::pool::install(|| {
        (0..rows.div_ceil(BLOCK)).into_par_iter().for_each(|b| {
            let (r0, r1) = (b * BLOCK, ((b + 1) * BLOCK).min(rows));
            for (f, o) in plan.outputs.iter().enumerate() {
                let col = ptrs.0[f];
                for r in r0..r1 {
                    let v = out[r * nf + f];
                    let bits = if o.integer {
                        (v as i64) as u64
                    } else {
                        v.to_bits()
                    };
                    // SAFETY: `r < rows` is inside every column, and blocks are disjoint.
                    unsafe { *col.add(r) = bits };
                }
            }
        })
    });
    cols
}

/// Integer keys whose range is at most this many times the number of events (or 65,536) get a
/// direct lookup table instead of a hash map (dense database ids, the common case): 4 bytes
/// per slot, so at most 4 bytes per event.
const DENSE_KEY_SPAN_PER_EVENT: u64 = 1;

/// Key -> dense group id (in order of first occurrence among the events) for every event and
/// spine row (`NO_GROUP`: a key without events), with the spine times flattened.
fn group_ids(
    events: &Events<'_>,
    spine: &[(KeyArr<'_>, Vec<i64>)],
    n_spine: usize,
) -> (Vec<u32>, Vec<u32>, Vec<i64>, usize) {
    let mut event_group = vec![0u32; events.len()];
    let mut spine_group = Vec::with_capacity(n_spine);
    let mut spine_ts = Vec::with_capacity(n_spine);
    for (_, ts) in spine {
        spine_ts.extend_from_slice(ts);
    }
    let ints: Option<Vec<&[i64]>> = events
        .keys
        .iter()
        .map(|k| match k {
            KeyArr::Int(v) => Some(v.as_slice()),
            _ => None,
        })
        .collect();
    if let Some(ints) = ints.filter(|_| !events.is_empty()) {
        let (lo, hi) = ints
            .iter()
            .flat_map(|v| v.iter())
            .fold((i64::MAX, i64::MIN), |(lo, hi), &k| (lo.min(k), hi.max(k)));
        let span = (hi as i128 - lo as i128 + 1) as u128;
        if span <= (DENSE_KEY_SPAN_PER_EVENT * events.len() as u64).max(1 << 16) as u128 {
            // direct table: slot k - lo holds the group id of key k
            let mut table = vec![NO_GROUP; span as usize];
            let mut next = 0u32;
            for (g, &k) in event_group
                .iter_mut()
                .zip(ints.iter().flat_map(|v| v.iter()))
            {
                let slot = &mut table[(k - lo) as usize];
                if *slot == NO_GROUP {
                    *slot = next;
                    next += 1;
                }
                *g = *slot;
            }
            for (keys, ts) in spine {
                for i in 0..ts.len() {
                    let g = match keys.get(i) {
                        KeyRef::Int(k) if (lo..=hi).contains(&k) => table[(k - lo) as usize],
                        _ => NO_GROUP,
                    };
                    spine_group.push(g);
                }
            }
            return (event_group, spine_group, spine_ts, next as usize);
        }
    }
    let mut ids: HashMap<KeyRef<'_>, u32> = HashMap::new();
    events.for_each_key(|i, k| {
        let next = ids.len() as u32;
        event_group[i] = *ids.entry(k).or_insert(next);
    });
    for (keys, ts) in spine {
        for i in 0..ts.len() {
            spine_group.push(ids.get(&keys.get(i)).copied().unwrap_or(NO_GROUP));
        }
    }
    let n_groups = ids.len();
    (event_group, spine_group, spine_ts, n_groups)
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
    if let (Some(ek), Some((sk, _))) =
        (events.key_kind(), spine.iter().find(|(_, t)| !t.is_empty()))
    {
        if ek != sk.kind() {
            let entity = &plan.spec.entity;
            let kind = |k: u64| match k {
                crate::key::KIND_INT => "integers".to_string(),
                crate::key::KIND_STR => "strings".to_string(),
                k => entity.describe_kind(k),
            };
            return Err(Error::schema(
                entity,
                format!(
                    "spine keys are {} but event keys are {}",
                    kind(sk.kind()),
                    kind(ek)
                ),
            ));
        }
    }
    let (event_group, spine_group, spine_ts, n_groups) = group_ids(events, spine, n_spine);
    let (ev_starts, ev) = bucket(&event_group, &events.ts, n_groups);
    drop(event_group);
    let (sp_starts, sp) = bucket(&spine_group, &spine_ts, n_groups);

    let nf = plan.n_features();
    // Row-major while computing (one spine row is one contiguous write), columns at the end.
    let mut out = vec![f64::NAN; nf * n_spine];
    // Spine rows whose key never occurs in the events get the empty-history values.
    for (row, &g) in spine_group.iter().enumerate() {
        if g == NO_GROUP {
            out[row * nf..(row + 1) * nf].copy_from_slice(&plan.empty);
        }
    }
    drop(spine_group);
    drop(spine_ts);
    let shared = Out {
        ptr: out.as_mut_ptr(),
        width: nf,
    };

    // One state, output row and value scratch per worker, reset for each key (no allocations
    // per key once a worker has seen its largest key).
    let scratch = || {
        (
            KeyState::new(plan, i64::MIN),
            vec![f64::NAN; nf],
            SmallVec::<[u64; 8]>::from_elem(0, plan.columns.len()),
        )
    };
    type Scratch = (KeyState, Vec<f64>, SmallVec<[u64; 8]>);
    let has_texts = plan.has_text_columns();
    let run_group = |(state, row, vals): &mut Scratch, g: usize| {
        let evs = &ev[ev_starts[g]..ev_starts[g + 1]];
        let qs = &sp[sp_starts[g]..sp_starts[g + 1]];
        if qs.is_empty() {
            return;
        }
        state.reset(i64::MIN, evs.len());
        let mut j = 0;
        for q in qs {
            while j < evs.len() && evs[j].ts < q.ts {
                // The values sit at random rows of the input: ask for a later event's values
                // now, so their cache misses overlap this event's state update.
                if let Some(ahead) = evs.get(j + PREFETCH_AHEAD) {
                    for col in events.values.iter() {
                        prefetch(col, ahead.idx as usize);
                    }
                }
                let idx = evs[j].idx as usize;
                for (c, v) in vals.iter_mut().enumerate() {
                    *v = events.values[c][idx];
                }
                if has_texts {
                    state.insert_with_texts(plan, evs[j].ts, vals, &events.texts);
                } else {
                    state.insert(plan, evs[j].ts, vals);
                }
                j += 1;
            }
            state.settle(plan, q.ts, 0);
            // Cannot fail: the query time equals the settled point.
            let _ = state.query(plan, q.ts, row);
            // SAFETY: each spine row belongs to exactly one group, so no two workers write the
            // same row; `out` outlives the parallel loop.
            unsafe { shared.set_row(q.idx as usize, row) };
        }
    };

    // Heaviest keys first (events + spine rows), so they start at once and the rest fill in
    // around them; no barriers. The calling thread reports progress (and can stop the work)
    // while the pool computes.
    let weight = |g: usize| (ev_starts[g + 1] - ev_starts[g]) + (sp_starts[g + 1] - sp_starts[g]);
    let mut order: Vec<u32> = (0..n_groups)
        .filter(|&g| sp_starts[g + 1] > sp_starts[g])
        .map(|g| g as u32)
        .collect();
    order.sort_unstable_by_key(|&g| std::cmp::Reverse(weight(g as usize)));
    let total = sp_starts[n_groups];
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let caller = std::thread::current();
    let interrupted = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            crate::pool::install(|| {
                order
                    .par_iter()
                    .with_max_len(64)
                    .for_each_init(scratch, |sc, &g| {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let g = g as usize;
                        run_group(sc, g);
                        done.fetch_add(sp_starts[g + 1] - sp_starts[g], Ordering::Relaxed);
                    })
            });
            caller.unpark();
        });
        let mut interrupted = false;
        while !worker.is_finished() {
            std::thread::park_timeout(std::time::Duration::from_millis(100));
            if !interrupted
                && !worker.is_finished()
                && !progress(done.load(Ordering::Relaxed), total)
            {
                stop.store(true, Ordering::Relaxed);
                interrupted = true;
            }
        }
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
        interrupted
    });
    if interrupted || (total > 0 && !progress(total, total)) {
        return Err(Error::Interrupted);
    }
    let mut cols = transpose(plan, &out, n_spine);
    // string outputs: identity words -> the input's strings
    for (c, o) in cols.iter_mut().zip(&plan.outputs) {
        if let (true, FeatureColumn::Float(v)) = (o.text, &*c) {
            *c = FeatureColumn::Text(
                v.iter()
                    .map(|&x| {
                        crate::agg::text_word(x)
                            .and_then(|w| events.texts.get(w))
                            .map(str::to_string)
                    })
                    .collect(),
            );
        }
    }
    Ok(cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // The parallel count-and-scatter gives exactly the sequential result (bucket order,
        // and row order inside a bucket before the stable sort by time).
        #[test]
        fn chunked_bucket_equals_sequential(
            rows in prop::collection::vec((0u32..12, -5i64..5), 0..300),
            missing in prop::collection::vec(any::<bool>(), 300),
            n_chunks in 2usize..7,
        ) {
            let groups: Vec<u32> = rows
                .iter()
                .zip(&missing)
                .map(|(&(g, _), &m)| if m && g % 3 == 0 { NO_GROUP } else { g })
                .collect();
            let ts: Vec<i64> = rows.iter().map(|r| r.1).collect();
            let (s1, e1) = bucket_in(&groups, &ts, 12, 1);
            let (s2, e2) = bucket_in(&groups, &ts, 12, n_chunks);
            prop_assert_eq!(&s1, &s2);
            let key = |e: &Vec<Entry>| e.iter().map(|x| (x.ts, x.idx)).collect::<Vec<_>>();
            prop_assert_eq!(key(&e1), key(&e2));
            // and it is a counting sort: every row of group g, by time, ties in row order
            for g in 0..12u32 {
                let mut want: Vec<(i64, u32)> = (0..groups.len())
                    .filter(|&i| groups[i] == g)
                    .map(|i| (ts[i], i as u32))
                    .collect();
                want.sort_by_key(|x| x.0);
                let got = &key(&e1)[s1[g as usize]..s1[g as usize + 1]];
                prop_assert_eq!(got, &want[..]);
            }
        }
    }
}
