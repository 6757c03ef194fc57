//! The `ioc-gateway` binary: command line, logging, signals. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ioc_gateway::config::Config;

#[derive(Parser)]
#[command(
    name = "ioc-gateway",
    version,
    about = "Edge telemetry gateway for smart-city operations centres"
)]
struct Cli {
    /// Log format: readable text on a terminal, JSON lines for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Path to the TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask the running gateway (its HTTP API) what is wrong, in one screen.
    Status {
        /// The gateway's HTTP address ([http] listen).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Name of an environment variable holding the HTTP token, if [http] has one.
        #[arg(long)]
        token_env: Option<String>,
    },
    /// Listen on a serial port and show what decodes (for commissioning a sensor).
    Probe {
        /// Serial port, e.g. /dev/ttyUSB0.
        #[arg(long)]
        port: PathBuf,
        /// Baud rate (default: the protocol's usual one; with auto, 9600 and 115200 are tried).
        #[arg(long)]
        baud: Option<u32>,
        #[arg(long, value_enum, default_value = "auto")]
        protocol: ioc_gateway::cli::probe::ProbeProtocol,
        /// Give up if nothing decodes within this many seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Inspect the disk buffer: read-only, safe while a gateway runs on it (takes no lock).
    Buffer {
        #[command(subcommand)]
        command: BufferCommand,
    },
    /// Check a config file: exit 0 if valid, else print where the problem is and exit 2.
    CheckConfig {
        /// Path to the TOML config file.
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BufferCommand {
    /// Per class: unsent and acked lines, time span of the unsent readings, damage, disk use.
    Stats {
        #[command(flatten)]
        source: BufferSourceArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the buffered readings as plain line protocol (urgent class first, oldest first),
    /// exactly what the gateway would send; a summary goes to stderr.
    Export {
        #[command(flatten)]
        source: BufferSourceArgs,
        /// Output file, or `-` for standard output.
        #[arg(long, short, default_value = "-")]
        output: PathBuf,
        /// Which priority class to export.
        #[arg(long, value_enum, default_value = "all")]
        class: ioc_gateway::cli::buffer::ClassChoice,
        /// Also export what the store already acknowledged but is still on disk.
        #[arg(long)]
        include_acked: bool,
    },
}

/// Where the buffer is: exactly one of `--config` and `--data-dir`.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct BufferSourceArgs {
    /// The gateway's config file (its data_dir, and max_disk_mb as the disk bound).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The gateway's data_dir, or the buffer directory itself.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl BufferSourceArgs {
    fn source(self) -> ioc_gateway::cli::buffer::BufferSource {
        use ioc_gateway::cli::buffer::BufferSource;
        match (self.config, self.data_dir) {
            (Some(config), _) => BufferSource::Config(config),
            (None, Some(dir)) => BufferSource::DataDir(dir),
            // clap's group makes one of them required.
            (None, None) => BufferSource::DataDir(PathBuf::from(".")),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (gateway {}, {} mqtt input(s), {} serial input(s), output {})",
                    config.display(),
                    c.gateway.id,
                    c.inputs.mqtt.len(),
                    c.inputs.serial.len(),
                    c.output.influxdb.url
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status { url, token_env } => match status(&url, token_env.as_deref()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Probe {
            port,
            baud,
            protocol,
            seconds,
        } => {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(ioc_gateway::cli::probe::probe(port, baud, protocol, seconds))
                });
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Buffer { command } => buffer(command),
        Command::Run { config } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn buffer(command: BufferCommand) -> ExitCode {
    use ioc_gateway::cli::buffer as buffercmd;
    let result = match command {
        BufferCommand::Stats { source, json } => {
            buffercmd::stats(&source.source(), json, buffercmd::stderr_is_terminal())
                .map(|text| print!("{text}"))
        }
        BufferCommand::Export {
            source,
            output,
            class,
            include_acked,
        } => buffercmd::export(
            &source.source(),
            class,
            include_acked,
            &buffercmd::ExportTarget::parse(&output),
            buffercmd::stderr_is_terminal(),
        )
        .map(|summary| eprintln!("{}", buffercmd::summary_line(&summary))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `export | head`: the reader has what it wanted.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {e}");
            ExitCode::from(code)
        }
    }
}

fn status(url: &str, token_env: Option<&str>) -> anyhow::Result<String> {
    let token = ioc_gateway::config::resolve_secret("--token-env", token_env, None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(ioc_gateway::cli::status::status(url, token))
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    // Before anything records a metric (buffer recovery does).
    ioc_gateway::http::install_metrics_recorder();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: stopping inputs and flushing the buffer");
            let _ = stop_tx.send(true);
        });
        ioc_gateway::app::run(config, stop_rx).await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
