//! TLS client trust and identity, the same for every side the gateway connects to.
//!
//! Why it exists: a city installs its CA once (`update-ca-certificates`) and expects the broker
//! and the store to both be trusted through it; a `ca_file` in the config adds a CA on top (a
//! private CA that is not in the system store); a client certificate is presented where the
//! server asks for one (mutual TLS). Before this module the MQTT input trusted the system store
//! and the store output trusted compiled-in web roots, so the same city CA worked on one side
//! only. One builder now serves both: the system's trust store (`SSL_CERT_FILE` /
//! `SSL_CERT_DIR` honoured, as by OpenSSL) plus the optional `ca_file`, and an optional client
//! certificate chain and key. The webhook input's HTTPS server reads its certificate and key
//! here too ([`server_config`]). rustls with ring, the one crypto stack of the tree: reqwest is built
//! without a provider of its own (`rustls-no-provider`), so [`install_crypto_provider`] makes ring
//! the process default before any HTTP client is built.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Makes ring the process's default rustls crypto provider (once; later calls, or a provider
/// some other code installed first, leave it as it is).
///
/// Every `reqwest::Client` needs one, even for plain `http://` URLs: reqwest 0.13 is built with
/// `rustls-no-provider` (its `rustls` feature would link aws-lc-rs, a second crypto stack beside
/// the ring the MQTT side and the webhook server use), and its `ClientBuilder::build` panics
/// when no default provider is installed. [`crate::output::influx::InfluxSink::new`] and
/// `ioc-gateway status` call this before building theirs; code building its own client in the
/// same process (tests) calls it first too.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: a provider is installed already, which is all that is needed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The files a TLS client section names (`ca_file`, `client_cert_file`, `client_key_file`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTlsFiles<'a> {
    pub ca_file: Option<&'a Path>,
    pub client_cert_file: Option<&'a Path>,
    pub client_key_file: Option<&'a Path>,
}

/// Why a TLS client config cannot be built; names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {path} holds no usable PEM certificate{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    NoCertificate {
        key: &'static str,
        path: PathBuf,
        reason: Option<String>,
    },
    #[error("{key} {path} holds no usable PEM private key: {reason}")]
    BadKey {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("client_cert_file and client_key_file go together")]
    HalfIdentity,
    #[error("certificate and key do not fit together: {0}")]
    Mismatch(String),
    #[error("no trusted CA certificates found on this system: install them (ca-certificates) or set ca_file")]
    NoRoots,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadKey {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            key,
            path: path.to_owned(),
            reason: Some(e.to_string()),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
            reason: None,
        });
    }
    Ok(certs)
}

/// The system's trust store plus `ca_file`.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable entries of the system store are skipped: one bad file in /etc/ssl/certs must
    // not take the gateway down.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let (added, _ignored) = roots.add_parsable_certificates(certificates("ca_file", path)?);
        if added == 0 {
            return Err(TlsError::NoCertificate {
                key: "ca_file",
                path: path.to_owned(),
                reason: Some("no CA certificate in it could be used".into()),
            });
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}

/// A rustls client config: [`root_store`] as trust, the client certificate when given.
pub fn client_config(files: ClientTlsFiles<'_>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder().with_root_certificates(root_store(files.ca_file)?);
    match (files.client_cert_file, files.client_key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = certificates("client_cert_file", cert)?;
            let key_der = private_key("client_key_file", key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::Mismatch(e.to_string()))
        }
        _ => Err(TlsError::HalfIdentity),
    }
}

/// A rustls server config for HTTPS (HTTP/1.1 by ALPN) from `cert_file` (the chain) and
/// `key_file`, PEM, read and checked as the client side's files are.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certificates("cert_file", cert_file)?;
    let key = private_key("key_file", key_file)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_the_process_provider_and_a_client_builds() {
        install_crypto_provider();
        install_crypto_provider();
        let provider = rustls::crypto::CryptoProvider::get_default().expect("installed");
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(provider.cipher_suites.len(), ring.cipher_suites.len());
        // reqwest builds a rustls config even for plain HTTP: it must find the provider.
        reqwest::Client::builder().build().expect("client builds");
    }

    #[test]
    fn a_missing_ca_file_names_key_and_path() {
        let e = client_config(ClientTlsFiles {
            ca_file: Some(Path::new("/nonexistent/ca.pem")),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("ca_file /nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("ioc-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = root_store(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("no usable PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn half_an_identity_is_refused() {
        let e = client_config(ClientTlsFiles {
            client_cert_file: Some(Path::new("/x.pem")),
            ..Default::default()
        });
        assert!(matches!(
            e,
            Err(TlsError::HalfIdentity) | Err(TlsError::NoRoots)
        ));
    }
}
