//! Encryption settings of the binaries: the `--crypto` and `--tls-*` flags, and turning them
//! into the protocol's [`CryptoConfig`] at start-up, with one-line errors that name the file.
//!
//! TLS is the default: Ferry crosses public networks. `--crypto none` stays for trusted
//! networks and benchmarks; both ends must agree (a mismatch fails the handshake with a line
//! naming both modes). Certificates and keys are read once at start-up, so a missing,
//! malformed, expired or mismatched file stops the binary before it serves anything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_transport::rustls::pki_types::pem::{self, PemObject};
use ferry_transport::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use ferry_transport::rustls::RootCertStore;
use ferry_transport::{CryptoConfig, CryptoConfigError, Identity};

/// Packet protection on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CryptoMode {
    /// TLS 1.3 handshake, then every packet AEAD-sealed (AES-256-GCM).
    Tls,
    /// No encryption or authentication: trusted networks and benchmarks only.
    None,
}

const DEV_HINT: &str = "make a development set with `ferry-certs --out DIR`, or use --crypto none on a trusted network";

/// Why the encryption flags could not be turned into a configuration: one line naming the flag
/// or the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS flag given with `--crypto none`.
    #[error("{0} is set but --crypto is none: remove it, or use --crypto tls")]
    Unused(&'static str),
    /// A gateway under TLS without its certificate or key.
    #[error("--crypto tls (the default) needs --tls-cert FILE and --tls-key FILE: {DEV_HINT}")]
    NeedsCertAndKey,
    /// `--tls-server-name` is neither a DNS name nor an IP address.
    #[error("invalid --tls-server-name {0:?}: not a DNS name or IP")]
    ServerName(String),
    /// A PEM file that could not be read or holds no `what` (`certificate`, `private key`).
    #[error("{}", pem_message(.path, .what, .source))]
    Pem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// Why it could not be used.
        source: pem::Error,
    },
    /// A CA certificate that cannot be a trust anchor.
    #[error("{}: not a usable CA certificate: {source}", .path.display())]
    UnusableCa {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        source: ferry_transport::rustls::Error,
    },
    /// No `--tls-ca` and no system roots; `detail` is the first loading error, if any, as
    /// ` (reason)`.
    #[error("no --tls-ca given and no system CA certificates found{detail}: pass --tls-ca FILE")]
    NoSystemRoots {
        /// The first loading error, parenthesised with a leading space, or empty.
        detail: String,
    },
    /// The files were read but rustls refused the configuration; `file` is the certificate
    /// (or `TLS` when there is none).
    #[error("{}: {source}", .file.display())]
    Config {
        /// The certificate, or `TLS`.
        file: PathBuf,
        /// Why.
        source: CryptoConfigError,
    },
}

/// The gateway's encryption flags.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayTlsArgs {
    /// Packet protection: tls (TLS 1.3, every packet authenticated and encrypted) or none
    /// (trusted networks, benchmarks). Agents must use the same.
    #[arg(long, env = "FERRY_GATEWAY_CRYPTO", value_enum, default_value_t = CryptoMode::Tls)]
    pub crypto: CryptoMode,

    /// Certificate chain the gateway presents (PEM, leaf first). Required with --crypto tls.
    #[arg(long, env = "FERRY_GATEWAY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Private key of --tls-cert (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, env = "FERRY_GATEWAY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: require every agent to present a certificate issued by a CA in this PEM
    /// file; agents without one are refused with a reason.
    #[arg(long, env = "FERRY_GATEWAY_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

impl GatewayTlsArgs {
    /// Reads the files and builds the server's crypto configuration.
    pub fn crypto_config(&self) -> Result<CryptoConfig, TlsError> {
        if self.crypto == CryptoMode::None {
            reject_unused(&[
                ("--tls-cert", self.tls_cert.is_some()),
                ("--tls-key", self.tls_key.is_some()),
                ("--tls-client-ca", self.tls_client_ca.is_some()),
            ])?;
            return Ok(CryptoConfig::None);
        }
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Err(TlsError::NeedsCertAndKey);
        };
        let identity = load_identity(cert, key)?;
        let client_roots = self.tls_client_ca.as_deref().map(load_roots).transpose()?;
        CryptoConfig::server(identity, client_roots).map_err(|source| TlsError::Config {
            file: cert.clone(),
            source,
        })
    }
}

