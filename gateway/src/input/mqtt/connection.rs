//! The byte stream to the broker: TCP, or TLS over TCP (rustls, ring), opened with a timeout.
//!
//! Why it exists: the session ([`super::session`]) speaks packets and the event loop
//! ([`super::task`]) moves bytes; what is left is opening a stream and saying in words a
//! technician can act on why it could not be opened (nothing listening, DNS, certificate).
//! Trust for `mqtts://`: the system's trust store plus the `ca_file` when given, and a client
//! certificate for mutual TLS, built by [`crate::tls`] as for the store.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls::pki_types::ServerName;
use rumqttc::tokio_rustls::rustls::ClientConfig;
use rumqttc::tokio_rustls::TlsConnector;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Anything we can speak MQTT over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where the broker is and how to talk to it.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `Some` for `mqtts://`.
    pub tls: Option<Arc<ClientConfig>>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why a stream could not be opened, in words for the log and `/readyz`.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot connect: nothing listens at {addr} (is the broker running? right port?)")]
    Refused { addr: String },
    #[error("cannot resolve or reach {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {addr} after {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("TLS handshake failed (check ca_file, certificate dates and host name): {0}")]
    Tls(String),
}

/// Opens the stream: TCP connect (with `TCP_NODELAY`), then the TLS handshake if configured.
pub async fn open(ep: &Endpoint) -> Result<Box<dyn Stream>, OpenError> {
    let addr = format!("{}:{}", ep.host, ep.port);
    let tcp = match tokio::time::timeout(ep.connect_timeout, TcpStream::connect(&addr)).await {
        Err(_) => {
            return Err(OpenError::Timeout {
                addr,
                secs: ep.connect_timeout.as_secs(),
            })
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(OpenError::Refused { addr })
        }
        Ok(Err(source)) => return Err(OpenError::Io { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &ep.tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(ep.host.clone())
        .map_err(|e| OpenError::Tls(format!("{:?} is not a valid host name: {e}", ep.host)))?;
    let handshake = TlsConnector::from(tls.clone()).connect(name, tcp);
    match tokio::time::timeout(ep.connect_timeout, handshake).await {
        Err(_) => Err(OpenError::Timeout {
            addr,
            secs: ep.connect_timeout.as_secs(),
        }),
        Ok(Err(e)) => Err(OpenError::Tls(e.to_string())),
        Ok(Ok(s)) => Ok(Box::new(s)),
    }
}
