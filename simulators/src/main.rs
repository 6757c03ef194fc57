//! `sensor-sim` command line: play a scenario over MQTT, dump its payloads, verify a store,
//! or stream a serial sensor into a pseudo-terminal.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use rumqttc::QoS;

use sensor_sim::generator::Generator;
use sensor_sim::manifest::{self, Header};
use sensor_sim::mqtt::{self, PublishOptions};
use sensor_sim::scenario::Scenario;
use sensor_sim::verify::{self, Shape, StoreApi, StoreQuery};

#[derive(Parser)]
#[command(
    name = "sensor-sim",
    version,
    about = "City sensor simulator and end-to-end verdict for ioc-gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ApiArg {
    /// VictoriaMetrics (gateway writes through the v2 API)
    V2,
    /// InfluxDB 1.x
    V1,
}

#[derive(Clone, Copy, ValueEnum)]
enum SerialDeviceArg {
    /// Plantower PMS5003, 32-byte frames 42 4d … (1 frame/s by default)
    Pms5003,
    /// Nova SDS011, 10-byte frames aa c0 … ab (1 frame/s by default)
    Sds011,
    /// A firmware sensor node (the real ioc-node application via ioc-node-sim), two-way:
    /// what the gateway writes to the pty is fed to the node (acks, commands)
    Node,
}

