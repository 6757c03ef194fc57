#!/usr/bin/env python3
"""Backlog drain benchmark: how fast ioc-gateway takes a backlog of N QoS 1 messages that a real
mosquitto queued for its persistent session while it was stopped, next to `mosquitto_sub -q 1 -c`
(the C client, output to /dev/null) draining the same backlog as the baseline.

Why it exists: after a gateway update or a power cut the broker hands over everything it queued,
as fast as its `max_inflight_messages` window allows (20 by default, 0 = no limit). This shows the
rate the gateway drains at, what it costs in CPU and memory, and whether the drain stalls, for
each window, against what the broker itself can push to a trivial client.

For each subscriber, in turn: a persistent session is made (the gateway connects once and is
stopped with SIGTERM; `mosquitto_sub -c -E` subscribes and exits), N messages are published to its
topic at QoS 1 by a small client of the script's own that counts the broker's PUBACKs (all N
must be acknowledged, i.e. queued for the session), then the subscriber starts again and the
drain is timed: for the gateway until VictoriaMetrics holds all N readings,
for mosquitto_sub until it has received N (`-C N`). CPU (user + sys) comes from `os.wait4`,
peak RSS from the process's VmHWM in /proc. Also printed: the gateway's CPU µs per message, the
broker's keep-alive timeouts and the gateway's connections during its drain (1 = it never lost
the broker). A drain with no progress for --stall seconds, or longer than --timeout, is reported
as stalled and the script goes on (it never hangs).

Usage: python3 tests/bench/backlog_bench.py [--messages 1000000] [--inflight 20]
       [--gateway target/release/ioc-gateway] [--timeout 900] [--stall 30] [--keep]

Exit status: 0 when both drains completed and the store holds exactly N readings, else 1.
mosquitto and VictoriaMetrics run on free loopback ports with their data in a temp dir, and are
stopped by PID at the end; the temp dir is removed then unless --keep is given.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spine_bench import SENSORS, free_port, vm_points, wait_port, write_messages  # noqa: E402

GATEWAY_ID = "backlog-bench-gw"
SUB_ID = "backlog-bench-sub"
GW_FILTER = "city/+/env/+"
SUB_FILTER = "subq/+/env/+"


def wait_log(path, pattern, count, timeout=20):
    """Waits until `pattern` (a regex) matches at least `count` lines of the file at `path`."""
    end = time.time() + timeout
    while time.time() < end:
        if log_count(path, pattern) >= count:
            return True
        time.sleep(0.05)
    return False


def log_count(path, pattern):
    try:
        with open(path, errors="replace") as f:
            return sum(1 for line in f if re.search(pattern, line))
    except FileNotFoundError:
        return 0


def remaining_length(n):
    """MQTT variable-length encoding of a remaining length."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the broker closed the connection")
        data += chunk
    return data


def publish(port, files, topic_prefix, window=1000):
    """Publishes every line of `files` (file s to `<topic_prefix>/bench/env/s<s>`, interleaved) at
    QoS 1 over one MQTT 3.1.1 connection of its own (clean session, up to `window` messages in
    flight) and returns (seconds, messages the broker acknowledged with a PUBACK). A tiny client
    instead of `mosquitto_pub -l`, which quits with messages still queued inside it when its stdin
    ends: only a PUBACK says the broker has queued a message for the stopped session."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = f"bench-pub-{topic_prefix}".encode()
    var = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", 60)
    body = var + struct.pack(">H", len(cid)) + cid
    sock.sendall(b"\x10" + remaining_length(len(body)) + body)
    connack = recv_exact(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"CONNACK refused: {connack.hex()}")
    handles = [open(path, "rb") for path in files]
    topics = [f"{topic_prefix}/bench/env/s{s}".encode() for s in range(len(files))]

    def messages():
        for lines in zip(*handles):
            for topic, line in zip(topics, lines):
                yield topic, line.rstrip(b"\n")

    it = messages()
    t0 = time.time()
    in_flight, acked, pkid, done, rx = set(), 0, 0, False, b""
    try:
        while not done or in_flight:
            out = bytearray()
            while not done and len(in_flight) < window and (pkid % 65535 + 1) not in in_flight:
                try:
                    topic, payload = next(it)
                except StopIteration:
                    done = True
                    break
                pkid = pkid % 65535 + 1
                head = struct.pack(">H", len(topic)) + topic + struct.pack(">H", pkid)
                out += b"\x32" + remaining_length(len(head) + len(payload)) + head + payload
                in_flight.add(pkid)
            if out:
                sock.sendall(out)
            if not in_flight:
                continue
            data = sock.recv(1 << 16)
            if not data:
                raise RuntimeError("the broker closed the connection")
            rx += data
            # PUBACKs are 4 bytes (0x40 0x02 id id); nothing else comes on this connection.
            while len(rx) >= 4:
                if rx[0] == 0x40 and rx[1] == 2:
                    in_flight.discard(struct.unpack(">H", rx[2:4])[0])
                    acked += 1
                    rx = rx[4:]
                else:
                    raise RuntimeError(f"unexpected packet from the broker: {rx[:8].hex()}")
        sock.sendall(b"\xe0\x00")
    finally:
        sock.close()
        for h in handles:
            h.close()
    return time.time() - t0, acked


def hwm_mib(pid):
    """Peak resident memory (VmHWM) of a running process, MiB; 0 when it is gone. Read from /proc
    rather than taken from wait4's ru_maxrss: Python starts children with vfork, and exec carries
    the parent's high-water mark into the child's ru_maxrss, so a small child shows Python's RSS."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def wait4_rusage(proc, timeout, peak_mib=0.0):
    """Waits up to `timeout` s for `proc` to exit (reaping it with os.wait4), sampling its VmHWM
    every 20 ms meanwhile; returns (exited, cpu_seconds, peak_rss_mib). On timeout the process is
    killed first. `peak_mib`: a peak already sampled by the caller."""
    end = time.time() + timeout
    exited = True
    while True:
        peak_mib = max(peak_mib, hwm_mib(proc.pid))
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.time() >= end:
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
            exited = False
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return exited, ru.ru_utime + ru.ru_stime, peak_mib


