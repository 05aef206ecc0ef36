//! Packet headers: the bytes before the frames of every datagram.
//!
//! One datagram carries one packet. Two header forms exist:
//!
//! ```text
//! long (handshake)  | 1 1 . . . . T T | version u32 | dcid 8 | scid 8 | [token] | [pn u32] | frames
//! short (data)      | 0 1 0 0 0 0 0 0 | dcid 8 | pn u32 | frames
//! ```
//!
//! The top bit picks the form, the next ("fixed") bit is always set so that stray traffic is
//! rejected on its first byte. Long headers carry the protocol version, so the format can evolve:
//! a server that does not speak the client's version answers with a version-negotiation packet
//! (version field 0) listing the versions it does speak. `T` is the long packet type:
//! Initial (0) carries the client's HELLO and an address-validation token (empty at first),
//! Handshake (1) carries the server's HELLO or a refusal, Retry (2) carries a token for the
//! client to echo. Packet numbers are sent as their low 32 bits and expanded against the largest
//! number received so far (RFC 9000 appendix A.3, with a 32-bit window).

use bytes::BufMut;

use crate::wire::coding::{BufMutExt, DecodeError, Reader};
use crate::wire::ids::ConnectionId;

/// The protocol version this build speaks: "FE" for Ferry, then the revision.
pub const VERSION: u32 = 0xFE00_0001;

/// Versions this build can speak, preferred first.
pub const SUPPORTED_VERSIONS: &[u32] = &[VERSION];

/// Smallest datagram that may carry an Initial packet. Clients pad Initials to at least this size
/// so that, with the 3x amplification limit, the server's first answer always fits.
pub const MIN_INITIAL_SIZE: usize = 1200;

/// Longest address-validation token accepted.
pub const MAX_TOKEN_LEN: usize = 256;

const LONG_BIT: u8 = 0x80;
const FIXED_BIT: u8 = 0x40;
const TYPE_MASK: u8 = 0x03;

/// Long-header packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongType {
    /// Client's first flight: HELLO and an address-validation token.
    Initial = 0,
    /// Server's answer: HELLO (accept) or CLOSE (refuse); also later handshake retransmissions.
    Handshake = 1,
    /// Stateless answer asking the client to prove its address by echoing a token.
    Retry = 2,
}

/// A parsed packet header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header<'a> {
    /// Client handshake packet.
    Initial {
        /// Version the client speaks.
        version: u32,
        /// Random ID chosen by the client for the server (until the server picks its own).
        dcid: ConnectionId,
        /// Client's own connection ID.
        scid: ConnectionId,
        /// Token from a Retry, or empty.
        token: &'a [u8],
        /// Truncated packet number.
        pn: u32,
    },
    /// Server handshake packet.
    Handshake {
        /// Version the server speaks.
        version: u32,
        /// Client's connection ID.
        dcid: ConnectionId,
        /// Server's connection ID, to be used by the client from now on.
        scid: ConnectionId,
        /// Truncated packet number.
        pn: u32,
    },
    /// Stateless address-validation request.
    Retry {
        /// Version.
        version: u32,
        /// Client's connection ID.
        dcid: ConnectionId,
        /// Echo of the client's chosen initial destination ID.
        scid: ConnectionId,
        /// Token the client must echo in its next Initial.
        token: &'a [u8],
    },
    /// The server does not speak the client's version.
    VersionNegotiation {
        /// Client's connection ID.
        dcid: ConnectionId,
        /// Echo of the client's initial destination ID.
        scid: ConnectionId,
        /// Big-endian u32 versions the server supports.
        versions: &'a [u8],
    },
    /// Data packet of an established connection.
    Short {
        /// Receiver's connection ID.
        dcid: ConnectionId,
        /// Truncated packet number.
        pn: u32,
    },
}

impl Header<'_> {
    /// Destination connection ID.
    pub fn dcid(&self) -> ConnectionId {
        match self {
            Header::Initial { dcid, .. }
            | Header::Handshake { dcid, .. }
            | Header::Retry { dcid, .. }
            | Header::VersionNegotiation { dcid, .. }
            | Header::Short { dcid, .. } => *dcid,
        }
    }

    /// Truncated packet number, for packets that carry frames.
    pub fn pn(&self) -> Option<u32> {
        match self {
            Header::Initial { pn, .. }
            | Header::Handshake { pn, .. }
            | Header::Short { pn, .. } => Some(*pn),
            _ => None,
        }
    }
}

