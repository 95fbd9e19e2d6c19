//! Engine tests without Python: every aggregation against a brute-force reference, and
//! online-vs-offline parity over random arrival orders (proptest).

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use rtml::input::{read_events, read_spine};
use rtml::{backfill, Engine, FeatureColumn, Plan, Spec};

const H: i64 = 3_600_000_000_000;
const M: i64 = 60_000_000_000;

fn spec(lateness: &str) -> Spec {
    let doc = format!(
        r#"{{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "{lateness}",
        "features": [
          {{"agg": "count", "window": "1h"}},
          {{"agg": "count", "column": "v", "window": "1h"}},
          {{"agg": "sum", "column": "v", "window": "1h"}},
          {{"agg": "mean", "column": "v", "window": "30m"}},
          {{"agg": "var", "column": "v", "window": "1h"}},
          {{"agg": "std", "column": "v"}},
          {{"agg": "min", "column": "v", "window": "1h"}},
          {{"agg": "max", "column": "v"}},
          {{"agg": "first", "column": "v", "window": "30m"}},
          {{"agg": "last", "column": "v", "window": "1h"}},
          {{"agg": "first", "column": "v"}},
          {{"agg": "last", "column": "v"}},
          {{"agg": "distinct_count", "column": "c", "window": "1h"}},
          {{"agg": "quantile", "column": "v", "q": 0.5, "window": "1h"}},
          {{"agg": "decayed_sum", "column": "v", "half_life": "10m", "window": "1h"}},
          {{"agg": "decayed_sum", "column": "v", "half_life": "20m"}},
          {{"agg": "time_since_last", "window": "30m"}},
          {{"agg": "time_since_last"}},
          {{"agg": "count"}},
          {{"agg": "count", "window": "1h", "hop": "15m"}},
          {{"agg": "sum", "column": "v", "window": "1h", "hop": "15m"}},
          {{"agg": "min", "column": "v", "window": "1h", "hop": "15m"}},
          {{"agg": "last", "column": "v", "window": "1h", "hop": "15m"}},
          {{"agg": "distinct_count", "column": "c", "window": "1h", "hop": "15m"}},
          {{"agg": "time_since_last", "window": "1h", "hop": "15m"}},
          {{"agg": "first", "column": "v", "window": "30m", "hop": "10m"}},
          {{"agg": "max", "column": "v", "window": "30m", "hop": "10m"}}
        ]}}"#
    );
    Spec::from_json(&doc).unwrap()
}

#[derive(Clone, Debug)]
struct Ev {
    k: i64,
    ts: i64,
    v: Option<f64>,
    c: Option<&'static str>,
}

fn batch(evs: &[Ev]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("v", DataType::Float64, true),
        Field::new("c", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.k))),
        Arc::new(TimestampNanosecondArray::from_iter_values(
            evs.iter().map(|e| e.ts),
        )),
        Arc::new(Float64Array::from_iter(evs.iter().map(|e| e.v))),
        Arc::new(StringArray::from_iter(evs.iter().map(|e| e.c))),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

