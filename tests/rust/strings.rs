//! `min` / `max` / `first` / `last` of a string column (`string_columns`): backfill and the
//! online engine against a brute-force reference (strings ordered by their UTF-8 bytes; ties
//! at equal times: the smallest string first, the largest last), over random arrival orders
//! within the allowed lateness, and through a snapshot round trip; sliding and lifetime (no
//! window) features.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use rtml::input::{read_events, read_spine, KeyRef};
use rtml::{backfill, Engine, FeatureColumn, Plan, Spec};

const M: i64 = 60_000_000_000;
const LATENESS: i64 = 10 * M;

fn plan() -> Arc<Plan> {
    let doc = r#"{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "10m",
        "max_ahead": null, "string_columns": ["s"],
        "features": [
          {"agg": "min", "column": "s", "window": "30m"},
          {"agg": "max", "column": "s", "window": "1h"},
          {"agg": "first", "column": "s", "window": "30m"},
          {"agg": "last", "column": "s", "window": "1h"},
          {"agg": "last", "column": "s", "window": "5m"},
          {"agg": "count", "column": "s", "window": "1h"},
          {"agg": "distinct_count", "column": "s", "window": "1h"},
          {"agg": "count", "window": "30m"},
          {"agg": "min", "column": "s"},
          {"agg": "max", "column": "s"},
          {"agg": "first", "column": "s"},
          {"agg": "last", "column": "s"}
        ]}"#;
    Arc::new(Plan::new(Spec::from_json(doc).unwrap()))
}

/// No window (lifetime).
const LIFETIME: i64 = i64::MAX;

/// (feature index, aggregation, window) of the string features above.
const TEXT: [(usize, &str, i64); 9] = [
    (0, "min", 30 * M),
    (1, "max", 60 * M),
    (2, "first", 30 * M),
    (3, "last", 60 * M),
    (4, "last", 5 * M),
    (8, "min", LIFETIME),
    (9, "max", LIFETIME),
    (10, "first", LIFETIME),
    (11, "last", LIFETIME),
];

#[derive(Clone, Debug)]
struct Ev {
    k: i64,
    ts: i64,
    s: Option<String>,
}

fn batch(evs: &[&Ev]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("s", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.k))),
        Arc::new(TimestampNanosecondArray::from_iter_values(
            evs.iter().map(|e| e.ts),
        )),
        Arc::new(StringArray::from_iter(evs.iter().map(|e| e.s.as_deref()))),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

use crate::engine::spine;

/// One answer: a number (NaN = null, by bits) or a string (None = null).
#[derive(Clone, Debug, PartialEq)]
enum A {
    N(u64),
    S(Option<String>),
}

fn num(x: f64) -> A {
    A::N(if x.is_nan() { u64::MAX } else { x.to_bits() })
}

fn offline(plan: &Plan, evs: &[Ev], qs: &[(i64, i64)]) -> Vec<Vec<A>> {
    let eb = [batch(&evs.iter().collect::<Vec<_>>())];
    let sb = [spine(qs)];
    let events = read_events(plan, &eb).unwrap();
    let sp = read_spine(plan, &sb, &["k".to_string()], "ts").unwrap();
    let cols = backfill(plan, &events, &sp, &mut |_, _| true).unwrap();
    (0..qs.len())
        .map(|r| {
            cols.iter()
                .map(|c| match c {
                    FeatureColumn::Int(v) => num(v[r] as f64),
                    FeatureColumn::Float(v) => num(v[r]),
                    FeatureColumn::Text(v) => A::S(v[r].clone()),
                })
                .collect()
        })
        .collect()
}

fn online_answer(eng: &Engine, plan: &Plan, k: i64, t: i64) -> Vec<A> {
    let key = KeyRef::Int(k);
    let mut out = vec![0.0; plan.n_features()];
    let mut texts = Vec::new();
    {
        let shard = eng.shard(key).read();
        shard.get(plan, key, t, &mut out).unwrap();
        shard.texts(plan, key, &out, &mut texts);
    }
    let mut texts = texts.into_iter();
    out.iter()
        .zip(&plan.outputs)
        .map(|(x, o)| {
            if o.text {
                A::S(texts.next().unwrap())
            } else if o.integer {
                num(*x as i64 as f64)
            } else {
                num(*x)
            }
        })
        .collect()
}

