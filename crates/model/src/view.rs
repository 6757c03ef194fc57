//! What the checks and the encoder need of a reading, and a reusable reading that needs no
//! allocation per message.
//!
//! Why it exists: [`Reading`] owns a `String` per name and value in two `BTreeMap`s, about
//! fifteen small allocations for a typical sensor message. That is the right shape for the
//! decoders that build readings at leisure (serial frames, presets, aggregation windows), but
//! on the ingest hot path (an MQTT input with a JSON object per message, thousands a second)
//! the allocations were most of what a reading cost. [`ReadingView`] is the read side the
//! validation ([`validate`]), the limits, the series hash and the line-protocol encoder are
//! written against, and [`ReadingMut`] the two changes the pipeline makes (the `gateway` tag, a
//! clamped or spaced timestamp); both [`Reading`] and [`ReadingBuf`] implement them, so there is
//! one implementation of every rule and the two shapes cannot drift apart.
//!
//! [`ReadingBuf`] keeps every name and value in one text buffer and the tag and field sets as
//! sorted index vectors: cleared and refilled per message, it allocates only while it grows to
//! the largest message seen. Inserting a key that is already there replaces its value, exactly
//! as a `BTreeMap` insert does, so a decoder filling either shape gives the same reading.

use crate::{FieldValue, Reading};

/// A field value borrowed from wherever the reading keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldRef<'a> {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(&'a str),
}

impl FieldValue {
    /// This value, borrowed.
    pub fn as_field_ref(&self) -> FieldRef<'_> {
        match self {
            FieldValue::Float(v) => FieldRef::Float(*v),
            FieldValue::Int(v) => FieldRef::Int(*v),
            FieldValue::UInt(v) => FieldRef::UInt(*v),
            FieldValue::Bool(v) => FieldRef::Bool(*v),
            FieldValue::Str(v) => FieldRef::Str(v),
        }
    }
}

impl FieldRef<'_> {
    /// An owned copy.
    pub fn to_field_value(self) -> FieldValue {
        match self {
            FieldRef::Float(v) => FieldValue::Float(v),
            FieldRef::Int(v) => FieldValue::Int(v),
            FieldRef::UInt(v) => FieldValue::UInt(v),
            FieldRef::Bool(v) => FieldValue::Bool(v),
            FieldRef::Str(v) => FieldValue::Str(v.to_owned()),
        }
    }
}

/// A reading as the checks and the encoder read it: tags and fields sorted by key, keys unique.
pub trait ReadingView {
    fn measurement(&self) -> &str;
    /// Tags in key order.
    fn tags(&self) -> impl Iterator<Item = (&str, &str)>;
    /// Fields in key order.
    fn fields(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)>;
    fn tag_count(&self) -> usize;
    fn field_count(&self) -> usize;
    /// The value of tag `key`, if it has one.
    fn tag_value(&self, key: &str) -> Option<&str>;
    /// Nanoseconds since the Unix epoch.
    fn timestamp_ns(&self) -> i64;
}

/// The changes the pipeline makes to a reading on its way to the buffer.
pub trait ReadingMut: ReadingView {
    /// Sets tag `key` to `value` (replacing a value it had).
    fn insert_tag(&mut self, key: &str, value: &str);
    fn set_timestamp_ns(&mut self, ns: i64);
}

impl ReadingView for Reading {
    fn measurement(&self) -> &str {
        &self.measurement
    }
    fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    fn fields(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)> {
        self.fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_field_ref()))
    }
    fn tag_count(&self) -> usize {
        self.tags.len()
    }
    fn field_count(&self) -> usize {
        self.fields.len()
    }
    fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
    fn timestamp_ns(&self) -> i64 {
        self.timestamp_ns
    }
}

impl ReadingMut for Reading {
    fn insert_tag(&mut self, key: &str, value: &str) {
        match self.tags.get_mut(key) {
            Some(v) => value.clone_into(v),
            None => {
                self.tags.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    fn set_timestamp_ns(&mut self, ns: i64) {
        self.timestamp_ns = ns;
    }
}

/// Where a string sits in [`ReadingBuf`]'s text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

/// A field value in [`ReadingBuf`]: strings by their place in the text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(Span),
}

/// A reading that is refilled per message: one text buffer for every name and value, tag and
/// field sets as vectors sorted by key. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct ReadingBuf {
    text: String,
    measurement: Span,
    tags: Vec<(Span, Span)>,
    fields: Vec<(Span, Slot)>,
    timestamp_ns: i64,
}

impl ReadingBuf {
    /// Empties the reading (keeping its capacity) and starts a new one.
    pub fn reset(&mut self, measurement: &str, timestamp_ns: i64) {
        self.text.clear();
        self.tags.clear();
        self.fields.clear();
        self.measurement = self.push(measurement);
        self.timestamp_ns = timestamp_ns;
    }

