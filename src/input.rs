//! Arrow record batches in, engine columns out: keys, nanosecond times and value words.
//! Every check on user data happens here, before anything touches engine state.

use std::hash::{Hash, Hasher};

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use arrow_schema::{DataType, TimeUnit};

use crate::error::{Error, Result};
use crate::plan::{ColKind, Plan};
use crate::text::Texts;
use crate::time::{unit_factor, NS_PER_MS, NS_PER_S, NS_PER_US};
pub use row::NULL;

/// How an event is stored in engine state: one row of u64 words, the timestamp (ns, as i64
/// bits) then one word per plan column: an f64's bits, a string's 64-bit identity
/// ([`string_identity`]), or [`NULL`]. A leaf module: the accumulators (`crate::agg`) read
/// rows through it without depending on the rest of this module.
pub mod row {
    /// The stored value of a null (a NaN pattern: real NaNs never reach the state).
    pub const NULL: u64 = 0x7FF8_0000_DEAD_0001;

    /// A stored numeric word as a number (`None` for null).
    #[inline]
    pub fn num(v: u64) -> Option<f64> {
        (v != NULL).then(|| f64::from_bits(v))
    }
}

/// A borrowed entity key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyRef<'a> {
    Int(i64),
    Str(&'a str),
}

/// An owned entity key (online state, snapshots).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Key {
    Int(i64),
    Str(Box<str>),
}

impl Key {
    pub fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Int(i) => KeyRef::Int(*i),
            Key::Str(s) => KeyRef::Str(s),
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state)
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(k: &KeyRef<'_>) -> Key {
        k.to_key()
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self == key.as_ref()
    }
}

impl KeyRef<'_> {
    pub fn to_key(self) -> Key {
        match self {
            KeyRef::Int(i) => Key::Int(i),
            KeyRef::Str(s) => Key::Str(s.into()),
        }
    }
    pub fn is_int(&self) -> bool {
        matches!(self, KeyRef::Int(_))
    }
}

/// An event id (the `dedupe_on` column): an integer, or a string by its 128-bit xxh3 hash
/// (a collision among n distinct ids has a chance of about n^2 / 2^129).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EventId {
    Int(i64),
    /// The two halves of the 128-bit hash (8-byte aligned: 24 bytes an id, not 32).
    Str([u64; 2]),
}

impl EventId {
    pub fn of_str(s: &str) -> EventId {
        let h = xxhash_rust::xxh3::xxh3_128(s.as_bytes());
        EventId::Str([h as u64, (h >> 64) as u64])
    }
}

/// A string column of any Arrow layout.
pub enum StrArr<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
    Dict {
        keys: Vec<usize>,
        values: Box<StrArr<'a>>,
    },
}

impl<'a> StrArr<'a> {
    /// The string at row `i < len`. In bounds for a dictionary too: Arrow validates every
    /// non-null key against the values' length, and callers never read a null row (keys are
    /// refused on a null, values check `logical_nulls` first).
    #[inline]
    pub fn get(&self, i: usize) -> &'a str {
        match self {
            StrArr::Utf8(a) => a.value(i),
            StrArr::Large(a) => a.value(i),
            StrArr::View(a) => a.value(i),
            StrArr::Dict { keys, values } => values.get(keys[i]),
        }
    }
}

/// An entity-key column.
pub enum KeyArr<'a> {
    Int(Vec<i64>),
    Str(StrArr<'a>),
    Owned(Vec<String>),
    /// Composite keys ([`crate::key`] encodings), all of one kind (the second field).
    Composite(Vec<String>, u64),
}

