//! JSON payloads (environment stations, traffic counters) to readings.
//!
//! The mapping, as configured on an MQTT input:
//! - numbers become float fields, booleans bool fields, strings string fields, unless the key is
//!   in `tag_keys` (then the value becomes a tag); `null` is skipped;
//! - nested objects are flattened with `_` (`{"wind":{"speed":3}}` → `wind_speed`), arrays by
//!   index (`vals_0`);
//! - the `timestamp_field` (a number, or a string holding one, in `timestamp_unit`) gives the
//!   time and is not a field; without one, the time of receipt is used;
//! - tags also come from topic levels (`topic_tags = "_/district/_/sensor_id"`) and from static
//!   config tags;
//! - a payload may be one object or an array of objects (one reading each).
//!
//! Anything else is a [`JsonError`] with a stable [`label`](JsonError::label) for metrics.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de;
use serde_json::Value;

use ioc_model::{FieldRef, FieldValue, InvalidReading, Reading, ReadingBuf, ReadingMut};

/// The unit of a numeric timestamp in a payload (`timestamp_unit` in an input's config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    S,
    #[default]
    Ms,
    Us,
    Ns,
}

impl TimestampUnit {
    /// Nanoseconds in one unit.
    pub fn nanos(self) -> i64 {
        match self {
            TimestampUnit::S => 1_000_000_000,
            TimestampUnit::Ms => 1_000_000,
            TimestampUnit::Us => 1_000,
            TimestampUnit::Ns => 1,
        }
    }
}

/// How one input maps its JSON payloads; built once from the input's config (by the MQTT
/// input).
#[derive(Debug, Clone)]
pub struct JsonMapping {
    pub measurement: String,
    /// Tag name per topic level; `None` skips the level.
    pub topic_tags: Vec<Option<String>>,
    pub timestamp_field: Option<String>,
    pub timestamp_unit: TimestampUnit,
    pub tag_keys: Vec<String>,
    pub static_tags: BTreeMap<String, String>,
}

/// Parses a Telegraf-style `a/_/b` pattern: `_` (or an empty level) skips that topic level.
pub fn parse_topic_tags(pattern: &str) -> Vec<Option<String>> {
    if pattern.is_empty() {
        return Vec::new();
    }
    pattern
        .split('/')
        .map(|p| (!p.is_empty() && p != "_").then(|| p.to_owned()))
        .collect()
}

/// Why a JSON payload was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload is JSON but not an object (or array of objects)")]
    NotAnObject,
    #[error("topic {topic:?} has fewer levels than topic_tags needs ({needed})")]
    TopicMismatch { topic: String, needed: usize },
    #[error("timestamp field {0:?} is missing")]
    MissingTimestamp(String),
    #[error("timestamp field {field:?} is not a usable number: {value}")]
    BadTimestamp { field: String, value: String },
    #[error("payload has no usable field")]
    NoFields,
    #[error("number in {field:?} is not finite")]
    NonFinite { field: String },
    #[error(transparent)]
    Invalid(#[from] InvalidReading),
}

impl JsonError {
    pub fn label(&self) -> &'static str {
        match self {
            JsonError::NotJson(_) => "not_json",
            JsonError::NotAnObject => "not_an_object",
            JsonError::TopicMismatch { .. } => "topic_mismatch",
            JsonError::MissingTimestamp(_) => "missing_timestamp",
            JsonError::BadTimestamp { .. } => "bad_timestamp",
            JsonError::NoFields => "no_fields",
            JsonError::NonFinite { .. } => "non_finite",
            JsonError::Invalid(e) => e.label(),
        }
    }
}

/// Decodes one MQTT message. `received_ns` is the time of receipt, used when the mapping has no
/// timestamp field. Every returned reading has passed [`Reading::validate`].
pub fn decode(
    mapping: &JsonMapping,
    topic: &str,
    payload: &[u8],
    received_ns: i64,
) -> Result<Vec<Reading>, JsonError> {
    match topic_and_static_tags(mapping, topic) {
        Ok(tags) => decode_owning_tags(mapping, tags, payload, received_ns),
        // As before the streaming parse: a payload that is not JSON says so first.
        Err(e) => match decode_with_tags(mapping, &BTreeMap::new(), payload, received_ns) {
            Err(not_json @ JsonError::NotJson(_)) => Err(not_json),
            _ => Err(e),
        },
    }
}

