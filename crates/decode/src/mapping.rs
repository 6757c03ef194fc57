//! A configured JSON mapping: which parts of a vendor's JSON become the measurement, tags,
//! fields and time of each reading.
//!
//! The plain `json` format guesses (every leaf is a field); real feeds need more: readings
//! nested in arrays, station ids one level up, numbers sent as strings, local times, `-99` for
//! "no data". A [`MappingConfig`] says it once, in the input's `mapping` section, and is
//! compiled into a [`Mapping`] at start-up so a bad path or time zone is a config error naming
//! its key.
//!
//! # Paths
//!
//! Paths are RFC 6901 JSON pointers (`/data/0/speed`, `~1` for `/` and `~0` for `~` in a key,
//! `""` for the whole value), with three additions:
//!
//! - in `records`, a `*` segment iterates an array: `"/stations/*/readings"` makes one reading
//!   per element of each station's `readings`. Where `records` ends on an array, each element is
//!   a record; on anything else, that value is the one record. Without `records` the document
//!   is the record (a top-level array: each element);
//! - inside a record, `"/x"` is relative to the record, `"../x"` to the enclosing record (the
//!   element the previous `*` picked, or the document for the outermost level), `"../../x"` two
//!   levels up, and `"$/x"` to the document root. So a parent's values can be tags.
//!
//! # Keys
//!
//! ```toml
//! [inputs.mqtt.mapping]
//! records = "/stations/*/readings"        # optional
//! measurement = "traffic"                 # or measurement_path = "/kind" (measurement as fallback)
//! tags = { station = "../id", city = "$/city", lane = "/lane" }
//! fields = { speed = "/speed_kmh", count = { path = "/n", type = "int" }, ok = { path = "/ok", type = "bool" } }
//! # flatten = "/values"                   # every leaf under it becomes a field, keys joined with _
//! time = "/time"                          # without it: the time of receipt
//! time_format = "%d/%m/%Y %H:%M:%S"       # unix_s|unix_ms|unix_us|unix_ns|rfc3339 (default) or a layout
//! timezone = "Asia/Ho_Chi_Minh"           # required for a layout without an offset
//! drop_values = [-99, "NA"]               # sentinels: such a numeric field is left out
//! ```
//!
//! - `fields.NAME` is a path, or `{ path, type = "float" (default) | "int" | "string" | "bool",
//!   drop_values }` (a field's own `drop_values` replace the global ones). Numbers sent as
//!   strings are read as numbers for `float` and `int`; a string that is not a number there is
//!   a rejection `not_a_number` naming the field and path, and that field is left out;
//! - a field or tag whose path is missing (or `null`) is skipped; a missing `time` is the
//!   rejection `missing_time` for that record; a record left without fields is `no_fields`;
//! - `flatten` fields are read as the `json` format reads them (numbers float, strings string)
//!   and leave out the leaves that `time`, `tags` or `fields` already use; named `fields` win;
//! - static and topic tags of the input come first; the mapping's tags override them.
//!
//! A bad record is rejected with a stable label and the others are kept.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use ioc_model::{FieldValue, Reading, RESERVED_KEYS};

use crate::payload::{Decoded, SpecError};
use crate::scalar::{self, DropValues};
use crate::timefmt::TimeFormat;

/// The `mapping` section of an input, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Where the records are; `*` iterates an array.
    pub records: Option<String>,
    /// The measurement name (the input's `measurement` if unset).
    pub measurement: Option<String>,
    /// A path to the measurement name in each record.
    pub measurement_path: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldConfig>,
    /// Every leaf under this path becomes a field.
    pub flatten: Option<String>,
    pub time: Option<String>,
    pub time_format: Option<String>,
    pub timezone: Option<String>,
    /// Sentinels for every numeric field.
    #[serde(default)]
    pub drop_values: DropValues,
}

/// One configured field: a path, or a path with a type and sentinels.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldConfig {
    Path(String),
    Full(FieldSpec),
}

/// The long form of a field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub path: String,
    #[serde(rename = "type", default)]
    pub kind: FieldType,
    /// Replaces the mapping's `drop_values` for this field.
    pub drop_values: Option<DropValues>,
}

/// The type a configured field is stored as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    #[default]
    Float,
    Int,
    String,
    Bool,
}

