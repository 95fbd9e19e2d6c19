//! The short form of the fuzzing (see docs/fuzzing.md): the committed corpora of the
//! cargo-fuzz targets replayed through the very harness the fuzzer runs (`fuzz/src/harness.rs`,
//! compiled into this binary), plus one named test per bug the fuzzer found, each replaying the
//! input that found it (`fuzz/regressions/<target>/<name>`).

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/harness.rs"]
mod harness;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn target(name: &str) -> fn(&[u8]) {
    harness::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// Replay every file of `fuzz/<dir>/<target>` (sorted, so failures are reproducible).
fn replay_dir(dir: &str, name: &str) -> usize {
    let path = fuzz_dir().join(dir).join(name);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&path) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(_) => return 0,
    };
    files.sort();
    let f = target(name);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let result = std::panic::catch_unwind(|| f(&data));
        assert!(
            result.is_ok(),
            "fuzz target {name} fails on {}",
            file.display()
        );
    }
    files.len()
}

fn replay(name: &str) {
    let n = replay_dir("corpus", name) + replay_dir("regressions", name);
    assert!(n > 0, "no committed inputs for fuzz target {name}");
}

/// One committed reproducer of a fixed bug (`fuzz/regressions/`, also replayed by `corpus_*`)
/// or of a known open one (`fuzz/known/`, replayed only by its ignored test).
fn replay_file(dir: &str, name: &str, file: &str) {
    let data = std::fs::read(fuzz_dir().join(dir).join(name).join(file))
        .unwrap_or_else(|e| panic!("fuzz/{dir}/{name}/{file}: {e}"));
    target(name)(&data);
}

fn regression(name: &str, file: &str) {
    replay_file("regressions", name, file);
}

#[test]
fn corpus_spec() {
    replay("spec");
}

#[test]
fn corpus_transforms() {
    replay("transforms");
}

#[test]
fn corpus_snapshot() {
    replay("snapshot");
}

#[test]
fn corpus_ingest() {
    replay("ingest");
}

#[test]
fn corpus_guard() {
    replay("guard");
}

// ------------------------------------------------------------------ bugs fixed

mod fixed {
    use std::path::Path;
    use std::sync::Arc;

