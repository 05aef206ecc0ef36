//! Identifiers that both the wire format and the state machine speak of.

use std::fmt;

/// Which end of a connection this is. The client sent the first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that initiated the connection (Ferry's agent).
    Client,
    /// The end that accepted it (Ferry's gateway).
    Server,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Server => "server",
        })
    }
}

/// A random 64-bit connection identifier chosen by the receiver of the packets that carry it,
/// so a connection is found by its ID and survives the peer's address changing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConnectionId(pub [u8; ConnectionId::LEN]);

impl ConnectionId {
    /// Length on the wire, in bytes.
    pub const LEN: usize = 8;
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A stream within a connection. Bit 0 says who opened it (0: client, 1: server), so both ends
/// can open streams without coordinating; the rest is a per-side sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The `index`-th stream opened by `initiator`.
    pub fn new(initiator: Side, index: u64) -> Self {
        StreamId(index << 1 | u64::from(initiator == Side::Server))
    }

    /// Who opened this stream.
    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }

    /// Sequence number among the streams opened by the same side.
    pub fn index(self) -> u64 {
        self.0 >> 1
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
