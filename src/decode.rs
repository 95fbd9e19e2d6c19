//! Message payloads (JSON objects, one per message) -> the feature set's event columns.
//!
//! The stream runner hands the raw bytes of a batch of messages here; each message is parsed
//! straight into the entity / timestamp / value columns (no intermediate `serde_json::Value`,
//! fields the feature set does not read are skipped unparsed). A message that does not parse,
//! lacks the entity or the timestamp, or has a value of the wrong type is *rejected* with its
//! index in the batch and a reason; it never fails the batch.
//!
//! Mapping (docs/streaming.md):
//! * entity: a JSON integer (int64 key) or a string (string key); one kind per decoder, fixed
//!   by the first accepted message unless given up front. A composite entity maps one JSON
//!   field per key column, each an integer or a string with its own fixed kind; the batch has
//!   one column per part (the engine encodes the key, `crate::key`);
//! * timestamp: an RFC 3339 string (`2024-05-01T12:00:00Z`, `...+02:00`, fractional seconds
//!   up to nanoseconds) or an epoch number in the stated unit (`s`, `ms`, `us`, `ns`; integers
//!   exact; a fraction is rounded to the nearest nanosecond);
//! * numeric value columns: a JSON number or boolean (1 / 0); null or absent is a null value;
//! * string value columns: a JSON string; null or absent is a null value.

use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use smallvec::SmallVec;

use crate::error::{Error, Result};

/// How a value column is read from JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// A JSON number or boolean, to float64.
    Float,
    /// A JSON string.
    Str,
    /// An event id (`dedupe_on`): a JSON string, or an integer (read as its decimal text);
    /// required (a message without one is rejected).
    Id,
}

/// One output column: its name in the event table and the JSON field it comes from.
#[derive(Clone, Debug)]
pub struct ColumnMap {
    pub column: String,
    pub field: String,
    pub kind: ValueType,
}

/// The decoder's configuration: which JSON fields feed which event columns.
#[derive(Clone, Debug)]
pub struct JsonMapping {
    /// (event column name, JSON field) of the entity: one pair, or one per part of a
    /// composite key, in key order.
    pub entity: Vec<(String, String)>,
    /// (event column name, JSON field) of the timestamp.
    pub timestamp: (String, String),
    /// Nanoseconds per unit of a numeric timestamp; `None`: numeric timestamps are rejected.
    pub ts_factor: Option<i64>,
    pub values: Vec<ColumnMap>,
}

/// Decoded events of one batch plus the rejected messages.
pub struct Decoded {
    /// Entity, timestamp (ns, UTC) and value columns, in [`JsonMapping`] order.
    pub batch: RecordBatch,
    /// (message index in the batch, reason).
    pub rejected: Vec<(usize, String)>,
    /// Whether each key part is an integer (one entry per entity column; `None`: no message
    /// accepted yet and no kind given).
    pub key_is_int: Option<Vec<bool>>,
}

/// A field value as read, borrowed from the message where possible.
enum Val<'de> {
    Null,
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(std::borrow::Cow<'de, str>),
    Other(&'static str),
}

impl Val<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Int(_) | Val::UInt(_) | Val::Float(_) => "a number",
            Val::Bool(_) => "a boolean",
            Val::Str(_) => "a string",
            Val::Other(k) => k,
        }
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(Val::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val<'de>, E> {
        Ok(Val::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(std::borrow::Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(std::borrow::Cow::Owned(v)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Other("an object"))
    }
}

/// Finds a key's slot among the wanted fields (`None`: skip the value).
struct KeySeed<'m>(&'m [&'m str]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|w| *w == v))
    }
}

/// Every wanted field's value of one message (inline: no allocation for up to 8 fields).
type Fields<'de> = SmallVec<[Option<Val<'de>>; 8]>;

