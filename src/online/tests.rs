//! The engine's unit tests (ingest, reads, guards, snapshots of engine state).

//! The one-event path ([`Engine::ingest_one`]) against the batch paths of
//! [`Engine::ingest`]: the same events in the same arrival order must leave bit-identical
//! state, counters and answers: always for one event per call, and without a ttl however
//! the stream is cut into calls.

use super::*;
use crate::input::{string_identity, KeyArr};
use crate::state::NULL;
use proptest::prelude::*;

const M: i64 = 60_000_000_000;

fn plan(lateness: &str, ttl: bool) -> Arc<Plan> {
    plan_with(lateness, ttl, "")
}

/// [`plan`] with more document fields (`extra`: `, "max_ahead": "2h"` ...).
fn plan_with(lateness: &str, ttl: bool, extra: &str) -> Arc<Plan> {
    let ttl = if ttl { r#""3h""# } else { "null" };
    let doc = format!(
        r#"{{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "{lateness}",
        "ttl": {ttl}{extra}, "features": [
          {{"agg": "count", "window": "1h"}},
          {{"agg": "sum", "column": "v", "window": "1h"}},
          {{"agg": "mean", "column": "v", "window": "30m"}},
          {{"agg": "var", "column": "v", "window": "1h"}},
          {{"agg": "std", "column": "v"}},
          {{"agg": "min", "column": "v", "window": "1h"}},
          {{"agg": "max", "column": "v"}},
          {{"agg": "first", "column": "v", "window": "30m"}},
          {{"agg": "last", "column": "v"}},
          {{"agg": "distinct_count", "column": "c", "window": "1h"}},
          {{"agg": "quantile", "column": "v", "q": 0.5, "window": "1h"}},
          {{"agg": "decayed_sum", "column": "v", "half_life": "10m", "window": "1h"}},
          {{"agg": "time_since_last", "window": "30m"}},
          {{"agg": "count"}},
          {{"agg": "sum", "column": "v", "window": "1h", "hop": "15m"}},
          {{"agg": "max", "column": "v", "window": "30m", "hop": "10m"}}
        ]}}"#
    );
    Arc::new(Plan::new(Spec::from_json(&doc).unwrap()))
}

#[derive(Clone, Debug)]
struct Ev {
    k: u8,
    ts: i64,
    v: Option<f64>,
    c: Option<u8>,
}

fn words(plan: &Plan, e: &Ev) -> Vec<u64> {
    plan.columns
        .iter()
        .map(|col| match col.name.as_str() {
            "v" => e.v.map_or(NULL, f64::to_bits),
            "c" => e.c.map_or(NULL, |c| string_identity(&format!("cat{c}"))),
            other => panic!("unexpected column {other}"),
        })
        .collect()
}

/// `evs` in the order one batch applies them: by time, ties by value words (stable).
fn arrival_sorted(plan: &Plan, evs: &[Ev]) -> Vec<Ev> {
    let mut v = evs.to_vec();
    v.sort_by_key(|e| (e.ts, words(plan, e)));
    v
}

fn key_name(k: u8) -> String {
    format!("key-{k}")
}

fn events<'a>(plan: &Plan, evs: &[Ev], str_keys: bool) -> Events<'a> {
    let mut out = Events::empty(plan.columns.len());
    if evs.is_empty() {
        return out;
    }
    let keys = if str_keys {
        KeyArr::Owned(evs.iter().map(|e| key_name(e.k)).collect())
    } else {
        KeyArr::Int(evs.iter().map(|e| e.k as i64).collect())
    };
    let per_event: Vec<Vec<u64>> = evs.iter().map(|e| words(plan, e)).collect();
    let values = (0..plan.columns.len())
        .map(|c| per_event.iter().map(|w| w[c]).collect())
        .collect();
    let ts = evs.iter().map(|e| e.ts).collect();
    assert!(out.push(keys, ts, values).is_ok());
    out
}

/// A `Debug` rendering with the entries of every map (`{k: v, ...}`, unlike a struct's
/// `{ a: b }`) sorted: hash maps inside the state iterate in an arbitrary order.
fn canonical(s: &str) -> String {
    // (brace characters by code: a source scanner counts the literal ones as blocks)
    const OPEN: char = '\x7b';
    const CLOSE: char = '\x7d';
    fn block(chars: &[char], i: &mut usize, out: &mut String) {
        // at an opening brace (or the start): copy until the matching closing one
        while *i < chars.len() {
            let c = chars[*i];
            if c == CLOSE {
                return;
            }
            *i += 1;
            if c == OPEN && chars.get(*i) != Some(&' ') && chars.get(*i) != Some(&CLOSE) {
                // a map: split its top level at ", " and sort
                let mut inner = String::new();
                block(chars, i, &mut inner);
                *i += 1; // the closing brace
                let mut parts = Vec::new();
                let (mut depth, mut cur) = (0i32, String::new());
                let ic: Vec<char> = inner.chars().collect();
                let mut j = 0;
                while j < ic.len() {
                    match ic[j] {
                        OPEN | '[' | '(' => depth += 1,
                        CLOSE | ']' | ')' => depth -= 1,
                        ',' if depth == 0 && ic.get(j + 1) == Some(&' ') => {
                            parts.push(std::mem::take(&mut cur));
                            j += 2;
                            continue;
                        }
                        _ => {}
                    }
                    cur.push(ic[j]);
                    j += 1;
                }
                parts.push(cur);
                parts.sort();
                out.push(OPEN);
                out.push_str(&parts.join(", "));
                out.push(CLOSE);
            } else if c == OPEN {
                out.push(c);
                let mut inner = String::new();
                block(chars, i, &mut inner);
                out.push_str(&inner);
                if *i < chars.len() {
                    out.push(CLOSE);
                    *i += 1;
                }
            } else {
                out.push(c);
            }
        }
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        block(&chars, &mut i, &mut out);
        if i < chars.len() {
            out.push(CLOSE);
            i += 1;
        }
    }
    out
}

