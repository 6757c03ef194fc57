//! The `ioc-gateway` binary's edge: its command line and one module per subcommand.
//!
//! `main.rs` parses [`Cli`], starts logging and hands the command to [`execute`]; everything a
//! subcommand does lives in its module here, its runtime comes from [`runtime`] and its exit
//! status from [`exit`]. This module may use any part of the library; nothing in the library
//! uses it.

pub mod buffer;
pub mod check_config;
pub mod exit;
pub mod logging;
pub mod probe;
pub mod run;
pub mod runtime;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use exit::Exit;
use logging::LogFormat;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "ioc-gateway",
    version = crate::build_info::LONG_VERSION,
    about = "Edge telemetry gateway for smart-city operations centres"
)]
pub struct Cli {
    /// Log format: readable text on a terminal, JSON lines for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
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
        protocol: probe::ProbeProtocol,
        /// Give up if nothing decodes within this many seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Inspect the disk buffer: read-only, safe while a gateway runs on it (takes no lock).
    Buffer {
        #[command(subcommand)]
        command: BufferCommand,
    },
    /// Check a config file: exit 0 if valid, else print where the problem is and exit 78.
    CheckConfig {
        /// Path to the TOML config file.
        config: PathBuf,
        /// One JSON object on stdout (`ok`, `file`, `errors` with line, key and message).
        #[arg(long)]
        json: bool,
    },
}

/// `buffer`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum BufferCommand {
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
        class: buffer::ClassChoice,
        /// Also export what the store already acknowledged but is still on disk.
        #[arg(long)]
        include_acked: bool,
    },
}

/// Where the buffer is: exactly one of `--config` and `--data-dir`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct BufferSourceArgs {
    /// The gateway's config file (its data_dir, and max_disk_mb as the disk bound).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The gateway's data_dir, or the buffer directory itself.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl From<BufferSourceArgs> for buffer::BufferSource {
    fn from(args: BufferSourceArgs) -> Self {
        match (args.config, args.data_dir) {
            (Some(config), _) => buffer::BufferSource::Config(config),
            (None, Some(dir)) => buffer::BufferSource::DataDir(dir),
            // clap's group makes one of them required.
            (None, None) => buffer::BufferSource::DataDir(PathBuf::from(".")),
        }
    }
}

/// Runs `command` to its end and says how the process should exit.
pub fn execute(command: Command) -> Exit {
    match command {
        Command::Run { config } => run::execute(&config),
        Command::Status { url, token_env } => status::execute(&url, token_env.as_deref()),
        Command::Probe {
            port,
            baud,
            protocol,
            seconds,
        } => probe::execute(port, baud, protocol, seconds),
        Command::Buffer {
            command: BufferCommand::Stats { source, json },
        } => buffer::execute_stats(&source.into(), json),
        Command::Buffer {
            command:
                BufferCommand::Export {
                    source,
                    output,
                    class,
                    include_acked,
                },
        } => buffer::execute_export(&source.into(), class, include_acked, &output),
        Command::CheckConfig { config, json } => check_config::execute(&config, json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_arguments_exit_with_the_bad_input_code() {
        let err = Cli::try_parse_from(["ioc-gateway", "--bogus"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(Exit::BadInput.code()));
        let err = Cli::try_parse_from(["ioc-gateway", "buffer", "stats"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(Exit::BadInput.code()));
    }
}
