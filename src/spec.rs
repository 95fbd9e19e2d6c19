//! What a feature set is: the versioned JSON document and its validation.
//!
//! The document is the one artifact shared by a notebook and a service:
//! ```json
//! {"format": "rtml.FeatureSet", "version": 1, "entity": "driver_id", "timestamp": "ts",
//!  "timestamp_unit": null, "allowed_lateness": "5m", "ttl": null, "on_nonfinite": "error",
//!  "features": [{"agg": "sum", "column": "fare", "window": "1h", "name": "fare_sum_1h"}]}
//! ```

use serde_json::{json, Map, Value};

use crate::agg::{self, AggDef, ColumnUse, Param, ParamValue};
use crate::error::{Error, Result};
use crate::time::{format_duration, parse_duration, unit_factor};

pub const FORMAT: &str = "rtml.FeatureSet";
pub const VERSION: u64 = 1;

const DAY_NS: i64 = 86_400_000_000_000;

/// An aggregation with its parameters: its row of [`crate::agg::AGGS`] and its parameter value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agg {
    pub def: &'static AggDef,
    pub param: ParamValue,
}

impl Agg {
    /// Aggregation `name` without a parameter (`None` if unknown).
    pub fn named(name: &str) -> Option<Agg> {
        agg::lookup(name).map(|def| Agg {
            def,
            param: ParamValue::None,
        })
    }

    /// `quantile(q)`.
    pub fn quantile(q: f64) -> Agg {
        Agg {
            def: agg::lookup("quantile").unwrap_or(&agg::AGGS[0]),
            param: ParamValue::Quantile(q),
        }
    }

    /// `decayed_sum(half_life)`, ns.
    pub fn decayed_sum(half_life: i64) -> Agg {
        Agg {
            def: agg::lookup("decayed_sum").unwrap_or(&agg::AGGS[0]),
            param: ParamValue::HalfLife(half_life),
        }
    }

    pub fn name(&self) -> &'static str {
        self.def.name
    }

    /// Needs a numeric column (as opposed to any column, or none).
    pub fn is_numeric(&self) -> bool {
        self.def.column == ColumnUse::Numeric
    }

    /// Output is an integer count.
    pub fn is_integer(&self) -> bool {
        self.def.integer
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    pub name: String,
    pub agg: Agg,
    pub column: Option<String>,
    /// Window length in ns; `None` is a lifetime feature.
    pub window: Option<i64>,
    /// The window as the user spelled it ("24h" stays "24h"), used in names and documents.
    pub window_label: Option<String>,
    /// Tiled window: the lower edge snaps to multiples of `hop` (`floor(t/hop)*hop - W <= ts < t`),
    /// so the state is a fixed number of per-tile summaries.
    pub hop: Option<i64>,
    pub hop_label: Option<String>,
}

/// How a duration is shown: a simple `<number><unit>` as written, anything else canonical.
pub fn duration_label(text: &str, ns: i64) -> String {
    let t = text.trim();
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    let unit = &t[digits..];
    if digits > 0 && !t.starts_with('0') && ["w", "d", "h", "m", "s", "ms", "us"].contains(&unit) {
        t.to_string()
    } else {
        format_duration(ns)
    }
}

/// The entity key: one column (`"entity": "driver_id"`) or several (`"entity": ["driver_id",
/// "zone"]`, a composite key, encoded by [`crate::key`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    columns: Vec<String>,
    /// The column name, or `(a, b)` for a composite key: how errors name the key.
    label: String,
}

