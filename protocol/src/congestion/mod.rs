//! Congestion control: how many bytes may be in flight and how fast to pace them.
//!
//! The connection only talks to a [`Controller`] through this trait: it reports each packet sent,
//! the packets each ACK newly acknowledges, and losses, and asks for the window and the pacing
//! rate. Controllers are chosen by [`CongestionConfig`]:
//!
//! - [`Bbr`](bbr::Bbr), the default: a model-based controller (after BBR v1, Cardwell et al.,
//!   "BBR: Congestion-Based Congestion Control", ACM Queue 2016) that estimates the bottleneck
//!   bandwidth from delivery-rate samples and the propagation delay from the minimum RTT. Random
//!   loss does not shrink its model, so it keeps most of the link under loss where loss-based
//!   controllers (Reno, CUBIC) collapse.
//! - [`Fixed`](fixed::Fixed): sends at a configured rate whatever happens, for dedicated links
//!   whose capacity is known (KCP's `nc=1`, Hysteria's "Brutal").
//!
//! Pacing is always on: [`Pacer`](pacing::Pacer) spreads packets over time at the controller's rate.

use std::fmt;
use std::time::Instant;

use crate::rtt::RttEstimator;

pub mod bbr;
pub mod delivery_rate;
pub mod fixed;
pub mod pacing;

pub use delivery_rate::DeliveryState;

/// A packet newly acknowledged by an ACK frame.
#[derive(Debug, Clone, Copy)]
pub struct AckedPacket {
    /// When it was sent.
    pub sent_time: Instant,
    /// Its size on the wire (UDP payload bytes).
    pub bytes: u64,
    /// Delivery-rate state captured by [`Controller::on_sent`] when it was sent.
    pub delivery: DeliveryState,
}

/// How packets came to be declared lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Later packets were acknowledged and these were not (reorder or time threshold): the
    /// path dropped them.
    Detected,
    /// The retransmission timer expired: nothing was heard for a timeout, which says as little
    /// about the path's drops as about ACKs held up behind a queue the other way.
    Timeout,
}

/// A congestion controller. All sizes are UDP payload bytes.
pub trait Controller: Send + fmt::Debug {
    /// A packet of `bytes` that counts toward bytes in flight is being sent; `bytes_in_flight`
    /// is the total before this packet. Returns the state to hand back when it is acknowledged.
    fn on_sent(&mut self, now: Instant, bytes: u64, bytes_in_flight: u64) -> DeliveryState;

    /// The sender had nothing to send while the window allowed more: samples taken now reflect
    /// the application's rate, not the network's.
    fn on_app_limited(&mut self, bytes_in_flight: u64);

    /// One ACK frame newly acknowledged `acked` (in increasing packet-number order).
    /// `bytes_in_flight` is the total after removing them.
    fn on_ack(
        &mut self,
        now: Instant,
        acked: &[AckedPacket],
        rtt: &RttEstimator,
        bytes_in_flight: u64,
    );

    /// Packets sent up to `largest_lost_sent` were declared lost, `lost_bytes` in all, in the
    /// way `kind` says.
    fn on_loss(
        &mut self,
        now: Instant,
        lost_bytes: u64,
        largest_lost_sent: Instant,
        bytes_in_flight: u64,
        kind: LossKind,
    );

    /// The retransmission timer expired with nothing acknowledged for several RTOs in a row.
    fn on_persistent_congestion(&mut self, now: Instant);

    /// Congestion window: the most bytes that may be in flight.
    fn window(&self) -> u64;

    /// Pacing rate in bytes per second.
    fn pacing_rate(&self, rtt: &RttEstimator) -> u64;

    /// Short name for logs and metrics ("bbr", "fixed").
    fn name(&self) -> &'static str;
}

/// Which controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionConfig {
    /// Model-based, loss-tolerant default.
    #[default]
    Bbr,
    /// A fixed sending rate, for dedicated links.
    Fixed {
        /// Target sending rate in bits per second (UDP payload).
        rate_bps: u64,
    },
}

impl CongestionConfig {
    /// Makes a controller for a connection whose datagrams are at most `max_datagram` bytes;
    /// `seed` (from the connection's) drives whatever the controller randomises.
    pub fn build(&self, now: Instant, max_datagram: u64, seed: u64) -> Box<dyn Controller> {
        match *self {
            CongestionConfig::Bbr => Box::new(bbr::Bbr::new(now, max_datagram, seed)),
            CongestionConfig::Fixed { rate_bps } => {
                Box::new(fixed::Fixed::new(rate_bps, max_datagram))
            }
        }
    }
}
