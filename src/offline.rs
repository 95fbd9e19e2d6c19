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

/// From this many rows on (and at least half as many rows as groups), `bucket` counts and
/// scatters with one chunk of rows per thread (a count per group per chunk: 8 bytes x groups x
/// threads, so not for inputs with far more groups than rows).
const BUCKET_PARALLEL_ROWS: usize = 1 << 16;

/// A bucket of at least this many rows is sorted by the pool rather than by one thread.
const PAR_SORT_ROWS: usize = 1 << 15;

/// Bucket `(group, ts, idx)` rows by group (counting sort), then sort each bucket by time.
/// Large inputs count and scatter in parallel: chunk `c` of the rows writes, inside each
/// bucket, after the rows of chunks `0..c`, so the result is the same as a sequential pass.
fn bucket(groups: &[u32], ts: &[i64], n_groups: usize) -> (Vec<usize>, Vec<Entry>) {
    let threads = crate::pool::num_threads();
    let n_chunks = if groups.len() >= BUCKET_PARALLEL_ROWS && 2 * groups.len() >= n_groups {
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
    // Not zeroed: the scatter writes every slot once (176 MB for the 10M tier's events, which
    // one thread zeroed ~50 ms before the parallel scatter touched them again).
    let mut entries: Vec<Entry> = Vec::with_capacity(total);
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
                // chunk writes, and stays below `starts[g + 1] <= total`, the capacity reserved
                // above; `write` stores into the uninitialised slot without reading it.
                unsafe {
                    slots.0.add(*at).write(Entry {
                        ts: ts[i],
                        idx: i as u32,
                    })
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
    // SAFETY: every slot of 0..total is written above, exactly once: bucket g's slots
    // starts[g]..starts[g + 1] take its rows, chunk by chunk, and their number is its count
    // (rows of no group are skipped in both passes). `Entry` is plain data (no drop).
    unsafe { entries.set_len(total) };
    // Sort every bucket by time, in parallel.
    let mut slices: Vec<&mut [Entry]> = Vec::with_capacity(n_groups);
    let mut rest: &mut [Entry] = &mut entries;
    for g in 0..n_groups {
        let (head, tail) = rest.split_at_mut(starts[g + 1] - starts[g]);
        slices.push(head);
        rest = tail;
    }
    // (ts, idx) is unique: an unstable sort (no scratch allocation) gives the stable order. A
    // hot key's bucket (12% of the 10M tier's events) sorts in parallel itself: sorted whole by
    // one thread it left the other idle ~0.2 s.
    crate::pool::install(|| {
        slices.into_par_iter().for_each(|s| {
            if s.len() >= PAR_SORT_ROWS {
                s.par_sort_unstable_by_key(|e| (e.ts, e.idx))
            } else {
                s.sort_unstable_by_key(|e| (e.ts, e.idx))
            }
        })
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
            // capacity only: every row of every column is written below (no serial zeroing of
            // the output on the calling thread; the pages are first touched by the pool)
            if o.integer {
                FeatureColumn::Int(Vec::with_capacity(rows))
            } else {
                FeatureColumn::Float(Vec::with_capacity(rows))
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
                    // SAFETY: `r < rows` is inside every column's capacity, and blocks are
                    // disjoint.
                    unsafe { col.add(r).write(bits) };
                }
            }
        })
    });
    for c in cols.iter_mut() {
        // SAFETY: the blocks above cover rows 0..rows, and each wrote every column's row.
        match c {
            FeatureColumn::Int(v) => unsafe { v.set_len(rows) },
            FeatureColumn::Float(v) => unsafe { v.set_len(rows) },
            FeatureColumn::Text(_) => {}
        }
    }
    cols
}

/// Spine rows per task in the parallel empty-history fill.
const FILL_ROWS: usize = 1 << 14;

/// Spine rows whose key never occurs in the events (`NO_GROUP`) get the empty-history values
/// (`empty`, one row of `out`, which is row-major with `empty.len()` columns); other rows are
/// left as they are. In parallel over blocks of rows.
fn fill_empty(out: &mut [f64], spine_group: &[u32], empty: &[f64]) {
    let nf = empty.len();
    if nf == 0 || spine_group.is_empty() {
        return;
    }
    let fill = |(rows, groups): (&mut [f64], &[u32])| {
        for (row, &g) in rows.chunks_exact_mut(nf).zip(groups) {
            if g == NO_GROUP {
                row.copy_from_slice(empty);
            }
        }
    };
    if spine_group.len() >= 2 * FILL_ROWS {
        crate::pool::install(|| {
            out.par_chunks_mut(nf * FILL_ROWS)
                .zip(spine_group.par_chunks(FILL_ROWS))
                .for_each(fill)
        });
    } else {
        fill((out, spine_group));
    }
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
    group_ids_in(events, spine, n_spine, crate::pool::num_threads())
}