    use arrow_array::types::Int8Type;
    use arrow_array::{ArrayRef, DictionaryArray, Int64Array, Int8Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use rtml::input::{read_events, read_spine, KeyRef};
    use rtml::transform::{RowValue, Transforms};
    use rtml::{backfill, Engine, Error, FeatureColumn, Plan, Spec};

    /// `["x", null]` as a dictionary whose second entry is a null value (pyarrow's
    /// `dictionary_encode(null_encoding="encode")`), indices `keys`.
    fn dict_with_null_value(keys: Vec<i8>) -> ArrayRef {
        let values: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None]));
        Arc::new(DictionaryArray::<Int8Type>::try_new(Int8Array::from(keys), values).unwrap())
    }

    fn batch(k: ArrayRef, ts: Vec<i64>, c: ArrayRef) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", k.data_type().clone(), true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("c", c.data_type().clone(), true),
        ]));
        let ts: ArrayRef = Arc::new(arrow_array::TimestampNanosecondArray::from(ts));
        RecordBatch::try_new(schema, vec![k, ts, c]).unwrap()
    }

    fn plan() -> Plan {
        Plan::new(
            Spec::from_json(
                r#"{"version": 1, "entity": "k", "timestamp": "ts", "features": [
                {"agg": "count"}, {"agg": "count", "column": "c"},
                {"agg": "distinct_count", "column": "c"}]}"#,
            )
            .unwrap(),
        )
    }

    /// Found while writing the ingest harness: a null stored in a dictionary's values was read
    /// as the empty string, so it was counted by count(col) / distinct_count(col).
    #[test]
    fn dictionary_null_value_is_a_null_value() {
        let plan = plan();
        let k: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 1]));
        let batches = [batch(k, vec![1, 2, 3], dict_with_null_value(vec![0, 1, 1]))];
        let events = read_events(&plan, &batches).unwrap();
        let spine = vec![(rtml::input::KeyArr::Int(vec![1]), vec![10])];
        let cols = backfill(&plan, &events, &spine, &mut |_, _| true).unwrap();
        assert_eq!(cols[0], FeatureColumn::Int(vec![3]));
        assert_eq!(
            cols[1],
            FeatureColumn::Int(vec![1]),
            "count(c) counts only 'x'"
        );
        assert_eq!(cols[2], FeatureColumn::Int(vec![1]), "distinct_count(c)");
        let engine = Engine::new(Arc::new(plan));
        engine.ingest(&events).unwrap();
        let mut out = [0.0; 3];
        engine.get(KeyRef::Int(1), 10, &mut out).unwrap();
        assert_eq!(out, [3.0, 1.0, 1.0]);
    }

    /// ... and a null dictionary value in the key column was accepted as the key "".
    #[test]
    fn dictionary_null_key_is_rejected() {
        let plan = plan();
        let c: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let batches = [batch(dict_with_null_value(vec![0, 1]), vec![1, 2], c)];
        match read_events(&plan, &batches) {
            Err(Error::Schema { column, message }) => {
                assert_eq!(column, "k");
                assert!(message.contains("null key at row 1"), "{message}");
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a null key was accepted"),
        }
        let spine = [batch(
            dict_with_null_value(vec![1]),
            vec![5],
            Arc::new(StringArray::from(vec!["a"])),
        )];
        assert!(matches!(
            read_spine(&plan, &spine, &["k".to_string()], "ts"),
            Err(Error::Schema { .. })
        ));
    }

    /// Found while writing the transforms harness: `quantile_bucketize` took any `n` up to
    /// 2^64 - 1 and `fit` allocated n + 1 edges (abort on allocation failure).
    #[test]
    fn quantile_bucketize_huge_n_is_refused() {
        for n in ["100001", "1000000000000", "18446744073709551615"] {
            let doc = format!(
                r#"{{"version": 1, "steps": [{{"op": "quantile_bucketize", "column": "x", "n": {n}}}]}}"#
            );
            match Transforms::from_json(&doc) {
                Err(Error::Spec { field, .. }) => assert!(field.ends_with(".n"), "{field}"),
                other => panic!("n = {n}: {other:?}"),
            }
        }
        let ok = r#"{"version": 1, "steps": [{"op": "quantile_bucketize", "column": "x", "n": 100000}]}"#;
        assert!(Transforms::from_json(ok).is_ok());
    }

    /// Found while writing the transforms harness: fitted target encodings loaded from a
    /// document were looked up by binary search without being sorted, so a document whose
    /// categories were not in order gave the default to known categories.
    #[test]
    fn target_encode_document_categories_in_any_order() {
        let doc = |cats: &str, encs: &str| {
            format!(
                r#"{{"version": 1, "steps": [{{"op": "target_encode", "column": "c", "target": "y",
                "categories": {cats}, "encodings": {encs}, "default": -1.0}}]}}"#
            )
        };
        let t = Transforms::from_json(&doc(r#"["b", "a", 3]"#, "[2.0, 1.0, 3.0]")).unwrap();
        let mut out = [0.0];
        for (v, want) in [
            (RowValue::Str("a"), 1.0),
            (RowValue::Str("b"), 2.0),
            (RowValue::Int(3), 3.0),
            (RowValue::Str("z"), -1.0),
        ] {
            t.apply_row(std::slice::from_ref(&v), &mut out).unwrap();
            assert_eq!(out[0], want, "{v:?}");
        }
        assert!(matches!(
            Transforms::from_json(&doc(r#"["a", "a"]"#, "[1.0, 2.0]")),
            Err(Error::Spec { .. })
        ));
    }

    /// Found by the `guard` target after about 1,000 executions
    /// (`fuzz/regressions/guard/fresh-snapshot-does-not-decode`): an event at exactly
    /// i64::MIN ns (NaT's bit pattern) was applied, the watermark stayed i64::MIN (its "none"
    /// sentinel), and the engine's own snapshot did not decode ("key state does not match").
    /// Now a SchemaError naming the column; the earliest instant is i64::MIN + 1.
    #[test]
    fn the_nat_bit_pattern_is_refused_as_a_time() {
        super::regression("guard", "fresh-snapshot-does-not-decode");
        let plan = Arc::new(Plan::new(
            Spec::from_json(
                r#"{"version": 1, "entity": "k", "timestamp": "ts", "timestamp_unit": "ns",
                    "features": [{"agg": "count", "window": "10ns"}]}"#,
            )
            .unwrap(),
        ));
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        let batch = |t: i64| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(vec![1])) as ArrayRef,
                    Arc::new(Int64Array::from(vec![t])) as ArrayRef,
                ],
            )
            .unwrap()
        };
        let err = read_events(&plan, &[batch(i64::MIN)]).err().unwrap();
        assert!(matches!(&err, Error::Schema { .. }), "{err:?}");
        assert!(format!("{err}").contains("NaT"), "{err}");
        // the earliest instant is an event like any other, and its engine restores
        let engine = Engine::new(Arc::clone(&plan));
        engine
            .ingest(&read_events(&plan, &[batch(i64::MIN + 1)]).unwrap())
            .unwrap();
        let bytes = rtml::snapshot::encode(&engine, Path::new("x")).unwrap();
        let back = rtml::snapshot::decode(&bytes, Path::new("x")).unwrap();
        assert_eq!(back.stats().watermark, Some(i64::MIN + 1));
    }

    /// Found by the `transforms` target (`fuzz/regressions/transforms/hash-bucket-int-category`):
    /// the table driver read integer categories through f64, so ints beyond 2^53 were rounded
    /// (two categories merged, and hash_bucket / one_hot / ordinal / target_encode disagreed
    /// with the one-row driver, which reads the exact integer).
    #[test]
    fn integer_categories_beyond_2_53_are_exact() {
        super::regression("transforms", "hash-bucket-int-category");
        let big = 1i64 << 53;
        let schema = Arc::new(Schema::new(vec![Field::new("c", DataType::Int64, true)]));
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![big, big + 1, big + 1])) as ArrayRef],
        )
        .unwrap();
        let mut t = Transforms::from_json(
            r#"{"version": 1, "steps": [{"op": "ordinal", "column": "c", "name": "o"},
                {"op": "hash_bucket", "column": "c", "name": "h", "n": 1000003}]}"#,
        )
        .unwrap();
        t.fit(&b).unwrap();
        let cols = t.transform(&b).unwrap();
        assert_eq!(cols[0], vec![0.0, 1.0, 1.0], "two categories, not one");
        let mut out = [0.0; 2];
        for (row, v) in [big, big + 1, big + 1].into_iter().enumerate() {
            t.apply_row(&[RowValue::Int(v)], &mut out).unwrap();
            assert_eq!(out, [cols[0][row], cols[1][row]], "row {row}");
        }
    }

    /// `apply_row` indexed its inputs by position: too few panicked.
    #[test]
    fn apply_row_with_the_wrong_number_of_inputs_is_an_error() {
        let t = Transforms::from_json(
            r#"{"version": 1, "steps": [{"op": "ratio", "column": "a", "other": "b"}]}"#,
        )
        .unwrap();
        let mut out = [0.0];
        assert!(matches!(
            t.apply_row(&[RowValue::Num(1.0)], &mut out),
            Err(Error::Spec { .. })
        ));
        t.apply_row(&[RowValue::Num(1.0), RowValue::Num(4.0)], &mut out)
            .unwrap();
        assert_eq!(out[0], 0.25);
    }
}

