#!/usr/bin/env bash
# Runs every cargo-fuzz target of ioc-gateway for a fixed budget (issue 8 item 7).
#
#   fuzz/run.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#
# Exits non-zero if any target finds a crash; the crashing input is kept under
# fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> <file>). Uses the nightly toolchain
# when installed, else the stable one with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags).
# Not part of the default test run: it takes minutes and builds with libFuzzer.
# Build artefacts go to $FUZZ_TARGET_DIR (default /tmp/ioc-fuzz-target), away from the shared
# workspace target dir.
set -euo pipefail
cd "$(dirname "$0")"

budget="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^ioc-fuzz$')
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo fuzz)
fi
target_dir="${FUZZ_TARGET_DIR:-/tmp/ioc-fuzz-target}"
# Safe Rust only in these crates: no AddressSanitizer (much faster builds and runs), but debug
# assertions on, so the encoder's "never encode an invalid reading" check fires.
build_flags=(--sanitizer none --debug-assertions --target-dir "$target_dir")

# Build every target once up front (each `run` below would otherwise build on demand).
if ! "${cargo[@]}" build "${build_flags[@]}" >/tmp/ioc-fuzz-build.log 2>&1; then
    tail -30 /tmp/ioc-fuzz-build.log >&2
    echo "fuzz targets do not build" >&2
    exit 2
fi
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$(mktemp /tmp/fuzz-$t.XXXX.log)"
    echo "=== $t: ${budget}s"
    if "${cargo[@]}" run "${build_flags[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$budget" -rss_limit_mb=1024 -timeout=10 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        outcome=ok
    else
        outcome=CRASH
        failed+=("$t")
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -10 || true
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)"
    summary+=("$(printf '%-22s %-6s execs=%-10s %s' "$t" "$outcome" "${runs:-?}" "$cov")")
    echo "${summary[-1]}  (log: $log)"
done
echo
echo "=== fuzz summary (${budget}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]}" >&2
    exit 1
fi
