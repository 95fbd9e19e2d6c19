//! The versioned JSON document of a pipeline (`{"format": "rtml.Transforms", "version": 1,
//! "steps": [...]}`): written by [`Transforms::to_json`], read and validated by
//! [`Transforms::from_json`], which refuses unknown fields and unknown versions.

use std::str::FromStr;

use serde_json::{json, Map, Value};

use super::op::{BinaryOp, Cat, Impute, Op, TimePart, Vocab};
use super::row::RowPlan;
use super::{Step, Transforms, FORMAT, MAX_QUANTILE_BUCKETS, VERSION};
use crate::error::{Error, Result};

/// Refuse a key outside `allowed` (a misspelt parameter must not be silently ignored).
fn check_keys(o: &Map<String, Value>, allowed: &[&str], field: &str) -> Result<()> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Error::spec(
            format!("{field}.{k}"),
            format!("unknown field (expected one of: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The parameters (besides `op`, `column` and `name`) a step of op `name` may carry, fitted
/// state included; `None` for an unknown op (reported by the parser).
fn step_params(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "log1p" | "abs" | "is_null" | "passthrough" => &[],
        "clip" => &["lo", "hi"],
        "power" => &["p"],
        "add" | "sub" | "mul" | "ratio" => &["other", "on_zero"],
        "fill_null" => &["value"],
        "hash_bucket" => &["n"],
        "hour_of_day" | "day_of_week" | "day_of_month" | "month" => &["tz", "cyclical"],
        "standard_scale" | "robust_scale" => &["center", "scale"],
        "min_max_scale" => &["min", "range"],
        "bucketize" => &["boundaries"],
        "quantile_bucketize" => &["n", "edges"],
        "one_hot" | "ordinal" => &["min_frequency", "max_categories", "vocabulary"],
        "impute" => &["strategy", "value"],
        "target_encode" => &[
            "target",
            "smooth",
            "folds",
            "categories",
            "encodings",
            "default",
        ],
        _ => return None,
    })
}

fn num_field(o: &Map<String, Value>, key: &str, field: &str) -> Result<Option<f64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| {
                Error::spec(
                    format!("{field}.{key}"),
                    format!("expected a finite number, got {v}"),
                )
            }),
    }
}

fn str_field(o: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(Error::spec(
            format!("{field}.{key}"),
            format!("expected a string, got {v}"),
        )),
    }
}

fn pair(o: &Map<String, Value>, a: &str, b: &str, field: &str) -> Result<Option<(f64, f64)>> {
    match (num_field(o, a, field)?, num_field(o, b, field)?) {
        (Some(x), Some(y)) => {
            if y == 0.0 {
                return Err(Error::spec(format!("{field}.{b}"), "must not be zero"));
            }
            Ok(Some((x, y)))
        }
        (None, None) => Ok(None),
        _ => Err(Error::spec(
            field,
            format!("fitted state needs both {a} and {b}"),
        )),
    }
}

fn vocab_field(o: &Map<String, Value>, field: &str) -> Result<Option<Vocab>> {
    match o.get("vocabulary") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            let cats: Vec<Cat> = a
                .iter()
                .map(|v| Cat::from_json(v, &format!("{field}.vocabulary")))
                .collect::<Result<_>>()?;
            let mut sorted = cats.clone();
            sorted.sort();
            sorted.dedup();
            if sorted != cats {
                return Err(Error::spec(
                    format!("{field}.vocabulary"),
                    "must be sorted and without duplicates",
                ));
            }
            Ok(Some(Vocab::new(cats)))
        }
        Some(v) => Err(Error::spec(
            format!("{field}.vocabulary"),
            format!("expected a list, got {v}"),
        )),
    }
}

