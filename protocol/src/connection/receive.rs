//! The receive path: a packet the endpoint routed here is checked (state, header form, keys,
//! duplicates and replays by packet number), opened when sealed, decoded whole, and its frames
//! applied one by one; each frame kind goes to its home (ACKs to [`super::loss`], HELLO and
//! CRYPTO to [`super::handshake`], path frames to [`super::paths`], stream frames and credit to
//! the `StreamSet`, repairs to [`super::fec`], whose rebuilt packets come back through here as
//! if they had arrived).

use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, trace};

use super::{Connection, ConnectionError, Event, State, Timer};
use crate::wire::frame::{Frame, FrameIter};
use crate::wire::ids::Side;
use crate::wire::packet::{decode_packet_number, Header, Packet};
use crate::wire::stateless_reset::ResetToken;

/// How a packet reached [`Connection::process_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// From the network.
    Received,
    /// From the network, but only a CLOSE in it may take effect (a cleartext packet while the
    /// client still waits for the server's first sealed one).
    CloseOnly,
    /// Rebuilt from forward error correction repairs: it was lost on the path, not late.
    Rebuilt,
}

/// Most packet-number ranges remembered as received.
const MAX_RECEIVED_RANGES: usize = 64;

impl Connection {
    /// Processes a packet the endpoint routed to this connection.
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        packet: &Packet<'_>,
        datagram_len: usize,
    ) {
        match self.state {
            State::Closed | State::Draining => return,
            State::Closing => {
                // Answer with CLOSE again, to the 1st, 2nd, 4th, 8th... packet received
                // meanwhile (RFC 9000 section 10.2.1): a peer whose own CLOSE crossed ours
                // answers each of our CLOSEs too, and one answer per packet would keep both
                // sending to each other for the whole closing period (found by the
                // established_session fuzz target, where no time passes).
                self.closing_received = self.closing_received.saturating_add(1);
                if self.closing_received.is_power_of_two() {
                    self.close_pending = true;
                }
                return;
            }
            _ => {}
        }
        let tls = self.config.crypto.is_tls();
        let pn_trunc = match &packet.header {
            Header::Retry { scid, token, .. } => {
                self.on_retry(now, *scid, token);
                return;
            }
            Header::VersionNegotiation { versions, .. } => {
                self.on_version_negotiation(versions);
                return;
            }
            Header::Initial { pn, .. } => {
                if self.side == Side::Client {
                    return;
                }
                *pn
            }
            Header::Handshake { scid, pn, .. } => {
                if self.side == Side::Server {
                    return;
                }
                if self.state == State::Handshake {
                    self.remote_cid = *scid;
                }
                *pn
            }
            Header::Short { pn, .. } => {
                if tls {
                    if self.keys.is_none() {
                        // Sealed with keys we do not hold (yet): cannot be authenticated.
                        self.stats.unauthenticated_packets += 1;
                        return;
                    }
                } else if self.state == State::Handshake {
                    // The client cannot use short packets before our HELLO; the server cannot
                    // send them before the client's handshake completed. Drop.
                    return;
                }
                if self.side == Side::Server && !self.handshake_confirmed {
                    self.handshake_confirmed = true;
                }
                *pn
            }
        };
        let sealed = matches!(packet.header, Header::Short { .. }) && tls;
        // With TLS, a cleartext packet after the handshake is never believed. The client may
        // still be waiting for proof that we hold the keys: a sealed PING gives it.
        let mut close_only = false;
        if tls && !sealed && self.keys.is_some() {
            if self.keys_confirmed {
                self.stats.unauthenticated_packets += 1;
                if self.side == Side::Server && self.state == State::Established {
                    self.ping_pending = true;
                }
                return;
            }
            // The client between its Finished and the server's first sealed packet: a
            // refusal (a cleartext CLOSE with the server's reason) must still reach it.
            close_only = true;
        }
        let expected = self.largest_received.map_or(0, |(pn, _)| pn + 1);
        let pn = decode_packet_number(pn_trunc, expected);
        if self.received.contains(pn)
            || self
                .received
                .min()
                .is_some_and(|min| pn < min && self.received.range_count() >= MAX_RECEIVED_RANGES)
        {
            // A duplicate or a replay: never processed twice.
            self.stats.duplicate_packets += 1;
            // The peer sent it again, so our ACK went missing: acknowledge at once.
            self.ack_pending = true;
            self.ack_immediate = true;
            return;
        }
        if !sealed {
            let how = if close_only {
                Arrival::CloseOnly
            } else {
                Arrival::Received
            };
            self.process_packet(now, remote, pn, packet.payload, datagram_len, how);
            self.process_rebuilt(now, remote);
            return;
        }
        let mut plain = std::mem::take(&mut self.open_buf);
        plain.clear();
        plain.extend_from_slice(packet.payload);
        let opened = self
            .keys
            .as_mut()
            .and_then(|k| k.open.open(pn, packet.header_bytes, &mut plain));
        match opened {
            None => self.stats.unauthenticated_packets += 1,
            Some(len) => {
                if !self.keys_confirmed {
                    // The server's first sealed packet: it holds the keys; we are established.
                    self.keys_confirmed = true;
                    self.try_establish(now);
                }
                self.process_packet(
                    now,
                    remote,
                    pn,
                    &plain[..len],
                    datagram_len,
                    Arrival::Received,
                );
            }
        }
        self.open_buf = plain;
        self.process_rebuilt(now, remote);
    }

    /// Applies the frames of an authentic (or, without TLS, accepted) packet number `pn`.
    /// `how` it came: under [`Arrival::CloseOnly`] only a CLOSE frame takes effect.
    pub(super) fn process_packet(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        pn: u64,
        payload: &[u8],
        datagram_len: usize,
        how: Arrival,
    ) {
        // Decode every frame before acting on any: a malformed packet changes nothing.
        let frames: Result<Vec<Frame<'_>>, _> = FrameIter::new(payload).collect();
        let frames = match frames {
            Ok(f) => f,
            Err(e) => {
                self.stats.malformed_packets += 1;
                trace!(side = %self.side, error = %e, "dropping packet with malformed frames");
                return;
            }
        };
        if how == Arrival::CloseOnly {
            if let Some(close) = frames.iter().find(|f| matches!(f, Frame::Close(_))) {
                self.apply_frame(now, remote, close);
            }
            return;
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram_len as u64;

        let newest = self
            .largest_received
            .is_none_or(|(largest, _)| pn > largest);
        let in_order = self
            .largest_received
            .is_some_and(|(largest, _)| pn == largest + 1);
        if remote != self.remote {
            // Handshake packets come only from the address that proved itself; later, a newer
            // packet from elsewhere starts path validation (reordered old ones do not).
            if self.state != State::Established {
                return;
            }
            if newest {
                self.on_new_path(now, remote);
            }
        }

        let mut ack_eliciting = false;
        for frame in &frames {
            ack_eliciting |= frame.is_ack_eliciting();
            self.apply_frame(now, remote, frame);
            if self.is_closed() {
                return;
            }
        }
        self.received.insert_one(pn);
        self.received.truncate_low(MAX_RECEIVED_RANGES);
        if frames.iter().any(|f| matches!(f, Frame::FecSource)) {
            self.fec_rx.on_source(pn, payload, &self.received);
        }
        if newest {
            let skipped_from = self.largest_received.map_or(pn, |(largest, _)| largest + 1);
            self.on_arrival(now, skipped_from..pn);
            self.largest_received = Some((pn, now));
        } else {
            self.on_gap_filled(pn, how == Arrival::Rebuilt);
        }
        if ack_eliciting {
            self.owe_ack(now, in_order, datagram_len);
        }
        self.last_received = Some(now);
        if let Some(idle) = self.idle_timeout {
            if self.state == State::Established {
                self.timers.set(Timer::Idle, now + idle);
            }
        }
        self.drain_stream_events();
        self.check_graceful_close(now);
    }

    /// An ack-eliciting packet arrived: an ACK is owed, at once or within the ACK delay (see
    /// [`TransportConfig::ack_delay`]).
    ///
    /// [`TransportConfig::ack_delay`]: crate::config::TransportConfig::ack_delay
    fn owe_ack(&mut self, now: Instant, in_order: bool, datagram_len: usize) {
        self.ack_pending = true;
        self.unacked_received_bytes = self.unacked_received_bytes.saturating_add(datagram_len);
        let delay = self.config.max_ack_delay();
        if !in_order
            || delay.is_zero()
            || self.state != State::Established
            || self.unacked_received_bytes >= 2 * self.max_datagram
        {
            self.ack_immediate = true;
        } else if self.ack_deadline.is_none() {
            let at = now + delay;
            self.ack_deadline = Some(at);
            self.timers.set(Timer::Ack, at);
        }
    }

    fn apply_frame(&mut self, now: Instant, remote: SocketAddr, frame: &Frame<'_>) {
        let established = self.state == State::Established;
        let result = match frame {
            Frame::Padding | Frame::Ping => Ok(()),
            Frame::Ack(ack) => {
                self.on_ack_frame(now, ack);
                Ok(())
            }
            Frame::Hello(body) => {
                self.on_hello(now, body);
                Ok(())
            }
            Frame::Close(close) => {
                let reason = String::from_utf8_lossy(close.reason).into_owned();
                let error = if self.state == State::Handshake {
                    ConnectionError::HandshakeFailed(reason)
                } else {
                    ConnectionError::PeerClosed {
                        code: close.code,
                        reason,
                    }
                };
                debug!(side = %self.side, %error, "peer closed the connection");
                self.state = State::Draining;
                self.streams.abandon_all();
                self.sent.drain_all();
                self.timers.clear();
                self.timers.set(Timer::Close, now + self.closing_period());
                self.finish_with(error);
                Ok(())
            }
            Frame::PathChallenge(data) => {
                self.on_path_challenge(remote, *data);
                Ok(())
            }
            Frame::PathResponse(data) => {
                self.on_path_response(data);
                Ok(())
            }
            Frame::Crypto { offset, data } => {
                if let Some(tls) = &mut self.tls {
                    if let Err(f) = tls.on_crypto(*offset, data) {
                        self.tls_failed(now, f);
                        return;
                    }
                    self.try_establish(now);
                }
                Ok(())
            }
            _ if !established => Ok(()), // stream frames before the handshake: ignore
            Frame::Stream(s) => {
                let r = self.streams.on_stream_frame(s);
                self.drain_stream_events();
                r
            }
            Frame::Reset {
                id,
                code,
                final_size,
            } => self.streams.on_reset(*id, *code, *final_size),
            Frame::ResetToken(token) => {
                if self.side == Side::Client {
                    self.peer_reset_token = Some(ResetToken(*token));
                }
                Ok(())
            }
            Frame::NewToken(token) => {
                if self.side == Side::Client {
                    self.new_address_token = Some(token.to_vec());
                }
                Ok(())
            }
            Frame::Datagram(d) => {
                if self
                    .datagrams
                    .on_frame(now, d, self.config.max_datagram_payload)
                {
                    self.events.push_back(Event::DatagramReceived);
                }
                Ok(())
            }
            Frame::FecSource => Ok(()),
            Frame::FecRepair(repair) => {
                self.on_fec_repair(repair);
                Ok(())
            }
            Frame::LossReport(report) => {
                self.on_loss_report(*report);
                Ok(())
            }
            Frame::MaxData(max) => {
                self.streams.on_max_data(*max);
                Ok(())
            }
            Frame::MaxStreamData { id, max } => self.streams.on_max_stream_data(*id, *max),
            Frame::MaxStreams(max) => {
                let could = self.streams.can_open();
                self.streams.on_max_streams(*max);
                if !could && self.streams.can_open() {
                    self.events.push_back(Event::StreamsAvailable);
                }
                Ok(())
            }
        };
        if let Err(v) = result {
            self.protocol_error(now, v.code, v.reason);
        }
    }
}
