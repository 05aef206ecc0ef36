//! Development certificates for Ferry: one CA, a gateway (server) certificate for the names and
//! addresses agents will dial, and agent (client) certificates for mutual TLS, all issued by
//! that CA and written as PEM files.
//!
//! Why it exists: TLS is on by default, so trying Ferry (the quick start, the tests, a first
//! deployment on a private network) needs certificates, and `openssl` incantations are where
//! people give up. Production deployments may use any PEM chain and key instead (see the
//! README); nothing in Ferry depends on certificates coming from here.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// What to make.
#[derive(Debug, Clone)]
pub struct Options {
    /// DNS names and IP addresses the gateway certificate is valid for.
    pub names: Vec<String>,
    /// Agent certificates to make (at least one).
    pub agents: usize,
    /// Days the leaf certificates are valid from now (the CA: ten years).
    pub days: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            agents: 1,
            days: 825,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

/// A CA and what it issued.
#[derive(Debug, Clone)]
pub struct DevSet {
    /// The CA: agents trust it (`--tls-ca`), gateways requiring client certificates too
    /// (`--tls-client-ca`). Its key issues more certificates later.
    pub ca: Pem,
    /// The gateway's certificate (`--tls-cert`, `--tls-key`).
    pub gateway: Pem,
    /// Agent certificates (`--tls-cert`, `--tls-key` on agents, for mutual TLS).
    pub agents: Vec<Pem>,
}

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The certificate library refused (a malformed name...).
    #[error("cannot make certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A bad option.
    #[error("{0}")]
    Invalid(String),
    /// A file exists and `force` was not given.
    #[error("{0}: already exists (use --force to overwrite)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    // Back-date a little, so a peer whose clock is slightly behind accepts it.
    params.not_before = now - std::time::Duration::from_secs(3600);
    params.not_after = now + std::time::Duration::from_secs(days.max(1) as u64 * 86_400);
}

fn leaf(
    issuer: &CertifiedIssuer<'_, KeyPair>,
    common_name: &str,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    days: u32,
) -> Result<Pem, CertError> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    validity(&mut params, i64::from(days));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Makes a fresh CA, a gateway certificate and `options.agents` agent certificates.
pub fn generate(options: &Options) -> Result<DevSet, CertError> {
    if options.names.is_empty() {
        return Err(CertError::Invalid(
            "the gateway certificate needs at least one --name".into(),
        ));
    }
    if options.agents == 0 {
        return Err(CertError::Invalid("--agents must be at least 1".into()));
    }
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A name unique to this CA, so two development CAs are never mistaken for each other.
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("Ferry development CA {serial:x}"),
    );
    validity(&mut ca, 3650);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;
    let gateway = leaf(
        &issuer,
        &options.names[0],
        options.names.clone(),
        ExtendedKeyUsagePurpose::ServerAuth,
        options.days,
    )?;
    let agents = (1..=options.agents)
        .map(|i| {
            let name = format!("ferry-agent-{i}");
            leaf(
                &issuer,
                &name,
                vec![name.clone()],
                ExtendedKeyUsagePurpose::ClientAuth,
                options.days,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DevSet {
        ca: Pem {
            cert: issuer.pem(),
            key: ca_key_pem,
        },
        gateway,
        agents,
    })
}

/// File names of a development set in its directory, in writing order: `ca.pem`, `ca.key`,
/// `gateway.pem`, `gateway.key`, `agent.pem`, `agent.key`, then `agent-2.pem`... for more agents.
pub fn file_names(agents: usize) -> Vec<String> {
    let mut names: Vec<String> = ["ca.pem", "ca.key", "gateway.pem", "gateway.key"]
        .map(String::from)
        .to_vec();
    for i in 1..=agents.max(1) {
        let stem = if i == 1 {
            "agent".to_owned()
        } else {
            format!("agent-{i}")
        };
        names.push(format!("{stem}.pem"));
        names.push(format!("{stem}.key"));
    }
    names
}

impl DevSet {
    /// Writes the set into `dir` (created if needed) under [`file_names`]; private keys are
    /// readable by their owner only. Refuses to overwrite any file unless `force`, checking all
    /// of them before writing one. Returns the paths written.
    pub fn write(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertError> {
        let mut contents = vec![
            &self.ca.cert,
            &self.ca.key,
            &self.gateway.cert,
            &self.gateway.key,
        ];
        for a in &self.agents {
            contents.push(&a.cert);
            contents.push(&a.key);
        }
        let paths: Vec<PathBuf> = file_names(self.agents.len())
            .iter()
            .map(|n| dir.join(n))
            .collect();
        if !force {
            if let Some(p) = paths.iter().find(|p| p.exists()) {
                return Err(CertError::Exists(p.clone()));
            }
        }
        fs::create_dir_all(dir).map_err(|error| CertError::Io {
            path: dir.to_owned(),
            error,
        })?;
        for (path, text) in paths.iter().zip(contents) {
            let secret = path.extension().is_some_and(|e| e == "key");
            write_file(path, text, secret).map_err(|error| CertError::Io {
                path: path.clone(),
                error,
            })?;
        }
        Ok(paths)
    }
}

fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    if secret {
        // An existing file (with --force) keeps its old mode through open(): set it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes())
}