impl KeyArr<'_> {
    #[inline]
    pub fn get(&self, i: usize) -> KeyRef<'_> {
        match self {
            KeyArr::Int(v) => KeyRef::Int(v[i]),
            KeyArr::Str(s) => KeyRef::Str(s.get(i)),
            KeyArr::Owned(v) | KeyArr::Composite(v, _) => KeyRef::Str(&v[i]),
        }
    }
    pub fn is_int(&self) -> bool {
        matches!(self, KeyArr::Int(_))
    }
    /// The kind of every key in the column ([`crate::key`]).
    pub fn kind(&self) -> u64 {
        match self {
            KeyArr::Int(_) => crate::key::KIND_INT,
            KeyArr::Str(_) | KeyArr::Owned(_) => crate::key::KIND_STR,
            KeyArr::Composite(_, k) => *k,
        }
    }
}

/// Events ready for the engine: flat time and value columns, key columns per input batch.
pub struct Events<'a> {
    /// Key arrays, the i-th covering rows `starts[i]..starts[i + 1]` (or to the end).
    pub keys: Vec<KeyArr<'a>>,
    pub starts: Vec<usize>,
    pub ts: Vec<i64>,
    /// One vector per plan column: f64 bits, string identity, or [`NULL`].
    pub values: Vec<Vec<u64>>,
    /// The event ids (`dedupe_on`), one per event; empty without deduplication.
    pub ids: Vec<EventId>,
    /// The strings of the words of `string_columns` columns.
    pub texts: Texts,
}

impl<'a> Events<'a> {
    pub fn empty(n_columns: usize) -> Self {
        Events {
            keys: Vec::new(),
            starts: Vec::new(),
            ts: Vec::new(),
            values: vec![Vec::new(); n_columns],
            ids: Vec::new(),
            texts: Texts::default(),
        }
    }

    /// The id of event `i`, if the events carry ids.
    #[inline]
    pub fn id(&self, i: usize) -> Option<EventId> {
        self.ids.get(i).copied()
    }

    /// The events where `keep` is true (keys owned), in row order.
    pub fn filtered(&self, keep: &[bool]) -> Events<'static> {
        let mut out = Events::empty(self.values.len());
        let n = keep.iter().filter(|k| **k).count();
        if n == 0 {
            return out;
        }
        let mut ints = Vec::new();
        let mut strs = Vec::new();
        let mut ts = Vec::with_capacity(n);
        let mut values: Vec<Vec<u64>> = vec![Vec::with_capacity(n); self.values.len()];
        self.for_each_key(|i, k| {
            if !keep[i] {
                return;
            }
            match k {
                KeyRef::Int(v) => ints.push(v),
                KeyRef::Str(s) => strs.push(s.to_string()),
            }
            ts.push(self.ts[i]);
            for (dst, src) in values.iter_mut().zip(&self.values) {
                dst.push(src[i]);
            }
            if let Some(id) = self.id(i) {
                out.ids.push(id);
            }
        });
        let keys = match self.key_kind() {
            Some(crate::key::KIND_INT) => KeyArr::Int(ints),
            Some(crate::key::KIND_STR) | None => KeyArr::Owned(strs),
            Some(kind) => KeyArr::Composite(strs, kind),
        };
        let _ = out.push(keys, ts, values);
        out.texts = self.texts.clone();
        out
    }
    pub fn len(&self) -> usize {
        self.ts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
    /// The kind of the keys ([`crate::key`]; `None` when there are no events).
    pub fn key_kind(&self) -> Option<u64> {
        self.keys.first().map(KeyArr::kind)
    }
    /// Visit every event's key in row order.
    pub fn for_each_key<'s>(&'s self, mut f: impl FnMut(usize, KeyRef<'s>)) {
        for (b, keys) in self.keys.iter().enumerate() {
            let start = self.starts[b];
            let end = self.starts.get(b + 1).copied().unwrap_or(self.ts.len());
            for i in start..end {
                f(i, keys.get(i - start));
            }
        }
    }
    /// The order a batch applies in: by time, ties by value words (column by column), then by
    /// row. Any permutation of a batch has the same order up to rows that are equal in all of
    /// these, which leave the same state.
    #[inline]
    fn arrival_cmp(&self, i: usize, j: usize) -> std::cmp::Ordering {
        crate::arrival::cmp(&self.ts, &self.values, i, j)
    }

    /// Whether the rows are already in arrival order ([`Events::arrival_order`]): one linear
    /// pass (the common case: a stream in time order).
    pub fn in_arrival_order(&self) -> bool {
        (1..self.len()).all(|i| self.arrival_cmp(i - 1, i).is_le())
    }

    /// Row indices in arrival order: by time, ties by value words, then by row.
    pub fn arrival_order(&self) -> Vec<u32> {
        crate::arrival::order(&self.ts, &self.values)
    }

    /// Visit every event's key in `order` (row order when `None`).
    pub fn for_each_key_in<'s>(
        &'s self,
        order: Option<&[u32]>,
        mut f: impl FnMut(usize, KeyRef<'s>),
    ) {
        let Some(order) = order else {
            return self.for_each_key(f);
        };
        let mut keys: Vec<KeyRef<'s>> = Vec::with_capacity(self.len());
        self.for_each_key(|_, k| keys.push(k));
        for &i in order {
            f(i as usize, keys[i as usize]);
        }
    }

    /// Append the columns of one more batch.
    pub fn push(
        &mut self,
        keys: KeyArr<'a>,
        ts: Vec<i64>,
        values: Vec<Vec<u64>>,
    ) -> Result<(), KeyArr<'a>> {
        if let Some(k) = self.key_kind() {
            if k != keys.kind() {
                return Err(keys);
            }
        }
        self.starts.push(self.ts.len());
        self.keys.push(keys);
        self.ts.extend_from_slice(&ts);
        for (dst, src) in self.values.iter_mut().zip(values) {
            dst.extend_from_slice(&src);
        }
        Ok(())
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str, what: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let have: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        Error::schema(
            name,
            format!("not found in {what} (columns: {})", have.join(", ")),
        )
    })
}