/// The string features by brute force: strings ordered by their UTF-8 bytes.
fn reference(evs: &[Ev], k: i64, t: i64) -> Vec<(usize, Option<String>)> {
    TEXT.iter()
        .map(|&(i, agg, w)| {
            let win: Vec<(i64, &str)> = evs
                .iter()
                .filter(|e| e.k == k && e.ts < t && e.ts >= t.saturating_sub(w))
                .filter_map(|e| e.s.as_deref().map(|s| (e.ts, s)))
                .collect();
            let by_bytes = |a: &&str, b: &&str| a.as_bytes().cmp(b.as_bytes());
            let v = match agg {
                "min" => win.iter().map(|p| p.1).min_by(by_bytes),
                "max" => win.iter().map(|p| p.1).max_by(by_bytes),
                "first" => win.iter().map(|p| p.0).min().and_then(|t0| {
                    win.iter()
                        .filter(|p| p.0 == t0)
                        .map(|p| p.1)
                        .min_by(by_bytes)
                }),
                _ => win.iter().map(|p| p.0).max().and_then(|t1| {
                    win.iter()
                        .filter(|p| p.0 == t1)
                        .map(|p| p.1)
                        .max_by(by_bytes)
                }),
            };
            (i, v.map(str::to_string))
        })
        .collect()
}

/// Strings that order differently by bytes than by other plausible rules (case, length,
/// prefixes, non-ASCII), and many of them (so a key's strings are swept as rows leave).
fn string() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        4 => (
            prop::sample::select(vec!["", "a", "B", "ab", "é", "z", "Zoë", "日本", "a\u{0}"]),
            0u32..40
        )
            .prop_map(|(p, n)| Some(format!("{p}{n}"))),
        1 => prop::sample::select(vec!["", "a", "é", "\u{10FFFF}"]).prop_map(|s| Some(s.to_string())),
    ]
}