def gateway_config(tmp, mq_port, vm_url):
    path = os.path.join(tmp, "gw.toml")
    with open(path, "w") as f:
        f.write(f"""[gateway]
id = "{GATEWAY_ID}"
data_dir = "{tmp}/gw-data"
[[inputs.mqtt]]
name = "bench"
url = "mqtt://127.0.0.1:{mq_port}"
client_id = "{GATEWAY_ID}"
topics = ["{GW_FILTER}"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
[buffer]
max_disk_mb = 4096
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
    return path


def drain_gateway(args, tmp, mq_port, mq_log, vm_url, files, n):
    cfg = gateway_config(tmp, mq_port, vm_url)
    gw_log = open(os.path.join(tmp, "gw.log"), "a")
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    sub_re = rf": {GATEWAY_ID} 1 {re.escape(GW_FILTER)}$"
    conn_re = rf" as {GATEWAY_ID} \("
    # 1. The persistent session and its subscription.
    gw = subprocess.Popen([args.gateway, "run", "--config", cfg], stdout=gw_log, stderr=gw_log, env=env)
    if not wait_log(mq_log, sub_re, 1):
        gw.kill()
        raise RuntimeError(f"the gateway did not subscribe; see {tmp}/gw.log")
    gw.send_signal(signal.SIGTERM)
    wait4_rusage(gw, 30)
    # 2. The backlog.
    pub_s, acked = publish(mq_port, files, "city")
    print(f"  gateway: {acked} of {n} messages acknowledged by the broker in {pub_s:.1f} s", flush=True)
    if acked != n:
        raise RuntimeError(f"the broker acknowledged {acked} of {n} messages")
    # 3. The drain.
    connections_before = log_count(mq_log, conn_re)
    timeouts_before = log_count(mq_log, rf"Client {GATEWAY_ID} has exceeded timeout")
    t0 = time.time()
    gw = subprocess.Popen([args.gateway, "run", "--config", cfg], stdout=gw_log, stderr=gw_log, env=env)
    got, last, last_progress, stalled, peak = 0, -1, time.time(), None, 0.0
    while True:
        peak = max(peak, hwm_mib(gw.pid))
        try:
            got = vm_points(vm_url)
        except OSError:
            pass
        if got >= n:
            break
        if got != last:
            last, last_progress = got, time.time()
        if os.waitid(os.P_PID, gw.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            stalled = "the gateway exited"  # not reaped here: wait4 below takes its rusage
            break
        if time.time() - last_progress > args.stall:
            stalled = f"no new reading stored for {args.stall} s"
            break
        if time.time() - t0 > args.timeout:
            stalled = f"not done after {args.timeout} s"
            break
        time.sleep(0.25)
    seconds = time.time() - t0
    if stalled != "the gateway exited":
        peak = max(peak, hwm_mib(gw.pid))
        gw.send_signal(signal.SIGTERM)
    _, cpu, rss = wait4_rusage(gw, 60, peak)
    try:
        got = vm_points(vm_url)
    except OSError:
        pass
    return {
        "name": "ioc-gateway -> VictoriaMetrics",
        "received": got,
        "seconds": seconds,
        "cpu": cpu,
        "rss": rss,
        "stalled": stalled,
        "connections": log_count(mq_log, conn_re) - connections_before,
        "timeouts": log_count(mq_log, rf"Client {GATEWAY_ID} has exceeded timeout") - timeouts_before,
    }


def drain_sub(args, mq_port, mq_log, files, n):
    base = ["mosquitto_sub", "-p", str(mq_port), "-q", "1", "-c", "-i", SUB_ID, "-t", SUB_FILTER]
    # 1. The persistent session: subscribe, exit once the SUBACK is in (-E).
    subprocess.run(base + ["-E"], stdout=subprocess.DEVNULL, check=True, timeout=20)
    # 2. The backlog.
    pub_s, acked = publish(mq_port, files, "subq")
    print(f"  mosquitto_sub: {acked} of {n} messages acknowledged by the broker in {pub_s:.1f} s", flush=True)
    if acked != n:
        raise RuntimeError(f"the broker acknowledged {acked} of {n} messages")
    # 3. The drain: it exits after N messages (-C N).
    t0 = time.time()
    sub = subprocess.Popen(base + ["-C", str(n)], stdout=subprocess.DEVNULL)
    exited, cpu, rss = wait4_rusage(sub, args.timeout)
    seconds = time.time() - t0
    return {
        "name": "mosquitto_sub -q 1 -c > /dev/null",
        "received": n if exited and sub.returncode == 0 else 0,
        "seconds": seconds,
        "cpu": cpu,
        "rss": rss,
        "stalled": None if exited else f"not done after {args.timeout} s",
        "connections": None,
        "timeouts": log_count(mq_log, rf"Client {SUB_ID} has exceeded timeout"),
    }


def default_gateway():
    for profile in ("release", "debug"):
        path = os.path.join("target", profile, "ioc-gateway")
        if os.path.exists(path):
            return path
    return "target/release/ioc-gateway"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--inflight", type=int, default=20, help="mosquitto max_inflight_messages (0 = no limit)")
    ap.add_argument("--gateway", default=default_gateway())
    ap.add_argument("--timeout", type=float, default=900, help="longest drain, seconds")
    ap.add_argument("--stall", type=float, default=30, help="a gateway drain with no progress this long is stalled")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data) for a post-mortem")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="backlog-bench-")
    mq_port, vm_port = free_port(), free_port()
    mq_log = os.path.join(tmp, "mosquitto.log")
    with open(os.path.join(tmp, "mosquitto.conf"), "w") as f:
        f.write(
            f"listener {mq_port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp}/\nmax_queued_messages 0\nmax_inflight_messages {args.inflight}\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "log_type subscribe\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
    servers = [
        subprocess.Popen(["mosquitto", "-c", f"{tmp}/mosquitto.conf"], stdout=subprocess.DEVNULL,
                         stderr=open(mq_log, "w")),
        subprocess.Popen(
            ["victoria-metrics", f"-storageDataPath={tmp}/vm", f"-httpListenAddr=127.0.0.1:{vm_port}",
             "-retentionPeriod=100y", "-search.latencyOffset=0s", "-search.disableCache",
             "-dedup.minScrapeInterval=1ms", "-loggerLevel=WARN"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    vm_url = f"http://127.0.0.1:{vm_port}"
    try:
        wait_port(mq_port)
        wait_port(vm_port)
        files, n = write_messages(tmp, args.messages)
        print(f"{n} QoS 1 messages ({SENSORS} sensors) queued for a stopped persistent session, "
              f"mosquitto max_inflight_messages {args.inflight}; gateway {args.gateway}; temp dir {tmp}", flush=True)
        results = [drain_sub(args, mq_port, mq_log, files, n)]
        results.append(drain_gateway(args, tmp, mq_port, mq_log, vm_url, files, n))

        print(f"{'drained by':<36}{'received':>10}{'seconds':>9}{'msgs/s':>9}{'CPU s':>8}{'CPU us/msg':>11}"
              f"{'peak RSS MiB':>13}{'conns':>6}{'k/a timeouts':>13}")
        for r in results:
            rate = r["received"] / max(r["seconds"], 1e-3)
            per = r["cpu"] * 1e6 / max(r["received"], 1)
            conns = "-" if r["connections"] is None else str(r["connections"])
            print(f"{r['name']:<36}{r['received']:>10}{r['seconds']:>9.2f}{rate:>9.0f}{r['cpu']:>8.2f}{per:>11.1f}"
                  f"{r['rss']:>13.1f}{conns:>6}{r['timeouts']:>13}")
        gw = results[1]
        print(f"points in VictoriaMetrics: {gw['received']} of {n}")
        ok = True
        for r in results:
            if r["stalled"]:
                print(f"STALLED: {r['name']}: {r['stalled']} ({r['received']} of {n})", file=sys.stderr)
                ok = False
        if gw["received"] != n:
            print(f"MISMATCH: the store holds {gw['received']} readings, expected {n}", file=sys.stderr)
            ok = False
        if gw["connections"] != 1 or gw["timeouts"] != 0:
            print(f"RECONNECTED: the gateway connected {gw['connections']} times during its drain, "
                  f"{gw['timeouts']} keep-alive timeouts", file=sys.stderr)
            ok = False
        return 0 if ok else 1
    finally:
        for s in servers:
            s.send_signal(signal.SIGTERM)
        for s in servers:
            try:
                s.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
