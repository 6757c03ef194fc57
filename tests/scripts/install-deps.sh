#!/usr/bin/env bash
# install-deps.sh — make sure the servers and tools the end-to-end tests use are installed.
#
# Why: the tests (tests/src/lib.rs) start their own mosquitto, VictoriaMetrics and InfluxDB 1.x as child
# processes on free loopback ports in temp dirs. On a fresh Debian machine (CI) the binaries are missing.
# Idempotent: when everything is present it installs nothing and touches nothing.
#
# What it installs (apt, when missing): mosquitto, mosquitto-clients, victoria-metrics, influxdb, curl,
# openssl (the TLS tests make their own CA), chromium (the live page test; IOC_E2E_NO_BROWSER=1 skips
# it), and cargo-deb with `cargo install` (the package test; IOC_E2E_NO_DEB=1 skips it).
# What it stops: only the system services of the server packages it has just installed itself
# (Debian starts them on install); a mosquitto, VictoriaMetrics or InfluxDB that was already on the
# machine is left alone (the tests use their own free ports, never the default ones).
#
# Extra Debian packages can be requested with IOC_E2E_EXTRA_DEPS="binary:package ..." (for instance
# IOC_E2E_EXTRA_DEPS="socat:socat").
set -euo pipefail

# binary (looked up on PATH, plus /usr/sbin) : Debian package that ships it
REQUIRED=(
  "mosquitto:mosquitto"
  "mosquitto_pub:mosquitto-clients"
  "mosquitto_sub:mosquitto-clients"
  "victoria-metrics:victoria-metrics"
  "influxd:influxdb"
  "curl:curl"
  "openssl:openssl"     # tests/src/pki.rs: the TLS tests' CA, server and client certificates
  "setpriv:util-linux"  # tests/tests/deb_package_e2e.rs: the installed gateway run as its service user
  "chromium:chromium"   # gateway/tests/http_browser.rs: the live page in headless Chromium
)
# shellcheck disable=SC2206
REQUIRED+=(${IOC_E2E_EXTRA_DEPS:-})
# IOC_E2E_NO_BROWSER=1 skips Chromium (servers.sh does: the servers alone do not need it).
if [ "${IOC_E2E_NO_BROWSER:-0}" = 1 ]; then
  filtered=()
  for entry in "${REQUIRED[@]}"; do [ "${entry%%:*}" = chromium ] || filtered+=("$entry"); done
  REQUIRED=("${filtered[@]}")
fi

# The server packages whose system services must not keep running once this script installed them.
SERVER_PACKAGES=(mosquitto victoria-metrics influxdb)

log() { echo "install-deps: $*" >&2; }

have() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if have sudo; then sudo_cmd=(sudo -n); else log "not root and no sudo: cannot install"; fi
fi

missing_pkgs=()
for entry in "${REQUIRED[@]}"; do
  bin="${entry%%:*}"
  pkg="${entry#*:}"
  if ! have "$bin"; then
    log "missing $bin (package $pkg)"
    case " ${missing_pkgs[*]:-} " in *" $pkg "*) ;; *) missing_pkgs+=("$pkg") ;; esac
  fi
done

# Stops and disables the system services of the given packages (just installed by this script).
stop_services() {
  for s in "$@"; do
    if [ -d /run/systemd/system ] && have systemctl; then
      "${sudo_cmd[@]}" systemctl disable --now "$s" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$s" ]; then
      "${sudo_cmd[@]}" "/etc/init.d/$s" stop >/dev/null 2>&1 || true
    fi
  done
}

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  log "installing: ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Without systemd, Debian's maintainer scripts start services through invoke-rc.d, which asks
  # /usr/sbin/policy-rc.d first: answer 101 ("action forbidden") for the duration of the install.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod 755 "$policy"
    created_policy=1
  fi
  cleanup_policy() { if [ "$created_policy" = 1 ]; then "${sudo_cmd[@]}" rm -f "$policy"; fi; }
  trap cleanup_policy EXIT
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}"
  cleanup_policy
  trap - EXIT
  installed_servers=()
  for pkg in "${missing_pkgs[@]}"; do
    case " ${SERVER_PACKAGES[*]} " in *" $pkg "*) installed_servers+=("$pkg") ;; esac
  done
  if [ "${#installed_servers[@]}" -gt 0 ]; then
    log "stopping the services of the packages just installed: ${installed_servers[*]}"
    stop_services "${installed_servers[@]}"
  fi
fi

# cargo-deb, for the package test (a cargo subcommand, not a Debian package).
CARGO_DEB_VERSION=3.8.0
if [ "${IOC_E2E_NO_DEB:-0}" != 1 ] && ! cargo deb --version >/dev/null 2>&1; then
  log "installing cargo-deb $CARGO_DEB_VERSION (cargo install)"
  deb_build="$(mktemp -d)"
  CARGO_TARGET_DIR="$deb_build" cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet
  rm -rf "$deb_build"
fi

for entry in "${REQUIRED[@]}"; do
  bin="${entry%%:*}"
  if ! have "$bin"; then
    log "still missing after install: $bin"
    exit 1
  fi
done
log "ok: ${REQUIRED[*]}"