impl Transforms {
    pub fn from_json(text: &str) -> Result<Transforms> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::spec("document", format!("not valid JSON: {e}")))?;
        let o = v
            .as_object()
            .ok_or_else(|| Error::spec("document", "expected a JSON object"))?;
        match o.get("format") {
            None => {}
            Some(Value::String(f)) if f == FORMAT => {}
            Some(f) => {
                return Err(Error::spec(
                    "format",
                    format!("expected {FORMAT:?}, got {f}"),
                ))
            }
        }
        let version = match o.get("version") {
            None => return Err(Error::spec("version", "is required")),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                Error::spec("version", format!("expected a positive integer, got {n}"))
            })?,
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
                format!("document version {version} was written by a newer rtml (this one reads up to {VERSION}): upgrade rtml"),
            ));
        }
        if version == 0 {
            return Err(Error::spec("version", "version 0 does not exist"));
        }
        check_keys(o, &["format", "version", "steps"], "document")?;
        let steps = o
            .get("steps")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::spec("steps", "is required (a list)"))?;
        let mut out = Vec::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            out.push(parse_step(s, i)?);
        }
        if out.is_empty() {
            return Err(Error::spec("steps", "a pipeline needs at least one step"));
        }
        let mut t = Transforms {
            steps: out,
            names: Vec::new(),
            row: RowPlan::default(),
        };
        t.refresh();
        Ok(t)
    }

    pub fn to_json(&self) -> String {
        let steps: Vec<Value> = self.steps.iter().map(step_json).collect();
        serde_json::to_string_pretty(&json!({"format": FORMAT, "version": VERSION, "steps": steps}))
            .unwrap_or_default()
    }
}

fn step_json(s: &Step) -> Value {
    let mut m = Map::new();
    m.insert("op".into(), json!(s.op.name()));
    m.insert("column".into(), json!(s.column));
    m.insert("name".into(), json!(s.name));
    let put = |m: &mut Map<String, Value>, k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match &s.op {
        Op::Clip { lo, hi } => {
            put(&mut m, "lo", json!(lo));
            put(&mut m, "hi", json!(hi));
        }
        Op::Power { p } => put(&mut m, "p", json!(p)),
        Op::Binary { other, on_zero, .. } => {
            put(&mut m, "other", json!(other));
            put(&mut m, "on_zero", json!(on_zero));
        }
        Op::FillNull { value } => put(&mut m, "value", json!(value)),
        Op::HashBucket { n } => put(&mut m, "n", json!(n)),
        Op::Time { tz, cyclical, .. } => {
            put(&mut m, "tz", json!(tz));
            put(&mut m, "cyclical", json!(cyclical));
        }
        Op::StandardScale { fitted } | Op::RobustScale { fitted } => {
            if let Some((c, sc)) = fitted {
                put(&mut m, "center", json!(c));
                put(&mut m, "scale", json!(sc));
            }
        }
        Op::MinMaxScale {
            fitted: Some((lo, r)),
        } => {
            put(&mut m, "min", json!(lo));
            put(&mut m, "range", json!(r));
        }
        Op::MinMaxScale { fitted: None } => {}
        Op::Bucketize { boundaries } => put(&mut m, "boundaries", json!(boundaries)),
        Op::QuantileBucketize { n, edges } => {
            put(&mut m, "n", json!(n));
            if let Some(e) = edges {
                put(&mut m, "edges", json!(e));
            }
        }
        Op::OneHot {
            min_frequency,
            max_categories,
            vocab,
        }
        | Op::Ordinal {
            min_frequency,
            max_categories,
            vocab,
        } => {
            put(&mut m, "min_frequency", json!(min_frequency));
            put(&mut m, "max_categories", json!(max_categories));
            if let Some(v) = vocab {
                put(
                    &mut m,
                    "vocabulary",
                    Value::Array(v.cats.iter().map(Cat::to_json).collect()),
                );
            }
        }
        Op::Impute { strategy, value } => {
            let s = match strategy {
                Impute::Mean => "mean",
                Impute::Median => "median",
                Impute::MostFrequent => "most_frequent",
                Impute::Constant => "constant",
            };
            put(&mut m, "strategy", json!(s));
            put(&mut m, "value", json!(value));
        }
        Op::TargetEncode {
            target,
            smooth,
            folds,
            fitted,
        } => {
            put(&mut m, "target", json!(target));
            put(&mut m, "smooth", json!(smooth));
            put(&mut m, "folds", json!(folds));
            if let Some((table, mean)) = fitted {
                put(
                    &mut m,
                    "categories",
                    Value::Array(table.iter().map(|(c, _)| c.to_json()).collect()),
                );
                put(
                    &mut m,
                    "encodings",
                    json!(table.iter().map(|(_, v)| *v).collect::<Vec<f64>>()),
                );
                put(&mut m, "default", json!(mean));
            }
        }
        _ => {}
    }
    Value::Object(m)
}

