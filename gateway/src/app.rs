//! Starts and stops a whole gateway from a [`Config`]: buffer, output, inputs, shutdown.
//!
//! Shutdown order on SIGTERM/SIGINT (or when an input fails to start), each stage with its own
//! deadline so a hung disk or a slow HTTP client cannot keep the process up for ever:
//! 1. inputs stop taking messages and commit what they hold, their acks follow
//!    ([`INPUTS_DEADLINE`]; an input still busy then is aborted, its unacked messages are
//!    redelivered by the broker or resent by the node);
//! 2. the buffer writer flushes and stops ([`BUFFER_DEADLINE`]);
//! 3. the forwarder abandons its in-flight batch, which stays in the buffer and is re-sent next
//!    time ([`FORWARDER_DEADLINE`]);
//! 4. the HTTP server stops, live streams end ([`HTTP_DEADLINE`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tokio::task::{JoinHandle, JoinSet};

use crate::buffer::{self, BufferConfig, BufferReader, BufferWriter};
use crate::config::{resolve_secret, Config, InfluxApi};
use crate::output::{Api, InfluxSink, InfluxSinkConfig};
use crate::pipeline::{run_forwarder, ForwarderConfig, Ingest};
use crate::shutdown::Shutdown;

/// How long the inputs get to commit and acknowledge what they hold.
pub const INPUTS_DEADLINE: Duration = Duration::from_secs(15);
/// How long the buffer writer gets to flush its last group to disk.
pub const BUFFER_DEADLINE: Duration = Duration::from_secs(10);
/// How long the forwarder gets to put down its in-flight batch.
pub const FORWARDER_DEADLINE: Duration = Duration::from_secs(5);
/// How long the HTTP server gets to finish its responses.
pub const HTTP_DEADLINE: Duration = Duration::from_secs(5);

/// Builds the sink's settings from `[output.influxdb]`, resolving secrets.
pub fn sink_config(config: &Config) -> anyhow::Result<InfluxSinkConfig> {
    let o = &config.output.influxdb;
    let api = match o.api {
        InfluxApi::V1 => Api::V1,
        InfluxApi::V2 => Api::V2,
    };
    let mut s = InfluxSinkConfig::new(o.url.clone(), api, config.gateway.data_dir.clone());
    s.org = o.org.clone().unwrap_or_default();
    s.bucket = o.bucket.clone().unwrap_or_default();
    s.database = o.database.clone().unwrap_or_default();
    s.token = resolve_secret(
        "output.influxdb.token",
        o.token_env.as_deref(),
        o.token_file.as_deref(),
    )?;
    s.username = o.username.clone();
    s.password = resolve_secret(
        "output.influxdb.password",
        o.password_env.as_deref(),
        o.password_file.as_deref(),
    )?;
    s.ca_file = o.ca_file.clone();
    s.client_cert_file = o.client_cert_file.clone();
    s.client_key_file = o.client_key_file.clone();
    s.insecure_skip_verify = o.insecure_skip_verify;
    s.request_timeout = Duration::from_millis(o.timeout_ms.max(100));
    // Retry at least every 5 s: when the store comes back after an outage, urgent events must
    // be in it within seconds.
    s.backoff_max = Duration::from_secs(5);
    Ok(s)
}

