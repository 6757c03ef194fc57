//! Steps that more than one end-to-end test file is written in.
//!
//! Why it exists: a scenario against real servers is long (start servers, configure a gateway, cut
//! something, bring it back, check every reading), and it reads best as a short list of steps:
//! `given_*` sets the scene, `when_*` is the action, `then_*` checks what must hold. The steps
//! that several files share live here, each with the assertion (and its message) it always made;
//! steps used by one file only live in that file.

use std::path::Path;
use std::time::Duration;

use crate::{wait_until, GatewayProcess, Mosquitto, MqttPublisher};

/// How long a gateway may take to subscribe after it starts, or to reconnect after a restart.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Given: a gateway started with `config`, once every `(client_id, topic filter)` of
/// `subscriptions` has subscribed at `broker` (counted from the subscriptions it had before, so a
/// persistent session that subscribes again is seen too).
pub fn given_a_gateway_subscribed(
    broker: &Mosquitto,
    config: &Path,
    subscriptions: &[(&str, &str)],
) -> GatewayProcess {
    let before: Vec<usize> = subscriptions
        .iter()
        .map(|(client_id, topic)| broker.subscription_count(client_id, topic))
        .collect();
    let mut process = GatewayProcess::spawn(config).unwrap();
    for ((client_id, topic), before) in subscriptions.iter().zip(before) {
        then_it_subscribed(broker, &mut process, client_id, topic, before);
    }
    process
}

/// Then: `client_id` has subscribed to `topic` more often than `before` times, within
/// [`CONNECT_TIMEOUT`].
pub fn then_it_subscribed(
    broker: &Mosquitto,
    process: &mut GatewayProcess,
    client_id: &str,
    topic: &str,
    before: usize,
) {
    let subscribed = broker.wait_for_subscription(client_id, topic, before, CONNECT_TIMEOUT);
    assert!(
        subscribed,
        "gateway client {client_id} did not subscribe to {topic} within 20 s (running: {}).\n\
         --- gateway log ---\n{}\n--- broker ---\n{}",
        process.is_running(),
        process.log_tail(40),
        broker.log_tail(20)
    );
}

/// When: the gateway process starts again (same config, same data dir); then it has connected to
/// the broker once more within [`CONNECT_TIMEOUT`]. Its session is persistent, so it need not
/// subscribe again: the connection is what is awaited.
pub fn when_it_restarts_then_it_reconnects(process: &mut GatewayProcess) {
    let connected_before = process.log().matches("connected to broker").count();
    process.start_again().unwrap();
    let connected = wait_until(CONNECT_TIMEOUT, || {
        process.log().matches("connected to broker").count() > connected_before
    });
    assert!(
        connected,
        "gateway did not connect after restart (running: {}):\n{}",
        process.is_running(),
        process.log_tail(40)
    );
}

/// When: the gateway gets SIGTERM; then it exits successfully within `timeout`.
pub fn when_stopped_then_it_exits_cleanly(process: &mut GatewayProcess, timeout: Duration) {
    process.sigterm();
    let status = process.wait_exit(timeout).unwrap();
    assert!(
        status.success(),
        "gateway exit {status}\n{}",
        process.log_tail(30)
    );
}

/// Then: the broker acknowledged every message published so far within `timeout`.
pub fn then_the_broker_acked_everything(publisher: &MqttPublisher, timeout: Duration) {
    assert!(
        publisher.wait_all_acked(timeout),
        "broker acknowledged only {} of {} messages",
        publisher.acked_count(),
        publisher.published()
    );
}