/// [`group_ids`] numbering the events' keys in up to `threads` chunks of rows: each chunk
/// numbers its keys on its own (in parallel), then the chunks' keys are merged in row order, so
/// the ids are the same as one sequential pass's.
fn group_ids_in(
    events: &Events<'_>,
    spine: &[(KeyArr<'_>, Vec<i64>)],
    n_spine: usize,
    threads: usize,
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
    let n_chunks = |per_chunk: usize| -> usize {
        if events.len() < NUMBER_PARALLEL_ROWS {
            1
        } else {
            threads.min(events.len() / per_chunk.max(1)).max(1)
        }
    };
    if let Some(ints) = ints.filter(|_| !events.is_empty()) {
        let (lo, hi) = ints
            .iter()
            .flat_map(|v| v.iter())
            .fold((i64::MAX, i64::MIN), |(lo, hi), &k| (lo.min(k), hi.max(k)));
        let span = (hi as i128 - lo as i128 + 1) as u128;
        if span <= (DENSE_KEY_SPAN_PER_EVENT * events.len() as u64).max(1 << 16) as u128 {
            // direct table: slot k - lo holds the group id of key k. Numbered in chunks (a
            // table per chunk: at most as many chunks as the events are times the span).
            let span = span as usize;
            let chunks = n_chunks(span);
            let firsts = number_chunks(events, &mut event_group, chunks, |a, b, ids| {
                // local id + 1 (0: not seen in this chunk)
                let mut local = vec![0u32; span];
                let mut firsts = Vec::new();
                rows_in(
                    events,
                    &ints,
                    |v, i| v[i],
                    a,
                    b,
                    |j, k| {
                        let slot = &mut local[(k - lo) as usize];
                        if *slot == 0 {
                            firsts.push(k);
                            *slot = firsts.len() as u32;
                        }
                        ids[j] = *slot - 1;
                    },
                );
                firsts
            });
            let mut table = vec![NO_GROUP; span];
            let mut next = 0u32;
            let trans: Vec<Vec<u32>> = firsts
                .iter()
                .map(|f| {
                    f.iter()
                        .map(|&k| {
                            let slot = &mut table[(k - lo) as usize];
                            if *slot == NO_GROUP {
                                *slot = next;
                                next += 1;
                            }
                            *slot
                        })
                        .collect()
                })
                .collect();
            translate(&mut event_group, events.len(), chunks, &trans);
            let table = &table;
            map_spine(spine, n_spine, &mut spine_group, |k| match k {
                KeyRef::Int(k) if (lo..=hi).contains(&k) => table[(k - lo) as usize],
                _ => NO_GROUP,
            });
            return (event_group, spine_group, spine_ts, next as usize);
        }
    }
    // Numbered in chunks: a map per chunk, merged in row order.
    let chunks = n_chunks(1);
    let firsts = number_chunks(events, &mut event_group, chunks, |a, b, ids| {
        let mut local: HashMap<KeyRef<'_>, u32> = HashMap::new();
        let mut firsts = Vec::new();
        keys_in(events, a, b, |j, k| {
            ids[j] = *local.entry(k).or_insert_with(|| {
                firsts.push(k);
                firsts.len() as u32 - 1
            });
        });
        firsts
    });
    let mut ids: HashMap<KeyRef<'_>, u32> = HashMap::new();
    let trans: Vec<Vec<u32>> = firsts
        .iter()
        .map(|f| {
            f.iter()
                .map(|&k| {
                    let next = ids.len() as u32;
                    *ids.entry(k).or_insert(next)
                })
                .collect()
        })
        .collect();
    translate(&mut event_group, events.len(), chunks, &trans);
    let ids = &ids;
    map_spine(spine, n_spine, &mut spine_group, |k| {
        ids.get(&k).copied().unwrap_or(NO_GROUP)
    });
    let n_groups = ids.len();
    (event_group, spine_group, spine_ts, n_groups)
}

/// From this many events on, `group_ids` numbers the keys in one chunk of rows per thread.
const NUMBER_PARALLEL_ROWS: usize = 1 << 16;

/// Rows `a..b` of chunk `c` of `n` rows in `n_chunks` chunks.
fn chunk_range(n: usize, n_chunks: usize, c: usize) -> (usize, usize) {
    let len = n.div_ceil(n_chunks.max(1));
    ((c * len).min(n), ((c + 1) * len).min(n))
}

/// Visit the keys of events `a..b` in row order: `f(i - a, key of event i)`.
fn keys_in<'s>(events: &'s Events<'_>, a: usize, b: usize, f: impl FnMut(usize, KeyRef<'s>)) {
    rows_in(events, &events.keys, |keys, i| keys.get(i), a, b, f);
}

