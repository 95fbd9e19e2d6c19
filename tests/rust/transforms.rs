//! Transform pipeline tests without Python: fitted statistics against hand computations,
//! table-vs-one-row parity, JSON round trips.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use rtml::transform::{Layout, RowValue, Transforms};

fn table(x: &[Option<f64>], c: &[Option<&str>], y: &[f64]) -> RecordBatch {
    let n = x.len();
    let ts: Vec<i64> = (0..n as i64)
        .map(|i| 1_700_000_000_000_000_000 + i * 3_600_000_000_000)
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, true),
        Field::new("c", DataType::Utf8, true),
        Field::new("y", DataType::Float64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            true,
        ),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(x.to_vec())),
        Arc::new(StringArray::from(c.to_vec())),
        Arc::new(Float64Array::from(y.to_vec())),
        Arc::new(TimestampNanosecondArray::from(ts).with_timezone("UTC")),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

pub(crate) const DOC: &str = r#"{"format": "rtml.Transforms", "version": 1, "steps": [
  {"op": "is_null", "column": "x"},
  {"op": "impute", "column": "x", "strategy": "median"},
  {"op": "log1p", "column": "x", "name": "lx"},
  {"op": "standard_scale", "column": "x"},
  {"op": "robust_scale", "column": "lx"},
  {"op": "quantile_bucketize", "column": "y", "n": 4, "name": "yq"},
  {"op": "ratio", "column": "x", "other": "y", "on_zero": -1.0, "name": "xy"},
  {"op": "one_hot", "column": "c", "min_frequency": 2},
  {"op": "ordinal", "column": "c", "name": "c_ord", "max_categories": 3},
  {"op": "target_encode", "column": "c", "target": "y", "smooth": 2.0},
  {"op": "hash_bucket", "column": "c", "n": 7},
  {"op": "hour_of_day", "column": "ts", "tz": "America/New_York", "cyclical": true}
]}"#;

#[test]
fn standard_scale_and_vocabulary_by_hand() {
    let b = table(
        &[Some(1.0), Some(2.0), Some(3.0), Some(6.0)],
        &[Some("a"), Some("b"), Some("a"), Some("c")],
        &[0.0, 1.0, 0.0, 1.0],
    );
    let mut t = Transforms::from_json(
        r#"{"version": 1, "steps": [{"op": "standard_scale", "column": "x"},
            {"op": "one_hot", "column": "c", "min_frequency": 2}]}"#,
    )
    .unwrap();
    t.fit(&b).unwrap();
    assert_eq!(t.feature_names(), ["x", "c=a", "c=__other__"]);
    let out = t.transform(&b).unwrap();
    // mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5
    let sd = 3.5f64.sqrt();
    assert_eq!(out[0], vec![-2.0 / sd, -1.0 / sd, 0.0, 3.0 / sd]);
    assert_eq!(out[1], vec![1.0, 0.0, 1.0, 0.0]);
    assert_eq!(out[2], vec![0.0, 1.0, 0.0, 1.0]);
}

