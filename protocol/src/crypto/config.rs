//! rustls configured the one way Ferry needs it: TLS 1.3 only, Ferry's ALPN, no session tickets or
//! resumption (keys come from the exporter), a client certificate required when the server names
//! client roots; and [`CryptoConfig`], the choice between that and no encryption, checked against
//! the side that uses it.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use crate::config::ConfigError;
use crate::wire::ids::Side;

/// ALPN protocol name both ends require, so a Ferry handshake cannot be confused with another
/// TLS protocol using the same certificates.
pub const ALPN: &[u8] = b"ferry/1";

/// How a connection protects its packets.
#[derive(Clone, Default)]
pub enum CryptoConfig {
    /// No encryption, no authentication: for trusted networks and benchmarks.
    #[default]
    None,
    /// TLS 1.3 client: verifies the server against `config`'s roots and `server_name`.
    TlsClient {
        /// rustls client configuration (roots, optional client certificate).
        config: Arc<rustls::ClientConfig>,
        /// Name the server's certificate must carry.
        server_name: ServerName<'static>,
    },
    /// TLS 1.3 server: presents `config`'s certificate, optionally verifies clients.
    TlsServer(Arc<rustls::ServerConfig>),
}

impl fmt::Debug for CryptoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoConfig::None => f.write_str("None"),
            CryptoConfig::TlsClient { server_name, .. } => f
                .debug_struct("TlsClient")
                .field("server_name", server_name)
                .finish_non_exhaustive(),
            CryptoConfig::TlsServer(_) => f.write_str("TlsServer"),
        }
    }
}

/// A certificate chain (leaf first) and its private key.
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be built: one line, naming the part that was refused.
#[derive(Debug, thiserror::Error)]
pub enum CryptoConfigError {
    /// rustls refused `what` (`TLS`, `certificate`, `client certificate`).
    #[error("{what}: {}", tls_reason(.source))]
    Tls {
        /// The part refused.
        what: &'static str,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The client CA cannot verify client certificates.
    #[error("client CA: {0}")]
    ClientCa(#[source] rustls::server::VerifierBuilderError),
}

fn tls_reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_owned()
        }
        e => e.to_string(),
    }
}

fn tls_error(what: &'static str) -> impl FnOnce(rustls::Error) -> CryptoConfigError {
    move |source| CryptoConfigError::Tls { what, source }
}

impl CryptoConfig {
    /// A TLS server as Ferry needs it (TLS 1.3 only, ALPN [`ALPN`], no session tickets):
    /// presents `identity`; with `client_roots`, requires every client to present a certificate
    /// issued by one of them (mutual TLS).
    pub fn server(
        identity: Identity,
        client_roots: Option<RootCertStore>,
    ) -> Result<Self, CryptoConfigError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error("TLS"))?;
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(CryptoConfigError::ClientCa)?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(identity.chain, identity.key)
            .map_err(tls_error("certificate"))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // Sessions are long-lived and keys come from the exporter: no tickets, no resumption.
        config.send_tls13_tickets = 0;
        Ok(CryptoConfig::TlsServer(Arc::new(config)))
    }

    /// A TLS client as Ferry needs it: verifies the server against `roots` and `server_name`;
    /// presents `identity` when the server asks for a client certificate.
    pub fn client(
        roots: RootCertStore,
        server_name: ServerName<'static>,
        identity: Option<Identity>,
    ) -> Result<Self, CryptoConfigError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error("TLS"))?
            .with_root_certificates(Arc::new(roots));
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .map_err(tls_error("client certificate"))?,
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(CryptoConfig::TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The same client configuration for another server name (one per gateway).
    pub fn with_server_name(&self, name: ServerName<'static>) -> Self {
        match self {
            CryptoConfig::TlsClient { config, .. } => CryptoConfig::TlsClient {
                config: config.clone(),
                server_name: name,
            },
            other => other.clone(),
        }
    }

    /// The value of the `crypto` setting both ends must agree on: `none` or `tls`.
    pub fn mode(&self) -> &'static str {
        match self {
            CryptoConfig::None => "none",
            _ => "tls",
        }
    }

    /// True when packets are protected.
    pub fn is_tls(&self) -> bool {
        !matches!(self, CryptoConfig::None)
    }

    /// Checks that the configuration fits this side and Ferry's needs.
    pub(crate) fn validate(&self, side: Side) -> Result<(), ConfigError> {
        let alpn = match (self, side) {
            (CryptoConfig::None, _) => return Ok(()),
            (CryptoConfig::TlsClient { config, .. }, Side::Client) => &config.alpn_protocols,
            (CryptoConfig::TlsServer(config), Side::Server) => &config.alpn_protocols,
            (CryptoConfig::TlsClient { .. }, Side::Server) => {
                return Err(ConfigError::TlsClientCannotServe)
            }
            (CryptoConfig::TlsServer(_), Side::Client) => {
                return Err(ConfigError::TlsServerCannotConnect)
            }
        };
        if !alpn.iter().any(|p| p == ALPN) {
            return Err(ConfigError::MissingAlpn);
        }
        Ok(())
    }
}
