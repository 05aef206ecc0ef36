//! The PROXY protocol header the gateway writes to a backend: its inputs (the client's address
//! from the stream preamble, which the agent side chose, and the destination) may be any
//! addresses of either family, with any port, flow label or scope. Whatever they are, the header
//! must be one a backend parses as HAProxy's specification says, and must name those very
//! addresses. The checks here parse it independently, from the specification:
//!
//! - v1: `PROXY TCP4|TCP6 src dst sport dport\r\n` in ASCII, at most 107 bytes, addresses in
//!   the announced family, ports in decimal without leading zeros; `PROXY UNKNOWN\r\n` without a
//!   client.
//! - v2: the 12-byte signature, version 2 with the PROXY command (LOCAL without a client), TCP
//!   over IPv4 (12 address bytes) or IPv6 (36), a length that covers exactly the rest.
//!
//! Mixed families are written in IPv6, the IPv4 side mapped (`::ffff:a.b.c.d`).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use ferry_tunnel::proxy_protocol::{header, Version};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn address(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    Ok(if u.arbitrary()? {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?)), u.arbitrary()?)
    } else {
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(u.arbitrary::<u128>()?),
            u.arbitrary()?,
            u.arbitrary()?,
            u.arbitrary()?,
        ))
    })
}

/// The pair as the header must carry it: one family, IPv4 mapped into IPv6 when they differ.
fn expected(client: SocketAddr, destination: SocketAddr) -> (bool, IpAddr, IpAddr, u16, u16) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        ip => ip,
    };
    let (c, d) = if client.is_ipv4() && destination.is_ipv4() {
        (client.ip(), destination.ip())
    } else {
        (v6(client), v6(destination))
    };
    (c.is_ipv4(), c, d, client.port(), destination.port())
}

fn port(field: &str) -> u16 {
    assert!(
        field == "0" || (!field.starts_with('0') && field.bytes().all(|b| b.is_ascii_digit())),
        "port {field:?}"
    );
    field.parse().expect("a port below 65536")
}

fn check_v1(h: &[u8], client: Option<SocketAddr>, destination: SocketAddr) {
    assert!(h.len() <= 107, "{} bytes", h.len());
    let text = std::str::from_utf8(h).expect("ASCII");
    assert!(text.is_ascii());
    let line = text.strip_suffix("\r\n").expect("ends with CRLF");
    assert!(!line.contains(['\r', '\n']));
    let Some(client) = client else {
        assert_eq!(line, "PROXY UNKNOWN");
        return;
    };
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 6, "{line:?}");
    assert_eq!(fields[0], "PROXY");
    let (v4, c, d, cp, dp) = expected(client, destination);
    let ip = |s: &str| -> IpAddr {
        if v4 {
            IpAddr::V4(s.parse().expect("an IPv4 address"))
        } else {
            IpAddr::V6(s.parse().expect("an IPv6 address"))
        }
    };
    assert_eq!(fields[1], if v4 { "TCP4" } else { "TCP6" });
    assert_eq!((ip(fields[2]), ip(fields[3])), (c, d));
    assert_eq!((port(fields[4]), port(fields[5])), (cp, dp));
}

fn check_v2(h: &[u8], client: Option<SocketAddr>, destination: SocketAddr) {
    assert!(h.len() >= 16);
    assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
    let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
    assert_eq!(len, h.len() - 16, "the length covers the rest exactly");
    let body = &h[16..];
    let Some(client) = client else {
        assert_eq!((h[12], h[13], len), (0x20, 0x00, 0));
        return;
    };
    assert_eq!(h[12], 0x21, "version 2, PROXY");
    let (v4, c, d, cp, dp) = expected(client, destination);
    let n = if v4 { 4 } else { 16 };
    assert_eq!(h[13], if v4 { 0x11 } else { 0x21 });
    assert_eq!(len, 2 * n + 4);
    let ip = |b: &[u8]| -> IpAddr {
        if v4 {
            IpAddr::V4(<[u8; 4]>::try_from(b).expect("4 bytes").into())
        } else {
            IpAddr::V6(<[u8; 16]>::try_from(b).expect("16 bytes").into())
        }
    };
    assert_eq!((ip(&body[..n]), ip(&body[n..2 * n])), (c, d));
    let port = |i: usize| u16::from_be_bytes([body[2 * n + i], body[2 * n + i + 1]]);
    assert_eq!((port(0), port(2)), (cp, dp));
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let client = if u.arbitrary()? { Some(address(u)?) } else { None };
    let destination = address(u)?;
    check_v1(&header(Version::V1, client, destination), client, destination);
    check_v2(&header(Version::V2, client, destination), client, destination);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
