//! Starts and stops a whole gateway from a [`Config`]: buffer, output, inputs, shutdown.
//!
//! Shutdown order on SIGTERM/SIGINT: inputs stop taking messages and commit what they hold
//! (their acks follow), the buffer writer flushes and stops, the forwarder abandons its
//! in-flight batch (it stays in the buffer and is re-sent next time).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::buffer::{self, BufferConfig};
use crate::config::{resolve_secret, Config, InfluxApi};
use crate::output::{Api, InfluxSink, InfluxSinkConfig};
use crate::pipeline::{run_forwarder, ForwarderConfig, Ingest};

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
    s.insecure_skip_verify = o.insecure_skip_verify;
    s.request_timeout = Duration::from_millis(o.timeout_ms.max(100));
    // Retry at least every 5 s: when the store comes back after an outage, urgent events must
    // be in it within seconds.
    s.backoff_max = Duration::from_secs(5);
    Ok(s)
}

/// Runs the gateway until `shutdown` turns true (the binary wires it to SIGTERM/SIGINT).
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let data_dir = config.gateway.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
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

    let observers = crate::status::Observers::new(config.gateway.id.clone(), writer.clone());
    let sink = Arc::new(
        InfluxSink::new(sink_config(&config)?)
            .context("cannot set up the output")?
            .with_observer(observers.store.clone()),
    );
    // HTTP before the inputs. A busy port does not stop the gateway: collecting and forwarding
    // readings matters more than its status page; the error says what to change.
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let token = if config.http.enabled {
        crate::http::resolve_token(&config.http)?
    } else {
        None
    };
    let server = if config.http.enabled {
        match crate::http::HttpServer::bind(&config.http.listen).await {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::error!("{e}; running WITHOUT /healthz, /metrics and the live page");
                None
            }
        }
    } else {
        None
    };
    let http_task = if let Some(server) = server {
        let mut settings = crate::http::HttpSettings::new(
            Duration::from_secs(config.http.store_unreachable_after_s),
            config.buffer.max_disk_mb.saturating_mul(1 << 20),
        );
        settings.buffer_dir = Some(data_dir.join("buffer"));
        Some(tokio::spawn(server.run(
            token,
            observers.clone(),
            crate::http::install_metrics_recorder(),
            settings,
            http_stop_rx,
        )))
    } else {
        None
    };
    let ingest = Ingest::with_observers(
        writer.clone(),
        config.gateway.id.clone(),
        sink.flavor(),
        observers.live.clone(),
        observers.inputs.clone(),
    )
    .with_limits(config.limits.clone());

    let (fwd_stop_tx, fwd_stop_rx) = watch::channel(false);
    let forwarder = tokio::spawn(run_forwarder(
        reader,
        sink,
        ForwarderConfig {
            batch_max_lines: config.output.influxdb.batch_max_lines,
            flush_interval: Duration::from_millis(config.output.influxdb.flush_interval_ms),
        },
        observers.store.clone(),
        fwd_stop_rx,
    ));

    let mut inputs = tokio::task::JoinSet::new();
    for (i, m) in config.inputs.mqtt.iter().enumerate() {
        let fut = crate::input::mqtt::run_mqtt_input(
            m.clone(),
            i,
            ingest.clone(),
            data_dir.clone(),
            shutdown.clone(),
        );
        inputs.spawn(async move { fut.await.map_err(anyhow::Error::from) });
    }
    crate::input::spawn_serial_inputs(&config.inputs.serial, &ingest, &shutdown, &mut inputs);
    tracing::info!(
        gateway = %config.gateway.id,
        mqtt_inputs = config.inputs.mqtt.len(),
        serial_inputs = config.inputs.serial.len(),
        "gateway running"
    );

    let mut failure = None;
    while let Some(res) = inputs.join_next().await {
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
        if failure.is_some() && !*shutdown.borrow() {
            // A broken input (bad TLS files, secrets) is a setup error: stop cleanly and say so.
            break;
        }
    }
    if failure.is_none() {
        // No inputs at all, or all ended on their own: keep forwarding the backlog until told to stop.
        let mut stop = shutdown.clone();
        let _ = stop.wait_for(|s| *s).await;
    }
    inputs.shutdown().await;
    drop(ingest);
    writer.shutdown().await;
    let _ = fwd_stop_tx.send(true);
    let _ = forwarder.await;
    let _ = http_stop_tx.send(true);
    if let Some(task) = http_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::warn!("HTTP server task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("gateway stopped; buffer flushed");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
