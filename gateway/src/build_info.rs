//! Which build this binary is: the crate version and the git commit it was built from
//! (recorded by `build.rs`). A province runs hundreds of boxes; the IOC must be able to tell
//! which build each one runs from `--version`, `/healthz`, the live page and the `build_info`
//! metric alike.

/// The crate version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit (12 hex digits), or what `IOC_GATEWAY_COMMIT` said at build time, or
/// `unknown`.
pub const COMMIT: &str = env!("IOC_GATEWAY_COMMIT");
/// What `--version` prints after the name: `0.1.0 (commit 0123456789ab)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("IOC_GATEWAY_COMMIT"),
    ")"
);

/// Sets the `build_info{version,commit}` gauge to 1 (the Prometheus convention for build
/// metadata: join on it to label other series by build).
pub fn record_metric() {
    metrics::gauge!("build_info", "version" => VERSION, "commit" => COMMIT).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_version_and_commit() {
        assert!(LONG_VERSION.starts_with(VERSION));
        assert!(LONG_VERSION.contains(COMMIT));
        assert!(!COMMIT.is_empty());
    }
}
