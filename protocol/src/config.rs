//! Configuration of connections and of a server endpoint, with documented defaults.
//!
//! Every knob says its unit and why its default is what it is. Defaults are tuned for Ferry's
//! job: low latency over lossy, long or jittery links (KCP's "nodelay" spirit), with bounded
//! memory per connection.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::congestion::CongestionConfig;
use crate::crypto::CryptoConfig;
use crate::streams::StreamLimits;
use crate::wire::ids::Side;
use crate::wire::settings::Settings;

/// Most streams a configuration may let the peer have open at once: 2^20. With 64 KiB initial
/// windows that is 64 GiB of credit, beyond [`MAX_CONNECTION_CREDIT`] already; the cap only keeps
/// the credit arithmetic far from overflow.
pub const MAX_CONCURRENT_STREAMS_LIMIT: u64 = 1 << 20;

/// Most bytes one connection may be configured to hold for the peer (its MAX_DATA window), in
/// bytes: 4 GiB. A configuration whose stream count times initial window goes beyond it is
/// refused rather than silently promising more memory than a tunnel host has.
pub const MAX_CONNECTION_CREDIT: u64 = 4 << 30;

/// Why a [`TransportConfig`] was refused: a value that would make the protocol misbehave (the
/// message names the field), or packet protection that does not fit the side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `max_datagram_size` is outside 1200..=65527.
    #[error("max_datagram_size {0} is outside 1200..=65527")]
    MaxDatagramSize(u16),
    /// `max_probed_datagram_size` is below `max_datagram_size` or above 65527.
    #[error("max_probed_datagram_size {0} is outside max_datagram_size..=65527")]
    MaxProbedDatagramSize(u16),
    /// `reorder_threshold` is zero.
    #[error("reorder_threshold must be at least 1")]
    ReorderThreshold,
    /// `time_threshold` is below 1 or not finite.
    #[error("time_threshold must be a finite number >= 1")]
    TimeThreshold,
    /// `rto_backoff` is below 1 or not finite.
    #[error("rto_backoff must be a finite number >= 1")]
    RtoBackoff,
    /// A receive window is below 1 KiB, or the connection's is below a stream's.
    #[error("receive windows must be >= 1 KiB and the connection window >= the stream window")]
    ReceiveWindows,
    /// `stream_initial_receive_window` is below 1 KiB.
    #[error("stream_initial_receive_window must be at least 1 KiB")]
    StreamInitialReceiveWindow,
    /// `max_concurrent_streams` (the value) is above [`MAX_CONCURRENT_STREAMS_LIMIT`].
    #[error("max_concurrent_streams {0} is above {MAX_CONCURRENT_STREAMS_LIMIT}")]
    MaxConcurrentStreams(u64),
    /// The credit one connection may be given (the value, in bytes) is above
    /// [`MAX_CONNECTION_CREDIT`].
    #[error(
        "max_concurrent_streams x stream_initial_receive_window + connection_receive_window \
         is {0} bytes, above the {MAX_CONNECTION_CREDIT}-byte bound on what one \
         connection may hold"
    )]
    ConnectionCredit(u64),
    /// `batch_delay` is above 1 s.
    #[error("batch_delay must be at most 1 s")]
    BatchDelay,
    /// `ack_delay` is above 100 ms.
    #[error("ack_delay must be at most 100 ms")]
    AckDelay,
    /// `stream_send_buffer` is below 1 KiB.
    #[error("stream_send_buffer must be at least 1 KiB")]
    StreamSendBuffer,
    /// A fixed congestion rate below 8000 bit/s.
    #[error("fixed congestion rate must be at least 8000 bit/s")]
    FixedRate,
    /// A TLS client configuration given to a server.
    #[error("a TLS client configuration cannot serve")]
    TlsClientCannotServe,
    /// A TLS server configuration given to a client.
    #[error("a TLS server configuration cannot connect")]
    TlsServerCannotConnect,
    /// A TLS configuration that does not offer Ferry's ALPN.
    #[error(
        "the TLS configuration must offer ALPN {:?} (use ferry_protocol::crypto::ALPN)",
        String::from_utf8_lossy(crate::crypto::ALPN)
    )]
    MissingAlpn,
}

