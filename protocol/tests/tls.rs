//! TLS 1.3 and packet protection through the simulated network: who may connect, what an
//! observer sees, and what an on-path tamperer can (not) do. Deterministic: certificates are
//! generated per test, but every network decision comes from a seed.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::connection::ConnectionError;
use ferry_protocol::crypto::{CryptoConfig, Identity};
use ferry_protocol::sim::transfer::{verify, BulkSide};
use ferry_protocol::sim::{Direction, LinkConfig, Pair};
use ferry_protocol::wire::packet::Packet;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::RootCertStore;

const MS: Duration = Duration::from_millis(1);

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key.
struct Leaf {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Leaf {
    fn identity(&self) -> Identity {
        Identity {
            chain: vec![self.cert.clone()],
            key: self.key.clone_key(),
        }
    }
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    /// A leaf for `names`; `expired` puts its validity entirely in the past.
    fn leaf(&self, names: &[&str], client: bool, expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

fn server_crypto(leaf: &Leaf, client_ca: Option<&Ca>) -> CryptoConfig {
    CryptoConfig::server(leaf.identity(), client_ca.map(Ca::roots)).unwrap()
}

fn client_crypto(ca: &Ca, name: &str, identity: Option<&Leaf>) -> CryptoConfig {
    CryptoConfig::client(
        ca.roots(),
        ServerName::try_from(name.to_string()).unwrap(),
        identity.map(Leaf::identity),
    )
    .unwrap()
}

/// A server with a `localhost` certificate from a fresh CA, and a client trusting that CA.
struct Setup {
    ca: Ca,
    server: CryptoConfig,
}

impl Setup {
    fn new() -> Self {
        let ca = Ca::new("Ferry test CA");
        let leaf = ca.leaf(&["localhost", "127.0.0.1"], false, false);
        let server = server_crypto(&leaf, None);
        Self { ca, server }
    }

    fn client(&self) -> CryptoConfig {
        client_crypto(&self.ca, "localhost", None)
    }
}

fn pair(seed: u64, server: CryptoConfig, link: LinkConfig) -> Pair {
    Pair::symmetric(
        seed,
        ServerConfig::new(TransportConfig::default().crypto(server)),
        link,
    )
}

/// Runs until both ends report `Closed`; returns their errors.
fn handshake_errors(
    pair: &mut Pair,
    client: CryptoConfig,
) -> (Option<ConnectionError>, Option<ConnectionError>) {
    pair.connect(TransportConfig::default().crypto(client));
    pair.run_until_both_closed(Duration::from_secs(15))
}

fn assert_failed(error: &Option<ConnectionError>, side: &str, words: &[&str]) {
    let Some(ConnectionError::HandshakeFailed(reason)) = error else {
        panic!("{side}: expected a failed handshake, got {error:?}");
    };
    for w in words {
        assert!(reason.contains(w), "{side}: {reason:?} lacks {w:?}");
    }
}

fn bulk(pair: &mut Pair, client: CryptoConfig, streams: usize, bytes: u64, seed: u64) {
    let (ch, sh) = pair
        .establish(TransportConfig::default().crypto(client))
        .expect("handshake completes");
    let mut a = BulkSide::new(ch, true, seed, streams, bytes);
    let mut b = BulkSide::new(sh, false, seed, 0, bytes);
    let done = pair.run_until(Duration::from_secs(120), |p| {
        a.pump(p.now, &mut p.client);
        b.pump(p.now, &mut p.server);
        a.is_done() && b.is_done() && b.streams.len() == streams
    });
    assert!(
        done,
        "seed {seed}: transfer incomplete: {} / {} bytes received, closed {:?} {:?}",
        a.received_bytes(),
        b.received_bytes(),
        a.closed,
        b.closed
    );
    verify(&a, &b).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

#[test]
fn tls_sessions_carry_streams_intact_through_loss_and_reordering() {
    let setup = Setup::new();
    for seed in 0..10 {
        let link = LinkConfig::default()
            .with_delay(20 * MS)
            .with_jitter(5 * MS)
            .with_loss(0.10)
            .with_reorder(0.05)
            .with_duplicate(0.02);
        let mut pair = pair(seed, setup.server.clone(), link);
        bulk(&mut pair, setup.client(), 4, 256 << 10, seed);
    }
}

/// Sealed packets are padded to the full datagram size as well, so bulk data leaves in GSO
/// batches under TLS, and batches cut at their segment size open intact.
#[test]
fn sealed_bulk_data_leaves_in_full_gso_batches() {
    let setup = Setup::new();
    let link = LinkConfig::default().with_delay(5 * MS).with_loss(0.02);
    let mut pair = pair(4, setup.server.clone(), link);
    pair.max_batch = 16;
    pair.tick = Some(MS);
    bulk(&mut pair, setup.client(), 4, 2 << 20, 4);
    let per_transmit = pair.datagrams_per_transmit();
    assert!(
        per_transmit > 3.0,
        "{per_transmit:.2} datagrams per transmit"
    );
}

#[test]
fn the_handshake_completes_through_heavy_loss() {
    let setup = Setup::new();
    for seed in 0..20 {
        let link = LinkConfig::default().with_delay(30 * MS).with_loss(0.30);
        let mut pair = pair(seed, setup.server.clone(), link);
        let client = TransportConfig::default().crypto(setup.client());
        assert!(pair.establish(client).is_some(), "seed {seed}");
    }
}

#[test]
fn an_unknown_ca_fails_both_ends_with_the_reason() {
    let setup = Setup::new();
    let stranger = Ca::new("someone else");
    let mut pair = pair(
        1,
        setup.server.clone(),
        LinkConfig::default().with_delay(5 * MS),
    );
    let (client, server) = handshake_errors(&mut pair, client_crypto(&stranger, "localhost", None));
    assert_failed(&client, "client", &["TLS", "UnknownIssuer"]);
    assert_failed(
        &server,
        "server",
        &["rejected by the client", "UnknownIssuer"],
    );
}

#[test]
fn a_wrong_server_name_fails_the_handshake() {
    let setup = Setup::new();
    let mut pair = pair(
        2,
        setup.server.clone(),
        LinkConfig::default().with_delay(5 * MS),
    );
    let (client, server) = handshake_errors(
        &mut pair,
        client_crypto(&setup.ca, "gateway.example.com", None),
    );
    assert_failed(&client, "client", &["TLS", "not valid for name"]);
    assert_failed(&server, "server", &["rejected by the client"]);
}

#[test]
fn an_expired_server_certificate_fails_the_handshake() {
    let ca = Ca::new("Ferry test CA");
    let leaf = ca.leaf(&["localhost"], false, true);
    let mut pair = pair(
        3,
        server_crypto(&leaf, None),
        LinkConfig::default().with_delay(5 * MS),
    );
    let (client, _) = handshake_errors(&mut pair, client_crypto(&ca, "localhost", None));
    assert_failed(&client, "client", &["TLS", "expired"]);
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let ca = Ca::new("Ferry test CA");
    let agents = Ca::new("Ferry agents CA");
    let server = server_crypto(&ca.leaf(&["localhost"], false, false), Some(&agents));

    // A certificate from the agents' CA: admitted.
    let good = agents.leaf(&["agent-1"], true, false);
    let mut p = pair(4, server.clone(), LinkConfig::default().with_delay(5 * MS));
    bulk(
        &mut p,
        client_crypto(&ca, "localhost", Some(&good)),
        2,
        64 << 10,
        4,
    );

    // No certificate: refused, and the client learns why.
    let mut p = pair(5, server.clone(), LinkConfig::default().with_delay(5 * MS));
    let (client, server_error) = handshake_errors(&mut p, client_crypto(&ca, "localhost", None));
    assert_failed(
        &client,
        "client",
        &["rejected by the server", "no certificate"],
    );
    assert_failed(&server_error, "server", &["no certificate"]);

    // A certificate from another CA: refused.
    let foreign = ca.leaf(&["agent-x"], true, false);
    let mut p = pair(6, server, LinkConfig::default().with_delay(5 * MS));
    let (client, server_error) =
        handshake_errors(&mut p, client_crypto(&ca, "localhost", Some(&foreign)));
    assert_failed(&client, "client", &["rejected by the server"]);
    assert_failed(&server_error, "server", &["UnknownIssuer"]);
}

#[test]
fn tls_against_none_fails_with_the_settings_line() {
    let setup = Setup::new();
    let mut pair = pair(
        7,
        setup.server.clone(),
        LinkConfig::default().with_delay(5 * MS),
    );
    let (client, server) = handshake_errors(&mut pair, CryptoConfig::None);
    let expected =
        ConnectionError::HandshakeFailed("settings differ: crypto: server tls, client none".into());
    assert_eq!(client, Some(expected.clone()));
    assert_eq!(server, Some(expected));
}

#[test]
fn an_observer_never_sees_the_plaintext() {
    let setup = Setup::new();
    let mut pair = pair(
        8,
        setup.server.clone(),
        LinkConfig::default().with_delay(5 * MS),
    );
    pair.capture = Some(Vec::new());
    let (ch, sh) = pair
        .establish(TransportConfig::default().crypto(setup.client()))
        .unwrap();
    let marker = b"FERRY-SECRET-MARKER-7f3a";
    let message: Vec<u8> = marker.iter().copied().cycle().take(64 << 10).collect();
    let id = pair.client.connection(ch).unwrap().open_stream().unwrap();
    let mut written = 0;
    let mut received = Vec::new();
    pair.run_until(Duration::from_secs(10), |p| {
        if written < message.len() {
            written += p
                .client
                .connection(ch)
                .unwrap()
                .write(id, &message[written..])
                .unwrap();
        }
        let mut buf = [0u8; 4096];
        while let Ok(ferry_protocol::streams::ReadOutcome::Data(n)) =
            p.server.connection(sh).unwrap().read(p.now, id, &mut buf)
        {
            received.extend_from_slice(&buf[..n]);
        }
        received.len() == message.len()
    });
    assert_eq!(received, message, "the stream arrived");
    let captured = pair.capture.take().unwrap();
    assert!(captured.len() > 40);
    for c in &captured {
        assert!(
            !c.datagram.windows(8).any(|w| w == &marker[..8]),
            "plaintext seen on the wire"
        );
    }
}

/// An on-path attacker after the handshake: flips bits in some datagrams, injects forged packets
/// with the real connection ID, and replays captured packets. Every stream byte must still
/// arrive exactly once and unchanged, and the forgeries must be counted.
#[test]
fn an_on_path_tamperer_cannot_change_inject_or_replay_stream_bytes() {
    let setup = Setup::new();
    for seed in 0..5u64 {
        let mut pair = pair(
            seed,
            setup.server.clone(),
            LinkConfig::default().with_delay(10 * MS),
        );
        let (ch, sh) = pair
            .establish(TransportConfig::default().crypto(setup.client()))
            .unwrap();

        // Tamper with every 7th datagram each way; keep copies to replay.
        let seen = Rc::new(RefCell::new(Vec::<(Direction, Vec<u8>)>::new()));
        let log = seen.clone();
        let mut count = 0u64;
        pair.tamper = Some(Box::new(move |dir, d| {
            count += 1;
            log.borrow_mut().push((dir, d.clone()));
            if count % 7 == 0 && d.len() > 20 {
                let i = 13 + (count as usize * 31) % (d.len() - 13);
                d[i] ^= 1 << (count % 8);
            }
        }));

        let streams = 4;
        let bytes = 128 << 10;
        let mut a = BulkSide::new(ch, true, seed, streams, bytes);
        let mut b = BulkSide::new(sh, false, seed, 0, bytes);
        let mut rounds = 0u64;
        let (client_addr, server_addr) = (pair.client_addr, pair.server_addr);
        let done = pair.run_until(Duration::from_secs(60), |p| {
            a.pump(p.now, &mut p.client);
            b.pump(p.now, &mut p.server);
            rounds += 1;
            if rounds % 5 == 0 {
                // Replay a captured datagram, and inject a forged one with its header.
                let pick = {
                    let log = seen.borrow();
                    (!log.is_empty()).then(|| log[(rounds as usize * 13) % log.len()].clone())
                };
                if let Some((dir, d)) = pick {
                    let mut forged = d.clone();
                    if let Ok(packet) = Packet::decode(&d) {
                        let header = packet.header_bytes.len();
                        for (i, byte) in forged[header..].iter_mut().enumerate() {
                            *byte = (i as u8).wrapping_mul(37) ^ rounds as u8;
                        }
                    }
                    let now = p.now;
                    match dir {
                        Direction::ToServer => {
                            p.server.handle_datagram(now, client_addr, &d);
                            p.server.handle_datagram(now, client_addr, &forged);
                        }
                        Direction::ToClient => {
                            p.client.handle_datagram(now, server_addr, &d);
                            p.client.handle_datagram(now, server_addr, &forged);
                        }
                    }
                }
            }
            a.is_done() && b.is_done() && b.streams.len() == streams
        });
        assert!(
            done,
            "seed {seed}: transfer incomplete ({} / {}), closed {:?} {:?}",
            a.received_bytes(),
            b.received_bytes(),
            a.closed,
            b.closed
        );
        verify(&a, &b).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let client = pair.client.connection_ref(ch).unwrap().stats();
        let server = pair.server.connection_ref(sh).unwrap().stats();
        assert!(
            client.unauthenticated_packets + server.unauthenticated_packets > 20,
            "seed {seed}: forgeries counted: {} + {}",
            client.unauthenticated_packets,
            server.unauthenticated_packets
        );
        assert!(
            client.duplicate_packets + server.duplicate_packets > 10,
            "seed {seed}: replays counted"
        );
    }
}

/// Forged packets from a new address (a valid connection ID, garbage after it) never move the
/// session or even make the server probe that address; the client's real rebinding, sealed,
/// is followed after the path challenge.
#[test]
fn only_authenticated_packets_from_a_new_address_start_a_migration() {
    let setup = Setup::new();
    let link = LinkConfig::default()
        .with_delay(10 * MS)
        .with_rate(20_000_000, 100_000);
    let mut pair = pair(9, setup.server.clone(), link);
    pair.capture = Some(Vec::new());
    let (ch, sh) = pair
        .establish(TransportConfig::default().crypto(setup.client()))
        .unwrap();
    let mut a = BulkSide::new(ch, true, 9, 2, 1 << 20);
    let mut b = BulkSide::new(sh, false, 9, 0, 1 << 20);
    let attacker: std::net::SocketAddr = "10.66.0.1:4444".parse().unwrap();
    let mut phase = 0;
    let mut misaddressed_before_rebinding = None;
    let done = pair.run_until(Duration::from_secs(60), |p| {
        let elapsed = p.elapsed();
        if phase == 0 && elapsed > Duration::from_millis(200) {
            // Forgeries from the attacker's address, built on a real packet's header.
            let template = p
                .capture
                .as_ref()
                .unwrap()
                .iter()
                .rev()
                .find(|c| c.direction == Direction::ToServer && c.datagram[0] & 0x80 == 0)
                .map(|c| c.datagram.clone())
                .unwrap();
            let header = Packet::decode(&template).unwrap().header_bytes.len();
            for i in 0..50u8 {
                let mut forged = template.clone();
                // A newer packet number than any sent, and garbage after the header.
                forged[9..13].copy_from_slice(&(u32::MAX - u32::from(i)).to_be_bytes());
                for byte in &mut forged[header..] {
                    *byte = byte.wrapping_add(i | 1);
                }
                let now = p.now;
                p.server.handle_datagram(now, attacker, &forged);
            }
            phase = 1;
        }
        if phase == 1 && elapsed > Duration::from_millis(400) {
            misaddressed_before_rebinding = Some(p.misaddressed);
            p.client_addr = "127.0.0.2:40001".parse().unwrap();
            phase = 2;
        }
        a.pump(p.now, &mut p.client);
        b.pump(p.now, &mut p.server);
        a.is_done() && b.is_done()
    });
    assert!(done && phase == 2);
    verify(&a, &b).unwrap();
    let server = pair.server.connection_ref(sh).unwrap();
    assert_eq!(
        server.remote(),
        pair.client_addr,
        "followed the real client"
    );
    assert_eq!(server.stats().migrations, 1);
    assert!(server.stats().unauthenticated_packets >= 50);
    // Nothing was sent to the attacker's address, not even a path challenge. (After the real
    // rebinding, packets to the old address do count as misaddressed.)
    assert_eq!(misaddressed_before_rebinding, Some(0));
}

#[test]
fn a_replaced_certificate_serves_new_handshakes_while_a_live_session_keeps_its_own() {
    let old = Setup::new();
    let new = Setup::new();
    let mut pair = pair(11, old.server.clone(), LinkConfig::default().with_delay(MS));
    let (first, _) = pair
        .establish(TransportConfig::default().crypto(old.client()))
        .expect("a handshake with the first certificate");
    pair.server
        .replace_server_config(ServerConfig::new(
            TransportConfig::default().crypto(new.server.clone()),
        ))
        .unwrap();
    assert!(
        pair.establish(TransportConfig::default().crypto(old.client()))
            .is_none(),
        "a new handshake must meet the new certificate, which the old CA does not sign"
    );
    pair.establish(TransportConfig::default().crypto(new.client()))
        .expect("a handshake with the new certificate");
    assert!(
        pair.client
            .connection_ref(first)
            .is_some_and(|c| c.is_established()),
        "the session made before the replacement lives on"
    );
    let mut other_id = ServerConfig::new(TransportConfig::default().crypto(new.server.clone()));
    other_id.server_id = Some(7);
    assert_eq!(
        pair.server.replace_server_config(other_id),
        Err(ferry_protocol::endpoint::ReplaceServerConfigError::Fixed(
            "server ID"
        ))
    );
}