// ------------------------------------------------------------------ bugs left for the engine owner

/// Known bug 1, found by the `spec` harness on its first seed corpus (input
/// `fuzz/known/spec/tile-id-overflow`):
/// with `hop = 1ns`, `KeyState::settle` (src/state.rs, `floor_div(s, h) - w / h`) and
/// `KeyState::fill` (`floor_div(t, h) - window / h`) overflow i64 for an instant within one
/// window of i64::MIN (events or queries near the year-1677 limit, or a settle point that
/// saturates there under a huge allowed_lateness). Debug builds panic; release builds wrap,
/// drop every tile, and answer as if the window were empty. Fix: saturating/checked arithmetic
/// (or i128) for the first tile id. Fixed: saturating tile arithmetic in src/state.rs.
#[test]
fn tile_id_overflow_near_i64_min() {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use rtml::input::read_events;
    use rtml::{Engine, Plan, Spec};

    let spec = Spec::from_json(
        r#"{"version": 1, "entity": "k", "timestamp": "ts", "timestamp_unit": "ns",
            "features": [{"agg": "count", "window": "3ns", "hop": "1ns"}]}"#,
    )
    .unwrap();
    let plan = Arc::new(Plan::new(spec));
    let ts = [i64::MIN + 1, i64::MIN + 2, i64::MIN + 2];
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 1, 1])),
        Arc::new(Int64Array::from(ts.to_vec())),
    ];
    let batches = [RecordBatch::try_new(schema, cols).unwrap()];
    let events = read_events(&plan, &batches).unwrap();
    let engine = Engine::new(Arc::clone(&plan));
    engine.ingest(&events).unwrap();
    let mut out = [0.0];
    engine
        .get(rtml::input::KeyRef::Int(1), i64::MIN + 3, &mut out)
        .unwrap();
    // the window [MIN+3 - 3, MIN+3) holds all three events
    assert_eq!(out[0], 3.0);
    // and the replay of the fuzzer's input, with the harness's guard off
    harness::set_skip_known_bugs(false);
    replay_file("known", "spec", "tile-id-overflow");
}