impl<'de> Deserialize<'de> for FieldConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a path such as \"/speed\", or { path = \"/speed\", type = \"float\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldConfig, E> {
                Ok(FieldConfig::Path(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldConfig, A::Error> {
                FieldSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FieldConfig::Full)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Record,
    /// So many records up (`../` once is 1).
    Up(usize),
    Root,
}

/// A compiled path: where it starts and the unescaped pointer tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Path {
    text: String,
    base: Base,
    tokens: Vec<String>,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    path: Path,
    kind: FieldType,
    drop_values: DropValues,
}

#[derive(Debug, Clone)]
enum Measurement {
    Literal(String),
    Path {
        path: Path,
        fallback: Option<String>,
    },
}

/// A compiled mapping; built once per input.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Pointer tokens between the `*`s of `records` (one more group than there are `*`s).
    records: Option<Vec<Vec<String>>>,
    records_text: String,
    measurement: Measurement,
    tags: Vec<(String, Path)>,
    fields: Vec<Field>,
    flatten: Option<Path>,
    time: Option<(Path, TimeFormat)>,
    drop_values: DropValues,
}

/// Parses RFC 6901 pointer text into its unescaped tokens.
fn pointer_tokens(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!(
            "{text:?} is not a JSON pointer: it starts with \"/\" (\"/{text}\"), or is \"\" for the whole value"
        ));
    };
    rest.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "{text:?}: \"~\" in a JSON pointer must be \"~0\" (for ~) or \"~1\" (for /)"
                            ))
                        }
                    },
                    (c, false) => out.push(c),
                }
            }
            Ok(out)
        })
        .collect()
}

/// Parses a path inside a record: `/x`, `../x`, `$/x`.
fn record_path(key: &str, text: &str, levels: Option<usize>) -> Result<Path, SpecError> {
    let err = |m: String| SpecError::new(key, m);
    let (base, pointer) = if let Some(rest) = text.strip_prefix('$') {
        (Base::Root, rest.to_owned())
    } else if text == ".." || text.starts_with("../") {
        let mut rest = text;
        let mut up = 0;
        while rest == ".." || rest.starts_with("../") {
            up += 1;
            rest = rest.strip_prefix("..").unwrap_or(rest);
            rest = rest.strip_prefix('/').unwrap_or(rest);
        }
        if let Some(max) = levels {
            if up > max {
                return Err(err(format!(
                    "{text:?} goes up {up} level(s) but records = \"...\" has only {max} above a record"
                )));
            }
        }
        let pointer = if rest.is_empty() {
            String::new()
        } else {
            format!("/{rest}")
        };
        (Base::Up(up), pointer)
    } else {
        (Base::Record, text.to_owned())
    };
    let tokens = pointer_tokens(&pointer).map_err(err)?;
    if tokens.iter().any(|t| t == "*") {
        return Err(err(format!(
            "{text:?}: \"*\" is only allowed in records; a field, tag or time is one value"
        )));
    }
    Ok(Path {
        text: text.to_owned(),
        base,
        tokens,
    })
}

fn check_name(key: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(SpecError::new(
            key,
            format!("{name:?} is not a usable name"),
        ));
    }
    if RESERVED_KEYS.contains(&name) {
        return Err(SpecError::new(
            key,
            format!("{name:?} is reserved by the stores; choose another name"),
        ));
    }
    Ok(())
}

