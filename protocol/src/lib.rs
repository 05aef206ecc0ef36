//! Ferry's reliable-UDP protocol as a sans-IO state machine.
//!
//! Nothing in this crate touches a socket or reads a clock: an [`Endpoint`] is fed datagrams and
//! the current [`Instant`](std::time::Instant), and is asked for datagrams to send, for the next
//! instant it needs to be woken at, and for application events. The tokio driver in
//! `ferry-transport` does the I/O; the simulator in `sim` (feature `sim`) moves datagrams in virtual time, so
//! loss, delay, reordering and blackouts are tested deterministically from a seed.
//!
//! Map of the crate (wire code never imports logic code):
//! - [`wire`]: [`coding`](wire::coding) (varints, bounds-checked reader),
//!   [`packet`](wire::packet) (headers), [`frame`](wire::frame) (frames),
//!   [`settings`](wire::settings) (handshake settings), [`cookie`](wire::cookie) (stateless
//!   address-validation tokens), [`stateless_reset`](wire::stateless_reset) (reset tokens and
//!   packets), [`fleet`](wire::fleet) (keys and connection-ID layout shared by a fleet of
//!   servers), [`ids`](wire::ids), [`close`](wire::close) (close codes, `ConnectionError`);
//! - security: [`crypto`] (TLS 1.3 handshake and packet protection);
//! - reliability: [`ranges`], [`rtt`], [`recovery`] (sent packets, loss detection, RTO),
//!   [`mtud`] (path MTU discovery),
//!   [`congestion`] (controllers and pacing);
//! - streams: [`streams`] (send buffers, reassembly, flow control); [`datagrams`] (unreliable
//!   datagrams of UDP flows: loss protection, duplicate suppression, fragments), with
//!   [`loss_rate`] (the path's recent loss, which adaptive protection follows); [`fec`]
//!   (forward error correction: repair packets that rebuild lost ones without a round trip);
//! - state machines: [`connection`], [`endpoint`] (many connections on one socket);
//! - testing: `sim` (seeded network simulator in virtual time), with the `sim` feature only.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod congestion;
pub mod connection;
pub mod crypto;
pub mod datagrams;
pub mod endpoint;
pub mod fec;
pub mod loss_rate;
pub mod mtud;
pub mod ranges;
pub mod recovery;
pub mod rtt;
#[cfg(feature = "sim")]
pub mod sim;
pub mod streams;
pub mod wire;

pub use wire::ids::{ConnectionId, Side, StreamId};
