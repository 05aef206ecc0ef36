//! PROXY protocol headers (HAProxy's specification, versions 1 and 2), sent by the gateway at the
//! start of each backend connection so the backend sees the real client's address instead of
//! the gateway's.

use std::net::SocketAddr;

/// Which header to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    /// Text: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// Binary, with the 12-byte signature.
    V2,
}

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a connection from `client` to `destination` (the address the client reached,
/// here the agent's listener as far as the gateway knows: the backend-facing local address).
/// Without a known client (a Unix-socket client), v1 says `UNKNOWN` and v2 uses the LOCAL command.
pub fn header(version: Version, client: Option<SocketAddr>, destination: SocketAddr) -> Vec<u8> {
    // Both addresses must be of one family; map IPv4 into IPv6 when they differ.
    let pair = client.map(|c| match (c, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (c, destination)
        }
        (SocketAddr::V4(c4), d @ SocketAddr::V6(_)) => (
            SocketAddr::new(c4.ip().to_ipv6_mapped().into(), c4.port()),
            d,
        ),
        (c @ SocketAddr::V6(_), SocketAddr::V4(d4)) => (
            c,
            SocketAddr::new(d4.ip().to_ipv6_mapped().into(), d4.port()),
        ),
    });
    match version {
        Version::V1 => match pair {
            None => b"PROXY UNKNOWN\r\n".to_vec(),
            Some((c, d)) => {
                let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    c.ip(),
                    d.ip(),
                    c.port(),
                    d.port()
                )
                .into_bytes()
            }
        },
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            match pair {
                None => {
                    out.push(0x20); // version 2, LOCAL
                    out.push(0x00); // UNSPEC
                    out.extend_from_slice(&0u16.to_be_bytes());
                }
                Some((c, d)) => {
                    out.push(0x21); // version 2, PROXY
                    let mut body = Vec::with_capacity(36);
                    match (c, d) {
                        (SocketAddr::V4(c), SocketAddr::V4(d)) => {
                            out.push(0x11); // TCP over IPv4
                            body.extend_from_slice(&c.ip().octets());
                            body.extend_from_slice(&d.ip().octets());
                        }
                        (c, d) => {
                            out.push(0x21); // TCP over IPv6
                            let v6 = |a: SocketAddr| match a {
                                SocketAddr::V6(a) => a.ip().octets(),
                                SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
                            };
                            body.extend_from_slice(&v6(c));
                            body.extend_from_slice(&v6(d));
                        }
                    }
                    body.extend_from_slice(&c.port().to_be_bytes());
                    body.extend_from_slice(&d.port().to_be_bytes());
                    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
                    out.extend_from_slice(&body);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        assert_eq!(
            header(Version::V1, Some(a("192.0.2.7:40000")), a("10.0.0.1:80")),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 80\r\n"
        );
        assert_eq!(
            header(Version::V1, Some(a("[2001:db8::1]:5")), a("[::1]:80")),
            b"PROXY TCP6 2001:db8::1 ::1 5 80\r\n"
        );
        assert_eq!(
            header(Version::V1, None, a("10.0.0.1:80")),
            b"PROXY UNKNOWN\r\n"
        );
        // Mixed families are expressed in IPv6.
        assert_eq!(
            header(Version::V1, Some(a("192.0.2.7:1")), a("[::1]:80")),
            b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 80\r\n"
        );
    }

    #[test]
    fn v2_header_layout() {
        let h = header(Version::V2, Some(a("192.0.2.7:40000")), a("10.0.0.1:80"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[20..24], &[10, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 80);
        let v6 = header(Version::V2, Some(a("[2001:db8::1]:5")), a("[::1]:80"));
        assert_eq!(
            (v6[13], u16::from_be_bytes([v6[14], v6[15]]), v6.len()),
            (0x21, 36, 52)
        );
        let local = header(Version::V2, None, a("10.0.0.1:80"));
        assert_eq!(&local[12..], &[0x20, 0x00, 0, 0]);
    }
}
