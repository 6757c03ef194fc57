//! The topic filters a broker's persistent session holds for one input, kept in
//! `<data_dir>/mqtt/<input>.subscriptions.json` across restarts and reloads.
//!
//! Why it exists: with `clean_session = false` the broker keeps the subscriptions of the last
//! run, and MQTT 3.1.1 has no way to ask it which ones. Without this record a topic added to the
//! config would never be subscribed on a resumed session, and a removed one would go on being
//! delivered; re-subscribing everything on every connect instead would make the broker re-send
//! every retained message each time. The session ([`super::session`]) diffs the config against
//! this record; the record names the broker and client id it belongs to, so a file left by
//! another broker or client id counts as unknown (everything is subscribed once).

use std::io::Write;
use std::path::{Path, PathBuf};

use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};

/// What is stored.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Record {
    /// `host:port` of the broker.
    broker: String,
    client_id: String,
    /// Filter and QoS (0, 1 or 2).
    filters: Vec<(String, u8)>,
}

/// The record of one input.
#[derive(Debug, Clone)]
pub struct HeldFile {
    path: PathBuf,
    broker: String,
    client_id: String,
}

impl HeldFile {
    /// The record of input `name` (sanitized for the file name) on `broker` as `client_id`.
    pub fn new(data_dir: &Path, name: &str, broker: String, client_id: String) -> Self {
        HeldFile {
            path: data_dir.join("mqtt").join(format!(
                "{}.subscriptions.json",
                super::committer::sanitize(name)
            )),
            broker,
            client_id,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The filters last confirmed by this broker for this client id; `None` when there is no
    /// record, it belongs to another broker or client id, or it cannot be read (said in the log:
    /// everything is then subscribed once, which is safe).
    pub fn load(&self) -> Option<Vec<(String, QoS)>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "cannot read the record of the broker's subscriptions ({e}); subscribing every topic again");
                return None;
            }
        };
        let record: Record = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "the record of the broker's subscriptions is damaged ({e}); subscribing every topic again");
                return None;
            }
        };
        if record.broker != self.broker || record.client_id != self.client_id {
            return None;
        }
        record
            .filters
            .into_iter()
            .map(|(path, q)| rumqttc::mqttbytes::qos(q).ok().map(|q| (path, q)))
            .collect()
    }

    /// Durably replaces the record (temp file, fsync, rename, fsync of the directory).
    pub fn store(&self, filters: &[(String, QoS)]) -> std::io::Result<()> {
        let record = Record {
            broker: self.broker.clone(),
            client_id: self.client_id.clone(),
            filters: filters.iter().map(|(p, q)| (p.clone(), *q as u8)).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_belongs_to_one_broker_and_client_id() {
        let dir = tempfile::tempdir().unwrap();
        let file = HeldFile::new(dir.path(), "env/stations", "b:1883".into(), "gw".into());
        assert_eq!(file.load(), None);
        let filters = vec![
            ("city/+/env/#".to_string(), QoS::AtLeastOnce),
            ("cams/#".to_string(), QoS::AtMostOnce),
        ];
        file.store(&filters).unwrap();
        assert!(file
            .path()
            .ends_with("mqtt/env_stations.subscriptions.json"));
        assert_eq!(file.load(), Some(filters.clone()));
        let other_broker = HeldFile::new(dir.path(), "env/stations", "c:1883".into(), "gw".into());
        assert_eq!(other_broker.load(), None);
        let other_client = HeldFile::new(dir.path(), "env/stations", "b:1883".into(), "gw2".into());
        assert_eq!(other_client.load(), None);
    }

    #[test]
    fn a_damaged_record_is_unknown_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = HeldFile::new(dir.path(), "m", "b:1883".into(), "gw".into());
        std::fs::create_dir_all(dir.path().join("mqtt")).unwrap();
        std::fs::write(file.path(), b"{\"broker\": \"b:18").unwrap();
        assert_eq!(file.load(), None);
        std::fs::write(
            file.path(),
            br#"{"broker":"b:1883","client_id":"gw","filters":[["a",7]]}"#,
        )
        .unwrap();
        assert_eq!(
            file.load(),
            None,
            "an impossible QoS makes the record unknown"
        );
    }
}
