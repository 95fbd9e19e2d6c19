//! Python values -> engine values: keys, instants, and event rows given as dicts.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyDate, PyDateAccess, PyDateTime, PyDelta, PyDeltaAccess, PyDict, PyFloat, PyInt,
    PyList, PyString, PyTimeAccess, PyTuple, PyTzInfoAccess,
};
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::input::{check_number, string_identity, EventId, Events, KeyArr, KeyRef};
use crate::plan::{ColKind, Plan};
use crate::spec::Entity;
use crate::state::NULL;
use crate::text::Texts;
use crate::time::{unit_factor, NS_PER_S, NS_PER_US};

/// An owned key extracted from Python.
pub enum PyKey {
    Int(i64),
    Str(String),
}

impl PyKey {
    pub fn as_ref(&self) -> KeyRef<'_> {
        match self {
            PyKey::Int(i) => KeyRef::Int(*i),
            PyKey::Str(s) => KeyRef::Str(s),
        }
    }
}

/// A key borrowed from a Python int or str.
pub fn key_ref<'a>(obj: &'a Bound<'_, PyAny>, entity: &str) -> Result<KeyRef<'a>> {
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(KeyRef::Int(i));
        }
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(KeyRef::Str(
            s.to_str()
                .map_err(|e| Error::schema(entity, e.to_string()))?,
        ));
    }
    if obj.is_instance_of::<PyBool>() || obj.is_none() {
        return Err(Error::schema(
            entity,
            format!("keys must be int or str, got {}", type_name(obj)),
        ));
    }
    match obj.extract::<i64>() {
        Ok(i) => Ok(KeyRef::Int(i)),
        Err(_) => Err(Error::schema(
            entity,
            format!("keys must be int or str, got {}", type_name(obj)),
        )),
    }
}

/// An owned key from a Python int or str.
pub fn key(obj: &Bound<'_, PyAny>, entity: &str) -> Result<PyKey> {
    Ok(match key_ref(obj, entity)? {
        KeyRef::Int(i) => PyKey::Int(i),
        KeyRef::Str(s) => PyKey::Str(s.to_string()),
    })
}

/// The encoded composite key ([`crate::key`]) of a Python tuple (or list) with one int or str
/// per part of `entity`, and its kind.
fn composite_key(obj: &Bound<'_, PyAny>, entity: &Entity) -> Result<(String, u64)> {
    let cols = entity.columns();
    let items: Vec<Bound<'_, PyAny>> = if let Ok(t) = obj.cast::<PyTuple>() {
        t.iter().collect()
    } else if let Ok(l) = obj.cast::<PyList>() {
        l.iter().collect()
    } else {
        return Err(Error::schema(
            entity,
            format!(
                "a composite key is a tuple with one int or str per column {}, got {}",
                entity,
                type_name(obj)
            ),
        ));
    };
    if items.len() != cols.len() {
        return Err(Error::schema(
            entity,
            format!(
                "a composite key is a tuple of {} parts {}, got {} part(s)",
                cols.len(),
                entity,
                items.len()
            ),
        ));
    }
    let mut out = String::new();
    let mut ints = SmallVec::<[bool; 4]>::new();
    for (item, col) in items.iter().zip(cols) {
        let k = key_ref(item, col)?;
        ints.push(k.is_int());
        crate::key::push_part(&mut out, k);
    }
    Ok((out, crate::key::kind_of_parts(ints)))
}

/// The key of `entity` from Python: an int or str for a single key; for a composite key, a
/// tuple (or list) with one int or str per part, encoded ([`crate::key`]).
pub fn entity_key(obj: &Bound<'_, PyAny>, entity: &Entity) -> Result<PyKey> {
    match entity.single() {
        Some(name) => key(obj, name),
        None => Ok(PyKey::Str(composite_key(obj, entity)?.0)),
    }
}

