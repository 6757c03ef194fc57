#!/usr/bin/env bash
# test.sh — THE test command of the project (the README names it, .ci/run calls it).
#
# 1. installs the servers the end-to-end tests need if they are missing (install-deps.sh);
# 2. builds every binary of the workspace, because the end-to-end tests run `ioc-gateway` and `sensor-sim`
#    as real processes from the target dir; with `sensor-sim`'s `demo` feature (the embedded broker and the
#    in-process gateway) for the demo test. Every cargo command below passes the same features, so the test
#    run reuses that build instead of rebuilding `sensor-sim` without the demo;
# 3. runs every test of the workspace: with cargo-nextest when it is installed (one process per test,
#    clear per-test timing), else with `cargo test`. The tests start their own mosquitto, VictoriaMetrics
#    and InfluxDB on free loopback ports in temp dirs; nothing needs to be running beforehand.
#
# Environment: CARGO_TARGET_DIR is respected (cargo reads it; the tests find binaries beside themselves).
# IOC_TEST_THREADS overrides the number of tests run at once (default: 2, for a 2-core machine; the heavy
# end-to-end tests serialise themselves with a lock, see ioc_e2e::HeavyTestLock).
# Extra arguments are passed to the test runner as a filter, e.g. `bash tests/scripts/test.sh spine_e2e`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

threads="${IOC_TEST_THREADS:-2}"
features=(--features sensor-sim/demo)

echo "==> installing test dependencies (if missing)"
bash "$here/install-deps.sh"
echo "    $(PATH="$PATH:/usr/sbin" mosquitto -h 2>/dev/null | head -n 1)"
echo "    $(victoria-metrics -version 2>/dev/null | head -n 1 || true) $(dpkg-query -W victoria-metrics 2>/dev/null || true)"
echo "    $(influxd version 2>/dev/null | head -n 1)"

echo "==> cargo build --workspace --bins ${features[*]}"
cargo build --workspace --bins "${features[@]}"

if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: run them first, so that nextest's summary closes the output.
  echo "==> cargo test --workspace --doc"
  cargo test --workspace --doc "${features[@]}"
  echo "==> cargo nextest run --workspace"
  cargo nextest run --workspace "${features[@]}" --no-fail-fast --test-threads "$threads" \
    --config-file "$root/tests/nextest.toml" "$@"
else
  echo "==> cargo test --workspace (cargo-nextest not installed)"
  cargo test --workspace "${features[@]}" --no-fail-fast -- --test-threads "$threads" "$@"
fi