fn parse_step(v: &Value, i: usize) -> Result<Step> {
    let base = format!("steps[{i}]");
    let o = v
        .as_object()
        .ok_or_else(|| Error::spec(&base, "expected a JSON object"))?;
    let op_name = str_field(o, "op", &base)?
        .ok_or_else(|| Error::spec(format!("{base}.op"), "is required"))?;
    let column = str_field(o, "column", &base)?
        .ok_or_else(|| Error::spec(format!("{base}.column"), "is required"))?;
    let field = format!("{base} ({op_name} of '{column}')");
    if let Some(params) = step_params(&op_name) {
        let mut allowed = vec!["op", "column", "name"];
        allowed.extend_from_slice(params);
        check_keys(o, &allowed, &field)?;
    }
    let need = |k: &str| -> Result<f64> {
        num_field(o, k, &field)?.ok_or_else(|| Error::spec(format!("{field}.{k}"), "is required"))
    };
    let count = |k: &str| -> Result<Option<u64>> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().filter(|n| *n >= 1).map(Some).ok_or_else(|| {
                Error::spec(
                    format!("{field}.{k}"),
                    format!("expected a positive integer, got {v}"),
                )
            }),
        }
    };
    let op = match op_name.as_str() {
        "log1p" => Op::Log1p,
        "abs" => Op::Abs,
        "clip" => {
            let (lo, hi) = (need("lo")?, need("hi")?);
            if lo > hi {
                return Err(Error::spec(&field, format!("lo ({lo}) > hi ({hi})")));
            }
            Op::Clip { lo, hi }
        }
        "power" => Op::Power { p: need("p")? },
        "add" | "sub" | "mul" | "ratio" => Op::Binary {
            kind: BinaryOp::from_name(&op_name).unwrap_or(BinaryOp::Ratio),
            other: str_field(o, "other", &field)?
                .ok_or_else(|| Error::spec(format!("{field}.other"), "is required"))?,
            on_zero: num_field(o, "on_zero", &field)?,
        },
        "is_null" => Op::IsNull,
        "fill_null" => Op::FillNull {
            value: need("value")?,
        },
        "hash_bucket" => Op::HashBucket {
            n: count("n")?.ok_or_else(|| Error::spec(format!("{field}.n"), "is required"))?,
        },
        "hour_of_day" | "day_of_week" | "day_of_month" | "month" => {
            let tz = str_field(o, "tz", &field)?.ok_or_else(|| {
                Error::spec(
                    format!("{field}.tz"),
                    "is required (e.g. 'UTC', 'America/New_York')",
                )
            })?;
            chrono_tz::Tz::from_str(&tz).map_err(|_| {
                Error::spec(format!("{field}.tz"), format!("unknown time zone {tz:?}"))
            })?;
            Op::Time {
                part: match op_name.as_str() {
                    "hour_of_day" => TimePart::Hour,
                    "day_of_week" => TimePart::DayOfWeek,
                    "day_of_month" => TimePart::DayOfMonth,
                    _ => TimePart::Month,
                },
                tz,
                cyclical: o.get("cyclical").and_then(Value::as_bool).unwrap_or(false),
            }
        }
        "standard_scale" => Op::StandardScale {
            fitted: pair(o, "center", "scale", &field)?,
        },
        "robust_scale" => Op::RobustScale {
            fitted: pair(o, "center", "scale", &field)?,
        },
        "min_max_scale" => Op::MinMaxScale {
            fitted: pair(o, "min", "range", &field)?,
        },
        "bucketize" => {
            let b: Vec<f64> = match o.get("boundaries") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                            Error::spec(format!("{field}.boundaries"), "expected finite numbers")
                        })
                    })
                    .collect::<Result<_>>()?,
                _ => {
                    return Err(Error::spec(
                        format!("{field}.boundaries"),
                        "is required (a list of numbers)",
                    ))
                }
            };
            if b.windows(2).any(|w| w[0] >= w[1]) || b.is_empty() {
                return Err(Error::spec(
                    format!("{field}.boundaries"),
                    "must be a non-empty, strictly increasing list",
                ));
            }
            Op::Bucketize { boundaries: b }
        }
        "quantile_bucketize" => {
            let n = count("n")?.ok_or_else(|| Error::spec(format!("{field}.n"), "is required"))?;
            // fit computes n + 1 quantiles: an absurd n must not allocate without bound
            if n > MAX_QUANTILE_BUCKETS {
                return Err(Error::spec(
                    format!("{field}.n"),
                    format!("at most {MAX_QUANTILE_BUCKETS} buckets, got {n}"),
                ));
            }
            let n = n as usize;
            let edges = match o.get("edges") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => {
                    let e: Vec<f64> = a
                        .iter()
                        .map(|x| {
                            x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                                Error::spec(format!("{field}.edges"), "expected finite numbers")
                            })
                        })
                        .collect::<Result<_>>()?;
                    if e.is_empty() || e.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(Error::spec(
                            format!("{field}.edges"),
                            "must be a non-empty, strictly increasing list",
                        ));
                    }
                    Some(e)
                }
                Some(v) => {
                    return Err(Error::spec(
                        format!("{field}.edges"),
                        format!("expected a list, got {v}"),
                    ))
                }
            };
            Op::QuantileBucketize { n, edges }
        }
        "one_hot" | "ordinal" => {
            let min_frequency = count("min_frequency")?.unwrap_or(1);
            let max_categories = count("max_categories")?.map(|m| m as usize);
            let vocab = vocab_field(o, &field)?;
            if op_name == "one_hot" {
                Op::OneHot {
                    min_frequency,
                    max_categories,
                    vocab,
                }
            } else {
                Op::Ordinal {
                    min_frequency,
                    max_categories,
                    vocab,
                }
            }
        }
        "impute" => {
            let strategy = match str_field(o, "strategy", &field)?.as_deref() {
                Some("mean") => Impute::Mean,
                Some("median") => Impute::Median,
                Some("most_frequent") => Impute::MostFrequent,
                Some("constant") => Impute::Constant,
                other => {
                    return Err(Error::spec(
                        format!("{field}.strategy"),
                        format!("expected mean, median, most_frequent or constant, got {other:?}"),
                    ))
                }
            };
            let value = num_field(o, "value", &field)?;
            if strategy == Impute::Constant && value.is_none() {
                return Err(Error::spec(
                    format!("{field}.value"),
                    "constant impute needs value",
                ));
            }
            Op::Impute { strategy, value }
        }
        "target_encode" => {
            let target = str_field(o, "target", &field)?
                .ok_or_else(|| Error::spec(format!("{field}.target"), "is required"))?;
            let smooth = num_field(o, "smooth", &field)?.unwrap_or(10.0);
            if smooth < 0.0 {
                return Err(Error::spec(format!("{field}.smooth"), "must be >= 0"));
            }
            let folds = count("folds")?.unwrap_or(5) as usize;
            if folds < 2 {
                return Err(Error::spec(format!("{field}.folds"), "must be at least 2"));
            }
            let fitted = match (o.get("categories"), o.get("encodings")) {
                (Some(Value::Array(c)), Some(Value::Array(e))) => {
                    if c.len() != e.len() {
                        return Err(Error::spec(
                            &field,
                            "categories and encodings differ in length",
                        ));
                    }
                    let cats: Vec<Cat> = c
                        .iter()
                        .map(|v| Cat::from_json(v, &field))
                        .collect::<Result<_>>()?;
                    let encs: Vec<f64> = e
                        .iter()
                        .map(|x| {
                            x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                                Error::spec(format!("{field}.encodings"), "expected finite numbers")
                            })
                        })
                        .collect::<Result<_>>()?;
                    let default = need("default")?;
                    // looked up by binary search: sorted, each category once
                    let mut table: Vec<(Cat, f64)> = cats.into_iter().zip(encs).collect();
                    table.sort_by(|a, b| a.0.cmp(&b.0));
                    if table.windows(2).any(|w| w[0].0 == w[1].0) {
                        return Err(Error::spec(
                            format!("{field}.categories"),
                            "a category appears twice",
                        ));
                    }
                    Some((table, default))
                }
                (None, None) => None,
                _ => {
                    return Err(Error::spec(
                        &field,
                        "fitted state needs categories and encodings",
                    ))
                }
            };
            Op::TargetEncode {
                target,
                smooth,
                folds,
                fitted,
            }
        }
        "passthrough" => Op::Passthrough,
        other => {
            return Err(Error::spec(
                format!("{base}.op"),
                format!("unknown transform {other:?}"),
            ))
        }
    };
    let name = str_field(o, "name", &field)?.unwrap_or_else(|| default_output(&op, &column));
    if name.is_empty() {
        return Err(Error::spec(format!("{field}.name"), "must not be empty"));
    }
    Ok(Step::new(op, column, name))
}

/// Default output name: in place for unary numeric steps, a new column otherwise.
pub fn default_output(op: &Op, column: &str) -> String {
    match op {
        Op::IsNull => format!("{column}_is_null"),
        Op::HashBucket { n } => format!("{column}_hash{n}"),
        Op::Binary { kind, other, .. } => format!("{column}_{}_{other}", kind.word()),
        Op::Time {
            part,
            cyclical: false,
            ..
        } => format!("{column}_{}", part.name()),
        Op::TargetEncode { .. } => format!("{column}_te"),
        _ => column.to_string(),
    }
}