#[test]
fn json_round_trip_keeps_fitted_state() {
    let b = table(
        &[Some(1.0), None, Some(3.5), Some(-0.5), Some(10.0)],
        &[Some("a"), Some("b"), None, Some("a"), Some("b")],
        &[1.0, 0.0, 2.0, 0.0, 4.0],
    );
    let mut t = Transforms::from_json(DOC).unwrap();
    assert!(!t.is_fitted());
    t.fit(&b).unwrap();
    assert!(t.is_fitted());
    let again = Transforms::from_json(&t.to_json()).unwrap();
    assert_eq!(again.to_json(), t.to_json());
    let a = t.transform(&b).unwrap();
    let c = again.transform(&b).unwrap();
    let bits = |v: &Vec<Vec<f64>>| -> Vec<Vec<u64>> {
        v.iter()
            .map(|c| c.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits(&a), bits(&c));
}

#[test]
fn rejects_bad_documents() {
    for doc in [
        r#"{"version": 999, "steps": [{"op": "abs", "column": "x"}]}"#,
        r#"{"version": 1, "steps": [{"op": "frobnicate", "column": "x"}]}"#,
        r#"{"version": 1, "steps": [{"op": "hash_bucket", "column": "x", "n": -3}]}"#,
        r#"{"version": 1, "steps": [{"op": "bucketize", "column": "x", "boundaries": [2, 1]}]}"#,
        r#"{"version": 1, "steps": [{"op": "standard_scale", "column": "x", "center": 1.0, "scale": 0.0}]}"#,
        r#"{"version": 1, "steps": [{"op": "one_hot", "column": "x", "vocabulary": ["b", "a"]}]}"#,
        r#"{"version": 1, "steps": [{"op": "hour_of_day", "column": "t", "tz": "Mars/Olympus"}]}"#,
    ] {
        assert!(
            matches!(Transforms::from_json(doc), Err(rtml::Error::Spec { .. })),
            "{doc}"
        );
    }
}

/// The error of a document that must be refused: a `Spec` error naming `field`.
fn refused(doc: &str) -> (String, String) {
    match Transforms::from_json(doc) {
        Err(rtml::Error::Spec { field, message }) => (field, message),
        other => panic!("{doc}: expected a Spec error, got {other:?}"),
    }
}

#[test]
fn refuses_unknown_fields() {
    // a misspelt parameter is refused, not ignored, at the top level and in any step
    let (field, message) =
        refused(r#"{"version": 1, "stpes": [], "steps": [{"op": "abs", "column": "x"}]}"#);
    assert_eq!(field, "document.stpes");
    assert!(
        message.contains("unknown field") && message.contains("steps"),
        "{message}"
    );
    let (field, message) = refused(
        r#"{"version": 1, "steps": [{"op": "clip", "column": "x", "lo": 0, "hi": 1, "high": 2}]}"#,
    );
    assert_eq!(field, "steps[0] (clip of 'x').high");
    assert!(message.contains("lo, hi"), "{message}");
    // a parameter of another op is unknown here too
    let (field, _) = refused(
        r#"{"version": 1, "steps": [{"op": "abs", "column": "x"}, {"op": "log1p", "column": "x", "n": 3}]}"#,
    );
    assert_eq!(field, "steps[1] (log1p of 'x').n");
    // every field the writer emits is known: a fitted document of every op reads back
    let b = table(
        &[Some(1.0), None, Some(3.5), Some(-0.5), Some(10.0)],
        &[Some("a"), Some("b"), None, Some("a"), Some("b")],
        &[1.0, 0.0, 2.0, 0.0, 4.0],
    );
    let mut t = Transforms::from_json(DOC).unwrap();
    t.fit(&b).unwrap();
    let mut every_op = Transforms::from_json(
        r#"{"version": 1, "steps": [{"op": "clip", "column": "x", "lo": 0, "hi": 1, "name": "a"},
        {"op": "power", "column": "x", "p": 2, "name": "b"}, {"op": "add", "column": "x", "other": "y", "name": "c"},
        {"op": "sub", "column": "x", "other": "y"}, {"op": "mul", "column": "x", "other": "y"},
        {"op": "fill_null", "column": "x", "value": 0, "name": "d"}, {"op": "abs", "column": "y", "name": "e"},
        {"op": "min_max_scale", "column": "y", "name": "f"}, {"op": "bucketize", "column": "y", "boundaries": [1, 2], "name": "g"},
        {"op": "impute", "column": "x", "strategy": "constant", "value": 1, "name": "h"},
        {"op": "passthrough", "column": "y", "name": "i"}, {"op": "day_of_week", "column": "ts", "tz": "UTC"}]}"#,
    )
    .unwrap();
    every_op.fit(&b).unwrap();
    for fitted in [t, every_op] {
        let text = fitted.to_json();
        assert_eq!(Transforms::from_json(&text).unwrap().to_json(), text);
    }
}

