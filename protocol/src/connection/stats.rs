//! The counters a connection keeps for monitoring, as
//! [`Connection::stats`](super::Connection::stats) reports them.

use std::time::Duration;

/// Counters of one connection, for monitoring.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionStats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// Datagrams received and accepted.
    pub packets_received: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Of which by retransmission timeout.
    pub rto_expiries: u64,
    /// Stream bytes sent again: after a loss, or as a tail duplicate.
    pub stream_bytes_retransmitted: u64,
    /// Stream bytes sent, including retransmissions.
    pub stream_bytes_sent: u64,
    /// Duplicate packets received.
    pub duplicate_packets: u64,
    /// Packets dropped because their frames could not be decoded.
    pub malformed_packets: u64,
    /// Packets dropped because they failed authentication (forged, corrupted, or sealed with
    /// keys this end does not hold yet) or were cleartext after the handshake.
    pub unauthenticated_packets: u64,
    /// Path migrations completed.
    pub migrations: u64,
    /// Smoothed RTT.
    pub rtt: Duration,
    /// Minimum RTT.
    pub min_rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Bytes in flight.
    pub bytes_in_flight: u64,
    /// Pacing rate, bytes per second.
    pub pacing_rate: u64,
    /// UDP payload size packets are built at now (path MTU discovery moves it).
    pub datagram_size: u64,
    /// Times path MTU discovery found a black hole and fell back to 1,200 bytes.
    pub mtu_black_holes: u64,
    /// Unreliable datagrams: sent, received, protected, dropped.
    pub datagrams: crate::datagrams::DatagramStats,
    /// Recent packet loss, per mille, as loss detection declared it: packets that the peer
    /// rebuilt from repairs are not lost.
    pub recent_loss_per_mille: u32,
    /// Forward error correction: groups, repairs sent and received, packets rebuilt.
    pub fec: crate::fec::FecStats,
}
