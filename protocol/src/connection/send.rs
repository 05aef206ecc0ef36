//! Packet building: what the next datagrams hold and whether they may leave now. A packet gets
//! its header, an ACK when one is owed, then the frames owed in order (HELLO, CRYPTO, tokens,
//! stream control, PING, datagrams, stream data), within the congestion window and the pacer; it is padded
//! and sealed, and remembered for loss detection. Batching holds small writes and lone ACKs back
//! briefly; tail duplication sends the end of a small burst twice (unless forward error
//! correction is in use: then sources carry FEC_SOURCE, and owed repairs leave in packets of
//! their own, first under a `K/N` code and after waiting stream data in `auto`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Connection, State, Timer, Transmit};
use crate::crypto::TAG_LEN;
use crate::recovery::{FecCover, SentFrame, SentPacket};
use crate::streams::SMALLEST_USEFUL_STREAM_FRAME;
use crate::wire::coding::BufMutExt;
use crate::wire::frame::{self, AckFrame, Frame};
use crate::wire::ids::Side;
use crate::wire::packet::{self, encode_header, Header};
use crate::wire::stateless_reset::{MIN_RESET_LEN, RESET_TOKEN_LEN};

/// Most ACK ranges sent in one ACK frame.
const MAX_ACK_RANGES_SENT: usize = 32;
/// How long after a loss a path counts as lossy, for tail duplication of many streams' small
/// messages (see [`TransportConfig::tail_duplication`]).
///
/// [`TransportConfig::tail_duplication`]: crate::config::TransportConfig::tail_duplication
const LOSSY_PATH_MEMORY: Duration = Duration::from_secs(10);

/// Where the parts of a packet being built start in the output buffer.
#[derive(Debug, Clone, Copy)]
struct PacketLayout {
    start: usize,
    payload: usize,
    /// A client Initial: padded to the minimum Initial size.
    initial: bool,
    /// A client's short-header packet: padded so that a stateless reset can answer it.
    resettable: bool,
    /// Sealed with the packet keys when complete.
    sealed: bool,
}

impl Connection {
    /// Whether packets go as cleartext handshake packets (long headers) rather than short ones.
    fn in_handshake_packets(&self) -> bool {
        match (self.config.crypto.is_tls(), self.side) {
            // Sealed short packets once both ends hold the keys (`keys_confirmed` implies keys).
            (true, _) => !self.keys_confirmed,
            (false, Side::Client) => {
                self.state == State::Handshake
                    || (self.state == State::Closing && self.peer_settings.is_none())
            }
            (false, Side::Server) => !self.handshake_confirmed,
        }
    }

    /// Appends a packet header, long (handshake) or short.
    fn header(&self, pn: u64, long: bool, out: &mut Vec<u8>) -> PacketLayout {
        let start = out.len();
        let pn32 = pn as u32;
        let header = match (long, self.side) {
            (true, Side::Client) => Header::Initial {
                version: packet::VERSION,
                dcid: self.remote_cid,
                scid: self.local_cid,
                token: self
                    .retry_token
                    .as_deref()
                    .or(self.address_token.as_deref())
                    .unwrap_or(&[]),
                pn: pn32,
            },
            (true, Side::Server) => Header::Handshake {
                version: packet::VERSION,
                dcid: self.remote_cid,
                scid: self.local_cid,
                pn: pn32,
            },
            (false, _) => Header::Short {
                dcid: self.remote_cid,
                pn: pn32,
            },
        };
        encode_header(&header, out);
        PacketLayout {
            start,
            payload: out.len(),
            initial: long && self.side == Side::Client,
            resettable: !long && self.side == Side::Client,
            sealed: !long && self.config.crypto.is_tls(),
        }
    }

    /// Where the packet being built must end: its AEAD tag needs room.
    fn packet_limit(&self, layout: &PacketLayout) -> usize {
        layout.start + self.max_datagram - if layout.sealed { TAG_LEN } else { 0 }
    }

