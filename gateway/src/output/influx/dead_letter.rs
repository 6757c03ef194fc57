//! The dead-letter file: lines the store refused for good, kept as valid line protocol with
//! the store's reason and a UTC timestamp as `#` comments, synced before the batch is deleted.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;

use super::*;

impl InfluxSink {
    /// Appends refused lines to the dead-letter file and syncs it before returning, because the
    /// caller deletes the batch from the buffer afterwards.
    pub(super) async fn dead_letter(
        &self,
        lines: &[&[u8]],
        status: u16,
        message: &str,
    ) -> Result<(), SinkError> {
        let mut entry = Vec::new();
        let one_line_message: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = writeln!(
            entry,
            "# dead-lettered {} status={} error: {}",
            utc_timestamp(SystemTime::now()),
            status,
            one_line_message
        );
        for line in lines {
            entry.extend_from_slice(line);
            entry.push(b'\n');
        }
        let path = &self.dead_letter_path;
        let io_error = |source| SinkError::DeadLetter {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io_error)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(io_error)?;
        file.write_all(&entry).await.map_err(io_error)?;
        file.sync_data().await.map_err(io_error)?;
        metrics::counter!("output_dead_lettered_lines_total", "output" => self.output())
            .increment(u64::try_from(lines.len()).unwrap_or(u64::MAX));
        tracing::warn!(
            status,
            error = %one_line_message,
            path = %path.display(),
            lines = lines.len(),
            "the store refused lines; they are in the dead-letter file"
        );
        Ok(())
    }

    pub(super) async fn save_undecodable(
        &self,
        path: &std::path::Path,
        body: &[u8],
    ) -> Result<(), SinkError> {
        let io_error = |source| SinkError::DeadLetter {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io_error)?;
        }
        let mut file = tokio::fs::File::create(path).await.map_err(io_error)?;
        file.write_all(body).await.map_err(io_error)?;
        file.sync_data().await.map_err(io_error)
    }
}

/// `2026-11-25T08:31:34Z` (UTC, whole seconds).
fn utc_timestamp(time: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| format!("@{secs}s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_595_494);
        assert_eq!(utc_timestamp(t), "2026-11-25T08:31:34Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_825_600); // 2000-02-29T12:00:00Z
        assert_eq!(utc_timestamp(leap), "2000-02-29T12:00:00Z");
    }
}