impl Mapping {
    /// Compiles a mapping; `default_measurement` is the input's `measurement`. Error keys are
    /// relative to the mapping section (`fields.speed.path`, `timezone`).
    pub fn compile(
        cfg: &MappingConfig,
        default_measurement: Option<&str>,
    ) -> Result<Self, SpecError> {
        let (records, levels) = match &cfg.records {
            None => (None, None),
            Some(text) => {
                let tokens = pointer_tokens(text).map_err(|m| SpecError::new("records", m))?;
                let mut groups = vec![Vec::new()];
                for t in tokens {
                    if t == "*" {
                        groups.push(Vec::new());
                    } else if let Some(last) = groups.last_mut() {
                        last.push(t);
                    }
                }
                // Records above a record: the document and each `*` element, except a final `*`
                // whose element is the record itself.
                let trailing_star = groups.len() > 1 && groups.last().is_some_and(Vec::is_empty);
                let levels = groups.len() - usize::from(trailing_star);
                (Some(groups), Some(levels))
            }
        };
        let measurement =
            match (&cfg.measurement_path, &cfg.measurement, default_measurement) {
                (Some(p), literal, default) => Measurement::Path {
                    path: record_path("measurement_path", p, levels)?,
                    fallback: literal.clone().or(default.map(str::to_owned)),
                },
                (None, literal, default) if literal.is_some() || default.is_some() => {
                    let m = literal.as_deref().or(default).unwrap_or_default();
                    if m.trim().is_empty() {
                        return Err(SpecError::new("measurement", "must not be empty"));
                    }
                    Measurement::Literal(m.to_owned())
                }
                (None, _, _) => return Err(SpecError::new(
                    "measurement",
                    "a mapping needs a measurement (here or on the input) or a measurement_path",
                )),
            };
        let mut tags = Vec::with_capacity(cfg.tags.len());
        for (name, path) in &cfg.tags {
            let key = format!("tags.{name}");
            check_name(&key, name)?;
            tags.push((name.clone(), record_path(&key, path, levels)?));
        }
        let mut fields = Vec::with_capacity(cfg.fields.len());
        for (name, f) in &cfg.fields {
            check_name(&format!("fields.{name}"), name)?;
            let (path, key, kind, drops) = match f {
                FieldConfig::Path(p) => (p, format!("fields.{name}"), FieldType::Float, None),
                FieldConfig::Full(s) => (
                    &s.path,
                    format!("fields.{name}.path"),
                    s.kind,
                    s.drop_values.clone(),
                ),
            };
            fields.push(Field {
                name: name.clone(),
                path: record_path(&key, path, levels)?,
                kind,
                drop_values: drops.unwrap_or_else(|| cfg.drop_values.clone()),
            });
        }
        let flatten = cfg
            .flatten
            .as_deref()
            .map(|p| record_path("flatten", p, levels))
            .transpose()?;
        if fields.is_empty() && flatten.is_none() {
            return Err(SpecError::new(
                "fields",
                "a mapping needs fields (fields = { speed = \"/speed\" }) or flatten = \"<path>\"",
            ));
        }
        let time = match &cfg.time {
            Some(p) => Some((
                record_path("time", p, levels)?,
                TimeFormat::compile(cfg.time_format.as_deref(), cfg.timezone.as_deref())?,
            )),
            None => {
                crate::timefmt::refuse_unused(
                    "time = \"<path>\"",
                    cfg.time_format.as_deref(),
                    cfg.timezone.as_deref(),
                )?;
                None
            }
        };
        Ok(Mapping {
            records,
            records_text: cfg.records.clone().unwrap_or_default(),
            measurement,
            tags,
            fields,
            flatten,
            time,
            drop_values: cfg.drop_values.clone(),
        })
    }

    /// Decodes one payload: `base_tags` are the input's static and topic tags, `received_ns`
    /// the time of readings without their own. Every reading returned has passed
    /// [`Reading::validate`].
    pub fn decode(
        &self,
        base_tags: &BTreeMap<String, String>,
        payload: &[u8],
        received_ns: i64,
    ) -> Decoded {
        match serde_json::from_slice::<Value>(payload) {
            Ok(doc) => self.decode_value(base_tags, &doc, received_ns),
            Err(e) => Decoded::refused("not_json", format!("payload is not valid JSON: {e}")),
        }
    }

    /// [`decode`](Self::decode) for a document already parsed.
    pub fn decode_value(
        &self,
        base_tags: &BTreeMap<String, String>,
        doc: &Value,
        received_ns: i64,
    ) -> Decoded {
        let mut out = Decoded::default();
        let mut chain = vec![doc];
        let mut index = 0usize;
        let mut each = |chain: &[&Value], record: &Value, out: &mut Decoded| {
            let at = if self.records.is_some() {
                format!("record {index}: ")
            } else {
                String::new()
            };
            index += 1;
            self.record(chain, record, base_tags, received_ns, &at, out);
        };
        match &self.records {
            None => match doc {
                Value::Array(items) => {
                    for item in items {
                        each(&chain, item, &mut out);
                    }
                }
                _ => {
                    chain.clear();
                    each(&chain, doc, &mut out);
                }
            },
            Some(groups) => {
                let found = walk(groups, doc, &mut chain, &mut |c, r| each(c, r, &mut out));
                if !found {
                    out.reject(
                        "missing_records",
                        format!("no array or value at records = {:?}", self.records_text),
                    );
                }
            }
        }
        out
    }