#[test]
fn canonical_sorts_map_entries_only() {
    assert_eq!(
        canonical("A { x: {b: 1, a: S { q: [2, 1] }}, y: [3, 1] }"),
        "A { x: {a: S { q: [2, 1] }, b: 1}, y: [3, 1] }"
    );
}

/// Everything observable about an engine, compared bit for bit.
fn observe(eng: &Engine, str_keys: bool, queries: &[i64]) -> (Vec<String>, String, Vec<u64>) {
    let mut states: Vec<String> = eng
        .shards
        .iter()
        .flat_map(|s| {
            s.read()
                .keys
                .iter()
                .map(|(k, st)| canonical(&format!("{k:?} {st:?}")))
                .collect::<Vec<_>>()
        })
        .collect();
    states.sort();
    let meta = eng.meta.lock().clone();
    let head = format!(
        "{:?} {} {:?} {} {}",
        meta.key_kind,
        meta.watermark,
        meta.counters,
        meta.last_sweep,
        eng.watermark()
    );
    let mut answers = Vec::new();
    let mut out = vec![0.0; eng.plan.n_features()];
    for k in 0..5u8 {
        let name = key_name(k);
        let key = if str_keys {
            KeyRef::Str(&name)
        } else {
            KeyRef::Int(k as i64)
        };
        for &t in queries {
            let mut row = [0u64; 1];
            match eng.shard(key).read().get(&eng.plan, key, t, &mut out) {
                Ok(()) => answers.extend(out.iter().map(|x| x.to_bits())),
                Err(e) => {
                    row[0] = e.to_string().len() as u64;
                    answers.extend(row);
                }
            }
        }
    }
    (states, head, answers)
}

