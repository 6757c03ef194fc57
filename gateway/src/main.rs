//! The `ioc-gateway` binary: parses the command line, starts logging and runs the subcommand.
//! Everything else is in the library ([`ioc_gateway::cli`] and what it calls).

use std::process::ExitCode;

use clap::Parser;
use ioc_gateway::cli::{self, logging, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    cli::execute(cli.command).into()
}