/// The same as [`decode`] with the topic and static tags already worked out (see
/// [`topic_and_static_tags`]), for callers that need them for other formats too.
///
/// The payload is parsed once, straight into readings (no `serde_json::Value` tree; keys are
/// borrowed from the payload): this is the hot path of every JSON input. A syntax error
/// anywhere is `not_json` even after a record that was refused for another reason, as if the
/// whole payload had been parsed first.
pub fn decode_with_tags(
    mapping: &JsonMapping,
    base_tags: &BTreeMap<String, String>,
    payload: &[u8],
    received_ns: i64,
) -> Result<Vec<Reading>, JsonError> {
    parse(mapping, BaseTags::Shared(base_tags), payload, received_ns)
}

/// The same as [`decode_with_tags`], taking the tags: a payload of one object (the usual case)
/// then gets them without a copy.
pub fn decode_owning_tags(
    mapping: &JsonMapping,
    base_tags: BTreeMap<String, String>,
    payload: &[u8],
    received_ns: i64,
) -> Result<Vec<Reading>, JsonError> {
    let one_object = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if one_object {
        parse(
            mapping,
            BaseTags::Once(Some(base_tags)),
            payload,
            received_ns,
        )
    } else {
        parse(mapping, BaseTags::Shared(&base_tags), payload, received_ns)
    }
}

fn parse(
    mapping: &JsonMapping,
    base_tags: BaseTags<'_>,
    payload: &[u8],
    received_ns: i64,
) -> Result<Vec<Reading>, JsonError> {
    let mut sink = Sink {
        mapping,
        base_tags,
        received_ns,
        readings: Vec::with_capacity(1),
        error: None,
    };
    let mut de = serde_json::Deserializer::from_slice(payload);
    let parsed =
        serde::de::DeserializeSeed::deserialize(Top(&mut sink), &mut de).and_then(|()| de.end());
    if let Err(e) = parsed {
        return Err(JsonError::NotJson(e.to_string()));
    }
    match sink.error {
        Some(e) => Err(e),
        None => Ok(sink.readings),
    }
}

/// What the streaming parse builds: the readings so far, and the first refusal (the payload is
/// still read to its end, so a later syntax error wins, as it would have with a tree).
struct Sink<'a> {
    mapping: &'a JsonMapping,
    base_tags: BaseTags<'a>,
    received_ns: i64,
    readings: Vec<Reading>,
    error: Option<JsonError>,
}

/// The topic and static tags every reading of a payload starts with.
enum BaseTags<'a> {
    /// Copied into each reading.
    Shared(&'a BTreeMap<String, String>),
    /// Moved into the one reading of a single-object payload.
    Once(Option<BTreeMap<String, String>>),
}

impl Sink<'_> {
    fn base_tags(&mut self) -> BTreeMap<String, String> {
        match &mut self.base_tags {
            BaseTags::Shared(tags) => (*tags).clone(),
            // A payload starting with `{` has one top-level object: taken once.
            BaseTags::Once(tags) => tags.take().unwrap_or_default(),
        }
    }

    fn refuse(&mut self, e: JsonError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

/// The whole payload: one object, or a non-empty array of objects.
struct Top<'s, 'a>(&'s mut Sink<'a>);

impl<'de> de::DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Refuses a scalar where an object (or array of objects) belongs.
macro_rules! not_an_object {
    ($($name:ident: $t:ty),*) => {$(
        fn $name<E: de::Error>(self, _: $t) -> Result<(), E> {
            self.0.refuse(JsonError::NotAnObject);
            Ok(())
        }
    )*};
}

impl<'de> de::Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }
    not_an_object!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.refuse(JsonError::NotAnObject);
        Ok(())
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        object(self.0, map)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut any = false;
        while seq.next_element_seed(Item(self.0))?.is_some() {
            any = true;
        }
        if !any {
            self.0.refuse(JsonError::NotAnObject);
        }
        Ok(())
    }
}