/// Per-connection transport settings. Build with [`TransportConfig::default`] and the setters.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// UDP payload size a connection starts with, in bytes. Default 1350: fits the common
    /// 1500-byte MTU with room for IPv6, tunnels and PPPoE, as kcptun's default does.
    /// Negotiated down to the peer's value. With [`Self::path_mtu_discovery`], packets grow from
    /// here to what the path carries.
    pub max_datagram_size: u16,
    /// Probe the path for larger packets once established, up to
    /// [`Self::max_probed_datagram_size`], and fall back to 1,200 bytes on a black hole (see
    /// [`crate::mtud`]). Default on.
    pub path_mtu_discovery: bool,
    /// Largest UDP payload path MTU discovery tries, and the largest this end accepts (it is
    /// announced to the peer). Default 1452: an Ethernet MTU of 1,500 less IPv6 and UDP
    /// headers.
    pub max_probed_datagram_size: u16,
    /// Abandon the connection after this long without a packet from the peer (0: never).
    /// Default 30 s. Negotiated: the smaller of the two ends' values applies.
    pub idle_timeout: Duration,
    /// Send a PING after this long without sending anything, so NAT bindings and the peer's idle
    /// timer stay alive. Default 5 s; `None` disables it.
    pub keepalive_interval: Option<Duration>,
    /// Client: while any stream is open, send a PING once nothing was sent or received for
    /// this long. A client that only receives (a download) sends nothing once its peer dies,
    /// so without this probe a dead or restarted server would be noticed only at the next
    /// keepalive; with it, the server's stateless reset or its host's ICMP port unreachable
    /// answers within about this long. Default 500 ms: a 31-byte PING (and its ACK) twice a
    /// second per quiet session. `None` disables it.
    pub liveness_probe: Option<Duration>,
    /// Give up a handshake that has not completed after this long. Default 10 s.
    pub handshake_timeout: Duration,
    /// Receive window every stream starts with, in bytes: what a stream whose reader never reads
    /// can hold. Default 64 KiB: a request, a reply or a burst of messages fits, and 1,024 stalled
    /// streams hold 64 MiB at most. A stream whose reader keeps up doubles its window (see
    /// [`crate::streams`]) up to `stream_receive_window`. Announced to the peer as its initial
    /// credit per stream; values above `stream_receive_window` are clamped to it.
    pub stream_initial_receive_window: u64,
    /// Largest receive window of one stream, in bytes (windows grow to it from
    /// `stream_initial_receive_window` while the reader keeps up). Default 4 MiB: a 50 Mbit/s x
    /// 40 ms path needs its 250 KB bandwidth-delay product several times over to keep one stream
    /// moving while a loss is repaired (with 1 MiB a single echo stream reached 56-73% of such a
    /// link at 5% loss, with 4 MiB 80-84%: `ferry-bench --link`).
    pub stream_receive_window: u64,
    /// Growth budget, in bytes: how much all streams together may hold beyond their initial
    /// windows. Default 16 MiB: four streams grown to the full 4 MiB. The connection's credit
    /// (MAX_DATA) adds every stream's initial window to it, so stalled streams can never take
    /// it from streams that drain; memory per connection is bounded by
    /// [`TransportConfig::connection_credit_window`] (84 MiB with the defaults).
    pub connection_receive_window: u64,
    /// Bytes the application may write to one stream before it has been acknowledged. Default
    /// 2 MiB: 320 ms at 50 Mbit/s, room for a repair round trip or two behind a full window.
    pub stream_send_buffer: usize,
    /// How many streams the peer may have open at once. Default 1024. Each reserves
    /// `stream_initial_receive_window` of connection credit (64 MiB for 1,024 streams by
    /// default), so that streams nobody reads cannot starve the others; at most
    /// [`MAX_CONCURRENT_STREAMS_LIMIT`], and with the initial window within
    /// [`MAX_CONNECTION_CREDIT`].
    pub max_concurrent_streams: u64,
    /// RTT assumed before the first sample. Default 100 ms.
    pub initial_rtt: Duration,
    /// A packet is lost once a packet sent this many packets after it is acknowledged (KCP's
    /// `fastresend`). Default 2, as KCP's fast mode; lower means faster repair, more spurious
    /// retransmissions under reordering.
    pub reorder_threshold: u64,
    /// A packet is lost once a later packet is acknowledged and it is older than this multiple of
    /// the RTT. Default 1.125 (RFC 9002's 9/8).
    pub time_threshold: f64,
    /// Lower bound of the retransmission timeout. Default 30 ms (KCP nodelay uses 30 ms too):
    /// a low floor repairs tail losses in about one RTT on short paths.
    pub rto_floor: Duration,
    /// Upper bound of the retransmission timeout after backoff (never below the timeout
    /// before backoff). Default 1 s: a link that comes back after an outage is probed within a
    /// second, so the session (or a handshake in progress) recovers at once rather than after
    /// a backed-off timeout of many seconds; one probe a second costs nothing.
    pub rto_ceiling: Duration,
    /// Multiplier applied to the timeout after each consecutive expiry. Default 1.5 (KCP nodelay),
    /// gentler than TCP's 2 so a burst of loss does not stall the link for seconds.
    pub rto_backoff: f64,
    /// Congestion controller. Default BBR (loss-tolerant).
    pub congestion: CongestionConfig,
    /// Send the last packet of a small burst twice: when nothing else is pending and either at
    /// most three datagrams are in flight, or every stream in the packet has at most three
    /// datagrams' worth unacknowledged (many connections each sending a small message at
    /// once) and the path lost a packet in the last 10 seconds. Default on: an interactive message costs one extra packet, and a single loss no
    /// longer costs it a repair round trip. Bulk transfers are unaffected (their packets are
    /// never the tail of a small burst, and their streams hold more unacknowledged data).
    pub tail_duplication: bool,
    /// Forward error correction (see [`crate::fec`]): repair packets that rebuild a lost
    /// packet without a retransmission round trip. Default `auto`: while the path's measured
    /// loss is at least 0.3% and the traffic is not bulk. Used on a connection only when both ends
    /// decode it (any mode but `off`, announced in the handshake); there it replaces
    /// [`Self::tail_duplication`].
    pub fec: crate::fec::FecMode,
    /// Named settings that must be identical on both ends, or the handshake fails with a reason
    /// naming each difference. The `crypto` setting is always the mode of [`Self::crypto`].
    pub required_settings: BTreeMap<String, String>,
    /// Batching: hold stream data that does not fill a datagram for up to this long, so that
    /// small writes of many streams leave together in full packets. Default zero (send at
    /// once). Control frames never wait; an acknowledgement with no data to ride with waits
    /// up to the same delay (its delay field keeps the peer's RTT estimate exact).
    pub batch_delay: Duration,
    /// Delayed acknowledgement: an ACK owed for a packet that arrived in order, while less than
    /// two full datagrams' worth is unacknowledged, waits up to this long for data (a reply)
    /// to carry it, as TCP's delayed ACK does (RFC 1122 section 4.2.3.2, RFC 5681 section
    /// 4.2). A request/response exchange then costs two datagrams, not four. Gaps, reordering,
    /// duplicates and handshake packets are acknowledged at once, so loss recovery is not
    /// slowed; the delay is announced in the handshake and the peer adds it to its
    /// retransmission timeout. Default 1 ms; zero acknowledges every packet at once.
    pub ack_delay: Duration,
    /// Largest unreliable datagram (see [`crate::datagrams`]) accepted from the peer, after
    /// reassembly, in bytes; zero refuses datagrams. Default 65,535: any UDP payload, though a
    /// sender splits one into at most [`MAX_DATAGRAM_FRAGMENTS`] packets, so what actually
    /// passes is about 10 KB with 1,350-byte packets. Announced in the handshake.
    ///
    /// [`MAX_DATAGRAM_FRAGMENTS`]: crate::wire::frame::MAX_DATAGRAM_FRAGMENTS
    pub max_datagram_payload: u32,
    /// Split a datagram too large for one packet into fragments (up to
    /// [`MAX_DATAGRAM_FRAGMENTS`](crate::wire::frame::MAX_DATAGRAM_FRAGMENTS)) that the peer
    /// reassembles. Default on; off, such a datagram is refused at the sender (counted).
    pub datagram_fragmentation: bool,
    /// Packet protection. Default none; the binaries default to TLS. Both ends must agree:
    /// the mode is a required setting, so a mismatch fails the handshake with a clear reason.
    pub crypto: CryptoConfig,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_datagram_size: 1350,
            path_mtu_discovery: true,
            max_probed_datagram_size: 1452,
            idle_timeout: Duration::from_secs(30),
            keepalive_interval: Some(Duration::from_secs(5)),
            liveness_probe: Some(Duration::from_millis(500)),
            handshake_timeout: Duration::from_secs(10),
            stream_initial_receive_window: 64 << 10,
            stream_receive_window: 4 << 20,
            connection_receive_window: 16 << 20,
            stream_send_buffer: 2 << 20,
            max_concurrent_streams: 1024,
            initial_rtt: Duration::from_millis(100),
            reorder_threshold: 2,
            time_threshold: 1.125,
            rto_floor: Duration::from_millis(30),
            rto_ceiling: Duration::from_secs(1),
            rto_backoff: 1.5,
            congestion: CongestionConfig::Bbr,
            tail_duplication: true,
            fec: crate::fec::FecMode::Auto,
            required_settings: BTreeMap::new(),
            crypto: CryptoConfig::None,
            batch_delay: Duration::ZERO,
            ack_delay: Duration::from_millis(1),
            max_datagram_payload: crate::wire::settings::MAX_DATAGRAM_PAYLOAD_LIMIT,
            datagram_fragmentation: true,
        }
    }
}

