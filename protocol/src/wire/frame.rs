//! Frames: the typed records carried inside a packet's payload, and their encoding.
//!
//! A packet holds one or more frames back to back. Decoding borrows stream data straight out of
//! the datagram ([`Frame::Stream`] holds a slice), so receiving costs one copy, into the stream's
//! reassembly buffer. Frames are what gets retransmitted: when a packet is lost its frames are
//! rebuilt into new packets with new packet numbers, never resent as the old bytes.
//!
//! Type codes (one varint each):
//!
//! | code        | frame            | body                                                    |
//! |-------------|------------------|---------------------------------------------------------|
//! | 0x00        | PADDING          | none (runs of zero bytes)                               |
//! | 0x01        | PING             | none; elicits an ACK                                    |
//! | 0x02        | ACK              | largest, ack delay (us), extra range count, first range, (gap, len)* |
//! | 0x04        | RESET            | stream id, error code, final size                       |
//! | 0x08..=0x0f | STREAM           | id, [offset if 0x04], [length if 0x02], data; FIN = 0x01 |
//! | 0x10        | MAX_DATA         | connection-wide byte limit                              |
//! | 0x11        | MAX_STREAM_DATA  | stream id, byte limit                                   |
//! | 0x12        | MAX_STREAMS      | how many streams the peer may open in total             |
//! | 0x1a        | PATH_CHALLENGE   | 8 random bytes                                          |
//! | 0x1b        | PATH_RESPONSE    | the 8 bytes of the challenge                            |
//! | 0x1c        | CLOSE            | error code, reason (length-prefixed UTF-8)              |
//! | 0x30        | HELLO            | handshake settings (length-prefixed, see `settings`)    |
//! | 0x31        | CRYPTO           | offset, TLS handshake bytes (length-prefixed)           |
//! | 0x32        | RESET_TOKEN      | 16 bytes: the client's stateless reset token            |
//! | 0x33        | NEW_TOKEN        | address token for the client's next connection (length-prefixed) |
//! | 0x34        | DATAGRAM         | flow, sequence, data (length-prefixed); never retransmitted |
//! | 0x35        | DATAGRAM_FRAGMENT | flow, sequence, index (u8), count (u8), data (length-prefixed) |
//! | 0x36        | FEC_SOURCE       | none; the packet is a source that repair packets cover  |
//! | 0x37        | (retired)        | an earlier version's block-code repair; never sent, malformed if received |
//! | 0x38        | LOSS_REPORT      | the peer's packets lost on the way here lately, per mille; their mean run length, tenths |
//! | 0x39        | FEC_REPAIR       | first packet number, members (bitmap), repair id, symbol (length-prefixed) |

use std::ops::Range;

use bytes::BufMut;

use crate::wire::coding::{varint_len, BufMutExt, DecodeError, Reader};
use crate::wire::ids::StreamId;

/// Frame type codes.
pub mod types {
    #![allow(missing_docs)]
    pub const PADDING: u64 = 0x00;
    pub const PING: u64 = 0x01;
    pub const ACK: u64 = 0x02;
    pub const RESET: u64 = 0x04;
    pub const STREAM: u64 = 0x08;
    pub const STREAM_FIN: u64 = 0x01;
    pub const STREAM_LEN: u64 = 0x02;
    pub const STREAM_OFF: u64 = 0x04;
    pub const MAX_DATA: u64 = 0x10;
    pub const MAX_STREAM_DATA: u64 = 0x11;
    pub const MAX_STREAMS: u64 = 0x12;
    pub const PATH_CHALLENGE: u64 = 0x1a;
    pub const PATH_RESPONSE: u64 = 0x1b;
    pub const CLOSE: u64 = 0x1c;
    pub const HELLO: u64 = 0x30;
    pub const CRYPTO: u64 = 0x31;
    pub const RESET_TOKEN: u64 = 0x32;
    pub const NEW_TOKEN: u64 = 0x33;
    pub const DATAGRAM: u64 = 0x34;
    pub const DATAGRAM_FRAGMENT: u64 = 0x35;
    pub const FEC_SOURCE: u64 = 0x36;
    pub const LOSS_REPORT: u64 = 0x38;
    pub const FEC_REPAIR: u64 = 0x39;
}

