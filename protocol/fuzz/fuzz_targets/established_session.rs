//! A live connection fed arbitrary frames: a plaintext client and server complete their
//! handshake in memory, then the input plays an application on both ends (streams opened,
//! written, finished, reset, read, time passing, datagrams of any size and protection sent and
//! received) and an on-path tamperer that puts its own frame
//! bytes into the next real packet either way: before the packet's frames, or instead of them.
//! The packets stay well formed (the right connection ID, the packet number the sender gave
//! them), so the frames reach the connection's frame handling on either side, where the
//! stateless-path targets never go. A datagram may also be made to arrive from a new address
//! (a NAT rebinding), so the tamperer's frames meet path validation too. The input's first
//! byte picks forward error correction's mode on both ends (`auto`, `1/2` or `4/6`), so repairs
//! are computed and the tamperer's FEC frames meet a receiver that solves them.
//!
//! Checked for every input: nothing panics (overflow checks are on in fuzz builds); neither end
//! sends without end at one instant (at most [`MAX_DATAGRAMS_PER_INSTANT`]); a connection not
//! yet closed always has a timer (one that had none would wait forever for a vanished peer);
//! and once the input is played, both ends run on for 40 s of virtual time (past the default
//! idle timeout), so every timer path runs with whatever state the frames left.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::connection::Event;
use ferry_protocol::datagrams::Protection;
use ferry_protocol::fec::FecMode;
use ferry_protocol::endpoint::{ConnectionHandle, Endpoint};
use ferry_protocol::streams::ReadOutcome;
use ferry_protocol::wire::packet::{encode_header, Header, Packet};
use ferry_protocol::StreamId;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Datagrams both ends together may send without time moving before it counts as a livelock.
const MAX_DATAGRAMS_PER_INSTANT: usize = 20_000;
/// Operations played from one input (longer inputs are cut: each run stays short).
const MAX_OPS: usize = 64;

/// Which end a datagram goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum To {
    Server,
    Client,
}

/// Frame bytes waiting for the next short-header packet one way.
struct Tamper {
    frames: Vec<u8>,
    /// Instead of the packet's own frames (else before them).
    replace: bool,
}

/// One end: its endpoint, its connection and the streams its application knows.
struct End {
    endpoint: Endpoint,
    handle: ConnectionHandle,
    streams: Vec<StreamId>,
    tamper: Option<Tamper>,
}

impl End {
    /// Reads every readable stream and notes streams the peer opened.
    fn read_all(&mut self, now: Instant) {
        let mut buf = [0u8; 4096];
        while let Some((_, event)) = self.endpoint.poll_event() {
            match event {
                Event::StreamOpened(id) => self.streams.push(id),
                Event::DatagramReceived => {
                    let Some(conn) = self.endpoint.connection(self.handle) else {
                        return;
                    };
                    while let Some(d) = conn.recv_datagram() {
                        assert!(d.data.len() <= 65_535);
                    }
                }
                Event::StreamReadable(id) => {
                    let Some(conn) = self.endpoint.connection(self.handle) else {
                        return;
                    };
                    while let Ok(ReadOutcome::Data(n)) = conn.read(now, id, &mut buf) {
                        assert!(n > 0 && n <= buf.len());
                    }
                }
                _ => {}
            }
        }
    }
}

struct Session {
    now: Instant,
    client: End,
    server: End,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
    /// The address the next datagram to the server comes from, when it changes.
    rebind_to: Option<SocketAddr>,
    buf: Vec<u8>,
}

/// The datagram with the tamperer's frames in it, if it is a short-header packet.
fn tampered(datagram: &[u8], tamper: &Tamper) -> Option<Vec<u8>> {
    let packet = Packet::decode(datagram).ok()?;
    let Header::Short { dcid, pn } = packet.header else {
        return None;
    };
    let mut out = Vec::with_capacity(datagram.len() + tamper.frames.len());
    encode_header(&Header::Short { dcid, pn }, &mut out);
    out.extend_from_slice(&tamper.frames);
    if !tamper.replace {
        out.extend_from_slice(packet.payload);
    }
    Some(out)
}