    fn record(
        &self,
        parents: &[&Value],
        record: &Value,
        base_tags: &BTreeMap<String, String>,
        received_ns: i64,
        at: &str,
        out: &mut Decoded,
    ) {
        let rejected_before = out.rejected.len();
        let root = parents.first().copied().unwrap_or(record);
        let get = |p: &Path| -> Option<&Value> {
            let start = match p.base {
                Base::Record => record,
                Base::Root => root,
                Base::Up(n) => *parents.len().checked_sub(n).and_then(|i| parents.get(i))?,
            };
            lookup(start, &p.tokens).filter(|v| !v.is_null())
        };
        let measurement = match &self.measurement {
            Measurement::Literal(m) => m.clone(),
            Measurement::Path { path, fallback } => match (get(path), fallback) {
                (Some(Value::String(s)), _) if !s.is_empty() => s.clone(),
                (None, Some(f)) => f.clone(),
                (v, _) => {
                    out.reject(
                        "missing_measurement",
                        format!(
                            "{at}measurement_path {:?} is {}",
                            path.text,
                            v.map_or("missing".into(), |v| format!("not a name: {}", short(v)))
                        ),
                    );
                    return;
                }
            },
        };
        let timestamp_ns = match &self.time {
            None => received_ns,
            Some((path, format)) => match get(path) {
                None => {
                    out.reject(
                        "missing_time",
                        format!("{at}time {:?} is missing", path.text),
                    );
                    return;
                }
                Some(v) => match format.parse_json(v) {
                    Ok(ns) => ns,
                    Err(e) => {
                        out.reject("bad_time", format!("{at}time {:?}: {e}", path.text));
                        return;
                    }
                },
            },
        };
        let mut reading = Reading::new(measurement, timestamp_ns);
        reading.tags = base_tags.clone();
        for (name, path) in &self.tags {
            match get(path) {
                None => {}
                Some(Value::String(s)) => {
                    reading.tags.insert(name.clone(), s.clone());
                }
                Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                    reading.tags.insert(name.clone(), v.to_string());
                }
                Some(v) => out.reject(
                    "not_a_scalar",
                    format!(
                        "{at}tag {name} at {:?} is not a single value: {}",
                        path.text,
                        short(v)
                    ),
                ),
            }
        }
        if let Some(path) = &self.flatten {
            if let Some(v) = get(path) {
                let used = self.used_by_name(path);
                let mut tokens = path.tokens.clone();
                self.flatten_into(String::new(), v, &mut tokens, &used, &mut reading);
            }
        }
        for f in &self.fields {
            let Some(v) = get(&f.path) else { continue };
            match field_value(f, v) {
                Ok(Some(value)) => {
                    reading.fields.insert(f.name.clone(), value);
                }
                Ok(None) => {}
                Err((label, why)) => out.reject(
                    label,
                    format!("{at}field {} at {:?}: {why}", f.name, f.path.text),
                ),
            }
        }
        if reading.fields.is_empty() {
            if out.rejected.len() == rejected_before {
                out.reject("no_fields", format!("{at}no usable field"));
            }
            return;
        }
        match reading.validate() {
            Ok(()) => out.readings.push(reading),
            Err(e) => out.reject(e.label(), format!("{at}{e}")),
        }
    }

    /// The pointers (from the same base as `flatten`) that time, tags and fields already use.
    fn used_by_name(&self, flatten: &Path) -> Vec<&[String]> {
        let paths = self
            .time
            .iter()
            .map(|(p, _)| p)
            .chain(self.tags.iter().map(|(_, p)| p))
            .chain(self.fields.iter().map(|f| &f.path));
        paths
            .filter(|p| p.base == flatten.base)
            .map(|p| p.tokens.as_slice())
            .collect()
    }

    fn flatten_into(
        &self,
        name: String,
        value: &Value,
        tokens: &mut Vec<String>,
        used: &[&[String]],
        reading: &mut Reading,
    ) {
        if used.contains(&tokens.as_slice()) {
            return;
        }
        let join = |k: &str| {
            if name.is_empty() {
                k.to_owned()
            } else {
                format!("{name}_{k}")
            }
        };
        match value {
            Value::Object(obj) => {
                for (k, v) in obj {
                    tokens.push(k.clone());
                    self.flatten_into(join(k), v, tokens, used, reading);
                    tokens.pop();
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    let k = i.to_string();
                    tokens.push(k.clone());
                    self.flatten_into(join(&k), v, tokens, used, reading);
                    tokens.pop();
                }
            }
            _ if name.is_empty() => {}
            Value::Null => {}
            Value::Number(n) => {
                if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                    if !self.drop_values.drops_number(f) {
                        reading.fields.insert(name, FieldValue::Float(f));
                    }
                }
            }
            Value::Bool(b) => {
                reading.fields.insert(name, FieldValue::Bool(*b));
            }
            Value::String(s) => {
                if !self.drop_values.drops_text(s) {
                    reading.fields.insert(name, FieldValue::Str(s.clone()));
                }
            }
        }
    }
}

