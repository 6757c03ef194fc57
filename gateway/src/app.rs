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
use crate::config::{resolve_secret, Config, InfluxApi, OutputEntry, DEFAULT_OUTPUT};
use crate::input::set::{self as inputs_set, InputSet};
use crate::output::filter::MeasurementFilter;
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

/// Where an output keeps its own files (its dead-letter file): `data_dir` for the output
/// `default` (where a single-output gateway always had them), `data_dir/outputs/<name>` for
/// the others.
pub fn output_dir(config: &Config, name: &str) -> PathBuf {
    if name == DEFAULT_OUTPUT {
        config.gateway.data_dir.clone()
    } else {
        config.gateway.data_dir.join("outputs").join(name)
    }
}

/// Builds one output's sink settings from its section, resolving secrets.
pub fn sink_config(config: &Config, output: &OutputEntry<'_>) -> anyhow::Result<InfluxSinkConfig> {
    let o = output.influx;
    let api = match o.api {
        InfluxApi::V1 => Api::V1,
        InfluxApi::V2 => Api::V2,
    };
    let mut endpoints = o.endpoints().into_iter();
    let first = endpoints.next().unwrap_or_default();
    let mut s = InfluxSinkConfig::new(first, api, output_dir(config, output.name));
    s.output = output.name.to_owned();
    // Retry-After bound, jitter and drain spread from the gateway id, concurrency, budget.
    o.apply_citizen_settings(&mut s, &config.gateway.id);
    s.fallback_urls = endpoints.collect();
    s.org = o.org.clone().unwrap_or_default();
    s.bucket = o.bucket.clone().unwrap_or_default();
    s.database = o.database.clone().unwrap_or_default();
    s.token = resolve_secret(
        &format!("{}.token", output.key),
        o.token_env.as_deref(),
        o.token_file.as_deref(),
    )?;
    s.username = o.username.clone();
    s.password = resolve_secret(
        &format!("{}.password", output.key),
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
    let (writer, readers) = open_buffer(&config).await?;
    let observers = crate::status::Observers::new(config.gateway.id.clone(), writer.clone());
    observers
        .live
        .set_always(config.http.live_board == crate::http::config::LiveBoardMode::Always);
    let setups = build_outputs(&config, &observers)?;
    // Each stage has its own signal: the inputs' stops with the whole, the others are stopped
    // in order once the stage before them has finished.
    let inputs_stop = shutdown.child();
    let http_stop = Shutdown::new();

    // HTTP before the inputs.
    let http_task = start_http(&config, &observers, &http_stop).await?;
    let ingest = new_ingest(&config, &writer, &observers);
    // Each output has its reader, in config order (the buffer was opened with their names).
    let outputs: Vec<OutputRun> = setups
        .into_iter()
        .zip(readers)
        .map(|(setup, reader)| OutputRun::start(setup, reader, &observers))
        .collect();
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
        config.inputs.mqtt.len() + config.inputs.serial.len() + config.inputs.http.len(),
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
        outputs,
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
    let outputs = std::mem::take(&mut running.outputs);
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
    // 3. The forwarders, together.
    for output in &outputs {
        output.stop.trigger();
    }
    for output in outputs {
        stop_within(
            &format!("forwarder of output {}", output.name),
            output.task,
            FORWARDER_DEADLINE,
        )
        .await;
    }
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

/// Every output of a config, built (secrets and TLS files read) but not started.
fn build_outputs(
    config: &Config,
    observers: &crate::status::Observers,
) -> anyhow::Result<Vec<Arc<OutputSetup>>> {
    config
        .outputs()
        .iter()
        .map(|entry| build_output(config, entry, observers))
        .collect()
}

/// One output's sink, batching policy and filter, reporting to its own store observer.
fn build_output(
    config: &Config,
    entry: &OutputEntry<'_>,
    observers: &crate::status::Observers,
) -> anyhow::Result<Arc<OutputSetup>> {
    let context = || format!("cannot set up output {} ([{}])", entry.name, entry.key);
    let sink = InfluxSink::new(sink_config(config, entry).with_context(context)?)
        .with_context(context)?
        .with_observer(observers.outputs.register(entry.name));
    let filter = MeasurementFilter::new(&entry.influx.include, &entry.influx.exclude)
        .map_err(anyhow::Error::msg)
        .with_context(context)?;
    Ok(OutputSetup::new(
        entry.name,
        Arc::new(sink),
        forwarder_config(entry.influx),
        filter,
    ))
}

fn forwarder_config(o: &crate::config::InfluxConfig) -> ForwarderConfig {
    ForwarderConfig {
        batch_max_lines: o.batch_max_lines,
        flush_interval: Duration::from_millis(o.flush_interval_ms),
    }
}

/// One output as it runs: its forwarder task over its own buffer reader, and the channel a
/// reload gives it new settings by.
struct OutputRun {
    name: String,
    setup: tokio::sync::watch::Sender<Arc<OutputSetup>>,
    stop: Shutdown,
    /// Returns the reader when stopped (a removed output gives up its cursor with it).
    task: JoinHandle<BufferReader>,
}

impl OutputRun {
    fn start(
        setup: Arc<OutputSetup>,
        reader: BufferReader,
        observers: &crate::status::Observers,
    ) -> Self {
        let name = setup.name.clone();
        let (tx, rx) = tokio::sync::watch::channel(setup);
        let stop = Shutdown::new();
        let task = tokio::spawn(run_forwarder(
            reader,
            rx,
            observers.outputs.register(&name),
            stop.clone(),
        ));
        OutputRun {
            name,
            setup: tx,
            stop,
            task,
        }
    }

    /// Puts a new setup in place; the forwarder takes it at its next batch boundary.
    fn replace(&self, setup: Arc<OutputSetup>) {
        self.setup.send_replace(setup).superseded.trigger();
    }

    /// Stops the forwarder and deletes the output's cursor, so the buffer stops keeping data
    /// for it (a reload removed it).
    async fn remove(self, observers: &crate::status::Observers) {
        self.stop.trigger();
        observers.outputs.unregister(&self.name);
        let what = format!("forwarder of output {}", self.name);
        match stop_within(&what, self.task, FORWARDER_DEADLINE).await {
            Some(reader) => {
                if let Err(e) = reader.remove().await {
                    tracing::error!(
                        output = %self.name,
                        "cannot delete the removed output's cursor: {e}; it is deleted at the next start"
                    );
                }
            }
            None => tracing::warn!(
                output = %self.name,
                "the removed output's cursor is deleted at the next start"
            ),
        }
    }
}

fn new_ingest(
    config: &Config,
    writer: &BufferWriter,
    observers: &crate::status::Observers,
) -> Ingest {
    Ingest::with_observers(
        writer.clone(),
        config.gateway.id.clone(),
        config.flavor(),
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
    outputs: Vec<OutputRun>,
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
        // Everything that can fail is built before anything is replaced: the outputs, and the
        // cursors of outputs the file adds.
        let setups = build_outputs(&new, &self.observers)?;
        let mut added = Vec::new();
        for setup in &setups {
            if self.outputs.iter().any(|o| o.name == setup.name) {
                continue;
            }
            match self
                .writer
                .add_consumer(&setup.name, crate::buffer::ConsumerStart::Oldest)
                .await
            {
                Ok(reader) => added.push(reader),
                Err(e) => {
                    for reader in added {
                        let _ = reader.remove().await;
                    }
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot add output {}", setup.name))
                    );
                }
            }
        }
        let restart_all = crate::reload::ingest_changed(&self.config, &new);
        crate::clock::configure(new.clock.clone());
        self.apply_outputs(setups, added).await;
        if restart_all {
            self.ingest = new_ingest(&new, &self.writer, &self.observers);
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

impl Running {
    /// Gives every kept output its new setup, starts the added ones on their new readers and
    /// removes the outputs the new file no longer has (their cursors go with them).
    async fn apply_outputs(&mut self, setups: Vec<Arc<OutputSetup>>, added: Vec<BufferReader>) {
        let mut added = added.into_iter();
        let mut old = std::mem::take(&mut self.outputs);
        for setup in setups {
            match old.iter().position(|o| o.name == setup.name) {
                Some(i) => {
                    let run = old.remove(i);
                    run.replace(setup);
                    self.outputs.push(run);
                }
                None => {
                    let Some(reader) = added.next() else {
                        tracing::error!(output = %setup.name, "no cursor was added for this output; it starts at the next restart");
                        continue;
                    };
                    tracing::info!(output = %setup.name, "output added by the reload");
                    self.outputs
                        .push(OutputRun::start(setup, reader, &self.observers));
                }
            }
        }
        for run in old {
            tracing::info!(output = %run.name, "output removed by the reload; its cursor is deleted");
            run.remove(&self.observers).await;
        }
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
async fn open_buffer(config: &Config) -> anyhow::Result<(BufferWriter, Vec<BufferReader>)> {
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
    // One cursor per output; an output new to this buffer gets everything still on disk.
    let consumers: Vec<buffer::ConsumerSpec> = config
        .outputs()
        .iter()
        .map(|o| buffer::ConsumerSpec::new(o.name, buffer::ConsumerStart::Oldest))
        .collect();
    let (writer, readers, report) =
        tokio::task::spawn_blocking(move || buffer::open_consumers(bcfg, &consumers))
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
    Ok((writer, readers))
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