/// Visit rows `a..b` of per-batch columns `cols` (one per input batch, as the events' key
/// columns) in row order: `f(i - a, get(batch's column, row in the batch))`.
fn rows_in<'s, C, T>(
    events: &Events<'_>,
    cols: &'s [C],
    get: impl Fn(&'s C, usize) -> T,
    a: usize,
    b: usize,
    mut f: impl FnMut(usize, T),
) {
    for (batch, col) in cols.iter().enumerate() {
        let start = events.starts[batch];
        let end = events
            .starts
            .get(batch + 1)
            .copied()
            .unwrap_or(events.len());
        for i in start.max(a)..end.min(b) {
            f(i - a, get(col, i - start));
        }
    }
}

/// Number the keys of every chunk of the events on its own: `number(a, b, ids)` writes
/// each event's id local to its chunk (rows `a..b`, `ids[i - a]`, in order of first occurrence
/// inside the chunk) and returns the chunk's keys in that order. In parallel when there are
/// several chunks.
fn number_chunks<K: Send>(
    events: &Events<'_>,
    event_group: &mut [u32],
    n_chunks: usize,
    number: impl Fn(usize, usize, &mut [u32]) -> Vec<K> + Sync,
) -> Vec<Vec<K>> {
    let n = events.len();
    let mut parts: Vec<(usize, &mut [u32])> = Vec::with_capacity(n_chunks);
    let mut rest: &mut [u32] = event_group;
    for c in 0..n_chunks {
        let (a, b) = chunk_range(n, n_chunks, c);
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(b - a);
        rest = tail;
        parts.push((c, head));
    }
    let run = |(c, ids): (usize, &mut [u32])| {
        let (a, b) = chunk_range(n, n_chunks, c);
        number(a, b, ids)
    };
    if n_chunks > 1 {
        crate::pool::install(|| parts.into_par_iter().map(run).collect())
    } else {
        parts.into_iter().map(run).collect()
    }
}

/// Chunk-local ids into global ones: event `i` of chunk `c` gets `trans[c][local id]`.
fn translate(event_group: &mut [u32], n: usize, n_chunks: usize, trans: &[Vec<u32>]) {
    if n_chunks <= 1 {
        // one chunk: local ids are the global ones (first occurrence over all the rows)
        return;
    }
    let len = n.div_ceil(n_chunks);
    crate::pool::install(|| {
        event_group
            .par_chunks_mut(len)
            .zip(trans.par_iter())
            .for_each(|(ids, t)| {
                for g in ids {
                    *g = t[*g as usize];
                }
            })
    });
}

/// Spine rows per task when `map_spine` looks keys up in parallel.
const MAP_ROWS: usize = 1 << 14;

