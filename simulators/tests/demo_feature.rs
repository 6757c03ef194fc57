//! `sensor-sim demo` in a build without the `demo` feature (a plain `cargo build -p sensor-sim`,
//! or a workspace build): the command is still listed, and running it says how to get a build
//! that has it instead of failing obscurely. With the feature on, the demo itself is tested by
//! tests/tests/demo_e2e.rs.

#[cfg(not(feature = "demo"))]
#[test]
fn demo_without_the_feature_names_the_command_that_has_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sensor-sim"))
        .args(["demo", "--duration", "1"])
        .output()
        .expect("run sensor-sim");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without the `demo` feature")
            && stderr.contains("cargo run --release -p sensor-sim --features demo -- demo"),
        "{stderr}"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_sensor-sim"))
        .args(["demo", "--help"])
        .output()
        .expect("run sensor-sim demo --help");
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--features demo"));
}