/// First null row, counting logical nulls: a dictionary entry that is null (pyarrow's
/// `dictionary_encode(null_encoding="encode")`) is a null, not an empty string.
fn first_null(a: &dyn Array) -> Option<usize> {
    let nulls = a.logical_nulls()?;
    if nulls.null_count() == 0 {
        return None;
    }
    (0..a.len()).find(|&i| nulls.is_null(i))
}

macro_rules! ints_to_i64 {
    ($a:expr, $name:expr, $($dt:ident => $ty:ty),*) => {
        match $a.data_type() {
            $(DataType::$dt => Some($a.as_primitive::<$ty>().values().iter().map(|&v| v as i64).collect::<Vec<i64>>()),)*
            DataType::UInt64 => {
                let v = $a.as_primitive::<UInt64Type>().values();
                if let Some(p) = v.iter().position(|&x| x > i64::MAX as u64) {
                    if !$a.is_null(p) {
                        return Err(Error::schema($name, format!("value {} at row {p} does not fit in int64", v[p])));
                    }
                }
                Some(v.iter().map(|&x| x as i64).collect())
            }
            _ => None,
        }
    };
}

fn int_values(a: &dyn Array, name: &str) -> Result<Option<Vec<i64>>> {
    Ok(ints_to_i64!(a, name,
        Int8 => Int8Type, Int16 => Int16Type, Int32 => Int32Type, Int64 => Int64Type,
        UInt8 => UInt8Type, UInt16 => UInt16Type, UInt32 => UInt32Type))
}

fn str_arr<'a>(a: &'a dyn Array) -> Result<Option<StrArr<'a>>> {
    Ok(Some(match a.data_type() {
        DataType::Utf8 => StrArr::Utf8(a.as_string::<i32>()),
        DataType::LargeUtf8 => StrArr::Large(a.as_string::<i64>()),
        DataType::Utf8View => StrArr::View(a.as_string_view()),
        DataType::Dictionary(kt, _) => {
            macro_rules! dict {
                ($($dt:ident => $ty:ty),*) => {
                    match kt.as_ref() {
                        $(DataType::$dt => {
                            let d = a.as_dictionary::<$ty>();
                            let keys: Vec<usize> = d.keys().values().iter().map(|&k| k as usize).collect();
                            (keys, d.values())
                        })*
                        _ => return Ok(None),
                    }
                };
            }
            let (keys, values) = dict!(Int8 => Int8Type, Int16 => Int16Type, Int32 => Int32Type,
                Int64 => Int64Type, UInt8 => UInt8Type, UInt16 => UInt16Type, UInt32 => UInt32Type,
                UInt64 => UInt64Type);
            let Some(values) = str_arr(values.as_ref())? else {
                return Ok(None);
            };
            StrArr::Dict {
                keys,
                values: Box::new(values),
            }
        }
        _ => return Ok(None),
    }))
}

