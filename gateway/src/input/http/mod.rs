//! `[[inputs.http]]`: webhook inputs. Cameras, plate readers and network servers that push HTTP
//! instead of publishing to a broker post their payloads here, and get the same durability
//! contract as MQTT: `204` only once the readings are durable, `503` with `Retry-After` when the
//! buffer cannot persist, `4xx` with the reason for what can never be stored (see [`server`]).
//!
//! Inputs with the same `listen` address share one socket and are told apart by `path`; each
//! address is one task that [`crate::input::set`] starts like any other input, so the
//! ordered shutdown stops it first: it stops accepting, finishes the requests in flight (their
//! commits included) and returns.
//!
//! | module | what |
//! | --- | --- |
//! | [`config`] | the section and its checks |
//! | [`auth`] | bearer / `?token=` check, constant time |
//! | [`body`] | content type, gzip (bounded), multipart (the JSON part) |
//! | [`server`] | accept loop, TLS, the handler and its status codes |

pub mod auth;
pub mod body;
pub mod config;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tracing::Instrument;

pub use config::HttpInputConfig;

use crate::decode::payload::PayloadDecoder;
use crate::pipeline::Ingest;
use crate::shutdown::Shutdown;
use crate::spacer::SeriesSpacer;

/// Why an HTTP input could not start (a setup error: the gateway stops and says so).
#[derive(Debug, thiserror::Error)]
pub enum HttpInputError {
    #[error("HTTP input {input}: {message}")]
    Setup { input: String, message: String },
    #[error("HTTP input {input}: cannot listen on {addr}: {source}")]
    Bind {
        input: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The inputs of `configs` grouped by listen address, each with its index in `[[inputs.http]]`.
pub fn by_address(configs: &[HttpInputConfig]) -> Vec<(SocketAddr, Vec<(usize, HttpInputConfig)>)> {
    let mut groups: Vec<(SocketAddr, Vec<(usize, HttpInputConfig)>)> = Vec::new();
    for (i, cfg) in configs.iter().enumerate() {
        // Validated already; an unparsable address is reported by run_address.
        let addr = cfg
            .listen
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        match groups.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, g)) => g.push((i, cfg.clone())),
            None => groups.push((addr, vec![(i, cfg.clone())])),
        }
    }
    groups
}

/// Runs the webhook inputs of one listen address until `shutdown`; then stops accepting and
/// finishes the requests in flight.
pub async fn run_address(
    addr: SocketAddr,
    inputs: Vec<(usize, HttpInputConfig)>,
    ingest: Ingest,
    shutdown: Shutdown,
) -> Result<(), HttpInputError> {
    let first = inputs
        .first()
        .map(|(i, c)| c.name_or(*i))
        .unwrap_or_default();
    let span = tracing::info_span!("http_input", listen = %addr);
    async move {
        let setup = |input: &str, message: String| HttpInputError::Setup {
            input: input.to_owned(),
            message,
        };
        let mut routes = HashMap::new();
        let mut tls = None;
        let mut permits = usize::MAX;
        let status = ingest.status().clone();
        let mut names = Vec::new();
        for (i, cfg) in &inputs {
            let name = cfg.name_or(*i);
            let token = crate::secret::resolve_secret(
                &format!("inputs.http[{i}].token"),
                cfg.token_env.as_deref(),
                cfg.token_file.as_deref(),
            )
            .map_err(|e| setup(&name, e.to_string()))?;
            if let (Some(cert), Some(key), None) = (&cfg.cert_file, &cfg.key_file, &tls) {
                tls = Some(server::tls_acceptor(cert, key).map_err(|e| setup(&name, e))?);
            }
            permits = permits.min(cfg.max_concurrent_requests);
            let scheme = if cfg.tls() { "https" } else { "http" };
            status.register(
                &name,
                crate::status::InputKind::Http,
                &format!("{scheme}://{}{}", cfg.listen, cfg.path),
            );
            names.push(name.clone());
            let decoder = PayloadDecoder::new(&cfg.payload_spec())
                .map_err(|e| setup(&name, format!("payload config: {e}")))?;
            routes.insert(
                cfg.path.clone(),
                Arc::new(server::Webhook {
                    name,
                    decoder,
                    priority: cfg.priority.into(),
                    max_body: cfg.max_body_bytes,
                    token,
                    ingest: ingest.clone(),
                    spacer: Mutex::new(SeriesSpacer::default()),
                }),
            );
        }
        let socket = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| HttpInputError::Bind {
                input: first.clone(),
                addr,
                source,
            })?;
        for name in &names {
            status.set(name, true, None);
        }
        tracing::info!(inputs = ?names, tls = tls.is_some(), "webhook inputs listening");
        let listener = server::Listener {
            addr,
            routes,
            tls,
            permits: Arc::new(tokio::sync::Semaphore::new(permits.max(1))),
        };
        listener.run(socket, shutdown).await;
        // Gone from the status: a reload that removed them must not leave them "down".
        for name in &names {
            status.unregister(name);
        }
        tracing::info!("webhook inputs stopped; requests in flight finished");
        Ok(())
    }
    .instrument(span)
    .await
}