    /// Completes the packet at the end of `buf`: pads a client Initial (amplification rule),
    /// seals a short packet under TLS.
    fn finish_packet(&mut self, pn: u64, layout: &PacketLayout, buf: &mut Vec<u8>) {
        self.pad_packet(layout, buf);
        self.seal_packet(pn, layout, buf);
    }

    /// Pads a client Initial (amplification rule) and a client's short packet (so that a
    /// stateless reset can answer it).
    fn pad_packet(&self, layout: &PacketLayout, buf: &mut Vec<u8>) {
        if layout.initial {
            let min = layout.start + packet::MIN_INITIAL_SIZE;
            if buf.len() < min {
                buf.resize(min, 0);
            }
        }
        if layout.resettable {
            // A reset must be shorter than the packet that causes it, and no shorter than
            // `MIN_RESET_LEN`: a client's packets are at least one byte longer, so a server
            // that lost the connection can always answer (ACK-only packets of the plaintext
            // mode pay a few bytes of PADDING for it).
            let tag = if layout.sealed { TAG_LEN } else { 0 };
            let min = layout.start + MIN_RESET_LEN + 1 - tag;
            if buf.len() < min {
                buf.resize(min, 0);
            }
        }
    }

    /// Seals a short packet under TLS.
    fn seal_packet(&mut self, pn: u64, layout: &PacketLayout, buf: &mut Vec<u8>) {
        if layout.sealed {
            if let Some(keys) = &mut self.keys {
                keys.seal.seal(pn, buf, layout.start, layout.payload);
            }
        }
    }

    /// Writes an ACK frame for the packets received above the [`ack_floor`](Self::ack_floor)
    /// (the largest range whatever the floor, so there is always one). Returns the largest
    /// packet number it acknowledges, if it wrote one.
    fn write_ack(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<u64> {
        let (_, at) = self.largest_received?;
        let top = self.received.iter().next_back()?;
        let delay = now.saturating_duration_since(at).as_micros() as u64;
        let lowest = self.ack_floor.map_or(0, |f| f.saturating_add(1));
        let written = if top.end > lowest {
            let above = self.received.iter().rev();
            let above = above
                .take_while(|r| r.end > lowest)
                .map(|r| r.start.max(lowest)..r.end);
            AckFrame::encode(above, delay, MAX_ACK_RANGES_SENT, out)
        } else {
            AckFrame::encode(std::iter::once(top.clone()), delay, 1, out)
        };
        self.ack_pending = false;
        self.ack_deadline = None;
        self.ack_immediate = false;
        self.unacked_received_bytes = 0;
        self.timers.stop(Timer::Ack);
        written.then(|| top.end - 1)
    }

    /// Whether an ACK should now leave in a packet the peer acknowledges (a data packet, or an
    /// ACK-only one given a PING). ACK-only packets are never acknowledged, so without this a
    /// connection whose ACKs all leave that way would never learn that they arrived: its
    /// [`ack_floor`](Self::ack_floor) would not rise and old gaps would stay in its ACK frames.
    /// Only while there is such a gap, and at most once per round trip (RFC 9000 section
    /// 13.2.4 suggests the same for receivers that only acknowledge).
    fn ack_needs_confirming(&self, now: Instant) -> bool {
        if self.state != State::Established {
            return false;
        }
        let lowest = self.ack_floor.map_or(0, |f| f.saturating_add(1));
        let gaps = self
            .received
            .iter()
            .rev()
            .take_while(|r| r.end > lowest)
            .nth(1)
            .is_some();
        // At least a millisecond apart: with an RTT estimate of zero (no time has passed since
        // the handshake) an ACK would be confirmed in every packet, and a datagram sized for a
        // packet without one would never leave (found by the established_session fuzz target).
        let interval = self.rtt.smoothed().max(Duration::from_millis(1));
        gaps && self.ack_confirm_sent.is_none_or(|at| now >= at + interval)
    }

    fn wants_to_send_eliciting(&self, now: Instant) -> bool {
        match self.state {
            State::Handshake => {
                self.hello_pending || self.tls.as_ref().is_some_and(|t| t.has_pending())
            }
            State::Established => {
                self.hello_pending
                    || self.ping_pending
                    || self.tokens_pending
                    || self.streams.has_pending_control()
                    || self.streams.has_pending_data()
                    || self.datagrams.has_due(now)
                    || self.fec_tx.has_repairs()
            }
            _ => false,
        }
    }

    /// Builds the next datagram(s) into `buf` (cleared first). With `max_datagrams > 1` several
    /// equal-size datagrams for the same destination may be built, for one GSO send.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        max_datagrams: usize,
    ) -> Option<Transmit> {
        buf.clear();
        match self.state {
            State::Closed | State::Draining => return None,
            State::Closing => {
                if !self.close_pending {
                    return None;
                }
                self.close_pending = false;
                let (code, reason) = self.close_frame.clone().unwrap_or_default();
                let pn = self.next_pn;
                self.next_pn += 1;
                let layout = self.header(pn, self.in_handshake_packets(), buf);
                if self.ack_pending {
                    self.write_ack(now, buf);
                }
                frame::encode_close(code, reason.as_bytes(), buf);
                self.finish_packet(pn, &layout, buf);
                self.count_sent(buf.len());
                return Some(Transmit {
                    destination: self.remote,
                    size: buf.len(),
                    segment_size: None,
                });
            }
            _ => {}
        }
        if let Some(transmit) = self.poll_path_frame(now, buf) {
            return Some(transmit);
        }
        if let Some(transmit) = self.poll_mtu_probe(now, buf) {
            return Some(transmit);
        }
        let mut count = 0;
        let mut segment = 0;
        while count < max_datagrams.max(1) {
            let start = buf.len();
            if !self.build_packet(now, buf) {
                break;
            }
            let len = buf.len() - start;
            count += 1;
            if count == 1 {
                segment = len;
            } else if len > segment {
                // Cannot happen (full packets are the largest), but never emit a bad GSO batch.
                buf.truncate(start);
                count -= 1;
                break;
            }
            if len < segment || len < self.max_datagram {
                break;
            }
        }
        if count == 0 {
            return None;
        }
        Some(Transmit {
            destination: self.remote,
            size: buf.len(),
            segment_size: (count > 1).then_some(segment),
        })
    }

