//! Inputs: transport only (MQTT connections, serial ports); decoding lives in [`crate::decode`].
use crate::shutdown::Shutdown;
pub mod mqtt;

/// Starts one task per `[[inputs.serial]]` port.
pub fn spawn_serial_inputs(
    ports: &[serial::SerialInputConfig],
    ingest: &crate::pipeline::Ingest,
    shutdown: &Shutdown,
    set: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) {
    for (i, cfg) in ports.iter().enumerate() {
        let fut = serial::run_serial_input(cfg.clone(), i, ingest.clone(), shutdown.clone());
        set.spawn(async move { fut.await.map_err(anyhow::Error::from) });
    }
}
pub mod serial;
