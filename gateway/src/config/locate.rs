//! Finds where in the TOML text a problem is: the line, and the dotted key path.
//!
//! `toml` reports a byte span for parse and type errors; our own checks report a key path.
//! [`locate`] turns either into both, using `toml_edit`'s span-keeping parser.

use std::ops::Range;

use toml_edit::{Document, InlineTable, Item, Table, Value};

/// Where a config problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// Dotted key path such as `inputs.mqtt[0].qos`, when one could be found.
    pub key: Option<String>,
    /// The text of that line, trimmed.
    pub snippet: Option<String>,
}

fn line_of(text: &str, pos: usize) -> usize {
    let end = pos.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Locates a problem by byte span (from the parser) or by key path (from validation).
pub fn locate(text: &str, span: Option<Range<usize>>, key: Option<&str>) -> Location {
    let doc = Document::parse(text).ok();
    let pos = match (&doc, key, &span) {
        (Some(doc), Some(key), _) => find_path(doc, key),
        (_, _, Some(span)) => Some(span.start),
        _ => None,
    };
    let found_key = match (&doc, key, &span) {
        (_, Some(k), _) => Some(k.to_owned()),
        (Some(doc), None, Some(span)) => {
            let mut best = None;
            deepest_key_at(doc, String::new(), span.start, &mut best);
            best
        }
        _ => None,
    };
    let line = pos.map(|p| line_of(text, p)).unwrap_or(1);
    let snippet = pos
        .and_then(|_| text.lines().nth(line - 1))
        .map(|l| l.trim().to_owned());
    Location {
        line,
        key: found_key,
        snippet: snippet.filter(|s| !s.is_empty()),
    }
}

/// Where a path step can go on from: a table, an inline table (`fields = { speed = { .. } }`),
/// or a value with nothing inside.
enum Node<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
    Leaf,
}

/// Byte position of the deepest existing item along `path` (so a missing key points at its
/// table). Steps go into tables, arrays of tables (`mqtt[0]`), inline tables and arrays
/// (`columns[1]`), so keys like `inputs.mqtt[0].mapping.fields.speed.path` are found.
fn find_path(root: &Table, path: &str) -> Option<usize> {
    let start = |s: Option<Range<usize>>| s.map(|s| s.start);
    let mut pos = start(root.span());
    let mut node = Node::Table(root);
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let value = match node {
            Node::Table(t) => {
                let Some((k, item)) = t.get_key_value(name) else {
                    return pos;
                };
                pos = start(k.span()).or(start(item.span())).or(pos);
                match (item, index) {
                    (Item::Table(t), None) => {
                        node = Node::Table(t);
                        continue;
                    }
                    (Item::ArrayOfTables(a), Some(i)) => match a.get(i) {
                        Some(t) => {
                            pos = start(t.span()).or(pos);
                            node = Node::Table(t);
                            continue;
                        }
                        None => return pos,
                    },
                    (Item::Value(v), _) => v,
                    _ => return pos,
                }
            }
            Node::Inline(t) => {
                let Some((k, v)) = t.get_key_value(name) else {
                    return pos;
                };
                pos = start(k.span()).or(start(v.span())).or(pos);
                match v.as_value() {
                    Some(v) => v,
                    None => return pos,
                }
            }
            Node::Leaf => return pos,
        };
        let value = match (value, index) {
            (Value::Array(a), Some(i)) => match a.get(i) {
                Some(v) => {
                    pos = start(v.span()).or(pos);
                    v
                }
                None => return pos,
            },
            (v, _) => v,
        };
        node = match value {
            Value::InlineTable(t) => Node::Inline(t),
            _ => Node::Leaf,
        };
    }
    pos
}

fn deepest_key_at(table: &Table, prefix: String, pos: usize, best: &mut Option<String>) {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        let contains = |r: Option<Range<usize>>| {
            r.is_some_and(|r| r.start <= pos && pos < r.end.max(r.start + 1))
        };
        match item {
            Item::Table(t) => deepest_key_at(t, path, pos, best),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    deepest_key_at(t, format!("{path}[{i}]"), pos, best);
                }
            }
            _ => {
                if contains(key.span()) || contains(item.span()) {
                    *best = Some(path);
                }
            }
        }
    }
}