    fn count_sent(&mut self, len: usize) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
    }

    pub(super) fn send_path_frame(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        addr: SocketAddr,
        frame: Frame<'_>,
    ) -> Transmit {
        let pn = self.next_pn;
        self.next_pn += 1;
        let layout = self.header(pn, self.in_handshake_packets(), buf);
        if self.ack_pending {
            self.write_ack(now, buf);
        }
        frame.encode(buf);
        self.finish_packet(pn, &layout, buf);
        self.sent.push(pn, None);
        self.count_sent(buf.len());
        Transmit {
            destination: addr,
            size: buf.len(),
            segment_size: None,
        }
    }
    /// A path MTU probe, if one is due (see [`crate::mtud`]): a sealed short packet of the
    /// probed size holding a PING (and an owed ACK) and padding. It is not a packet in flight:
    /// its loss is neither retransmitted nor congestion.
    fn poll_mtu_probe(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if self.state != State::Established || self.in_handshake_packets() {
            return None;
        }
        let size = self.mtud.next_probe(now)?;
        let window = self.cc.window();
        if self.sent.bytes_in_flight() + u64::from(size) > window {
            // Asked again at the next transmit: the probe waits for room, as data would.
            return None;
        }
        let pn = self.next_pn;
        self.next_pn += 1;
        let layout = self.header(pn, false, buf);
        if self.ack_pending {
            self.write_ack(now, buf);
        }
        buf.put_varint(frame::types::PING);
        let tag = if layout.sealed { TAG_LEN } else { 0 };
        buf.resize(layout.start + usize::from(size) - tag, 0);
        self.finish_packet(pn, &layout, buf);
        self.sent.push(pn, None);
        self.count_sent(buf.len());
        let peer_ack_delay = self
            .peer_settings
            .as_ref()
            .map_or(Duration::ZERO, |s| s.max_ack_delay);
        let deadline = now + crate::mtud::probe_timeout(self.rtt.smoothed(), peer_ack_delay);
        self.mtud.on_probe_sent(pn, size, deadline);
        Some(Transmit {
            destination: self.remote,
            size: buf.len(),
            segment_size: None,
        })
    }

    /// Batching: true while stream data that would not fill a packet should wait for more
    /// (at most [`TransportConfig::batch_delay`]). Anything else owed ends the wait.
    ///
    /// [`TransportConfig::batch_delay`]: crate::config::TransportConfig::batch_delay
    fn batch_holds(&mut self, now: Instant) -> bool {
        let delay = self.config.batch_delay;
        let urgent = self.state != State::Established
            || self.hello_pending
            || self.ping_pending
            || self.tokens_pending
            || self.probe_credit > 0
            || self.streams.has_pending_control()
            || self.datagrams.has_due(now)
            || self.fec_tx.has_repairs();
        // Room for stream data in one packet: the datagram less headers, frame headers and tag.
        let room = self.max_datagram.saturating_sub(64) as u64;
        if delay.is_zero() || urgent || self.streams.pending_data_at_least(room) {
            self.end_batch();
            return false;
        }
        let since = *self.batch_since.get_or_insert(now);
        if now >= since + delay {
            self.end_batch();
            return false;
        }
        // Armed on every hold, not only the first: a timer of an earlier batch may have fired
        // (and been used up) in between.
        self.timers.set_earliest(Timer::Batch, since + delay);
        true
    }

    fn end_batch(&mut self) {
        self.batch_since = None;
        self.timers.stop(Timer::Batch);
    }

    /// True while an owed acknowledgement with nothing to carry it should wait for data (see
    /// [`TransportConfig::ack_delay`]; the ACK's delay field tells the peer, so its RTT
    /// estimate is unaffected).
    ///
    /// [`TransportConfig::ack_delay`]: crate::config::TransportConfig::ack_delay
    fn ack_held(&self, now: Instant) -> bool {
        if self.ack_immediate || self.state != State::Established {
            return false;
        }
        self.ack_deadline.is_some_and(|at| now < at)
    }

    /// Server: the client's reset and address tokens, if owed and there is room.
    fn write_tokens(&mut self, buf: &mut Vec<u8>, limit: usize, frames: &mut Vec<SentFrame>) {
        if !self.tokens_pending {
            return;
        }
        let Some((reset, address)) = &self.tokens_for_peer else {
            return;
        };
        let needed = 2 + RESET_TOKEN_LEN + 3 + address.len();
        if buf.len() + needed > limit {
            return;
        }
        Frame::ResetToken(reset.0).encode(buf);
        Frame::NewToken(address).encode(buf);
        frames.push(SentFrame::PeerTokens);
        self.tokens_pending = false;
    }

    /// Appends one packet to `buf` if there is anything to send; returns whether it did.
    fn build_packet(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        let wants = self.wants_to_send_eliciting(now) && !self.batch_holds(now);
        let mut may_elicit = false;
        if wants {
            let cwnd_open = self.sent.bytes_in_flight() + self.max_datagram as u64
                <= self.cc.window()
                || self.probe_credit > 0
                || self.hello_pending && self.state == State::Handshake;
            if cwnd_open {
                let rate = self.cc.pacing_rate(&self.rtt);
                match self.pacer.delay(now, rate, self.max_datagram as u64) {
                    None => may_elicit = true,
                    Some(at) => self.timers.set(Timer::Pacing, at),
                }
            }
        } else if self.state == State::Established {
            self.cc.on_app_limited(self.sent.bytes_in_flight());
        }
        if !may_elicit && (!self.ack_pending || self.ack_held(now)) {
            return false;
        }
        let start = buf.len();
        let pn = self.next_pn;
        let tls = self.config.crypto.is_tls();
        // Under TLS the server's HELLO always travels in cleartext, even when sent again after
        // the handshake: the client needs it to derive the keys.
        let long = self.in_handshake_packets()
            || (tls && may_elicit && self.hello_pending && self.side == Side::Server);
        let layout = self.header(pn, long, buf);
        let mut limit = self.packet_limit(&layout);
        // Forward error correction: an owed repair leaves first, in a packet of its own (an
        // ACK waits for the next packet: the repair must fit whole). Otherwise the packet may
        // be a source that repairs will cover, leaving room for a repair of it to fit a packet.
        // The room is kept only if the next datagram due still fits a packet without it
        // (datagrams are sized for a whole packet unless they asked for FEC): else that
        // datagram could never leave, and every packet built for it would go out empty.
        let short = !long && self.state == State::Established;
        let repair_packet = may_elicit && short && self.repair_due();
        let reserve_fits = self
            .datagrams
            .next_frame_len(now)
            .is_none_or(|len| len + crate::fec::SOURCE_RESERVE <= self.datagram_room());
        let may_be_source = may_elicit && short && !repair_packet && reserve_fits;
        let streams_source = may_be_source && self.fec_protects();
        let datagram_source = may_be_source && self.fec_negotiated() && self.datagrams.fec_due();
        if streams_source || datagram_source {
            limit -= crate::fec::SOURCE_RESERVE;
        }
        // Most ACKs leave at once in ACK-only packets, which the peer never acknowledges, so
        // once per round trip (while old gaps are still being reported) an ACK rides in a packet
        // that will be acknowledged: a data packet, or an ACK-only one given a PING.
        let confirm_ack = !long
            && !repair_packet
            && (may_elicit || (!wants && self.ack_pending))
            && self.ack_needs_confirming(now);
        let acked_up_to = if (self.ack_pending && !repair_packet) || confirm_ack {
            self.write_ack(now, buf)
        } else {
            None
        };
        if acked_up_to.is_some() && !long {
            if let Some(report) = self.loss_report_owed(now) {
                Frame::LossReport(report).encode(buf);
            }
        }
        let mut frames = Vec::new();
        // The sources whose loss counts from the repair this packet carries, if any.
        let mut covered = None;
        if repair_packet {
            if let Some(repair) = self.next_fec_repair(now, limit.saturating_sub(buf.len())) {
                buf.extend_from_slice(&repair.frame);
                frames.push(SentFrame::FecRepair);
                covered = repair.covers;
            }
        }
        let repair_written = !frames.is_empty();
        let mut wrote_fec_datagram = false;
        if confirm_ack && acked_up_to.is_some() {
            if !may_elicit {
                buf.put_varint(frame::types::PING);
                frames.push(SentFrame::Ping);
            }
            self.ack_confirm_sent = Some(now);
        }
        if may_elicit && !repair_written {
            if self.hello_pending {
                buf.put_varint(frame::types::HELLO);
                buf.put_length_prefixed(&self.local_hello);
                frames.push(SentFrame::Hello);
                self.hello_pending = false;
            }
            if long {
                if let Some(tls) = &mut self.tls {
                    tls.write_frames(buf, limit, &mut frames);
                }
            }
            // Stream and control frames only ever travel sealed under TLS.
            if self.state == State::Established && !(tls && long) {
                self.write_tokens(buf, limit, &mut frames);
                self.streams.write_control(buf, limit, &mut frames);
                if self.ping_pending {
                    buf.put_varint(frame::types::PING);
                    frames.push(SentFrame::Ping);
                    self.ping_pending = false;
                }
                // Datagrams before stream data: they never wait behind a bulk transfer.
                let (rtt, room) = (self.rtt.smoothed(), self.datagram_room());
                wrote_fec_datagram = self
                    .datagrams
                    .write(now, rtt, room, buf, limit, &mut frames);
                self.streams.write_data(buf, limit, &mut frames);
                for f in &frames {
                    if let SentFrame::Stream { len, .. } = f {
                        self.stats.stream_bytes_sent += u64::from(*len);
                    }
                }
            }
        }
        // Nothing to carry after all (what was due does not fit this packet: a datagram sized
        // for a short header while handshake packets are still long, or a stale repair): no
        // packet, rather than an empty one, and another, without end at this instant.
        if frames.is_empty() && acked_up_to.is_none() {
            buf.truncate(start);
            return false;
        }
        // Frames that filled a packet to within one frame of its limit leave it a few bytes
        // short: padded to the limit, every full packet is `max_datagram` long, so a run of
        // them leaves as one GSO batch (`poll_transmit` ends a batch at a shorter packet).
        if may_elicit
            && !long
            && buf.len() < limit
            && limit - buf.len() < SMALLEST_USEFUL_STREAM_FRAME
        {
            buf.resize(limit, 0);
        }
        // A source carries FEC_SOURCE so that the receiver keeps a copy of it. Packets of
        // datagrams alone are sources only for datagrams that asked for it (`Protection::Fec`):
        // the others have their own protection.
        let source = (datagram_source || streams_source) && wrote_fec_datagram
            || streams_source
                && frames
                    .iter()
                    .any(|f| !matches!(f, SentFrame::Datagram | SentFrame::Ping));
        if source {
            buf.put_varint(frame::types::FEC_SOURCE);
        }
        self.pad_packet(&layout, buf);
        if source {
            // A lone stream message's repair follows it at once; datagrams (a steady flow)
            // fill their group over its hold.
            let lone_allowed = !wrote_fec_datagram;
            self.on_fec_source_sent(now, pn, &buf[layout.payload..], lone_allowed);
        }
        self.seal_packet(pn, &layout, buf);
        let len = buf.len() - start;
        if repair_written {
            self.fec_tx.on_repair_sent(len);
        }
        self.next_pn += 1;
        if frames.is_empty() {
            self.sent.push(pn, None);
        } else {
            // Only packets the peer acknowledges can tell that the ACK arrived.
            if let Some(largest) = acked_up_to {
                frames.push(SentFrame::Ack { largest });
            }
            self.probe_credit = self.probe_credit.saturating_sub(1);
            let delivery = self
                .cc
                .on_sent(now, len as u64, self.sent.bytes_in_flight());
            self.pacer.on_sent(now, len as u64);
            self.sent.push(
                pn,
                Some(SentPacket {
                    pn,
                    time: now,
                    size: len as u32,
                    frames,
                    delivery,
                    cover: FecCover::Uncovered,
                }),
            );
            if let Some(sources) = covered {
                self.cover_fec_sources(now, pn, sources);
            }
            self.last_sent = now;
            self.maybe_duplicate_tail(pn);
        }
        self.count_sent(len);
        true
    }

    /// If packet `pn` ends a small burst, owes its stream frames once more, so that they leave
    /// again in the next packet (see [`TransportConfig::tail_duplication`]).
    ///
    /// [`TransportConfig::tail_duplication`]: crate::config::TransportConfig::tail_duplication
    fn maybe_duplicate_tail(&mut self, pn: u64) {
        let copies = std::mem::take(&mut self.duplicating);
        // Forward error correction, when both ends use it, protects small bursts instead.
        if !self.config.tail_duplication || self.fec_negotiated() {
            return;
        }
        if self.streams.has_pending_data() {
            return;
        }
        let Some(frames) = self.sent.frames_of(pn) else {
            return;
        };
        let streams: Vec<SentFrame> = frames
            .iter()
            .filter(|f| match f {
                SentFrame::Stream { id, offset, .. } => !copies.contains(&(*id, *offset)),
                _ => false,
            })
            .cloned()
            .collect();
        if streams.is_empty() {
            return;
        }
        // A small burst: little in flight on the whole connection, or (many connections each
        // sending a small message at once, on a path that lost packets in the last seconds)
        // only small messages on the streams in this packet.
        let small = 3 * self.max_datagram;
        let quiet_connection = self.sent.bytes_in_flight() <= small as u64;
        let lossy = self
            .last_loss
            .is_some_and(|t| self.last_sent.saturating_duration_since(t) < LOSSY_PATH_MEMORY);
        let small_messages = lossy
            && streams.iter().all(|f| match f {
                SentFrame::Stream { id, .. } => self.streams.unacknowledged(*id) <= small,
                _ => true,
            });
        if !quiet_connection && !small_messages {
            return;
        }
        for f in streams {
            if let SentFrame::Stream {
                id,
                offset,
                len,
                fin,
            } = f
            {
                self.streams.on_stream_lost(id, offset, len, fin);
                self.duplicating.push((id, offset));
            }
        }
    }
}
