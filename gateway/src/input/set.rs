//! The running inputs, each under a key (`mqtt:<name>`, `serial:<port>`, `http:<address>`), so
//! that a reload can restart, start, stop or update one input without touching the others.
//!
//! Why it exists: a reload must not drop what is not changing. A webhook sender whose listener
//! is rebound gets refused connections, a serial port reopened loses the frame being read, and
//! an MQTT connection taken down makes the broker queue (and, past its queue limit, drop) what
//! is published meanwhile. So each input carries a fingerprint of everything that needs a
//! restart to change (its config, the contents of the secret and TLS files it names, the values
//! of the environment variables it reads); a reload restarts only the inputs whose fingerprint
//! changed. An MQTT input whose topics or QoS alone changed is not restarted at all: its new
//! filters go to the running connection, which subscribes and unsubscribes in place.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use super::{http, mqtt, serial};
use crate::config::Config;
use crate::pipeline::Ingest;
use crate::shutdown::Shutdown;

/// How an input ended: its key and its result.
pub type Ended = (String, anyhow::Result<()>);

type InputFuture = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;
type Start = Box<dyn FnOnce(Ingest, Shutdown) -> InputFuture + Send>;

/// One input as the config describes it, ready to start.
pub struct InputSpec {
    pub key: String,
    /// A change of this restarts the input.
    fingerprint: u64,
    /// For MQTT inputs: the topic filters, changed without a restart.
    filters: Option<Vec<(String, QoS)>>,
    start: Start,
    /// For MQTT inputs: where a reload sends new filters to the running task.
    filters_tx: Option<watch::Sender<Vec<(String, QoS)>>>,
}

/// The inputs a config describes, in config order.
pub fn specs(config: &Config) -> Vec<InputSpec> {
    let data_dir = config.gateway.data_dir.clone();
    let mut out = Vec::new();
    for (i, cfg) in config.inputs.mqtt.iter().enumerate() {
        let mut fixed = cfg.clone();
        fixed.topics.clear();
        fixed.qos = 0;
        let fingerprint = fingerprint(
            &fixed,
            &[
                cfg.password_file.as_deref(),
                cfg.ca_file.as_deref(),
                cfg.client_cert_file.as_deref(),
                cfg.client_key_file.as_deref(),
            ],
            &[cfg.password_env.as_deref()],
        );
        let filters = mqtt::filters_of(cfg);
        let (tx, rx) = watch::channel(filters.clone());
        let cfg = cfg.clone();
        let data_dir = data_dir.clone();
        let key = format!("mqtt:{}", mqtt::input_name(&cfg, i));
        out.push(InputSpec {
            key,
            fingerprint,
            filters: Some(filters),
            start: Box::new(move |ingest, stop| {
                Box::pin(async move {
                    mqtt::run_mqtt_input_with_filters(cfg, i, ingest, data_dir, stop, rx)
                        .await
                        .map_err(anyhow::Error::from)
                })
            }),
            filters_tx: Some(tx),
        });
    }
    for (i, cfg) in config.inputs.serial.iter().enumerate() {
        let fingerprint = fingerprint(cfg, &[], &[]);
        let cfg = cfg.clone();
        out.push(InputSpec {
            key: format!("serial:{}", serial::port_label(&cfg)),
            fingerprint,
            filters: None,
            start: Box::new(move |ingest, stop| {
                Box::pin(async move {
                    serial::run_serial_input(cfg, i, ingest, stop)
                        .await
                        .map_err(anyhow::Error::from)
                })
            }),
            filters_tx: None,
        });
    }
    for (addr, group) in http::by_address(&config.inputs.http) {
        let files: Vec<Option<&Path>> = group
            .iter()
            .flat_map(|(_, c)| {
                [
                    c.token_file.as_deref(),
                    c.cert_file.as_deref(),
                    c.key_file.as_deref(),
                ]
            })
            .collect();
        let envs: Vec<Option<&str>> = group.iter().map(|(_, c)| c.token_env.as_deref()).collect();
        let fingerprint = fingerprint(&group, &files, &envs);
        out.push(InputSpec {
            key: format!("http:{addr}"),
            fingerprint,
            filters: None,
            start: Box::new(move |ingest, stop| {
                Box::pin(async move {
                    http::run_address(addr, group, ingest, stop)
                        .await
                        .map_err(anyhow::Error::from)
                })
            }),
            filters_tx: None,
        });
    }
    out
}

/// A hash of a config value (its `Debug` form: every config type derives it, and none holds a
/// map with a random order), of the files it names and of the variables it reads.
fn fingerprint(
    value: &impl std::fmt::Debug,
    files: &[Option<&Path>],
    envs: &[Option<&str>],
) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{value:?}").hash(&mut h);
    for path in files.iter().flatten() {
        // Unreadable is a state too: when the file appears, the input restarts and reads it.
        std::fs::read(path).ok().hash(&mut h);
    }
    for var in envs.iter().flatten() {
        std::env::var_os(var).hash(&mut h);
    }
    h.finish()
}

struct Running {
    fingerprint: u64,
    stop: Shutdown,
    abort: AbortHandle,
    filters: Option<watch::Sender<Vec<(String, QoS)>>>,
}

/// What [`InputSet::apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    /// Updated in place (MQTT topics).
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
}

