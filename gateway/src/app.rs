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
//!
//! A reload ([`Reloads`]: SIGHUP or `systemctl reload` in the binary) loads and checks the file
//! again and applies it in place while the buffer stays open: what may change and what needs a
//! restart is [`crate::reload`]'s rule; the output is swapped at a batch boundary
//! ([`run_forwarder`]), inputs are restarted, started, stopped or updated one by one
//! ([`crate::input::set`]). A file that is invalid or changes what needs a restart is refused
//! as a whole: the gateway keeps running on the config it had and says why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tokio::task::JoinHandle;

use crate::buffer::{self, BufferConfig, BufferReader, BufferWriter};
use crate::config::{resolve_secret, Config, InfluxApi};
use crate::input::set::{self as inputs_set, InputSet};
use crate::output::{
    run_forwarder, Api, ForwarderConfig, InfluxSink, InfluxSinkConfig, OutputSetup,
};
use crate::pipeline::Ingest;
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
    let mut endpoints = o.endpoints().into_iter();
    let first = endpoints.next().unwrap_or_default();
    let mut s = InfluxSinkConfig::new(first, api, config.gateway.data_dir.clone());
    s.fallback_urls = endpoints.collect();
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

/// Where reload requests come from, and the file they reload.
pub struct Reloads {
    pub path: PathBuf,
    /// One message per request (SIGHUP); requests arriving during a reload are merged.
    pub requests: tokio::sync::mpsc::Receiver<()>,
}

/// Runs the gateway until `shutdown` is triggered (the binary wires it to SIGTERM/SIGINT), then
/// stops it in order (see the module docs).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    run_with_reloads(config, shutdown, None).await
}