/// A dictionary-encoded string column, if `a` is one.
pub fn read_dictionary_strings(a: &ArrayRef) -> Option<StrArr<'_>> {
    str_arr(a.as_ref()).ok().flatten()
}

pub fn read_keys<'a>(a: &'a ArrayRef, name: &str, offset: usize) -> Result<KeyArr<'a>> {
    if let Some(i) = first_null(a.as_ref()) {
        return Err(Error::schema(
            name,
            format!("null key at row {}", offset + i),
        ));
    }
    if let Some(v) = int_values(a.as_ref(), name)? {
        return Ok(KeyArr::Int(v));
    }
    if let Some(s) = str_arr(a.as_ref())? {
        return Ok(KeyArr::Str(s));
    }
    Err(Error::schema(
        name,
        format!(
            "entity keys must be integers or strings, got {}",
            a.data_type()
        ),
    ))
}

/// The entity keys of a batch: the one key column, or the composite key of the part columns
/// (`columns`; each part's nulls and type checked and named as a key column's).
pub fn read_entity<'a>(
    batch: &'a RecordBatch,
    columns: &[String],
    what: &str,
    offset: usize,
) -> Result<KeyArr<'a>> {
    if let [one] = columns {
        return read_keys(column(batch, one, what)?, one, offset);
    }
    let mut parts = Vec::with_capacity(columns.len());
    for name in columns {
        parts.push(read_keys(column(batch, name, what)?, name, offset)?);
    }
    let kind = crate::key::kind_of_parts(parts.iter().map(KeyArr::is_int));
    let keys = (0..batch.num_rows())
        .map(|i| {
            let mut out = String::new();
            for p in &parts {
                crate::key::push_part(&mut out, p.get(i));
            }
            out
        })
        .collect();
    Ok(KeyArr::Composite(keys, kind))
}

/// The composite-key encoding ([`crate::key`]) of the parts in `columns` for every row of
/// `batch`, `None` where any part is null: the keys an engine of a composite entity with these
/// columns holds, for code outside the engine that must agree with it (partitioning a backfill
/// by key, the shared store's key names, joining rows by key). Each part column must be
/// integers or strings, as an entity's.
pub fn encode_parts(
    batch: &RecordBatch,
    columns: &[String],
    what: &str,
) -> Result<Vec<Option<String>>> {
    let mut parts = Vec::with_capacity(columns.len());
    let mut nulls = Vec::with_capacity(columns.len());
    for name in columns {
        let a = column(batch, name, what)?;
        nulls.push(a.logical_nulls());
        let k = if let Some(v) = int_values(a.as_ref(), name)? {
            KeyArr::Int(v)
        } else if let Some(s) = str_arr(a.as_ref())? {
            KeyArr::Str(s)
        } else {
            return Err(Error::schema(
                name,
                format!(
                    "entity keys must be integers or strings, got {}",
                    a.data_type()
                ),
            ));
        };
        parts.push(k);
    }
    Ok((0..batch.num_rows())
        .map(|i| {
            if nulls.iter().flatten().any(|n| n.is_null(i)) {
                return None;
            }
            let mut out = String::new();
            for p in &parts {
                crate::key::push_part(&mut out, p.get(i));
            }
            Some(out)
        })
        .collect())
}

