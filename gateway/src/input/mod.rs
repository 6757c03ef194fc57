//! Inputs: transport only (MQTT connections, serial ports); decoding lives in [`crate::decode`].
pub mod mqtt;

/// Starts one task per `[[inputs.serial]]` port (none until the serial input lands).
pub fn spawn_serial_inputs(
    config: &crate::config::Config,
    _ingest: &crate::pipeline::Ingest,
    _shutdown: &tokio::sync::watch::Receiver<bool>,
    _set: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) {
    if !config.inputs.serial.is_empty() {
        tracing::error!("serial inputs are configured but this build has no serial support yet");
    }
}
pub mod serial;