/// Runs the gateway until `shutdown` is triggered (the binary wires it to SIGTERM/SIGINT), then
/// stops it in order (see the module docs).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    crate::clock::configure(config.clock.clone());
    let (writer, reader) = open_buffer(&config).await?;
    let observers = crate::status::Observers::new(config.gateway.id.clone(), writer.clone());
    observers
        .live
        .set_always(config.http.live_board == crate::http::config::LiveBoardMode::Always);
    let sink = Arc::new(
        InfluxSink::new(sink_config(&config)?)
            .context("cannot set up the output")?
            .with_observer(observers.store.clone()),
    );
    // Each stage has its own signal: the inputs' stops with the whole, the others are stopped
    // in order once the stage before them has finished.
    let inputs_stop = shutdown.child();
    let forwarder_stop = Shutdown::new();
    let http_stop = Shutdown::new();

    // HTTP before the inputs.
    let http_task = start_http(&config, &observers, &http_stop).await?;
    let ingest = Ingest::with_observers(
        writer.clone(),
        config.gateway.id.clone(),
        sink.flavor(),
        observers.live.clone(),
        observers.inputs.clone(),
    )
    .with_limits(config.limits.clone());
    let forwarder = tokio::spawn(run_forwarder(
        reader,
        sink,
        ForwarderConfig {
            batch_max_lines: config.output.influxdb.batch_max_lines,
            flush_interval: Duration::from_millis(config.output.influxdb.flush_interval_ms),
        },
        observers.store.clone(),
        forwarder_stop.clone(),
    ));
    let mut inputs = crate::input::spawn_inputs(
        &config.inputs.mqtt,
        &config.inputs.serial,
        &config.inputs.http,
        &ingest,
        &config.gateway.data_dir,
        &inputs_stop,
    );
    let supervise_stop = Shutdown::new();
    let clock_watch = tokio::spawn(watch_clock(supervise_stop.clone()));
    let supervisor = tokio::spawn(crate::supervise::run(
        observers.clone(),
        supervise_stop.clone(),
    ));
    tracing::info!(
        gateway = %config.gateway.id,
        mqtt_inputs = config.inputs.mqtt.len(),
        serial_inputs = config.inputs.serial.len(),
        http_inputs = config.inputs.http.len(),
        "gateway running"
    );

    let mut failure = until_stop_or_failure(&mut inputs, &shutdown).await;
    // Tell systemd it is stopping (STOPPING=1) before the stages stop.
    supervise_stop.trigger();
    let _ = supervisor.await;
    let _ = clock_watch.await;

    // 1. Inputs.
    inputs_stop.trigger();
    stop_inputs(&mut inputs, &mut failure).await;
    drop(ingest);
    // 2. The buffer.
    if tokio::time::timeout(BUFFER_DEADLINE, writer.shutdown())
        .await
        .is_err()
    {
        tracing::error!(
            "the buffer did not finish writing within {} s (disk hung?); what it had not made durable was never acknowledged",
            BUFFER_DEADLINE.as_secs()
        );
    }
    // 3. The forwarder.
    forwarder_stop.trigger();
    stop_within("forwarder", forwarder, FORWARDER_DEADLINE).await;
    // 4. The HTTP server.
    http_stop.trigger();
    if let Some(task) = http_task {
        if let Some(Err(e)) = stop_within("HTTP server", task, HTTP_DEADLINE).await {
            tracing::warn!("{e}");
        }
    }
    tracing::info!("gateway stopped; buffer flushed");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Reads the clock every second until `stop`, so a step or a change of synchronisation is
/// noticed (counted, logged) when it happens, not only with the next reading.
async fn watch_clock(stop: Shutdown) {
    loop {
        crate::clock::now_ns();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.wait() => return,
        }
    }
}

/// Creates `data_dir` and opens (recovers) the buffer in it, saying what recovery found.
async fn open_buffer(config: &Config) -> anyhow::Result<(BufferWriter, BufferReader)> {
    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    let mut bcfg = BufferConfig::new(
        data_dir.join("buffer"),
        config.buffer.max_disk_mb.saturating_mul(1 << 20),
    );
    if let Some(mb) = config.buffer.segment_mb {
        bcfg.segment_bytes = mb.saturating_mul(1 << 20);
    }
    let (writer, reader, report) = tokio::task::spawn_blocking(move || buffer::open(bcfg))
        .await
        .context("buffer recovery task failed")?
        .context("cannot open the buffer")?;
    if report.dropped_bytes > 0 {
        tracing::warn!(
            dropped_bytes = report.dropped_bytes,
            damaged_ranges = report.dropped_records_hint,
            "buffer recovery dropped damaged or torn data (power cut?); every intact record was kept"
        );
    }
    tracing::info!(
        segments = report.segments,
        unsent_lines = report.unsent_lines,
        "buffer recovered"
    );
    Ok((writer, reader))
}

