#!/usr/bin/env bash
# install-deps.sh — make sure the servers the end-to-end tests start are installed, and that none of them
# runs as a system service on its default port.
#
# Why: the tests (tests/src/lib.rs) start their own mosquitto, VictoriaMetrics and InfluxDB 1.x as child
# processes on free loopback ports in temp dirs. On a fresh Debian machine (CI) the binaries are missing;
# Debian's packages would also start system services on 1883 / 8428 / 8086 when installed, and a test must
# never talk to one of those by accident. Idempotent: when everything is present it installs nothing.
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

SERVICES=(mosquitto victoria-metrics influxdb)

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

stop_services() {
  # Stop and disable the Debian service units so they never hold the default ports.
  if [ -d /run/systemd/system ] && have systemctl; then
    for s in "${SERVICES[@]}"; do
      "${sudo_cmd[@]}" systemctl disable --now "$s" >/dev/null 2>&1 || true
    done
  else
    for s in "${SERVICES[@]}"; do
      if [ -x "/etc/init.d/$s" ]; then
        "${sudo_cmd[@]}" "/etc/init.d/$s" stop >/dev/null 2>&1 || true
      fi
    done
  fi
  # Whatever is left: kill the daemons by the PIDs in their own pid files (never by name).
  for pidfile in /run/mosquitto/mosquitto.pid /var/run/mosquitto/mosquitto.pid /run/mosquitto.pid \
                 /run/influxdb/influxd.pid /var/run/influxdb/influxd.pid \
                 /run/victoria-metrics/victoria-metrics.pid /run/victoria-metrics.pid; do
    if [ -r "$pidfile" ]; then
      pid="$(tr -dc '0-9' < "$pidfile")"
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "stopping system daemon pid $pid ($pidfile)"
        "${sudo_cmd[@]}" kill "$pid" 2>/dev/null || true
      fi
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
fi

stop_services

for entry in "${REQUIRED[@]}"; do
  bin="${entry%%:*}"
  if ! have "$bin"; then
    log "still missing after install: $bin"
    exit 1
  fi
done
log "ok: ${REQUIRED[*]}"
