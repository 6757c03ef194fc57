//! The store output's TLS trust and identity, as a city sets them up.
//!
//! Why it exists: a city installs its CA in the system store and expects the broker and the
//! store to both be trusted through it, and some stores sit behind a proxy that asks for a
//! client certificate. Checked here:
//! - a real HTTPS InfluxDB whose CA is only in the *system* store (`SSL_CERT_FILE`, which the
//!   system-store loader honours as OpenSSL does) is trusted without `ca_file`;
//! - a `ca_file` adds to the system store;
//! - mutual TLS: an HTTPS peer that requires a client certificate signed by the test CA
//!   refuses the sink without one and takes the write with `client_cert_file` +
//!   `client_key_file`. It is a scripted peer because none of the test stores (InfluxDB 1.x,
//!   open-source VictoriaMetrics) can require client certificates.
//!
//! One test function: it sets `SSL_CERT_FILE` for the whole process, so nothing else runs in
//! this binary.

use std::path::Path;
use std::sync::Arc;

use ioc_gateway::output::influx::{Api, InfluxSink, InfluxSinkConfig, SinkError, WriteOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

fn gz(text: &str) -> Vec<u8> {
    ioc_e2e::gzip(text.as_bytes())
}

/// An HTTPS peer on loopback that requires a client certificate signed by `ca` and answers
/// every request `204`. Returns its port.
async fn mutual_tls_peer(pki: &ioc_e2e::Pki) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |p: &Path| {
        CertificateDer::pem_file_iter(p)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&pki.path("ca.pem")) {
        roots.add(c).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&pki.path("server.pem")),
            PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Read the request head and its body (Content-Length), then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn the_store_trusts_the_system_store_plus_ca_file_and_presents_a_client_certificate() {
    let pki = ioc_e2e::Pki::new().unwrap();
    let store = ioc_e2e::Influx1::start_https(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &["telemetry"],
    )
    .unwrap();
    let dead = tempfile::tempdir().unwrap();
    let body = gz("tls_trust,sensor_id=t1 v=1 1700000000000000000\n");
    let mut config = InfluxSinkConfig::new(store.url(), Api::V1, dead.path());
    config.database = "telemetry".into();

    // An empty system store file: our CA is unknown.
    let empty = pki.path("empty-system-store.pem");
    std::fs::write(&empty, "").unwrap();
    // The system store is then SSL_CERT_FILE alone (no SSL_CERT_DIR, which some machines set).
    std::env::remove_var("SSL_CERT_DIR");
    std::env::set_var("SSL_CERT_FILE", &empty);
    let no_roots = InfluxSink::new(config.clone()).map(|_| ());
    assert!(
        matches!(
            no_roots,
            Err(SinkError::Tls(ioc_gateway::tls::TlsError::NoRoots))
        ),
        "no roots at all must be a clear config error: {no_roots:?}"
    );
    // ... unless ca_file adds it.
    let mut with_ca = config.clone();
    with_ca.ca_file = Some(pki.path("ca.pem"));
    assert_eq!(
        InfluxSink::new(with_ca)
            .unwrap()
            .write(&body, 1)
            .await
            .unwrap(),
        WriteOutcome::Accepted { status: 204 }
    );

    // The city CA installed in the system store: trusted without ca_file.
    std::env::set_var("SSL_CERT_FILE", pki.path("ca.pem"));
    assert_eq!(
        InfluxSink::new(config.clone())
            .unwrap()
            .write(&body, 1)
            .await
            .unwrap(),
        WriteOutcome::Accepted { status: 204 }
    );
    // A system store with another CA only, and ca_file naming ours: both count.
    std::env::set_var("SSL_CERT_FILE", pki.path("other-ca.pem"));
    match InfluxSink::new(config.clone())
        .unwrap()
        .write(&body, 1)
        .await
    {
        Err(SinkError::Transport { reason, .. }) => {
            assert!(reason.contains("UnknownIssuer"), "{reason}")
        }
        other => panic!("the other CA must not vouch for our store: {other:?}"),
    }
    let mut plus_ca = config.clone();
    plus_ca.ca_file = Some(pki.path("ca.pem"));
    assert_eq!(
        InfluxSink::new(plus_ca)
            .unwrap()
            .write(&body, 1)
            .await
            .unwrap(),
        WriteOutcome::Accepted { status: 204 }
    );

    // Mutual TLS.
    std::env::set_var("SSL_CERT_FILE", pki.path("ca.pem"));
    let port = mutual_tls_peer(&pki).await;
    let mut mtls = InfluxSinkConfig::new(format!("https://127.0.0.1:{port}"), Api::V1, dead.path());
    mtls.database = "telemetry".into();
    let refused = InfluxSink::new(mtls.clone()).unwrap().write(&body, 1).await;
    assert!(
        matches!(refused, Err(SinkError::Transport { .. })),
        "without a client certificate the peer must refuse: {refused:?}"
    );
    mtls.client_cert_file = Some(pki.path("client.pem"));
    mtls.client_key_file = Some(pki.path("client.key"));
    assert_eq!(
        InfluxSink::new(mtls.clone())
            .unwrap()
            .write(&body, 1)
            .await
            .unwrap(),
        WriteOutcome::Accepted { status: 204 }
    );
    // Half an identity is a config error, not a silent anonymous connection.
    mtls.client_key_file = None;
    assert!(matches!(
        InfluxSink::new(mtls),
        Err(SinkError::Tls(ioc_gateway::tls::TlsError::HalfIdentity))
    ));
}