/// Starts the HTTP server when enabled. A busy port does not stop the gateway: collecting and
/// forwarding readings matters more than its status page; the error says what to change. A
/// token that cannot be read does stop it (a setup error).
async fn start_http(
    config: &Config,
    observers: &crate::status::Observers,
    stop: &Shutdown,
) -> anyhow::Result<Option<JoinHandle<Result<(), crate::http::HttpError>>>> {
    if !config.http.enabled {
        return Ok(None);
    }
    let token = crate::http::resolve_token(&config.http)?;
    let server = match crate::http::HttpServer::bind(&config.http.listen).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}; running WITHOUT /healthz, /metrics and the live page");
            return Ok(None);
        }
    };
    let mut settings = crate::http::HttpSettings::new(
        Duration::from_secs(config.http.store_unreachable_after_s),
        config.buffer.max_disk_mb.saturating_mul(1 << 20),
    );
    settings.buffer_dir = Some(config.gateway.data_dir.join("buffer"));
    Ok(Some(tokio::spawn(server.run(
        token,
        observers.clone(),
        crate::http::install_metrics_recorder(),
        settings,
        stop.clone(),
    ))))
}

/// Waits until told to stop, or until an input fails: a broken input (bad TLS files, secrets)
/// is a setup error, so the gateway stops cleanly and says so. No inputs at all, or all ended
/// on their own: the backlog is still forwarded until told to stop. The failure, if any.
async fn until_stop_or_failure(
    inputs: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &Shutdown,
) -> Option<anyhow::Error> {
    let mut failure = None;
    loop {
        tokio::select! {
            res = inputs.join_next(), if !inputs.is_empty() => {
                if let Some(res) = res {
                    note_input_end(res, &mut failure);
                }
                if failure.is_some() {
                    return failure;
                }
            }
            () = shutdown.wait() => return failure,
        }
    }
}

/// Waits up to [`INPUTS_DEADLINE`] for the inputs, told to stop, to commit and acknowledge what
/// they hold; aborts those still running then.
async fn stop_inputs(
    inputs: &mut JoinSet<anyhow::Result<()>>,
    failure: &mut Option<anyhow::Error>,
) {
    let done = tokio::time::timeout(INPUTS_DEADLINE, async {
        while let Some(res) = inputs.join_next().await {
            note_input_end(res, failure);
        }
    })
    .await;
    if done.is_err() {
        tracing::warn!(
            still_running = inputs.len(),
            "inputs did not stop within {} s; aborted, their unacknowledged messages will be redelivered",
            INPUTS_DEADLINE.as_secs()
        );
        inputs.shutdown().await;
    }
}

/// Records how an input task ended; the first failure is kept.
fn note_input_end(
    res: Result<anyhow::Result<()>, tokio::task::JoinError>,
    failure: &mut Option<anyhow::Error>,
) {
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!("input failed: {e:#}");
            failure.get_or_insert(e);
        }
        Err(e) => {
            tracing::error!("input task panicked: {e}");
            failure.get_or_insert(anyhow::anyhow!("input task panicked: {e}"));
        }
    }
}

/// Waits up to `deadline` for a task that was told to stop, aborting it after that. Its
/// result, if it finished.
async fn stop_within<T>(what: &str, mut task: JoinHandle<T>, deadline: Duration) -> Option<T> {
    match tokio::time::timeout(deadline, &mut task).await {
        Ok(Ok(result)) => Some(result),
        Ok(Err(e)) => {
            tracing::warn!("{what} task failed: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(
                "{what} did not stop within {} s; aborted",
                deadline.as_secs()
            );
            task.abort();
            None
        }
    }
}