#[test]
fn refuses_unknown_versions() {
    for (doc, needle) in [
        (
            r#"{"version": 2, "steps": [{"op": "abs", "column": "x"}]}"#,
            "newer rtml",
        ),
        (
            r#"{"version": 0, "steps": [{"op": "abs", "column": "x"}]}"#,
            "does not exist",
        ),
        (
            r#"{"version": -1, "steps": [{"op": "abs", "column": "x"}]}"#,
            "positive integer",
        ),
        (
            r#"{"version": 1.5, "steps": [{"op": "abs", "column": "x"}]}"#,
            "positive integer",
        ),
        (
            r#"{"version": "1", "steps": [{"op": "abs", "column": "x"}]}"#,
            "an integer",
        ),
        (
            r#"{"steps": [{"op": "abs", "column": "x"}]}"#,
            "is required",
        ),
    ] {
        let (field, message) = refused(doc);
        assert_eq!(field, "version", "{doc}");
        assert!(message.contains(needle), "{doc}: {message}");
    }
    let (field, _) = refused(
        r#"{"format": "rtml.FeatureSet", "version": 1, "steps": [{"op": "abs", "column": "x"}]}"#,
    );
    assert_eq!(field, "format");
    assert!(Transforms::from_json(
        r#"{"format": "rtml.Transforms", "version": 1, "steps": [{"op": "abs", "column": "x"}]}"#
    )
    .is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Row i of the table equals the same pipeline run on row i alone, bit for bit.
    #[test]
    fn table_equals_each_row(rows in prop::collection::vec((prop::option::weighted(0.8, -1e6f64..1e6), prop::option::weighted(0.9, 0usize..5), -100f64..100.0), 8..40)) {
        let cats = ["a", "b", "c", "d", "e"];
        let x: Vec<Option<f64>> = rows.iter().map(|r| r.0).collect();
        let c: Vec<Option<&str>> = rows.iter().map(|r| r.1.map(|i| cats[i])).collect();
        let y: Vec<f64> = rows.iter().map(|r| r.2.round()).collect();
        let b = table(&x, &c, &y);
        let mut t = Transforms::from_json(DOC).unwrap();
        if t.fit(&b).is_err() {
            return Ok(()); // e.g. every x null
        }
        let all = t.transform(&b).unwrap();
        // the reference (column-at-a-time) driver and the dense driver in both layouts, on the
        // table whole and cut into record batches
        let reference = t.transform_reference(&b).unwrap();
        let parts: Vec<RecordBatch> = (0..b.num_rows()).step_by(5).map(|r| b.slice(r, 5.min(b.num_rows() - r))).collect();
        let dense = [
            t.transform_dense(std::slice::from_ref(&b), Layout::RowMajor).unwrap(),
            t.transform_dense(std::slice::from_ref(&b), Layout::ColumnMajor).unwrap(),
            t.transform_dense(&parts, Layout::RowMajor).unwrap(),
        ];
        let mut out = vec![0.0; t.feature_names().len()];
        for i in 0..b.num_rows() {
            let one = t.transform(&b.slice(i, 1)).unwrap();
            // the one-row driver, from plain values
            let ts = 1_700_000_000_000_000_000 + i as i64 * 3_600_000_000_000;
            let vals: Vec<RowValue> = t
                .row_inputs()
                .iter()
                .map(|name| match name.as_str() {
                    "x" => x[i].map(RowValue::Num).unwrap_or(RowValue::Null),
                    "c" => c[i].map(RowValue::Str).unwrap_or(RowValue::Null),
                    "y" => RowValue::Num(y[i]),
                    "ts" => RowValue::Time(ts),
                    other => panic!("unexpected input {other}"),
                })
                .collect();
            t.apply_row(&vals, &mut out).unwrap();
            for (f, col) in all.iter().enumerate() {
                prop_assert_eq!(col[i].to_bits(), one[f][0].to_bits(), "row {} feature {}", i, f);
                prop_assert_eq!(col[i].to_bits(), out[f].to_bits(), "row driver: row {} feature {}", i, f);
                prop_assert_eq!(col[i].to_bits(), reference[f][i].to_bits(), "reference: row {} feature {}", i, f);
                for d in &dense {
                    prop_assert_eq!(col[i].to_bits(), d.get(i, f).to_bits(), "dense {:?}: row {} feature {}", d.layout, i, f);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Tables of many blocks, whole or in uneven record batches: the dense driver equals the
    /// reference driver bit for bit, and marks exactly the columns that hold a null.
    #[test]
    fn dense_equals_reference_across_blocks(
        n in 1usize..3000,
        seed in any::<u64>(),
        cuts in prop::collection::vec(0usize..3000, 0..4),
    ) {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let cats = ["a", "b", "c", "d", "e", "f"];
        let x: Vec<Option<f64>> = (0..n).map(|_| (next() % 10 != 0).then(|| (next() % 20_000) as f64 / 7.0 - 1000.0)).collect();
        let c: Vec<Option<&str>> = (0..n).map(|_| (next() % 12 != 0).then(|| cats[(next() % 6) as usize])).collect();
        let y: Vec<f64> = (0..n).map(|_| (next() % 200) as f64 - 100.0).collect();
        let b = table(&x, &c, &y);
        let mut t = Transforms::from_json(DOC).unwrap();
        if t.fit(&b.slice(0, n.min(40))).is_err() {
            return Ok(());
        }
        let reference = t.transform_reference(&b).unwrap();
        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (n + 1)).chain([0, n]).collect();
        bounds.sort_unstable();
        let parts: Vec<RecordBatch> = bounds.windows(2).map(|w| b.slice(w[0], w[1] - w[0])).collect();
        for layout in [Layout::RowMajor, Layout::ColumnMajor] {
            for input in [std::slice::from_ref(&b), &parts[..]] {
                let d = t.transform_dense(input, layout).unwrap();
                prop_assert_eq!((d.rows, d.cols), (n, reference.len()));
                for (f, col) in reference.iter().enumerate() {
                    for (i, v) in col.iter().enumerate() {
                        prop_assert_eq!(v.to_bits(), d.get(i, f).to_bits(), "{:?} row {} feature {}", layout, i, f);
                    }
                    prop_assert_eq!(d.has_null[f], col.iter().any(|v| v.is_nan()), "has_null of feature {}", f);
                }
            }
        }
    }
}