/// The running inputs.
pub struct InputSet {
    tasks: JoinSet<Ended>,
    running: BTreeMap<String, Running>,
    /// Stops them all (each input's own stop is a child of it).
    all: Shutdown,
}

impl InputSet {
    /// Starts every input of `specs`, stopped with `all`.
    pub fn start(specs: Vec<InputSpec>, ingest: &Ingest, all: Shutdown) -> Self {
        let mut set = InputSet {
            tasks: JoinSet::new(),
            running: BTreeMap::new(),
            all,
        };
        for spec in specs {
            set.spawn(spec, ingest);
        }
        set
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    fn spawn(&mut self, spec: InputSpec, ingest: &Ingest) {
        let stop = self.all.child();
        let key = spec.key.clone();
        let fut = (spec.start)(ingest.clone(), stop.clone());
        let abort = self.tasks.spawn(async move { (key, fut.await) });
        self.running.insert(
            spec.key,
            Running {
                fingerprint: spec.fingerprint,
                stop,
                abort,
                filters: spec.filters_tx,
            },
        );
    }

    /// The next input to end on its own (or fail); `None` when none runs. Cancel-safe.
    pub async fn next_ended(&mut self) -> Option<Ended> {
        loop {
            match self.tasks.join_next().await? {
                Ok((key, result)) => {
                    self.running.remove(&key);
                    return Some((key, result));
                }
                Err(e) if e.is_cancelled() => continue,
                Err(e) => {
                    // A panic: which input is not known from the error; forget aborted ones.
                    self.running.retain(|_, r| !r.abort.is_finished());
                    return Some(("?".into(), Err(anyhow::anyhow!("input task panicked: {e}"))));
                }
            }
        }
    }

    /// Makes the running inputs those of `specs`: inputs whose fingerprint changed, or all when
    /// `restart_all` (the shared ingest settings changed), are stopped (each given `deadline` to
    /// commit and acknowledge what it holds) and started again with `ingest`; removed ones are
    /// stopped; new ones started; MQTT inputs whose topics alone changed get them in place.
    /// Inputs that end with an error while being stopped are returned with their keys.
    pub async fn apply(
        &mut self,
        specs: Vec<InputSpec>,
        ingest: &Ingest,
        restart_all: bool,
        deadline: Duration,
    ) -> (Applied, Vec<Ended>) {
        let mut applied = Applied::default();
        let wanted: Vec<String> = specs.iter().map(|s| s.key.clone()).collect();
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        let mut to_start = Vec::new();
        let mut to_stop = removed.clone();
        for spec in specs {
            match self.running.get(&spec.key) {
                None => {
                    applied.started.push(spec.key.clone());
                    to_start.push(spec);
                }
                Some(r) if restart_all || r.fingerprint != spec.fingerprint => {
                    applied.restarted.push(spec.key.clone());
                    to_stop.push(spec.key.clone());
                    to_start.push(spec);
                }
                Some(r) => {
                    let mut changed = false;
                    if let (Some(tx), Some(filters)) = (&r.filters, spec.filters) {
                        changed = tx.send_if_modified(|now| {
                            if *now == filters {
                                false
                            } else {
                                *now = filters;
                                true
                            }
                        });
                    }
                    if changed {
                        applied.updated.push(spec.key);
                    } else {
                        applied.unchanged.push(spec.key);
                    }
                }
            }
        }
        applied.stopped = removed;
        let ended = self.stop_keys(&to_stop, deadline).await;
        for spec in to_start {
            self.spawn(spec, ingest);
        }
        (applied, ended)
    }

    /// Stops the inputs under `keys` and waits up to `deadline` for them; aborts the rest.
    async fn stop_keys(&mut self, keys: &[String], deadline: Duration) -> Vec<Ended> {
        let mut waiting: Vec<String> = Vec::new();
        for key in keys {
            if let Some(r) = self.running.get(key) {
                r.stop.trigger();
                waiting.push(key.clone());
            }
        }
        let mut ended = Vec::new();
        let until = tokio::time::Instant::now() + deadline;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(until, self.tasks.join_next()).await {
                Ok(Some(Ok((key, result)))) => {
                    self.running.remove(&key);
                    waiting.retain(|k| *k != key);
                    if result.is_err() {
                        ended.push((key, result));
                    }
                }
                Ok(Some(Err(e))) if e.is_cancelled() => {}
                Ok(Some(Err(e))) => {
                    self.running.retain(|_, r| !r.abort.is_finished());
                    waiting.retain(|k| self.running.contains_key(k));
                    ended.push(("?".into(), Err(anyhow::anyhow!("input task panicked: {e}"))));
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        inputs = ?waiting,
                        "inputs did not stop within {} s; aborted, their unacknowledged messages will be redelivered",
                        deadline.as_secs()
                    );
                    for key in &waiting {
                        if let Some(r) = self.running.remove(key) {
                            r.abort.abort();
                        }
                    }
                    break;
                }
            }
        }
        ended
    }

    /// Stops every input (see [`InputSet::apply`] for the deadline); their failures.
    pub async fn stop_all(&mut self, deadline: Duration) -> Vec<Ended> {
        self.all.trigger();
        let keys: Vec<String> = self.running.keys().cloned().collect();
        let ended = self.stop_keys(&keys, deadline).await;
        self.tasks.shutdown().await;
        ended
    }
}