/// Most fragments one datagram is split into: a datagram that needs more is refused at the
/// sender, so the receiver never holds more than this many pieces of one.
pub const MAX_DATAGRAM_FRAGMENTS: u8 = 8;

/// At most this many ACK ranges are decoded from one frame; more is treated as malformed.
pub const MAX_ACK_RANGES: usize = 256;

/// Longest close reason sent; longer reasons are cut at a character boundary.
pub const MAX_REASON_LEN: usize = 512;

/// A decoded frame. Stream data and close reasons borrow from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One or more zero bytes.
    Padding,
    /// Asks for an acknowledgement; keeps a path alive.
    Ping,
    /// Selective acknowledgement.
    Ack(AckFrame),
    /// The sender abandoned the stream in both directions.
    Reset {
        /// Stream being reset.
        id: StreamId,
        /// Application error code.
        code: u64,
        /// How many bytes the sender had sent on the stream (for flow-control accounting).
        final_size: u64,
    },
    /// Stream data.
    Stream(StreamFrame<'a>),
    /// Connection-wide flow-control credit: the peer may send up to this many bytes in total.
    MaxData(u64),
    /// Per-stream flow-control credit.
    MaxStreamData {
        /// Stream the credit is for.
        id: StreamId,
        /// Highest offset the peer may send.
        max: u64,
    },
    /// The peer may open streams up to this count (cumulative).
    MaxStreams(u64),
    /// Path validation probe.
    PathChallenge([u8; 8]),
    /// Echo of a path challenge.
    PathResponse([u8; 8]),
    /// The connection is closing.
    Close(CloseFrame<'a>),
    /// Handshake: the sender's version and settings, still encoded.
    Hello(&'a [u8]),
    /// Handshake: TLS bytes at an offset of the handshake byte stream.
    Crypto {
        /// Offset of `data` in the handshake stream.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// Server to client: the token of a stateless reset of this connection.
    ResetToken([u8; 16]),
    /// Server to client: an address-validation token for the client's next connection.
    NewToken(&'a [u8]),
    /// An unreliable datagram of a flow, or one fragment of it.
    Datagram(DatagramFrame<'a>),
    /// Forward error correction: this packet is a source that repairs cover (see
    /// [`crate::fec`]); the receiver keeps its payload for the repairs to come.
    FecSource,
    /// Forward error correction: one repair symbol, a combination of recent source packets.
    FecRepair(RepairFrame<'a>),
    /// How many of our packets the peer saw missing lately (per mille, from gaps in packet
    /// numbers, before any repair): what forward error correction sizes its repairs by, since
    /// the packets it rebuilds never look lost to us.
    LossReport(LossReport),
}

/// A LOSS_REPORT frame's fields: how many of the peer's packets went missing on the way here
/// lately, and how they cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossReport {
    /// Share missing, per mille (0 to 1000).
    pub per_mille: u16,
    /// Mean length of a run of consecutive missing packet numbers, in tenths (10 to 10,000:
    /// independent losses at rate p make runs of 1/(1 - p), bursty ones longer).
    pub mean_run_tenths: u16,
}

impl LossReport {
    /// Largest mean run length a report carries, in tenths.
    pub const MAX_RUN_TENTHS: u16 = 10_000;
}

/// Most packet numbers the sources of one repair span, first to last: its members are a bitmap
/// this wide.
pub const MAX_GROUP_SPAN: u64 = 32;

/// The packet numbers a members bitmap names: `first_pn + i` for each bit `i` set.
pub fn member_pns(first_pn: u64, members: u32) -> impl Iterator<Item = u64> {
    (0..MAX_GROUP_SPAN)
        .filter(move |i| members & (1 << i) != 0)
        .map(move |i| first_pn.saturating_add(i))
}

/// Most source packets one repair covers.
pub const MAX_GROUP_SOURCES: u32 = 32;
/// Most repairs sent at once for the newest sources when the sender goes quiet (see
/// [`crate::fec`]); the receiver has no such limit.
pub const MAX_GROUP_REPAIRS: u8 = 16;

/// One repair symbol: a linear combination of the source packets named by `members`, with
/// coefficients both ends derive from `id` and each source's packet number; with enough
/// repairs covering the missing sources (and the other sources received), they are rebuilt
/// (see [`crate::fec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairFrame<'a> {
    /// The first packet number covered.
    pub first_pn: u64,
    /// Which packet numbers are covered: bit `i` is `first_pn + i`; bit 0 always set.
    pub members: u32,
    /// The repair's number, counted by its sender: the coefficients' seed.
    pub id: u64,
    /// The symbol: as long as the longest source payload covered plus two bytes.
    pub symbol: &'a [u8],
}

impl RepairFrame<'_> {
    /// Bytes a FEC_REPAIR frame takes besides its symbol, at most.
    pub const MAX_OVERHEAD: usize = 1 + 8 + 8 + 8 + 4;

    /// Their packet numbers, ascending.
    pub fn pns(&self) -> impl Iterator<Item = u64> {
        member_pns(self.first_pn, self.members)
    }

    /// Appends the frame.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_varint(types::FEC_REPAIR);
        out.put_varint(self.first_pn);
        out.put_varint(u64::from(self.members));
        out.put_varint(self.id);
        out.put_length_prefixed(self.symbol);
    }
}

/// An unreliable datagram (or a fragment of one): never retransmitted; a copy sent for loss
/// protection carries the same sequence number, so the receiver delivers it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramFrame<'a> {
    /// The application's flow the datagram belongs to.
    pub flow: u64,
    /// The sender's datagram number, counted per connection and direction.
    pub seq: u64,
    /// Set when this is one piece of a datagram too large for one packet.
    pub fragment: Option<Fragment>,
    /// The bytes (of this fragment).
    pub data: &'a [u8],
}

/// Which piece of a fragmented datagram a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Position, from zero.
    pub index: u8,
    /// How many pieces the datagram has: 2 to [`MAX_DATAGRAM_FRAGMENTS`].
    pub count: u8,
}