/// [`run`], reloading the config in place on every request of `reloads`.
pub async fn run_with_reloads(
    config: Config,
    shutdown: Shutdown,
    mut reloads: Option<Reloads>,
) -> anyhow::Result<()> {
    crate::clock::configure(config.clock.clone());
    let (writer, reader) = open_buffer(&config).await?;
    let observers = crate::status::Observers::new(config.gateway.id.clone(), writer.clone());
    observers
        .live
        .set_always(config.http.live_board == crate::http::config::LiveBoardMode::Always);
    let sink = build_sink(&config, &observers)?;
    // Each stage has its own signal: the inputs' stops with the whole, the others are stopped
    // in order once the stage before them has finished.
    let inputs_stop = shutdown.child();
    let forwarder_stop = Shutdown::new();
    let http_stop = Shutdown::new();

    // HTTP before the inputs.
    let http_task = start_http(&config, &observers, &http_stop).await?;
    let ingest = new_ingest(&config, &writer, &sink, &observers);
    let (output_tx, output_rx) =
        tokio::sync::watch::channel(OutputSetup::new(sink, forwarder_config(&config)));
    let forwarder = tokio::spawn(run_forwarder(
        reader,
        output_rx,
        observers.store.clone(),
        forwarder_stop.clone(),
    ));
    let inputs = InputSet::start(inputs_set::specs(&config), &ingest, inputs_stop.clone());
    let supervise_stop = Shutdown::new();
    let (health_tx, health_rx) = tokio::sync::watch::channel(
        crate::fleet_health::HealthSetup::new(ingest.clone(), config.gateway.health_interval_s),
    );
    let health = tokio::spawn(crate::fleet_health::run(
        observers.clone(),
        health_rx,
        supervise_stop.clone(),
    ));
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
    let mut running = Running {
        config,
        writer: writer.clone(),
        observers,
        ingest,
        inputs,
        output: output_tx,
        health: health_tx,
    };

    let mut failure = None;
    loop {
        tokio::select! {
            ended = running.inputs.next_ended(), if !running.inputs.is_empty() => {
                if let Some((_, res)) = ended {
                    note_input_end(res, &mut failure);
                }
                if failure.is_some() {
                    break;
                }
            }
            () = shutdown.wait() => break,
            Some(()) = next_request(&mut reloads) => {
                if let Some(r) = reloads.as_mut() {
                    // Requests sent while the last one was applied are served by this one.
                    while r.requests.try_recv().is_ok() {}
                    let path = r.path.clone();
                    if let Some(e) = running.reload(&path).await {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
    }
    // Tell systemd it is stopping (STOPPING=1) before the stages stop.
    supervise_stop.trigger();
    let _ = supervisor.await;
    let _ = clock_watch.await;
    let _ = health.await;

    // 1. Inputs.
    inputs_stop.trigger();
    for (_, res) in running.inputs.stop_all(INPUTS_DEADLINE).await {
        note_input_end(res, &mut failure);
    }
    drop(running);
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

/// The next reload request; never without a source of them.
async fn next_request(reloads: &mut Option<Reloads>) -> Option<()> {
    match reloads {
        Some(r) => r.requests.recv().await,
        None => std::future::pending().await,
    }
}

/// The output for a config, reporting to the store observer.
fn build_sink(
    config: &Config,
    observers: &crate::status::Observers,
) -> anyhow::Result<Arc<InfluxSink>> {
    Ok(Arc::new(
        InfluxSink::new(sink_config(config)?)
            .context("cannot set up the output")?
            .with_observer(observers.store.clone()),
    ))
}

fn forwarder_config(config: &Config) -> ForwarderConfig {
    ForwarderConfig {
        batch_max_lines: config.output.influxdb.batch_max_lines,
        flush_interval: Duration::from_millis(config.output.influxdb.flush_interval_ms),
    }
}

fn new_ingest(
    config: &Config,
    writer: &BufferWriter,
    sink: &InfluxSink,
    observers: &crate::status::Observers,
) -> Ingest {
    Ingest::with_observers(
        writer.clone(),
        config.gateway.id.clone(),
        sink.flavor(),
        observers.live.clone(),
        observers.inputs.clone(),
    )
    .with_limits(config.limits.clone())
}

/// What a reload changes.
struct Running {
    config: Config,
    writer: BufferWriter,
    observers: crate::status::Observers,
    ingest: Ingest,
    inputs: InputSet,
    output: tokio::sync::watch::Sender<Arc<OutputSetup>>,
    /// The fleet health task's ingest and interval.
    health: tokio::sync::watch::Sender<crate::fleet_health::HealthSetup>,
}

impl Running {
    /// Reloads the config from `path` (see the module docs); said in the log, in metrics
    /// (`config_reloads_total{result}`, `config_last_reload_successful`) and to systemd. An
    /// input that fails while being restarted is returned: the gateway then stops, as when an
    /// input fails at start.
    async fn reload(&mut self, path: &std::path::Path) -> Option<anyhow::Error> {
        crate::supervise::notify_once("RELOADING=1\nSTATUS=reloading the config");
        tracing::info!(path = %path.display(), "reload requested: loading and checking the config");
        let outcome = self.try_reload(path).await;
        let ok = outcome.is_ok();
        metrics::counter!("config_reloads_total", "result" => if ok { "applied" } else { "refused" })
            .increment(1);
        metrics::gauge!("config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
        match outcome {
            Ok((applied, failures)) => {
                tracing::info!(
                    started = ?applied.started,
                    restarted = ?applied.restarted,
                    stopped = ?applied.stopped,
                    topics_updated = ?applied.updated,
                    unchanged = applied.unchanged.len(),
                    "config reloaded: the output takes over at the next batch; nothing buffered was lost"
                );
                crate::supervise::notify_once("READY=1\nSTATUS=config reloaded");
                let mut failure = None;
                for (key, res) in failures {
                    if let Err(e) = res {
                        tracing::error!(input = %key, "input failed while being restarted: {e:#}");
                        failure.get_or_insert(e);
                    }
                }
                failure
            }
            Err(why) => {
                tracing::error!(
                    path = %path.display(),
                    "reload refused, still running on the config loaded before: {why:#}"
                );
                crate::supervise::notify_once(&format!(
                    "READY=1\nSTATUS=reload refused (still on the old config): {}",
                    crate::supervise::one_line(&format!("{why:#}"))
                ));
                None
            }
        }
    }

    async fn try_reload(
        &mut self,
        path: &std::path::Path,
    ) -> anyhow::Result<(inputs_set::Applied, Vec<inputs_set::Ended>)> {
        let owned = path.to_path_buf();
        let (new, problems) =
            tokio::task::spawn_blocking(move || Config::load_and_preflight(&owned))
                .await
                .context("config loading task failed")??;
        if let Some(first) = problems.into_iter().next() {
            return Err(first.into());
        }
        let fixed = crate::reload::fixed_changes(&self.config, &new);
        if !fixed.is_empty() {
            anyhow::bail!(
                "{} changed, which takes effect only on a restart (systemctl restart ioc-gateway); nothing of the new file was applied",
                fixed.join(", ")
            );
        }
        // Everything that can fail is built before anything is replaced.
        let sink = build_sink(&new, &self.observers)?;
        let restart_all = crate::reload::ingest_changed(&self.config, &new);
        crate::clock::configure(new.clock.clone());
        let old = self
            .output
            .send_replace(OutputSetup::new(sink.clone(), forwarder_config(&new)));
        old.superseded.trigger();
        if restart_all {
            self.ingest = new_ingest(&new, &self.writer, &sink, &self.observers);
        }
        let outcome = self
            .inputs
            .apply(
                inputs_set::specs(&new),
                &self.ingest,
                restart_all,
                INPUTS_DEADLINE,
            )
            .await;
        self.health
            .send_replace(crate::fleet_health::HealthSetup::new(
                self.ingest.clone(),
                new.gateway.health_interval_s,
            ));
        self.config = new;
        Ok(outcome)
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

/// Records how an input task ended; the first failure is kept.
fn note_input_end(res: anyhow::Result<()>, failure: &mut Option<anyhow::Error>) {
    if let Err(e) = res {
        tracing::error!("input failed: {e:#}");
        failure.get_or_insert(e);
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