/// One element of a top-level array: an object, or a refusal.
struct Item<'s, 'a>(&'s mut Sink<'a>);

impl<'de> de::DeserializeSeed<'de> for Item<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for Item<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    not_an_object!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.refuse(JsonError::NotAnObject);
        Ok(())
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        object(self.0, map)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        self.0.refuse(JsonError::NotAnObject);
        Ok(())
    }
}

/// One object: one reading, checked as soon as its closing brace is read.
fn object<'de, A: de::MapAccess<'de>>(sink: &mut Sink<'_>, map: A) -> Result<(), A::Error> {
    let mapping = sink.mapping;
    let mut reading = Reading::new(mapping.measurement.as_str(), sink.received_ns);
    reading.tags = sink.base_tags();
    let (timestamp, error) = read_object(mapping, &mut reading, map)?;
    if sink.error.is_some() {
        // Only the first refusal is reported; the rest of the payload is read for syntax only.
        return Ok(());
    }
    match finish(mapping, &mut reading, timestamp, error) {
        Ok(()) => sink.readings.push(reading),
        Err(e) => sink.refuse(e),
    }
    Ok(())
}

/// Reads one object's keys into `reading`; returns the timestamp value (if the mapping names
/// one and it is there) and the first value refused, for [`finish`].
fn read_object<'de, A: de::MapAccess<'de>, R: Record>(
    mapping: &JsonMapping,
    reading: &mut R,
    mut map: A,
) -> Result<(Option<Value>, Option<JsonError>), A::Error> {
    let mut timestamp: Option<Value> = None;
    let mut error: Option<JsonError> = None;
    while let Some(key) = map.next_key_seed(KeySeed)? {
        if mapping.timestamp_field.as_deref() == Some(&*key) {
            // Rare and small: the one value kept as a `Value`, to be read exactly as before.
            timestamp = Some(map.next_value()?);
        } else {
            map.next_value_seed(Leaf {
                key: Key::Top(key),
                mapping,
                reading: &mut *reading,
                error: &mut error,
            })?;
        }
    }
    Ok((timestamp, error))
}

/// The checks of a whole record, in the order the tree-based decoder made them: timestamp,
/// numbers, fields present, line protocol.
fn finish<R: Record>(
    mapping: &JsonMapping,
    reading: &mut R,
    timestamp: Option<Value>,
    error: Option<JsonError>,
) -> Result<(), JsonError> {
    if let Some(field) = &mapping.timestamp_field {
        let value = timestamp.ok_or_else(|| JsonError::MissingTimestamp(field.clone()))?;
        let ns =
            to_nanos(&value, mapping.timestamp_unit).ok_or_else(|| JsonError::BadTimestamp {
                field: field.clone(),
                value: truncate(&value.to_string(), 64),
            })?;
        reading.set_timestamp_ns(ns);
    }
    if let Some(e) = error {
        return Err(e);
    }
    if reading.field_count() == 0 {
        return Err(JsonError::NoFields);
    }
    ioc_model::validate(reading)?;
    Ok(())
}