impl TransportConfig {
    /// Sets the idle timeout.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets (or disables) keepalives.
    pub fn keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keepalive_interval = interval;
        self
    }

    /// Sets the congestion controller.
    pub fn congestion(mut self, congestion: CongestionConfig) -> Self {
        self.congestion = congestion;
        self
    }

    /// Turns duplication of small bursts' last packet on or off.
    pub fn tail_duplication(mut self, on: bool) -> Self {
        self.tail_duplication = on;
        self
    }

    /// Sets the forward error correction mode.
    pub fn fec(mut self, mode: crate::fec::FecMode) -> Self {
        self.fec = mode;
        self
    }

    /// Sets the largest per-stream receive window and the connection's growth budget (see
    /// [`Self::connection_receive_window`]), in bytes.
    pub fn receive_windows(mut self, stream: u64, connection: u64) -> Self {
        self.stream_receive_window = stream;
        self.connection_receive_window = connection;
        self
    }

    /// Sets the receive window every stream starts with, in bytes.
    pub fn stream_initial_receive_window(mut self, bytes: u64) -> Self {
        self.stream_initial_receive_window = bytes;
        self
    }

    /// The stream limits this configuration gives a connection's [`StreamSet`].
    ///
    /// [`StreamSet`]: crate::streams::StreamSet
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            initial_stream_window: self
                .stream_initial_receive_window
                .min(self.stream_receive_window),
            stream_window: self.stream_receive_window,
            growth_budget: self.connection_receive_window,
            send_buffer: self.stream_send_buffer,
            max_concurrent: self.max_concurrent_streams,
        }
    }

    /// Connection credit (MAX_DATA window) announced in the handshake, in bytes: the bound on
    /// what the peer can make this end hold, whatever it does, as long as our own application
    /// opens no streams (each stream it opens adds `stream_initial_receive_window`). See
    /// [`StreamLimits::connection_window`].
    pub fn connection_credit_window(&self) -> u64 {
        self.stream_limits().connection_window(0)
    }

    /// Sets the per-stream send buffer, in bytes.
    pub fn stream_send_buffer(mut self, bytes: usize) -> Self {
        self.stream_send_buffer = bytes;
        self
    }

    /// Sets the largest datagram, in bytes (clamped to 1200..=65527).
    pub fn max_datagram_size(mut self, bytes: u16) -> Self {
        self.max_datagram_size = bytes.clamp(1200, 65527);
        self
    }

    /// Adds a setting that must be identical on the peer.
    pub fn require(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.required_settings.insert(name.into(), value.into());
        self
    }

    /// Sets the acknowledgement delay (see [`Self::ack_delay`]).
    pub fn ack_delay(mut self, delay: Duration) -> Self {
        self.ack_delay = delay;
        self
    }

    /// Longest an acknowledgement may wait at this end: the ACK delay, or the batch delay
    /// (an ACK waits for batched data too), whichever is longer. Announced to the peer.
    pub fn max_ack_delay(&self) -> Duration {
        self.ack_delay.max(self.batch_delay)
    }

    /// Sets the batch delay (see [`Self::batch_delay`]).
    pub fn batch_delay(mut self, delay: Duration) -> Self {
        self.batch_delay = delay;
        self
    }

    /// Sets the packet protection.
    pub fn crypto(mut self, crypto: CryptoConfig) -> Self {
        self.crypto = crypto;
        self
    }

    /// Checks the configuration for one side, crypto included.
    pub fn validate_for(&self, side: Side) -> Result<(), ConfigError> {
        self.validate()?;
        self.crypto.validate(side)
    }

    /// Checks values that would make the protocol misbehave. The error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1200..=65527).contains(&self.max_datagram_size) {
            return Err(ConfigError::MaxDatagramSize(self.max_datagram_size));
        }
        if self.path_mtu_discovery
            && !(self.max_datagram_size..=65527).contains(&self.max_probed_datagram_size)
        {
            return Err(ConfigError::MaxProbedDatagramSize(
                self.max_probed_datagram_size,
            ));
        }
        if self.reorder_threshold == 0 {
            return Err(ConfigError::ReorderThreshold);
        }
        if !(self.time_threshold >= 1.0 && self.time_threshold.is_finite()) {
            return Err(ConfigError::TimeThreshold);
        }
        if !(self.rto_backoff >= 1.0 && self.rto_backoff.is_finite()) {
            return Err(ConfigError::RtoBackoff);
        }
        if self.stream_receive_window < 1024
            || self.connection_receive_window < self.stream_receive_window
        {
            return Err(ConfigError::ReceiveWindows);
        }
        if self.stream_initial_receive_window < 1024 {
            return Err(ConfigError::StreamInitialReceiveWindow);
        }
        if self.max_concurrent_streams > MAX_CONCURRENT_STREAMS_LIMIT {
            return Err(ConfigError::MaxConcurrentStreams(
                self.max_concurrent_streams,
            ));
        }
        let credit = self.connection_credit_window();
        if credit > MAX_CONNECTION_CREDIT {
            return Err(ConfigError::ConnectionCredit(credit));
        }
        if self.batch_delay > Duration::from_secs(1) {
            return Err(ConfigError::BatchDelay);
        }
        if self.ack_delay > Duration::from_millis(100) {
            return Err(ConfigError::AckDelay);
        }
        if self.stream_send_buffer < 1024 {
            return Err(ConfigError::StreamSendBuffer);
        }
        if let CongestionConfig::Fixed { rate_bps } = self.congestion {
            if rate_bps < 8_000 {
                return Err(ConfigError::FixedRate);
            }
        }
        Ok(())
    }

    /// The largest UDP payload this end sends or accepts: where path MTU discovery stops.
    pub fn largest_datagram(&self) -> u16 {
        if self.path_mtu_discovery {
            self.max_probed_datagram_size.max(self.max_datagram_size)
        } else {
            self.max_datagram_size
        }
    }

    /// The settings this configuration announces in the handshake.
    pub fn settings(&self) -> Settings {
        Settings {
            idle_timeout: self.idle_timeout,
            max_datagram_size: self.largest_datagram(),
            initial_max_data: self.connection_credit_window(),
            initial_max_stream_data: self.stream_limits().initial_stream_window,
            initial_max_streams: self.max_concurrent_streams,
            max_ack_delay: self.max_ack_delay(),
            max_datagram_payload: self
                .max_datagram_payload
                .min(crate::wire::settings::MAX_DATAGRAM_PAYLOAD_LIMIT),
            fec: self.fec != crate::fec::FecMode::Off,
            required: {
                let mut required = self.required_settings.clone();
                required.insert("crypto".into(), self.crypto.mode().into());
                required
            },
        }
    }
}