/// One message: every wanted field's value (last occurrence wins, as in JavaScript).
struct Row<'m>(&'m [&'m str]);

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = Fields<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = Fields<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Fields<'de> = (0..self.0.len()).map(|_| None).collect();
        while let Some(slot) = map.next_key_seed(KeySeed(self.0))? {
            match slot {
                Some(i) => out[i] = Some(map.next_value_seed(ValSeed)?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

struct ValSeed;

impl<'de> DeserializeSeed<'de> for ValSeed {
    type Value = Val<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

fn parse_row<'de>(bytes: &'de [u8], fields: &[&str]) -> std::result::Result<Fields<'de>, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let row = match Row(fields).deserialize(&mut de) {
        Ok(r) => r,
        Err(e) if e.is_data() => return Err("not a JSON object".to_string()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    de.end().map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(row)
}

/// Nanoseconds since the epoch from an RFC 3339 string.
pub fn parse_rfc3339(s: &str) -> std::result::Result<i64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("not an RFC 3339 time ({e}): {s:?}"))?;
    t.timestamp_nanos_opt()
        .ok_or_else(|| format!("time out of range (years 1677-2262): {s:?}"))
}

fn time_of(v: &Val<'_>, factor: Option<i64>) -> std::result::Result<i64, String> {
    // i64::MIN ns is NaT's bit pattern, never an instant (crate::input::NOT_A_TIME)
    time_value(v, factor).and_then(|t| {
        if t == crate::input::NOT_A_TIME {
            Err("time out of range (years 1677-2262): -9223372036854775808 ns is NaT".to_string())
        } else {
            Ok(t)
        }
    })
}

fn time_value(v: &Val<'_>, factor: Option<i64>) -> std::result::Result<i64, String> {
    let need_unit = || {
        "a numeric timestamp needs a stated unit (timestamp_unit='s'|'ms'|'us'|'ns')".to_string()
    };
    let range = || "time out of range (years 1677-2262)".to_string();
    match v {
        Val::Str(s) => parse_rfc3339(s),
        Val::Int(i) => i
            .checked_mul(factor.ok_or_else(need_unit)?)
            .ok_or_else(range),
        Val::UInt(u) => i64::try_from(*u)
            .ok()
            .and_then(|i| i.checked_mul(factor?))
            .ok_or_else(|| {
                if factor.is_none() {
                    need_unit()
                } else {
                    range()
                }
            }),
        Val::Float(x) => {
            let f = factor.ok_or_else(need_unit)?;
            // whole units exactly, then the fraction (exact in f64: x - trunc(x)) rounded to ns
            let whole = x.trunc();
            if !(whole.is_finite() && whole.abs() < 9.0e15) {
                return Err(range());
            }
            let frac = ((x - whole) * f as f64).round() as i64;
            (whole as i64)
                .checked_mul(f)
                .and_then(|w| w.checked_add(frac))
                .ok_or_else(range)
        }
        other => Err(format!(
            "expected an RFC 3339 string or an epoch number, got {}",
            other.kind()
        )),
    }
}

/// Nanoseconds per unit name (`s`, `ms`, `us`, `ns`).
pub fn unit_factor(unit: &str) -> Result<i64> {
    crate::time::unit_factor(unit, "timestamp_unit")
}

enum KeyCol {
    Unknown,
    Int(Int64Builder),
    Str(StringBuilder),
}

fn key_col(is_int: bool, n: usize) -> KeyCol {
    if is_int {
        KeyCol::Int(Int64Builder::with_capacity(n))
    } else {
        KeyCol::Str(StringBuilder::with_capacity(n, n * 8))
    }
}

/// Decode a batch of messages. `key_is_int` fixes the kind of each entity part (`None`: the
/// first accepted message decides and the result reports it).
pub fn decode_json<B: AsRef<[u8]>>(
    mapping: &JsonMapping,
    messages: &[B],
    key_is_int: Option<&[bool]>,
) -> Result<Decoded> {
    let parts = mapping.entity.len();
    if parts == 0 || key_is_int.is_some_and(|k| k.len() != parts) {
        return Err(Error::spec(
            "entity",
            format!(
                "the JSON mapping has {parts} entity field(s) but the key kind names {}",
                key_is_int.map_or(0, |k| k.len())
            ),
        ));
    }
    let composite = parts > 1;
    let mut names: Vec<&str> = Vec::with_capacity(parts + 1 + mapping.values.len());
    for (_, field) in &mapping.entity {
        names.push(field);
    }
    names.push(&mapping.timestamp.1);
    for c in &mapping.values {
        names.push(&c.field);
    }
    let n = messages.len();
    let mut keys: Vec<KeyCol> = match key_is_int {
        None => (0..parts).map(|_| KeyCol::Unknown).collect(),
        Some(kinds) => kinds.iter().map(|&k| key_col(k, n)).collect(),
    };
    let mut ts: Vec<i64> = Vec::with_capacity(n);
    enum ValCol {
        F(Float64Builder),
        S(StringBuilder),
    }
    let mut cols: Vec<ValCol> = mapping
        .values
        .iter()
        .map(|c| match c.kind {
            ValueType::Float => ValCol::F(Float64Builder::with_capacity(n)),
            ValueType::Str | ValueType::Id => ValCol::S(StringBuilder::with_capacity(n, n * 8)),
        })
        .collect();
    let mut rejected = Vec::new();
    // Values of one message, checked before anything is appended.
    enum V<'a> {
        F(Option<f64>),
        S(Option<std::borrow::Cow<'a, str>>),
    }
    enum K<'a> {
        Int(i64),
        Str(&'a str),
    }
    for (i, msg) in messages.iter().enumerate() {
        let row = match parse_row(msg.as_ref(), &names) {
            Ok(r) => r,
            Err(reason) => {
                rejected.push((i, reason));
                continue;
            }
        };
        // (inline vectors: no allocation per message for up to 2 key parts and 8 values)
        type Checked<'a> = (i64, SmallVec<[K<'a>; 2]>, SmallVec<[V<'a>; 8]>);
        let checked = (|| -> std::result::Result<Checked<'_>, String> {
            let mut key = SmallVec::new();
            for (j, ((column, field), v)) in mapping.entity.iter().zip(&row).enumerate() {
                let what = || {
                    if composite {
                        format!("part {} of the entity, column '{column}'", j + 1)
                    } else {
                        "the entity".to_string()
                    }
                };
                key.push(match v {
                    None | Some(Val::Null) => {
                        return Err(format!("missing field '{field}' ({})", what()))
                    }
                    Some(Val::Int(k)) => K::Int(*k),
                    Some(Val::UInt(k)) => match i64::try_from(*k) {
                        Ok(k) => K::Int(k),
                        Err(_) => {
                            return Err(format!(
                                "field '{field}': integer key out of the int64 range"
                            ))
                        }
                    },
                    Some(Val::Str(s)) => K::Str(s.as_ref()),
                    Some(other) => {
                        return Err(format!(
                            "field '{field}': {} must be an integer or a string, got {}",
                            if composite {
                                "a key part"
                            } else {
                                "the entity"
                            },
                            other.kind()
                        ))
                    }
                });
            }
            let t = match &row[parts] {
                None | Some(Val::Null) => {
                    return Err(format!(
                        "missing field '{}' (the timestamp)",
                        mapping.timestamp.1
                    ))
                }
                Some(v) => time_of(v, mapping.ts_factor)
                    .map_err(|m| format!("field '{}': {m}", mapping.timestamp.1))?,
            };
            let mut vals = SmallVec::new();
            for (c, v) in mapping.values.iter().zip(row.iter().skip(parts + 1)) {
                let bad = |v: &Val<'_>| {
                    Err(format!(
                        "field '{}': expected {}, got {}",
                        c.field,
                        match c.kind {
                            ValueType::Float => "a number",
                            ValueType::Str => "a string",
                            ValueType::Id => "an event id (a string or an integer)",
                        },
                        v.kind()
                    ))
                };
                vals.push(match (c.kind, v) {
                    (ValueType::Float, None | Some(Val::Null)) => V::F(None),
                    (ValueType::Str, None | Some(Val::Null)) => V::S(None),
                    (ValueType::Float, Some(Val::Int(x))) => V::F(Some(*x as f64)),
                    (ValueType::Float, Some(Val::UInt(x))) => V::F(Some(*x as f64)),
                    (ValueType::Float, Some(Val::Float(x))) => V::F(Some(*x)),
                    (ValueType::Float, Some(Val::Bool(b))) => {
                        V::F(Some(if *b { 1.0 } else { 0.0 }))
                    }
                    (ValueType::Str | ValueType::Id, Some(Val::Str(s))) => {
                        V::S(Some(std::borrow::Cow::Borrowed(s.as_ref())))
                    }
                    (ValueType::Id, Some(Val::Int(x))) => V::S(Some(x.to_string().into())),
                    (ValueType::Id, Some(Val::UInt(x))) => V::S(Some(x.to_string().into())),
                    (ValueType::Id, None | Some(Val::Null)) => {
                        return Err(format!("missing field '{}' (the event id)", c.field))
                    }
                    (_, Some(v)) => return bad(v),
                });
            }
            Ok((t, key, vals))
        })();
        let (t, key, vals) = match checked {
            Ok(x) => x,
            Err(reason) => {
                rejected.push((i, reason));
                continue;
            }
        };
        // The key kinds: fixed, or decided by the first accepted message; every part is
        // checked before any is appended.
        let mismatch = keys.iter().zip(&key).zip(&mapping.entity).find_map(|((col, k), (_, field))| {
            match (col, k) {
                (KeyCol::Int(_), K::Str(_)) => Some(format!("field '{field}': expected an integer key like the rest of the partition, got a string")),
                (KeyCol::Str(_), K::Int(_)) => Some(format!("field '{field}': expected a string key like the rest of the partition, got an integer")),
                _ => None,
            }
        });
        if let Some(reason) = mismatch {
            rejected.push((i, reason));
            continue;
        }
        for (col, k) in keys.iter_mut().zip(&key) {
            if let KeyCol::Unknown = col {
                *col = key_col(matches!(k, K::Int(_)), n);
            }
            match (col, k) {
                (KeyCol::Int(b), K::Int(k)) => b.append_value(*k),
                (KeyCol::Str(b), K::Str(s)) => b.append_value(s),
                // (kinds checked above; total without a panic)
                (KeyCol::Int(b), _) => b.append_null(),
                (KeyCol::Str(b), _) => b.append_null(),
                (KeyCol::Unknown, _) => {}
            }
        }
        ts.push(t);
        for (col, v) in cols.iter_mut().zip(vals) {
            match (col, v) {
                (ValCol::F(b), V::F(x)) => b.append_option(x),
                (ValCol::S(b), V::S(x)) => b.append_option(x.as_deref()),
                // (kinds always match: both follow `mapping.values`; total without a panic)
                (ValCol::F(b), V::S(_)) => b.append_null(),
                (ValCol::S(b), V::F(_)) => b.append_null(),
            }
        }
    }
    let key_is_int: Option<Vec<bool>> = keys
        .iter()
        .map(|k| match k {
            KeyCol::Unknown => None,
            KeyCol::Int(_) => Some(true),
            KeyCol::Str(_) => Some(false),
        })
        .collect();
    let rows = ts.len();
    let mut fields = Vec::with_capacity(parts + 1 + mapping.values.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(fields.capacity());
    for ((column, _), k) in mapping.entity.iter().zip(keys) {
        let (key_type, key_arr): (DataType, ArrayRef) = match k {
            KeyCol::Int(mut b) => (DataType::Int64, Arc::new(b.finish())),
            KeyCol::Str(mut b) => (DataType::Utf8, Arc::new(b.finish())),
            // nothing accepted: an empty int column (an empty batch is no evidence of the kind)
            KeyCol::Unknown => (DataType::Int64, Arc::new(Int64Builder::new().finish())),
        };
        fields.push(Field::new(column, key_type, false));
        arrays.push(key_arr);
    }
    fields.push(Field::new(
        &mapping.timestamp.0,
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        false,
    ));
    arrays.push(Arc::new(
        TimestampNanosecondArray::from(ts).with_timezone("UTC"),
    ));
    for (c, col) in mapping.values.iter().zip(cols) {
        match col {
            ValCol::F(mut b) => {
                fields.push(Field::new(&c.column, DataType::Float64, true));
                arrays.push(Arc::new(b.finish()));
            }
            ValCol::S(mut b) => {
                fields.push(Field::new(&c.column, DataType::Utf8, true));
                arrays.push(Arc::new(b.finish()));
            }
        }
    }
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| {
        Error::schema(
            &mapping.timestamp.0,
            format!("cannot build the decoded batch: {e}"),
        )
    })?;
    Ok(Decoded {
        batch,
        rejected,
        key_is_int,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampNanosecondType};
    use arrow_array::Array;

    fn mapping(unit: Option<&str>) -> JsonMapping {
        JsonMapping {
            entity: vec![("user".into(), "u".into())],
            timestamp: ("ts".into(), "t".into()),
            ts_factor: unit.map(|u| unit_factor(u).unwrap()),
            values: vec![
                ColumnMap {
                    column: "x".into(),
                    field: "x".into(),
                    kind: ValueType::Float,
                },
                ColumnMap {
                    column: "s".into(),
                    field: "s".into(),
                    kind: ValueType::Str,
                },
            ],
        }
    }

    #[test]
    fn decodes_fields_and_skips_the_rest() {
        let msgs: Vec<&[u8]> = vec![
            br#"{"u": 7, "t": "1970-01-01T00:00:01.5Z", "x": 2.5, "s": "a", "z": {"deep": [1, 2, {"q": null}]}}"#,
            br#"{"t": 3, "u": 8, "x": null}"#,
            br#"{"u": 9, "t": 4, "x": 1e308, "x": -0.0, "s": "caf\u00e9"}"#,
        ];
        let d = decode_json(&mapping(Some("s")), &msgs, None).unwrap();
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        assert_eq!(d.key_is_int, Some(vec![true]));
        let b = &d.batch;
        assert_eq!(
            b.column(0).as_primitive::<Int64Type>().values().to_vec(),
            vec![7, 8, 9]
        );
        assert_eq!(
            b.column(1)
                .as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec(),
            vec![1_500_000_000, 3_000_000_000, 4_000_000_000]
        );
        let x = b.column(2).as_primitive::<Float64Type>();
        assert_eq!(x.value(0), 2.5);
        assert!(x.is_null(1));
        assert_eq!(x.value(2).to_bits(), (-0.0f64).to_bits()); // last duplicate wins
        let s = b.column(3).as_string::<i32>();
        assert_eq!(s.value(0), "a");
        assert!(s.is_null(1));
        assert_eq!(s.value(2), "café");
    }

    #[test]
    fn event_ids_are_strings_or_integers_and_required() {
        let mut m = mapping(Some("s"));
        m.values.push(ColumnMap {
            column: "id".into(),
            field: "eid".into(),
            kind: ValueType::Id,
        });
        let msgs: Vec<&[u8]> = vec![
            br#"{"u": 1, "t": 1, "eid": "a-1"}"#,
            br#"{"u": 1, "t": 2, "eid": 42}"#,
            br#"{"u": 1, "t": 3, "eid": 18446744073709551615}"#,
            br#"{"u": 1, "t": 4}"#,
            br#"{"u": 1, "t": 5, "eid": null}"#,
            br#"{"u": 1, "t": 6, "eid": 1.5}"#,
        ];
        let d = decode_json(&m, &msgs, None).unwrap();
        let ids = d.batch.column(4).as_string::<i32>();
        assert_eq!(
            (0..ids.len()).map(|i| ids.value(i)).collect::<Vec<_>>(),
            ["a-1", "42", "18446744073709551615"]
        );
        let reasons: Vec<(usize, bool)> = d
            .rejected
            .iter()
            .map(|(i, r)| (*i, r.contains("'eid'")))
            .collect();
        assert_eq!(reasons, [(3, true), (4, true), (5, true)]);
    }

    #[test]
    fn rejects_never_fail_the_batch() {
        let msgs: Vec<&[u8]> = vec![
            b"",
            b"{",
            b"null",
            b"{\"u\": 1.5, \"t\": 1}",
            b"{\"u\": 18446744073709551615, \"t\": 1}",
            b"{\"u\": 1, \"t\": 1e300}",
            b"{\"u\": \"k\", \"t\": 1}",
        ];
        let d = decode_json(&mapping(Some("ms")), &msgs, None).unwrap();
        let idx: Vec<usize> = d.rejected.iter().map(|r| r.0).collect();
        assert_eq!(idx, vec![0, 1, 2, 3, 4, 5]);
        assert!(d.rejected[5].1.contains("out of range"));
        assert_eq!(d.key_is_int, Some(vec![false]));
        assert_eq!(d.batch.num_rows(), 1);
    }

    #[test]
    fn composite_entity_one_column_per_part() {
        let mut m = mapping(Some("s"));
        m.entity = vec![("driver".into(), "d".into()), ("zone".into(), "z".into())];
        let msgs: Vec<&[u8]> = vec![
            br#"{"d": "a", "z": 1, "t": 1, "x": 1.0}"#,
            br#"{"d": "b", "t": 2}"#,
            br#"{"d": "b", "z": "1", "t": 3}"#,
            br#"{"d": 7, "z": 2, "t": 4}"#,
            br#"{"d": "c", "z": [1], "t": 5}"#,
            br#"{"d": "c", "z": null, "t": 6}"#,
            br#"{"d": "c", "z": 3, "t": 7}"#,
        ];
        let d = decode_json(&m, &msgs, None).unwrap();
        assert_eq!(d.key_is_int, Some(vec![false, true]));
        let b = &d.batch;
        assert_eq!(b.schema().field(0).name(), "driver");
        assert_eq!(b.schema().field(1).name(), "zone");
        assert_eq!(b.schema().field(2).name(), "ts");
        let dr = b.column(0).as_string::<i32>();
        assert_eq!(
            (0..dr.len()).map(|i| dr.value(i)).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>().values().to_vec(),
            vec![1, 3]
        );
        let why: Vec<(usize, &str)> = d.rejected.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(why.len(), 5, "{why:?}");
        assert!(
            why[0].0 == 1 && why[0].1.contains("missing field 'z'") && why[0].1.contains("zone")
        );
        assert!(why[1].0 == 2 && why[1].1.contains("field 'z'") && why[1].1.contains("integer"));
        assert!(why[2].0 == 3 && why[2].1.contains("field 'd'") && why[2].1.contains("string"));
        assert!(why[3].0 == 4 && why[3].1.contains("field 'z'") && why[3].1.contains("an array"));
        assert!(why[4].0 == 5 && why[4].1.contains("missing field 'z'"));
        // kinds given up front; a wrong count of kinds is an error, not a panic
        let d = decode_json(&m, &msgs, Some(&[false, false])).unwrap();
        assert_eq!(d.batch.num_rows(), 1); // only {"d": "b", "z": "1"}
        assert!(decode_json(&m, &msgs, Some(&[true])).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = br#"{}[]":,0123456789.eE+-truefalsnl utx\"#;
        for _ in 0..5000 {
            let n = (next() % 40) as usize;
            let m: Vec<u8> = (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let d = decode_json(&mapping(Some("ns")), &[m.as_slice()], None).unwrap();
            assert_eq!(d.batch.num_rows() + d.rejected.len(), 1);
        }
    }
}
