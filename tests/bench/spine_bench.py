#!/usr/bin/env python3
"""Spine benchmark (issues 2 and 13): N QoS 1 messages through a local mosquitto into a local
VictoriaMetrics via ioc-gateway, next to the same publish with `mosquitto_sub -q 1 > /dev/null`
as the subscriber, on the same broker and store in the same run.

Reports, for each subscriber: wall time from the first publish until the last message was
handled (for the gateway: until every point is queryable in VictoriaMetrics), readings/s, CPU
seconds (user + sys, from /usr/bin/time -v), CPU µs per reading and peak RSS; then checks that
nothing was lost: every series is in VictoriaMetrics with its exact count and sum of values.

Usage: python3 tests/bench/spine_bench.py [--messages 200000] [--gateway target/release/ioc-gateway]
       [--inflight 20]   (mosquitto's max_inflight_messages for the subscriber; 20 is its default)
       [--viewer]        (a browser's load on the live page during the gateway's run: the
                          /api/live?status=1 event stream held open, /api/sensors every second)
       [--perf FILE]     (also `perf record -g` the gateway into FILE)
       [--strace FILE]   (also `strace -c -f` the gateway: syscall counts into FILE)
       [--store-down]    (a store outage at full input rate: VictoriaMetrics is stopped before the
                          gateway's run, the burst is timed until the gateway has made every reading
                          durable (its readings_accepted_total), with the peak RSS up to then; then
                          the store is started again on the same data and the drain is timed and
                          checked as usual)

The gateway runs with its HTTP API on, as deployed; its /metrics is read once after the run for
the number of buffer fsyncs (group commits: messages per fsync shows how well they group).

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
import threading
import time
import urllib.parse
import urllib.request

SENSORS = 8
FIELDS = ["pm2_5", "pm10", "temperature", "humidity", "noise_db"]


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


def values(i):
    """The five field values of message `i` of a sensor, as written (one decimal)."""
    return [(i % 500) / 10, 30 + (i % 70) / 10, 20 + (i % 150) / 10, 60 + (i % 300) / 10, 55 + (i % 200) / 10]


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
                    % ((base + i,) + tuple(values(i)))
                )
        files.append(path)
    return files, per * SENSORS


def vm_query(vm_url, query):
    q = urllib.parse.urlencode({"query": query})
    return json.loads(urllib.request.urlopen(f"{vm_url}/api/v1/query?{q}").read())["data"]["result"]


def check_store(vm_url, n):
    """Every series (sensor × field) with its exact point count and sum; returns the problems."""
    per = n // SENSORS
    want_sum = [round(sum(values(i)[f] for i in range(per)), 6) for f in range(len(FIELDS))]
    problems = []
    sel = '{__name__=~"environment_.+",district="bench"}'
    counts = {(r["metric"]["__name__"], r["metric"].get("sensor_id")): int(float(r["value"][1]))
              for r in vm_query(vm_url, f"count_over_time({sel}[5y]) keep_metric_names")}
    sums = {(r["metric"]["__name__"], r["metric"].get("sensor_id")): float(r["value"][1])
            for r in vm_query(vm_url, f"sum_over_time({sel}[5y]) keep_metric_names")}
    expected = {(f"environment_{f}", f"s{s}") for f in FIELDS for s in range(SENSORS)}
    if set(counts) != expected:
        problems.append(f"series: {len(counts)} of {len(expected)} (extra {sorted(set(counts) - expected)[:4]}, "
                        f"missing {sorted(expected - set(counts))[:4]})")
    for key in sorted(expected & set(counts)):
        field = FIELDS.index(key[0][len("environment_"):])
        if counts[key] != per:
            problems.append(f"{key}: {counts[key]} points, want {per}")
        if abs(sums.get(key, 0.0) - want_sum[field]) > 1e-6 * max(1.0, abs(want_sum[field])):
            problems.append(f"{key}: sum {sums.get(key)}, want {want_sum[field]}")
    return len(counts), problems


def metric_total(http_base, name, skip_health=True):
    """The sum of the gateway's metric `name` over its labels (its own health input left out)."""
    try:
        text = urllib.request.urlopen(http_base + "/metrics", timeout=5).read().decode()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            if skip_health and 'input="_health"' in line:
                continue
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def accepted(http_base):
    """The gateway's readings_accepted_total over its inputs (its own health readings left out)."""
    return metric_total(http_base, "ioc_gateway_readings_accepted_total")