/// The group of every spine row (`lookup` of its key), in spine order, appended to `out` (empty,
/// with capacity for `n_spine`). Large spines look up in parallel over blocks of rows.
fn map_spine<'k>(
    spine: &'k [(KeyArr<'_>, Vec<i64>)],
    n_spine: usize,
    out: &mut Vec<u32>,
    lookup: impl Fn(KeyRef<'k>) -> u32 + Sync,
) {
    if n_spine < 2 * MAP_ROWS {
        for (keys, ts) in spine {
            out.extend((0..ts.len()).map(|i| lookup(keys.get(i))));
        }
        return;
    }
    out.resize(n_spine, 0);
    let mut rest: &mut [u32] = out;
    let mut jobs: Vec<(&KeyArr<'_>, usize, &mut [u32])> = Vec::new();
    for (keys, ts) in spine {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(ts.len());
        rest = tail;
        for (b, block) in head.chunks_mut(MAP_ROWS).enumerate() {
            jobs.push((keys, b * MAP_ROWS, block));
        }
    }
    let lookup = &lookup;
    crate::pool::install(|| {
        jobs.into_par_iter().for_each(|(keys, at, block)| {
            for (j, g) in block.iter_mut().enumerate() {
                *g = lookup(keys.get(at + j));
            }
        })
    });
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
    // Zeroed (fresh pages from the allocator, not touched here): every row is written below,
    // by the empty-history fill or by its key's task, so the pages are first touched in parallel.
    let mut out = vec![0.0f64; nf * n_spine];
    fill_empty(&mut out, &spine_group, &plan.empty);
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
    // Set by the worker before it wakes the caller. `is_finished()` alone raced: the caller,
    // woken by the unpark before the worker thread had exited, read "not finished" and slept
    // a whole park timeout (100 ms idle at the end of a backfill, in perf timelines).
    let finished = AtomicBool::new(false);
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
            finished.store(true, Ordering::Release);
            caller.unpark();
        });
        // (a worker that panicked never sets `finished`; its thread has exited, though)
        let over = || finished.load(Ordering::Acquire) || worker.is_finished();
        let mut interrupted = false;
        while !over() {
            std::thread::park_timeout(std::time::Duration::from_millis(100));
            if !interrupted && !over() && !progress(done.load(Ordering::Relaxed), total) {
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
    use crate::input::Key;
    use proptest::prelude::*;

    /// A small deterministic generator (the tests need inputs above the parallel thresholds).
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// Group ids the slow way: numbered by first occurrence among the events, `NO_GROUP` for a
    /// spine key without events.
    fn reference_groups(event_keys: &[Key], spine_keys: &[Key]) -> (Vec<u32>, Vec<u32>, usize) {
        let mut ids: std::collections::HashMap<Key, u32> = std::collections::HashMap::new();
        let ev: Vec<u32> = event_keys
            .iter()
            .map(|k| {
                let next = ids.len() as u32;
                *ids.entry(k.clone()).or_insert(next)
            })
            .collect();
        let sp = spine_keys
            .iter()
            .map(|k| ids.get(k).copied().unwrap_or(NO_GROUP))
            .collect();
        (ev, sp, ids.len())
    }

    fn arr(keys: &[Key]) -> KeyArr<'static> {
        match keys.first() {
            Some(Key::Str(_)) => KeyArr::Owned(
                keys.iter()
                    .map(|k| match k {
                        Key::Str(s) => s.to_string(),
                        Key::Int(_) => unreachable!(),
                    })
                    .collect(),
            ),
            _ => KeyArr::Int(
                keys.iter()
                    .map(|k| match k {
                        Key::Int(v) => *v,
                        Key::Str(_) => unreachable!(),
                    })
                    .collect(),
            ),
        }
    }

    // The parallel spine lookup (and the whole of `group_ids`) against the slow reference:
    // integer keys on the direct table and on the hash map, string keys, spine keys absent
    // from the events, several spine batches, empty events or spine, one key.
    #[test]
    fn group_ids_equal_reference() {
        let mut seed = 7u64;
        // (events, spine rows, spine batches, distinct keys, key kind)
        for &(n_ev, n_sp, batches, n_keys, kind) in &[
            (NUMBER_PARALLEL_ROWS + 7, 70_000usize, 3usize, 500u64, 0u8),
            (NUMBER_PARALLEL_ROWS * 3, 70_000, 1, 500, 1),
            (NUMBER_PARALLEL_ROWS * 2 + 1, 40_000, 4, 3000, 2),
            (
                NUMBER_PARALLEL_ROWS * 2,
                40_000,
                2,
                NUMBER_PARALLEL_ROWS as u64,
                0,
            ),
            (NUMBER_PARALLEL_ROWS, 1_000, 2, 1, 2),
            (1_000, 3 * MAP_ROWS + 5, 2, 1, 0),
            (1_000, 3 * MAP_ROWS + 5, 2, 1, 2),
            (0, 2 * MAP_ROWS + 1, 1, 10, 0),
            (0, 2 * MAP_ROWS + 1, 1, 10, 2),
            (5_000, 0, 1, 50, 0),
            (300, 200, 2, 20, 1),
        ] {
            let key = |seed: &mut u64, absent: bool| -> Key {
                let r = lcg(seed) % n_keys + if absent { n_keys } else { 0 };
                match kind {
                    0 => Key::Int(r as i64 - 3),
                    1 => Key::Int((r as i64).wrapping_mul(1 << 40)),
                    _ => Key::Str(format!("k{r}").into()),
                }
            };
            let event_keys: Vec<Key> = (0..n_ev).map(|_| key(&mut seed, false)).collect();
            let spine_keys: Vec<Key> = (0..n_sp)
                .map(|_| {
                    let absent = n_ev == 0 || lcg(&mut seed) % 10 == 0;
                    key(&mut seed, absent)
                })
                .collect();
            // events in several batches too (a chunk of rows can span batches)
            let mut events = Events::empty(0);
            for part in event_keys.chunks(n_ev.div_ceil(3).max(1)) {
                let _ = events.push(arr(part), vec![0; part.len()], Vec::new());
            }
            let mut spine = Vec::new();
            let per = n_sp.div_ceil(batches).max(1);
            for part in spine_keys.chunks(per) {
                let ts: Vec<i64> = (0..part.len() as i64).collect();
                spine.push((arr(part), ts));
            }
            let (want_ev, want_sp, want_n) = reference_groups(&event_keys, &spine_keys);
            let want_ts: Vec<i64> = spine.iter().flat_map(|(_, t)| t.iter().copied()).collect();
            for threads in 1..=4 {
                let (ev, sp, sp_ts, n) = group_ids_in(&events, &spine, n_sp, threads);
                let what = format!("events {n_ev} spine {n_sp} kind {kind} threads {threads}");
                assert_eq!(ev, want_ev, "{what}");
                assert_eq!(sp, want_sp, "{what}");
                assert_eq!(n, want_n, "{what}");
                assert_eq!(sp_ts, want_ts, "{what}");
            }
        }
    }

    // The parallel empty-history fill writes exactly the rows without events and leaves the
    // others as they were, at every size (and with no features at all).
    #[test]
    fn fill_empty_equals_sequential() {
        let mut seed = 3u64;
        for &(rows, nf) in &[
            (0usize, 3usize),
            (10, 3),
            (2 * FILL_ROWS + 17, 5),
            (3 * FILL_ROWS, 1),
            (100, 0),
        ] {
            let groups: Vec<u32> = (0..rows)
                .map(|_| if lcg(&mut seed) % 4 == 0 { NO_GROUP } else { 1 })
                .collect();
            let empty: Vec<f64> = (0..nf).map(|f| f as f64 + 0.5).collect();
            let mut out = vec![-1.0; rows * nf];
            fill_empty(&mut out, &groups, &empty);
            for (r, &g) in groups.iter().enumerate() {
                for f in 0..nf {
                    let want = if g == NO_GROUP { empty[f] } else { -1.0 };
                    assert_eq!(out[r * nf + f].to_bits(), want.to_bits(), "row {r} col {f}");
                }
            }
        }
    }

    // `bucket` (chunked from BUCKET_PARALLEL_ROWS rows on) gives the sequential result.
    #[test]
    fn bucket_equals_sequential_above_threshold() {
        let mut seed = 11u64;
        for &(rows, n_groups) in &[
            (BUCKET_PARALLEL_ROWS + 3, 1000usize),
            (BUCKET_PARALLEL_ROWS * 2, 1),
            (BUCKET_PARALLEL_ROWS, 4 * BUCKET_PARALLEL_ROWS),
        ] {
            let groups: Vec<u32> = (0..rows)
                .map(|_| {
                    let r = lcg(&mut seed);
                    if r % 17 == 0 {
                        NO_GROUP
                    } else {
                        (r % n_groups as u64) as u32
                    }
                })
                .collect();
            let ts: Vec<i64> = (0..rows).map(|_| (lcg(&mut seed) % 1000) as i64).collect();
            let (s1, e1) = bucket_in(&groups, &ts, n_groups, 1);
            let (s2, e2) = bucket(&groups, &ts, n_groups);
            assert_eq!(s1, s2);
            let key = |e: &Vec<Entry>| e.iter().map(|x| (x.ts, x.idx)).collect::<Vec<_>>();
            assert_eq!(key(&e1), key(&e2));
            // against a reference: rows by (group, time), ties in row order (a stable sort);
            // a single group's bucket is above PAR_SORT_ROWS, sorted by the pool
            let mut want: Vec<(u32, i64, u32)> = (0..rows)
                .filter(|&i| groups[i] != NO_GROUP)
                .map(|i| (groups[i], ts[i], i as u32))
                .collect();
            want.sort_by_key(|x| (x.0, x.1));
            let want: Vec<(i64, u32)> = want.into_iter().map(|x| (x.1, x.2)).collect();
            assert_eq!(key(&e1), want);
            assert!(n_groups > 1 || s1[1] >= PAR_SORT_ROWS);
        }
    }

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
