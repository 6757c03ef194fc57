#!/usr/bin/env python3
"""CPU of the gateway per NMEA 0183 port (issue 15's closing figure).

Runs the real `ioc-gateway` with one `nmea0183` input on a pseudo-terminal, writes GNSS sentences
into it at a given rate for a while, and reads the gateway's user+system CPU time from
/proc/<pid>/stat before and after (warm-up excluded). The same run with an idle port gives the
baseline of a gateway doing nothing.

    python3 tests/bench/serial_text_cpu.py --gateway target/release/ioc-gateway \
        [--seconds 30] [--case idle|10hz-9600|line-rate-115200]...

A pty does not enforce a baud rate, so the script paces its writes: "10hz-9600" writes 10
sentences per second (RMC and GGA alternately, as a 5 Hz two-sentence receiver at 9600 baud),
"line-rate-115200" writes 11,520 bytes per second (115200 baud 8N1, back-to-back sentences).
The store URL points nowhere: readings go to the disk buffer, as during an uplink outage.
"""

import argparse
import os
import pty
import subprocess
import sys
import tempfile
import time
import tty


def nmea(body: str) -> bytes:
    s = 0
    for b in body.encode():
        s ^= b
    return f"${body}*{s:02X}\r\n".encode()


def sentences(n: int) -> bytes:
    """Fix n of a moving receiver: RMC or GGA alternately, time advancing 0.1 s per sentence."""
    t = 8 * 3600 + n / 10
    hh, mm, ss = int(t // 3600), int(t // 60 % 60), t % 60
    time_s = f"{hh:02}{mm:02}{ss:05.2f}"
    lat = f"10{46.614 + (n % 100) * 0.00001:08.5f}"
    lon = f"106{42.054 + (n % 1000) * 0.00045:08.5f}"
    if n % 2 == 0:
        return nmea(f"GNRMC,{time_s},A,{lat},N,{lon},E,16.2,90.0,021226,,,A")
    return nmea(f"GNGGA,{time_s},{lat},N,{lon},E,1,09,0.9,12.5,M,2.1,M,,")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime are fields 14 and 15 (1-based) of the whole line; here after "pid (comm)".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(gateway: str, case: str, seconds: float) -> dict:
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "gw.toml")
        with open(cfg, "w") as f:
            f.write(f"""[gateway]
id = "bench"
data_dir = "{d}/data"

[output.influxdb]
url = "http://127.0.0.1:9"
api = "v2"
bucket = "telemetry"

[http]
enabled = false

[[inputs.serial]]
name = "gnss"
port = "{path}"
baud = {115200 if case == "line-rate-115200" else 9600}
protocol = "nmea0183"
sensor_id = "bus-1"
""")
        proc = subprocess.Popen([gateway, "run", "--config", cfg],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2.0)  # start-up, port open
            rate_bytes = 11520.0 if case == "line-rate-115200" else None
            n = 0
            sent = 0
            start = time.monotonic()
            measured_from = start + 2.0
            cpu0 = None
            while True:
                now = time.monotonic()
                if cpu0 is None and now >= measured_from:
                    cpu0, t0, sent0 = cpu_seconds(proc.pid), now, sent
                if now >= measured_from + seconds:
                    break
                if case == "idle":
                    time.sleep(0.1)
                    continue
                if rate_bytes is None:
                    due = start + n / 10.0
                else:
                    due = start + sent / rate_bytes
                if now < due:
                    time.sleep(min(due - now, 0.05))
                    continue
                chunk = sentences(n)
                os.write(master, chunk)
                n += 1
                sent += len(chunk)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            return {
                "case": case,
                "wall_s": round(t1 - t0, 2),
                "cpu_s": round(cpu1 - cpu0, 3),
                "cpu_pct_of_core": round(100.0 * (cpu1 - cpu0) / (t1 - t0), 2),
                "bytes_per_s": round((sent - sent0) / (t1 - t0)),
                "sentences": n,
            }
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            os.close(master)
            os.close(slave)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", default="target/release/ioc-gateway")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--case", action="append",
                    choices=["idle", "10hz-9600", "line-rate-115200"])
    a = ap.parse_args()
    for case in a.case or ["idle", "10hz-9600", "line-rate-115200"]:
        print(run_case(a.gateway, case, a.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