impl Entity {
    /// A key of one column, or of several (a list of one column is that column).
    pub fn new(columns: Vec<String>) -> Entity {
        let label = match columns.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(", ")),
        };
        Entity { columns, label }
    }

    /// The key columns, in key order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The one key column of a single key (`None`: a composite key).
    pub fn single(&self) -> Option<&str> {
        match self.columns.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    pub fn is_composite(&self) -> bool {
        self.columns.len() > 1
    }

    /// How many parts a key has (1: a single key).
    pub fn parts(&self) -> usize {
        self.columns.len()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn contains(&self, column: &str) -> bool {
        self.columns.iter().any(|c| c == column)
    }

    /// A key kind ([`crate::key`]) as people read it.
    pub fn describe_kind(&self, kind: u64) -> String {
        crate::key::describe_kind(kind, &self.columns)
    }

    fn to_value(&self) -> Value {
        match self.single() {
            Some(one) => json!(one),
            None => json!(self.columns),
        }
    }
}

impl From<&Entity> for String {
    fn from(e: &Entity) -> String {
        e.label.clone()
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

fn parse_entity(obj: &Map<String, Value>) -> Result<Entity> {
    let Some(Value::Array(items)) = obj.get("entity") else {
        return Ok(Entity::new(vec![req_str(obj, "entity", "entity")?]));
    };
    let mut columns: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) if !s.is_empty() => {
                if columns.contains(s) {
                    return Err(Error::spec(
                        format!("entity[{i}]"),
                        format!("column {s:?} is named twice"),
                    ));
                }
                columns.push(s.clone());
            }
            other => {
                return Err(Error::spec(
                    format!("entity[{i}]"),
                    format!("expected a column name (a non-empty string), got {other}"),
                ))
            }
        }
    }
    if columns.is_empty() {
        return Err(Error::spec(
            "entity",
            "is required (a column name, or a non-empty list of them)",
        ));
    }
    if columns.len() > crate::key::MAX_PARTS {
        return Err(Error::spec(
            "entity",
            format!(
                "a composite key has at most {} columns, got {}",
                crate::key::MAX_PARTS,
                columns.len()
            ),
        ));
    }
    Ok(Entity::new(columns))
}

#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub entity: Entity,
    pub timestamp: String,
    /// Unit of integer timestamps ("s", "ms", "us", "ns"), if declared.
    pub timestamp_unit: Option<String>,
    pub allowed_lateness: i64,
    pub ttl: Option<i64>,
    /// NaN / inf values are treated as null instead of being rejected.
    pub skip_nonfinite: bool,
    pub features: Vec<Feature>,
    /// The watermark guard: how far ahead of the watermark an event may be (see
    /// [`Spec::max_ahead_ns`]).
    pub max_ahead: MaxAhead,
    /// Column holding an event id: events whose id was already applied are dropped.
    pub dedupe_on: Option<String>,
    /// Value columns declared to hold strings: `min` / `max` / `first` / `last` of them are
    /// strings (`count` / `distinct_count` as of any column).
    pub string_columns: Vec<String>,
}

/// The watermark guard's bound as the document states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MaxAhead {
    /// Not stated: [`Spec::default_max_ahead`].
    #[default]
    Auto,
    /// `"max_ahead": null`: no guard.
    Off,
    /// A duration, ns.
    Bound(i64),
}

/// `string_columns`: a list of distinct column names (absent: none).
fn parse_string_columns(obj: &Map<String, Value>) -> Result<Vec<String>> {
    let list = match obj.get("string_columns") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(Error::spec(
                "string_columns",
                format!("expected a list of column names, got {other}"),
            ))
        }
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for v in list {
        match v {
            Value::String(s) if !s.is_empty() => {
                if out.contains(s) {
                    return Err(Error::spec(
                        "string_columns",
                        format!("{s:?} is listed twice"),
                    ));
                }
                out.push(s.clone());
            }
            other => {
                return Err(Error::spec(
                    "string_columns",
                    format!("expected a column name (a non-empty string), got {other}"),
                ))
            }
        }
    }
    Ok(out)
}

/// Default output name, e.g. `fare_sum_1h`, `count_1h`, `fare_p90_1h`, `fare_last`.
pub fn default_name(agg: &Agg, column: Option<&str>, window: Option<&str>) -> String {
    let base = match (agg.param, column) {
        (_, None) => agg.name().to_string(),
        (ParamValue::Quantile(q), Some(c)) => format!("{c}_p{}", percent_label(q)),
        (ParamValue::HalfLife(h), Some(c)) => {
            format!("{c}_{}_hl{}", agg.name(), format_duration(h))
        }
        (ParamValue::None, Some(c)) => format!("{c}_{}", agg.name()),
    };
    match window {
        Some(w) => format!("{base}_{w}"),
        None => base,
    }
}

