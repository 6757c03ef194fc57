//! Same seed ⇒ byte-identical payload stream, for every shipped scenario; different seed ⇒ different.
//! Digests are SHA-256 over `topic \t payload \n` of the first messages, the same bytes that
//! `sensor-sim generate` prints.

use std::path::PathBuf;

use sensor_sim::generator::Generator;
use sensor_sim::scenario::Scenario;
use sha2::{Digest, Sha256};

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/scenarios")
        .join(name);
    Scenario::load(&path).unwrap()
}

fn digest(s: &Scenario, seed: u64, n: usize) -> String {
    let mut h = Sha256::new();
    let mut manifest = Sha256::new();
    for m in Generator::new(s, seed).unwrap().take(n) {
        h.update(m.topic.as_bytes());
        h.update(b"\t");
        h.update(&m.payload);
        h.update(b"\n");
        manifest.update(m.entry.to_line().as_bytes());
    }
    format!("{:x}/{:x}", h.finalize(), manifest.finalize())
}

#[test]
fn same_seed_same_bytes_for_every_scenario() {
    for name in [
        "district-rush-hour.toml",
        "load-1000.toml",
        "faulty-field.toml",
    ] {
        let s = scenario(name);
        let a = digest(&s, 42, 20_000);
        let b = digest(&s, 42, 20_000);
        assert_eq!(a, b, "{name}");
        assert_ne!(
            a,
            digest(&s, 43, 20_000),
            "{name}: another seed must give other bytes"
        );
    }
}

#[test]
fn cli_generate_matches_library_stream() {
    let bin = env!("CARGO_BIN_EXE_sensor-sim");
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios/faulty-field.toml");
    let run = || {
        let out = std::process::Command::new(bin)
            .args(["generate", "--scenario"])
            .arg(&path)
            .args(["--seed", "9", "--messages", "3000"])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let first = run();
    assert_eq!(first, run());
    let mut expected = Vec::new();
    for m in Generator::new(&scenario("faulty-field.toml"), 9)
        .unwrap()
        .take(3000)
    {
        expected.extend_from_slice(m.topic.as_bytes());
        expected.push(b'\t');
        expected.extend_from_slice(&m.payload);
        expected.push(b'\n');
    }
    assert_eq!(first, expected);
    assert_eq!(first.iter().filter(|b| **b == b'\n').count(), 3000);
}