/// `i64::MIN` ns is not an instant: it is the bit pattern of a missing time (numpy / pandas
/// `NaT`, which a cast to int64 turns into it), and the engine's "no watermark yet". Refused
/// like a time out of range, so that a NaT that lost its null mask never becomes an event.
pub const NOT_A_TIME: i64 = i64::MIN;

fn out_of_range(name: &str, row: usize, value: i64) -> Error {
    let what = if value == NOT_A_TIME {
        " (-9223372036854775808 ns is NaT, a missing time: drop the row or pass it as a null)"
    } else {
        ""
    };
    Error::schema(
        name,
        format!(
            "timestamp at row {row} is outside the representable range (years 1677..2262){what}"
        ),
    )
}

fn scale(v: &[i64], factor: i64, name: &str, offset: usize) -> Result<Vec<i64>> {
    if factor == 1 {
        if let Some(i) = v.iter().position(|&x| x == NOT_A_TIME) {
            return Err(out_of_range(name, offset + i, NOT_A_TIME));
        }
        return Ok(v.to_vec());
    }
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            x.checked_mul(factor)
                .filter(|&t| t != NOT_A_TIME)
                .ok_or_else(|| out_of_range(name, offset + i, x))
        })
        .collect()
}

/// Read a time column as int64 nanoseconds since the epoch (UTC).
pub fn read_times(a: &ArrayRef, name: &str, unit: Option<&str>, offset: usize) -> Result<Vec<i64>> {
    if let Some(i) = first_null(a.as_ref()) {
        return Err(Error::schema(
            name,
            format!("null timestamp at row {}", offset + i),
        ));
    }
    let factor = |u: &TimeUnit| match u {
        TimeUnit::Second => NS_PER_S,
        TimeUnit::Millisecond => NS_PER_MS,
        TimeUnit::Microsecond => NS_PER_US,
        TimeUnit::Nanosecond => 1,
    };
    match a.data_type() {
        DataType::Timestamp(u, _) => {
            let v: &[i64] = match u {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().values(),
                TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().values(),
                TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().values(),
                TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().values(),
            };
            scale(v, factor(u), name, offset)
        }
        DataType::Date32 => {
            let v: Vec<i64> = a.as_primitive::<Date32Type>().values().iter().map(|&d| d as i64).collect();
            scale(&v, 86_400 * NS_PER_S, name, offset)
        }
        DataType::Date64 => scale(a.as_primitive::<Date64Type>().values(), NS_PER_MS, name, offset),
        dt => match int_values(a.as_ref(), name)? {
            Some(v) => match unit {
                Some(u) => scale(&v, unit_factor(u, "timestamp_unit")?, name, offset),
                None => Err(Error::schema(
                    name,
                    "integer timestamps need a declared unit: FeatureSet(..., timestamp_unit='s'|'ms'|'us'|'ns')",
                )),
            },
            None => Err(Error::schema(
                name,
                format!("expected a timestamp, date or integer column, got {dt}"),
            )),
        },
    }
}

/// Hash of a string value for distinct counting (xxh3-64, never [`NULL`]).
#[inline]
pub fn string_identity(s: &str) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64(s.as_bytes());
    if h == NULL {
        h ^ 1
    } else {
        h
    }
}

/// Check a numeric value; `Ok(None)` = treat as null.
#[inline]
pub fn check_number(x: f64, skip_nonfinite: bool, name: &str, row: usize) -> Result<Option<f64>> {
    if x.is_finite() {
        Ok(Some(x))
    } else if skip_nonfinite {
        Ok(None)
    } else {
        Err(Error::schema(
            name,
            format!(
                "{x} at row {row}: NaN and infinite values are rejected (FeatureSet(on_nonfinite='skip') treats them as null)"
            ),
        ))
    }
}