impl DatagramFrame<'_> {
    /// Bytes a DATAGRAM or DATAGRAM_FRAGMENT frame takes for these values.
    pub fn encoded_len(flow: u64, seq: u64, fragment: bool, len: usize) -> usize {
        1 + varint_len(flow)
            + varint_len(seq)
            + if fragment { 2 } else { 0 }
            + varint_len(len as u64)
            + len
    }

    /// Appends the frame.
    pub fn encode(&self, out: &mut impl BufMut) {
        match self.fragment {
            None => out.put_varint(types::DATAGRAM),
            Some(_) => out.put_varint(types::DATAGRAM_FRAGMENT),
        }
        out.put_varint(self.flow);
        out.put_varint(self.seq);
        if let Some(f) = self.fragment {
            out.put_u8(f.index);
            out.put_u8(f.count);
        }
        out.put_length_prefixed(self.data);
    }
}

/// Stream data at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFrame<'a> {
    /// The stream.
    pub id: StreamId,
    /// Byte offset of `data` in the stream.
    pub offset: u64,
    /// True when `data` ends the stream.
    pub fin: bool,
    /// The bytes.
    pub data: &'a [u8],
}

impl StreamFrame<'_> {
    /// Bytes of header a STREAM frame needs for these values (length always encoded).
    pub fn header_len(id: StreamId, offset: u64, len: usize) -> usize {
        1 + varint_len(id.0)
            + if offset > 0 { varint_len(offset) } else { 0 }
            + varint_len(len as u64)
    }

    /// Appends a STREAM frame for `data` at `offset`.
    pub fn encode(id: StreamId, offset: u64, fin: bool, data: &[u8], out: &mut impl BufMut) {
        let mut ty = types::STREAM | types::STREAM_LEN;
        if offset > 0 {
            ty |= types::STREAM_OFF;
        }
        if fin {
            ty |= types::STREAM_FIN;
        }
        out.put_varint(ty);
        out.put_varint(id.0);
        if offset > 0 {
            out.put_varint(offset);
        }
        out.put_varint(data.len() as u64);
        out.put_slice(data);
    }
}

