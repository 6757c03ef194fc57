//! Inputs: transport only (MQTT connections, serial ports, webhooks); decoding lives in
//! [`crate::decode`].

pub mod http;
pub mod mqtt;
pub mod serial;

use std::path::Path;

use tokio::task::JoinSet;

use crate::pipeline::Ingest;
use crate::shutdown::Shutdown;

/// Starts one task per `[[inputs.mqtt]]` connection, per `[[inputs.serial]]` port and per
/// `[[inputs.http]]` listen address (inputs sharing one are served together), all
/// committing through `ingest` and stopped by `shutdown`. MQTT inputs keep their session state
/// under `data_dir`.
pub fn spawn_inputs(
    mqtt_inputs: &[mqtt::MqttInputConfig],
    serial_ports: &[serial::SerialInputConfig],
    http_inputs: &[http::HttpInputConfig],
    ingest: &Ingest,
    data_dir: &Path,
    shutdown: &Shutdown,
) -> JoinSet<anyhow::Result<()>> {
    let mut set = JoinSet::new();
    for (i, cfg) in mqtt_inputs.iter().enumerate() {
        let fut = mqtt::run_mqtt_input(
            cfg.clone(),
            i,
            ingest.clone(),
            data_dir.to_path_buf(),
            shutdown.clone(),
        );
        set.spawn(async move { fut.await.map_err(anyhow::Error::from) });
    }
    for (i, cfg) in serial_ports.iter().enumerate() {
        let fut = serial::run_serial_input(cfg.clone(), i, ingest.clone(), shutdown.clone());
        set.spawn(async move { fut.await.map_err(anyhow::Error::from) });
    }
    for (addr, group) in http::by_address(http_inputs) {
        let fut = http::run_address(addr, group, ingest.clone(), shutdown.clone());
        set.spawn(async move { fut.await.map_err(anyhow::Error::from) });
    }
    set
}
