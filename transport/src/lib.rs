//! Tokio driver for Ferry's sans-IO protocol.
//!
//! [`Endpoint`] owns a UDP socket and runs one task that moves datagrams between the socket and
//! the protocol state machine of `ferry-protocol`, using batched I/O ([`udp`]: GSO/GRO and
//! multi-message syscalls where the platform has them). [`Connection`] opens and accepts streams;
//! [`Stream`] implements `AsyncRead` + `AsyncWrite`, so a stream can be used wherever a TCP
//! stream can (`tokio::io::copy_bidirectional` in the tunnel binaries).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conn_ref;
mod connection;
#[cfg(feature = "echo")]
pub mod echo;
mod endpoint;
mod shared;
mod stream;
pub mod udp;

pub use connection::Connection;
pub use endpoint::{ConnectError, Endpoint};
pub use ferry_protocol::config::{ConfigError, ServerConfig, StaticSecret, TransportConfig};
pub use ferry_protocol::connection::{close_code, ConnectionError, ConnectionStats};
pub use ferry_protocol::crypto::{rustls, CryptoConfig, CryptoConfigError, Identity};
pub use ferry_protocol::datagrams;
pub use ferry_protocol::endpoint::{AddressFilter, ConnectionHandle, ReplaceServerConfigError};
pub use ferry_protocol::fec;
pub use ferry_protocol::Side;
pub use stream::{Stream, RESET_DROPPED};
