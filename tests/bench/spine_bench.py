#!/usr/bin/env python3
"""Spine benchmark (issue 2): N QoS 1 messages through a local mosquitto into a local
VictoriaMetrics via ioc-gateway, next to the same publish with `mosquitto_sub -q 1 > /dev/null`
as the subscriber.

Reports, for each subscriber: wall time from the first publish until the last message was
handled (for the gateway: until every point is queryable in VictoriaMetrics), readings/s, CPU
seconds (user + sys, from /usr/bin/time -v) and peak RSS.

Usage: python3 tests/bench/spine_bench.py [--messages 200000] [--gateway target/release/ioc-gateway]
       [--inflight 20]   (mosquitto's max_inflight_messages for the subscriber; 20 is its default)

Servers are started on free loopback ports in a temp dir and stopped by PID at the end.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

SENSORS = 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def parse_time_v(path):
    text = open(path).read()
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1))
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", text).group(1))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return user + sys_, rss / 1024.0


def vm_points(vm_url):
    urllib.request.urlopen(vm_url + "/internal/force_flush").read()
    q = urllib.parse.urlencode({"query": 'sum(count_over_time(environment_pm2_5{district="bench"}[5y]))'})
    body = json.loads(urllib.request.urlopen(f"{vm_url}/api/v1/query?{q}").read())
    res = body["data"]["result"]
    return int(float(res[0]["value"][1])) if res else 0


def write_messages(tmp, n):
    per = n // SENSORS
    base = 1_764_000_000_000
    files = []
    for s in range(SENSORS):
        path = os.path.join(tmp, f"msgs{s}.txt")
        with open(path, "w") as f:
            for i in range(per):
                f.write(
                    '{"ts":%d,"pm2_5":%.1f,"pm10":%.1f,"temperature":%.1f,"humidity":%.1f,"noise_db":%.1f}\n'
                    % (base + i, (i % 500) / 10, 30 + (i % 70) / 10, 20 + (i % 150) / 10, 60 + (i % 300) / 10, 55 + (i % 200) / 10)
                )
        files.append(path)
    return files, per * SENSORS


def publish(port, files):
    """8 mosquitto_pub -l -q 1 processes; stdin stays open until their messages are acked."""
    procs = []
    for s, path in enumerate(files):
        # `cat file; sleep` keeps stdin open so mosquitto_pub finishes its in-flight messages.
        cmd = f"(cat {path}; sleep 4) | mosquitto_pub -p {port} -q 1 -l -t city/bench/env/s{s} -i pub{s}"
        procs.append(subprocess.Popen(["bash", "-c", cmd]))
    return procs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--gateway", default="target/release/ioc-gateway")
    ap.add_argument("--inflight", type=int, default=20)
    ap.add_argument("--perf", metavar="FILE", help="also `perf record -g` the gateway into FILE")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="spine-bench-")
    mq_port, vm_port = free_port(), free_port()
    with open(os.path.join(tmp, "mosquitto.conf"), "w") as f:
        f.write(
            f"listener {mq_port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp}/\nmax_queued_messages 0\nmax_inflight_messages {args.inflight}\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
    servers = [
        subprocess.Popen(["mosquitto", "-c", f"{tmp}/mosquitto.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(
            ["victoria-metrics", f"-storageDataPath={tmp}/vm", f"-httpListenAddr=127.0.0.1:{vm_port}", "-retentionPeriod=100y",
             "-search.latencyOffset=0s", "-search.disableCache", "-dedup.minScrapeInterval=1ms"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    vm_url = f"http://127.0.0.1:{vm_port}"
    try:
        wait_port(mq_port)
        wait_port(vm_port)
        files, n = write_messages(tmp, args.messages)
        print(f"{n} messages, {SENSORS} publishers, mosquitto max_inflight_messages {args.inflight}")

        # 1. mosquitto_sub as the subscriber (persistent session, QoS 1, output to /dev/null).
        sub_time = os.path.join(tmp, "sub.time")
        sub = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", sub_time, "mosquitto_sub", "-p", str(mq_port), "-q", "1", "-c", "-i", "bench-sub",
             "-t", "city/+/env/+", "-C", str(n)], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.time()
        pubs = publish(mq_port, files)
        sub.wait()
        t_sub = time.time() - t0
        for p in pubs:
            p.wait()
        cpu_sub, rss_sub = parse_time_v(sub_time)

        # 2. the gateway.
        cfg = os.path.join(tmp, "gw.toml")
        with open(cfg, "w") as f:
            f.write(f"""[gateway]
id = "bench-gw"
data_dir = "{tmp}/gw-data"
[[inputs.mqtt]]
url = "mqtt://127.0.0.1:{mq_port}"
client_id = "bench-gw"
topics = ["city/+/env/+"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
[output.influxdb]
url = "{vm_url}"
api = "v2"
org = "ioc"
bucket = "telemetry"
batch_max_lines = 5000
flush_interval_ms = 200
[http]
enabled = false
""")
        gw_time = os.path.join(tmp, "gw.time")
        gw_log = open(os.path.join(tmp, "gw.log"), "w")
        gw = subprocess.Popen(["/usr/bin/time", "-v", "-o", gw_time, args.gateway, "run", "--config", cfg],
                              stdout=gw_log, stderr=gw_log)
        time.sleep(1.0)
        perf = None
        if args.perf:
            gw_pid = subprocess.run(["pgrep", "-P", str(gw.pid)], capture_output=True, text=True).stdout.split()[0]
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "499", "-o", args.perf, "-p", gw_pid],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        t0 = time.time()
        pubs = publish(mq_port, files)
        got = 0
        deadline = time.time() + 600
        while time.time() < deadline:
            got = vm_points(vm_url)
            if got >= n:
                break
            time.sleep(0.25)
        t_gw = time.time() - t0
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
        for p in pubs:
            p.wait()
        # SIGTERM the gateway itself, the child of `time` (which then reports).
        subprocess.run(["pkill", "-TERM", "-P", str(gw.pid)])
        gw.wait(timeout=60)
        cpu_gw, rss_gw = parse_time_v(gw_time)

        print(f"{'subscriber':<34}{'seconds':>9}{'msgs/s':>10}{'CPU s':>8}{'peak RSS MiB':>14}")
        print(f"{'mosquitto_sub -q 1 > /dev/null':<34}{t_sub:>9.2f}{n / t_sub:>10.0f}{cpu_sub:>8.2f}{rss_sub:>14.1f}")
        print(f"{'ioc-gateway -> VictoriaMetrics':<34}{t_gw:>9.2f}{n / t_gw:>10.0f}{cpu_gw:>8.2f}{rss_gw:>14.1f}")
        print(f"points in VictoriaMetrics: {got} of {n}")
        if got != n:
            print("MISMATCH: not every message reached the store", file=sys.stderr)
            return 1
        return 0
    finally:
        for s in servers:
            s.send_signal(signal.SIGTERM)
        for s in servers:
            try:
                s.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.kill()


if __name__ == "__main__":
    sys.exit(main())
