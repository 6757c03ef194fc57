//! Finds where in the TOML text a problem is: the line, and the dotted key path.
//!
//! `toml` reports a byte span for parse and type errors; our own checks report a key path.
//! [`locate`] turns either into both, using `toml_edit`'s span-keeping parser.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

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
    let doc = ImDocument::parse(text).ok();
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

/// Byte position of the deepest existing item along `path` (so a missing key points at its table).
fn find_path(root: &Table, path: &str) -> Option<usize> {
    let mut table = root;
    let mut pos = root.span().map(|s| s.start);
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((k, item)) = table.get_key_value(name) else {
            return pos;
        };
        pos = k.span().or_else(|| item.span()).map(|s| s.start).or(pos);
        match (item, index) {
            (Item::Table(t), None) => {
                table = t;
            }
            (Item::ArrayOfTables(a), Some(i)) => match a.get(i) {
                Some(t) => {
                    pos = t.span().map(|s| s.start).or(pos);
                    table = t;
                }
                None => return pos,
            },
            (Item::Value(Value::InlineTable(_)), _) | (_, _) => return pos,
        }
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
