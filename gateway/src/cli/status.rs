//! `ioc-gateway status`: asks a running gateway's HTTP API what is wrong, in one screen.
//!
//! A technician on the cabinet's Ethernet runs it and sees, without reading logs: ready or not
//! and why (and what is degraded: a serial port unplugged), each input and serial port up or
//! down, since when and why, with each port's good and bad frame counts, buffer depth and the
//! age of the oldest unsent reading, the store's state, how many sensors report and which are
//! stalest. It reads
//! `/readyz` and `/api/sensors`; rendering ([`render`]) is a pure function of those two bodies.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::exit::Exit;
use super::runtime::{self, Kind};
use crate::config::Secret;

/// A live board armed this recently was woken by this `status` request itself.
const LIVE_JUST_WOKEN_MS: u64 = 3000;
/// How many of the stalest sensors are listed.
const STALEST_SHOWN: usize = 5;

/// `status`: the summary of the gateway at `url` on stdout, with the token from the environment
/// variable `token_env` if given; the error on stderr.
pub fn execute(url: &str, token_env: Option<&str>) -> Exit {
    match status_blocking(url, token_env) {
        Ok(text) => {
            print!("{text}");
            Exit::Success
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Failure
        }
    }
}

fn status_blocking(url: &str, token_env: Option<&str>) -> anyhow::Result<String> {
    let token = crate::config::resolve_secret("--token-env", token_env, None)?;
    let runtime = runtime::build(Kind::CurrentThread)?;
    runtime.block_on(status(url, token))
}

/// Fetches `/api/sensors` and `/readyz` from the gateway at `url` and returns the summary.
pub async fn status(url: &str, token: Option<Secret>) -> anyhow::Result<String> {
    let base = url.trim_end_matches('/');
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot set up the HTTP client")?;
    let get = |path: &str| {
        let mut req = client.get(format!("{base}{path}"));
        if let Some(t) = &token {
            req = req.bearer_auth(t.expose());
        }
        req.send()
    };
    let sensors = get("/api/sensors").await.with_context(|| {
        format!(
            "cannot reach the gateway at {base} (is it running? is [http] listen this address?)"
        )
    })?;
    match sensors.status().as_u16() {
        200 => {}
        401 => bail!(
            "the gateway at {base} requires a token: pass --token-env VAR naming a variable that holds it"
        ),
        code => bail!("{base}/api/sensors answered HTTP {code}"),
    }
    let sensors: Value =
        serde_json::from_str(&sensors.text().await.context("cannot read /api/sensors")?)
            .context("/api/sensors did not return JSON")?;
    let ready = get("/readyz")
        .await
        .with_context(|| format!("cannot reach {base}/readyz"))?;
    let ready: Value = match ready.status().as_u16() {
        200 | 503 => serde_json::from_str(&ready.text().await.context("cannot read /readyz")?)
            .context("/readyz did not return JSON")?,
        code => bail!("{base}/readyz answered HTTP {code}"),
    };
    Ok(render(base, &sensors, &ready))
}

fn age(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else {
        format!("{} d {} h", s / 86_400, (s % 86_400) / 3600)
    }
}

fn utc_clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s % 3600) / 60, s % 60)
}

fn bytes(b: u64) -> String {
    if b < 1024 {
        format!("{b} B")
    } else if b < 1 << 20 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
    }
}