/// Where the parse puts one object's tags and fields: a [`Reading`] (the general path) or a
/// [`ReadingBuf`] refilled per message (the hot path). An insert of a key already there
/// replaces its value in both.
trait Record: ReadingMut {
    fn put_field(&mut self, key: Key<'_>, value: FieldRef<'_>);
    fn put_tag(&mut self, key: Key<'_>, value: &str);
    /// The same, for a value the parse already owns (a string with escapes).
    fn put_string_field(&mut self, key: Key<'_>, value: String) {
        self.put_field(key, FieldRef::Str(&value));
    }
    fn put_string_tag(&mut self, key: Key<'_>, value: String) {
        self.put_tag(key, &value);
    }
}

impl Record for Reading {
    fn put_field(&mut self, key: Key<'_>, value: FieldRef<'_>) {
        self.fields
            .insert(key.into_string(), value.to_field_value());
    }
    fn put_tag(&mut self, key: Key<'_>, value: &str) {
        self.tags.insert(key.into_string(), value.to_owned());
    }
    fn put_string_field(&mut self, key: Key<'_>, value: String) {
        self.fields
            .insert(key.into_string(), FieldValue::Str(value));
    }
    fn put_string_tag(&mut self, key: Key<'_>, value: String) {
        self.tags.insert(key.into_string(), value);
    }
}

impl Record for ReadingBuf {
    fn put_field(&mut self, key: Key<'_>, value: FieldRef<'_>) {
        self.insert_field(key.as_str(), value);
    }
    fn put_tag(&mut self, key: Key<'_>, value: &str) {
        self.insert_tag(key.as_str(), value);
    }
}

/// The hot path of [`decode`]: a payload of one object decoded into `buf` (emptied first and
/// reused from message to message, so nothing is allocated once it has grown), with exactly
/// the readings and refusals `decode` gives. `None` when the payload is not one object (an
/// array: one reading per element) or the topic does not fit `topic_tags`: call [`decode`].
pub fn decode_one_into(
    mapping: &JsonMapping,
    topic: &str,
    payload: &[u8],
    received_ns: i64,
    buf: &mut ReadingBuf,
) -> Option<Result<(), JsonError>> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    buf.reset(&mapping.measurement, received_ns);
    for_each_base_tag(mapping, topic, |k, v| buf.insert_tag(k, v)).ok()?;
    let mut read = None;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let seed = OneObject {
        mapping,
        buf: &mut *buf,
        read: &mut read,
    };
    let parsed = de::DeserializeSeed::deserialize(seed, &mut de).and_then(|()| de.end());
    if let Err(e) = parsed {
        return Some(Err(JsonError::NotJson(e.to_string())));
    }
    // A payload starting with `{` is an object or a syntax error, so `read` is set here.
    let (timestamp, error) = read?;
    Some(finish(mapping, buf, timestamp, error))
}

/// The top level of a payload known to start with `{`, read into a [`ReadingBuf`].
struct OneObject<'s> {
    mapping: &'s JsonMapping,
    buf: &'s mut ReadingBuf,
    read: &'s mut Option<(Option<Value>, Option<JsonError>)>,
}

impl<'de> de::DeserializeSeed<'de> for OneObject<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for OneObject<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        *self.read = Some(read_object(self.mapping, self.buf, map)?);
        Ok(())
    }
}

/// An object key, borrowed from the payload unless it had escapes.
struct KeySeed;

impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> de::Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The flattened name of a value: a top-level key as it is, or a nested one joined with `_`.
enum Key<'de> {
    Top(Cow<'de, str>),
    Nested(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Top(k) => k,
            Key::Nested(k) => k,
        }
    }

    fn into_string(self) -> String {
        match self {
            Key::Top(k) => k.into_owned(),
            Key::Nested(k) => k,
        }
    }

    fn join(&self, part: &str) -> Key<'static> {
        let base = self.as_str();
        let mut k = String::with_capacity(base.len() + 1 + part.len());
        k.push_str(base);
        k.push('_');
        k.push_str(part);
        Key::Nested(k)
    }
}

/// A value under a (flattened) key: a field or a tag if a scalar; nested objects and arrays
/// are flattened into it (`wind_speed`, `vals_0`); `null` is skipped. Where two values flatten
/// to the same name, the later one in the payload wins.
struct Leaf<'r, 'de, R> {
    key: Key<'de>,
    mapping: &'r JsonMapping,
    reading: &'r mut R,
    error: &'r mut Option<JsonError>,
}

impl<R: Record> Leaf<'_, '_, R> {
    fn is_tag(&self) -> bool {
        let key = self.key.as_str();
        self.mapping.tag_keys.iter().any(|k| k == key)
    }

    fn put(self, value: FieldRef<'_>) {
        self.reading.put_field(self.key, value);
    }

    fn tag(self, value: &str) {
        self.reading.put_tag(self.key, value);
    }

    fn number(self, n: serde_json::Number) {
        if self.is_tag() {
            return self.reading.put_string_tag(self.key, n.to_string());
        }
        match n.as_f64() {
            Some(f) if f.is_finite() => self.put(FieldRef::Float(f)),
            _ => {
                if self.error.is_none() {
                    *self.error = Some(JsonError::NonFinite {
                        field: self.key.into_string(),
                    });
                }
            }
        }
    }
}