def start_vm(tmp, port):
    return subprocess.Popen(
        ["victoria-metrics", f"-storageDataPath={tmp}/vm", f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y",
         "-search.latencyOffset=0s", "-search.disableCache", "-dedup.minScrapeInterval=1ms"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def gateway_pid(time_pid, under_strace):
    """The gateway's PID: the child of `time`, or the child of strace under it."""
    pid = time_pid
    for _ in range(2 if under_strace else 1):
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        if not kids:
            return None
        pid = int(kids[0])
    return pid


def rss_now(pid, key="VmRSS"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, TypeError):
        pass
    return float("nan")


class RssSampler:
    """Peak anonymous (heap) and file-backed (the binary's pages) RSS, sampled every 20 ms."""

    def __init__(self, pid):
        self.pid = pid
        self.anon = self.file = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(0.02):
            self.anon = max(self.anon, rss_now(self.pid, "RssAnon") or 0.0)
            self.file = max(self.file, rss_now(self.pid, "RssFile") or 0.0)

    def close(self):
        self.stop.set()
        self.thread.join()


class Viewer:
    """What a browser on the live page does: the event stream held open, the board polled."""

    def __init__(self, base):
        self.base = base
        self.stop = threading.Event()
        self.events = 0
        self.polls = 0
        self.errors = []
        self.threads = [threading.Thread(target=self.stream, daemon=True),
                        threading.Thread(target=self.poll, daemon=True)]
        for t in self.threads:
            t.start()

    def stream(self):
        try:
            with urllib.request.urlopen(self.base + "/api/live?status=1", timeout=5) as r:
                while not self.stop.is_set():
                    line = r.readline()
                    if not line:
                        return
                    if line.startswith(b"event:"):
                        self.events += 1
        except Exception as e:  # noqa: BLE001 (reported, not fatal to the benchmark)
            if not self.stop.is_set():
                self.errors.append(f"stream: {e}")

    def poll(self):
        while not self.stop.wait(1.0):
            try:
                urllib.request.urlopen(self.base + "/api/sensors", timeout=5).read()
                self.polls += 1
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"poll: {e}")

    def close(self):
        self.stop.set()


def publish(port, files):
    """8 `mosquitto_pub -l -q 1` processes, each in a process group of its own.

    Their stdin stays open (`cat file; sleep`) until `stop_publishers`: mosquitto_pub disconnects
    at end of input, dropping what it has read but not yet sent, and at a million messages its
    queue outlasts any fixed sleep. So the publishers run until the subscriber has everything.
    """
    procs = []
    for s, path in enumerate(files):
        cmd = f"(cat {path}; sleep 3600) | mosquitto_pub -p {port} -q 1 -l -t city/bench/env/s{s} -i pub{s}"
        procs.append(subprocess.Popen(["bash", "-c", cmd], start_new_session=True))
    return procs


def stop_publishers(procs):
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--gateway", default="target/release/ioc-gateway")
    ap.add_argument("--inflight", type=int, default=20)
    ap.add_argument("--perf", metavar="FILE", help="also `perf record -g` the gateway into FILE")
    ap.add_argument("--strace", metavar="FILE", help="also `strace -c -f` the gateway into FILE")
    ap.add_argument("--viewer", action="store_true", help="keep the live page open during the gateway's run")
    ap.add_argument("--store-down", action="store_true",
                    help="stop the store for the burst (peak RSS during an outage at full rate), then drain")
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
        start_vm(tmp, vm_port),
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
        stop_publishers(pubs)
        cpu_sub, rss_sub = parse_time_v(sub_time)

        # 2. the gateway.
        http_port = free_port()
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
listen = "127.0.0.1:{http_port}"
""")
        if args.store_down:
            stop(servers[1])
        gw_time = os.path.join(tmp, "gw.time")
        gw_log = open(os.path.join(tmp, "gw.log"), "w")
        gw_cmd = [args.gateway, "run", "--config", cfg]
        if args.strace:
            gw_cmd = ["strace", "-c", "-f", "-o", args.strace] + gw_cmd
        gw = subprocess.Popen(["/usr/bin/time", "-v", "-o", gw_time] + gw_cmd, stdout=gw_log, stderr=gw_log)
        time.sleep(1.0)
        viewer = None
        if args.viewer:
            wait_port(http_port)
            viewer = Viewer(f"http://127.0.0.1:{http_port}")
            time.sleep(0.5)
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "499", "-o", args.perf, "-p", str(gateway_pid(gw.pid, False))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        gw_pid = gateway_pid(gw.pid, args.strace)
        idle_rss = rss_now(gw_pid)
        idle_anon = rss_now(gw_pid, "RssAnon")
        sampler = RssSampler(gw_pid)
        t0 = time.time()
        pubs = publish(mq_port, files)
        got = 0
        deadline = time.time() + 600
        outage = None
        if args.store_down:
            wait_port(http_port)
            while time.time() < deadline and accepted(f"http://127.0.0.1:{http_port}") < n:
                time.sleep(0.1)
            outage = (time.time() - t0, rss_now(gw_pid, "VmHWM"), sampler.anon, sampler.file)
            servers[1] = start_vm(tmp, vm_port)
            wait_port(vm_port)
        while time.time() < deadline:
            got = vm_points(vm_url)
            if got >= n:
                break
            time.sleep(0.1)
        t_gw = time.time() - t0
        if viewer:
            viewer.close()
        sampler.close()
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
        stop_publishers(pubs)
        gw_base = f"http://127.0.0.1:{http_port}"
        fsyncs = metric_total(gw_base, "ioc_gateway_buffer_fsyncs_total", skip_health=False)
        # SIGTERM the gateway itself, the child of `time` (or of strace under it), which then reports.
        if gw_pid:
            os.kill(gw_pid, signal.SIGTERM)
        gw.wait(timeout=60)
        cpu_gw, rss_gw = parse_time_v(gw_time)

        series, problems = check_store(vm_url, n)
        gw_name = "ioc-gateway -> VictoriaMetrics" + (" +viewer" if viewer else "")
        print(f"{'subscriber':<38}{'seconds':>9}{'msgs/s':>10}{'CPU s':>8}{'CPU us/msg':>12}{'peak RSS MiB':>14}")
        print(f"{'mosquitto_sub -q 1 > /dev/null':<38}{t_sub:>9.2f}{n / t_sub:>10.0f}{cpu_sub:>8.2f}"
              f"{cpu_sub / n * 1e6:>12.2f}{rss_sub:>14.1f}")
        print(f"{gw_name:<38}{t_gw:>9.2f}{n / t_gw:>10.0f}{cpu_gw:>8.2f}{cpu_gw / n * 1e6:>12.2f}{rss_gw:>14.1f}")
        print(f"gateway RSS before the burst: {idle_rss:.1f} MiB ({idle_anon:.1f} heap); peak during it (sampled): "
              f"heap {sampler.anon:.1f} MiB, the binary's pages {sampler.file:.1f} MiB")
        print(f"gateway / mosquitto_sub: rate {t_sub / t_gw:.2f}x, CPU {cpu_gw / cpu_sub:.2f}x")
        print(f"gateway buffer fsyncs: {fsyncs} ({n / max(fsyncs, 1):.1f} messages per fsync)")
        print(f"points in VictoriaMetrics: {got} of {n}; series {series} of {SENSORS * len(FIELDS)}, "
              f"counts and sums {'exact' if not problems else 'WRONG'}")
        if outage:
            print(f"store down: every reading durable {outage[0]:.2f} s after the first publish "
                  f"({n / outage[0]:.0f} msg/s); gateway peak RSS up to then {outage[1]:.1f} MiB "
                  f"(heap {outage[2]:.1f}, the binary's pages {outage[3]:.1f}); the drain after the store came back "
                  f"is included in the gateway's seconds above")
        if viewer:
            print(f"viewer: {viewer.events} live events, {viewer.polls} /api/sensors polls"
                  + (f", errors: {viewer.errors[:3]}" if viewer.errors else ""))
        if args.strace:
            print(f"syscall counts: {args.strace}")
        if got != n or problems:
            for p in problems[:20]:
                print(f"  {p}", file=sys.stderr)
            print("MISMATCH: not every message reached the store intact", file=sys.stderr)
            return 1
        return 0
    finally:
        for s in servers:
            if s.poll() is None:
                s.send_signal(signal.SIGTERM)
        for s in servers:
            try:
                s.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.kill()


if __name__ == "__main__":
    sys.exit(main())