/// Settings of an endpoint that accepts connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Transport settings for accepted connections.
    pub transport: TransportConfig,
    /// How long a Retry token stays valid. Default 10 s: long enough for a client's
    /// retransmitted Initial on a slow path, short enough that a stolen token is soon useless.
    pub retry_token_lifetime: Duration,
    /// How long an address token (handed to a client for its next connection, so that a
    /// reconnect skips the Retry round trip) stays valid. Default 24 h: an agent that
    /// reconnects after a gateway restart or a link outage of a day still saves the round trip.
    pub address_token_lifetime: Duration,
    /// Most connections at once; further clients are refused with a reason. Default 10,000.
    pub max_connections: usize,
    /// The secret the keys of stateless resets and address tokens derive from (see
    /// [`crate::wire::fleet`]). Give every gateway of a fleet, and every restart of one, the same
    /// secret, so a packet for a connection this process does not know is answered with a
    /// reset the client can verify, and tokens stay valid. `None` (the default): a random
    /// secret for this process only.
    pub static_secret: Option<StaticSecret>,
    /// The server ID written into the connection IDs this server chooses (see
    /// [`crate::wire::fleet`]), for load balancers that route by it. Default none.
    pub server_id: Option<u16>,
    /// Stateless resets sent per second at most, on average (a flood of datagrams for unknown
    /// connections is answered at this rate, the rest dropped and counted); a second's worth
    /// may leave at once. Default 1,000: a restarted gateway resets a thousand agents'
    /// sessions a second, at under 50 KB/s of replies.
    pub stateless_reset_rate: u32,
}