/// A spine of (key, time in ns) rows (shared with the string tests).
pub(crate) fn spine(qs: &[(i64, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(qs.iter().map(|q| q.0))),
        Arc::new(TimestampNanosecondArray::from_iter_values(
            qs.iter().map(|q| q.1),
        )),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

/// Feature rows (NaN = null) from backfill.
fn offline(plan: &Plan, evs: &[Ev], qs: &[(i64, i64)]) -> Vec<Vec<f64>> {
    let eb = [batch(evs)];
    let sb = [spine(qs)];
    let events = read_events(plan, &eb).unwrap();
    let sp = read_spine(plan, &sb, &["k".to_string()], "ts").unwrap();
    let cols = backfill(plan, &events, &sp, &mut |_, _| true).unwrap();
    (0..qs.len())
        .map(|r| {
            cols.iter()
                .map(|c| match c {
                    FeatureColumn::Int(v) => v[r] as f64,
                    FeatureColumn::Float(v) => v[r],
                    FeatureColumn::Text(_) => f64::NAN,
                })
                .collect()
        })
        .collect()
}

fn bits(row: &[f64]) -> Vec<u64> {
    row.iter()
        .map(|x| if x.is_nan() { u64::MAX } else { x.to_bits() })
        .collect()
}

/// Brute force over the window of one query, for the features whose reference is simple and exact.
fn reference(evs: &[Ev], k: i64, t: i64) -> Vec<(usize, Option<f64>)> {
    let win = |w: Option<i64>| -> Vec<&Ev> {
        evs.iter()
            .filter(|e| e.k == k && e.ts < t && w.is_none_or(|w| e.ts >= t - w))
            .collect()
    };
    let vals = |es: &[&Ev]| -> Vec<(i64, f64)> {
        es.iter().filter_map(|e| e.v.map(|v| (e.ts, v))).collect()
    };
    let h1 = win(Some(H));
    let m30 = win(Some(30 * M));
    let all = win(None);
    let v1 = vals(&h1);
    let vall = vals(&all);
    let v30 = vals(&m30);
    let first = |vs: &[(i64, f64)]| {
        vs.iter()
            .copied()
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .map(|x| x.1)
    };
    let last = |vs: &[(i64, f64)]| {
        vs.iter()
            .copied()
            .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .map(|x| x.1)
    };
    let mut distinct: Vec<&str> = h1.iter().filter_map(|e| e.c).collect();
    distinct.sort();
    distinct.dedup();
    // tiled: floor(t / hop) * hop - W <= ts < t
    let tiled = |w: i64, hop: i64| -> Vec<&Ev> {
        let start = t.div_euclid(hop) * hop - w;
        evs.iter()
            .filter(|e| e.k == k && e.ts < t && e.ts >= start)
            .collect()
    };
    let t1 = tiled(H, 15 * M);
    let vt1 = vals(&t1);
    let t2 = tiled(30 * M, 10 * M);
    let vt2 = vals(&t2);
    let mut tdistinct: Vec<&str> = t1.iter().filter_map(|e| e.c).collect();
    tdistinct.sort();
    tdistinct.dedup();
    vec![
        (19, Some(t1.len() as f64)),
        (20, Some(vt1.iter().fold(0.0, |a, x| a + x.1))),
        (21, vt1.iter().map(|x| x.1).min_by(|a, b| a.total_cmp(b))),
        (22, last(&vt1)),
        (23, Some(tdistinct.len() as f64)),
        (
            24,
            t1.iter()
                .map(|e| e.ts)
                .max()
                .map(|ts| (t - ts) as f64 / 1e9),
        ),
        (25, first(&vt2)),
        (26, vt2.iter().map(|x| x.1).max_by(|a, b| a.total_cmp(b))),
        (0, Some(h1.len() as f64)),
        (1, Some(v1.len() as f64)),
        // values are small dyadic numbers: any summation order is exact
        (2, Some(v1.iter().fold(0.0, |a, x| a + x.1))),
        (6, v1.iter().map(|x| x.1).min_by(|a, b| a.total_cmp(b))),
        (7, vall.iter().map(|x| x.1).max_by(|a, b| a.total_cmp(b))),
        (8, first(&v30)),
        (9, last(&v1)),
        (10, first(&vall)),
        (11, last(&vall)),
        (12, Some(distinct.len() as f64)),
        (
            16,
            m30.iter()
                .map(|e| e.ts)
                .max()
                .map(|ts| (t - ts) as f64 / 1e9),
        ),
        (
            17,
            all.iter()
                .map(|e| e.ts)
                .max()
                .map(|ts| (t - ts) as f64 / 1e9),
        ),
        (18, Some(all.len() as f64)),
    ]
}

fn ev_strategy() -> impl Strategy<Value = Vec<Ev>> {
    let cats = ["a", "b", "c", "d"];
    prop::collection::vec(
        (
            0i64..3,
            0i64..(4 * H / M),
            prop::option::weighted(0.85, -64i32..64),
            prop::option::weighted(0.9, 0usize..4),
        )
            .prop_map(move |(k, minute, v, c)| Ev {
                k,
                ts: minute * M,
                v: v.map(|v| v as f64 / 4.0),
                c: c.map(|i| cats[i]),
            }),
        0..60,
    )
}

/// Approximate features: (index, expected, tolerance); `None` = null expected.
fn reference_approx(evs: &[Ev], k: i64, t: i64) -> Vec<(usize, Option<f64>, f64)> {
    let vals = |w: Option<i64>| -> Vec<(i64, f64)> {
        evs.iter()
            .filter(|e| e.k == k && e.ts < t && w.is_none_or(|w| e.ts >= t - w))
            .filter_map(|e| e.v.map(|v| (e.ts, v)))
            .collect()
    };
    // values are multiples of 1/4: exact integer arithmetic on 4v
    let var = |vs: &[(i64, f64)]| -> Option<f64> {
        let n = vs.len() as i128;
        if n < 2 {
            return None;
        }
        let s1: i128 = vs.iter().map(|x| (x.1 * 4.0) as i128).sum();
        let s2: i128 = vs.iter().map(|x| ((x.1 * 4.0) as i128).pow(2)).sum();
        Some((n * s2 - s1 * s1) as f64 / (16 * n * (n - 1)) as f64)
    };
    let decayed = |vs: &[(i64, f64)], h: i64| -> (f64, f64) {
        let terms: Vec<f64> = vs
            .iter()
            .map(|&(ts, v)| v * 2f64.powf(-((t - ts) as f64) / h as f64))
            .collect();
        (
            terms.iter().sum(),
            terms.iter().map(|x| x.abs()).sum::<f64>(),
        )
    };
    let m30 = vals(Some(30 * M));
    let h1 = vals(Some(H));
    let all = vals(None);
    let mean = if m30.is_empty() {
        None
    } else {
        Some(m30.iter().map(|x| x.1).sum::<f64>() / m30.len() as f64)
    };
    let mut sorted: Vec<f64> = h1.iter().map(|x| x.1).collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = if sorted.is_empty() {
        None
    } else {
        let rank = ((0.5 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    };
    let (d1, d1abs) = decayed(&h1, 10 * M);
    let (d2, d2abs) = decayed(&all, 20 * M);
    vec![
        (3, mean, 1e-15),
        (4, var(&h1), 1e-14),
        (5, var(&all).map(f64::sqrt), 1e-14),
        (13, median, 1.0 / 256.0),
        (
            14,
            Some(d1),
            1e-12 * d1abs.max(1e-300) / d1.abs().max(1e-300),
        ),
        (
            15,
            Some(d2),
            1e-12 * d2abs.max(1e-300) / d2.abs().max(1e-300),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn approximate_features_match_brute_force(evs in ev_strategy(), qmins in prop::collection::vec((0i64..3, 0i64..(5 * H / M)), 1..30)) {
        let plan = Plan::new(spec("0s"));
        let qs: Vec<(i64, i64)> = qmins.iter().map(|&(k, m)| (k, m * M)).collect();
        let rows = offline(&plan, &evs, &qs);
        for (q, row) in qs.iter().zip(&rows) {
            for (i, want, tol) in reference_approx(&evs, q.0, q.1) {
                let got = row[i];
                match want {
                    None => prop_assert!(got.is_nan(), "feature {} at {:?}: want null, got {}", i, q, got),
                    Some(0.0) => prop_assert!(got.abs() <= tol.max(1e-12), "feature {} at {:?}: {} vs 0", i, q, got),
                    Some(w) => prop_assert!(((got - w) / w).abs() <= tol, "feature {} at {:?}: {} vs {} (tol {})", i, q, got, w, tol),
                }
            }
        }
    }

    #[test]
    fn backfill_matches_brute_force(evs in ev_strategy(), qmins in prop::collection::vec((0i64..3, 0i64..(5 * H / M)), 1..30)) {
        let plan = Plan::new(spec("0s"));
        let mut qs: Vec<(i64, i64)> = qmins.iter().map(|&(k, m)| (k, m * M)).collect();
        // include exact event times and window edges
        for e in evs.iter().take(5) {
            qs.push((e.k, e.ts));
            qs.push((e.k, e.ts + H));
            qs.push((e.k, e.ts + 30 * M));
        }
        let rows = offline(&plan, &evs, &qs);
        for (q, row) in qs.iter().zip(&rows) {
            for (i, want) in reference(&evs, q.0, q.1) {
                let got = row[i];
                match want {
                    None => prop_assert!(got.is_nan(), "feature {} at {:?}: want null, got {}", i, q, got),
                    Some(w) => prop_assert_eq!(got.to_bits(), w.to_bits(), "feature {} at {:?}: {} vs {}", i, q, got, w),
                }
            }
        }
    }

    #[test]
    fn online_equals_backfill(evs in ev_strategy(), jitter in prop::collection::vec(0i64..=10, 60), qmins in prop::collection::vec((0i64..3, 0i64..(5 * H / M)), 1..20), lateness in prop::sample::select(vec!["10m", "45m", "2h"]), mask in prop::collection::vec(any::<bool>(), 64)) {
        // lateness shorter and longer than the windows (30m, 1h): both eager-region layouts
        let plan = Arc::new(Plan::new(spec(lateness)));
        let mut qs: Vec<(i64, i64)> = qmins.iter().map(|&(k, m)| (k, m * M)).collect();
        for e in evs.iter().take(4) {
            qs.push((e.k, e.ts));
            qs.push((e.k, e.ts + H));
        }
        qs.sort_by_key(|q| q.1);
        let want = offline(&plan, &evs, &qs);
        // arrival order: by ts + jitter in [0, lateness]: never late
        let mut arrival: Vec<(i64, usize)> = evs.iter().enumerate().map(|(i, e)| (e.ts + jitter[i] * M, i)).collect();
        arrival.sort();
        let eng = Engine::new(Arc::clone(&plan));
        let mut next = 0;
        let mut row = vec![0.0; plan.n_features()];
        for (qi, q) in qs.iter().enumerate() {
            // ingest until every event with ts < t is in
            while evs.iter().enumerate().any(|(i, e)| e.ts < q.1 && !arrival[..next].iter().any(|a| a.1 == i)) {
                let b = batch(&[evs[arrival[next].1].clone()]);
                let bs = [b];
                let events = read_events(&plan, &bs).unwrap();
                eng.ingest(&events).unwrap();
                next += 1;
            }
            eng.get(rtml::input::KeyRef::Int(q.0), q.1, &mut row).unwrap();
            prop_assert_eq!(bits(&row), bits(&want[qi]), "query {:?}", q);
            // a masked read (what `vector` does) computes the wanted outputs only, the same bits
            let key = rtml::input::KeyRef::Int(q.0);
            let mut part = vec![f64::from_bits(0x7FF8_0000_0000_0BAD); plan.n_features()];
            let m = &mask[..plan.n_features()];
            eng.shard(key).read().get_masked(&plan, key, q.1, &mut part, Some(m)).unwrap();
            for (i, &w) in m.iter().enumerate() {
                if w {
                    prop_assert_eq!(part[i].to_bits(), want[qi][i].to_bits(), "masked query {:?}, output {}", q, i);
                }
            }
        }
        prop_assert_eq!(eng.stats().counters.late_events_dropped, 0);
    }
}

#[test]
fn snapshot_round_trip_and_corruption() {
    let plan = Arc::new(Plan::new(spec("10m")));
    let evs: Vec<Ev> = (0..200)
        .map(|i| Ev {
            k: i % 7,
            ts: i * 3 * M,
            v: Some((i % 13) as f64 - 6.0),
            c: Some(["a", "b"][(i % 2) as usize]),
        })
        .collect();
    let eng = Engine::new(Arc::clone(&plan));
    let bs = [batch(&evs)];
    eng.ingest(&read_events(&plan, &bs).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("rtml-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.snap");
    eng.snapshot(&path).unwrap();
    let back = Engine::restore(&path).unwrap();
    let t = 600 * M;
    for k in 0..8 {
        let mut a = vec![0.0; plan.n_features()];
        let mut b = a.clone();
        eng.get(rtml::input::KeyRef::Int(k), t, &mut a).unwrap();
        back.get(rtml::input::KeyRef::Int(k), t, &mut b).unwrap();
        assert_eq!(bits(&a), bits(&b));
    }
    assert_eq!(eng.stats().counters, back.stats().counters);
    // truncated
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(
        Engine::restore(&path),
        Err(rtml::Error::Snapshot { .. })
    ));
    // one flipped bit
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    std::fs::write(&path, &flipped).unwrap();
    assert!(matches!(
        Engine::restore(&path),
        Err(rtml::Error::Snapshot { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn late_events_are_dropped_and_counted() {
    let plan = Arc::new(Plan::new(spec("10m")));
    let eng = Engine::new(Arc::clone(&plan));
    let ev = |ts: i64, v: f64| Ev {
        k: 1,
        ts,
        v: Some(v),
        c: None,
    };
    let first = [batch(&[ev(60 * M, 1.0)])];
    let r = eng.ingest(&read_events(&plan, &first).unwrap()).unwrap();
    assert_eq!((r.accepted, r.late), (1, 0));
    // watermark 60m, lateness 10m: 55m is accepted, 40m (20m late) dropped
    let second = [batch(&[ev(55 * M, 2.0), ev(40 * M, 4.0)])];
    let r = eng.ingest(&read_events(&plan, &second).unwrap()).unwrap();
    assert_eq!((r.accepted, r.late), (1, 1));
    assert_eq!(eng.stats().counters.late_events_dropped, 1);
    let mut row = vec![0.0; plan.n_features()];
    eng.get(rtml::input::KeyRef::Int(1), 61 * M, &mut row)
        .unwrap();
    assert_eq!(row[0], 2.0);
    assert_eq!(row[2], 3.0);
    // before the settled point: refused, with the instants in ISO 8601 (UTC)
    match eng.get(rtml::input::KeyRef::Int(1), 10 * M, &mut row) {
        Err(rtml::Error::Query(m)) => assert!(
            m.contains("cannot answer at 1970-01-01T00:10:00Z")
                && m.contains("settled up to 1970-01-01T00:50:00Z"),
            "{m}"
        ),
        other => panic!("expected a QueryError, got {other:?}"),
    }
}

#[test]
fn a_batch_out_of_time_order_is_one_arrival() {
    // the same three events in one call, newest first: the watermark before the call is
    // unset, so none is late, and the answers are those of the time-sorted batch
    let plan = Arc::new(Plan::new(spec("10m")));
    let ev = |ts: i64, v: f64| Ev {
        k: 1,
        ts,
        v: Some(v),
        c: None,
    };
    let newest_first = [batch(&[ev(60 * M, 1.0), ev(55 * M, 2.0), ev(40 * M, 4.0)])];
    let sorted = [batch(&[ev(40 * M, 4.0), ev(55 * M, 2.0), ev(60 * M, 1.0)])];
    let (a, b) = (
        Engine::new(Arc::clone(&plan)),
        Engine::new(Arc::clone(&plan)),
    );
    let ra = a
        .ingest(&read_events(&plan, &newest_first).unwrap())
        .unwrap();
    let rb = b.ingest(&read_events(&plan, &sorted).unwrap()).unwrap();
    assert_eq!((ra.accepted, ra.late), (3, 0));
    assert_eq!(ra, rb);
    assert_eq!(a.watermark(), 60 * M);
    let (mut ya, mut yb) = (vec![0.0; plan.n_features()], vec![0.0; plan.n_features()]);
    for t in [50 * M, 61 * M, 200 * M] {
        a.get(rtml::input::KeyRef::Int(1), t, &mut ya).unwrap();
        b.get(rtml::input::KeyRef::Int(1), t, &mut yb).unwrap();
        let bits = |y: &[f64]| y.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&ya), bits(&yb), "at {t}");
    }
    a.get(rtml::input::KeyRef::Int(1), 61 * M, &mut ya).unwrap();
    assert_eq!(ya[0], 3.0);
}