/// A CLOSE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// Transport or application error code (see `CloseCode`).
    pub code: u64,
    /// Human-readable reason, UTF-8 (decoded lossily by the receiver).
    pub reason: &'a [u8],
}

/// Selective acknowledgement: packet-number ranges received, highest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckFrame {
    /// Largest packet number acknowledged.
    pub largest: u64,
    /// How long the receiver held the largest packet before acknowledging it, in microseconds.
    pub delay_us: u64,
    /// Acknowledged ranges, half-open, in descending order, never overlapping.
    pub ranges: Vec<Range<u64>>,
}

impl AckFrame {
    /// Appends an ACK frame for `received` (ranges in any order iterable from the highest), at most
    /// `max_ranges` ranges. Returns false (writing nothing) when there is nothing to acknowledge.
    pub fn encode<I>(
        mut ranges_desc: I,
        delay_us: u64,
        max_ranges: usize,
        out: &mut impl BufMut,
    ) -> bool
    where
        I: Iterator<Item = Range<u64>>,
    {
        let Some(first) = ranges_desc.next() else {
            return false;
        };
        let largest = first.end - 1;
        let rest: Vec<Range<u64>> = ranges_desc.take(max_ranges.saturating_sub(1)).collect();
        out.put_varint(types::ACK);
        out.put_varint(largest);
        out.put_varint(delay_us);
        out.put_varint(rest.len() as u64);
        out.put_varint(first.end - first.start - 1);
        let mut smallest = first.start;
        for r in rest {
            // gap: number of missing packets between this range and the previous one, minus one.
            out.put_varint(smallest - r.end - 1);
            out.put_varint(r.end - r.start - 1);
            smallest = r.start;
        }
        true
    }

    /// Upper bound of the encoded size of an ACK with `ranges` ranges around `largest`.
    pub fn max_encoded_len(largest: u64, ranges: usize) -> usize {
        1 + varint_len(largest) + 8 + 8 + ranges * 16
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let largest = r.varint()?;
        let delay_us = r.varint()?;
        let extra = r.varint()?;
        if extra as usize >= MAX_ACK_RANGES {
            return Err(DecodeError::Invalid("too many ACK ranges"));
        }
        let first_len = r.varint()?;
        let first_start = largest
            .checked_sub(first_len)
            .ok_or(DecodeError::Invalid("ACK range below zero"))?;
        let mut ranges = Vec::with_capacity(extra as usize + 1);
        ranges.push(first_start..largest + 1);
        let mut smallest = first_start;
        for _ in 0..extra {
            let gap = r.varint()?;
            let len = r.varint()?;
            let end = smallest
                .checked_sub(gap + 1)
                .ok_or(DecodeError::Invalid("ACK gap below zero"))?;
            // A range ends above zero and starts at or above zero (checked before `end - 1`,
            // which a range ending at zero would take below zero: found by the fuzzer).
            let start = end
                .checked_sub(1)
                .and_then(|last| last.checked_sub(len))
                .ok_or(DecodeError::Invalid("ACK range below zero"))?;
            ranges.push(start..end);
            smallest = start;
        }
        Ok(AckFrame {
            largest,
            delay_us,
            ranges,
        })
    }
}