/// A secret kept out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticSecret(pub Vec<u8>);

impl std::fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticSecret({} bytes)", self.0.len())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            transport: TransportConfig::default(),
            retry_token_lifetime: Duration::from_secs(10),
            address_token_lifetime: Duration::from_secs(24 * 3600),
            max_connections: 10_000,
            static_secret: None,
            server_id: None,
            stateless_reset_rate: 1000,
        }
    }
}

impl ServerConfig {
    /// A server configuration using `transport` for its connections.
    pub fn new(transport: TransportConfig) -> Self {
        Self {
            transport,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_credit_reserves_an_initial_window_per_stream_plus_the_growth_budget() {
        let config = TransportConfig::default();
        assert_eq!(config.validate(), Ok(()));
        // 1,024 x 64 KiB + 16 MiB + 4 MiB of slack.
        assert_eq!(config.connection_credit_window(), 84 << 20);
        let settings = config.settings();
        assert_eq!(settings.initial_max_data, 84 << 20);
        assert_eq!(settings.initial_max_stream_data, 64 << 10);
    }

    #[test]
    fn an_initial_window_above_the_largest_is_clamped_to_it() {
        let config = TransportConfig::default()
            .receive_windows(256 << 10, 1 << 20)
            .stream_initial_receive_window(1 << 20);
        assert_eq!(config.stream_limits().initial_stream_window, 256 << 10);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn more_credit_than_a_connection_may_hold_is_refused_with_the_fields_named() {
        let mut config = TransportConfig {
            max_concurrent_streams: 100_000,
            ..TransportConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("max_concurrent_streams x stream_initial_receive_window"),
            "{err}"
        );
        config.max_concurrent_streams = u64::MAX;
        assert!(config.validate().unwrap_err().to_string().contains("above"));
        let tiny = TransportConfig::default().stream_initial_receive_window(512);
        assert!(tiny.validate().is_err());
    }
}