impl Session {
    /// A plaintext client and server with the handshake completed in memory.
    fn establish(fec: FecMode) -> Option<Self> {
        let now = Instant::now();
        let client_addr: SocketAddr = "127.0.0.2:40000".parse().ok()?;
        let server_addr: SocketAddr = "127.0.0.1:9000".parse().ok()?;
        let mut client = Endpoint::new(None, [1; 32], now);
        let config = TransportConfig::default().fec(fec);
        let server = Endpoint::new(Some(ServerConfig::new(config.clone())), [2; 32], now);
        let handle = client.connect(now, server_addr, config).ok()?;
        let mut s = Session {
            now,
            client: End {
                endpoint: client,
                handle,
                streams: Vec::new(),
                tamper: None,
            },
            server: End {
                endpoint: server,
                handle,
                streams: Vec::new(),
                tamper: None,
            },
            client_addr,
            server_addr,
            rebind_to: None,
            buf: Vec::with_capacity(65_536),
        };
        let mut accepted = None;
        for _ in 0..16 {
            s.exchange();
            accepted = accepted.or_else(|| s.server.endpoint.accept());
            let established = s
                .client
                .endpoint
                .connection_ref(handle)
                .is_some_and(|c| c.is_established());
            if let (Some(h), true) = (accepted, established) {
                s.server.handle = h;
                s.client.read_all(now);
                s.server.read_all(now);
                return Some(s);
            }
        }
        panic!("a plaintext handshake in memory did not complete");
    }

    /// Delivers everything both ends send now, at once, with the tamperer's frames applied.
    fn exchange(&mut self) {
        let mut sent = 0;
        loop {
            let mut progressed = false;
            for to in [To::Server, To::Client] {
                let (from, dest) = match to {
                    To::Server => (&mut self.client, &mut self.server),
                    To::Client => (&mut self.server, &mut self.client),
                };
                while let Some(t) = from.endpoint.poll_transmit(self.now, &mut self.buf, 1) {
                    progressed = true;
                    sent += 1;
                    assert!(
                        sent <= MAX_DATAGRAMS_PER_INSTANT,
                        "endless sending at one instant"
                    );
                    let mut datagram = self.buf[..t.size].to_vec();
                    if let Some(tamper) = &dest.tamper {
                        if let Some(d) = tampered(&datagram, tamper) {
                            datagram = d;
                            dest.tamper = None;
                        }
                    }
                    let source = match to {
                        To::Server => {
                            if let Some(new) = self.rebind_to.take() {
                                self.client_addr = new;
                            }
                            self.client_addr
                        }
                        // Whatever address the server sends to reaches the client (a NAT).
                        To::Client => self.server_addr,
                    };
                    dest.endpoint.handle_datagram(self.now, source, &datagram);
                }
            }
            if !progressed {
                break;
            }
        }

        for end in [&mut self.client, &mut self.server] {
            // (A closed one waits only for its application to read the Closed event.)
            let open = end
                .endpoint
                .connection_ref(end.handle)
                .is_some_and(|c| !c.is_closed());
            if open {
                assert!(
                    end.endpoint.poll_timeout().is_some(),
                    "an open connection without a timer"
                );
            }
        }
    }