impl<'a> Frame<'a> {
    /// True for frames that require the receiver to acknowledge the packet.
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(
            self,
            Frame::Padding
                | Frame::Ack(_)
                | Frame::Close(_)
                | Frame::FecSource
                | Frame::LossReport(_)
        )
    }

    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let ty = r.varint()?;
        Ok(match ty {
            types::PADDING => {
                while r.rest().first() == Some(&0) {
                    r.u8()?;
                }
                Frame::Padding
            }
            types::PING => Frame::Ping,
            types::ACK => Frame::Ack(AckFrame::decode(r)?),
            types::RESET => Frame::Reset {
                id: StreamId(r.varint()?),
                code: r.varint()?,
                final_size: r.varint()?,
            },
            t if (types::STREAM..=types::STREAM | 0x07).contains(&t) => {
                let id = StreamId(r.varint()?);
                let offset = if t & types::STREAM_OFF != 0 {
                    r.varint()?
                } else {
                    0
                };
                let data = if t & types::STREAM_LEN != 0 {
                    r.length_prefixed()?
                } else {
                    r.bytes(r.remaining())?
                };
                if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|end| end > crate::wire::coding::VARINT_MAX)
                {
                    return Err(DecodeError::Invalid("stream offset overflow"));
                }
                Frame::Stream(StreamFrame {
                    id,
                    offset,
                    fin: t & types::STREAM_FIN != 0,
                    data,
                })
            }
            types::MAX_DATA => Frame::MaxData(r.varint()?),
            types::MAX_STREAM_DATA => Frame::MaxStreamData {
                id: StreamId(r.varint()?),
                max: r.varint()?,
            },
            types::MAX_STREAMS => Frame::MaxStreams(r.varint()?),
            types::PATH_CHALLENGE => Frame::PathChallenge(r.array()?),
            types::PATH_RESPONSE => Frame::PathResponse(r.array()?),
            types::CLOSE => Frame::Close(CloseFrame {
                code: r.varint()?,
                reason: r.length_prefixed()?,
            }),
            types::HELLO => Frame::Hello(r.length_prefixed()?),
            types::CRYPTO => {
                let offset = r.varint()?;
                let data = r.length_prefixed()?;
                if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|end| end > crate::wire::coding::VARINT_MAX)
                {
                    return Err(DecodeError::Invalid("crypto offset overflow"));
                }
                Frame::Crypto { offset, data }
            }
            types::RESET_TOKEN => Frame::ResetToken(r.array()?),
            types::NEW_TOKEN => {
                let token = r.length_prefixed()?;
                if token.is_empty() || token.len() > crate::wire::packet::MAX_TOKEN_LEN {
                    return Err(DecodeError::Invalid("address token length"));
                }
                Frame::NewToken(token)
            }
            types::DATAGRAM => Frame::Datagram(DatagramFrame {
                flow: r.varint()?,
                seq: r.varint()?,
                fragment: None,
                data: r.length_prefixed()?,
            }),
            types::DATAGRAM_FRAGMENT => {
                let flow = r.varint()?;
                let seq = r.varint()?;
                let index = r.u8()?;
                let count = r.u8()?;
                if !(2..=MAX_DATAGRAM_FRAGMENTS).contains(&count) || index >= count {
                    return Err(DecodeError::Invalid("datagram fragment number"));
                }
                Frame::Datagram(DatagramFrame {
                    flow,
                    seq,
                    fragment: Some(Fragment { index, count }),
                    data: r.length_prefixed()?,
                })
            }
            types::FEC_SOURCE => Frame::FecSource,
            types::FEC_REPAIR => {
                let first_pn = r.varint()?;
                let members = r.varint()?;
                let id = r.varint()?;
                let symbol = r.length_prefixed()?;
                if members & 1 == 0 || members >> MAX_GROUP_SPAN != 0 {
                    return Err(DecodeError::Invalid("repair members"));
                }
                let members = members as u32;
                if members.count_ones() > MAX_GROUP_SOURCES {
                    return Err(DecodeError::Invalid("repair sources"));
                }
                if symbol.len() < 2 {
                    return Err(DecodeError::Invalid("repair symbol length"));
                }
                Frame::FecRepair(RepairFrame {
                    first_pn,
                    members,
                    id,
                    symbol,
                })
            }
            types::LOSS_REPORT => {
                let per_mille = r.varint()?;
                let mean_run_tenths = r.varint()?;
                if per_mille > 1000
                    || !(10..=u64::from(LossReport::MAX_RUN_TENTHS)).contains(&mean_run_tenths)
                {
                    return Err(DecodeError::Invalid("loss report"));
                }
                Frame::LossReport(LossReport {
                    per_mille: per_mille as u16,
                    mean_run_tenths: mean_run_tenths as u16,
                })
            }
            other => return Err(DecodeError::UnknownFrame(other)),
        })
    }

    /// Appends this frame's encoding.
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Frame::Padding => out.put_u8(0),
            Frame::Ping => out.put_varint(types::PING),
            Frame::Ack(ack) => {
                AckFrame::encode(ack.ranges.iter().cloned(), ack.delay_us, usize::MAX, out);
            }
            Frame::Reset {
                id,
                code,
                final_size,
            } => {
                out.put_varint(types::RESET);
                out.put_varint(id.0);
                out.put_varint(*code);
                out.put_varint(*final_size);
            }
            Frame::Stream(s) => StreamFrame::encode(s.id, s.offset, s.fin, s.data, out),
            Frame::MaxData(max) => {
                out.put_varint(types::MAX_DATA);
                out.put_varint(*max);
            }
            Frame::MaxStreamData { id, max } => {
                out.put_varint(types::MAX_STREAM_DATA);
                out.put_varint(id.0);
                out.put_varint(*max);
            }
            Frame::MaxStreams(n) => {
                out.put_varint(types::MAX_STREAMS);
                out.put_varint(*n);
            }
            Frame::PathChallenge(data) => {
                out.put_varint(types::PATH_CHALLENGE);
                out.put_slice(data);
            }
            Frame::PathResponse(data) => {
                out.put_varint(types::PATH_RESPONSE);
                out.put_slice(data);
            }
            Frame::Close(c) => encode_close(c.code, c.reason, out),
            Frame::Hello(body) => {
                out.put_varint(types::HELLO);
                out.put_length_prefixed(body);
            }
            Frame::Crypto { offset, data } => encode_crypto(*offset, data, out),
            Frame::ResetToken(token) => {
                out.put_varint(types::RESET_TOKEN);
                out.put_slice(token);
            }
            Frame::NewToken(token) => {
                out.put_varint(types::NEW_TOKEN);
                out.put_length_prefixed(token);
            }
            Frame::Datagram(d) => d.encode(out),
            Frame::FecSource => out.put_varint(types::FEC_SOURCE),
            Frame::FecRepair(repair) => repair.encode(out),
            Frame::LossReport(report) => {
                out.put_varint(types::LOSS_REPORT);
                out.put_varint(u64::from(report.per_mille));
                out.put_varint(u64::from(report.mean_run_tenths));
            }
        }
    }
}