    /// Sets field `key` to `value` (replacing a value it had, as a map insert would).
    pub fn insert_field(&mut self, key: &str, value: FieldRef<'_>) {
        let slot = match value {
            FieldRef::Float(v) => Slot::Float(v),
            FieldRef::Int(v) => Slot::Int(v),
            FieldRef::UInt(v) => Slot::UInt(v),
            FieldRef::Bool(v) => Slot::Bool(v),
            FieldRef::Str(s) => Slot::Str(self.push(s)),
        };
        match self.find(&self.fields, key) {
            Ok(i) => self.fields[i].1 = slot,
            Err(i) => {
                let k = self.push(key);
                self.fields.insert(i, (k, slot));
            }
        }
    }

    /// An owned [`Reading`] with the same contents.
    pub fn to_reading(&self) -> Reading {
        Reading {
            measurement: self.measurement().to_owned(),
            tags: self
                .tags()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            fields: self
                .fields()
                .map(|(k, v)| (k.to_owned(), v.to_field_value()))
                .collect(),
            timestamp_ns: self.timestamp_ns,
        }
    }

    fn push(&mut self, s: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(s);
        Span {
            start,
            end: self.text.len(),
        }
    }

    fn str(&self, span: Span) -> &str {
        self.text.get(span.start..span.end).unwrap_or_default()
    }

    /// Where `key` is in `set` (sorted by key), or where it would go.
    fn find<T>(&self, set: &[(Span, T)], key: &str) -> Result<usize, usize> {
        set.binary_search_by(|(k, _)| self.str(*k).cmp(key))
    }

    fn field_ref(&self, slot: Slot) -> FieldRef<'_> {
        match slot {
            Slot::Float(v) => FieldRef::Float(v),
            Slot::Int(v) => FieldRef::Int(v),
            Slot::UInt(v) => FieldRef::UInt(v),
            Slot::Bool(v) => FieldRef::Bool(v),
            Slot::Str(s) => FieldRef::Str(self.str(s)),
        }
    }
}

impl ReadingView for ReadingBuf {
    fn measurement(&self) -> &str {
        self.str(self.measurement)
    }
    fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags.iter().map(|&(k, v)| (self.str(k), self.str(v)))
    }
    fn fields(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)> {
        self.fields
            .iter()
            .map(|&(k, v)| (self.str(k), self.field_ref(v)))
    }
    fn tag_count(&self) -> usize {
        self.tags.len()
    }
    fn field_count(&self) -> usize {
        self.fields.len()
    }
    fn tag_value(&self, key: &str) -> Option<&str> {
        let i = self.find(&self.tags, key).ok()?;
        self.tags.get(i).map(|&(_, v)| self.str(v))
    }
    fn timestamp_ns(&self) -> i64 {
        self.timestamp_ns
    }
}

impl ReadingMut for ReadingBuf {
    fn insert_tag(&mut self, key: &str, value: &str) {
        let v = self.push(value);
        match self.find(&self.tags, key) {
            Ok(i) => self.tags[i].1 = v,
            Err(i) => {
                let k = self.push(key);
                self.tags.insert(i, (k, v));
            }
        }
    }
    fn set_timestamp_ns(&mut self, ns: i64) {
        self.timestamp_ns = ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_filled_like_a_reading_is_that_reading() {
        let mut buf = ReadingBuf::default();
        // Twice: the second fill must not see anything of the first.
        for round in 0..2 {
            buf.reset("env", 7 + round);
            buf.insert_tag("sensor_id", "s1");
            buf.insert_tag("district", "d");
            buf.insert_tag("sensor_id", "s2");
            buf.insert_field("pm10", FieldRef::Float(30.5));
            buf.insert_field("note", FieldRef::Str("x \"y\""));
            buf.insert_field("a", FieldRef::Int(-3));
            buf.insert_field("pm10", FieldRef::UInt(4));
            buf.insert_field("ok", FieldRef::Bool(true));
            let want = Reading::new("env", 7 + round)
                .tag("district", "d")
                .tag("sensor_id", "s2")
                .field("a", FieldValue::Int(-3))
                .field("note", FieldValue::Str("x \"y\"".into()))
                .field("ok", FieldValue::Bool(true))
                .field("pm10", FieldValue::UInt(4));
            assert_eq!(buf.to_reading(), want);
            assert_eq!(buf.tag_value("sensor_id"), Some("s2"));
            assert_eq!(buf.tag_value("gateway"), None);
            assert_eq!((buf.tag_count(), buf.field_count()), (2, 4));
        }
    }

    #[test]
    fn insert_tag_replaces_as_a_map_does() {
        let mut r = Reading::new("m", 1).tag("gateway", "spoofed");
        r.insert_tag("gateway", "gw-1");
        r.insert_tag("a", "b");
        assert_eq!(r.tag_value("gateway"), Some("gw-1"));
        assert_eq!(r.tags.len(), 2);
    }
}