/// The agent's encryption flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentTlsArgs {
    /// Packet protection: tls (TLS 1.3, every packet authenticated and encrypted) or none
    /// (trusted networks, benchmarks). Must match the gateway.
    #[arg(long, env = "FERRY_AGENT_CRYPTO", value_enum, default_value_t = CryptoMode::Tls)]
    pub crypto: CryptoMode,

    /// CA certificates (PEM) the gateway's certificate must chain to; without it, the
    /// system's trusted roots.
    #[arg(long, env = "FERRY_AGENT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Name the gateway's certificate must carry (DNS name or IP); default: the IP address of
    /// each --gateway.
    #[arg(long, env = "FERRY_AGENT_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Client certificate (PEM chain) for gateways that require mutual TLS.
    #[arg(
        long,
        env = "FERRY_AGENT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key of --tls-cert (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(
        long,
        env = "FERRY_AGENT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// The agent's crypto, ready to be specialised for each gateway.
#[derive(Debug, Clone)]
pub struct AgentCrypto {
    config: CryptoConfig,
    server_name: Option<ServerName<'static>>,
}

impl AgentCrypto {
    /// The configuration for a session to `gateway`: the fixed server name if one was given,
    /// otherwise the gateway's IP address.
    pub fn for_gateway(&self, gateway: SocketAddr) -> CryptoConfig {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(gateway.ip().into()));
        self.config.with_server_name(name)
    }

    /// The mode, for logs.
    pub fn mode(&self) -> &'static str {
        self.config.mode()
    }
}

impl AgentTlsArgs {
    /// Reads the files and builds the client's crypto configuration.
    pub fn crypto_config(&self) -> Result<AgentCrypto, TlsError> {
        if self.crypto == CryptoMode::None {
            reject_unused(&[
                ("--tls-ca", self.tls_ca.is_some()),
                ("--tls-server-name", self.tls_server_name.is_some()),
                ("--tls-cert", self.tls_cert.is_some()),
                ("--tls-key", self.tls_key.is_some()),
            ])?;
            return Ok(AgentCrypto {
                config: CryptoConfig::None,
                server_name: None,
            });
        }
        let server_name = self
            .tls_server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_owned()).map_err(|_| TlsError::ServerName(n.to_owned()))
            })
            .transpose()?;
        let roots = match &self.tls_ca {
            Some(path) => load_roots(path)?,
            None => system_roots()?,
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(load_identity(cert, key)?),
            _ => None,
        };
        // The name is replaced per gateway; any valid one serves to build the configuration.
        let placeholder = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let config = CryptoConfig::client(roots, placeholder, identity).map_err(|source| {
            TlsError::Config {
                file: self
                    .tls_cert
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("TLS")),
                source,
            }
        })?;
        Ok(AgentCrypto {
            config,
            server_name,
        })
    }
}

fn reject_unused(flags: &[(&'static str, bool)]) -> Result<(), TlsError> {
    match flags.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(TlsError::Unused(flag)),
        None => Ok(()),
    }
}

/// A certificate chain and its key.
fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    Ok(Identity {
        chain: load_certs(cert)?,
        key: load_key(key)?,
    })
}

/// Every certificate in a PEM file; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "certificate", pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, "private key", e))
}

fn pem_error(path: &Path, what: &'static str, source: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what,
        source,
    }
}

fn pem_message(path: &Path, what: &str, e: &pem::Error) -> String {
    let file = path.display();
    match e {
        pem::Error::Io(e) => format!("{file}: cannot read: {e}"),
        pem::Error::NoItemsFound => format!("{file}: no PEM {what} found in the file"),
        e => format!("{file}: not a valid PEM {what}: {e}"),
    }
}

/// Trust anchors from a PEM file of CA certificates.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::UnusableCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The operating system's trusted roots.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoSystemRoots {
            detail: found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
        });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_args(crypto: CryptoMode) -> GatewayTlsArgs {
        GatewayTlsArgs {
            crypto,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }

    #[test]
    fn tls_without_a_certificate_says_how_to_get_one() {
        let e = gateway_args(CryptoMode::Tls)
            .crypto_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-cert") && e.contains("ferry-certs"), "{e}");
    }

    #[test]
    fn tls_flags_with_crypto_none_are_an_error() {
        let mut args = gateway_args(CryptoMode::None);
        assert!(matches!(args.crypto_config(), Ok(CryptoConfig::None)));
        args.tls_client_ca = Some("ca.pem".into());
        let e = args.crypto_config().unwrap_err().to_string();
        assert!(
            e.contains("--tls-client-ca") && e.contains("--crypto"),
            "{e}"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let mut args = gateway_args(CryptoMode::Tls);
        args.tls_cert = Some("/nonexistent/gateway.pem".into());
        args.tls_key = Some("/nonexistent/gateway.key".into());
        let e = args.crypto_config().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/gateway.pem"), "{e}");
    }
}