/// Appends a CRYPTO frame.
pub fn encode_crypto(offset: u64, data: &[u8], out: &mut impl BufMut) {
    out.put_varint(types::CRYPTO);
    out.put_varint(offset);
    out.put_length_prefixed(data);
}

/// Bytes of header a CRYPTO frame needs for these values.
pub fn crypto_header_len(offset: u64, len: usize) -> usize {
    varint_len(types::CRYPTO) + varint_len(offset) + varint_len(len as u64)
}

/// Appends a CLOSE frame, cutting the reason to [`MAX_REASON_LEN`] bytes.
pub fn encode_close(code: u64, reason: &[u8], out: &mut impl BufMut) {
    let reason = &reason[..reason.len().min(MAX_REASON_LEN)];
    out.put_varint(types::CLOSE);
    out.put_varint(code);
    out.put_length_prefixed(reason);
}

/// Iterates over the frames of a packet payload. After the first error it yields nothing more:
/// the whole packet is then to be discarded.
#[derive(Debug, Clone)]
pub struct FrameIter<'a> {
    reader: Reader<'a>,
    failed: bool,
}

impl<'a> FrameIter<'a> {
    /// Frames of `payload`.
    pub fn new(payload: &'a [u8]) -> Self {
        Self {
            reader: Reader::new(payload),
            failed: false,
        }
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let result = Frame::decode(&mut self.reader);
        self.failed = result.is_err();
        Some(result)
    }
}

