//! The handshake: the HELLO settings checked against ours, the TLS handshake carried in CRYPTO
//! frames until both ends hold the packet keys, and the client's answers to what a server may
//! say before any state exists (a Retry, a version negotiation). [`Connection::try_establish`]
//! is the one place a connection becomes established.

use std::time::Instant;

use tracing::debug;

use super::{close_code, Connection, ConnectionError, Event, State, Timer};
use crate::congestion::pacing::Pacer;
use crate::crypto::TlsFailure;
use crate::mtud::Mtud;
use crate::recovery::SentFrame;
use crate::wire::ids::{ConnectionId, Side};
use crate::wire::packet;
use crate::wire::settings::Settings;

impl Connection {
    pub(super) fn on_retry(&mut self, now: Instant, scid: ConnectionId, token: &[u8]) {
        if self.side != Side::Client || self.state != State::Handshake || self.retry_token.is_some()
        {
            return;
        }
        if scid != self.initial_dcid {
            return;
        }
        debug!("retry received: echoing the address-validation token");
        self.retry_token = Some(token.to_vec());
        // Everything sent so far is void: send the HELLO (and the TLS ClientHello) again at
        // once, uncounted as loss.
        for packet in self.sent.drain_all() {
            for frame in &packet.frames {
                if let (SentFrame::Crypto { offset, len }, Some(tls)) = (frame, &mut self.tls) {
                    tls.on_lost(*offset, *len);
                }
            }
        }
        self.hello_pending = true;
        self.pacer = Pacer::new(now, self.max_datagram as u64);
    }

    pub(super) fn on_version_negotiation(&mut self, versions: &[u8]) {
        if self.side != Side::Client || self.state != State::Handshake {
            return;
        }
        let theirs: Vec<String> = versions
            .chunks_exact(4)
            .map(|c| format!("{:#x}", u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let ours = packet::VERSION;
        if versions
            .chunks_exact(4)
            .any(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) == ours)
        {
            return; // a forged or stale negotiation: the server speaks our version
        }
        let reason = format!(
            "version mismatch: client speaks {ours:#x}, server speaks {}",
            theirs.join(", ")
        );
        self.state = State::Closed;
        self.timers.clear();
        self.finish_with(ConnectionError::HandshakeFailed(reason));
    }

    pub(super) fn on_hello(&mut self, now: Instant, body: &[u8]) {
        if self.peer_settings.is_some() {
            return; // a retransmission
        }
        let peer = match Settings::decode(body) {
            Ok(s) => s,
            Err(e) => {
                self.protocol_error(
                    now,
                    close_code::FRAME_ENCODING,
                    format!("malformed HELLO: {e}"),
                );
                return;
            }
        };
        let (ours, theirs) = match self.side {
            Side::Client => ("client", "server"),
            Side::Server => ("server", "client"),
        };
        if let Err(mismatch) = self.local_settings.check_required(ours, &peer, theirs) {
            // Both ends log this same line: the server sends it in its CLOSE.
            let reason = mismatch.to_string();
            self.enter_closing(
                now,
                close_code::SETTINGS_MISMATCH,
                reason.clone(),
                ConnectionError::HandshakeFailed(reason),
            );
            return;
        }
        self.max_datagram = self.max_datagram.min(usize::from(peer.max_datagram_size));
        let ceiling = if self.config.path_mtu_discovery {
            self.config.largest_datagram().min(peer.max_datagram_size)
        } else {
            self.max_datagram as u16
        };
        self.mtud = Mtud::new(self.max_datagram as u16, ceiling);
        self.idle_timeout = self.local_settings.negotiated_idle_timeout(&peer);
        self.streams.apply_peer_settings(
            peer.initial_max_data,
            peer.initial_max_stream_data,
            peer.initial_max_streams,
        );
        self.peer_settings = Some(peer);
        self.peer_hello = body.to_vec();
        if self.side == Side::Server {
            self.hello_pending = true;
        }
        self.try_establish(now);
    }

    /// Moves to `Established` once everything the handshake needs is there: the peer's
    /// settings, and with TLS the packet keys held by both ends.
    pub(super) fn try_establish(&mut self, now: Instant) {
        if self.state != State::Handshake || self.peer_settings.is_none() {
            return;
        }
        if self.config.crypto.is_tls() {
            if self.keys.is_none() {
                let Some(tls) = &self.tls else {
                    return;
                };
                if !tls.is_complete() {
                    return;
                }
                match tls.packet_keys(&self.exporter_context()) {
                    Ok(keys) => self.keys = Some(Box::new(keys)),
                    Err(f) => {
                        self.tls_failed(now, f);
                        return;
                    }
                }
                // The server completes only on the client's Finished: the client has the keys.
                if self.side == Side::Server {
                    self.keys_confirmed = true;
                    self.handshake_confirmed = true;
                }
                debug!(side = %self.side, remote = %self.remote, "TLS handshake complete: packet keys in place");
            }
            if !self.keys_confirmed {
                return;
            }
            // Both ends hold the keys: handshake bytes are never needed again.
            self.tls = None;
        }
        self.state = State::Established;
        self.tokens_pending = self.tokens_for_peer.is_some();
        self.timers.stop(Timer::Idle);
        if let Some(idle) = self.idle_timeout {
            self.timers.set(Timer::Idle, now + idle);
        }
        debug!(side = %self.side, remote = %self.remote, crypto = self.config.crypto.mode(), "connection established");
        self.events.push_back(Event::Connected);
    }

    /// Both HELLO bodies, client's first, each length-prefixed: binds the settings to the keys.
    fn exporter_context(&self) -> Vec<u8> {
        let (client, server) = match self.side {
            Side::Client => (&self.local_hello, &self.peer_hello),
            Side::Server => (&self.peer_hello, &self.local_hello),
        };
        let mut context = Vec::with_capacity(client.len() + server.len() + 4);
        for hello in [client, server] {
            context.extend_from_slice(&(hello.len() as u16).to_be_bytes());
            context.extend_from_slice(hello);
        }
        context
    }

    pub(super) fn tls_failed(&mut self, now: Instant, failure: TlsFailure) {
        debug!(side = %self.side, remote = %self.remote, error = %failure.local, "TLS handshake failed");
        self.enter_closing(
            now,
            close_code::CRYPTO_ERROR,
            failure.remote,
            ConnectionError::HandshakeFailed(failure.local),
        );
    }
}