/// Walks `records`: the tokens before the first `*` from `node`, then each element of that
/// array, and so on. Calls `each(parents, record)`; false if the path before the first `*` (or
/// the whole path, without `*`) is missing.
fn walk<'a>(
    groups: &[Vec<String>],
    node: &'a Value,
    chain: &mut Vec<&'a Value>,
    each: &mut dyn FnMut(&[&'a Value], &'a Value),
) -> bool {
    let Some((first, rest)) = groups.split_first() else {
        return false;
    };
    let Some(target) = lookup(node, first) else {
        return false;
    };
    if rest.is_empty() {
        match target {
            Value::Array(items) => items.iter().for_each(|item| each(chain, item)),
            Value::Null => return false,
            one => each(chain, one),
        }
        return true;
    }
    let Value::Array(items) = target else {
        return false;
    };
    for item in items {
        if rest.len() == 1 && rest[0].is_empty() {
            // `records` ends on `*`: each element is the record itself.
            each(chain, item);
            continue;
        }
        chain.push(item);
        // A station without readings is skipped; only the outermost path must exist.
        walk(rest, item, chain, each);
        chain.pop();
    }
    true
}

/// RFC 6901 evaluation of unescaped tokens.
fn lookup<'a>(mut v: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    for t in tokens {
        v = match v {
            Value::Object(o) => o.get(t)?,
            Value::Array(a) => {
                if t.is_empty() || (t.len() > 1 && t.starts_with('0')) {
                    return None;
                }
                a.get(t.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(v)
}

fn short(v: &Value) -> String {
    crate::json::truncate(&v.to_string(), 64)
}

type FieldError = (&'static str, String);

/// One configured field's value; `Ok(None)` for a sentinel.
fn field_value(f: &Field, v: &Value) -> Result<Option<FieldValue>, FieldError> {
    // A sentinel is "no data" whatever the type: checked before the value must parse.
    let dropped = match v {
        Value::String(s) => f.drop_values.drops_text(s),
        Value::Number(n) => n.as_f64().is_some_and(|x| f.drop_values.drops_number(x)),
        _ => false,
    };
    if dropped {
        return Ok(None);
    }
    let not_number = || ("not_a_number", format!("{} is not a number", short(v)));
    match f.kind {
        FieldType::Float => {
            let n = match v {
                Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
                Value::String(s) => scalar::parse_number(s),
                _ => None,
            }
            .ok_or_else(not_number)?;
            Ok(Some(FieldValue::Float(n)))
        }
        FieldType::Int => {
            let n = match v {
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().and_then(|f| scalar::parse_int(&f.to_string()))),
                Value::String(s) => scalar::parse_int(s),
                _ => None,
            }
            .ok_or_else(|| {
                (
                    "not_a_number",
                    format!("{} is not a whole number", short(v)),
                )
            })?;
            Ok(Some(FieldValue::Int(n)))
        }
        FieldType::String => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => {
                    return Err((
                        "not_a_scalar",
                        format!("{} is not a single value", short(v)),
                    ))
                }
            };
            Ok(Some(FieldValue::Str(s)))
        }
        FieldType::Bool => {
            let b = match v {
                Value::Bool(b) => Some(*b),
                Value::Number(n) => n.as_f64().and_then(|x| {
                    if x == 0.0 {
                        Some(false)
                    } else if x == 1.0 {
                        Some(true)
                    } else {
                        None
                    }
                }),
                Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" => Some(true),
                    "false" | "0" => Some(false),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| ("not_a_bool", format!("{} is not true or false", short(v))))?;
            Ok(Some(FieldValue::Bool(b)))
        }
    }
}

#[cfg(test)]
mod tests;