fn events() -> impl Strategy<Value = Vec<(Ev, i64)>> {
    prop::collection::vec(
        (0i64..3, 0i64..240, 0i64..3, string(), 0i64..=LATENESS / M),
        1..120,
    )
    .prop_map(|rows| {
        rows.into_iter()
            .map(|(k, minute, sub, s, delay)| {
                // equal times are common (sub-minute steps of 20s)
                let ts = minute * M + sub * 20_000_000_000;
                (Ev { k, ts, s }, ts + delay * M)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn string_extremes_online_equal_backfill_and_reference(
        evs in events(),
        batches in prop::collection::vec(1usize..20, 1..40),
        offsets in prop::collection::vec(0i64..150, 1..6),
        cut in 0usize..200,
    ) {
        let plan = plan();
        // arrival order: by time plus a delay within the allowed lateness (nothing is late)
        let mut arrival: Vec<&(Ev, i64)> = evs.iter().collect();
        arrival.sort_by_key(|e| e.1);
        let arrival: Vec<&Ev> = arrival.into_iter().map(|e| &e.0).collect();
        let all: Vec<Ev> = evs.iter().map(|e| e.0.clone()).collect();

        let eng = Engine::new(Arc::clone(&plan));
        let mut cut_engine: Option<Engine> = None;
        let mut at = 0;
        let mut sizes = batches.iter().cycle();
        while at < arrival.len() {
            if cut_engine.is_none() && at >= cut.min(arrival.len()) {
                // a snapshot taken here and restored continues exactly as the original
                let bytes = eng.to_bytes().unwrap();
                cut_engine = Some(Engine::from_bytes(&bytes).unwrap());
            }
            let n = (*sizes.next().unwrap()).min(arrival.len() - at);
            let b = batch(&arrival[at..at + n]);
            let events = read_events(&plan, std::slice::from_ref(&b)).unwrap();
            let r = eng.ingest(&events).unwrap();
            prop_assert_eq!(r.late, 0);
            if let Some(c) = &cut_engine {
                c.ingest(&events).unwrap();
            }
            at += n;
        }
        let wm = eng.watermark();
        let qs: Vec<(i64, i64)> = (0..3)
            .flat_map(|k| offsets.iter().map(move |o| (k, wm - LATENESS + o * M / 2)))
            .collect();
        let off = offline(&plan, &all, &qs);
        let restored = Engine::from_bytes(&eng.to_bytes().unwrap()).unwrap();
        for (q, want) in qs.iter().zip(&off) {
            let got = online_answer(&eng, &plan, q.0, q.1);
            prop_assert_eq!(&got, want, "online vs backfill at {:?}", q);
            prop_assert_eq!(&online_answer(&restored, &plan, q.0, q.1), want, "restored");
            if let Some(c) = &cut_engine {
                prop_assert_eq!(&online_answer(c, &plan, q.0, q.1), want, "cut and restored");
            }
            for (i, s) in reference(&all, q.0, q.1) {
                prop_assert_eq!(&want[i], &A::S(s), "feature {} at {:?}", i, q);
            }
        }
    }
}

#[test]
fn string_columns_are_refused_where_they_cannot_work() {
    let doc = |feat: &str, extra: &str| {
        format!(
            r#"{{"version": 1, "entity": "k", "timestamp": "ts", "string_columns": ["s"]{extra},
            "features": [{feat}]}}"#
        )
    };
    for (feat, want) in [
        (
            r#"{"agg": "sum", "column": "s", "window": "1h"}"#,
            "string column",
        ),
        (
            r#"{"agg": "last", "column": "s", "window": "1h", "hop": "10m"}"#,
            "sliding window",
        ),
    ] {
        let e = Spec::from_json(&doc(feat, "")).unwrap_err().to_string();
        assert!(e.contains(want), "{feat}: {e}");
    }
    // lifetime (no window) string features are accepted: a pick of the settled events
    for agg in ["min", "max", "first", "last"] {
        let feat = format!(r#"{{"agg": "{agg}", "column": "s"}}"#);
        let plan = Plan::new(Spec::from_json(&doc(&feat, "")).unwrap());
        assert!(
            plan.outputs[0].text && plan.outputs[0].acc.is_some(),
            "{agg}"
        );
    }
    let e = Spec::from_json(
        r#"{"version": 1, "entity": "k", "timestamp": "ts", "string_columns": ["k"],
            "features": [{"agg": "count"}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("entity or timestamp"), "{e}");
    // count / distinct_count of a string column are numbers as before
    let spec = Spec::from_json(&doc(
        r#"{"agg": "distinct_count", "column": "s", "window": "1h"}"#,
        "",
    ))
    .unwrap();
    let plan = Plan::new(spec);
    assert!(!plan.outputs[0].text);
    // a declared string column that holds numbers is a schema error naming it
    let plan = Plan::new(
        Spec::from_json(&doc(r#"{"agg": "min", "column": "s", "window": "1h"}"#, "")).unwrap(),
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("s", DataType::Int64, true),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(TimestampNanosecondArray::from(vec![0])),
            Arc::new(Int64Array::from(vec![5])),
        ],
    )
    .unwrap();
    let e = read_events(&plan, &[b]).err().unwrap().to_string();
    assert!(e.contains("string_columns") && e.contains('s'), "{e}");
}

#[test]
fn a_keys_strings_are_swept_as_its_rows_leave() {
    // one key, a new string every minute over 10 hours, windows of at most 1 hour: the state
    // holds the strings of about an hour of rows (and the lifetime picks), not all 600
    let plan = plan();
    let feed = |same: bool| {
        let eng = Engine::new(Arc::clone(&plan));
        let evs: Vec<Ev> = (0..600)
            .map(|i| Ev {
                k: 1,
                ts: i * M,
                s: Some(if same {
                    "s0".to_string()
                } else {
                    format!("s{i}")
                }),
            })
            .collect();
        for chunk in evs.chunks(10) {
            let b = batch(&chunk.iter().collect::<Vec<_>>());
            eng.ingest(&read_events(&plan, &[b]).unwrap()).unwrap();
        }
        eng
    };
    let eng = feed(false);
    let one_string = feed(true);
    let extra = eng.state_bytes() as i64 - one_string.state_bytes() as i64;
    let t = eng.watermark() + 1;
    let got = online_answer(&eng, &plan, 1, t);
    assert_eq!(got[3], A::S(Some("s599".into())));
    // s540 .. s599 are in the last hour; by bytes "s540" < ... < "s599"
    assert_eq!(got[1], A::S(Some("s599".into())));
    // lifetime: by bytes "s0" is the smallest and "s99" the largest of s0 .. s599; both rows
    // left the buffer hours ago, their strings survive the sweeps as the picks' words
    assert_eq!(got[8], A::S(Some("s0".into())));
    assert_eq!(got[9], A::S(Some("s99".into())));
    assert_eq!(got[10], A::S(Some("s0".into())));
    assert_eq!(got[11], A::S(Some("s599".into())));
    // and backfill agrees
    let evs: Vec<Ev> = (0..600)
        .map(|i| Ev {
            k: 1,
            ts: i * M,
            s: Some(format!("s{i}")),
        })
        .collect();
    assert_eq!(offline(&plan, &evs, &[(1, t)])[0], got);
    let restored = Engine::from_bytes(&eng.to_bytes().unwrap()).unwrap();
    assert_eq!(online_answer(&restored, &plan, 1, t), got);
    // a state that kept all 600 strings would hold about 600 * 44 bytes more than one that
    // holds a single string; about 70 are live (an hour and the lateness)
    assert!(extra < 200 * 44, "{extra} bytes more");
}

#[test]
fn ttl_eviction_drops_a_keys_lifetime_strings() {
    // key 1 holds a lifetime pick; once it is idle past the ttl it is evicted with its strings
    // (an unknown key again: null), while key 2, still active, keeps its own
    let doc = r#"{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "10m",
        "max_ahead": null, "ttl": "2h", "string_columns": ["s"],
        "features": [{"agg": "last", "column": "s"}, {"agg": "min", "column": "s"}]}"#;
    let plan = Arc::new(Plan::new(Spec::from_json(doc).unwrap()));
    let eng = Engine::new(Arc::clone(&plan));
    let ev = |k, minute: i64, s: &str| Ev {
        k,
        ts: minute * M,
        s: Some(s.to_string()),
    };
    let first = [ev(1, 0, "a long status string of key one"), ev(2, 0, "b")];
    eng.ingest(&read_events(&plan, &[batch(&first.iter().collect::<Vec<_>>())]).unwrap())
        .unwrap();
    let t = M;
    assert_eq!(
        online_answer(&eng, &plan, 1, t),
        vec![
            A::S(Some("a long status string of key one".into())),
            A::S(Some("a long status string of key one".into()))
        ]
    );
    // key 2 goes on for 4 hours (new strings each minute); key 1 is idle
    for chunk in (1..240).collect::<Vec<i64>>().chunks(30) {
        let evs: Vec<Ev> = chunk.iter().map(|&m| ev(2, m, &format!("s{m}"))).collect();
        eng.ingest(&read_events(&plan, &[batch(&evs.iter().collect::<Vec<_>>())]).unwrap())
            .unwrap();
    }
    assert!(eng.evict_idle() + eng.stats().counters.keys_evicted as usize >= 1);
    let t = eng.watermark() + 1;
    assert_eq!(
        online_answer(&eng, &plan, 1, t),
        vec![A::S(None), A::S(None)]
    );
    assert_eq!(
        online_answer(&eng, &plan, 2, t),
        vec![A::S(Some("s239".into())), A::S(Some("b".into()))]
    );
    // the evicted key's string is gone from the engine's state (its snapshot too)
    let bytes = eng.to_bytes().unwrap();
    let needle = b"a long status string of key one";
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));
}