impl<'de, R: Record> de::DeserializeSeed<'de> for Leaf<'_, 'de, R> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, R: Record> de::Visitor<'de> for Leaf<'_, 'de, R> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        if self.is_tag() {
            self.tag(if v { "true" } else { "false" });
        } else {
            self.put(FieldRef::Bool(v));
        }
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v.into());
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v.into());
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => self.number(n),
            None => {
                if self.error.is_none() {
                    *self.error = Some(JsonError::NonFinite {
                        field: self.key.into_string(),
                    });
                }
            }
        }
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.is_tag() {
            self.tag(v);
        } else {
            self.put(FieldRef::Str(v));
        }
        Ok(())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        if self.is_tag() {
            self.reading.put_string_tag(self.key, v);
        } else {
            self.reading.put_string_field(self.key, v);
        }
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key_seed(KeySeed)? {
            map.next_value_seed(Leaf {
                key: self.key.join(&k),
                mapping: self.mapping,
                reading: &mut *self.reading,
                error: &mut *self.error,
            })?;
        }
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let leaf = Leaf {
                key: self.key.join(itoa::Buffer::new().format(i)),
                mapping: self.mapping,
                reading: &mut *self.reading,
                error: &mut *self.error,
            };
            if seq.next_element_seed(leaf)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// The tags that come from the topic levels and the input's static tags.
pub fn topic_and_static_tags(
    mapping: &JsonMapping,
    topic: &str,
) -> Result<BTreeMap<String, String>, JsonError> {
    if mapping.topic_tags.is_empty() {
        return Ok(mapping.static_tags.clone());
    }
    let mut tags = BTreeMap::new();
    for_each_base_tag(mapping, topic, |k, v| {
        tags.insert(k.to_owned(), v.to_owned());
    })?;
    Ok(tags)
}

/// Calls `tag` with the static tags, then with the tags of the topic levels (which replace a
/// static tag of the same name): the order a map insert must see them in.
fn for_each_base_tag(
    mapping: &JsonMapping,
    topic: &str,
    mut tag: impl FnMut(&str, &str),
) -> Result<(), JsonError> {
    let needed = mapping.topic_tags.len();
    if needed > 0 && topic.split('/').count() < needed {
        return Err(JsonError::TopicMismatch {
            topic: topic.to_owned(),
            needed,
        });
    }
    for (k, v) in &mapping.static_tags {
        tag(k, v);
    }
    for (name, level) in mapping.topic_tags.iter().zip(topic.split('/')) {
        if let Some(name) = name {
            tag(name, level);
        }
    }
    Ok(())
}

