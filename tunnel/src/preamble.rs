//! The preamble that opens every tunnelled stream: which service it is for, which client it
//! carries and which agent address that client connected to (so the gateway can name both to
//! the backend, e.g. with PROXY protocol).
//!
//! ```text
//! version u8 (2) | service length u8 | service (ASCII) | client address | destination address
//! version u8 (3) | the same                                               | protection u8
//! address: family u8 (0 none, 4, 6) | ip (4 or 16 bytes) | port u16   (family 0: nothing more)
//! protection: 0 none, 1 duplicate, 2 adaptive
//! ```
//!
//! Version 3 opens a UDP flow rather than a byte stream: the stream then carries no payload,
//! it stands for the flow (its id is the flow id of the flow's datagrams, its end is the
//! flow's end), and `protection` is how the gateway protects the flow's replies. A gateway that
//! predates UDP flows refuses them as an unknown preamble version.
//!
//! An empty service means the gateway's default service. The decoder reads exactly the bytes of
//! the preamble (never a byte of the payload behind it) and bounds everything it reads.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ferry_transport::datagrams::Protection;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Preamble format version of byte streams.
pub const VERSION: u8 = 2;
/// Preamble format version of UDP flows.
pub const VERSION_UDP_FLOW: u8 = 3;
/// Longest service name.
pub const MAX_SERVICE_LEN: usize = 64;

/// What a stream is for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Preamble {
    /// Named service; empty for the default one.
    pub service: String,
    /// The client's address as the agent saw it (none for Unix-socket clients).
    pub client: Option<SocketAddr>,
    /// The agent's address the client connected to (none for Unix-socket clients).
    pub destination: Option<SocketAddr>,
    /// Set when the stream stands for a UDP flow: how its datagrams are protected.
    pub udp_flow: Option<Protection>,
}

fn encode_address(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        None => out.push(0),
        Some(SocketAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
    }
}

async fn read_address<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<SocketAddr>> {
    Ok(match r.read_u8().await? {
        0 => None,
        4 => {
            let mut ip = [0u8; 4];
            r.read_exact(&mut ip).await?;
            let port = r.read_u16().await?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        6 => {
            let mut ip = [0u8; 16];
            r.read_exact(&mut ip).await?;
            let port = r.read_u16().await?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        f => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad stream preamble: address family {f}"),
            ))
        }
    })
}

/// True for names made of letters, digits, '.', '_' and '-', at most [`MAX_SERVICE_LEN`] long.
pub fn is_valid_service_name(name: &str) -> bool {
    name.len() <= MAX_SERVICE_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Preamble {
    /// Encodes the preamble. The service name must be valid (checked when configured).
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(is_valid_service_name(&self.service));
        let service = &self.service.as_bytes()[..self.service.len().min(MAX_SERVICE_LEN)];
        let mut out = Vec::with_capacity(2 + service.len() + 2 * 19);
        out.push(match self.udp_flow {
            None => VERSION,
            Some(_) => VERSION_UDP_FLOW,
        });
        out.push(service.len() as u8);
        out.extend_from_slice(service);
        encode_address(&mut out, self.client);
        encode_address(&mut out, self.destination);
        if let Some(protection) = self.udp_flow {
            out.push(match protection {
                Protection::None => 0,
                Protection::Duplicate => 1,
                Protection::Adaptive => 2,
                Protection::Fec => 3,
            });
        }
        out
    }

    /// Reads one preamble from the start of a stream.
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Self> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad stream preamble: {what}"),
            )
        };
        let mut head = [0u8; 2];
        r.read_exact(&mut head).await?;
        if head[0] != VERSION && head[0] != VERSION_UDP_FLOW {
            return Err(bad(&format!(
                "version {} (this build speaks {VERSION} and {VERSION_UDP_FLOW})",
                head[0]
            )));
        }
        let len = usize::from(head[1]);
        if len > MAX_SERVICE_LEN {
            return Err(bad("service name too long"));
        }
        let mut name = vec![0u8; len];
        r.read_exact(&mut name).await?;
        let service = String::from_utf8(name).map_err(|_| bad("service name is not text"))?;
        if !is_valid_service_name(&service) {
            return Err(bad(
                "service name has characters other than letters, digits, '.', '_', '-'",
            ));
        }
        let client = read_address(r).await?;
        let destination = read_address(r).await?;
        let udp_flow = if head[0] == VERSION_UDP_FLOW {
            Some(match r.read_u8().await? {
                0 => Protection::None,
                1 => Protection::Duplicate,
                2 => Protection::Adaptive,
                3 => Protection::Fec,
                other => return Err(bad(&format!("UDP flow protection {other}"))),
            })
        } else {
            None
        };
        Ok(Preamble {
            service,
            client,
            destination,
            udp_flow,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode(bytes: &[u8]) -> io::Result<(Preamble, Vec<u8>)> {
        let mut r = bytes;
        let p = Preamble::read_from(&mut r).await?;
        Ok((p, r.to_vec()))
    }

    #[tokio::test]
    async fn round_trips_and_leaves_the_payload_untouched() {
        for p in [
            Preamble::default(),
            Preamble {
                service: "web".into(),
                client: Some("192.0.2.7:40000".parse().unwrap()),
                destination: Some("127.0.0.1:6789".parse().unwrap()),
                udp_flow: None,
            },
            Preamble {
                service: "dns".into(),
                client: Some("192.0.2.7:5353".parse().unwrap()),
                destination: Some("127.0.0.1:53".parse().unwrap()),
                udp_flow: Some(Protection::Adaptive),
            },
            Preamble {
                service: "voice".into(),
                client: Some("192.0.2.8:5004".parse().unwrap()),
                destination: None,
                udp_flow: Some(Protection::Fec),
            },
            Preamble {
                service: "db-main_2.x".into(),
                client: Some("[2001:db8::1]:443".parse().unwrap()),
                destination: None,
                udp_flow: None,
            },
        ] {
            let mut bytes = p.encode();
            bytes.extend_from_slice(b"GET / HTTP/1.1");
            let (decoded, rest) = decode(&bytes).await.unwrap();
            assert_eq!(decoded, p);
            assert_eq!(rest, b"GET / HTTP/1.1");
        }
    }

    #[tokio::test]
    async fn malformed_preambles_are_errors_not_panics() {
        for bytes in [
            &[1u8, 0, 0, 0][..],
            &[2, 65],
            &[2, 3, b'a', b' ', b'b', 0, 0],
            &[2, 0, 9],
            &[2, 0, 4, 1, 2],
            &[2, 0, 0, 5],
            &[2, 0, 0],
            &[2],
            &[3, 0, 0, 0],
            &[3, 0, 0, 0, 7],
            &[4, 0, 0, 0],
        ] {
            assert!(decode(bytes).await.is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn service_names_are_restricted() {
        assert!(is_valid_service_name("web") && is_valid_service_name(""));
        assert!(!is_valid_service_name("a b") && !is_valid_service_name(&"x".repeat(65)));
    }
}