/// A numeric column (any int, float or bool type) as f64, ignoring validity; `None` for other
/// types. Shared by events and transforms so both read numbers the same way.
pub fn float_values(a: &dyn Array, name: &str) -> Result<Option<Vec<f64>>> {
    Ok(match a.data_type() {
        DataType::Float64 => Some(a.as_primitive::<Float64Type>().values().to_vec()),
        DataType::Float32 => Some(
            a.as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|&x| x as f64)
                .collect(),
        ),
        DataType::Float16 => Some(
            a.as_primitive::<Float16Type>()
                .values()
                .iter()
                .map(|x| x.to_f64())
                .collect(),
        ),
        DataType::UInt64 => Some(
            a.as_primitive::<UInt64Type>()
                .values()
                .iter()
                .map(|&x| x as f64)
                .collect(),
        ),
        DataType::Boolean => {
            let b = a.as_boolean();
            Some(
                (0..a.len())
                    .map(|i| if b.value(i) { 1.0 } else { 0.0 })
                    .collect(),
            )
        }
        _ => int_values(a, name)?.map(|v| v.into_iter().map(|x| x as f64).collect()),
    })
}

fn read_values(
    a: &ArrayRef,
    name: &str,
    kind: ColKind,
    skip: bool,
    offset: usize,
    texts: Option<&mut Texts>,
) -> Result<Vec<u64>> {
    let n = a.len();
    let mut out = Vec::with_capacity(n);
    let nulls = a.logical_nulls();
    let is_null = |i: usize| nulls.as_ref().is_some_and(|nb| nb.is_null(i));
    if kind == ColKind::Text {
        return read_text_values(a, name, &is_null, texts);
    }
    let floats = float_values(a.as_ref(), name)?;
    if let Some(xs) = floats {
        for (i, x) in xs.into_iter().enumerate() {
            if is_null(i) {
                out.push(NULL);
                continue;
            }
            match check_number(x, skip, name, offset + i)? {
                Some(x) => out.push(x.to_bits()),
                None => out.push(NULL),
            }
        }
        return Ok(out);
    }
    if let Some(s) = str_arr(a.as_ref())? {
        if kind == ColKind::Numeric {
            return Err(Error::schema(
                name,
                format!("is a string column ({}); sum/mean/min/max/var/std/first/last/quantile/decayed_sum need numbers (for min/max/first/last of strings, declare it: FeatureSet(..., string_columns=[{name:?}]))", a.data_type()),
            ));
        }
        for i in 0..n {
            out.push(if is_null(i) {
                NULL
            } else {
                string_identity(s.get(i))
            });
        }
        return Ok(out);
    }
    if matches!(a.data_type(), DataType::Null) {
        return Ok(vec![NULL; n]);
    }
    Err(Error::schema(
        name,
        format!("unsupported value type {}", a.data_type()),
    ))
}

/// A column declared in `string_columns`: identity words, the strings noted in `texts`.
fn read_text_values(
    a: &ArrayRef,
    name: &str,
    is_null: &dyn Fn(usize) -> bool,
    texts: Option<&mut Texts>,
) -> Result<Vec<u64>> {
    let n = a.len();
    if matches!(a.data_type(), DataType::Null) {
        return Ok(vec![NULL; n]);
    }
    let Some(s) = str_arr(a.as_ref())? else {
        return Err(Error::schema(
            name,
            format!(
                "is declared in string_columns but holds {}: give strings (utf8, large_utf8, string_view or dictionary-encoded strings)",
                a.data_type()
            ),
        ));
    };
    let mut scratch = Texts::default();
    let texts = texts.unwrap_or(&mut scratch);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if is_null(i) {
            out.push(NULL);
            continue;
        }
        let v = s.get(i);
        let w = string_identity(v);
        texts.note(w, v, name)?;
        out.push(w);
    }
    Ok(out)
}

