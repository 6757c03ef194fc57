//! `format = "csv"`: payloads of comma-separated rows (data loggers, counters that post a file's
//! worth of rows), one reading per row.
//!
//! ```toml
//! [inputs.mqtt.csv]
//! header = true                      # the first row names the columns (default)
//! # columns = ["time", "station", "pm25", "pm10"]   # names; required with header = false
//! separator = ","                    # one ASCII character ("\t", ";")
//! time_column = "time"               # without it: the time of receipt
//! time_format = "%Y-%m-%d %H:%M:%S"  # as for a JSON mapping (unix_s .. rfc3339 or a layout)
//! timezone = "Asia/Ho_Chi_Minh"
//! tag_columns = ["station"]
//! skip_columns = ["checksum"]
//! drop_values = [-99, "NA"]
//! ```
//!
//! Cells are trimmed; a cell that is a number is a float field, any other cell a string field;
//! empty cells and `drop_values` are left out. With `columns` and a header, `columns` name
//! the cells and the header row is skipped. A row with more cells than names is refused
//! (`extra_columns`) and the other rows are kept.
//!
//! [`Csv::decode_line`] decodes one line on its own with the configured `columns`, for
//! protocols that deliver a record at a time (the serial `lines` protocol).

use std::collections::BTreeMap;

use ::csv::{ByteRecord, ReaderBuilder, Trim};
use serde::Deserialize;

use ioc_model::{FieldValue, Reading};

use crate::payload::{Decoded, Rejection, SpecError};
use crate::scalar::{self, DropValues};
use crate::timefmt::TimeFormat;

/// The `csv` section of an input, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    #[serde(default = "yes")]
    pub header: bool,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default = "comma")]
    pub separator: String,
    pub time_column: Option<String>,
    pub time_format: Option<String>,
    pub timezone: Option<String>,
    #[serde(default)]
    pub tag_columns: Vec<String>,
    #[serde(default)]
    pub skip_columns: Vec<String>,
    #[serde(default)]
    pub drop_values: DropValues,
}

fn yes() -> bool {
    true
}
fn comma() -> String {
    ",".into()
}

impl Default for CsvConfig {
    fn default() -> Self {
        CsvConfig {
            header: true,
            columns: Vec::new(),
            separator: comma(),
            time_column: None,
            time_format: None,
            timezone: None,
            tag_columns: Vec::new(),
            skip_columns: Vec::new(),
            drop_values: DropValues::default(),
        }
    }
}

/// What a column is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Field,
    Tag,
    Time,
    Skip,
}

/// A compiled CSV config; built once per input.
#[derive(Debug, Clone)]
pub struct Csv {
    measurement: String,
    header: bool,
    separator: u8,
    /// Configured names with their roles (empty: the header names them).
    columns: Vec<(String, Role)>,
    time_column: Option<String>,
    time: TimeFormat,
    tag_columns: Vec<String>,
    skip_columns: Vec<String>,
    drop_values: DropValues,
}