    /// Moves the clock on by `by` and runs the timers due.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        self.client.endpoint.handle_timeout(now);
        self.server.endpoint.handle_timeout(now);
    }

    /// Plays one operation from the input; then both ends exchange and read what came.
    fn play(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0..=9u8)? {
            op @ (0 | 1) => {
                let len = u.int_in_range(0..=255usize)?;
                let tamper = Tamper {
                    frames: u.bytes(len)?.to_vec(),
                    replace: u.arbitrary()?,
                };
                let end = if op == 0 {
                    &mut self.server
                } else {
                    &mut self.client
                };
                end.tamper = Some(tamper);
                // Something must carry it: an ACK-eliciting PING from the other end would do,
                // but the application's API has none, so a byte of stream data goes.
                let other = if op == 0 {
                    &mut self.client
                } else {
                    &mut self.server
                };
                if let Some(conn) = other.endpoint.connection(other.handle) {
                    let id = match other.streams.first() {
                        Some(id) => Some(*id),
                        None => conn
                            .open_stream()
                            .ok()
                            .inspect(|id| other.streams.push(*id)),
                    };
                    if let Some(id) = id {
                        let _ = conn.write(id, b"x");
                    }
                }
            }
            op @ (2..=6) => {
                let end = if u.arbitrary()? {
                    &mut self.client
                } else {
                    &mut self.server
                };
                let index = u.int_in_range(0..=end.streams.len())?;
                let Some(conn) = end.endpoint.connection(end.handle) else {
                    return Ok(());
                };
                let id = match end.streams.get(index) {
                    Some(id) => *id,
                    None => match conn.open_stream() {
                        Ok(id) => {
                            end.streams.push(id);
                            id
                        }
                        Err(_) => return Ok(()),
                    },
                };
                match op {
                    2 | 3 => {
                        let len = u.int_in_range(1..=64usize)? << (10 * usize::from(op == 3));
                        let data = vec![0xa5; len];
                        let _ = conn.write(id, &data);
                    }
                    4 => {
                        let _ = conn.finish(id);
                    }
                    5 => {
                        let _ = conn.reset(id, u.arbitrary()?);
                    }
                    _ => {
                        let _ = conn.stop_reading(id);
                    }
                }
            }
            7 => {
                let ms = u.int_in_range(0..=3_000u64)?;
                self.advance(Duration::from_millis(ms));
            }
            8 => {
                let end = if u.arbitrary()? {
                    &mut self.client
                } else {
                    &mut self.server
                };
                let len = u.int_in_range(0..=12_000usize)?;
                let protection = match u.int_in_range(0..=3u8)? {
                    0 => Protection::None,
                    1 => Protection::Duplicate,
                    2 => Protection::Adaptive,
                    _ => Protection::Fec,
                };
                let flow = u.arbitrary()?;
                let now = self.now;
                if let Some(conn) = end.endpoint.connection(end.handle) {
                    let _ = conn.send_datagram(now, flow, &vec![0x5a; len], protection);
                }
            }
            _ => {
                let port = self.client_addr.port().wrapping_add(1);
                self.rebind_to = Some(SocketAddr::new("127.0.0.3".parse().unwrap(), port));
            }
        }
        self.exchange();
        let now = self.now;
        self.client.read_all(now);
        self.server.read_all(now);
        Ok(())
    }

    /// Runs both ends, with no more input, for `span` of virtual time.
    fn run_down(&mut self, span: Duration) {
        let end = self.now + span;
        let mut steps = 0;
        while self.now < end {
            let next = [
                self.client.endpoint.poll_timeout(),
                self.server.endpoint.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else {
                return;
            };
            self.advance(next.saturating_duration_since(self.now));
            self.exchange();
            let now = self.now;
            self.client.read_all(now);
            self.server.read_all(now);
            steps += 1;
            // Timers at or behind the clock, again and again, would spin a real driver.
            assert!(steps < 100_000, "timers that never let time move on");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let fec = match u.int_in_range(0..=2u8) {
        Ok(0) | Err(_) => FecMode::Auto,
        Ok(1) => FecMode::Fixed {
            sources: 1,
            total: 2,
        },
        Ok(_) => FecMode::Fixed {
            sources: 4,
            total: 6,
        },
    };
    let Some(mut session) = Session::establish(fec) else {
        return;
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() || session.play(&mut u).is_err() {
            break;
        }
    }
    // Past the default idle timeout (30 s) of a silent peer, with every backoff on the way.
    session.run_down(Duration::from_secs(40));
});