/// Where one conversion job of `read_events` writes: a batch's keys (returned), or its rows
/// of the time column or of one value column (a disjoint slice of the output), or nothing
/// (an empty batch: its schema is checked).
enum Dest<'s> {
    Check,
    Keys,
    Times(&'s mut [i64]),
    Values(usize, &'s mut [u64]),
}

/// Below this many rows, conversion stays on the calling thread.
const PARALLEL_READ_ROWS: usize = 1 << 16;

/// Validate and convert event batches. Nothing is applied anywhere until all of them pass.
///
/// Large inputs convert their columns in parallel (each batch's keys, times and value columns
/// are independent jobs writing disjoint parts of the output columns); the first error in row
/// order is the one reported, as if sequential.
pub fn read_events<'a>(plan: &Plan, batches: &'a [RecordBatch]) -> Result<Events<'a>> {
    let spec = &plan.spec;
    let nc = plan.columns.len();
    let mut offsets = Vec::with_capacity(batches.len());
    let mut total = 0;
    for batch in batches {
        offsets.push(total);
        total += batch.num_rows();
    }
    let mut ts = vec![0i64; total];
    let mut values: Vec<Vec<u64>> = (0..nc).map(|_| vec![0u64; total]).collect();
    // jobs in row order: per batch its keys, times, then each value column
    let mut jobs: Vec<(usize, Dest<'_>)> = Vec::with_capacity(batches.len() * (2 + nc));
    {
        let mut ts_rest: &mut [i64] = &mut ts;
        let mut val_rest: Vec<&mut [u64]> = values.iter_mut().map(|v| v.as_mut_slice()).collect();
        for (b, batch) in batches.iter().enumerate() {
            let n = batch.num_rows();
            if n == 0 {
                jobs.push((b, Dest::Check));
                continue;
            }
            jobs.push((b, Dest::Keys));
            let (head, tail) = std::mem::take(&mut ts_rest).split_at_mut(n);
            ts_rest = tail;
            jobs.push((b, Dest::Times(head)));
            for (c, rest) in val_rest.iter_mut().enumerate() {
                let (head, tail) = std::mem::take(rest).split_at_mut(n);
                *rest = tail;
                jobs.push((b, Dest::Values(c, head)));
            }
        }
    }
    let parallel = total >= PARALLEL_READ_ROWS && jobs.len() > 1;
    let run = |(b, dest): (usize, Dest<'_>)| -> Result<(Option<KeyArr<'a>>, Texts)> {
        let batch = &batches[b];
        let offset = offsets[b];
        match dest {
            Dest::Check => {
                for c in spec.entity.columns() {
                    column(batch, c, "events")?;
                }
                column(batch, &spec.timestamp, "events")?;
                for c in &plan.columns {
                    column(batch, &c.name, "events")?;
                }
                Ok((None, Texts::default()))
            }
            Dest::Keys => Ok((
                Some(read_entity(batch, spec.entity.columns(), "events", offset)?),
                Texts::default(),
            )),
            Dest::Times(out) => {
                let v = read_times(
                    column(batch, &spec.timestamp, "events")?,
                    &spec.timestamp,
                    spec.timestamp_unit.as_deref(),
                    offset,
                )?;
                out.copy_from_slice(&v);
                Ok((None, Texts::default()))
            }
            Dest::Values(c, out) => {
                let col = &plan.columns[c];
                let mut texts = Texts::default();
                let v = read_values(
                    column(batch, &col.name, "events")?,
                    &col.name,
                    col.kind,
                    spec.skip_nonfinite,
                    offset,
                    Some(&mut texts),
                )?;
                out.copy_from_slice(&v);
                Ok((None, texts))
            }
        }
    };
    let results: Vec<Result<(Option<KeyArr<'a>>, Texts)>> = if parallel {
        use rayon::prelude::*;
        crate::pool::install(|| jobs.into_par_iter().map(run).collect())
    } else {
        jobs.into_iter().map(run).collect()
    };
    // Batch by batch, exactly as a sequential pass: the first failing column in row order, then
    // the key type check of that batch.
    let mut keys_of = Vec::with_capacity(batches.len());
    let mut starts = Vec::with_capacity(batches.len());
    let mut results = results.into_iter();
    let mut texts = Texts::default();
    for (b, batch) in batches.iter().enumerate() {
        let jobs = if batch.num_rows() == 0 { 1 } else { 2 + nc };
        let mut keys = None;
        for r in results.by_ref().take(jobs) {
            let (k, t) = r?;
            if let Some(k) = k {
                keys = Some(k);
            }
            if !t.is_empty() {
                texts.extend(t, "string_columns")?;
            }
        }
        let Some(keys) = keys else {
            continue;
        };
        if let Some(first) = keys_of.first().map(|k: &KeyArr<'a>| k.kind()) {
            if first != keys.kind() {
                return Err(Error::schema(
                    &spec.entity,
                    format!(
                        "key type changes between batches ({} then {})",
                        spec.entity.describe_kind(first),
                        spec.entity.describe_kind(keys.kind())
                    ),
                ));
            }
        }
        starts.push(offsets[b]);
        keys_of.push(keys);
    }
    let mut ids = Vec::new();
    if let Some(col) = &spec.dedupe_on {
        ids.reserve(total);
        for (b, batch) in batches.iter().enumerate() {
            if batch.num_rows() > 0 {
                read_ids(column(batch, col, "events")?, col, offsets[b], &mut ids)?;
            }
        }
    }
    Ok(Events {
        keys: keys_of,
        starts,
        ts,
        values,
        ids,
        texts,
    })
}