impl Csv {
    /// Compiles a CSV config for readings named `measurement`. Error keys are relative to the
    /// `csv` section.
    pub fn compile(cfg: &CsvConfig, measurement: &str) -> Result<Self, SpecError> {
        let separator = separator_byte(&cfg.separator)?;
        if !cfg.header && cfg.columns.is_empty() {
            return Err(SpecError::new(
                "columns",
                "without a header row (header = false) the columns must be named: columns = [\"time\", \"pm25\", ...]",
            ));
        }
        let named = |key: &str, name: &str| -> Result<(), SpecError> {
            if cfg.columns.is_empty() || cfg.columns.iter().any(|c| c == name) {
                Ok(())
            } else {
                Err(SpecError::new(
                    key,
                    format!("{name:?} is not one of the columns {:?}", cfg.columns),
                ))
            }
        };
        match &cfg.time_column {
            Some(t) => named("time_column", t)?,
            None => crate::timefmt::refuse_unused(
                "time_column",
                cfg.time_format.as_deref(),
                cfg.timezone.as_deref(),
            )?,
        }
        for t in &cfg.tag_columns {
            named("tag_columns", t)?;
        }
        for t in &cfg.skip_columns {
            named("skip_columns", t)?;
        }
        for (i, c) in cfg.columns.iter().enumerate() {
            if c.trim().is_empty() && !cfg.skip_columns.contains(c) {
                return Err(SpecError::new(
                    format!("columns[{i}]"),
                    "a column needs a name (list it in skip_columns to ignore it)",
                ));
            }
        }
        let time = TimeFormat::compile(cfg.time_format.as_deref(), cfg.timezone.as_deref())?;
        let mut csv = Csv {
            measurement: measurement.to_owned(),
            header: cfg.header,
            separator,
            columns: Vec::new(),
            time_column: cfg.time_column.clone(),
            time,
            tag_columns: cfg.tag_columns.clone(),
            skip_columns: cfg.skip_columns.clone(),
            drop_values: cfg.drop_values.clone(),
        };
        csv.columns = cfg
            .columns
            .iter()
            .map(|c| (c.clone(), csv.role(c)))
            .collect();
        Ok(csv)
    }

    fn role(&self, name: &str) -> Role {
        if self.time_column.as_deref() == Some(name) {
            Role::Time
        } else if self.skip_columns.iter().any(|c| c == name) {
            Role::Skip
        } else if self.tag_columns.iter().any(|c| c == name) {
            Role::Tag
        } else {
            Role::Field
        }
    }