/// A datagram split into its header and frame payload.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    /// The header.
    pub header: Header<'a>,
    /// The header's bytes as received (authenticated data for encryption).
    pub header_bytes: &'a [u8],
    /// Frame bytes (for Retry and VersionNegotiation, empty).
    pub payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Parses a datagram. Errors mean the datagram is to be dropped and counted.
    pub fn decode(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(datagram);
        let first = r.u8()?;
        if first & FIXED_BIT == 0 {
            return Err(DecodeError::Invalid("fixed bit clear"));
        }
        let header = if first & LONG_BIT == 0 {
            if first & !(LONG_BIT | FIXED_BIT) != 0 {
                return Err(DecodeError::Invalid("reserved header bits set"));
            }
            Header::Short {
                dcid: ConnectionId(r.array()?),
                pn: r.u32()?,
            }
        } else {
            let version = r.u32()?;
            let dcid = ConnectionId(r.array()?);
            let scid = ConnectionId(r.array()?);
            if version == 0 {
                let versions = r.bytes(r.remaining())?;
                if versions.is_empty() || versions.len() % 4 != 0 {
                    return Err(DecodeError::Invalid("version list"));
                }
                Header::VersionNegotiation {
                    dcid,
                    scid,
                    versions,
                }
            } else {
                match first & TYPE_MASK {
                    0 => {
                        let token = r.length_prefixed()?;
                        if token.len() > MAX_TOKEN_LEN {
                            return Err(DecodeError::Invalid("token too long"));
                        }
                        Header::Initial {
                            version,
                            dcid,
                            scid,
                            token,
                            pn: r.u32()?,
                        }
                    }
                    1 => Header::Handshake {
                        version,
                        dcid,
                        scid,
                        pn: r.u32()?,
                    },
                    2 => {
                        let token = r.length_prefixed()?;
                        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
                            return Err(DecodeError::Invalid("retry token length"));
                        }
                        Header::Retry {
                            version,
                            dcid,
                            scid,
                            token,
                        }
                    }
                    _ => return Err(DecodeError::Invalid("long packet type")),
                }
            }
        };
        let header_len = datagram.len() - r.remaining();
        Ok(Packet {
            header,
            header_bytes: &datagram[..header_len],
            payload: r.rest(),
        })
    }
}

/// Appends a header. Returns its length.
pub fn encode_header(header: &Header<'_>, out: &mut impl BufMut) -> usize {
    let mut len = 0;
    let mut put_long =
        |out: &mut dyn BufMut, ty: u8, version: u32, dcid: &ConnectionId, scid: &ConnectionId| {
            out.put_u8(LONG_BIT | FIXED_BIT | ty);
            out.put_u32(version);
            out.put_slice(&dcid.0);
            out.put_slice(&scid.0);
            len += 1 + 4 + 2 * ConnectionId::LEN;
        };
    match header {
        Header::Initial {
            version,
            dcid,
            scid,
            token,
            pn,
        } => {
            put_long(out, LongType::Initial as u8, *version, dcid, scid);
            out.put_length_prefixed(token);
            out.put_u32(*pn);
            len += crate::wire::coding::varint_len(token.len() as u64) + token.len() + 4;
        }
        Header::Handshake {
            version,
            dcid,
            scid,
            pn,
        } => {
            put_long(out, LongType::Handshake as u8, *version, dcid, scid);
            out.put_u32(*pn);
            len += 4;
        }
        Header::Retry {
            version,
            dcid,
            scid,
            token,
        } => {
            put_long(out, LongType::Retry as u8, *version, dcid, scid);
            out.put_length_prefixed(token);
            len += crate::wire::coding::varint_len(token.len() as u64) + token.len();
        }
        Header::VersionNegotiation {
            dcid,
            scid,
            versions,
        } => {
            put_long(out, 0, 0, dcid, scid);
            out.put_slice(versions);
            len += versions.len();
        }
        Header::Short { dcid, pn } => {
            out.put_u8(FIXED_BIT);
            out.put_slice(&dcid.0);
            out.put_u32(*pn);
            len = 1 + ConnectionId::LEN + 4;
        }
    }
    len
}

/// Length of a short header.
pub const SHORT_HEADER_LEN: usize = 1 + ConnectionId::LEN + 4;

/// Length of a Handshake long header.
pub const HANDSHAKE_HEADER_LEN: usize = 1 + 4 + 2 * ConnectionId::LEN + 4;

/// Expands a 32-bit truncated packet number to the full number nearest to `expected`
/// (the largest number received so far plus one).
pub fn decode_packet_number(truncated: u32, expected: u64) -> u64 {
    const WIN: u64 = 1 << 32;
    const HALF: u64 = WIN / 2;
    let candidate = (expected & !(WIN - 1)) | u64::from(truncated);
    if candidate + HALF <= expected && candidate < (1 << 62) - WIN {
        candidate + WIN
    } else if candidate > expected + HALF && candidate >= WIN {
        candidate - WIN
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(b: u8) -> ConnectionId {
        ConnectionId([b; 8])
    }

    fn round_trip(header: Header<'_>) {
        let mut buf = Vec::new();
        let len = encode_header(&header, &mut buf);
        assert_eq!(len, buf.len());
        buf.extend_from_slice(b"\x01");
        let p = Packet::decode(&buf).expect("decodes");
        assert_eq!(p.header, header);
        assert_eq!(p.header_bytes.len(), len);
    }

    #[test]
    fn every_header_round_trips() {
        round_trip(Header::Initial {
            version: VERSION,
            dcid: cid(1),
            scid: cid(2),
            token: b"tok",
            pn: 7,
        });
        round_trip(Header::Handshake {
            version: VERSION,
            dcid: cid(1),
            scid: cid(2),
            pn: 9,
        });
        round_trip(Header::Short {
            dcid: cid(3),
            pn: u32::MAX,
        });
    }

    #[test]
    fn packet_numbers_expand_across_the_32_bit_wrap() {
        assert_eq!(decode_packet_number(5, 0), 5);
        assert_eq!(decode_packet_number(0xffff_fff0, 1 << 32), 0xffff_fff0);
        assert_eq!(decode_packet_number(3, (1 << 32) - 10), (1 << 32) + 3);
        assert_eq!(decode_packet_number(100, (5 << 32) + 90), (5 << 32) + 100);
    }

    #[test]
    fn junk_is_rejected_on_the_first_byte() {
        assert!(Packet::decode(&[0x00, 1, 2, 3]).is_err());
        assert!(Packet::decode(&[]).is_err());
        assert!(Packet::decode(&[0x41]).is_err());
    }
}