/// 0.9 -> "90", 0.5 -> "50", 0.999 -> "99_9", 0.05 -> "5", 1.0 -> "100".
fn percent_label(q: f64) -> String {
    let text = format!("{q}");
    let (int, frac) = text.split_once('.').unwrap_or((text.as_str(), ""));
    let mut digits: String = frac.chars().collect();
    while digits.len() < 2 {
        digits.push('0');
    }
    let whole: u64 = format!("{int}{}", &digits[..2]).parse().unwrap_or(0);
    let rest = &digits[2..];
    if rest.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}_{rest}")
    }
}

fn get_str(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::spec(
            field,
            format!("expected a string, got {other}"),
        )),
    }
}

fn req_str(obj: &Map<String, Value>, key: &str, field: &str) -> Result<String> {
    match get_str(obj, key, field)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Error::spec(field, "is required (a non-empty string)")),
    }
}

fn get_duration(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<i64>> {
    match get_str(obj, key, field)? {
        None => Ok(None),
        Some(s) => parse_duration(&s, field).map(Some),
    }
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], field: &str) -> Result<()> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(Error::spec(
                format!("{field}.{k}"),
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

impl Spec {
    /// Parse and validate a feature-set document.
    pub fn from_json(text: &str) -> Result<Spec> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::spec("document", format!("not valid JSON: {e}")))?;
        Spec::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Spec> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::spec("document", "expected a JSON object"))?;
        match obj.get("format") {
            Some(Value::String(f)) if f == FORMAT => {}
            None => {}
            Some(other) => {
                return Err(Error::spec(
                    "format",
                    format!("expected {FORMAT:?}, got {other}"),
                ))
            }
        }
        let version = match obj.get("version") {
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                Error::spec("version", format!("expected a positive integer, got {n}"))
            })?,
            None => return Err(Error::spec("version", "is required")),
            Some(other) => {
                return Err(Error::spec(
                    "version",
                    format!("expected an integer, got {other}"),
                ))
            }
        };
        if version > VERSION {
            return Err(Error::spec(
                "version",
                format!(
                    "this document has version {version}, written by a newer rtml; this rtml reads versions up to {VERSION}: upgrade rtml"
                ),
            ));
        }
        if version == 0 {
            return Err(Error::spec("version", "version 0 does not exist"));
        }
        check_keys(
            obj,
            &[
                "format",
                "version",
                "entity",
                "timestamp",
                "timestamp_unit",
                "allowed_lateness",
                "ttl",
                "on_nonfinite",
                "features",
                "metadata",
                "max_ahead",
                "dedupe_on",
                "string_columns",
            ],
            "document",
        )?;
        let entity = parse_entity(obj)?;
        let timestamp = req_str(obj, "timestamp", "timestamp")?;
        let timestamp_unit = get_str(obj, "timestamp_unit", "timestamp_unit")?;
        if let Some(u) = &timestamp_unit {
            unit_factor(u, "timestamp_unit")?;
        }
        let allowed_lateness = match obj.get("allowed_lateness") {
            Some(Value::String(s)) if s == "0" || s == "0s" => 0,
            _ => get_duration(obj, "allowed_lateness", "allowed_lateness")?.unwrap_or(0),
        };
        let ttl = get_duration(obj, "ttl", "ttl")?;
        let skip_nonfinite = match get_str(obj, "on_nonfinite", "on_nonfinite")?.as_deref() {
            None | Some("error") => false,
            Some("skip") => true,
            Some(other) => {
                return Err(Error::spec(
                    "on_nonfinite",
                    format!("expected 'error' or 'skip', got {other:?}"),
                ))
            }
        };
        let feats = match obj.get("features") {
            Some(Value::Array(a)) => a,
            _ => return Err(Error::spec("features", "is required (a list of features)")),
        };
        if feats.is_empty() {
            return Err(Error::spec(
                "features",
                "a feature set needs at least one feature",
            ));
        }
        let mut features = Vec::with_capacity(feats.len());
        for (i, f) in feats.iter().enumerate() {
            features.push(parse_feature(f, &format!("features[{i}]"))?);
        }
        let max_ahead = match obj.get("max_ahead") {
            None => MaxAhead::Auto,
            Some(Value::Null) => MaxAhead::Off,
            Some(Value::String(s)) if s == "auto" => MaxAhead::Auto,
            Some(_) => {
                MaxAhead::Bound(get_duration(obj, "max_ahead", "max_ahead")?.unwrap_or(i64::MAX))
            }
        };
        let dedupe_on = get_str(obj, "dedupe_on", "dedupe_on")?;
        if dedupe_on.as_deref() == Some("") {
            return Err(Error::spec(
                "dedupe_on",
                "must be a column name (not empty)",
            ));
        }
        let string_columns = parse_string_columns(obj)?;
        let spec = Spec {
            entity,
            timestamp,
            timestamp_unit,
            allowed_lateness,
            ttl,
            skip_nonfinite,
            features,
            max_ahead,
            dedupe_on,
            string_columns,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The longest window (its hop added for a tiled one); 0 for lifetime features only.
    pub fn longest_window(&self) -> i64 {
        self.features
            .iter()
            .filter_map(|f| f.window.map(|w| w.saturating_add(f.hop.unwrap_or(0))))
            .max()
            .unwrap_or(0)
    }

    /// The default watermark guard: `max(2 * longest window, 1 day) + allowed_lateness`.
    /// Twice the longest window: an event that far ahead would move every window past all
    /// the history it holds; at least a day: a quiet night (or a stream whose windows are
    /// short) is not a jump; plus the lateness, since the stream is that disordered anyway.
    pub fn default_max_ahead(&self) -> i64 {
        self.longest_window()
            .saturating_mul(2)
            .max(DAY_NS)
            .saturating_add(self.allowed_lateness)
    }

    /// The guard's bound in ns (`None`: no guard).
    pub fn max_ahead_ns(&self) -> Option<i64> {
        match self.max_ahead {
            MaxAhead::Auto => Some(self.default_max_ahead()),
            MaxAhead::Off => None,
            MaxAhead::Bound(b) => Some(b),
        }
    }

    fn validate(&self) -> Result<()> {
        for c in &self.string_columns {
            if self.entity.contains(c) || c == &self.timestamp {
                return Err(Error::spec(
                    "string_columns",
                    format!("{c:?} is the entity or timestamp column, not a value column"),
                ));
            }
        }
        for (i, f) in self.features.iter().enumerate() {
            let Some(col) = f.column.as_deref() else {
                continue;
            };
            if !self.is_string_column(col) {
                continue;
            }
            let def = f.agg.def;
            let field = format!("features[{i}]");
            if def.text.is_none() && def.column == ColumnUse::Numeric {
                return Err(Error::spec(
                    field,
                    format!(
                        "{} of {col:?}: a string column (string_columns) takes count, distinct_count, min, max, first and last",
                        def.name
                    ),
                ));
            }
            if def.text.is_some() && f.hop.is_some() {
                return Err(Error::spec(
                    field,
                    format!(
                        "{} of the string column {col:?} needs a sliding window (window=... without hop) or no window (lifetime): tiled windows of strings are not supported yet",
                        def.name
                    ),
                ));
            }
        }
        if let Some(col) = &self.dedupe_on {
            if self.entity.contains(col) || col == &self.timestamp {
                return Err(Error::spec(
                    "dedupe_on",
                    format!("{col:?} is the entity or timestamp column, not an event id"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.features.iter().enumerate() {
            if !seen.insert(f.name.as_str()) {
                return Err(Error::spec(
                    format!("features[{i}].name"),
                    format!(
                        "duplicate feature name {:?}: give one of them name=...",
                        f.name
                    ),
                ));
            }
            if self.entity.contains(&f.name) || f.name == self.timestamp {
                return Err(Error::spec(
                    format!("features[{i}].name"),
                    format!(
                        "feature name {:?} collides with the entity or timestamp column",
                        f.name
                    ),
                ));
            }
        }
        if let Some(ttl) = self.ttl {
            let max_w = self
                .features
                .iter()
                .filter_map(|f| f.window.map(|w| w.saturating_add(f.hop.unwrap_or(0))))
                .max()
                .unwrap_or(0);
            if ttl < max_w.saturating_add(self.allowed_lateness) {
                return Err(Error::spec(
                    "ttl",
                    format!(
                        "ttl {} is shorter than the largest window plus allowed_lateness ({}): keys would be evicted while their windows still hold events",
                        format_duration(ttl),
                        format_duration(max_w.saturating_add(self.allowed_lateness))
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The canonical document (stable key order, canonical durations, every name explicit).
    pub fn to_value(&self) -> Value {
        let features: Vec<Value> = self
            .features
            .iter()
            .map(|f| {
                let mut m = Map::new();
                m.insert("agg".into(), json!(f.agg.name()));
                if let Some(c) = &f.column {
                    m.insert("column".into(), json!(c));
                }
                m.insert("window".into(), json!(f.window_label));
                if let Some(h) = &f.hop_label {
                    m.insert("hop".into(), json!(h));
                }
                match f.agg.param {
                    ParamValue::Quantile(q) => {
                        m.insert("q".into(), json!(q));
                    }
                    ParamValue::HalfLife(h) => {
                        m.insert("half_life".into(), json!(format_duration(h)));
                    }
                    ParamValue::None => {}
                }
                m.insert("name".into(), json!(f.name));
                Value::Object(m)
            })
            .collect();
        let mut doc = json!({
            "format": FORMAT,
            "version": VERSION,
            "entity": self.entity.to_value(),
            "timestamp": self.timestamp,
            "timestamp_unit": self.timestamp_unit,
            "allowed_lateness": if self.allowed_lateness == 0 { "0s".to_string() } else { format_duration(self.allowed_lateness) },
            "ttl": self.ttl.map(format_duration),
            "on_nonfinite": if self.skip_nonfinite { "skip" } else { "error" },
            "features": features,
        });
        // Stated only when set, so a document without them (and its hash) stays as it was.
        if let Value::Object(m) = &mut doc {
            match self.max_ahead {
                MaxAhead::Auto => {}
                MaxAhead::Off => {
                    m.insert("max_ahead".into(), Value::Null);
                }
                MaxAhead::Bound(b) => {
                    m.insert("max_ahead".into(), json!(format_duration(b)));
                }
            }
            if let Some(c) = &self.dedupe_on {
                m.insert("dedupe_on".into(), json!(c));
            }
            if !self.string_columns.is_empty() {
                m.insert("string_columns".into(), json!(self.string_columns));
            }
        }
        doc
    }

    /// Whether `column` is declared to hold strings.
    pub fn is_string_column(&self, column: &str) -> bool {
        self.string_columns.iter().any(|c| c == column)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }

    pub fn feature_names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }
}

fn parse_feature(value: &Value, field: &str) -> Result<Feature> {
    let obj = value
        .as_object()
        .ok_or_else(|| Error::spec(field, "expected a JSON object"))?;
    check_keys(
        obj,
        &["agg", "column", "window", "hop", "name", "q", "half_life"],
        field,
    )?;
    let agg_name = req_str(obj, "agg", &format!("{field}.agg"))?;
    let column = get_str(obj, "column", &format!("{field}.column"))?;
    let window = get_duration(obj, "window", &format!("{field}.window"))?;
    let window_label = match (get_str(obj, "window", "window")?, window) {
        (Some(text), Some(ns)) => Some(duration_label(&text, ns)),
        _ => None,
    };
    let hop = get_duration(obj, "hop", &format!("{field}.hop"))?;
    let hop_label = match (get_str(obj, "hop", "hop")?, hop) {
        (Some(text), Some(ns)) => Some(duration_label(&text, ns)),
        _ => None,
    };
    if let Some(h) = hop {
        match window {
            None => {
                return Err(Error::spec(
                    format!("{field}.hop"),
                    "hop needs a window (a lifetime feature has no tiles)",
                ))
            }
            Some(w) if w % h != 0 => {
                return Err(Error::spec(
                    format!("{field}.hop"),
                    format!(
                        "the window ({}) must be a whole number of hops ({})",
                        format_duration(w),
                        format_duration(h)
                    ),
                ))
            }
            Some(w) if w / h > 10_000 => {
                return Err(Error::spec(
                    format!("{field}.hop"),
                    "more than 10,000 tiles per window: use a larger hop",
                ))
            }
            _ => {}
        }
    }
    let def = agg::lookup(&agg_name).ok_or_else(|| {
        Error::spec(
            format!("{field}.agg"),
            format!(
                "unknown aggregation {agg_name:?} (expected one of: {})",
                agg::names().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    let param = match def.param {
        Param::None => ParamValue::None,
        Param::Quantile => {
            let q = obj.get("q").and_then(Value::as_f64).ok_or_else(|| {
                Error::spec(format!("{field}.q"), "quantile needs q, a number in [0, 1]")
            })?;
            if !(0.0..=1.0).contains(&q) {
                return Err(Error::spec(
                    format!("{field}.q"),
                    format!("q must be in [0, 1], got {q}"),
                ));
            }
            ParamValue::Quantile(q)
        }
        Param::HalfLife => {
            let h = get_duration(obj, "half_life", &format!("{field}.half_life"))?.ok_or_else(
                || {
                    Error::spec(
                        format!("{field}.half_life"),
                        format!("{agg_name} needs half_life, e.g. '1h'"),
                    )
                },
            )?;
            if h > i64::MAX / 64 {
                return Err(Error::spec(
                    format!("{field}.half_life"),
                    "half_life is too large",
                ));
            }
            ParamValue::HalfLife(h)
        }
    };
    let agg = Agg { def, param };
    if def.param != Param::HalfLife && obj.get("half_life").is_some_and(|v| !v.is_null()) {
        return Err(Error::spec(
            format!("{field}.half_life"),
            format!("half_life applies to decayed_sum, not {agg_name}"),
        ));
    }
    if def.param != Param::Quantile && obj.get("q").is_some_and(|v| !v.is_null()) {
        return Err(Error::spec(
            format!("{field}.q"),
            format!("q applies to quantile, not {agg_name}"),
        ));
    }
    match (def.column, &column) {
        (ColumnUse::Numeric | ColumnUse::Any, None) => {
            return Err(Error::spec(
                format!("{field}.column"),
                format!("{agg_name} needs a column"),
            ))
        }
        (ColumnUse::None, Some(_)) => {
            return Err(Error::spec(
                format!("{field}.column"),
                format!("{agg_name} takes no column"),
            ))
        }
        _ => {}
    }
    let name = match get_str(obj, "name", &format!("{field}.name"))? {
        Some(n) if n.is_empty() => {
            return Err(Error::spec(format!("{field}.name"), "must not be empty"))
        }
        Some(n) => n,
        None => {
            let base = default_name(&agg, column.as_deref(), window_label.as_deref());
            match &hop_label {
                Some(h) => format!("{base}_hop{h}"),
                None => base,
            }
        }
    };
    Ok(Feature {
        name,
        agg,
        column,
        window,
        window_label,
        hop,
        hop_label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let h = Some("1h");
        let agg = |name: &str| Agg::named(name).unwrap();
        assert_eq!(default_name(&agg("count"), None, h), "count_1h");
        assert_eq!(default_name(&agg("sum"), Some("fare"), h), "fare_sum_1h");
        assert_eq!(
            default_name(&Agg::quantile(0.9), Some("fare"), h),
            "fare_p90_1h"
        );
        assert_eq!(
            default_name(&Agg::quantile(0.999), Some("x"), None),
            "x_p99_9"
        );
        assert_eq!(default_name(&Agg::quantile(0.05), Some("x"), None), "x_p5");
        assert_eq!(default_name(&Agg::quantile(1.0), Some("x"), None), "x_p100");
        assert_eq!(
            default_name(&Agg::decayed_sum(3_600_000_000_000), Some("x"), None),
            "x_decayed_sum_hl1h"
        );
        assert_eq!(
            default_name(&agg("distinct_count"), Some("driver_id"), Some("24h")),
            "driver_id_distinct_count_24h"
        );
        assert_eq!(
            default_name(&agg("time_since_last"), None, None),
            "time_since_last"
        );
        assert_eq!(duration_label("5400000000000ns", 5_400_000_000_000), "90m");
        assert_eq!(duration_label("1h30m", 5_400_000_000_000), "90m");
        assert_eq!(duration_label(" 24h", 86_400_000_000_000), "24h");
    }

    #[test]
    fn round_trip() {
        let doc = r#"{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "5m",
            "features": [{"agg": "sum", "column": "v", "window": "90m"},
                         {"agg": "quantile", "column": "v", "q": 0.5},
                         {"agg": "decayed_sum", "column": "v", "half_life": "1h", "window": "1d"}]}"#;
        let spec = Spec::from_json(doc).unwrap();
        assert_eq!(
            spec.feature_names(),
            ["v_sum_90m", "v_p50", "v_decayed_sum_hl1h_1d"]
        );
        let again = Spec::from_json(&spec.to_json()).unwrap();
        assert_eq!(spec, again);
    }

    #[test]
    fn composite_entity() {
        let doc = r#"{"version": 1, "entity": ["driver_id", "zone"], "timestamp": "ts",
            "features": [{"agg": "count"}]}"#;
        let spec = Spec::from_json(doc).unwrap();
        assert_eq!(spec.entity.columns(), ["driver_id", "zone"]);
        assert_eq!(spec.entity.label(), "(driver_id, zone)");
        assert!(spec.entity.is_composite());
        assert_eq!(spec.to_value()["entity"], json!(["driver_id", "zone"]));
        assert_eq!(Spec::from_json(&spec.to_json()).unwrap(), spec);
        // a list of one column is that column, written back as a string
        let one =
            r#"{"version": 1, "entity": ["k"], "timestamp": "ts", "features": [{"agg": "count"}]}"#;
        let spec = Spec::from_json(one).unwrap();
        assert_eq!(spec.entity.single(), Some("k"));
        assert_eq!(spec.to_value()["entity"], json!("k"));
        for bad in [
            r#"{"version": 1, "entity": [], "timestamp": "t", "features": [{"agg": "count"}]}"#,
            r#"{"version": 1, "entity": ["a", "a"], "timestamp": "t", "features": [{"agg": "count"}]}"#,
            r#"{"version": 1, "entity": ["a", 1], "timestamp": "t", "features": [{"agg": "count"}]}"#,
            r#"{"version": 1, "entity": ["a", ""], "timestamp": "t", "features": [{"agg": "count"}]}"#,
            r#"{"version": 1, "entity": ["a", "b"], "timestamp": "t", "features": [{"agg": "count", "name": "b"}]}"#,
            r#"{"version": 1, "entity": ["a", "b"], "timestamp": "t", "dedupe_on": "b", "features": [{"agg": "count"}]}"#,
        ] {
            assert!(
                matches!(Spec::from_json(bad), Err(Error::Spec { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects() {
        let bad = [
            r#"{"version": 2, "entity": "k", "timestamp": "t", "features": [{"agg": "count"}]}"#,
            r#"{"version": 1, "entity": "k", "timestamp": "t", "features": [{"agg": "median", "column": "v"}]}"#,
            r#"{"version": 1, "entity": "k", "timestamp": "t", "features": [{"agg": "sum"}]}"#,
            r#"{"version": 1, "entity": "k", "timestamp": "t", "features": [{"agg": "count", "window": "1x"}]}"#,
            r#"{"version": 1, "entity": "k", "timestamp": "t", "features": [{"agg": "count"}, {"agg": "count"}]}"#,
            r#"{"version": 1, "entity": "k", "timestamp": "t", "features": []}"#,
            r#"{"version": 1, "entity": "k", "timestamp": "t", "features": [{"agg": "quantile", "column": "v", "q": 1.5}]}"#,
            // a parameter another aggregation takes is refused, not ignored
            r#"{"version": 1, "entity": "k", "timestamp": "t", "features": [{"agg": "sum", "column": "v", "half_life": "1h"}]}"#,
            r#"{"version": 1, "entity": "k", "timestamp": "t", "features": [{"agg": "count", "q": 0.5}]}"#,
        ];
        for doc in bad {
            assert!(
                matches!(Spec::from_json(doc), Err(Error::Spec { .. })),
                "{doc}"
            );
        }
    }
}