    fn reader<'a>(&self, bytes: &'a [u8]) -> ::csv::Reader<&'a [u8]> {
        reader(self.separator, bytes)
    }

    /// Decodes one payload, one reading per row; `base_tags` are the input's static and topic
    /// tags. Bad rows are rejected with a label, the others kept.
    pub fn decode(
        &self,
        base_tags: &BTreeMap<String, String>,
        payload: &[u8],
        received_ns: i64,
    ) -> Decoded {
        let mut out = Decoded::default();
        let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
        let mut reader = self.reader(payload);
        let mut record = ByteRecord::new();
        let mut header: Option<Vec<(String, Role)>> = None;
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    out.reject("bad_csv", e);
                    break;
                }
            }
            let line = record.position().map_or(0, |p| p.line());
            if self.header && header.is_none() {
                match self.header_columns(&record) {
                    Ok(h) => header = Some(h),
                    Err(r) => {
                        out.rejected.push(r);
                        return out;
                    }
                }
                continue;
            }
            let columns = header.as_deref().unwrap_or(&self.columns);
            match self.row(columns, &record, base_tags, received_ns) {
                Ok(r) => out.readings.push(r),
                Err(mut r) => {
                    r.reason = format!("line {line}: {}", r.reason);
                    out.rejected.push(r);
                }
            }
        }
        if out.readings.is_empty() && out.rejected.is_empty() {
            out.reject("no_fields", "payload has no data row");
        }
        out
    }

    /// Decodes one line of text as one row with the configured `columns` (no header), for
    /// protocols that deliver one record at a time.
    pub fn decode_line(
        &self,
        base_tags: &BTreeMap<String, String>,
        line: &str,
        received_ns: i64,
    ) -> Result<Reading, Rejection> {
        let reject = |label: &'static str, reason: String| Rejection { label, reason };
        if self.columns.is_empty() {
            return Err(reject(
                "no_columns",
                "a line needs configured columns".into(),
            ));
        }
        let mut reader = self.reader(line.as_bytes());
        let mut record = ByteRecord::new();
        match reader.read_byte_record(&mut record) {
            Ok(true) => self.row(&self.columns, &record, base_tags, received_ns),
            Ok(false) => Err(reject("no_fields", "empty line".into())),
            Err(e) => Err(reject("bad_csv", e.to_string())),
        }
    }

    fn header_columns(&self, record: &ByteRecord) -> Result<Vec<(String, Role)>, Rejection> {
        if !self.columns.is_empty() {
            return Ok(self.columns.clone());
        }
        let mut names = Vec::with_capacity(record.len());
        for cell in record.iter() {
            let name = std::str::from_utf8(cell).map_err(|_| Rejection {
                label: "not_utf8",
                reason: "header row is not UTF-8".into(),
            })?;
            names.push((name.to_owned(), self.role(name)));
        }
        if let Some(t) = &self.time_column {
            if !names.iter().any(|(n, _)| n == t) {
                return Err(Rejection {
                    label: "missing_time",
                    reason: format!("header row has no time column {t:?}"),
                });
            }
        }
        Ok(names)
    }

    fn row(
        &self,
        columns: &[(String, Role)],
        record: &ByteRecord,
        base_tags: &BTreeMap<String, String>,
        received_ns: i64,
    ) -> Result<Reading, Rejection> {
        let reject = |label: &'static str, reason: String| Rejection { label, reason };
        if record.len() > columns.len() {
            return Err(reject(
                "extra_columns",
                format!(
                    "{} cells but {} columns are named",
                    record.len(),
                    columns.len()
                ),
            ));
        }
        let mut reading = Reading::new(self.measurement.as_str(), received_ns);
        reading.tags = base_tags.clone();
        let mut time_seen = false;
        for ((name, role), cell) in columns.iter().zip(record.iter()) {
            if *role == Role::Skip || cell.is_empty() {
                continue;
            }
            let text = std::str::from_utf8(cell)
                .map_err(|_| reject("not_utf8", format!("column {name:?} is not UTF-8")))?;
            match role {
                Role::Skip => {}
                Role::Time => {
                    time_seen = true;
                    reading.timestamp_ns = self
                        .time
                        .parse_text(text)
                        .map_err(|e| reject("bad_time", format!("column {name:?}: {e}")))?;
                }
                Role::Tag => {
                    reading.tags.insert(name.clone(), text.to_owned());
                }
                Role::Field => {
                    if self.drop_values.drops_text(text) {
                        continue;
                    }
                    let value = match scalar::parse_number(text) {
                        Some(n) => FieldValue::Float(n),
                        None => FieldValue::Str(text.to_owned()),
                    };
                    reading.fields.insert(name.clone(), value);
                }
            }
        }
        if let (Some(t), false) = (&self.time_column, time_seen) {
            return Err(reject(
                "missing_time",
                format!("time column {t:?} is empty"),
            ));
        }
        if reading.fields.is_empty() {
            return Err(reject("no_fields", "row has no usable cell".into()));
        }
        reading
            .validate()
            .map_err(|e| reject(e.label(), e.to_string()))?;
        Ok(reading)
    }
}

/// The byte of a `separator` key: one ASCII character other than a quote or a line end. The
/// error is for the `separator` key.
pub fn separator_byte(separator: &str) -> Result<u8, SpecError> {
    match separator.as_bytes() {
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Ok(*b),
        _ => Err(SpecError::new(
            "separator",
            format!(
                "{separator:?} is not a separator: one ASCII character such as \",\", \";\" or \"\\t\""
            ),
        )),
    }
}

/// The one CSV reader set-up of the crate: quoted cells, cells trimmed, rows of any length.
fn reader(separator: u8, bytes: &[u8]) -> ::csv::Reader<&[u8]> {
    ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(Trim::All)
        .delimiter(separator)
        .buffer_capacity(bytes.len().clamp(64, 8 * 1024))
        .from_reader(bytes)
}

/// Reads the first row of `line` into `record`, cells trimmed and unquoted as `format = "csv"`
/// reads them (the serial `lines` protocol's `columns`). `Ok(false)` if there is no row.
pub fn read_cells(separator: u8, line: &[u8], record: &mut ByteRecord) -> Result<bool, String> {
    reader(separator, line)
        .read_byte_record(record)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