/// The arrival column of event batches: per event (no nulls) the number of the ingest call it
/// arrived in, or its arrival time (ns); equal values arrived together.
pub fn read_arrival(batches: &[RecordBatch], name: &str) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    let mut offset = 0;
    for batch in batches {
        let a = column(batch, name, "events")?;
        if let Some(i) = first_null(a.as_ref()) {
            return Err(Error::schema(
                name,
                format!("null arrival at row {}", offset + i),
            ));
        }
        match int_values(a.as_ref(), name)? {
            Some(v) => out.extend(v),
            None if matches!(a.data_type(), DataType::Timestamp(..)) => {
                out.extend(read_times(a, name, None, offset)?)
            }
            None => {
                return Err(Error::schema(
                    name,
                    format!(
                        "the arrival column must hold integers (batch numbers) or timestamps (arrival times), got {}",
                        a.data_type()
                    ),
                ))
            }
        }
        offset += batch.num_rows();
    }
    Ok(out)
}

/// Append the event ids of an id column (integers or strings, no nulls) to `out`.
pub fn read_ids(a: &ArrayRef, name: &str, offset: usize, out: &mut Vec<EventId>) -> Result<()> {
    if let Some(i) = first_null(a.as_ref()) {
        return Err(Error::schema(
            name,
            format!(
                "null event id at row {} (dedupe_on needs an id on every event)",
                offset + i
            ),
        ));
    }
    if let Some(v) = int_values(a.as_ref(), name)? {
        out.extend(v.into_iter().map(EventId::Int));
        return Ok(());
    }
    if let Some(s) = str_arr(a.as_ref())? {
        out.extend((0..a.len()).map(|i| EventId::of_str(s.get(i))));
        return Ok(());
    }
    Err(Error::schema(
        name,
        format!(
            "event ids (dedupe_on) must be integers or strings, got {}",
            a.data_type()
        ),
    ))
}

/// A spine: keys and query times, one chunk per batch. `key`: the key column(s), in the
/// entity's part order.
pub fn read_spine<'a>(
    plan: &Plan,
    batches: &'a [RecordBatch],
    key: &[String],
    time: &str,
) -> Result<Vec<(KeyArr<'a>, Vec<i64>)>> {
    let parts = plan.spec.entity.parts();
    if key.len() != parts {
        return Err(Error::schema(
            key.join(", "),
            format!(
                "the spine key names {} column(s) but the entity {} has {parts}",
                key.len(),
                plan.spec.entity
            ),
        ));
    }
    let mut out = Vec::with_capacity(batches.len());
    let mut offset = 0;
    for batch in batches {
        let k = read_entity(batch, key, "spine", offset)?;
        let t = read_times(
            column(batch, time, "spine")?,
            time,
            plan.spec.timestamp_unit.as_deref(),
            offset,
        )?;
        offset += batch.num_rows();
        out.push((k, t));
    }
    Ok(out)
}
