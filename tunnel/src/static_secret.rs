//! Where a gateway's static secret comes from: the secret from which the keys of stateless
//! resets and address tokens derive ([`ferry_transport::ServerConfig::static_secret`]).
//!
//! It must survive a restart (so the restarted gateway can reset the sessions its previous
//! life left behind, and accept the address tokens it gave out) and be the same on every
//! gateway of a fleet behind one load balancer. Both hold without any new file when TLS is on:
//! the secret is the gateway's TLS private key, which a restart reads again and a fleet
//! shares (the protocol runs it through HKDF, so the key itself is never used for anything
//! else). Without TLS it comes from a key file: `--reset-key-file`, or a default in the
//! state directory, created with 32 random bytes (hex, mode 0600) on first start. Copy that
//! file to every gateway of a fleet.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_transport::rustls::pki_types::pem::PemObject;
use ferry_transport::rustls::pki_types::PrivateKeyDer;
use ferry_transport::StaticSecret;

/// Bytes of secret in a key file.
const KEY_FILE_BYTES: usize = 32;

/// The secret and a description of where it came from, for the start-up log.
pub struct Loaded {
    /// The secret.
    pub secret: StaticSecret,
    /// Where it came from ("TLS key FILE", "key file FILE (created)").
    pub source: String,
}

/// The default key file when none is given: `$STATE_DIRECTORY/reset-key` (systemd's
/// `StateDirectory=`), else `$XDG_STATE_HOME/ferry/gateway-reset-key`, else
/// `~/.local/state/ferry/gateway-reset-key`.
pub fn default_key_file() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("STATE_DIRECTORY") {
        // systemd may list several directories, separated by ':'.
        let first = dir.to_string_lossy().split(':').next()?.to_owned();
        return Some(PathBuf::from(first).join("reset-key"));
    }
    let base = var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("ferry").join("gateway-reset-key"))
}

/// Why the gateway's secret could not be had: one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StaticSecretError {
    /// The TLS private key could not be read.
    #[error("{}: cannot read the private key: {source}", .path.display())]
    TlsKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: ferry_transport::rustls::pki_types::pem::Error,
    },
    /// Neither a key file nor a place to make one.
    #[error(
        "no place for the reset key file: set HOME or STATE_DIRECTORY, or give --reset-key-file"
    )]
    NoPlace,
    /// A key file that does not hold the key.
    #[error(
        "{}: a reset key file holds {} hexadecimal digits (it is made on first start if absent)",
        .0.display(),
        2 * KEY_FILE_BYTES
    )]
    Malformed(PathBuf),
    /// The key file could not be read.
    #[error("cannot read the reset key file {}: {source}", .path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file could not be made.
    #[error("cannot create the reset key file {}: {source}", .path.display())]
    Create {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file just made could not be read back.
    #[error("cannot read {}: {source}", .path.display())]
    ReadBack {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The gateway's secret: from `key_file` if given; else from the TLS private key `tls_key`
/// if TLS is on; else from the default key file.
pub fn load(key_file: Option<&Path>, tls_key: Option<&Path>) -> Result<Loaded, StaticSecretError> {
    if let Some(path) = key_file {
        return from_key_file(path);
    }
    if let Some(path) = tls_key {
        let key =
            PrivateKeyDer::from_pem_file(path).map_err(|source| StaticSecretError::TlsKey {
                path: path.to_owned(),
                source,
            })?;
        return Ok(Loaded {
            secret: StaticSecret(key.secret_der().to_vec()),
            source: format!("TLS key {}", path.display()),
        });
    }
    let path = default_key_file().ok_or(StaticSecretError::NoPlace)?;
    from_key_file(&path)
}

/// Reads a key file, or creates it (and its directory) with a fresh random secret.
pub fn from_key_file(path: &Path) -> Result<Loaded, StaticSecretError> {
    let malformed = || StaticSecretError::Malformed(path.to_owned());
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Loaded {
            secret: StaticSecret(parse(&text).ok_or_else(malformed)?),
            source: format!("key file {}", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create(path).map_err(|source| StaticSecretError::Create {
                path: path.to_owned(),
                source,
            })?;
            // Read back what is there now: a gateway started at the same moment may have won.
            let text =
                std::fs::read_to_string(path).map_err(|source| StaticSecretError::ReadBack {
                    path: path.to_owned(),
                    source,
                })?;
            Ok(Loaded {
                secret: StaticSecret(parse(&text).ok_or_else(malformed)?),
                source: format!("key file {} (created)", path.display()),
            })
        }
        Err(source) => Err(StaticSecretError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The key in a key file's text; `None` unless it is exactly the hexadecimal digits of one.
fn parse(text: &str) -> Option<Vec<u8>> {
    let hex = text.trim();
    if hex.len() != 2 * KEY_FILE_BYTES || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..KEY_FILE_BYTES)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Writes a new random key to a temporary file beside `path` and links it into place, so
/// that nobody ever reads a half-written key and an existing key is never replaced.
fn create(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut secret = [0u8; KEY_FILE_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| std::io::Error::other("the operating system's random generator failed"))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(format!("{hex}\n").as_bytes())?;
        file.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_private_and_read_back_the_same() {
        let dir = std::env::temp_dir().join(format!("ferry-reset-key-{}", std::process::id()));
        let path = dir.join("sub").join("reset-key");
        let first = from_key_file(&path).unwrap();
        assert!(first.source.contains("created"), "{}", first.source);
        let second = from_key_file(&path).unwrap();
        assert_eq!(first.secret, second.secret);
        assert_eq!(second.secret.0.len(), KEY_FILE_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not hex\n").unwrap();
        let err = from_key_file(&path).err().unwrap().to_string();
        assert!(err.contains("hexadecimal"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