/// [`entity_key`] handed to `f` without copying a single key.
pub fn with_entity_key<R>(
    obj: &Bound<'_, PyAny>,
    entity: &Entity,
    f: impl FnOnce(KeyRef<'_>) -> R,
) -> Result<R> {
    match entity.single() {
        Some(name) => Ok(f(key_ref(obj, name)?)),
        None => {
            let (k, _) = composite_key(obj, entity)?;
            Ok(f(KeyRef::Str(&k)))
        }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What kind of clock an instant was given in (docs/api.md, "Times and time zones").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Zone {
    /// An integer in the feature set's timestamp unit: an instant since the epoch, no zone.
    Epoch,
    /// A wall-clock time without a time zone (naive datetime, numpy datetime64, date, Arrow
    /// timestamp without tz): read as UTC, and never mixed with aware times.
    Naive,
    /// A time with a time zone (aware datetime, tz-aware Arrow timestamp): an exact instant.
    Aware,
}

impl Zone {
    /// The zone of an Arrow time column (None: not a time column; the reader reports it).
    pub fn of_arrow(dt: &arrow_schema::DataType) -> Option<Zone> {
        use arrow_schema::DataType as D;
        match dt {
            D::Timestamp(_, Some(_)) => Some(Zone::Aware),
            D::Timestamp(_, None) | D::Date32 | D::Date64 => Some(Zone::Naive),
            d if d.is_integer() => Some(Zone::Epoch),
            _ => None,
        }
    }

    /// The refusal when `self` meets `other` (two different clocks, neither an epoch int).
    pub fn clash(self, other: Zone) -> bool {
        matches!(
            (self, other),
            (Zone::Naive, Zone::Aware) | (Zone::Aware, Zone::Naive)
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            Zone::Epoch => "integer (epoch) times",
            Zone::Naive => "naive times (no time zone)",
            Zone::Aware => "tz-aware times",
        }
    }
}

/// The message refusing naive times mixed with aware ones: `what` (naive or aware) meets
/// `other` (the engine's or the other input's clock, described by `against`).
pub fn zone_clash_message(what: Zone, against: &str) -> String {
    let (fix, this) = match what {
        Zone::Naive => (
            "attach the time zone they were recorded in (datetime.replace(tzinfo=...) or \
             pandas .dt.tz_localize(...)), or pass UTC-aware times",
            "got naive times (no time zone)",
        ),
        _ => (
            "pass tz-aware times throughout, or naive times throughout (a whole pipeline of \
             naive times is read as UTC)",
            "got tz-aware times",
        ),
    };
    format!(
        "{this} but {against}: mixing naive and tz-aware times would silently read wall-clock \
         times as UTC; {fix}"
    )
}

/// An instant from Python: datetime / date / pandas.Timestamp / numpy.datetime64 / ISO string,
/// or an int in the feature set's timestamp unit, as ns since the epoch (UTC), and the kind of
/// clock it was given in.
pub fn instant_zoned(
    obj: &Bound<'_, PyAny>,
    unit: Option<&str>,
    field: &str,
) -> Result<(i64, Zone)> {
    // The common case first: an exact int is neither a datetime nor a date nor a bool.
    if obj.is_exact_instance_of::<PyInt>() {
        return Ok((int_instant(obj, unit, field)?, Zone::Epoch));
    }
    let range = || {
        Error::schema(
            field,
            "instant outside the representable range (years 1677..2262)",
        )
    };
    let py_err = |e: PyErr| Error::schema(field, e.to_string());
    if let Ok(dt) = obj.cast::<PyDateTime>() {
        // pandas.Timestamp carries exact nanoseconds in `.value` (UTC for tz-aware ones); a
        // plain datetime has neither attribute (and no instance dict to hold one).
        let py = obj.py();
        let zone = if dt.get_tzinfo().is_some() {
            Zone::Aware
        } else {
            Zone::Naive
        };
        let plain = obj.is_exact_instance_of::<PyDateTime>();
        if let Some(Ok(v)) = (!plain).then(|| obj.getattr(intern!(py, "value"))) {
            if let Ok(ns) = v.extract::<i64>() {
                if obj.hasattr(intern!(py, "nanosecond")).unwrap_or(false) {
                    // pandas.NaT is a datetime too, with value i64::MIN
                    if ns == i64::MIN {
                        return Err(Error::schema(field, "NaT (not a time)"));
                    }
                    return Ok((ns, zone));
                }
            }
        }
        let days = days_from_civil(
            dt.get_year() as i64,
            dt.get_month() as i64,
            dt.get_day() as i64,
        );
        let secs = days * 86_400
            + dt.get_hour() as i64 * 3600
            + dt.get_minute() as i64 * 60
            + dt.get_second() as i64;
        let mut ns = secs
            .checked_mul(NS_PER_S)
            .and_then(|v| v.checked_add(dt.get_microsecond() as i64 * NS_PER_US))
            .ok_or_else(range)?;
        if dt.get_tzinfo().is_some() {
            let off = obj.call_method0(intern!(py, "utcoffset")).map_err(py_err)?;
            if !off.is_none() {
                // Python checks that utcoffset() is a timedelta within a day: its fields give
                // the exact microseconds (what total_seconds() * 1e6, rounded, gives too)
                let us = match off.cast::<PyDelta>() {
                    Ok(d) => {
                        (d.get_days() as i64 * 86_400 + d.get_seconds() as i64) * 1_000_000
                            + d.get_microseconds() as i64
                    }
                    Err(_) => {
                        let total: f64 = off
                            .call_method0("total_seconds")
                            .map_err(py_err)?
                            .extract()
                            .map_err(py_err)?;
                        (total * 1e6).round() as i64
                    }
                };
                ns = ns.checked_sub(us * NS_PER_US).ok_or_else(range)?;
            }
        }
        return Ok((ns, zone));
    }
    if let Ok(d) = obj.cast::<PyDate>() {
        let days = days_from_civil(
            d.get_year() as i64,
            d.get_month() as i64,
            d.get_day() as i64,
        );
        return Ok((
            days.checked_mul(86_400 * NS_PER_S).ok_or_else(range)?,
            Zone::Naive,
        ));
    }
    if obj.is_instance_of::<PyInt>() && !obj.is_instance_of::<PyBool>() {
        return Ok((int_instant(obj, unit, field)?, Zone::Epoch));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        let py = obj.py();
        let parsed = py
            .import("datetime")
            .and_then(|m| m.getattr("datetime"))
            .and_then(|c| c.call_method1("fromisoformat", (s,)))
            .map_err(|e| Error::schema(field, format!("cannot parse {s}: {e}")))?;
        let (t, z) = instant_zoned(&parsed, unit, field)?;
        // datetime keeps microseconds: the digits after the sixth are added back here
        let extra = s.to_str().map(crate::time::sub_microsecond_ns).unwrap_or(0);
        return Ok((t.checked_add(extra).ok_or_else(range)?, z));
    }
    let tname = type_name(obj);
    if tname == "datetime64" {
        let as_ns = obj
            .call_method1("astype", ("datetime64[ns]",))
            .map_err(py_err)?;
        let ns = as_ns
            .call_method1("astype", ("int64",))
            .and_then(|v| v.extract::<i64>())
            .map_err(py_err)?;
        if ns == i64::MIN {
            return Err(Error::schema(field, "NaT (not a time)"));
        }
        // numpy wraps silently when a coarser unit ('s', 'us', 'D', ...) overflows int64 ns
        // (year 1600 in 'us' becomes 2184): converting back must give the same instant.
        // Units finer than ns span less than int64 ns, so cannot overflow (ns truncates them).
        let dtype = obj.getattr("dtype").map_err(py_err)?;
        let unit: String = obj
            .py()
            .import("numpy")
            .and_then(|np| np.call_method1("datetime_data", (&dtype,)))
            .and_then(|d| d.get_item(0))
            .and_then(|u| u.extract())
            .map_err(py_err)?;
        if !matches!(unit.as_str(), "ns" | "ps" | "fs" | "as") {
            let same: bool = as_ns
                .call_method1("astype", (&dtype,))
                .and_then(|back| back.eq(obj))
                .map_err(py_err)?;
            if !same {
                return Err(range());
            }
        }
        return Ok((ns, Zone::Naive));
    }
    if obj.is_none() {
        return Err(Error::schema(field, "null timestamp"));
    }
    Err(Error::schema(
        field,
        format!("expected a datetime, date, ISO string or integer, got {tname}"),
    ))
}

/// An int instant in the feature set's timestamp unit -> ns.
fn int_instant(obj: &Bound<'_, PyAny>, unit: Option<&str>, field: &str) -> Result<i64> {
    let range = || {
        Error::schema(
            field,
            "instant outside the representable range (years 1677..2262)",
        )
    };
    let v: i64 = obj.extract().map_err(|_| range())?;
    match unit {
        Some(u) => v
            .checked_mul(unit_factor(u, "timestamp_unit")?)
            .ok_or_else(range),
        None => Err(Error::schema(
            field,
            "an integer instant needs FeatureSet(timestamp_unit=...); pass a datetime otherwise",
        )),
    }
}

/// One value cell from Python: a word (a number's bits, a string's identity or NULL), or
/// `Err(())` for a float NaN in a column that also takes strings when `defer_nan` is set (the
/// caller decides: pandas' missing marker, null, in a column that holds strings; a NaN value,
/// under `on_nonfinite`, in a column of numbers).
fn value(
    obj: &Bound<'_, PyAny>,
    kind: ColKind,
    skip: bool,
    name: &str,
    row: usize,
    defer_nan: bool,
) -> Result<std::result::Result<u64, ()>> {
    if obj.is_none() {
        return Ok(Ok(NULL));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        if kind == ColKind::Numeric {
            return Err(Error::schema(
                name,
                format!("row {row}: got a string, this column needs numbers"),
            ));
        }
        return Ok(Ok(string_identity(
            s.to_str().map_err(|e| Error::schema(name, e.to_string()))?,
        )));
    }
    if kind == ColKind::Text {
        // a column of strings: None, pandas' missing markers and a float NaN are null
        let nan = obj.cast::<PyFloat>().is_ok_and(|f| f.value().is_nan());
        if nan || is_pandas_missing(obj) {
            return Ok(Ok(NULL));
        }
        return Err(Error::schema(
            name,
            format!(
                "row {row}: got {}, this column is declared in string_columns (strings or None)",
                type_name(obj)
            ),
        ));
    }
    let x: f64 = if let Ok(f) = obj.cast::<PyFloat>() {
        f.value()
    } else if obj.is_instance_of::<PyBool>() {
        if obj.is_truthy().unwrap_or(false) {
            1.0
        } else {
            0.0
        }
    } else if let Ok(i) = obj.extract::<i64>() {
        i as f64
    } else if let Ok(f) = obj.extract::<f64>() {
        f
    } else if is_pandas_missing(obj) {
        return Ok(Ok(NULL));
    } else {
        return Err(Error::schema(
            name,
            format!(
                "row {row}: expected a number, string or None, got {}",
                type_name(obj)
            ),
        ));
    };
    if x.is_nan() && defer_nan && kind != ColKind::Numeric {
        return Ok(Err(()));
    }
    Ok(Ok(match check_number(x, skip, name, row)? {
        Some(x) => x.to_bits(),
        None => NULL,
    }))
}

/// pandas' missing-value scalars (`pd.NA`, `pd.NaT`): null in every input form.
fn is_pandas_missing(obj: &Bound<'_, PyAny>) -> bool {
    let t = obj.get_type();
    let module = t.module().map(|m| m.to_string()).unwrap_or_default();
    module.starts_with("pandas")
        && matches!(
            t.name().map(|n| n.to_string()).as_deref(),
            Ok("NAType") | Ok("NaTType")
        )
}

/// The field names a row dict is read by, as interned Python strings (made once per engine:
/// a lookup by an interned string hashes nothing and usually compares by pointer).
pub struct RowNames {
    /// The key column(s).
    pub entity: Vec<Py<PyString>>,
    timestamp: Py<PyString>,
    columns: Vec<Py<PyString>>,
    /// The event-id column (`dedupe_on`).
    id: Option<Py<PyString>>,
}

impl RowNames {
    pub fn new(py: Python<'_>, plan: &Plan) -> RowNames {
        let name = |s: &str| PyString::intern(py, s).unbind();
        RowNames {
            entity: plan.spec.entity.columns().iter().map(|c| name(c)).collect(),
            timestamp: name(&plan.spec.timestamp),
            columns: plan.columns.iter().map(|c| name(&c.name)).collect(),
            id: plan.spec.dedupe_on.as_deref().map(name),
        }
    }
}

/// The cell `name` of row `i`, or the error naming the missing field.
fn cell<'py>(
    d: &Bound<'py, PyDict>,
    key: &Py<PyString>,
    name: &str,
    i: usize,
) -> Result<Bound<'py, PyAny>> {
    d.get_item(key.bind(d.py()))
        .map_err(|e| Error::schema(name, e.to_string()))?
        .ok_or_else(|| {
            Error::schema(
                name,
                format!("missing from row {i} (use None for a null value)"),
            )
        })
}

/// The dict of row `i`.
fn row_dict<'a, 'py>(
    plan: &Plan,
    row: &'a Bound<'py, PyAny>,
    i: usize,
) -> Result<&'a Bound<'py, PyDict>> {
    row.cast::<PyDict>().map_err(|_| {
        Error::schema(
            &plan.spec.entity,
            format!("row {i}: expected a dict, got {}", type_name(row)),
        )
    })
}

/// Time and values of row `i` (the key is read first by the caller, so the checks run in the
/// same order for one row and for many): the time is returned, one word per plan column is
/// written to `vals`.
/// `cols`: per plan column, whether a string was seen and the first row of a deferred NaN
/// (None: NaN is checked at once, as in a column of numbers).
fn row_rest(
    plan: &Plan,
    names: &RowNames,
    d: &Bound<'_, PyDict>,
    i: usize,
    vals: &mut [u64],
    mut cols: Option<&mut [ColSeen]>,
    texts: &mut Texts,
) -> Result<(i64, Zone)> {
    let spec = &plan.spec;
    let ts = instant_zoned(
        &cell(d, &names.timestamp, &spec.timestamp, i)?,
        spec.timestamp_unit.as_deref(),
        &spec.timestamp,
    )?;
    for (j, ((col, name), v)) in plan
        .columns
        .iter()
        .zip(&names.columns)
        .zip(vals.iter_mut())
        .enumerate()
    {
        let obj = cell(d, name, &col.name, i)?;
        let seen = cols.as_deref_mut().and_then(|c| c.get_mut(j));
        let defer = seen.is_some();
        *v = match value(&obj, col.kind, spec.skip_nonfinite, &col.name, i, defer)? {
            Ok(w) => {
                if let Some(seen) = seen {
                    seen.string |= obj.is_instance_of::<PyString>();
                }
                if col.kind == ColKind::Text {
                    if let Ok(s) = obj.cast::<PyString>() {
                        let s = s
                            .to_str()
                            .map_err(|e| Error::schema(&col.name, e.to_string()))?;
                        texts.note(w, s, &col.name)?;
                    }
                }
                w
            }
            Err(()) => {
                if let Some(seen) = seen {
                    seen.first_nan.get_or_insert(i);
                }
                NULL
            }
        };
    }
    Ok(ts)
}

/// The event id of row `i` (`dedupe_on`): an int or a str, never null.
fn row_id(
    plan: &Plan,
    names: &RowNames,
    d: &Bound<'_, PyDict>,
    i: usize,
) -> Result<Option<EventId>> {
    let (Some(key), Some(col)) = (&names.id, &plan.spec.dedupe_on) else {
        return Ok(None);
    };
    let obj = cell(d, key, col, i)?;
    if obj.is_instance_of::<PyBool>() || obj.is_none() {
        return Err(Error::schema(
            col,
            format!(
                "row {i}: event ids (dedupe_on) must be int or str, got {}",
                type_name(&obj)
            ),
        ));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_str().map_err(|e| Error::schema(col, e.to_string()))?;
        return Ok(Some(EventId::of_str(s)));
    }
    match obj.extract::<i64>() {
        Ok(v) if obj.is_instance_of::<PyInt>() || !obj.is_instance_of::<PyFloat>() => {
            Ok(Some(EventId::Int(v)))
        }
        _ => Err(Error::schema(
            col,
            format!(
                "row {i}: event ids (dedupe_on) must be int or str, got {}",
                type_name(&obj)
            ),
        )),
    }
}

/// What [`rows`] saw in one column.
#[derive(Clone, Copy, Default)]
struct ColSeen {
    string: bool,
    first_nan: Option<usize>,
}

/// The key of row `i` of a composite entity: encoded, with its kind.
fn row_composite_key(
    plan: &Plan,
    names: &RowNames,
    d: &Bound<'_, PyDict>,
    i: usize,
) -> Result<(String, u64)> {
    let mut out = String::new();
    let mut ints = SmallVec::<[bool; 4]>::new();
    for (col, name) in plan.spec.entity.columns().iter().zip(&names.entity) {
        let obj = cell(d, name, col, i)?;
        let k = key_ref(&obj, col)?;
        ints.push(k.is_int());
        crate::key::push_part(&mut out, k);
    }
    Ok((out, crate::key::kind_of_parts(ints)))
}

/// One event row given as a dict, checked, handed to `f` as (key, time, one word per plan
/// column) without copying the key. Same checks and messages as [`rows`] on a one-row list.
/// `key_obj` is the row's key cell if the caller already looked it up (None: look it up).
pub fn with_row<R>(
    plan: &Plan,
    names: &RowNames,
    d: &Bound<'_, PyDict>,
    key_obj: Option<Bound<'_, PyAny>>,
    f: impl FnOnce(KeyRef<'_>, i64, Zone, &[u64], Option<EventId>, &Texts) -> R,
) -> Result<R> {
    let spec = &plan.spec;
    let kobj;
    let composite;
    let k = match (spec.entity.single(), names.entity.as_slice()) {
        (Some(single), [entity]) => {
            kobj = match key_obj {
                Some(k) => k,
                None => cell(d, entity, single, 0)?,
            };
            key_ref(&kobj, single)?
        }
        _ => {
            composite = row_composite_key(plan, names, d, 0)?.0;
            KeyRef::Str(&composite)
        }
    };
    let mut vals: SmallVec<[u64; 16]> = SmallVec::from_elem(0, plan.columns.len());
    let mut texts = Texts::default();
    let (ts, zone) = row_rest(plan, names, d, 0, &mut vals, None, &mut texts)?;
    let id = row_id(plan, names, d, 0)?;
    Ok(f(k, ts, zone, &vals, id, &texts))
}

/// Event rows given as dicts -> engine events and the clock their times were given in. All
/// rows are checked before any is returned. A float NaN in a column that also holds strings is
/// pandas' missing marker (null); in a column of numbers it is a NaN value (`on_nonfinite`).
pub fn rows<'py>(
    plan: &Plan,
    names: &RowNames,
    rows: &[Bound<'py, PyAny>],
) -> Result<(Events<'static>, Zone)> {
    let spec = &plan.spec;
    let n = rows.len();
    let mut ints = Vec::new();
    let mut strs = Vec::new();
    let mut ts = Vec::with_capacity(n);
    let mut values: Vec<Vec<u64>> = vec![Vec::with_capacity(n); plan.columns.len()];
    let mut vals: SmallVec<[u64; 16]> = SmallVec::from_elem(0, plan.columns.len());
    let mut seen = vec![ColSeen::default(); plan.columns.len()];
    let mut zone: Option<Zone> = None;
    let mut ids = Vec::new();
    let single = match (spec.entity.single(), names.entity.as_slice()) {
        (Some(col), [name]) => Some((col, name)),
        _ => None,
    };
    let mut composite_kind: Option<u64> = None;
    let mut texts = Texts::default();
    for (i, row) in rows.iter().enumerate() {
        let d = row_dict(plan, row, i)?;
        match single {
            Some((col, name)) => match key(&cell(d, name, col, i)?, col)? {
                PyKey::Int(k) if strs.is_empty() => ints.push(k),
                PyKey::Str(k) if ints.is_empty() => strs.push(k),
                _ => {
                    return Err(Error::schema(
                        &spec.entity,
                        format!("row {i}: mixes integer and string keys"),
                    ))
                }
            },
            None => {
                let (k, kind) = row_composite_key(plan, names, d, i)?;
                if let Some(prev) = composite_kind.filter(|&prev| prev != kind) {
                    return Err(Error::schema(
                        &spec.entity,
                        format!(
                            "row {i}: key parts {} differ from earlier rows' {}",
                            spec.entity.describe_kind(kind),
                            spec.entity.describe_kind(prev)
                        ),
                    ));
                }
                composite_kind = Some(kind);
                strs.push(k);
            }
        }
        let (t, z) = row_rest(plan, names, d, i, &mut vals, Some(&mut seen), &mut texts)?;
        zone = check_row_zone(spec, zone, z, i)?;
        if let Some(id) = row_id(plan, names, d, i)? {
            ids.push(id);
        }
        ts.push(t);
        for (col, v) in values.iter_mut().zip(&vals) {
            col.push(*v);
        }
    }
    for (col, s) in plan.columns.iter().zip(&seen) {
        if let (Some(row), false) = (s.first_nan, s.string) {
            // no string in the column: a NaN value, as in a float column
            check_number(f64::NAN, spec.skip_nonfinite, &col.name, row)?;
        }
    }
    let mut events = Events::empty(plan.columns.len());
    if n > 0 {
        let keys = match composite_kind {
            Some(kind) => KeyArr::Composite(strs, kind),
            None if ints.is_empty() => KeyArr::Owned(strs),
            None => KeyArr::Int(ints),
        };
        let _ = events.push(keys, ts, values);
        events.ids = ids;
        events.texts = texts;
    }
    Ok((events, zone.unwrap_or(Zone::Epoch)))
}

/// The clock of the rows so far after row `i` (on clock `z`): naive and aware never mix.
fn check_row_zone(
    spec: &crate::spec::Spec,
    zone: Option<Zone>,
    z: Zone,
    i: usize,
) -> Result<Option<Zone>> {
    match zone {
        Some(prev) if prev.clash(z) => Err(Error::schema(
            &spec.timestamp,
            format!(
                "row {i}: {}",
                zone_clash_message(z, &format!("earlier rows hold {}", prev.describe()))
            ),
        )),
        Some(Zone::Epoch) | None => Ok(Some(z)),
        Some(prev) => Ok(Some(prev)),
    }
}