fn ev_strategy() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (
            0u8..5,
            0i64..(6 * 60),
            // mostly a little out of order, sometimes far behind (late)
            prop::option::weighted(0.1, 0i64..120),
            0i64..8,
            prop::option::weighted(0.85, -64i32..64),
            prop::option::weighted(0.9, 0u8..4),
        ),
        0..120,
    )
    .prop_map(|raw| {
        let mut evs: Vec<Ev> = raw
            .into_iter()
            .map(|(k, minute, back, jitter, v, c)| Ev {
                k,
                ts: (minute - back.unwrap_or(0) - jitter) * M + jitter,
                v: v.map(|v| v as f64 / 4.0),
                c,
            })
            .collect();
        // roughly increasing arrival times, with the jitter and "back" offsets kept
        evs.sort_by_key(|e| e.ts / (10 * M));
        evs
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn one_event_path_equals_batch_paths(
        evs in ev_strategy(),
        cuts in prop::collection::vec(1usize..48, 1..40),
        lateness in prop::sample::select(vec!["0s", "5m", "45m"]),
        ttl in any::<bool>(),
        str_keys in any::<bool>(),
    ) {
        let plan = plan(lateness, ttl);
        let queries: Vec<i64> = [-60i64, 0, 61, 119, 200, 300, 359, 400, 1000]
            .iter()
            .map(|m| m * M + 7)
            .collect();

        // one event per call, the direct path
        let one = Engine::new(Arc::clone(&plan));
        for e in &evs {
            let name = key_name(e.k);
            let key = if str_keys { KeyRef::Str(&name) } else { KeyRef::Int(e.k as i64) };
            one.ingest_one(key, e.ts, &words(&plan, e), None).unwrap();
        }
        let want = observe(&one, str_keys, &queries);

        // one event per call through the batch path (its small-batch branch)
        let batches = Engine::new(Arc::clone(&plan));
        for e in &evs {
            batches.ingest(&events(&plan, std::slice::from_ref(e), str_keys)).unwrap();
        }
        prop_assert_eq!(&observe(&batches, str_keys, &queries), &want);
        if ttl {
            // eviction sweeps run at the end of a call: with a ttl, how the stream is cut
            // into calls is observable (by design), so only equal cuts compare
            return Ok(());
        }

        // A batch is one arrival: its events apply in arrival order (by time, ties by
        // value), so a batch equals the one-event path fed that batch sorted.
        let one_by_one = |batches: &[&[Ev]]| {
            let eng = Engine::new(Arc::clone(&plan));
            for b in batches {
                for e in arrival_sorted(&plan, b) {
                    let name = key_name(e.k);
                    let key = if str_keys { KeyRef::Str(&name) } else { KeyRef::Int(e.k as i64) };
                    eng.ingest_one(key, e.ts, &words(&plan, &e), None).unwrap();
                }
            }
            observe(&eng, str_keys, &queries)
        };

        // the whole stream as one batch (the small path up to 32 events, else the large one)
        let all = Engine::new(Arc::clone(&plan));
        all.ingest(&events(&plan, &evs, str_keys)).unwrap();
        prop_assert_eq!(&observe(&all, str_keys, &queries), &one_by_one(&[&evs]));

        // cut into batches of varied sizes (both batch paths)
        let cut = Engine::new(Arc::clone(&plan));
        let mut rest = &evs[..];
        let mut i = 0;
        let mut parts: Vec<&[Ev]> = Vec::new();
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            cut.ingest(&events(&plan, &rest[..n], str_keys)).unwrap();
            parts.push(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        prop_assert_eq!(&observe(&cut, str_keys, &queries), &one_by_one(&parts));
    }

    #[test]
    fn a_batch_is_one_arrival(
        evs in ev_strategy(),
        first_len in 0usize..60,
        seed in any::<u64>(),
        lateness in prop::sample::select(vec!["0s", "5m", "45m"]),
        str_keys in any::<bool>(),
    ) {
        // a first batch, then a second one in the order of the stream, time-sorted, and
        // shuffled: the same state and answers (bit for bit) whatever the order of a batch
        let plan = plan(lateness, false);
        let (first, second) = evs.split_at(first_len.min(evs.len()));
        let mut by_time = second.to_vec();
        by_time.sort_by_key(|e| e.ts);
        let mut shuffled = second.to_vec();
        let mut r = seed | 1;
        for i in (1..shuffled.len()).rev() {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            shuffled.swap(i, (r % (i as u64 + 1)) as usize);
        }
        let run = |second: &[Ev]| {
            let eng = Engine::new(Arc::clone(&plan));
            let a = eng.ingest(&events(&plan, first, str_keys)).unwrap();
            let b = eng.ingest(&events(&plan, second, str_keys)).unwrap();
            (eng, a, b)
        };
        let (eng, a, b) = run(&by_time);
        let wm = eng.watermark();
        let lateness_ns = plan.spec.allowed_lateness;
        let queries: Vec<i64> = [0, 1, 7, 60, 1000]
            .iter()
            .map(|m| wm.saturating_sub(lateness_ns).saturating_add(m * M))
            .collect();
        let want = observe(&eng, str_keys, &queries);
        for order in [second, &shuffled[..]] {
            let (other, a2, b2) = run(order);
            prop_assert_eq!((&a2, &b2), (&a, &b));
            prop_assert_eq!(&observe(&other, str_keys, &queries), &want);
        }
        // the first batch drops nothing; the second drops exactly its events older than the
        // watermark after the first minus the lateness
        let wm1 = first.iter().map(|e| e.ts).max().unwrap_or(i64::MIN);
        let late: Vec<bool> =
            second.iter().map(|e| e.ts < wm1.saturating_sub(lateness_ns)).collect();
        prop_assert_eq!(&a, &Ingested { accepted: first.len() as u64, ..Ingested::default() });
        prop_assert_eq!(b.late, late.iter().filter(|l| **l).count() as u64);
        prop_assert_eq!(a.accepted + b.accepted + b.late, evs.len() as u64);

        // and equal to backfill of the events kept, at every query instant
        let kept: Vec<Ev> = first
            .iter()
            .chain(second.iter().zip(&late).filter(|(_, l)| !**l).map(|(e, _)| e))
            .cloned()
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        let kept_events = events(&plan, &kept, str_keys);
        let names: Vec<String> = (0..5u8).map(key_name).collect();
        let mut spine_keys = Vec::new();
        let mut spine_ts = Vec::new();
        for k in 0..5u8 {
            for &t in &queries {
                spine_keys.push(k);
                spine_ts.push(t);
            }
        }
        let keys = if str_keys {
            KeyArr::Owned(spine_keys.iter().map(|&k| names[k as usize].clone()).collect())
        } else {
            KeyArr::Int(spine_keys.iter().map(|&k| k as i64).collect())
        };
        let spine = vec![(keys, spine_ts.clone())];
        let cols = crate::offline::backfill(&plan, &kept_events, &spine, &mut |_, _| true).unwrap();
        let mut out = vec![0.0; plan.n_features()];
        for (row, (&k, &t)) in spine_keys.iter().zip(&spine_ts).enumerate() {
            let key = if str_keys { KeyRef::Str(&names[k as usize]) } else { KeyRef::Int(k as i64) };
            eng.get(key, t, &mut out).unwrap();
            for (f, col) in cols.iter().enumerate() {
                let b = match col {
                    crate::offline::FeatureColumn::Int(v) => v[row] as f64,
                    crate::offline::FeatureColumn::Float(v) => v[row],
                    crate::offline::FeatureColumn::Text(_) => f64::NAN,
                };
                prop_assert!(
                    out[f].to_bits() == b.to_bits() || (out[f].is_nan() && b.is_nan()),
                    "feature {} of key {} at {}: online {} backfill {}", f, k, t, out[f], b
                );
            }
        }
    }
}

/// Backfill's answers for key `k` at each of `times` (NaN = null), from `evs` (none late).
fn backfill_answers(
    plan: &Plan,
    evs: &[Ev],
    k: u8,
    times: &[i64],
    str_keys: bool,
) -> Vec<Vec<f64>> {
    let name = key_name(k);
    let keys = if str_keys {
        KeyArr::Owned(vec![name; times.len()])
    } else {
        KeyArr::Int(vec![k as i64; times.len()])
    };
    let spine = vec![(keys, times.to_vec())];
    let cols =
        crate::offline::backfill(plan, &events(plan, evs, str_keys), &spine, &mut |_, _| true)
            .unwrap();
    (0..times.len())
        .map(|row| {
            cols.iter()
                .map(|col| match col {
                    crate::offline::FeatureColumn::Int(v) => v[row] as f64,
                    crate::offline::FeatureColumn::Float(v) => v[row],
                    crate::offline::FeatureColumn::Text(_) => f64::NAN,
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_read_takes_away_no_answer() {
    // Key 0 gets 300 events over 75 minutes, then falls silent while key 1 moves the
    // watermark on to 137 min (lateness 5m): key 0 stays settled near 69 min with ~250 rows
    // between its settled point and the settle point (132 min), more than
    // SETTLE_ON_READ_ROWS. Reads at the watermark (and one at 100 min) must leave every
    // instant from the key's settled point on answered, and answered as backfill of the same
    // events answers (a read that settled the key took those instants away).
    for str_keys in [false, true] {
        let plan = plan("5m", false);
        let mut evs: Vec<Ev> = (0..300)
            .map(|i| Ev {
                k: 0,
                ts: i * M / 4,
                v: Some((i % 9) as f64),
                c: Some((i % 3) as u8),
            })
            .collect();
        evs.extend((0..20).map(|i| Ev {
            k: 1,
            ts: 80 * M + i * 3 * M,
            v: None,
            c: None,
        }));
        let name = key_name(0);
        let key = if str_keys {
            KeyRef::Str(&name)
        } else {
            KeyRef::Int(0)
        };
        let eng = Engine::new(Arc::clone(&plan));
        eng.ingest(&events(&plan, &evs, str_keys)).unwrap();
        let settled = eng.shard(key).read().keys.get(&key).unwrap().settled;
        let sp = eng.settle_point();
        assert!(
            settled < 70 * M && sp == 132 * M,
            "settled {settled}, settle point {sp}"
        );
        assert!(
            eng.would_settle(key, 140 * M),
            "more than SETTLE_ON_READ_ROWS rows of backlog"
        );
        // every minute (and a few odd instants) from the key's settled point to past the
        // watermark
        let times: Vec<i64> = (0..90)
            .map(|m| settled + m * M + (m % 7) * 1_000)
            .chain([sp - 1, sp, sp + 1, 140 * M + 1])
            .collect();
        let want = backfill_answers(&plan, &evs, 0, &times, str_keys);
        let n = plan.n_features();
        let check = |eng: &Engine, what: &str| {
            let mut out = vec![0.0; n];
            for (t, w) in times.iter().zip(&want) {
                eng.get(key, *t, &mut out)
                    .unwrap_or_else(|e| panic!("{what}: no answer at {t}: {e}"));
                for (f, (a, b)) in out.iter().zip(w).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                        "{what}: feature {f} at {t}: online {a} backfill {b}"
                    );
                }
            }
        };
        let mut out = vec![0.0; n];
        eng.get(key, 140 * M + 1, &mut out).unwrap();
        eng.get(key, 100 * M, &mut out).unwrap();
        check(&eng, "after reads at 140 and 100 min");
        // and again (the reads of `check` itself changed nothing either)
        check(&eng, "read twice");
        assert_eq!(
            eng.shard(key).read().keys.get(&key).unwrap().settled,
            settled
        );
        // settling on request does take them away (the reason reads never do)
        eng.settle_key(key, 140 * M);
        assert!(eng.get(key, settled + M, &mut out).is_err());
    }
}

#[test]
fn one_event_path_checks_the_key_kind_first() {
    let plan = plan("5m", false);
    let eng = Engine::new(Arc::clone(&plan));
    let e = Ev {
        k: 1,
        ts: 10 * M,
        v: Some(1.0),
        c: None,
    };
    eng.ingest_one(KeyRef::Int(1), e.ts, &words(&plan, &e), None)
        .unwrap();
    let before = observe(&eng, false, &[20 * M]);
    let err = eng
        .ingest_one(KeyRef::Str("a"), e.ts, &words(&plan, &e), None)
        .unwrap_err();
    assert!(err.to_string().contains("integer keys"), "{err}");
    assert_eq!(observe(&eng, false, &[20 * M]), before);
    // a late event is counted, not applied
    let late = eng
        .ingest_one(KeyRef::Int(2), 0, &words(&plan, &e), None)
        .unwrap();
    assert_eq!(
        late,
        Ingested {
            late: 1,
            ..Ingested::default()
        }
    );
}

// ------------------------------------------------------------------ guards

const DAY: i64 = 24 * 60 * M;

/// `evs` with ids (event i of `ids` is the id of `evs[i]`).
fn events_ids<'a>(plan: &Plan, evs: &[Ev], ids: &[i64], str_keys: bool) -> Events<'a> {
    let mut e = events(plan, evs, str_keys);
    if !evs.is_empty() {
        e.ids = ids.iter().map(|&i| EventId::Int(i)).collect();
    }
    e
}

/// Answers and per-key state (not the counters) of an engine.
fn answers(eng: &Engine, str_keys: bool) -> (Vec<String>, Vec<u64>) {
    let wm = eng.watermark();
    let late = eng.plan.spec.allowed_lateness;
    let queries: Vec<i64> = [0i64, 1, 7, 60, 1000]
        .iter()
        .map(|m| wm.saturating_sub(late).saturating_add(m * M))
        .collect();
    let (states, _, answers) = observe(eng, str_keys, &queries);
    (states, answers)
}

fn ev(k: u8, ts: i64, v: f64) -> Ev {
    Ev {
        k,
        ts,
        v: Some(v),
        c: Some(k % 4),
    }
}

#[test]
fn a_far_future_event_is_rejected_on_every_path() {
    let plan = plan("5m", false);
    assert_eq!(plan.spec.max_ahead_ns(), Some(DAY + 5 * M));
    let far = 100 * 365 * DAY;
    let base: Vec<Ev> = (0..10).map(|i| ev(i as u8 % 5, i * M, i as f64)).collect();
    for str_keys in [false, true] {
        // one event per call
        let one = Engine::new(Arc::clone(&plan));
        one.ingest(&events(&plan, &base, str_keys)).unwrap();
        let name = key_name(1);
        let key = if str_keys {
            KeyRef::Str(&name)
        } else {
            KeyRef::Int(1)
        };
        let e = ev(1, far, 1.0);
        let r = one.ingest_one(key, e.ts, &words(&plan, &e), None).unwrap();
        assert_eq!(
            r,
            Ingested {
                ahead: 1,
                rejected: vec![0],
                ..Ingested::default()
            }
        );
        assert_eq!(one.watermark(), 9 * M, "the watermark did not move");
        // a normal event afterwards is applied, not late
        let e = ev(1, 10 * M, 2.0);
        let r = one.ingest_one(key, e.ts, &words(&plan, &e), None).unwrap();
        assert_eq!(r.accepted, 1);
        assert_eq!(one.stats().counters.ahead_events_rejected, 1);

        // the small batch path and the large one: rows named, the rest applied
        for n in [6usize, 200] {
            let eng = Engine::new(Arc::clone(&plan));
            eng.ingest(&events(&plan, &base, str_keys)).unwrap();
            let mut batch: Vec<Ev> = (0..n as i64)
                .map(|i| ev((i % 5) as u8, 10 * M + i * M / 8, i as f64))
                .collect();
            let clean = batch.clone();
            batch.insert(1, ev(2, far, 5.0));
            batch.insert(4, ev(3, far + 7 * DAY, 6.0));
            let r = eng.ingest(&events(&plan, &batch, str_keys)).unwrap();
            assert_eq!(r.ahead, 2);
            assert_eq!(r.rejected, vec![1, 4]);
            assert_eq!(r.accepted, n as u64);
            let want = Engine::new(Arc::clone(&plan));
            want.ingest(&events(&plan, &base, str_keys)).unwrap();
            want.ingest(&events(&plan, &clean, str_keys)).unwrap();
            assert_eq!(eng.watermark(), want.watermark());
            assert_eq!(answers(&eng, str_keys), answers(&want, str_keys));
        }
    }
}

#[test]
fn an_empty_engine_guards_from_the_batch_lower_median() {
    let plan = plan("0s", false);
    let far = 50 * 365 * DAY;
    let eng = Engine::new(Arc::clone(&plan));
    let batch = vec![ev(0, far, 1.0), ev(1, M, 1.0), ev(2, 2 * M, 1.0)];
    let r = eng.ingest(&events(&plan, &batch, false)).unwrap();
    assert_eq!((r.accepted, r.ahead, r.rejected.clone()), (2, 1, vec![0]));
    assert_eq!(eng.watermark(), 2 * M);
    // two events: the lower median is the earlier one
    let eng = Engine::new(Arc::clone(&plan));
    let r = eng
        .ingest(&events(&plan, &[ev(0, far, 1.0), ev(1, M, 1.0)], false))
        .unwrap();
    assert_eq!(r.rejected, vec![0]);
    // a lone first event has nothing to be compared with: applied (advance_watermark
    // seeds a reference first)
    let eng = Engine::new(Arc::clone(&plan));
    let e = ev(0, far, 1.0);
    let r = eng
        .ingest_one(KeyRef::Int(0), far, &words(&plan, &e), None)
        .unwrap();
    assert_eq!(r.accepted, 1);
    let seeded = Engine::new(Arc::clone(&plan));
    assert_eq!(seeded.advance_watermark(M), M);
    let r = seeded
        .ingest_one(KeyRef::Int(0), far, &words(&plan, &e), None)
        .unwrap();
    assert_eq!(r.ahead, 1);
    assert_eq!(seeded.advance_watermark(0), M, "advance never goes back");
    assert_eq!(seeded.watermark(), M);
}

#[test]
fn a_stream_that_jumps_is_followed_after_agreeing_events() {
    let plan = plan("5m", false);
    let jump = 30 * DAY;
    for batched in [false, true] {
        let eng = Engine::new(Arc::clone(&plan));
        eng.ingest(&events(&plan, &[ev(0, 0, 1.0), ev(1, M, 1.0)], false))
            .unwrap();
        // far events that do not agree (more than max_ahead apart) never confirm
        let mut total = Ingested::default();
        for i in 0..(2 * AHEAD_CONFIRM as i64) {
            let e = ev(0, jump + i * 2 * DAY, 1.0);
            let r = eng
                .ingest_one(KeyRef::Int(0), e.ts, &words(&plan, &e), None)
                .unwrap();
            total.ahead += r.ahead;
        }
        assert_eq!(total.ahead, 2 * AHEAD_CONFIRM as u64);
        assert_eq!(eng.watermark(), M);
        // AHEAD_CONFIRM events within max_ahead of each other: the last one leads
        let agreeing: Vec<Ev> = (0..AHEAD_CONFIRM as i64)
            .map(|i| ev((i % 5) as u8, 500 * DAY + i * M, i as f64))
            .collect();
        let r = if batched {
            eng.ingest(&events(&plan, &agreeing, false)).unwrap()
        } else {
            let mut r = Ingested::default();
            for e in &agreeing {
                let one = eng
                    .ingest_one(KeyRef::Int(e.k as i64), e.ts, &words(&plan, e), None)
                    .unwrap();
                r.accepted += one.accepted;
                r.ahead += one.ahead;
            }
            r
        };
        assert_eq!(r.ahead, AHEAD_CONFIRM as u64 - 1);
        assert_eq!(r.accepted, 1);
        assert_eq!(eng.watermark(), 500 * DAY + (AHEAD_CONFIRM as i64 - 1) * M);
        // and the stream goes on from there
        let e = ev(0, 500 * DAY + 20 * M, 1.0);
        let r = eng
            .ingest_one(KeyRef::Int(0), e.ts, &words(&plan, &e), None)
            .unwrap();
        assert_eq!(r.accepted, 1);
    }
}

#[test]
fn max_ahead_null_disables_the_guard_and_a_bound_is_kept() {
    let off = plan_with("0s", false, r#", "max_ahead": null"#);
    assert_eq!(off.spec.max_ahead_ns(), None);
    let eng = Engine::new(Arc::clone(&off));
    eng.ingest(&events(&off, &[ev(0, 0, 1.0)], false)).unwrap();
    let r = eng
        .ingest(&events(&off, &[ev(0, 100 * 365 * DAY, 1.0)], false))
        .unwrap();
    assert_eq!(r.accepted, 1);
    let two = plan_with("0s", false, r#", "max_ahead": "2h""#);
    assert_eq!(two.spec.max_ahead_ns(), Some(120 * M));
    let eng = Engine::new(Arc::clone(&two));
    eng.ingest(&events(&two, &[ev(0, 0, 1.0)], false)).unwrap();
    let r = eng
        .ingest(&events(
            &two,
            &[ev(0, 120 * M, 1.0), ev(1, 240 * M + 1, 1.0)],
            false,
        ))
        .unwrap();
    assert_eq!((r.accepted, r.ahead, r.rejected.clone()), (1, 1, vec![1]));
    // the bound is measured from the latest time applied before each event (in time
    // order): a batch covering a long stretch densely is applied whole, in any row order;
    // an event after a gap wider than the bound is not
    for rev in [false, true] {
        let eng = Engine::new(Arc::clone(&two));
        eng.ingest(&events(&two, &[ev(0, 0, 1.0)], false)).unwrap();
        let mut chain: Vec<Ev> = (1..40).map(|i| ev(0, i * 100 * M, 1.0)).collect();
        chain.push(ev(1, 39 * 100 * M + 121 * M, 1.0));
        if rev {
            chain.reverse();
        }
        let r = eng.ingest(&events(&two, &chain, false)).unwrap();
        assert_eq!((r.accepted, r.ahead), (39, 1));
        assert_eq!(r.rejected, vec![if rev { 0 } else { 39 }]);
        assert_eq!(eng.watermark(), 3900 * M);
    }
}

#[test]
fn a_trusted_history_is_not_guarded() {
    let plan = plan("5m", false);
    let evs = vec![
        ev(0, 0, 1.0),
        ev(1, M, 1.0),
        ev(0, 3 * DAY, 2.0),
        ev(1, 3 * DAY + M, 2.0),
    ];
    let eng = Engine::new(Arc::clone(&plan));
    let r = eng.ingest_trusted(&events(&plan, &evs, false)).unwrap();
    assert_eq!((r.accepted, r.ahead), (4, 0));
    let live = Engine::new(Arc::clone(&plan));
    let r = live.ingest(&events(&plan, &evs, false)).unwrap();
    assert_eq!(
        (r.accepted, r.ahead, r.rejected.clone()),
        (2, 2, vec![2, 3])
    );
    // after the history the live rules hold again
    let r = eng
        .ingest(&events(&plan, &[ev(0, 30 * DAY, 1.0)], false))
        .unwrap();
    assert_eq!(r.ahead, 1);
}

#[test]
fn duplicates_are_dropped_first_arrival_wins_and_ids_are_forgotten() {
    let plan = plan_with("5m", false, r#", "dedupe_on": "id""#);
    let eng = Engine::new(Arc::clone(&plan));
    // within one batch: the first in arrival order (time, ties by value) wins
    let b1 = vec![ev(0, M, 9.0), ev(0, M, 1.0), ev(1, 2 * M, 3.0)];
    let r = eng
        .ingest(&events_ids(&plan, &b1, &[7, 7, 8], false))
        .unwrap();
    assert_eq!((r.accepted, r.duplicates), (2, 1));
    let want = Engine::new(Arc::clone(&plan));
    want.ingest(&events_ids(
        &plan,
        &[ev(0, M, 1.0), ev(1, 2 * M, 3.0)],
        &[7, 8],
        false,
    ))
    .unwrap();
    assert_eq!(answers(&eng, false), answers(&want, false));
    // across batches and paths, a retried batch
    let r = eng
        .ingest(&events_ids(&plan, &b1, &[7, 7, 8], false))
        .unwrap();
    assert_eq!((r.accepted, r.duplicates, r.late), (0, 3, 0));
    let e = ev(1, 2 * M, 3.0);
    let r = eng
        .ingest_one(
            KeyRef::Int(1),
            e.ts,
            &words(&plan, &e),
            Some(EventId::Int(8)),
        )
        .unwrap();
    assert_eq!(r.duplicates, 1);
    assert_eq!(answers(&eng, false), answers(&want, false));
    assert_eq!(eng.stats().counters.duplicates_dropped, 5);
    // ids are remembered for the horizon (lateness 5m + longest window 1h15m) only: memory
    // stays bounded
    for i in 0..2000i64 {
        let e = ev((i % 5) as u8, 3 * M + i * M, 1.0);
        eng.ingest_one(
            KeyRef::Int(e.k as i64),
            e.ts,
            &words(&plan, &e),
            Some(EventId::Int(100 + i)),
        )
        .unwrap();
    }
    let seen = eng.meta.lock().guard.seen.len() as i64;
    let horizon = guard::Rules::of(&plan.spec).horizon / M;
    assert_eq!(horizon, 80);
    assert!(
        seen <= horizon + horizon / 4 + 2,
        "{seen} ids kept for an 80 minute horizon"
    );
    // a copy of a forgotten id is late anyway
    let e = ev(0, M, 9.0);
    let r = eng
        .ingest_one(
            KeyRef::Int(0),
            e.ts,
            &words(&plan, &e),
            Some(EventId::Int(7)),
        )
        .unwrap();
    assert_eq!(r.late, 1);
}

#[test]
fn the_guard_state_survives_a_snapshot() {
    let plan = plan_with("5m", false, r#", "dedupe_on": "id""#);
    let eng = Engine::new(Arc::clone(&plan));
    eng.ingest(&events_ids(
        &plan,
        &[ev(0, M, 1.0), ev(1, 2 * M, 1.0)],
        &[1, 2],
        false,
    ))
    .unwrap();
    let r = eng
        .ingest(&events_ids(
            &plan,
            &[ev(0, 90 * DAY, 1.0), ev(1, 2 * M, 1.0)],
            &[3, 2],
            false,
        ))
        .unwrap();
    assert_eq!((r.ahead, r.duplicates), (1, 1));
    let dir = std::env::temp_dir().join(format!("rtml-guard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("g.snap");
    eng.snapshot(&path).unwrap();
    let back = Engine::restore(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(back.stats().counters, eng.stats().counters);
    assert_eq!(back.meta.lock().guard, eng.meta.lock().guard);
    let again = events_ids(&plan, &[ev(0, M, 1.0)], &[1], false);
    assert_eq!(back.ingest(&again).unwrap().duplicates, 1);
    assert_eq!(answers(&back, false), answers(&eng, false));
}

/// A clean stream cut into batches, then polluted: far-future events in some batches (never
/// the first), copies of events within their batch, and retried batches.
#[derive(Clone, Debug)]
struct Polluted {
    clean: Vec<Vec<(Ev, i64)>>,
    dirty: Vec<Vec<(Ev, i64)>>,
    far: u64,
    copies: u64,
}

fn polluted() -> impl Strategy<Value = Polluted> {
    (
        ev_strategy(),
        prop::collection::vec(1usize..40, 1..20),
        prop::collection::vec((0usize..8, 0usize..64, 0u8..4), 0..24),
    )
        .prop_map(|(evs, cuts, noise)| {
            let mut clean: Vec<Vec<(Ev, i64)>> = Vec::new();
            let mut rest: Vec<(Ev, i64)> = evs
                .into_iter()
                .enumerate()
                .map(|(i, e)| (e, i as i64))
                .collect();
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                clean.push(rest.drain(..n).collect());
                i += 1;
            }
            let mut dirty = clean.clone();
            let (mut far, mut copies) = (0u64, 0u64);
            let mut retries = Vec::new();
            for (n, (b, pos, kind)) in noise.into_iter().enumerate() {
                if dirty.len() < 2 {
                    break;
                }
                let b = 1 + b % (dirty.len() - 1);
                let pos = pos % (dirty[b].len() + 1);
                match kind {
                    0 if far + 1 < AHEAD_CONFIRM as u64 => {
                        // far ahead: 40 years plus up to a year (ids never seen)
                        let ts = 40 * 365 * DAY + (n as i64) * 11 * DAY;
                        dirty[b]
                            .insert(pos, (ev((n % 5) as u8, ts, n as f64), 1_000_000 + n as i64));
                        far += 1;
                    }
                    1 if !dirty[b].is_empty() => {
                        let j = pos % dirty[b].len();
                        let copy = dirty[b][j].clone();
                        if copy.1 < 1_000_000 {
                            dirty[b].insert(pos, copy);
                            copies += 1;
                        }
                    }
                    _ => retries.push(b),
                }
            }
            // a retried batch is sent again after the batch that followed it
            retries.sort();
            retries.dedup();
            for b in retries.into_iter().rev() {
                let again: Vec<(Ev, i64)> = dirty[b]
                    .iter()
                    .filter(|(_, id)| *id < 1_000_000)
                    .cloned()
                    .collect();
                copies += again.len() as u64;
                let at = (b + 2).min(dirty.len());
                dirty.insert(at, again);
            }
            Polluted {
                clean,
                dirty,
                far,
                copies,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_polluted_stream_answers_like_the_clean_one(
        p in polluted(),
        lateness in prop::sample::select(vec!["0s", "5m", "45m"]),
        str_keys in any::<bool>(),
        one_by_one in any::<bool>(),
    ) {
        let plan = plan_with(lateness, false, r#", "dedupe_on": "id""#);
        let feed = |batches: &[Vec<(Ev, i64)>]| {
            let eng = Engine::new(Arc::clone(&plan));
            let mut total = Ingested::default();
            for b in batches {
                let evs: Vec<Ev> = b.iter().map(|(e, _)| e.clone()).collect();
                let ids: Vec<i64> = b.iter().map(|(_, i)| *i).collect();
                let r = if one_by_one {
                    // the same arrival: in time order, one call each (ties by value)
                    let mut idx: Vec<usize> = (0..evs.len()).collect();
                    idx.sort_by_key(|&i| (evs[i].ts, words(&plan, &evs[i])));
                    let mut r = Ingested::default();
                    for i in idx {
                        let e = &evs[i];
                        let name = key_name(e.k);
                        let key = if str_keys { KeyRef::Str(&name) } else { KeyRef::Int(e.k as i64) };
                        let one = eng.ingest_one(key, e.ts, &words(&plan, e), Some(EventId::Int(ids[i]))).unwrap();
                        r.accepted += one.accepted;
                        r.late += one.late;
                        r.ahead += one.ahead;
                        r.duplicates += one.duplicates;
                        if one.ahead == 1 {
                            r.rejected.push(i as u32);
                        }
                    }
                    r.rejected.sort();
                    r
                } else {
                    eng.ingest(&events_ids(&plan, &evs, &ids, str_keys)).unwrap()
                };
                // the rows named are exactly the far ones
                let far_rows: Vec<u32> = ids.iter().enumerate()
                    .filter(|(_, id)| **id >= 1_000_000).map(|(i, _)| i as u32).collect();
                prop_assert_eq!(&r.rejected, &far_rows);
                total.accepted += r.accepted;
                total.late += r.late;
                total.ahead += r.ahead;
                total.duplicates += r.duplicates;
            }
            Ok((eng, total))
        };
        let (clean, c) = feed(&p.clean)?;
        let (dirty, d) = feed(&p.dirty)?;
        prop_assert_eq!(answers(&dirty, str_keys), answers(&clean, str_keys));
        prop_assert_eq!(dirty.watermark(), clean.watermark());
        prop_assert_eq!(d.accepted, c.accepted);
        prop_assert_eq!((c.ahead, c.duplicates), (0, 0));
        prop_assert_eq!(d.ahead, p.far);
        prop_assert_eq!(d.late + d.duplicates, c.late + p.copies);

        // the backfill's replay of the arrivals judges every event as the engine did
        let flat: Vec<(Ev, i64, i64)> = p.dirty.iter().enumerate()
            .flat_map(|(a, b)| b.iter().map(move |(e, id)| (e.clone(), *id, a as i64)))
            .collect();
        let evs: Vec<Ev> = flat.iter().map(|f| f.0.clone()).collect();
        let ids: Vec<i64> = flat.iter().map(|f| f.1).collect();
        let arrival: Vec<i64> = flat.iter().map(|f| f.2).collect();
        let all = events_ids(&plan, &evs, &ids, str_keys);
        let v = guard::verdicts(&plan.spec, &all, Some(&arrival)).unwrap();
        let count = |x: Verdict| v.iter().filter(|y| **y == x).count() as u64;
        prop_assert_eq!(
            (count(Verdict::Apply), count(Verdict::Late), count(Verdict::Ahead), count(Verdict::Duplicate)),
            (d.accepted, d.late, d.ahead, d.duplicates)
        );
        for (i, verdict) in v.iter().enumerate() {
            prop_assert_eq!(*verdict == Verdict::Ahead, ids[i] >= 1_000_000);
        }
    }
}

/// A stream over up to 256 keys, long enough to cross the parallel threshold, a little out
/// of order (some events late), a few far ahead (for the guard, or moving the watermark).
fn long_stream() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (
            any::<u8>(),
            0i64..2_000,
            prop::option::weighted(0.05, -300i64..300),
            prop::option::weighted(0.85, -64i32..64),
            prop::option::weighted(0.9, 0u8..4),
        ),
        0..3_000,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (k, jitter, back, v, c))| Ev {
                k,
                // roughly increasing: one minute per 8 events, jittered, sometimes far behind
                // (late) or ahead (negative `back`: up to 5 hours)
                ts: (i as i64 / 8) * M + jitter * 1_000_000_000 - back.unwrap_or(0) * M,
                v: v.map(|v| v as f64 / 4.0),
                c,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The parallel apply (shard by shard on the pool) leaves the state, counters, reports and
    /// answers of the sequential one, bit for bit, for batches on both sides of the threshold.
    #[test]
    fn parallel_ingest_equals_sequential(
        evs in long_stream(),
        cuts in prop::collection::vec(
            prop::sample::select(vec![1usize, 33, 500, 1_023, 1_024, 1_025, 2_048, 3_000]),
            1..8,
        ),
        threshold in prop::sample::select(vec![33usize, 1_000, PARALLEL_INGEST_EVENTS]),
        lateness in prop::sample::select(vec!["0s", "5m", "45m"]),
        ttl in any::<bool>(),
        str_keys in any::<bool>(),
        guarded in any::<bool>(),
    ) {
        let plan = plan_with(lateness, ttl, if guarded { r#", "max_ahead": "2h""# } else { "" });
        let sequential = Engine::new(Arc::clone(&plan));
        sequential.set_parallel_ingest_events(usize::MAX);
        let parallel = Engine::new(Arc::clone(&plan));
        parallel.set_parallel_ingest_events(threshold);
        let mut rest = &evs[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            let batch = events(&plan, &rest[..n], str_keys);
            let a = sequential.ingest(&batch).unwrap();
            let b = parallel.ingest(&batch).unwrap();
            prop_assert_eq!(a, b);
            rest = &rest[n..];
            i += 1;
        }
        let wm = sequential.watermark();
        let queries: Vec<i64> = [0i64, 1, 7, 60, 1000]
            .iter()
            .map(|m| wm.saturating_sub(plan.spec.allowed_lateness).saturating_add(m * M))
            .collect();
        let want = observe(&sequential, str_keys, &queries);
        prop_assert_eq!(&observe(&parallel, str_keys, &queries), &want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Reads that fold out a key's rows that left its windows when the write lock is free
    /// (`ADVANCE_ON_READ_ROWS`) answer exactly what a read-only query of the same state
    /// answers (the general path: corrections from the unadvanced state), errors included,
    /// between batches and at the end, at times before, at and past the settle point; and
    /// later batches leave the same answers as in an engine that was never read.
    #[test]
    fn advancing_reads_answer_like_read_only_queries(
        evs in long_stream(),
        cuts in prop::collection::vec(prop::sample::select(vec![1usize, 40, 700, 3_000]), 1..6),
        reads in prop::collection::vec((any::<u8>(), -80i64..120), 1..40),
        lateness in prop::sample::select(vec!["0s", "5m", "45m"]),
        str_keys in any::<bool>(),
    ) {
        let plan = plan_with(lateness, false, "");
        let read = Engine::new(Arc::clone(&plan));
        let quiet = Engine::new(Arc::clone(&plan));
        let n = plan.n_features();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut rest = &evs[..];
        let mut i = 0;
        while !rest.is_empty() {
            let m = cuts[i % cuts.len()].min(rest.len());
            let batch = events(&plan, &rest[..m], str_keys);
            prop_assert_eq!(read.ingest(&batch).unwrap(), quiet.ingest(&batch).unwrap());
            rest = &rest[m..];
            i += 1;
            let s = read.settle_point();
            if s == i64::MIN {
                continue;
            }
            for &(k, dt) in &reads {
                let name = key_name(k);
                let key = if str_keys { KeyRef::Str(&name) } else { KeyRef::Int(k as i64) };
                let t = s.saturating_add(dt * M / 8);
                // the read's own count of rows to fold out is the general one's
                if let Some(st) = read.shard(key).read().keys.get(&key) {
                    let s = t.min(read.settle_point());
                    let lead = plan.spec.allowed_lateness;
                    prop_assert_eq!(st.eager_backlog(&plan, s, lead), st.backlogs(&plan, s, lead).1);
                }
                let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
                let a = read.get(key, t, &mut got);
                let b = quiet.shard(key).read().get(&plan, key, t, &mut want);
                match (a, b) {
                    (Ok(()), Ok(())) => prop_assert_eq!(bits(&got), bits(&want), "key {} at {}", k, t),
                    (Err(p), Err(q)) => prop_assert_eq!(p.to_string(), q.to_string()),
                    (p, q) => prop_assert!(false, "key {} at {}: {:?} vs {:?}", k, t, p, q),
                }
                // a read leaves nothing to fold out: the next read walks no fold-outs
                if let Some(st) = read.shard(key).read().keys.get(&key) {
                    let s = t.min(read.settle_point());
                    prop_assert_eq!(st.backlogs(&plan, s, plan.spec.allowed_lateness).1, 0);
                }
            }
        }
        let wm = quiet.watermark();
        let queries: Vec<i64> = [0i64, 1, 7, 60, 1000]
            .iter()
            .map(|m| wm.saturating_sub(plan.spec.allowed_lateness).saturating_add(m * M))
            .collect();
        prop_assert_eq!(observe(&read, str_keys, &queries).2, observe(&quiet, str_keys, &queries).2);
    }
}
