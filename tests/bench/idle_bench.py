#!/usr/bin/env python3
"""Idle benchmark (issue 17): what one gateway costs a box while nothing arrives.

A gateway with the shipped defaults that matter here (one MQTT input, one store, the HTTP
server and live page on, a health reading every `--health-interval-s`) on a fresh local
mosquitto and VictoriaMetrics, no sensor publishing. After `--warmup-s`, it samples the
gateway's CPU (utime + stime from /proc) over `--seconds` and prints CPU % of one core, CPU
ms per minute, and RSS (now and peak). The figure for a busy-but-light gateway (20 sensors at
1 Hz) is the fleet benchmark's steady CPU (tests/tests/fleet_e2e.rs).

Usage: python3 tests/bench/idle_bench.py [--gateway target/release/ioc-gateway] [--seconds 120]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spine_bench import free_port, rss_now, wait_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", default="target/release/ioc-gateway")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--warmup-s", type=float, default=10.0)
    ap.add_argument("--health-interval-s", type=int, default=60)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="idle-bench-")
    mq_port, vm_port, http_port = free_port(), free_port(), free_port()
    with open(os.path.join(tmp, "mosquitto.conf"), "w") as f:
        f.write(f"listener {mq_port} 127.0.0.1\nallow_anonymous true\n" + ("user root\n" if os.geteuid() == 0 else ""))
    servers = [
        subprocess.Popen(["mosquitto", "-c", f"{tmp}/mosquitto.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["victoria-metrics", f"-storageDataPath={tmp}/vm", f"-httpListenAddr=127.0.0.1:{vm_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    gw = None
    try:
        wait_port(mq_port)
        wait_port(vm_port)
        cfg = os.path.join(tmp, "gw.toml")
        with open(cfg, "w") as f:
            f.write(f"""[gateway]
id = "idle-gw"
data_dir = "{tmp}/gw-data"
health_interval_s = {args.health_interval_s}
[[inputs.mqtt]]
url = "mqtt://127.0.0.1:{mq_port}"
client_id = "idle-gw"
topics = ["city/+/env/+"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"
[output.influxdb]
url = "http://127.0.0.1:{vm_port}"
api = "v2"
org = "ioc"
bucket = "telemetry"
[http]
listen = "127.0.0.1:{http_port}"
""")
        log = open(os.path.join(tmp, "gw.log"), "w")
        gw = subprocess.Popen([args.gateway, "run", "--config", cfg], stdout=log, stderr=log)
        wait_port(http_port)
        time.sleep(args.warmup_s)
        c0, t0 = cpu_s(gw.pid), time.time()
        time.sleep(args.seconds)
        c1, t1 = cpu_s(gw.pid), time.time()
        used = c1 - c0
        pct = 100.0 * used / (t1 - t0)
        print(f"idle gateway over {t1 - t0:.0f} s (health reading every {args.health_interval_s} s, "
              f"HTTP server on, nothing published):")
        print(f"  CPU {used:.3f} s = {pct:.3f} % of one core = {1000.0 * used * 60 / (t1 - t0):.1f} ms per minute")
        print(f"  RSS {rss_now(gw.pid):.1f} MiB now, {rss_now(gw.pid, 'VmHWM'):.1f} MiB peak, "
              f"{rss_now(gw.pid, 'RssAnon'):.1f} MiB heap")
    finally:
        for p in ([gw] if gw else []) + servers:
            p.terminate()
        for p in ([gw] if gw else []) + servers:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