/// Flattens nested objects with `_` and arrays by index; leaves scalars as they are.
pub(crate) fn flatten(key: String, value: Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj {
                flatten(format!("{key}_{k}"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.into_iter().enumerate() {
                flatten(format!("{key}_{i}"), v, out);
            }
        }
        Value::Null => {}
        scalar => out.push((key, scalar)),
    }
}

/// A JSON timestamp (integer, decimal with a fraction, or a string holding either) in `unit`, as
/// nanoseconds, exact to the digits written; `None` if it is not a number or overflows.
fn to_nanos(value: &Value, unit: TimestampUnit) -> Option<i64> {
    let mut digits = itoa::Buffer::new();
    let text: Cow<'_, str> = match value {
        // Integers (the usual case) as `Display` writes them, without allocating.
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Cow::Borrowed(digits.format(u)),
            (_, Some(i)) => Cow::Borrowed(digits.format(i)),
            _ => Cow::Owned(n.to_string()),
        },
        Value::String(s) => Cow::Borrowed(s),
        _ => return None,
    };
    crate::timefmt::decimal_to_ns(&text, unit.nanos())
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_mapping() -> JsonMapping {
        JsonMapping {
            measurement: "environment".into(),
            topic_tags: parse_topic_tags("_/district/_/sensor_id"),
            timestamp_field: Some("ts".into()),
            timestamp_unit: TimestampUnit::Ms,
            tag_keys: vec![],
            static_tags: BTreeMap::new(),
        }
    }

    #[test]
    fn environment_payload_maps_exactly() {
        let payload = br#"{"ts":1764059400123,"pm2_5":12.5,"pm10":30.25,"temperature":-3.5,"humidity":81,"noise_db":65.1}"#;
        let r = decode(&env_mapping(), "city/dong-xoai/env/s-0001", payload, 7).unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.measurement, "environment");
        assert_eq!(r.timestamp_ns, 1_764_059_400_123_000_000);
        assert_eq!(r.tags.len(), 2);
        assert_eq!(r.tags["district"], "dong-xoai");
        assert_eq!(r.tags["sensor_id"], "s-0001");
        assert_eq!(r.fields.len(), 5);
        assert_eq!(r.fields["pm2_5"], FieldValue::Float(12.5));
        assert_eq!(r.fields["humidity"], FieldValue::Float(81.0));
        assert_eq!(r.fields["temperature"], FieldValue::Float(-3.5));
    }

    #[test]
    fn the_buffer_path_gives_the_same_reading_and_leaves_arrays_and_short_topics() {
        let payload = br#"{"ts":1764059400123,"pm2_5":12.5,"pm10":30.25,"temperature":-3.5,"humidity":81,"noise_db":65.1}"#;
        let mut buf = ReadingBuf::default();
        let m = env_mapping();
        let fast = decode_one_into(&m, "city/dong-xoai/env/s-0001", payload, 7, &mut buf);
        assert_eq!(fast, Some(Ok(())));
        let general = decode(&m, "city/dong-xoai/env/s-0001", payload, 7).unwrap();
        assert_eq!(vec![buf.to_reading()], general);
        assert_eq!(decode_one_into(&m, "city/d", payload, 7, &mut buf), None);
        let array = br#"[{"ts":1,"v":1}]"#;
        assert_eq!(decode_one_into(&m, "a/b/c/d", array, 7, &mut buf), None);
        let bad = decode_one_into(&m, "a/b/c/d", br#"{"ts":1}"#, 7, &mut buf);
        assert_eq!(
            bad.map(|r| r.map_err(|e| e.label())),
            Some(Err("no_fields"))
        );
    }

    #[test]
    fn nested_tags_bools_strings_and_nulls() {
        let mut m = env_mapping();
        m.tag_keys = vec!["lane".into(), "meta_site".into()];
        m.timestamp_field = None;
        let payload = br#"{"lane":2,"meta":{"site":"ng-hue","ok":true},"wind":{"speed":3.5},"note":"x","gone":null,"vals":[1,2]}"#;
        let r = &decode(&m, "city/d/env/s", payload, 99).unwrap()[0];
        assert_eq!(r.timestamp_ns, 99);
        assert_eq!(r.tags["lane"], "2");
        assert_eq!(r.tags["meta_site"], "ng-hue");
        assert_eq!(r.fields["meta_ok"], FieldValue::Bool(true));
        assert_eq!(r.fields["wind_speed"], FieldValue::Float(3.5));
        assert_eq!(r.fields["note"], FieldValue::Str("x".into()));
        assert_eq!(r.fields["vals_1"], FieldValue::Float(2.0));
        assert!(!r.fields.contains_key("gone"));
    }

    #[test]
    fn timestamp_units_and_forms() {
        let mut m = env_mapping();
        for (unit, ts, expect) in [
            (TimestampUnit::S, "1700000000", 1_700_000_000_000_000_000i64),
            (TimestampUnit::S, "1700000000.25", 1_700_000_000_250_000_000),
            (
                TimestampUnit::Us,
                "\"1700000000000001\"",
                1_700_000_000_000_001_000,
            ),
            (
                TimestampUnit::Ns,
                "1700000000000000001",
                1_700_000_000_000_000_001,
            ),
        ] {
            m.timestamp_unit = unit;
            let payload = format!("{{\"ts\":{ts},\"v\":1}}");
            let r = &decode(&m, "a/b/c/d", payload.as_bytes(), 0).unwrap()[0];
            assert_eq!(r.timestamp_ns, expect, "{ts}");
        }
    }

    #[test]
    fn arrays_of_objects_give_several_readings() {
        let payload = br#"[{"ts":1,"v":1},{"ts":2,"v":2}]"#;
        let r = decode(&env_mapping(), "a/b/c/d", payload, 0).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].timestamp_ns, 2_000_000);
    }

    #[test]
    fn bad_payloads_are_rejected_with_reasons() {
        let m = env_mapping();
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "not_json"),
            (b"{\"ts\":1,\"pm2_5\":NaN}", "not_json"),
            (b"\xff\xfe{}", "not_json"),
            (b"{\"ts\":1,\"v\":\"\xff\"}", "not_json"),
            (b"42", "not_an_object"),
            (b"[]", "not_an_object"),
            (b"{\"ts\":1}", "no_fields"),
            (b"{\"pm2_5\":1}", "missing_timestamp"),
            (b"{\"ts\":\"soon\",\"v\":1}", "bad_timestamp"),
            (b"{\"ts\":1e300,\"v\":1}", "bad_timestamp"),
            (b"{\"ts\":1,\"v\":1e999}", "not_json"),
            (b"{\"ts\":1,\"time\":1}", "reserved_key"),
            (b"{\"ts\":1,\"note\":\"a\\nb\"}", "control_character"),
        ];
        for (payload, label) in cases {
            let e = decode(&m, "city/d/env/s", payload, 0).expect_err(label);
            assert_eq!(e.label(), label, "{}", String::from_utf8_lossy(payload));
        }
        let e = decode(&m, "city/d", b"{\"ts\":1,\"v\":1}", 0).unwrap_err();
        assert_eq!(e.label(), "topic_mismatch");
        let e = decode(&m, "city/d", b"{\"ts\":1,", 0).unwrap_err();
        assert_eq!(e.label(), "not_json");
    }

    #[test]
    fn hostile_tag_values_are_kept_or_refused_never_garbled() {
        let mut m = env_mapping();
        m.tag_keys = vec!["site".into()];
        let ok = br#"{"ts":1,"v":1,"site":"Le Loi, \"gate\" = 2"}"#;
        let r = &decode(&m, "a/b/c/d", ok, 0).unwrap()[0];
        assert_eq!(r.tags["site"], "Le Loi, \"gate\" = 2");
        let bad = br#"{"ts":1,"v":1,"site":"a\nb"}"#;
        assert_eq!(
            decode(&m, "a/b/c/d", bad, 0).unwrap_err().label(),
            "control_character"
        );
    }

    /// The decoder this one replaced: the payload parsed into a `serde_json::Value` tree first.
    /// Kept as the reference the streaming decoder must agree with.
    fn tree_decode(
        mapping: &JsonMapping,
        topic: &str,
        payload: &[u8],
        received_ns: i64,
    ) -> Result<Vec<Reading>, JsonError> {
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| JsonError::NotJson(e.to_string()))?;
        let base_tags = topic_and_static_tags(mapping, topic)?;
        let one = |obj: serde_json::Map<String, Value>| {
            let mut reading = Reading::new(mapping.measurement.clone(), received_ns);
            reading.tags = base_tags.clone();
            let mut timestamp: Option<Value> = None;
            let mut flat = Vec::new();
            for (key, value) in obj {
                if mapping.timestamp_field.as_deref() == Some(key.as_str()) {
                    timestamp = Some(value);
                } else {
                    flatten(key, value, &mut flat);
                }
            }
            let mut error = None;
            for (key, value) in flat {
                if mapping.tag_keys.contains(&key) {
                    let text = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    reading.tags.insert(key, text);
                    continue;
                }
                let field = match value {
                    Value::Number(n) => match n.as_f64() {
                        Some(f) if f.is_finite() => FieldValue::Float(f),
                        _ => {
                            error.get_or_insert(JsonError::NonFinite { field: key });
                            continue;
                        }
                    },
                    Value::Bool(b) => FieldValue::Bool(b),
                    Value::String(s) => FieldValue::Str(s),
                    _ => continue,
                };
                reading.fields.insert(key, field);
            }
            finish(mapping, &mut reading, timestamp, error).map(|()| reading)
        };
        match value {
            Value::Object(obj) => Ok(vec![one(obj)?]),
            Value::Array(items) if !items.is_empty() => items
                .into_iter()
                .map(|item| match item {
                    Value::Object(obj) => one(obj),
                    _ => Err(JsonError::NotAnObject),
                })
                .collect(),
            _ => Err(JsonError::NotAnObject),
        }
    }

    /// JSON values whose keys (no `_`) cannot flatten onto one another.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
            "[a-z \\\\\n\"é,=]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("(ts|time|site|[a-z0-9]{1,3})", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn same(a: &Result<Vec<Reading>, JsonError>, b: &Result<Vec<Reading>, JsonError>) -> bool {
        match (a, b) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn streaming_agrees_with_the_tree_decoder(value in any_json(), with_ts in proptest::bool::ANY) {
            let mut m = env_mapping();
            m.tag_keys = vec!["site".into(), "a".into(), "b_0".into()];
            if !with_ts {
                m.timestamp_field = None;
            }
            let payload = serde_json::to_vec(&value).unwrap();
            let streamed = decode(&m, "city/d/env/s", &payload, 5);
            let tree = tree_decode(&m, "city/d/env/s", &payload, 5);
            proptest::prop_assert!(same(&streamed, &tree), "{}\n{streamed:?}\n{tree:?}", String::from_utf8_lossy(&payload));
        }

        #[test]
        fn the_buffer_path_agrees_with_decode(value in any_json(), with_ts in proptest::bool::ANY, static_tag in proptest::bool::ANY) {
            let mut m = env_mapping();
            m.tag_keys = vec!["site".into(), "a".into(), "b_0".into()];
            if !with_ts {
                m.timestamp_field = None;
            }
            if static_tag {
                m.static_tags = BTreeMap::from([("district".to_owned(), "static".to_owned()), ("city".to_owned(), "dx".to_owned())]);
            }
            let payload = serde_json::to_vec(&value).unwrap();
            // A buffer that held another message first: nothing of it may leak into this one.
            let mut buf = ReadingBuf::default();
            let other = br#"{"ts":9,"site":"old","zz":1,"note":"left over"}"#;
            let _ = decode_one_into(&m, "city/o/env/o", other, 1, &mut buf);
            let general = decode(&m, "city/d/env/s", &payload, 5);
            match decode_one_into(&m, "city/d/env/s", &payload, 5, &mut buf) {
                None => proptest::prop_assert!(payload.first() != Some(&b'{'), "an object left to the general path"),
                Some(fast) => {
                    let fast = fast.map(|()| vec![buf.to_reading()]);
                    proptest::prop_assert!(same(&fast, &general), "{}\n{fast:?}\n{general:?}", String::from_utf8_lossy(&payload));
                }
            }
        }

        #[test]
        fn the_buffer_path_agrees_on_arbitrary_bytes(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            bytes.insert(0, b'{');
            let m = env_mapping();
            let mut buf = ReadingBuf::default();
            let general = decode(&m, "city/d/env/s", &bytes, 0);
            if let Some(fast) = decode_one_into(&m, "city/d/env/s", &bytes, 0, &mut buf) {
                let fast = fast.map(|()| vec![buf.to_reading()]);
                proptest::prop_assert!(same(&fast, &general));
            }
        }

        #[test]
        fn owning_the_tags_changes_nothing(value in any_json()) {
            let m = env_mapping();
            let payload = serde_json::to_vec(&value).unwrap();
            let tags = topic_and_static_tags(&m, "city/d/env/s").unwrap();
            let shared = decode_with_tags(&m, &tags, &payload, 5);
            let owned = decode_owning_tags(&m, tags, &payload, 5);
            proptest::prop_assert!(same(&shared, &owned));
        }

        #[test]
        fn streaming_agrees_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let m = env_mapping();
            let streamed = decode(&m, "city/d/env/s", &bytes, 0);
            let tree = tree_decode(&m, "city/d/env/s", &bytes, 0);
            proptest::prop_assert!(same(&streamed, &tree));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&env_mapping(), "city/d/env/s", &bytes, 0);
        }
    }
}