fn u(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The summary for a technician, from the `/api/sensors` and `/readyz` bodies.
pub fn render(base: &str, sensors: &Value, ready: &Value) -> String {
    let mut out = String::new();
    let now = u(sensors, "now_ms").unwrap_or(0);
    let started = u(sensors, "started_ms").unwrap_or(now);
    let is_ready = ready.get("ready").and_then(Value::as_bool).unwrap_or(false);
    let list = |key: &str| -> Vec<String> {
        ready
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| s(r, "message").unwrap_or("?").to_owned())
            .collect()
    };
    let (reasons, warnings) = (list("reasons"), list("warnings"));
    let verdict = match (is_ready, warnings.is_empty()) {
        (false, _) => "NOT READY",
        (true, true) => "READY",
        (true, false) => "READY, DEGRADED",
    };
    let _ = writeln!(
        out,
        "gateway {} at {base}: {verdict} (up {})",
        s(sensors, "gateway_id").unwrap_or("?"),
        age(now.saturating_sub(started))
    );
    for r in &reasons {
        let _ = writeln!(out, "  ! {r}");
    }
    for w in &warnings {
        let _ = writeln!(out, "  warning: {w}");
    }

    let _ = writeln!(out, "\nInputs:");
    let inputs = sensors.get("inputs").and_then(Value::as_object);
    match inputs {
        Some(map) if !map.is_empty() => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (name, st) in map {
                let up = st.get("up").and_then(Value::as_bool).unwrap_or(false);
                let since = u(st, "since_ms").unwrap_or(now);
                let _ = write!(
                    out,
                    "  {name:<width$}  {:<6}  {:<4} since {} ({})  {}",
                    s(st, "kind").unwrap_or("?"),
                    if up { "UP" } else { "DOWN" },
                    utc_clock(since),
                    age(now.saturating_sub(since)),
                    s(st, "target").unwrap_or("?"),
                );
                if let Some(e) = s(st, "last_error") {
                    let _ = write!(out, "\n  {:width$}  last error: {e}", "");
                }
                if let Some(port) = st.get("serial").filter(|p| p.is_object()) {
                    let _ = write!(
                        out,
                        "\n  {:width$}  frames: {} good, {} bad",
                        "",
                        u(port, "frames_good").unwrap_or(0),
                        u(port, "frames_bad").unwrap_or(0),
                    );
                    let reasons: Vec<String> = port
                        .get("bad_by_reason")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k} {}", v.as_u64().unwrap_or(0)))
                        .collect();
                    if !reasons.is_empty() {
                        let _ = write!(out, " ({})", reasons.join(", "));
                    }
                }
                out.push('\n');
            }
        }
        _ => out.push_str("  none configured\n"),
    }

    let b = sensors.get("buffer").cloned().unwrap_or(Value::Null);
    let _ = writeln!(
        out,
        "\nBuffer:  {} unsent readings ({} urgent), oldest unsent {}, disk {} of {} ({:.0} %), dropped when full: {}, append errors: {}",
        u(&b, "unsent_lines").unwrap_or(0),
        u(&b, "urgent_unsent_lines").unwrap_or(0),
        u(&b, "oldest_unsent_age_ms").map_or_else(|| "none waiting".to_owned(), age),
        bytes(u(&b, "disk_bytes").unwrap_or(0)),
        bytes(u(&b, "max_bytes").unwrap_or(0)),
        b.get("fill_ratio").and_then(Value::as_f64).unwrap_or(0.0) * 100.0,
        u(&b, "dropped_oldest_lines").unwrap_or(0),
        u(&b, "append_errors").unwrap_or(0),
    );

    let st = sensors.get("store").cloned().unwrap_or(Value::Null);
    let last = u(&st, "last_success_ms").map_or_else(
        || "never".to_owned(),
        |t| format!("{} ago", age(now.saturating_sub(t))),
    );
    let _ = writeln!(
        out,
        "Store:   last batch confirmed {last}; {} batches, {} lines sent; last error: {}",
        u(&st, "batches_sent").unwrap_or(0),
        u(&st, "lines_sent").unwrap_or(0),
        s(&st, "last_error").unwrap_or("none"),
    );
    // With several outputs, one line each (the line above is the one furthest behind).
    let outputs = sensors
        .get("outputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if outputs.len() > 1 {
        for o in &outputs {
            let os = o.get("store").cloned().unwrap_or(Value::Null);
            let last = u(&os, "last_success_ms").map_or_else(
                || "never".to_owned(),
                |t| format!("{} ago", age(now.saturating_sub(t))),
            );
            let _ = writeln!(
                out,
                "  output {}: last batch confirmed {last}; {} waiting; {} lines sent{}; last error: {}",
                s(o, "name").unwrap_or("?"),
                u(o, "unsent_lines").unwrap_or(0),
                u(&os, "lines_sent").unwrap_or(0),
                s(&os, "endpoint").map(|e| format!(" via {e}")).unwrap_or_default(),
                s(&os, "last_error").unwrap_or("none"),
            );
        }
    }

    let list: Vec<&Value> = sensors
        .get("sensors")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // The board is fed only while someone watches (`[http] live_board = "on_demand"`): say
    // since when it counts, and when this very request woke it up.
    match u(sensors, "live_since_ms").filter(|t| *t > started.saturating_add(1000)) {
        Some(t) => {
            let _ = write!(
                out,
                "Sensors: {} reporting in the last {} (the live board is fed while watched)",
                list.len(),
                age(now.saturating_sub(t))
            );
            if now.saturating_sub(t) < LIVE_JUST_WOKEN_MS {
                let _ = write!(
                    out,
                    "; it was idle until now: run status again in a few seconds, or set \
                     [http] live_board = \"always\""
                );
            }
        }
        None => {
            let _ = write!(out, "Sensors: {} reporting since start", list.len());
        }
    }
    if let Some(ev) = u(sensors, "sensors_evicted").filter(|n| *n > 0) {
        let _ = write!(out, " ({ev} forgotten at the cap)");
    }
    out.push('\n');
    let mut by_age: Vec<(u64, &str, &str)> = list
        .iter()
        .map(|x| {
            (
                now.saturating_sub(u(x, "received_ms").unwrap_or(0)),
                s(x, "key").unwrap_or("?"),
                s(x, "input").unwrap_or("?"),
            )
        })
        .collect();
    by_age.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    if !by_age.is_empty() {
        out.push_str("  stalest:\n");
        let width = by_age
            .iter()
            .take(STALEST_SHOWN)
            .map(|x| x.1.len())
            .max()
            .unwrap_or(0);
        for (a, key, input) in by_age.iter().take(STALEST_SHOWN) {
            let _ = writeln!(
                out,
                "    {key:<width$}  last seen {} ago via {input}",
                age(*a)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_a_technicians_summary() {
        let now = 1_700_000_000_000u64;
        let sensors = json!({
            "gateway_id": "gw-7",
            "now_ms": now,
            "started_ms": now - 7_200_000,
            "inputs": {
                "mqtt-0": {"kind": "mqtt", "target": "mqtt://***@broker:1883", "up": true, "since_ms": now - 65_000, "last_error": null},
                "pm": {"kind": "serial", "target": "/dev/ttyUSB0", "up": false, "since_ms": now - 5_000, "last_error": "no such device",
                       "serial": {"path": "/dev/ttyUSB0", "frames_good": 120, "frames_bad": 3, "bad_by_reason": {"checksum": 2, "noise": 1}}}
            },
            "buffer": {"unsent_lines": 1234, "urgent_unsent_lines": 2, "oldest_unsent_age_ms": 185_000,
                       "disk_bytes": 2_097_152, "max_bytes": 536_870_912, "fill_ratio": 0.0039,
                       "dropped_oldest_lines": 0, "append_errors": 0},
            "store": {"last_success_ms": now - 3_000, "batches_sent": 10, "lines_sent": 5000, "last_error": null},
            "sensors": [
                {"key": "a/air", "input": "mqtt-0", "received_ms": now - 1_000},
                {"key": "b/air", "input": "pm", "received_ms": now - 600_000},
                {"key": "c/air", "input": "mqtt-0", "received_ms": now - 2_000}
            ]
        });
        let ready = json!({"ready": false, "reasons": [{"code": "x", "message": "store unreachable: test"}],
                           "warnings": [{"code": "serial_port_down", "message": "serial port /dev/ttyUSB0 (input pm) down for 5 s: no such device"}]});
        let text = render("http://127.0.0.1:8080", &sensors, &ready);
        let expected = "\
gateway gw-7 at http://127.0.0.1:8080: NOT READY (up 2 h 0 min)
  ! store unreachable: test
  warning: serial port /dev/ttyUSB0 (input pm) down for 5 s: no such device

Inputs:
  mqtt-0  mqtt    UP   since 22:12:15 UTC (1 min 5 s)  mqtt://***@broker:1883
  pm      serial  DOWN since 22:13:15 UTC (5 s)  /dev/ttyUSB0
          last error: no such device
          frames: 120 good, 3 bad (checksum 2, noise 1)

Buffer:  1234 unsent readings (2 urgent), oldest unsent 3 min 5 s, disk 2.0 MiB of 512.0 MiB (0 %), dropped when full: 0, append errors: 0
Store:   last batch confirmed 3 s ago; 10 batches, 5000 lines sent; last error: none
Sensors: 3 reporting since start
  stalest:
    b/air  last seen 10 min 0 s ago via pm
    c/air  last seen 2 s ago via mqtt-0
    a/air  last seen 1 s ago via mqtt-0
";
        assert_eq!(text, expected);

        let ready = json!({"ready": true, "reasons": [], "warnings": [{"code": "serial_port_down", "message": "w"}]});
        let text = render("http://gw", &sensors, &ready);
        assert!(
            text.starts_with("gateway gw-7 at http://gw: READY, DEGRADED (up 2 h 0 min)\n  warning: w\n\nInputs:"),
            "{text}"
        );

        // A board fed on demand says since when it counts, and when this request woke it.
        let mut woken = sensors.clone();
        woken["live_since_ms"] = json!(now - 500);
        let text = render("http://gw", &woken, &ready);
        assert!(
            text.contains(
                "Sensors: 3 reporting in the last 0 s (the live board is fed while watched); it \
                 was idle until now: run status again in a few seconds, or set [http] \
                 live_board = \"always\"\n"
            ),
            "{text}"
        );
        woken["live_since_ms"] = json!(now - 600_000);
        let text = render("http://gw", &woken, &ready);
        assert!(
            text.contains(
                "Sensors: 3 reporting in the last 10 min 0 s (the live board is fed while \
                 watched)\n"
            ),
            "{text}"
        );
    }
}
