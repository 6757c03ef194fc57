//! The `ioc-gateway` binary's subcommands, one module each.

pub mod buffer;
pub mod probe;
pub mod status;
