//! Path validation: a newer packet from a new address starts a challenge, and the peer's address
//! changes only when the answer comes back (a session survives NAT rebinding and network
//! changes, and a spoofed source cannot steer it). Challenges and answers leave as datagrams of
//! their own, to the address they concern.

use std::net::SocketAddr;
use std::time::Instant;

use rand_chacha::rand_core::Rng;
use tracing::debug;

use super::{Connection, Event, PathChallenge, Transmit};
use crate::wire::frame::Frame;

impl Connection {
    pub(super) fn on_new_path(&mut self, now: Instant, remote: SocketAddr) {
        if self
            .path_challenge
            .as_ref()
            .is_some_and(|c| c.addr == remote)
        {
            let rto = self.current_rto();
            if let Some(c) = &mut self.path_challenge {
                if c.sent_at.is_none_or(|t| now >= t + rto) {
                    c.pending = true;
                }
            }
            return;
        }
        let mut data = [0u8; 8];
        self.rng.fill_bytes(&mut data);
        debug!(side = %self.side, from = %self.remote, to = %remote, "peer address changed: validating the new path");
        self.path_challenge = Some(PathChallenge {
            addr: remote,
            data,
            pending: true,
            sent_at: None,
        });
    }

    /// The peer challenged the path it sent from: answer to that address (at most eight
    /// answers owed at once).
    pub(super) fn on_path_challenge(&mut self, remote: SocketAddr, data: [u8; 8]) {
        if self.path_responses.len() < 8 {
            self.path_responses.push_back((remote, data));
        }
    }

    /// The answer to our challenge validates the new path: the peer's address is now that.
    pub(super) fn on_path_response(&mut self, data: &[u8; 8]) {
        if let Some(c) = &self.path_challenge {
            if c.data == *data {
                let addr = c.addr;
                debug!(side = %self.side, %addr, "new path validated: migrating");
                self.remote = addr;
                self.path_challenge = None;
                self.stats.migrations += 1;
                self.events.push_back(Event::PathMigrated(addr));
            }
        }
    }

    /// A datagram for path validation, if one is owed: path frames go to their own address,
    /// one datagram each, ahead of everything else.
    pub(super) fn poll_path_frame(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((addr, data)) = self.path_responses.pop_front() {
            return Some(self.send_path_frame(now, buf, addr, Frame::PathResponse(data)));
        }
        if let Some(c) = &mut self.path_challenge {
            if c.pending {
                c.pending = false;
                c.sent_at = Some(now);
                let (addr, data) = (c.addr, c.data);
                return Some(self.send_path_frame(now, buf, addr, Frame::PathChallenge(data)));
            }
        }
        None
    }
}