#[derive(Subcommand)]
enum Command {
    /// The one-command demo: an embedded MQTT broker, a simulated district and the gateway with
    /// its live page, in one process. Forwards to a store if one is found or given.
    Demo {
        /// Working directory (generated gateway config, buffer, manifest).
        #[arg(long, default_value = "ioc-demo")]
        dir: PathBuf,
        /// Store URL to forward to (default: VictoriaMetrics on 127.0.0.1:8428 or InfluxDB on
        /// :8086 if one answers; otherwise readings stay in the disk buffer).
        #[arg(long)]
        store: Option<String>,
        /// API of --store.
        #[arg(long, value_enum, default_value_t = ApiArg::V2)]
        api: ApiArg,
        /// Port of the embedded MQTT broker (another free port if taken).
        #[arg(long, default_value_t = 1883)]
        mqtt_port: u16,
        /// Address of the gateway's live page.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: std::net::SocketAddr,
        /// Seed of the simulated district.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<f64>,
        /// A scenario file instead of the built-in district.
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Publish a scenario to an MQTT broker; prints a one-line JSON summary.
    Run {
        /// Scenario TOML file.
        #[arg(long)]
        scenario: PathBuf,
        /// Broker URL, mqtt://HOST:PORT.
        #[arg(long)]
        broker: String,
        /// Seed: the same seed gives the same payloads.
        #[arg(long)]
        seed: u64,
        /// Manifest output file (JSON lines of what the broker acknowledged).
        #[arg(long)]
        manifest: PathBuf,
        /// Number of messages (default: the scenario's `messages`).
        #[arg(long)]
        messages: Option<u64>,
        /// Stop after this many wall-clock seconds (default: the scenario's `duration_s`).
        #[arg(long)]
        duration: Option<f64>,
        /// Messages per second over all clients, 0 = as fast as the broker takes them.
        #[arg(long)]
        rate: Option<f64>,
        /// MQTT QoS, 0 or 1.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: Option<u8>,
        /// Number of MQTT client connections.
        #[arg(long)]
        clients: Option<usize>,
        /// Client id prefix (ids are PREFIX-0, PREFIX-1 …; default sensor-sim-<pid>).
        #[arg(long)]
        client_id: Option<String>,
        /// Unacknowledged QoS 1 messages per connection.
        #[arg(long, default_value_t = 500)]
        inflight: u16,
        /// Simulated start instant: RFC 3339 UTC, or `now` (the current second; payloads then
        /// differ from run to run). Default: the scenario's `start`.
        #[arg(long)]
        start: Option<String>,
        /// Publish every message when its simulated time comes (a live city, for demos);
        /// overrides --rate.
        #[arg(long)]
        realtime: bool,
    },
    /// Write the scenario's messages to stdout (`topic<TAB>payload` per line) without a broker.
    Generate {
        /// Scenario TOML file.
        #[arg(long)]
        scenario: PathBuf,
        /// Seed.
        #[arg(long)]
        seed: u64,
        /// Number of messages.
        #[arg(long)]
        messages: u64,
    },
    /// Stream a serial sensor into a new pseudo-terminal (prints its path first) or a file.
    Serial {
        /// Which sensor.
        #[arg(long, value_enum)]
        device: SerialDeviceArg,
        /// Seed.
        #[arg(long)]
        seed: u64,
        /// Frames per second.
        #[arg(long, default_value_t = 1.0)]
        rate_hz: f64,
        /// Line faults, e.g. noise=0.05,checksum=0.02,truncate=0.01 (probability per frame).
        #[arg(long, default_value = "")]
        faults: sensor_sim::serial::SerialFaults,
        /// Stop after this many frames (default: run until killed; `node`: seconds to run).
        #[arg(long)]
        frames: Option<u64>,
        /// Node id (`--device node`).
        #[arg(long, default_value_t = 1)]
        node_id: u32,
        /// Also create a symlink at this path pointing to the pty.
        #[arg(long)]
        link: Option<PathBuf>,
        /// Write the bytes to this file instead of a pty (no pacing).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Compare a manifest with what the store holds; exit 0 only if nothing is missing or different.
    Verify {
        /// Manifest written by `run`.
        #[arg(long)]
        manifest: PathBuf,
        /// Store base URL, e.g. http://127.0.0.1:8428.
        #[arg(long)]
        store: String,
        /// v2: VictoriaMetrics; v1: InfluxDB 1.x.
        #[arg(long, value_enum)]
        api: ApiArg,
        /// InfluxDB 1.x database.
        #[arg(long, default_value = "telemetry")]
        database: String,
        /// Only count points tagged gateway=ID.
        #[arg(long)]
        gateway_id: Option<String>,
        /// Also check camera and plate events (written `unchecked` in the manifest), for a gateway
        /// with `format = "frigate"` and `format = "lpr"` inputs.
        #[arg(long)]
        check_cameras: bool,
        /// Show every device when there are at most this many (else only devices with problems).
        #[arg(long, default_value_t = 50)]
        max_rows: usize,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sensor-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Demo {
            dir,
            store,
            api,
            mqtt_port,
            http,
            seed,
            duration,
            scenario,
        } => {
            let filter =
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,ioc_gateway=info,ioc_gateway::output::influx=error",
                    )
                });
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            ioc_gateway::http::install_metrics_recorder();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(sensor_sim::demo::run_demo(sensor_sim::demo::DemoOptions {
                dir,
                store,
                api_v1: matches!(api, ApiArg::V1),
                mqtt_port,
                http_listen: http,
                seed,
                duration: duration.map(Duration::from_secs_f64),
                scenario,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            scenario,
            broker,
            seed,
            manifest,
            messages,
            duration,
            rate,
            qos,
            clients,
            client_id,
            inflight,
            start,
            realtime,
        } => {
            let mut sc = Scenario::load(&scenario)?;
            match start.as_deref() {
                None => {}
                Some("now") => {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                    let second = (now.as_millis() / 1000 * 1000) as i64;
                    sc.start = sensor_sim::civil_time::format_rfc3339_ms(second);
                }
                Some(instant) => {
                    sensor_sim::civil_time::parse_rfc3339_ms(instant)?;
                    sc.start = instant.to_owned();
                }
            }
            let mut opts = PublishOptions::for_broker(&broker)?;
            let qos = qos.or(sc.qos).unwrap_or(1);
            opts.qos = if qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            opts.clients = clients.or(sc.clients).unwrap_or(1).max(1);
            opts.rate = rate.or(sc.rate).unwrap_or(0.0).max(0.0);
            opts.messages = messages.or(sc.messages);
            opts.duration = duration
                .or(sc.duration_s)
                .filter(|d| *d > 0.0)
                .map(Duration::from_secs_f64);
            if opts.messages.is_none() && opts.duration.is_none() && !realtime {
                bail!(
                    "give --messages or --duration (or set messages / duration_s in the scenario)"
                );
            }
            if let Some(prefix) = client_id {
                opts.client_id_prefix = prefix;
            }
            opts.inflight = inflight;
            opts.disconnect_every = sc.faults.disconnect_every;
            opts.disconnect_for = Duration::from_millis(sc.faults.disconnect_ms);
            let generator = Generator::new(&sc, seed)?;
            if realtime {
                opts.realtime_from_ms = Some(generator.start_ms());
            }
            let file = File::create(&manifest)
                .with_context(|| format!("creating {}", manifest.display()))?;
            let mut out = BufWriter::with_capacity(1 << 16, file);
            manifest::write_header(
                &mut out,
                &Header {
                    version: 1,
                    scenario: sc.name.clone(),
                    seed,
                    qos,
                },
            )?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let summary = runtime.block_on(mqtt::publish(generator, opts, Box::new(out)))?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            scenario,
            seed,
            messages,
        } => {
            let sc = Scenario::load(&scenario)?;
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            for m in Generator::new(&sc, seed)?.take(messages as usize) {
                out.write_all(m.topic.as_bytes())?;
                out.write_all(b"\t")?;
                out.write_all(&m.payload)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serial {
            device,
            seed,
            rate_hz,
            faults,
            frames,
            node_id,
            link,
            output,
        } => match device {
            SerialDeviceArg::Node => node_main(node_id, seed, frames, link),
            _ => serial_main(device, seed, rate_hz, faults, frames, link, output),
        },
        Command::Verify {
            manifest,
            store,
            api,
            database,
            gateway_id,
            check_cameras,
            max_rows,
        } => {
            let file =
                File::open(&manifest).with_context(|| format!("opening {}", manifest.display()))?;
            let (_, mut entries) = manifest::read(std::io::BufReader::new(file))?;
            if check_cameras {
                for e in entries
                    .iter_mut()
                    .filter(|e| e.x == manifest::Expect::Unchecked)
                {
                    e.x = manifest::Expect::Stored;
                }
            }
            let shape = Shape::of(&entries);
            let query = StoreQuery {
                url: store,
                api: match api {
                    ApiArg::V2 => StoreApi::V2,
                    ApiArg::V1 => StoreApi::V1,
                },
                database,
                gateway_id,
            };
            let index = verify::fetch(&query, &shape)?;
            let report = verify::compare(&entries, &index);
            print!("{}", report.table(max_rows));
            println!("{}", report.summary_line());
            Ok(if report.total().ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn serial_main(
    device: SerialDeviceArg,
    seed: u64,
    rate_hz: f64,
    faults: sensor_sim::serial::SerialFaults,
    frames: Option<u64>,
    link: Option<PathBuf>,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use sensor_sim::serial::{
        open_pty, write_nonblocking, SerialDevice, SerialStream, SerialSummary,
    };
    if !(rate_hz.is_finite() && rate_hz > 0.0) {
        bail!("--rate-hz must be > 0");
    }
    let device = match device {
        SerialDeviceArg::Pms5003 => SerialDevice::Pms5003,
        SerialDeviceArg::Sds011 | SerialDeviceArg::Node => SerialDevice::Sds011,
    };
    let period = Duration::from_secs_f64(1.0 / rate_hz);
    let start_ms = sensor_sim::civil_time::parse_rfc3339_ms("2026-11-24T00:30:00Z")?;
    let mut stream = SerialStream::new(
        device,
        seed,
        faults,
        start_ms,
        period.as_millis().max(1) as i64,
    );
    let mut summary = SerialSummary::default();
    let limit = frames.unwrap_or(u64::MAX);
    let count = |summary: &mut SerialSummary, c: &sensor_sim::serial::Chunk| {
        summary.frames += 1;
        for f in &c.faults {
            *summary
                .faults
                .entry(format!("{f:?}").to_lowercase())
                .or_default() += 1;
        }
    };
    if let Some(path) = output {
        let mut out = BufWriter::new(
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        for _ in 0..limit.min(10_000_000) {
            let c = stream.next_chunk();
            out.write_all(&c.bytes)?;
            summary.bytes += c.bytes.len() as u64;
            count(&mut summary, &c);
        }
        out.flush()?;
    } else {
        let pty = open_pty()?;
        if let Some(l) = &link {
            let _ = std::fs::remove_file(l);
            std::os::unix::fs::symlink(&pty.path, l)
                .with_context(|| format!("symlink {}", l.display()))?;
        }
        println!("{}", serde_json::json!({ "pty": pty.path, "link": link }));
        std::io::stdout().flush()?;
        let started = std::time::Instant::now();
        for n in 0..limit {
            let c = stream.next_chunk();
            let written = write_nonblocking(&pty.master, &c.bytes)?;
            summary.bytes += written as u64;
            summary.dropped_bytes += (c.bytes.len() - written) as u64;
            count(&mut summary, &c);
            let due = period.mul_f64((n + 1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if let Some(l) = &link {
            let _ = std::fs::remove_file(l);
        }
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// Writes to the pty master without ever blocking: bytes nobody reads are dropped, as on a
/// real line with no listener.
struct LossyPty<'a> {
    fd: &'a std::os::fd::OwnedFd,
    dropped: u64,
}

impl Write for LossyPty<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n =
            sensor_sim::serial::write_nonblocking(self.fd, buf).map_err(std::io::Error::other)?;
        self.dropped += (buf.len() - n) as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn node_main(
    node_id: u32,
    seed: u64,
    seconds: Option<u64>,
    link: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use ioc_node_sim::{run_node, spawn_reader, Pace, SimNode};
    let pty = sensor_sim::serial::open_pty()?;
    if let Some(l) = &link {
        let _ = std::fs::remove_file(l);
        std::os::unix::fs::symlink(&pty.path, l)
            .with_context(|| format!("symlink {}", l.display()))?;
    }
    println!(
        "{}",
        serde_json::json!({ "pty": pty.path, "link": link, "node_id": node_id })
    );
    std::io::stdout().flush()?;
    let reader = File::from(pty.master.try_clone()?);
    let from_gateway = spawn_reader(reader);
    let mut node = SimNode::new(node_id, seed);
    let mut out = LossyPty {
        fd: &pty.master,
        dropped: 0,
    };
    let duration_ms = seconds.map_or(u64::MAX / 2, |s| s.saturating_mul(1000));
    let stats = run_node(
        &mut node,
        &mut out,
        Some(&from_gateway),
        duration_ms,
        10,
        Pace::RealTime,
    )?;
    if let Some(l) = &link {
        let _ = std::fs::remove_file(l);
    }
    println!(
        "{}",
        serde_json::json!({ "bytes_out": stats.bytes_out, "bytes_in": stats.bytes_in, "dropped_bytes": out.dropped, "steps": stats.steps })
    );
    Ok(ExitCode::SUCCESS)
}