/// How much the parity oracle compares over a corpus directory, and (target `guard`) how many
/// events each verdict judged (run by hand after a long fuzz run: `FUZZ_TARGET=guard
/// FUZZ_CORPUS=fuzz/work/guard cargo test --no-default-features --test rust -- --ignored
/// --nocapture parity_coverage`; the defaults are the committed `ingest` corpus).
#[test]
#[ignore]
fn parity_coverage() {
    use std::sync::atomic::Ordering;
    let name = std::env::var("FUZZ_TARGET").unwrap_or_else(|_| "ingest".into());
    let dir = std::env::var("FUZZ_CORPUS").unwrap_or_else(|_| format!("fuzz/corpus/{name}"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let f = target(&name);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        f(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    let load = |a: &[std::sync::atomic::AtomicUsize]| -> Vec<usize> {
        a.iter().map(|x| x.load(Ordering::Relaxed)).collect()
    };
    let c = load(&harness::PARITY_COUNTS);
    println!(
        "{n} inputs, {} reached a parity check with events, {} feature values compared, {} non-null",
        c[2], c[0], c[1]
    );
    let g = load(&harness::GUARD_COUNTS);
    println!(
        "verdicts: {} applied, {} late, {} ahead, {} duplicate",
        g[0], g[1], g[2], g[3]
    );
}

/// Known bug 2, found by the `snapshot` target after 160,620 executions (input
/// `fuzz/known/snapshot/settled-beyond-settle-point`, a payload the harness frames with a valid
/// header and CRC): `snapshot::decode` accepts a key whose `settled` (8.3e18 ns) lies beyond the
/// engine's settle point (watermark 3e10 ns - allowed_lateness 3 s). `consistent_with` checks the
/// buffer and group bounds but not `settled <= watermark - allowed_lateness` (nor `last_ts`
/// against the buffer). An event accepted between the two is then inserted behind the settled
/// region: debug builds panic (`debug_assert!(ts >= self.settled)`, src/state.rs), release
/// builds silently leave it out of the settled accumulators. Not reachable with files rtml
/// wrote (the CRC catches accidental damage), only with crafted ones. Fix (src/snapshot.rs /
/// src/state.rs): refuse such a state with `Error::Snapshot`. Fixed (`fits_stream` in src/snapshot.rs).
#[test]
fn restored_key_settled_beyond_the_watermark() {
    let data =
        std::fs::read(fuzz_dir().join("known/snapshot/settled-beyond-settle-point")).unwrap();
    // frame the payload as the harness does (format 1: the layout it was found in), and expect
    // the decoder to refuse it
    let payload = &data[1..];
    let mut file = b"RTMLSNAP".to_vec();
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc32(payload).to_le_bytes());
    file.extend_from_slice(payload);
    let decoded = rtml::snapshot::decode(&file, Path::new("crafted.snap"));
    assert!(
        matches!(decoded, Err(rtml::Error::Snapshot { .. })),
        "a key settled beyond the watermark was accepted"
    );
    harness::set_skip_known_bugs(false);
    replay_file("known", "snapshot", "settled-beyond-settle-point");
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Regenerate the seed inputs of `fuzz/corpus/` (run by hand:
/// `cargo test --no-default-features --test rust -- --ignored write_fuzz_seeds`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    seeds::write_all(&fuzz_dir().join("corpus"));
}

mod seeds {
    use std::path::Path;
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use rtml::input::read_events;
    use rtml::{Engine, Plan, Spec};

    use super::harness;

    fn put(dir: &Path, name: &str, data: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }

    pub const TRANSFORMS: &[&str] = &[
        // the full pipeline of the transforms tests
        crate::transforms::DOC,
        r#"{"version": 1, "steps": [{"op": "min_max_scale", "column": "a"}, {"op": "clip", "column": "a", "lo": -1, "hi": 1},
  {"op": "power", "column": "a", "p": 0.5}, {"op": "abs", "column": "b"}, {"op": "add", "column": "a", "other": "b"},
  {"op": "sub", "column": "a", "other": "b"}, {"op": "mul", "column": "a", "other": "b"}, {"op": "fill_null", "column": "b", "value": 0},
  {"op": "bucketize", "column": "b", "boundaries": [0, 1, 10]}, {"op": "impute", "column": "d", "strategy": "most_frequent"},
  {"op": "impute", "column": "e", "strategy": "mean"}, {"op": "impute", "column": "f", "strategy": "constant", "value": 3},
  {"op": "day_of_week", "column": "t", "tz": "UTC"}, {"op": "day_of_month", "column": "t", "tz": "Asia/Kolkata", "cyclical": true},
  {"op": "month", "column": "t", "tz": "UTC"}, {"op": "passthrough", "column": "g"}]}"#,
        r#"{"version": 1, "steps": [{"op": "standard_scale", "column": "x", "center": 1.5, "scale": 2},
  {"op": "one_hot", "column": "c", "vocabulary": ["a", "b", 3]}, {"op": "ordinal", "column": "c", "name": "o", "vocabulary": [1, 2]},
  {"op": "target_encode", "column": "c", "target": "y", "categories": ["a", 7], "encodings": [0.5, 1.5], "default": 1.0},
  {"op": "quantile_bucketize", "column": "y", "n": 3, "edges": [0, 1, 2, 3]},
  {"op": "min_max_scale", "column": "z", "min": 0, "range": 4}, {"op": "robust_scale", "column": "w", "center": 0, "scale": 1},
  {"op": "impute", "column": "v", "strategy": "median", "value": 2.5}]}"#,
    ];

    pub fn write_all(corpus: &Path) {
        // spec: the ingest target's feature sets and smaller documents
        let mut specs = harness::ingest_specs();
        specs.push(
            r#"{"format": "rtml.FeatureSet", "version": 1, "entity": "k", "timestamp": "ts", "timestamp_unit": null,
  "allowed_lateness": "5m", "ttl": "2d", "on_nonfinite": "error", "metadata": {"a": 1},
  "features": [{"agg": "sum", "column": "v", "window": "1h30m", "hop": "5m"},
               {"agg": "quantile", "column": "v", "q": 0.999},
               {"agg": "decayed_sum", "column": "v", "half_life": "1h", "window": "1d"}]}"#
                .to_string(),
        );
        for (i, s) in specs.iter().enumerate() {
            put(&corpus.join("spec"), &format!("seed-{i}"), s.as_bytes());
        }
        // transforms: documents + NUL + table bytes
        for (i, doc) in TRANSFORMS.iter().enumerate() {
            for (j, tail) in [&[][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9][..], &[255; 40][..]]
                .iter()
                .enumerate()
            {
                let mut d = doc.as_bytes().to_vec();
                d.push(0);
                d.extend_from_slice(tail);
                put(&corpus.join("transforms"), &format!("seed-{i}-{j}"), &d);
            }
        }
        // ingest and guard: pseudo-random byte strings (xorshift) of a few lengths, the first
        // byte choosing the feature set
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let targets = [
            ("ingest", 24, [16, 64, 256, 1024], 6),
            (
                "guard",
                32,
                [32, 128, 512, 2048],
                harness::guard_specs().len(),
            ),
        ];
        for (target, n, lens, n_specs) in targets {
            for i in 0..n {
                let mut d: Vec<u8> = (0..lens[i % 4])
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                d[0] = (i % n_specs) as u8;
                put(&corpus.join(target), &format!("seed-{i}"), &d);
            }
        }
        // snapshot: real snapshots of engines of every ingest spec, raw (first byte 0) and as a
        // payload framed by the harness (first byte 1)
        // (the guarded specs too: their snapshots hold the guard's remembered ids and times)
        let specs: Vec<String> = harness::ingest_specs()
            .into_iter()
            .chain(harness::guard_specs())
            .collect();
        for (i, s) in specs.iter().enumerate() {
            let plan = Arc::new(Plan::new(Spec::from_json(s).unwrap()));
            for (j, strings) in [false, true].into_iter().enumerate() {
                let engine = Engine::new(Arc::clone(&plan));
                let n = 7;
                let key: ArrayRef = if strings {
                    Arc::new(StringArray::from(vec!["a", "b", "a", "", "a", "b", "a"]))
                } else {
                    Arc::new(Int64Array::from(vec![1, 2, 1, 1, 3, 1, 2]))
                };
                let ts: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 2, 5, 9, 14, 30]));
                let v: ArrayRef = Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    Some(-2.5),
                    None,
                    Some(1e300),
                    Some(0.0),
                    Some(7.0),
                    Some(-0.0),
                ]));
                let c: ArrayRef = Arc::new(StringArray::from(vec![
                    Some("x"),
                    None,
                    Some("y"),
                    Some("x"),
                    Some("z"),
                    Some(""),
                    Some("x"),
                ]));
                let schema = Arc::new(Schema::new(vec![
                    Field::new("k", key.data_type().clone(), false),
                    Field::new("ts", DataType::Int64, false),
                    Field::new("v", DataType::Float64, true),
                    Field::new("u", DataType::Float64, true),
                    Field::new("c", DataType::Utf8, true),
                    Field::new("id", DataType::Int64, false),
                ]));
                let id: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 1, 3, 4, 1, 5]));
                let b = RecordBatch::try_new(schema, vec![key, ts, v.clone(), v, c, id]).unwrap();
                assert_eq!(b.num_rows(), n);
                let batches = [b];
                if let Ok(events) = read_events(&plan, &batches) {
                    engine.ingest(&events).unwrap();
                }
                let bytes = rtml::snapshot::encode(&engine, Path::new("seed")).unwrap();
                let mut raw = vec![0u8];
                raw.extend_from_slice(&bytes);
                put(&corpus.join("snapshot"), &format!("seed-{i}-{j}-raw"), &raw);
                let mut framed = vec![1u8];
                framed.extend_from_slice(&bytes[24..]);
                put(
                    &corpus.join("snapshot"),
                    &format!("seed-{i}-{j}-payload"),
                    &framed,
                );
            }
        }
    }
}
