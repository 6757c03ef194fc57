//! The one map from what happened to the code `ioc-gateway` exits with.
//!
//! Scripts and the systemd unit tell outcomes apart by these codes, so every subcommand takes
//! its code from here rather than writing a number of its own.
//!
//! | code | [`Exit`]             | when                                                                     |
//! |------|----------------------|--------------------------------------------------------------------------|
//! | 0    | [`Exit::Success`]    | `run` stopped cleanly after a signal; `check-config`: the file is valid; `status` printed its summary; `probe`: at least one frame decoded; `buffer stats` / `buffer export` finished, or the reader of the export went away (`export \| head`); `--help`, `--version` |
//! | 1    | [`Exit::Failure`]    | `run` failed (config does not load, runtime, or the gateway stopped with an error); `status` failed (token variable, runtime, gateway unreachable or answering badly); `probe`: nothing decoded; `buffer`: I/O trouble reading the buffer, or JSON rendering |
//! | 2    | [`Exit::BadInput`]   | bad command-line arguments (clap's own exit); `probe`: the port cannot be opened (or no runtime); `buffer`: no buffer at the path, the output cannot be created or lies inside the buffer |
//! | 78   | [`Exit::Config`]     | the config is unusable (`EX_CONFIG` of sysexits.h): `check-config` found a problem; `run` or `buffer` cannot load it; `run` finds what `check-config` would (a secret it cannot resolve, a TLS file it cannot read or parse, a `data_dir` it cannot write). The unit's `RestartPreventExitStatus=78` stops systemd from restart-looping on it |

use std::process::ExitCode;

/// Every status the binary exits with; see the module's table for which situation gives which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the command did what was asked.
    Success,
    /// 1: the command ran and failed, or found nothing.
    Failure,
    /// 2: something the user gave cannot be used: arguments, a path or port.
    BadInput,
    /// 78 (`EX_CONFIG`): the configuration is unusable; restarting cannot help.
    Config,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::BadInput => 2,
            Exit::Config => 78,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(
            [Exit::Success, Exit::Failure, Exit::BadInput, Exit::Config].map(Exit::code),
            [0, 1, 2, 78]
        );
    }
}
