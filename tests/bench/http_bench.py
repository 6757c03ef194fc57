#!/usr/bin/env python3
"""Webhook input benchmark (issue 14): the same JSON payloads into one ioc-gateway over MQTT
(QoS 1, mosquitto_pub) and over HTTP (keep-alive POSTs to [[inputs.http]]), in the same run,
each phase until every reading is queryable in VictoriaMetrics.

Reports per phase: wall time from the first send until the last point is in the store,
messages/s, the gateway's CPU seconds in that phase (utime + stime from /proc/<pid>/stat) and
CPU per message; for HTTP also the senders' CPU (Python clients are not free).

Usage: python3 tests/bench/http_bench.py [--messages 40000] [--gateway target/release/ioc-gateway]
       [--procs 4] [--conns 8]   (HTTP senders: processes x keep-alive connections each)

Servers are started on free loopback ports in a temp dir and stopped by PID at the end.
"""
import argparse
import http.client
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

SENSORS = 8
BASE_MS = 1_764_000_000_000
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def payload(i):
    return (
        '{"ts":%d,"pm2_5":%.1f,"pm10":%.1f,"temperature":%.1f,"humidity":%.1f,"noise_db":%.1f}'
        % (BASE_MS + i, (i % 500) / 10, 30 + (i % 70) / 10, 20 + (i % 150) / 10, 60 + (i % 300) / 10, 55 + (i % 200) / 10)
    )


def vm_points(vm_url, district):
    urllib.request.urlopen(vm_url + "/internal/force_flush").read()
    q = urllib.parse.urlencode({"query": f'sum(count_over_time(environment_pm2_5{{district="{district}"}}[5y]))'})
    body = json.loads(urllib.request.urlopen(f"{vm_url}/api/v1/query?{q}").read())
    res = body["data"]["result"]
    return int(float(res[0]["value"][1])) if res else 0


def wait_points(vm_url, district, n, t0):
    deadline = time.time() + 900
    got = 0
    while time.time() < deadline:
        got = vm_points(vm_url, district)
        if got >= n:
            break
        time.sleep(0.1)
    return time.time() - t0, got


def http_sender(port, ids, conns, out):
    """One process: `conns` keep-alive connections, each posting its share of `ids` in turn."""
    errors = [0]

    def run(chunk):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for sensor, i in chunk:
            body = payload(i)
            while True:
                try:
                    c.request("POST", f"/bench/s{sensor}", body, {"Content-Type": "application/json"})
                    r = c.getresponse()
                    r.read()
                    if r.status == 204:
                        break
                except (OSError, http.client.HTTPException):
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                errors[0] += 1
    threads = [threading.Thread(target=run, args=(ids[k::conns],)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out.put((ru.ru_utime + ru.ru_stime, errors[0]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--gateway", default="target/release/ioc-gateway")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--conns", type=int, default=8)
    args = ap.parse_args()
    per = args.messages // SENSORS
    n = per * SENSORS

    tmp = tempfile.mkdtemp(prefix="http-bench-")
    mq_port, vm_port, hook_port = free_port(), free_port(), free_port()
    with open(os.path.join(tmp, "mosquitto.conf"), "w") as f:
        f.write(
            f"listener {mq_port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp}/\nmax_queued_messages 0\nmax_inflight_messages 1000\n"
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
    gw = None
    try:
        wait_port(mq_port)
        wait_port(vm_port)
        files = []
        for s in range(SENSORS):
            path = os.path.join(tmp, f"msgs{s}.txt")
            with open(path, "w") as f:
                for i in range(per):
                    f.write(payload(i) + "\n")
            files.append(path)
        hooks = "".join(
            f"""[[inputs.http]]
name = "hook-s{s}"
listen = "127.0.0.1:{hook_port}"
path = "/bench/s{s}"
measurement = "environment"
timestamp_field = "ts"
tags = {{ district = "http", sensor_id = "s{s}" }}
"""
            for s in range(SENSORS)
        )
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
{hooks}
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
        gw_log = open(os.path.join(tmp, "gw.log"), "w")
        gw = subprocess.Popen([args.gateway, "run", "--config", cfg], stdout=gw_log, stderr=gw_log)
        wait_port(hook_port)
        time.sleep(1.0)
        print(f"{n} messages per phase, {SENSORS} sensors; HTTP: {args.procs} processes x {args.conns} keep-alive connections")

        # 1. MQTT: 8 mosquitto_pub -q 1 -l.
        c0, t0 = cpu_s(gw.pid), time.time()
        pubs = [
            subprocess.Popen(["bash", "-c", f"(cat {p}; sleep 3) | mosquitto_pub -p {mq_port} -q 1 -l -t city/mqtt/env/s{s} -i pub{s}"])
            for s, p in enumerate(files)
        ]
        t_mq, got_mq = wait_points(vm_url, "mqtt", n, t0)
        cpu_mq = cpu_s(gw.pid) - c0
        for p in pubs:
            p.wait()

        # 2. HTTP: keep-alive POSTs, one payload per webhook.
        ids = [(s, i) for i in range(per) for s in range(SENSORS)]
        q = multiprocessing.Queue()
        c0, t0 = cpu_s(gw.pid), time.time()
        procs = [multiprocessing.Process(target=http_sender, args=(hook_port, ids[k::args.procs], args.conns, q)) for k in range(args.procs)]
        for p in procs:
            p.start()
        t_http, got_http = wait_points(vm_url, "http", n, t0)
        cpu_http = cpu_s(gw.pid) - c0
        results = [q.get() for _ in procs]
        for p in procs:
            p.join()
        cpu_senders = sum(r[0] for r in results)
        retries = sum(r[1] for r in results)

        print(f"{'input':<36}{'seconds':>9}{'msgs/s':>10}{'gw CPU s':>10}{'µs CPU/msg':>12}")
        print(f"{'MQTT QoS 1 (mosquitto_pub)':<36}{t_mq:>9.2f}{n / t_mq:>10.0f}{cpu_mq:>10.2f}{cpu_mq / n * 1e6:>12.1f}")
        print(f"{'HTTP webhooks (keep-alive POST)':<36}{t_http:>9.2f}{n / t_http:>10.0f}{cpu_http:>10.2f}{cpu_http / n * 1e6:>12.1f}")
        print(f"HTTP senders' CPU: {cpu_senders:.2f} s; retried requests: {retries}")
        print(f"points in VictoriaMetrics: mqtt {got_mq} of {n}, http {got_http} of {n}")
        if got_mq != n or got_http != n:
            print("MISMATCH: not every message reached the store", file=sys.stderr)
            return 1
        return 0
    finally:
        if gw is not None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gw.kill()
        for s in servers:
            s.send_signal(signal.SIGTERM)
        for s in servers:
            try:
                s.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.kill()


if __name__ == "__main__":
    sys.exit(main())
