//! Where to listen or connect: `tcp://HOST:PORT`, `udp://HOST:PORT` or `unix:/PATH`.
//!
//! The same syntax serves the agent's listeners and the gateway's backends, so an operator learns
//! it once. Errors are one line that names the offending text and says what was expected.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A socket address: a stream socket, or a UDP one (whose clients are carried as flows of
/// datagrams, see [`crate::agent`]'s UDP listeners).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `tcp://HOST:PORT`: HOST is an IP literal (`[::1]` for IPv6) or a name resolved at use.
    Tcp {
        /// Host name or IP literal, without brackets.
        host: String,
        /// Port.
        port: u16,
    },
    /// `unix:/PATH`: a Unix-domain stream socket.
    Unix(PathBuf),
    /// `udp://HOST:PORT`: HOST is an IP literal or a name resolved at use.
    Udp {
        /// Host name or IP literal, without brackets.
        host: String,
        /// Port.
        port: u16,
    },
}

/// Why an address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid address {input:?}: {reason} (expected tcp://HOST:PORT, udp://HOST:PORT or unix:/PATH)"
)]
pub struct AddressError {
    input: String,
    reason: &'static str,
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddressError {
            input: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            if !path.starts_with('/') {
                return Err(err("the socket path must be absolute"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let (udp, rest) = match (s.strip_prefix("tcp://"), s.strip_prefix("udp://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(err("unknown scheme")),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed '[' in IPv6 host"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| err("missing :PORT"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(err("bracketed host is not an IPv6 address"));
            }
            (host, port)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
            if host.contains(':') {
                return Err(err(
                    "IPv6 hosts must be written in brackets, e.g. tcp://[::1]:80",
                ));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(err("host contains a space or '/'"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| err("port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(err("port 0 is not a destination"));
        }
        let host = host.to_owned();
        Ok(if udp {
            Address::Udp { host, port }
        } else {
            Address::Tcp { host, port }
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Udp { host, port } if host.contains(':') => write!(f, "udp://[{host}]:{port}"),
            Address::Udp { host, port } => write!(f, "udp://{host}:{port}"),
        }
    }
}

impl Address {
    /// `HOST:PORT` for a TCP address (brackets around IPv6), for `TcpStream::connect`.
    pub fn tcp_target(&self) -> Option<String> {
        match self {
            Address::Tcp { host, port } if host.contains(':') => Some(format!("[{host}]:{port}")),
            Address::Tcp { host, port } => Some(format!("{host}:{port}")),
            Address::Unix(_) | Address::Udp { .. } => None,
        }
    }

    /// `HOST:PORT` for a UDP address (brackets around IPv6), for resolving and binding.
    pub fn udp_target(&self) -> Option<String> {
        match self {
            Address::Udp { host, port } if host.contains(':') => Some(format!("[{host}]:{port}")),
            Address::Udp { host, port } => Some(format!("{host}:{port}")),
            _ => None,
        }
    }

    /// True for `udp://` addresses: their clients are datagram flows, not streams.
    pub fn is_udp(&self) -> bool {
        matches!(self, Address::Udp { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_addresses_round_trip() {
        for s in [
            "tcp://127.0.0.1:6789",
            "tcp://[::1]:9000",
            "tcp://backend.internal:80",
            "unix:/run/app.sock",
            "udp://127.0.0.1:53",
            "udp://[::1]:51820",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "unix:///tmp/x".parse::<Address>().unwrap(),
            Address::Unix("/tmp/x".into())
        );
        assert_eq!(
            "tcp://[::1]:9000"
                .parse::<Address>()
                .unwrap()
                .tcp_target()
                .as_deref(),
            Some("[::1]:9000")
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong_in_one_line() {
        for (s, why) in [
            ("127.0.0.1:80", "unknown scheme"),
            ("tcp://127.0.0.1", "missing :PORT"),
            ("tcp://127.0.0.1:0", "port 0"),
            ("tcp://127.0.0.1:99999", "port is not a number"),
            ("tcp://::1:80", "brackets"),
            ("tcp://[::1:80", "unclosed"),
            ("unix:relative.sock", "absolute"),
            ("unix:", "empty socket path"),
            ("tcp://:80", "empty host"),
            ("udp://127.0.0.1", "missing :PORT"),
            ("sctp://127.0.0.1:80", "unknown scheme"),
        ] {
            let e = s.parse::<Address>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
            assert!(
                e.contains("expected tcp://HOST:PORT, udp://HOST:PORT or unix:/PATH")
                    && !e.contains('\n')
            );
        }
    }
}
