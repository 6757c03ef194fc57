//! MQTT input: one broker connection per `[[inputs.mqtt]]`, acknowledging a message only once
//! its readings are durable.
//!
//! Three parts, each with one job:
//! - [`session`]: the MQTT 3.1.1 session as a pure state machine (connection generations, acks in
//!   order and only after the commit, duplicates, keep-alive, backpressure bounds, stall
//!   detection), unit-tested without a network;
//! - [`task`]: the event loop that moves bytes between the socket and the session and never
//!   waits on the disk; [`connection`] opens the TCP/TLS stream;
//! - [`committer`]: decodes, stamps, encodes and appends each group to the durable buffer, then
//!   reports it back so the session may send its PUBACKs in one write;
//! - [`held`]: the record of the topic filters the broker's persistent session holds, so a topic
//!   added or removed in the config (by a reload or a restart) is subscribed or unsubscribed on a
//!   resumed session.
//!
//! The session is persistent (`clean_session = false`), so a message whose readings are not yet
//! durable is redelivered by the broker after a crash or a lost connection. Rejected messages
//! (not decodable, too large, can never be stored) are counted and acked: they would never get
//! better. Between connection and committer, messages are bounded by count
//! ([`MAX_OUTSTANDING`]) and bytes ([`MAX_OUTSTANDING_BYTES`]): at the bound the connection stops
//! reading the socket, TCP pushes back on the broker, and memory stays flat.
//!
//! We drive `rumqttc`'s packet codec (`rumqttc::mqttbytes`) from our own loop rather than its
//! event loop, which writes and flushes each request on its own (one syscall per PUBACK), takes
//! at most one queued request per poll while incoming packets keep coming, and reuses packet ids
//! of an old connection for acks on a new one.

pub mod committer;
pub mod connection;
pub mod held;
pub mod session;
pub mod task;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

pub mod config;
use crate::pipeline::Ingest;
use crate::secret::resolve_secret;
use crate::shutdown::Shutdown;
use config::parse_mqtt_url;
pub use config::MqttInputConfig;

/// Messages handed to the committer and not yet committed, at most.
pub const MAX_OUTSTANDING: usize = 8192;
/// Payload bytes handed to the committer and not yet committed, at most.
pub const MAX_OUTSTANDING_BYTES: usize = 8 << 20;
/// Largest MQTT packet read at all. Larger packets cannot be received (and so cannot be
/// acked); set the broker's `message_size_limit` below this.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Messages outstanding with no commit for this long is reported as a stall.
pub const STALL_AFTER: Duration = Duration::from_secs(15);

/// Errors that stop an input from starting (bad TLS files, secrets).
#[derive(Debug, thiserror::Error)]
pub enum MqttInputError {
    #[error("input {input}: {message}")]
    Setup { input: String, message: String },
}

/// Runs one MQTT input until `shutdown` turns true; then stops taking messages, commits and acks
/// what it holds, and disconnects.
pub async fn run_mqtt_input(
    cfg: MqttInputConfig,
    index: usize,
    ingest: Ingest,
    data_dir: std::path::PathBuf,
    shutdown: Shutdown,
) -> Result<(), MqttInputError> {
    let (_keep, filters) = watch::channel(filters_of(&cfg));
    run_mqtt_input_with_filters(cfg, index, ingest, data_dir, shutdown, filters).await
}

/// [`run_mqtt_input`] whose topic filters follow `filters` (a reload that changes only the
/// topics or the QoS of an input sends them here: no reconnect, nothing in flight disturbed).
pub async fn run_mqtt_input_with_filters(
    cfg: MqttInputConfig,
    index: usize,
    ingest: Ingest,
    data_dir: std::path::PathBuf,
    shutdown: Shutdown,
    filters: watch::Receiver<Vec<(String, QoS)>>,
) -> Result<(), MqttInputError> {
    let name = input_name(&cfg, index);
    let span = tracing::info_span!("mqtt", input = %name, url = %cfg.url);
    run(cfg, name, ingest, data_dir, shutdown, filters)
        .instrument(span)
        .await
}

/// The input's name in logs, metrics and status: its `name`, else `mqtt<index>`.
pub fn input_name(cfg: &MqttInputConfig, index: usize) -> String {
    cfg.name.clone().unwrap_or_else(|| format!("mqtt{index}"))
}

