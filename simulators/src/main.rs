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

mod text_serial;

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
    /// XY-MD02 temperature/humidity transmitters as Modbus RTU slaves on one RS-485 bus
    /// (answers function 3/4 reads; see --slaves)
    #[value(name = "xy-md02", alias = "modbus")]
    XyMd02,
    /// A GNSS receiver on a bus printing NMEA 0183 sentences (RMC + GGA per fix, optionally
    /// VTG, GLL, GSA; 10 fixes/s by default), with checksum, torn-line and noise faults and an
    /// optional stretch without a fix (see --talker, --sentences, --no-fix, --line-ending)
    #[value(name = "nmea0183", alias = "nmea")]
    Nmea0183,
    /// A Vaisala weather station: a WXT5xx answering ASCII polls (`0R0` composite, `0R1`…`0R5`)
    /// or a WMT700 sending `$`-framed message 25 (see --station, --interval-ms), with invalid
    /// (`#`) values, noise, torn and corrupt messages
    Vaisala,
    /// An instrument printing one reading per line, for `protocol = "lines"` (see
    /// --line-format: a water-level logger `$LVL,<ms>,<mm>,<°C>*hh` or a sound level meter's
    /// CSV), with checksum, torn-line, noise and sentinel faults
    Lines,
}

/// `sensor-sim demo`'s options.
#[derive(clap::Args)]
struct DemoArgs {
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
    /// Port of the embedded MQTT broker (another free port if taken; 0 = any free port).
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// Address of the gateway's live page (another free port if taken; port 0 = any).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// Address of the gateway's webhook inputs, where the demo posts the plate engines'
    /// webhooks (another free port if taken; port 0 = any).
    #[arg(long, default_value = "127.0.0.1:8181")]
    webhook: std::net::SocketAddr,
    /// Seed of the simulated district.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// A scenario file instead of the built-in district.
    #[arg(long)]
    scenario: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// The one-command demo: an embedded MQTT broker, a simulated district and the gateway with
    /// its live page, in one process. Forwards to a store if one is found or given. Needs the
    /// `demo` feature (`cargo run --release -p sensor-sim --features demo -- demo`).
    Demo(DemoArgs),
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
    /// Send the vendor payloads of the gateway's presets (platerecognizer, openalpr, chirpstack,
    /// ttn) over MQTT and/or as webhooks, times moved to now; prints a one-line JSON summary.
    Presets(PresetsArgs),
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
    /// Stream a serial sensor into a new pseudo-terminal (prints its path first) or a file;
    /// `xy-md02` answers Modbus RTU requests on the pty instead.
    Serial(Box<SerialArgs>),
    /// N real ioc-gateway processes, each with its own simulated district (one MQTT broker,
    /// topics city/gw-NNN/env/+), writing to one store tier; prints per-gateway and total
    /// figures and writes a manifest per gateway for `verify`. Exit 0 only if every backlog
    /// drained and (with --read-store) nothing was lost or doubled.
    Fleet(Box<FleetArgs>),
    /// Compare a manifest with what the store holds; exit 0 only if nothing is missing or different.
    Verify {
        /// Manifest written by `run`.
        #[arg(long)]
        manifest: PathBuf,
        /// Store base URL, e.g. http://127.0.0.1:8428. Repeat it for the nodes of a sharded
        /// store (vmagent in front of several VictoriaMetrics): what they hold together is
        /// compared, a point on two nodes counting as a duplicate.
        #[arg(long, required = true)]
        store: Vec<String>,
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

/// `sensor-sim fleet`'s options.
#[derive(clap::Args)]
struct FleetArgs {
    /// Number of gateway processes (ids gw-001 …).
    #[arg(long)]
    gateways: usize,
    /// Environment sensors per gateway.
    #[arg(long, default_value_t = 20)]
    sensors: usize,
    /// Readings per second per sensor.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds the districts publish.
    #[arg(long)]
    duration: f64,
    /// MQTT broker carrying every district, mqtt://HOST:PORT (it must queue QoS 1 messages
    /// for a subscriber that lags: mosquitto's max_queued_messages 0 or large).
    #[arg(long)]
    broker: String,
    /// Where every gateway writes (v2 API): VictoriaMetrics, or vmagent in front of nodes.
    #[arg(long)]
    store_url: String,
    /// Storage nodes to read back from (VictoriaMetrics base URLs; repeat for each node).
    /// Without it nothing is read back.
    #[arg(long)]
    read_store: Vec<String>,
    /// The ioc-gateway binary (default: next to this sensor-sim).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Working directory (gw-NNN/ config, data and log per gateway, manifests/,
    /// fleet-report.json).
    #[arg(long, default_value = "ioc-fleet")]
    dir: PathBuf,
    /// Seed of the districts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// HTTP port of gw-001 (gw-NNN gets this + NNN - 1); 0 = free ports.
    #[arg(long, default_value_t = 0)]
    http_base_port: u16,
    /// `[gateway] health_interval_s` of every gateway (0 = off).
    #[arg(long, default_value_t = 10)]
    health_interval_s: u64,
    /// `[buffer] max_disk_mb` of every gateway.
    #[arg(long, default_value_t = 64)]
    max_disk_mb: u64,
    /// An extra `[output.influxdb]` key for every gateway, KEY=TOML-VALUE (repeatable), e.g.
    /// flush_interval_ms=500, 'urls=["http://a:8429","http://b:8429"]'.
    #[arg(long = "output-set")]
    output_set: Vec<String>,
    /// After publishing, wait at most this many seconds for every backlog to drain.
    #[arg(long, default_value_t = 600.0)]
    drain_timeout: f64,
    /// Retry the read-back this many seconds while something is missing.
    #[arg(long, default_value_t = 60.0)]
    readback_timeout: f64,
    /// Steady CPU is measured from this many seconds after the start…
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// …over this many seconds.
    #[arg(long, default_value_t = 30.0)]
    steady_window: f64,
    /// MQTT connections of the publisher.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// A gateway counts as backlogged above this many unsent lines (default: 5 s of its data).
    #[arg(long)]
    backlog_threshold: Option<u64>,
    /// RUST_LOG of the gateways.
    #[arg(long, default_value = "warn")]
    gateway_log: String,
    /// Show every gateway when there are at most this many (else only those with problems).
    #[arg(long, default_value_t = 60)]
    max_rows: usize,
}

#[derive(clap::Args)]
struct PresetsArgs {
    /// Broker URL, mqtt://HOST:PORT: publish each payload on its vendor's topic (QoS 1).
    #[arg(long)]
    broker: Option<String>,
    /// Base URL of the gateway's webhook inputs, http://HOST:PORT: post each payload to
    /// /webhook/<preset>.
    #[arg(long)]
    webhook: Option<String>,
    /// Bearer token for the webhooks.
    #[arg(long, conflicts_with = "token_env")]
    token: Option<String>,
    /// Read the bearer token from this environment variable.
    #[arg(long)]
    token_env: Option<String>,
    /// Manifest output file (JSON lines of what the broker or the gateway acknowledged).
    #[arg(long)]
    manifest: PathBuf,
    /// Send every payload this many times (each time with new times).
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// Payloads per second on each transport, 0 = as fast as they are taken.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Where the payloads' times go: `now` (each send's latest time is the moment it is sent),
    /// an RFC 3339 UTC instant (the first send's; later ones follow the clock), or `fixture`
    /// (the times as published).
    #[arg(long, default_value = "now")]
    start: String,
    /// Only these presets (repeatable; default all).
    #[arg(long = "preset")]
    presets: Vec<String>,
    /// MQTT client id (default sensor-sim-presets-<pid>).
    #[arg(long)]
    client_id: Option<String>,
    /// Give a webhook up after retrying it this many seconds (503, connection errors).
    #[arg(long, default_value_t = 60.0)]
    retry_for: f64,
}

#[derive(clap::Args)]
struct SerialArgs {
    /// Which sensor or protocol.
    #[arg(long, visible_alias = "protocol", value_enum)]
    device: SerialDeviceArg,
    /// Seed.
    #[arg(long)]
    seed: u64,
    /// Frames per second (nmea0183: fixes per second, default 10; lines: lines per second;
    /// others default 1).
    #[arg(long)]
    rate_hz: Option<f64>,
    /// Faults (probability per frame / answer). pms5003, sds011: noise=0.05,checksum=0.02,
    /// truncate=0.01; xy-md02: timeout=..,bad_crc=..,exception=..,noise=..,slow=..;
    /// nmea0183 (per sentence): checksum=..,truncate=..,noise=..,split=..;
    /// vaisala (per message): invalid=..,noise=..,truncate=..,checksum=.. (checksum: wmt700);
    /// lines (per line): checksum=..,truncate=..,noise=..,invalid=..,split=.. (checksum: level)
    #[arg(long, default_value = "")]
    faults: String,
    /// `nmea0183`: talker of the sentences (GN multi-GNSS, GP GPS, GL, GA, BD).
    #[arg(long, default_value = "GN")]
    talker: String,
    /// `nmea0183`: sentences per fix; RMC and GGA always, plus any of vtg, gll, gsa.
    #[arg(long, default_value = "rmc,gga")]
    sentences: String,
    /// `nmea0183`: fixes FROM..FROM+COUNT without a fix (RMC status V, GGA quality 0), FROM:COUNT.
    #[arg(long)]
    no_fix: Option<String>,
    /// `nmea0183`, `vaisala`, `lines`: line ends, crlf, lf, cr or mix (each line one of the
    /// three).
    #[arg(long, default_value = "crlf")]
    line_ending: String,
    /// `nmea0183`, `lines`: UTC time of the first fix / line, `now` (the current second) or
    /// RFC 3339.
    #[arg(long, default_value = "now")]
    start: String,
    /// `lines`: level (a canal water-level logger, `$LVL,<unix ms>,<mm>,<°C>*hh`, NMEA-style
    /// checksum, -9999 for no echo) or noise (a sound level meter, CSV with a header and its
    /// own local time, one line per second of its clock, -99.9 for an overload); read by the
    /// example inputs canal-level-3 and noise-hoan-kiem of config/text-instruments.toml.
    #[arg(long, default_value = "level")]
    line_format: String,
    /// `vaisala`: wxt530 (ASCII protocol) or wmt700 (`$`-framed message 25).
    #[arg(long, default_value = "wxt530")]
    station: String,
    /// `vaisala` WXT5xx: the station's address (one character).
    #[arg(long, default_value_t = '0')]
    address: char,
    /// `vaisala`: automatic mode, a composite message (WMT700: message 25) every this many ms,
    /// besides answering polls.
    #[arg(long)]
    interval_ms: Option<u64>,
    /// `nmea0183`, `vaisala`, `lines`: the measurement the gateway's config gives the input
    /// (manifest; default gnss / weather / water_level or noise).
    #[arg(long)]
    measurement: Option<String>,
    /// Stop after this many frames (default: run until killed; `node`: simulated seconds to
    /// run; `xy-md02`: requests for our slaves).
    #[arg(long)]
    frames: Option<u64>,
    /// Node id (`--device node`).
    #[arg(long, default_value_t = 1)]
    node_id: u32,
    /// `node`: sample interval at boot, ms.
    #[arg(long)]
    sample_interval_ms: Option<u32>,
    /// `node`: status interval, ms.
    #[arg(long)]
    status_interval_ms: Option<u32>,
    /// `node`: simulated time per wall-clock time (5 = five times real time).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// `node`: lose readings at a simulated second, SECONDS:N (a forced sequence gap of N).
    #[arg(long)]
    gap_at: Option<String>,
    /// `node`: reboot the node at this simulated second.
    #[arg(long)]
    reboot_at: Option<f64>,
    /// `xy-md02`: slave addresses on the bus and their behaviour, e.g. 1,2:dead,3:bad_crc,
    /// 4:exception,5:noise,6:slow (a plain address answers correctly).
    #[arg(long, default_value = "1")]
    slaves: String,
    /// `xy-md02`: simulated ms between a transmitter's successive samples (one per read).
    #[arg(long, default_value_t = 5_000)]
    sample_ms: i64,
    /// `xy-md02`: delay of a slow answer, ms.
    #[arg(long, default_value_t = 1_500)]
    slow_ms: u64,
    /// Also create a symlink at this path pointing to the pty.
    #[arg(long)]
    link: Option<PathBuf>,
    /// Write the bytes to this file instead of a pty (no pacing; pms5003/sds011).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Start streaming only once another process (the gateway) has opened the pty (waits up to
    /// 60 s). Implied by --manifest.
    #[arg(long)]
    wait_reader: bool,
    /// Write a manifest of what was sent, in the gateway's mapping, for `sensor-sim verify`
    /// (pms5003, sds011, xy-md02, nmea0183, vaisala, lines).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The `sensor_id` the gateway's config gives this input (manifest tags); `{slave}` is
    /// replaced by the slave address (xy-md02 default: th-{slave}).
    #[arg(long)]
    sensor_id: Option<String>,
    /// A static tag the gateway's config gives this input (manifest tags), KEY=VALUE, repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
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

/// `sensor-sim demo`: the embedded broker, the district and the real gateway in this process.
#[cfg(feature = "demo")]
fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let DemoArgs {
        dir,
        store,
        api,
        mqtt_port,
        http,
        webhook,
        seed,
        duration,
        scenario,
    } = args;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,ioc_gateway=info,ioc_gateway::output::influx=error,rumqttd=off",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    ioc_gateway::http::install_metrics_recorder();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let options = sensor_sim::demo::DemoOptions {
        dir,
        store,
        api_v1: matches!(api, ApiArg::V1),
        mqtt_port,
        http_listen: http,
        webhook_listen: webhook,
        seed,
        duration: duration.map(Duration::from_secs_f64),
        scenario,
    };
    let result = runtime.block_on(sensor_sim::demo::run_demo(options));
    // Blocking helpers (the publisher's pacing thread) may be mid-sleep: do not wait long.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `sensor-sim demo` in a build without the `demo` feature (which brings in the gateway and the
/// embedded broker, rumqttd, that nothing else of the simulators needs): says how to get it.
#[cfg(not(feature = "demo"))]
fn demo(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this sensor-sim was built without the `demo` feature (the embedded broker and the \
         gateway): run `cargo run --release -p sensor-sim --features demo -- demo`"
    )
}

fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Demo(args) => demo(args),
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
                    exclusive: false,
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
        Command::Presets(args) => presets_main(args),
        Command::Fleet(args) => fleet_main(*args),
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
        Command::Serial(args) => match args.device {
            SerialDeviceArg::Node => node_main(&args),
            SerialDeviceArg::XyMd02 => modbus_main(&args),
            SerialDeviceArg::Nmea0183 => text_serial::nmea_main(&args),
            SerialDeviceArg::Vaisala => text_serial::vaisala_main(&args),
            SerialDeviceArg::Lines => text_serial::lines_main(&args),
            _ => serial_main(&args),
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
            let (header, mut entries) = manifest::read(std::io::BufReader::new(file))?;
            if check_cameras {
                for e in entries
                    .iter_mut()
                    .filter(|e| e.x == manifest::Expect::Unchecked)
                {
                    e.x = manifest::Expect::Stored;
                }
            }
            let shape = Shape::of(&entries);
            let mut index = verify::StoreIndex::default();
            for url in store {
                let query = StoreQuery {
                    url,
                    api: match api {
                        ApiArg::V2 => StoreApi::V2,
                        ApiArg::V1 => StoreApi::V1,
                    },
                    database: database.clone(),
                    gateway_id: gateway_id.clone(),
                };
                index.merge(verify::fetch(&query, &shape)?);
            }
            let exclusive = header.is_some_and(|h| h.exclusive);
            let report = verify::compare_with(&entries, &index, exclusive);
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

/// `sensor-sim fleet`: runs the fleet, prints the table and the report's JSON (one line).
fn fleet_main(a: FleetArgs) -> anyhow::Result<ExitCode> {
    let secs = |name: &str, v: f64| -> anyhow::Result<Duration> {
        if v.is_finite() && v >= 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            bail!("--{name} must be a number of seconds >= 0")
        }
    };
    let gateway_bin = match a.gateway_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating sensor-sim (to find ioc-gateway next to it)")?
            .with_file_name("ioc-gateway"),
    };
    let options = sensor_sim::fleet::FleetOptions {
        gateways: a.gateways,
        sensors: a.sensors,
        rate_hz: a.rate,
        duration: secs("duration", a.duration)?,
        broker: a.broker,
        store_url: a.store_url,
        gateway_bin,
        dir: a.dir,
        seed: a.seed,
        http_base_port: a.http_base_port,
        health_interval_s: a.health_interval_s,
        max_disk_mb: a.max_disk_mb,
        output_set: a.output_set,
        read_stores: a.read_store,
        drain_timeout: secs("drain-timeout", a.drain_timeout)?,
        readback_timeout: secs("readback-timeout", a.readback_timeout)?,
        warmup: secs("warmup", a.warmup)?,
        steady_window: secs("steady-window", a.steady_window)?,
        clients: a.clients,
        backlog_threshold: a.backlog_threshold,
        gateway_log: a.gateway_log,
    };
    // Ctrl-C or SIGTERM: stop publishing, then stop every gateway (they run in their own
    // process group, so the signal does not reach them directly).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let flag = stop.clone();
    let watcher = std::thread::spawn(move || {
        signals.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            flag.store(true, std::sync::atomic::Ordering::Release);
        })
    });
    drop(watcher);
    let report = sensor_sim::fleet::run(&options, stop)?;
    print!("{}", report.table(a.max_rows));
    println!("{}", serde_json::to_string(&report)?);
    Ok(
        if report.drained && (options.read_stores.is_empty() || report.ok()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// The manifest of a serial run (a file written line by line, so that a killed run keeps
/// what it sent), or nothing.
struct SerialManifest {
    out: Option<BufWriter<File>>,
    tags: std::collections::BTreeMap<String, String>,
}

impl SerialManifest {
    fn open(a: &SerialArgs, device: &str, exclusive: bool) -> anyhow::Result<Self> {
        let mut tags = std::collections::BTreeMap::new();
        for t in &a.tags {
            let (k, v) = t
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .with_context(|| format!("--tag {t:?}: expected KEY=VALUE"))?;
            tags.insert(k.to_owned(), v.to_owned());
        }
        let out = match &a.manifest {
            None => None,
            Some(path) => {
                let file =
                    File::create(path).with_context(|| format!("creating {}", path.display()))?;
                let mut out = BufWriter::new(file);
                manifest::write_header(
                    &mut out,
                    &Header {
                        version: 1,
                        scenario: format!("serial-{device}"),
                        seed: a.seed,
                        qos: 0,
                        exclusive,
                    },
                )?;
                out.flush()?;
                Some(out)
            }
        };
        Ok(Self { out, tags })
    }

    fn write(&mut self, entry: &manifest::Entry) -> std::io::Result<()> {
        if let Some(out) = &mut self.out {
            out.write_all(entry.to_line().as_bytes())?;
            out.flush()?;
        }
        Ok(())
    }
}

/// Creates the pty, its optional symlink, prints `{"pty":..}` (plus `extra` fields) and, when
/// asked, waits for the gateway to open it.
fn serial_pty(
    a: &SerialArgs,
    wait: bool,
    extra: serde_json::Value,
) -> anyhow::Result<sensor_sim::serial::Pty> {
    let mut pty = sensor_sim::serial::open_pty()?;
    if let Some(l) = &a.link {
        let _ = std::fs::remove_file(l);
        std::os::unix::fs::symlink(&pty.path, l)
            .with_context(|| format!("symlink {}", l.display()))?;
    }
    let mut line = serde_json::json!({ "pty": pty.path, "link": a.link });
    if let (Some(obj), serde_json::Value::Object(more)) = (line.as_object_mut(), extra) {
        obj.extend(more);
    }
    println!("{line}");
    std::io::stdout().flush()?;
    if wait {
        if !pty.wait_for_reader(Duration::from_secs(60)) {
            bail!("nobody opened {} within 60 s", pty.path.display());
        }
        // The reader flushes the terminal right after opening it (tcflush): let it settle.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(pty)
}

fn serial_main(a: &SerialArgs) -> anyhow::Result<ExitCode> {
    use sensor_sim::manifest::{Entry, Expect, FaultKind};
    use sensor_sim::serial::{
        frame_fields, write_nonblocking, LineFault, SerialDevice, SerialFaults, SerialStream,
        SerialSummary,
    };
    let rate_hz = a.rate_hz.unwrap_or(1.0);
    if !(rate_hz.is_finite() && rate_hz > 0.0) {
        bail!("--rate-hz must be > 0");
    }
    let faults: SerialFaults = a.faults.parse()?;
    let (device, model) = match a.device {
        SerialDeviceArg::Sds011 => (SerialDevice::Sds011, "sds011"),
        _ => (SerialDevice::Pms5003, "pms5003"),
    };
    let mut record = SerialManifest::open(a, model, false)?;
    record.tags.insert("model".into(), model.into());
    if let Some(id) = &a.sensor_id {
        record.tags.insert("sensor_id".into(), id.clone());
    }
    let period = Duration::from_secs_f64(1.0 / rate_hz);
    let start_ms = sensor_sim::civil_time::parse_rfc3339_ms("2026-11-24T00:30:00Z")?;
    let mut stream = SerialStream::new(
        device,
        a.seed,
        faults,
        start_ms,
        period.as_millis().max(1) as i64,
    );
    let mut summary = SerialSummary::default();
    let limit = a.frames.unwrap_or(u64::MAX);
    let count = |summary: &mut SerialSummary, c: &sensor_sim::serial::Chunk| {
        summary.frames += 1;
        for f in &c.faults {
            *summary
                .faults
                .entry(format!("{f:?}").to_lowercase())
                .or_default() += 1;
        }
    };
    if let Some(path) = &a.output {
        let mut out = BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for _ in 0..limit.min(10_000_000) {
            let c = stream.next_chunk();
            out.write_all(&c.bytes)?;
            summary.bytes += c.bytes.len() as u64;
            count(&mut summary, &c);
        }
        out.flush()?;
    } else {
        let pty = serial_pty(
            a,
            a.wait_reader || a.manifest.is_some(),
            serde_json::json!({}),
        )?;
        let started = std::time::Instant::now();
        for n in 0..limit {
            let c = stream.next_chunk();
            let written = write_nonblocking(&pty.master, &c.bytes)?;
            let sent_ms = sensor_sim::modbus_slave::unix_ms();
            summary.bytes += written as u64;
            summary.dropped_bytes += (c.bytes.len() - written) as u64;
            count(&mut summary, &c);
            let fault = if written < c.bytes.len() || c.faults.contains(&LineFault::Truncate) {
                Some(FaultKind::Truncate)
            } else if c.faults.contains(&LineFault::Checksum) {
                Some(FaultKind::Checksum)
            } else if c.faults.contains(&LineFault::Noise) {
                Some(FaultKind::Noise)
            } else {
                None
            };
            record.write(&Entry {
                m: "air_quality".into(),
                t: record.tags.clone(),
                ts: sent_ms,
                f: frame_fields(device, &c.frame),
                x: match fault {
                    None | Some(FaultKind::Noise) => Expect::InOrder,
                    Some(_) => Expect::RejectedInOrder,
                },
                fault,
                resent: false,
            })?;
            let due = period.mul_f64((n + 1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if let Some(l) = &a.link {
            let _ = std::fs::remove_file(l);
        }
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

fn modbus_main(a: &SerialArgs) -> anyhow::Result<ExitCode> {
    use sensor_sim::manifest::{Entry, Expect, FaultKind};
    use sensor_sim::modbus_slave::{
        parse_slaves, serve_pty, AnswerFault, ModbusBus, ModbusFaults, ServeLimits,
    };
    let slaves = parse_slaves(&a.slaves)?;
    let faults: ModbusFaults = a.faults.parse()?;
    let start_ms = sensor_sim::civil_time::parse_rfc3339_ms("2026-11-24T00:30:00Z")?;
    let mut bus = ModbusBus::new(a.seed, &slaves, faults, start_ms, a.sample_ms, a.slow_ms);
    let mut record = SerialManifest::open(a, "xy-md02", false)?;
    let sensor_id = a.sensor_id.clone().unwrap_or_else(|| "th-{slave}".into());
    let addresses: Vec<u8> = slaves.iter().map(|s| s.address).collect();
    let pty = serial_pty(a, a.wait_reader, serde_json::json!({ "slaves": addresses }))?;
    let mut failed: Option<std::io::Error> = None;
    let summary = serve_pty(
        &pty,
        &mut bus,
        ServeLimits {
            requests: a.frames,
            duration: None,
            turnaround: Duration::from_millis(3),
        },
        |ex, written, sent_ms| {
            let Some(slave) = ex.slave else { return };
            let has = |f: AnswerFault| ex.faults.contains(&f);
            let (x, fault) = if has(AnswerFault::Timeout) {
                (Expect::RejectedInOrder, Some(FaultKind::Timeout))
            } else if has(AnswerFault::Exception) || ex.exception.is_some() {
                (Expect::RejectedInOrder, Some(FaultKind::Exception))
            } else if has(AnswerFault::BadCrc) {
                (Expect::RejectedInOrder, Some(FaultKind::BadCrc))
            } else if written < ex.answer.len() {
                (Expect::RejectedInOrder, Some(FaultKind::Truncate))
            } else if ex.values.is_empty() {
                return; // a read of registers the XY-MD02 map does not turn into readings
            } else if has(AnswerFault::Slow) {
                (Expect::MaybeInOrder, Some(FaultKind::Slow))
            } else if has(AnswerFault::Noise) {
                (Expect::MaybeInOrder, Some(FaultKind::Noise))
            } else {
                (Expect::InOrder, None)
            };
            let mut t = record.tags.clone();
            t.insert(
                "sensor_id".into(),
                sensor_id.replace("{slave}", &slave.to_string()),
            );
            let entry = Entry {
                m: "environment".into(),
                t,
                ts: sent_ms,
                f: if fault == Some(FaultKind::Timeout) {
                    Default::default()
                } else {
                    ex.values.clone()
                },
                x,
                fault,
                resent: false,
            };
            if let Err(e) = record.write(&entry) {
                failed.get_or_insert(e);
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e).context("writing the manifest");
    }
    // The bus goes quiet before the pty closes, so that a master's poll in progress ends with
    // timeouts (and keeps what it already read) rather than with a vanished port.
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(l) = &a.link {
        let _ = std::fs::remove_file(l);
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

/// Runs the real firmware (ioc-node-sim) on the pty: its frames out, the gateway's acks and
/// commands in, simulated time at `--speed` × real time, with an optional forced sequence gap
/// and reboot. Prints a JSON line per boot (`{"event":"boot","boot_id":..}`), gap and reboot.
fn node_main(a: &SerialArgs) -> anyhow::Result<ExitCode> {
    use ioc_node_sim::{spawn_reader, SimNode, SimNodeConfig};
    if !(a.speed.is_finite() && a.speed > 0.0) {
        bail!("--speed must be > 0");
    }
    let gap = match &a.gap_at {
        None => None,
        Some(g) => {
            let (at, n) = g
                .split_once(':')
                .and_then(|(at, n)| Some((at.parse::<f64>().ok()?, n.parse::<u32>().ok()?)))
                .with_context(|| format!("--gap-at {g:?}: expected SECONDS:N"))?;
            Some(((at * 1000.0) as u64, n))
        }
    };
    let reboot = a.reboot_at.map(|s| (s * 1000.0) as u64);
    let pty = serial_pty(
        a,
        a.wait_reader,
        serde_json::json!({ "node_id": a.node_id }),
    )?;
    let from_gateway = spawn_reader(File::from(pty.master.try_clone()?));
    let mut cfg = SimNodeConfig::new(a.node_id, a.seed);
    if let Some(ms) = a.sample_interval_ms {
        cfg.sample_interval_ms = ms;
    }
    if let Some(ms) = a.status_interval_ms {
        cfg.status_interval_ms = ms;
    }
    let mut node = SimNode::with_config(cfg);
    let event = |v: serde_json::Value| -> std::io::Result<()> {
        println!("{v}");
        std::io::stdout().flush()
    };
    event(serde_json::json!({ "event": "boot", "boot_id": node.boot_id() }))?;
    let mut out = LossyPty {
        fd: &pty.master,
        dropped: 0,
    };
    let duration_ms = a.frames.map_or(u64::MAX / 2, |s| s.saturating_mul(1000));
    let tick_ms = 50u64;
    let started = std::time::Instant::now();
    let (mut now_ms, mut bytes_out, mut bytes_in) = (0u64, 0u64, 0u64);
    let (mut gap_done, mut reboot_done) = (false, false);
    let mut boot_ids = vec![node.boot_id()];
    loop {
        while let Ok(bytes) = from_gateway.try_recv() {
            bytes_in += bytes.len() as u64;
            node.feed(&bytes);
        }
        if let Some((at, n)) = gap.filter(|(at, _)| !gap_done && now_ms >= *at) {
            node.force_gap(n);
            gap_done = true;
            event(serde_json::json!({ "event": "gap", "lost": n, "at_ms": at }))?;
        }
        if reboot.is_some_and(|at| !reboot_done && now_ms >= at) {
            node.reboot();
            reboot_done = true;
            boot_ids.push(node.boot_id());
            event(
                serde_json::json!({ "event": "reboot", "boot_id": node.boot_id(), "at_ms": now_ms }),
            )?;
        }
        let bytes = node.step(now_ms);
        if !bytes.is_empty() {
            out.write_all(&bytes)?;
            bytes_out += bytes.len() as u64;
        }
        if now_ms >= duration_ms {
            break;
        }
        now_ms = (now_ms + tick_ms).min(duration_ms);
        let due = Duration::from_secs_f64(now_ms as f64 / 1000.0 / a.speed);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    if let Some(l) = &a.link {
        let _ = std::fs::remove_file(l);
    }
    println!(
        "{}",
        serde_json::json!({ "bytes_out": bytes_out, "bytes_in": bytes_in, "dropped_bytes": out.dropped, "boot_ids": boot_ids, "simulated_ms": now_ms })
    );
    Ok(ExitCode::SUCCESS)
}

/// A manifest writer shared by the MQTT publisher and the webhook sender.
#[derive(Clone)]
struct SharedManifest(std::sync::Arc<std::sync::Mutex<BufWriter<File>>>);

impl Write for SharedManifest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("manifest lock poisoned"))?
            .write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("manifest lock poisoned"))?
            .flush()
    }
}

/// `sensor-sim presets`: every fixture `--repeat` times over MQTT (all acknowledged), then as
/// webhooks (each until its final answer); the manifest gets a payload's entries on its PUBACK
/// or the gateway's 204 / 400.
fn presets_main(a: PresetsArgs) -> anyhow::Result<ExitCode> {
    use sensor_sim::presets::{self, Planner, Preset, TimeMode};
    use sensor_sim::webhook::{WebhookOptions, WebhookSender, WebhookSummary};
    use std::sync::{Arc, Mutex};
    if a.broker.is_none() && a.webhook.is_none() {
        bail!("give --broker and/or --webhook");
    }
    if !(a.rate.is_finite() && a.rate >= 0.0) {
        bail!("--rate must be >= 0");
    }
    let mode = TimeMode::parse(&a.start).map_err(|e| anyhow::anyhow!("--start: {e}"))?;
    let mut only = Vec::new();
    for name in &a.presets {
        only.push(Preset::from_name(name).with_context(|| {
            format!("--preset {name:?}: expected platerecognizer, openalpr, chirpstack or ttn")
        })?);
    }
    let fixtures = presets::fixtures(&only);
    let token = match &a.token_env {
        Some(var) => {
            Some(std::env::var(var).with_context(|| format!("--token-env {var}: not set"))?)
        }
        None => a.token.clone(),
    };
    let file =
        File::create(&a.manifest).with_context(|| format!("creating {}", a.manifest.display()))?;
    let mut out = BufWriter::new(file);
    manifest::write_header(
        &mut out,
        &Header {
            version: 1,
            scenario: "presets".into(),
            seed: 0,
            qos: 1,
            exclusive: false,
        },
    )?;
    let shared = SharedManifest(Arc::new(Mutex::new(out)));
    let planner = Arc::new(Mutex::new(Planner::new(mode)));
    let rounds = a.repeat;
    let rate = a.rate;
    // Every fixture `--repeat` times, paced; each is planned once its turn comes.
    let sends = {
        let fixtures = fixtures.clone();
        move || {
            let fixtures = fixtures.clone();
            let started = std::time::Instant::now();
            let never = std::sync::atomic::AtomicBool::new(false);
            (0..rounds)
                .flat_map(move |_| fixtures.clone().into_iter().enumerate())
                .enumerate()
                .map(move |(n, item)| {
                    presets::wait_turn(started, n as u64, rate, &never);
                    item
                })
        }
    };

    let mqtt_summary = match &a.broker {
        None => None,
        Some(broker) => {
            let mut opts = PublishOptions::for_broker(broker)?;
            opts.qos = QoS::AtLeastOnce;
            opts.client_id_prefix = a
                .client_id
                .clone()
                .unwrap_or_else(|| format!("sensor-sim-presets-{}", std::process::id()));
            let planner = planner.clone();
            let messages = sends().filter_map(move |(i, f)| {
                let send = planner
                    .lock()
                    .ok()?
                    .plan(f, presets::unix_ms())
                    .map_err(|e| eprintln!("sensor-sim: {}: {e}", f.file))
                    .ok()?;
                Some(presets::mqtt_message(send, i))
            });
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let summary =
                runtime.block_on(mqtt::publish(messages, opts, Box::new(shared.clone())))?;
            runtime.shutdown_timeout(Duration::from_secs(2));
            Some(summary)
        }
    };

    let webhook_summary = match &a.webhook {
        None => None,
        Some(base) => {
            let mut opts = WebhookOptions::new(base);
            opts.token = token;
            opts.retry_for = Duration::from_secs_f64(a.retry_for.max(0.0));
            let sender = WebhookSender::new(opts);
            let mut summary = WebhookSummary::default();
            let started = std::time::Instant::now();
            let mut out = shared.clone();
            for (_, f) in sends() {
                let send = planner
                    .lock()
                    .map_err(|_| anyhow::anyhow!("planner lock poisoned"))?
                    .plan(f, presets::unix_ms())
                    .with_context(|| f.file)?;
                sender.deliver(&send, &mut summary, &mut out)?;
            }
            summary.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            Some(summary)
        }
    };
    let mut out = shared;
    out.flush()?;
    println!(
        "{}",
        serde_json::json!({ "mqtt": mqtt_summary, "webhook": webhook_summary })
    );
    Ok(ExitCode::SUCCESS)
}
