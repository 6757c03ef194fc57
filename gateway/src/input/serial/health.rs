//! A port's state changes (up, down, why) told to the log, the gauges and the status registry
//! together, so they can never disagree.

use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Port state changes: logs, gauges and the status registry together.
pub(super) struct PortHealth {
    port: String,
    down_since: Option<SystemTime>,
    status: StatusRegistry,
}

/// The port leaves the status with its input (stopped, or removed by a reload).
impl Drop for PortHealth {
    fn drop(&mut self) {
        self.status.unregister_port(&self.port);
    }
}

impl PortHealth {
    pub(super) fn new(port: &str, path: &Path, status: StatusRegistry) -> Self {
        let now = SystemTime::now();
        status.register_port(port, path, now);
        metrics::gauge!("serial_port_up", "port" => port.to_owned()).set(0.0);
        metrics::gauge!("serial_port_down_since_seconds", "port" => port.to_owned())
            .set(unix_seconds(now));
        PortHealth {
            port: port.to_owned(),
            down_since: Some(now),
            status,
        }
    }

    pub(super) fn up(&mut self) {
        if let Some(since) = self.down_since.take() {
            let secs = since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
            tracing::info!(port = %self.port, down_for_s = format!("{secs:.1}"), "serial port open");
        }
        metrics::gauge!("serial_port_up", "port" => self.port.clone()).set(1.0);
        metrics::gauge!("serial_port_down_since_seconds", "port" => self.port.clone()).set(0.0);
        self.status.update_port(&self.port, |s| {
            s.up = true;
            s.down_since = None;
            s.up_since = Some(SystemTime::now());
            s.last_error = None;
        });
    }

    /// The port is (still) down because of `error`. Logs a warning when it goes down, and at
    /// most one reminder per backoff step after that.
    pub(super) fn down(&mut self, error: &str) {
        let since = *self.down_since.get_or_insert_with(SystemTime::now);
        let since_unix = unix_seconds(since);
        let down_for = since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        tracing::warn!(
            port = %self.port,
            down_since_unix = since_unix as u64,
            down_for_s = down_for,
            "serial port down: {error}"
        );
        metrics::gauge!("serial_port_up", "port" => self.port.clone()).set(0.0);
        metrics::gauge!("serial_port_down_since_seconds", "port" => self.port.clone())
            .set(since_unix);
        let error = error.to_owned();
        self.status.update_port(&self.port, |s| {
            s.up = false;
            s.down_since = Some(since);
            s.up_since = None;
            s.last_error = Some(error);
        });
    }
}
