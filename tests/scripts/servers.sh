#!/usr/bin/env bash
# servers.sh start|stop|status — mosquitto, VictoriaMetrics and InfluxDB 1.x for humans.
#
# Why: to try the gateway by hand (or run sensor-sim against it) you need the same three servers the
# end-to-end tests start. This starts them on loopback ports with data in a temp dir, records their PIDs
# and ports in a state dir, and stops them by those PIDs. The automated tests do not use this script:
# they start their own servers per test (tests/src/lib.rs).
#
# Environment: IOC_SERVERS_DIR (state + data, default /tmp/ioc-e2e-servers), MQTT_PORT (default 18830),
# VM_PORT (18428), INFLUX_PORT (18086), INFLUX_RPC_PORT (18088).
set -euo pipefail

state="${IOC_SERVERS_DIR:-/tmp/ioc-e2e-servers}"
mqtt_port="${MQTT_PORT:-18830}"
vm_port="${VM_PORT:-18428}"
influx_port="${INFLUX_PORT:-18086}"
influx_rpc_port="${INFLUX_RPC_PORT:-18088}"
export PATH="$PATH:/usr/sbin:/sbin"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() { # name url-or-port tries
  local name="$1" probe="$2" i
  for i in $(seq 1 100); do
    if [[ "$probe" == http* ]]; then
      if curl -fsS -o /dev/null "$probe" 2>/dev/null; then return 0; fi
    elif port_busy "$probe"; then
      return 0
    fi
    sleep 0.1
  done
  echo "servers: $name did not become ready; log tail:" >&2
  tail -n 20 "$state/$name.log" >&2 || true
  return 1
}

running() { [ -r "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

start() {
  mkdir -p "$state"
  for p in "$mqtt_port" "$vm_port" "$influx_port" "$influx_rpc_port"; do
    if port_busy "$p"; then echo "servers: port $p is in use (already started? try status)" >&2; exit 1; fi
  done
  IOC_E2E_NO_BROWSER=1 bash "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh"

  mkdir -p "$state/mosquitto" "$state/vm" "$state/influx"
  {
    echo "listener $mqtt_port 127.0.0.1"
    echo "allow_anonymous true"
    echo "persistence true"
    echo "persistence_location $state/mosquitto/"
    echo "max_queued_messages 0"
    if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
  } > "$state/mosquitto.conf"
  mosquitto -c "$state/mosquitto.conf" > "$state/mosquitto.log" 2>&1 &
  echo $! > "$state/mosquitto.pid"

  victoria-metrics -storageDataPath="$state/vm" -httpListenAddr="127.0.0.1:$vm_port" \
    -retentionPeriod=100y -search.latencyOffset=0s -search.disableCache -dedup.minScrapeInterval=1ms \
    > "$state/victoria-metrics.log" 2>&1 &
  echo $! > "$state/victoria-metrics.pid"

  cat > "$state/influxdb.conf" <<EOF
reporting-disabled = true
bind-address = "127.0.0.1:$influx_rpc_port"
[meta]
  dir = "$state/influx/meta"
[data]
  dir = "$state/influx/data"
  wal-dir = "$state/influx/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$influx_port"
  log-enabled = false
  max-row-limit = 0
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
EOF
  influxd run -config "$state/influxdb.conf" > "$state/influxdb.log" 2>&1 &
  echo $! > "$state/influxdb.pid"

  wait_ready mosquitto "$mqtt_port"
  wait_ready victoria-metrics "http://127.0.0.1:$vm_port/health"
  wait_ready influxdb "http://127.0.0.1:$influx_port/ping"
  printf 'MQTT_URL=mqtt://127.0.0.1:%s\nVM_URL=http://127.0.0.1:%s\nINFLUX_URL=http://127.0.0.1:%s\n' \
    "$mqtt_port" "$vm_port" "$influx_port" > "$state/ports.env"
  echo "servers: started (state in $state)"
  cat "$state/ports.env"
}

stop() {
  local name pid
  for name in mosquitto victoria-metrics influxdb; do
    if running "$name"; then
      pid="$(cat "$state/$name.pid")"
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" || true; fi
      echo "servers: stopped $name (pid $pid)"
    fi
    rm -f "$state/$name.pid"
  done
}

status() {
  local name rc=0
  for name in mosquitto victoria-metrics influxdb; do
    if running "$name"; then echo "$name: running, pid $(cat "$state/$name.pid")"
    else echo "$name: not running"; rc=1; fi
  done
  [ -r "$state/ports.env" ] && cat "$state/ports.env"
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