/// The topic filters and QoS an input's config asks for.
pub fn filters_of(cfg: &MqttInputConfig) -> Vec<(String, QoS)> {
    cfg.topics
        .iter()
        .map(|t| (t.clone(), qos(cfg.qos)))
        .collect()
}

async fn run(
    cfg: MqttInputConfig,
    name: String,
    ingest: Ingest,
    data_dir: std::path::PathBuf,
    shutdown: Shutdown,
    filters: watch::Receiver<Vec<(String, QoS)>>,
) -> Result<(), MqttInputError> {
    let setup = |message: String| MqttInputError::Setup {
        input: name.clone(),
        message,
    };
    let (mut session_cfg, endpoint) = settings(&cfg, &name).map_err(setup)?;
    let held = held::HeldFile::new(
        &data_dir,
        &name,
        format!("{}:{}", endpoint.host, endpoint.port),
        cfg.client_id.clone(),
    );
    session_cfg.held = held.load();
    let max_packet = MAX_PACKET.max(cfg.max_payload_bytes + 65_536);
    let aggregation = committer::aggregation(&cfg, &name, &data_dir).map_err(setup)?;
    let status = ingest.status().clone();
    status.register(&name, crate::status::InputKind::Mqtt, &cfg.url);

    // The session keeps outstanding messages below MAX_OUTSTANDING, so the queue never fills.
    let (handoff, queue) = mpsc::channel(MAX_OUTSTANDING + 16);
    let (done_tx, completions) = mpsc::channel(256);
    let (connected_tx, connected_rx) = watch::channel(None);
    let committer =
        committer::Committer::from_config(&cfg, &name, ingest, aggregation).map_err(setup)?;
    let committer =
        tokio::spawn(committer::run(queue, done_tx, committer, connected_rx).in_current_span());
    let session = session::Session::new(session_cfg, std::time::Instant::now());
    let w_name = name.clone();
    task::run(
        session,
        task::Wiring {
            name,
            endpoint,
            max_packet,
            completions,
            connected_tx,
            status: status.clone(),
            shutdown,
            held,
            filters,
        },
        handoff,
    )
    .await;
    status.unregister(&w_name);
    // The loop has waited for the committer's last results (or given up); it is done or about
    // to be, and holds nothing that is acked.
    if tokio::time::timeout(Duration::from_secs(2), committer)
        .await
        .is_err()
    {
        tracing::warn!(
            "committer still busy at shutdown; its messages stay unacked for redelivery"
        );
    }
    Ok(())
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The session's settings and the broker's address from the config (secrets and TLS files read
/// here, so a bad one stops the input at start with its name).
fn settings(
    cfg: &MqttInputConfig,
    name: &str,
) -> Result<(session::SessionConfig, connection::Endpoint), String> {
    let addr = parse_mqtt_url(&cfg.url)?;
    let password = resolve_secret(
        &format!("{name}.password"),
        cfg.password_env.as_deref(),
        cfg.password_file.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let login = match (&cfg.username, password) {
        (Some(user), p) => Some((
            user.clone(),
            p.as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        )),
        (None, Some(_)) => return Err("a password is configured but no username".into()),
        (None, None) => None,
    };
    let tls = if addr.tls {
        let config = crate::tls::client_config(crate::tls::ClientTlsFiles {
            ca_file: cfg.ca_file.as_deref(),
            client_cert_file: cfg.client_cert_file.as_deref(),
            client_key_file: cfg.client_key_file.as_deref(),
        })
        .map_err(|e| e.to_string())?;
        Some(Arc::new(config))
    } else {
        None
    };
    let keep_alive = Duration::from_secs(cfg.keep_alive_s.max(5));
    let session = session::SessionConfig {
        client_id: cfg.client_id.clone(),
        keep_alive,
        login,
        filters: filters_of(cfg),
        max_outstanding: MAX_OUTSTANDING,
        max_outstanding_bytes: MAX_OUTSTANDING_BYTES,
        connack_timeout: Duration::from_secs(10),
        stall_after: STALL_AFTER,
        held: None,
    };
    let endpoint = connection::Endpoint {
        host: addr.host,
        port: addr.port,
        tls,
        connect_timeout: Duration::from_secs(10),
    };
    Ok((session, endpoint))
}