/// Decodes every frame of `payload`, or the first error.
pub fn decode_all(payload: &[u8]) -> Result<Vec<Frame<'_>>, DecodeError> {
    FrameIter::new(payload).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame<'_>) {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        let decoded = decode_all(&buf).expect("decodes");
        assert_eq!(decoded, vec![frame]);
    }

    #[test]
    fn every_frame_type_round_trips() {
        round_trip(Frame::Ping);
        round_trip(Frame::Ack(AckFrame {
            largest: 100,
            delay_us: 250,
            ranges: vec![90..101, 50..60, 0..1],
        }));
        round_trip(Frame::Reset {
            id: StreamId(5),
            code: 7,
            final_size: 1 << 40,
        });
        for (offset, fin) in [(0, false), (0, true), (99_999, false), (1 << 33, true)] {
            round_trip(Frame::Stream(StreamFrame {
                id: StreamId(12),
                offset,
                fin,
                data: b"hello",
            }));
        }
        round_trip(Frame::MaxData(1 << 30));
        round_trip(Frame::MaxStreamData {
            id: StreamId(3),
            max: 65536,
        });
        round_trip(Frame::MaxStreams(100));
        round_trip(Frame::PathChallenge(*b"12345678"));
        round_trip(Frame::PathResponse(*b"abcdefgh"));
        round_trip(Frame::Close(CloseFrame {
            code: 9,
            reason: b"settings mismatch",
        }));
        round_trip(Frame::Hello(b"\x01\x02"));
        round_trip(Frame::Crypto {
            offset: 1200,
            data: b"\x16\x03\x01",
        });
        round_trip(Frame::ResetToken([7; 16]));
        round_trip(Frame::NewToken(&[2; 25]));
        round_trip(Frame::Datagram(DatagramFrame {
            flow: 9,
            seq: 1 << 20,
            fragment: None,
            data: b"dns query",
        }));
        round_trip(Frame::Datagram(DatagramFrame {
            flow: 1 << 40,
            seq: 3,
            fragment: Some(Fragment { index: 7, count: 8 }),
            data: &[5; 1200],
        }));
        round_trip(Frame::FecSource);
        round_trip(Frame::LossReport(LossReport {
            per_mille: 1000,
            mean_run_tenths: LossReport::MAX_RUN_TENTHS,
        }));
        round_trip(Frame::LossReport(LossReport {
            per_mille: 0,
            mean_run_tenths: 10,
        }));
        for (per_mille, tenths) in [(1001, 10), (5, 9), (5, 10_001), (5, 0)] {
            let mut buf = Vec::new();
            buf.put_varint(types::LOSS_REPORT);
            buf.put_varint(per_mille);
            buf.put_varint(tenths);
            assert!(decode_all(&buf).is_err(), "{per_mille} {tenths}");
        }
        // A report without its run length is truncated.
        let mut buf = Vec::new();
        buf.put_varint(types::LOSS_REPORT);
        buf.put_varint(5);
        assert!(decode_all(&buf).is_err());
        round_trip(Frame::FecRepair(RepairFrame {
            first_pn: (1 << 62) - 1,
            members: 0x8000_7fff,
            id: (1 << 62) - 1,
            symbol: &[9; 1300],
        }));
    }

    #[test]
    fn repair_overhead_bounds_the_encoding_and_bad_repairs_are_malformed() {
        let frame = RepairFrame {
            first_pn: (1 << 62) - 1,
            members: 0xffff_ffff,
            id: (1 << 62) - 1,
            symbol: &[0; 1500],
        };
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        assert!(buf.len() <= RepairFrame::MAX_OVERHEAD + 1500);
        let bad = |members: u64, symbol: &[u8]| {
            let mut buf = Vec::new();
            buf.put_varint(types::FEC_REPAIR);
            buf.put_varint(5);
            buf.put_varint(members);
            buf.put_varint(7);
            buf.put_length_prefixed(symbol);
            decode_all(&buf).is_err()
        };
        assert!(!bad(0b101, b"abc"));
        assert!(!bad(0xffff_ffff, b"abc"));
        assert!(bad(0b100, b"abc"), "first packet not a member");
        assert!(bad(1 << 32 | 1, b"abc"), "span too wide");
        assert!(bad(1, b"a"), "symbol too short for a length");
        // The retired block-code repair (0x37) is no frame of this version.
        let mut buf = Vec::new();
        buf.put_varint(0x37);
        buf.put_varint(5);
        assert!(decode_all(&buf).is_err());
    }

    #[test]
    fn datagram_len_matches_encoding_and_bad_fragment_numbers_are_malformed() {
        for (flow, seq, fragment, len) in [(0, 0, None, 0), (300, 1 << 30, Some(1), 1300)] {
            let data = vec![1u8; len];
            let frame = DatagramFrame {
                flow,
                seq,
                fragment: fragment.map(|index| Fragment { index, count: 2 }),
                data: &data,
            };
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            assert_eq!(
                buf.len(),
                DatagramFrame::encoded_len(flow, seq, fragment.is_some(), len)
            );
        }
        for (index, count) in [(0, 1), (2, 2), (0, MAX_DATAGRAM_FRAGMENTS + 1), (0, 0)] {
            let mut buf = Vec::new();
            buf.put_varint(types::DATAGRAM_FRAGMENT);
            buf.put_varint(1);
            buf.put_varint(1);
            buf.put_u8(index);
            buf.put_u8(count);
            buf.put_length_prefixed(b"x");
            assert!(decode_all(&buf).is_err(), "{index}/{count}");
        }
    }

    #[test]
    fn an_empty_or_oversized_address_token_is_malformed() {
        for len in [0, crate::wire::packet::MAX_TOKEN_LEN + 1] {
            let mut buf = Vec::new();
            buf.put_varint(types::NEW_TOKEN);
            buf.put_length_prefixed(&vec![1u8; len]);
            assert!(decode_all(&buf).is_err(), "{len}");
        }
    }

    #[test]
    fn stream_header_len_matches_encoding() {
        for (id, off, len) in [(0, 0, 0), (3, 1, 1200), (1 << 20, 1 << 40, 60000)] {
            let data = vec![0u8; len];
            let mut buf = Vec::new();
            StreamFrame::encode(StreamId(id), off, false, &data, &mut buf);
            assert_eq!(
                buf.len(),
                StreamFrame::header_len(StreamId(id), off, len) + len
            );
        }
    }

    /// Found by `cargo fuzz run decode_packet` (in debug builds it panicked on `end - 1`):
    /// a short packet whose ACK frame has a second range ending at packet zero.
    #[test]
    fn fuzz_crash_ack_range_ending_at_zero_is_malformed_not_a_panic() {
        let datagram = [
            0x40, 0x0a, 0x5a, 0x80, 0x01, 0x40, 0x00, 0x02, 0x7e, 0xff, 0xff, 0x4b, 0xff, 0x02,
            0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x09,
        ];
        let packet = crate::wire::packet::Packet::decode(&datagram).unwrap();
        assert!(decode_all(packet.payload).is_err());
    }

    #[test]
    fn ack_with_range_below_zero_is_malformed() {
        let mut buf = Vec::new();
        buf.put_varint(types::ACK);
        buf.put_varint(5); // largest
        buf.put_varint(0); // delay
        buf.put_varint(1); // one extra range
        buf.put_varint(2); // first range: 3..=5
        buf.put_varint(1); // gap: end would be 1
        buf.put_varint(5); // len reaching below zero
        assert!(decode_all(&buf).is_err());
    }

    #[test]
    fn ack_encoding_respects_range_limit() {
        let ranges = vec![40..41, 30..31, 20..21, 10..11];
        let mut buf = Vec::new();
        assert!(AckFrame::encode(ranges.into_iter(), 0, 2, &mut buf));
        match &decode_all(&buf).unwrap()[0] {
            Frame::Ack(ack) => assert_eq!(ack.ranges, vec![40..41, 30..31]),
            other => panic!("unexpected {other:?}"),
        }
    }
}
