//! Tests of `KeyState` reads: the table's empty answers and the settled fast paths against
//! the general corrected path.

use super::*;
use crate::spec::Spec;

/// Appends one feature of every aggregation (over column `v`, with its parameter) on window `w`
/// (JSON: `null` or a quoted duration) with `extra` spec fields, named `f<index>`.
fn push_every_agg(feats: &mut Vec<String>, w: &str, extra: &str) {
    for a in crate::agg::AGGS {
        let col = match a.column {
            crate::agg::ColumnUse::None => "",
            _ => r#", "column": "v""#,
        };
        let param = match a.param {
            crate::agg::Param::None => "",
            crate::agg::Param::Quantile => r#", "q": 0.5"#,
            crate::agg::Param::HalfLife => r#", "half_life": "10m""#,
        };
        feats.push(format!(
            r#"{{"agg": "{}", "window": {w}{extra}{col}{param}, "name": "f{}"}}"#,
            a.name,
            feats.len()
        ));
    }
}

#[test]
fn empty_values_from_the_table_are_an_empty_states_answers() {
    // every aggregation, over sliding, tiled and lifetime windows: `Plan::empty` (each
    // aggregation's table value) is what a state with no events answers, bit for bit
    let mut feats = Vec::new();
    for (w, extra) in [
        ("null", ""),
        ("\"1h\"", ""),
        ("\"1h\"", r#", "hop": "15m""#),
    ] {
        push_every_agg(&mut feats, w, extra);
    }
    feats.push(r#"{"agg": "count", "window": "1h", "name": "events"}"#.to_string());
    let doc = format!(
        r#"{{"version": 1, "entity": "k", "timestamp": "ts", "features": [{}]}}"#,
        feats.join(", ")
    );
    let plan = Plan::new(Spec::from_json(&doc).unwrap());
    for t in [0, 1_700_000_000_000_000_000] {
        let got = KeyState::new(&plan, i64::MIN).evaluate(&plan, t);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&plan.empty));
    }
}

/// A plan with every aggregation over sliding, tiled and lifetime windows, and string
/// outputs (sliding and lifetime) of a string column `s`.
fn read_plan() -> Plan {
    let mut feats = Vec::new();
    for (w, extra) in [
        ("\"10m\"", ""),
        ("\"1h\"", ""),
        ("\"1h\"", r#", "hop": "15m""#),
        ("null", ""),
    ] {
        push_every_agg(&mut feats, w, extra);
        feats.push(format!(
            r#"{{"agg": "count", "window": {w}{extra}, "name": "f{}"}}"#,
            feats.len()
        ));
        if extra.is_empty() {
            for a in ["min", "max", "first", "last", "distinct_count", "count"] {
                feats.push(format!(
                    r#"{{"agg": "{a}", "column": "s", "window": {w}, "name": "f{}"}}"#,
                    feats.len()
                ));
            }
        }
    }
    let doc = format!(
        r#"{{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "5m", "string_columns": ["s"], "features": [{}]}}"#,
        feats.join(", ")
    );
    Plan::new(Spec::from_json(&doc).unwrap())
}

proptest::proptest! {
    // A read at the settled point with nothing to correct (backfill's every read: the
    // fast paths) answers what a read of the same events through corrections does (a
    // state settled less far, with a lead, eager regions advanced or not: the general
    // path), bit for bit, for every output or a mask of them.
    #[test]
    fn settled_reads_answer_as_corrected_reads(
        events in proptest::collection::vec(
            (0i64..40_000, 0usize..6, -40i64..40, 0usize..5),
            0..80,
        ),
        queries in proptest::collection::vec(
            (0i64..40_000, 0i64..1_200, 0i64..600, 0i64..900, 0u8..4, proptest::prelude::any::<u64>()),
            1..25,
        ),
    ) {
        use proptest::prop_assert_eq;
        const S: i64 = 1_000_000_000;
        let t0 = 1_700_000_000 * S;
        let plan = read_plan();
        let strings = ["", "a", "b", "ab", "zz"];
        let mut texts = Texts::default();
        for s in strings {
            texts.note(crate::input::string_identity(s), s, "s").unwrap();
        }
        let cols: Vec<&str> = plan.columns.iter().map(|c| c.name.as_str()).collect();
        let mut events: Vec<(i64, [u64; 2])> = events
            .into_iter()
            .map(|(ts, v, x, s)| {
                let v = match v {
                    0 => NULL,
                    1 => (-0.0f64).to_bits(),
                    2 => (x as f64 * 1e12).to_bits(),
                    _ => (x as f64 / 4.0).to_bits(),
                };
                let s = if s == 4 { NULL } else { crate::input::string_identity(strings[s]) };
                let mut vals = [0u64; 2];
                for (i, c) in cols.iter().enumerate() {
                    vals[i] = if *c == "v" { v } else { s };
                }
                (t0 + ts * S, vals)
            })
            .collect();
        events.sort_by_key(|e| e.0);
        let mut queries = queries;
        queries.sort_by_key(|q| q.0);
        let n = plan.n_features();
        let mut fast = KeyState::new(&plan, i64::MIN);
        let mut slow = KeyState::new(&plan, i64::MIN);
        let mut next = 0;
        let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
        for (q, ahead, lag, lead, how, mask_bits) in queries {
            let t = t0 + q * S;
            // events before the query (and, some of the time, a few after it)
            let upto = t + if how == 3 { ahead * S } else { 0 };
            while next < events.len() && events[next].0 < upto {
                let (ts, vals) = &events[next];
                if *ts >= fast.settled && *ts >= slow.settled {
                    fast.insert_with_texts(&plan, *ts, vals, &texts);
                    slow.insert_with_texts(&plan, *ts, vals, &texts);
                }
                next += 1;
            }
            fast.settle(&plan, t, 0);
            let s = (t - lag * S).max(slow.settled);
            match how {
                0 => slow.settle(&plan, s, lead * S),
                1 => {
                    slow.settle(&plan, s, lead * S);
                    slow.advance_eager(&plan, t, lead * S);
                }
                _ => {}
            }
            let mask: Vec<bool> = (0..n).map(|i| mask_bits >> (i % 64) & 1 == 1).collect();
            let mask = (how == 2).then_some(mask.as_slice());
            a.fill(f64::NAN);
            b.fill(f64::NAN);
            fast.query_masked(&plan, t, &mut a, mask).unwrap();
            slow.query_masked(&plan, t, &mut b, mask).unwrap();
            for (i, o) in plan.outputs.iter().enumerate() {
                let (x, y) = (a[i], b[i]);
                // a string answer is a word of each state's own table
                let (x, y) = if o.text {
                    (fast.text(x).map(str::to_owned), slow.text(y).map(str::to_owned))
                } else {
                    (Some(format!("{:x}", x.to_bits())), Some(format!("{:x}", y.to_bits())))
                };
                prop_assert_eq!(x, y, "output {} at +{}s", i, q);
            }
        }
    }
}
