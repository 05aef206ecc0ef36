//! Unreliable datagrams through the simulated network, in virtual time, from seeds: the
//! delivered share with and without loss protection, never a datagram delivered twice, stream
//! traffic on the same connection intact, fragments, and the refusals.

use std::collections::HashSet;
use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::datagrams::{DatagramError, Protection};
use ferry_protocol::endpoint::ConnectionHandle;
use ferry_protocol::fec::FecMode;
use ferry_protocol::sim::transfer::{verify, BulkSide};
use ferry_protocol::sim::{LinkConfig, Pair};

const MS: Duration = Duration::from_millis(1);
/// A game's tick: one datagram each way every 20 ms.
const TICK: Duration = Duration::from_millis(20);

fn lossy(loss: f64) -> LinkConfig {
    LinkConfig::default().with_delay(20 * MS).with_loss(loss)
}

/// What one run of a game-like flow saw.
#[derive(Debug, Default)]
struct Outcome {
    sent: usize,
    delivered: usize,
    copies_sent: u64,
    duplicates_suppressed: u64,
    /// Bytes of copies (duplication) and of repair packets (FEC) the client sent.
    copy_bytes: u64,
    repair_bytes: u64,
}

/// Receives every datagram waiting at one end, checking that none comes twice.
fn drain(
    pair: &mut Pair,
    server_side: bool,
    handle: ConnectionHandle,
    seen: &mut HashSet<u64>,
) -> usize {
    let endpoint = if server_side {
        &mut pair.server
    } else {
        &mut pair.client
    };
    let conn = endpoint.connection(handle).expect("connection alive");
    let mut n = 0;
    while let Some(d) = conn.recv_datagram() {
        assert_eq!(d.flow, 7);
        let index = u64::from_be_bytes(d.data[..8].try_into().unwrap());
        assert!(seen.insert(index), "datagram {index} delivered twice");
        assert!(d.data[8..].iter().all(|b| *b == index as u8));
        n += 1;
    }
    n
}

/// `count` datagrams of `size` bytes from client to server, one per [`TICK`], with
/// `protection`; with `bulk`, a 2 MiB stream each way on the same connection, checked byte for
/// byte.
fn game_flow(
    seed: u64,
    link: LinkConfig,
    protection: Protection,
    count: u64,
    size: usize,
    bulk: bool,
) -> Outcome {
    flow_at(seed, link, protection, count, size, bulk, TICK)
}

/// The same with one datagram every `tick`.
fn flow_at(
    seed: u64,
    link: LinkConfig,
    protection: Protection,
    count: u64,
    size: usize,
    bulk: bool,
    tick: Duration,
) -> Outcome {
    let mut pair = Pair::symmetric(seed, ServerConfig::default(), link);
    let (ch, sh) = pair
        .establish(TransportConfig::default())
        .unwrap_or_else(|| panic!("seed {seed}: handshake"));
    let mut client = BulkSide::new(ch, true, seed, usize::from(bulk), 2 << 20);
    let mut server = BulkSide::new(sh, false, seed, 0, 2 << 20);
    let mut seen = HashSet::new();
    let mut out = Outcome::default();
    let start = pair.now;
    for i in 0..count {
        let at = start + tick * i as u32;
        pair.run_until(Duration::from_secs(1), |p| {
            client.pump(p.now, &mut p.client);
            server.pump(p.now, &mut p.server);
            p.now >= at
        });
        out.delivered += drain(&mut pair, true, sh, &mut seen);
        let mut data = i.to_be_bytes().to_vec();
        data.resize(size.max(8), i as u8);
        let now = pair.now;
        pair.client
            .connection(ch)
            .expect("alive")
            .send_datagram(now, 7, &data, protection)
            .unwrap_or_else(|e| panic!("seed {seed}: datagram {i}: {e}"));
        out.sent += 1;
    }
    let finished = pair.run_until(Duration::from_secs(120), |p| {
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        !bulk || (client.is_done() && server.is_done())
    });
    assert!(finished, "seed {seed}: the stream transfer did not finish");
    if bulk {
        verify(&client, &server).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    pair.advance_to(pair.now + Duration::from_secs(1));
    out.delivered += drain(&mut pair, true, sh, &mut seen);
    let all = pair.client.connection(ch).expect("alive").stats();
    let stats = all.datagrams;
    out.copies_sent = stats.copies_sent;
    out.copy_bytes = stats.copy_bytes;
    out.repair_bytes = all.fec.repair_bytes_sent;
    out.duplicates_suppressed = pair
        .server
        .connection(sh)
        .expect("alive")
        .stats()
        .datagrams
        .duplicates_suppressed;
    out
}

fn share_over_seeds(seeds: u64, loss: f64, protection: Protection, bulk: bool) -> f64 {
    let mut sent = 0;
    let mut delivered = 0;
    for seed in 0..seeds {
        let o = game_flow(seed, lossy(loss), protection, 250, 100, bulk);
        sent += o.sent;
        delivered += o.delivered;
    }
    eprintln!("{loss} loss, {protection:?}: {delivered} of {sent} delivered");
    delivered as f64 / sent as f64
}

#[test]
fn through_ten_percent_loss_plain_datagrams_lose_about_that_and_duplicates_about_its_square() {
    let plain = share_over_seeds(8, 0.10, Protection::None, false);
    assert!((0.87..=0.93).contains(&plain), "plain share {plain:.4}");
    let dup = share_over_seeds(8, 0.10, Protection::Duplicate, false);
    // Two copies lost independently: 1 - 0.1^2 = 0.99.
    assert!(dup >= 0.975, "duplicated share {dup:.4}");
}

#[test]
fn copies_are_suppressed_at_the_receiver_and_streams_beside_them_arrive_intact() {
    for seed in 0..4 {
        let o = game_flow(
            100 + seed,
            lossy(0.05),
            Protection::Duplicate,
            150,
            200,
            true,
        );
        assert!(o.copies_sent >= 140, "seed {seed}: {o:?}");
        // Both copies arrived for most datagrams; the second was dropped, not delivered.
        assert!(o.duplicates_suppressed >= 100, "seed {seed}: {o:?}");
        assert!(
            o.delivered as f64 >= 0.97 * o.sent as f64,
            "seed {seed}: {o:?}"
        );
    }
}

#[test]
fn adaptive_protection_costs_nothing_on_a_clean_path_and_duplicates_on_a_lossy_one() {
    let clean = game_flow(1, lossy(0.0), Protection::Adaptive, 200, 100, false);
    assert_eq!(clean.copies_sent, 0, "{clean:?}");
    assert_eq!(clean.delivered, clean.sent);
    let mut sent = 0;
    let mut delivered = 0;
    let mut copies = 0;
    for seed in 0..6 {
        let o = game_flow(seed, lossy(0.05), Protection::Adaptive, 400, 100, false);
        sent += o.sent;
        delivered += o.delivered;
        copies += o.copies_sent;
    }
    let share = delivered as f64 / sent as f64;
    eprintln!("adaptive at 5% loss: {delivered} of {sent} delivered, {copies} copies");
    // It needs a few losses to see the path as lossy, then duplicates: well above 95%.
    assert!(share >= 0.975, "adaptive share {share:.4}");
    assert!(
        copies as f64 >= 0.7 * sent as f64,
        "{copies} copies for {sent}"
    );
}

#[test]
fn fec_protection_of_a_fast_flow_delivers_more_than_duplication_at_a_like_cost() {
    // 500 datagrams a second: the FEC sources of a hold share repairs.
    let tick = Duration::from_millis(2);
    let (mut fec, mut dup) = (Outcome::default(), Outcome::default());
    for seed in 0..4 {
        for (protection, total) in [
            (Protection::Fec, &mut fec),
            (Protection::Duplicate, &mut dup),
        ] {
            let o = flow_at(seed, lossy(0.10), protection, 1500, 200, false, tick);
            total.sent += o.sent;
            total.delivered += o.delivered;
            total.copy_bytes += o.copy_bytes;
            total.repair_bytes += o.repair_bytes;
        }
    }
    let share = |o: &Outcome| o.delivered as f64 / o.sent as f64;
    eprintln!(
        "10% loss, 500/s: fec {:.4} delivered, {} repair bytes; dup {:.4}, {} copy bytes",
        share(&fec),
        fec.repair_bytes,
        share(&dup),
        dup.copy_bytes
    );
    // Four datagrams in a hold, eight in the window of two: each repair covers them all. At
    // 10% none was lost in these runs (0.10% with a window of one hold, for 1% fewer repair
    // bytes; 0.85% at the rate of sixteen sources, seven per sixteen, with four in the
    // window), where duplication loses a datagram whenever both copies do (1%).
    assert!(share(&fec) >= 0.995, "fec share {:.4}", share(&fec));
    assert!(share(&fec) > share(&dup));
    assert_eq!(fec.copy_bytes, 0, "FEC in use: no copies");
    assert!(fec.repair_bytes > 0);
    assert!(
        fec.repair_bytes * 2 < dup.copy_bytes * 3,
        "{fec:?} vs {dup:?}"
    );
}

#[test]
fn fec_protection_falls_back_to_duplication_where_fec_is_off() {
    let server = ServerConfig::new(TransportConfig::default().fec(FecMode::Off));
    let mut pair = Pair::symmetric(3, server, lossy(0.05));
    let (ch, _) = pair
        .establish(TransportConfig::default())
        .expect("handshake");
    let start = pair.now;
    for i in 0..400u64 {
        let at = start + TICK * i as u32;
        pair.run_until(Duration::from_secs(1), |p| p.now >= at);
        let now = pair.now;
        let conn = pair.client.connection(ch).unwrap();
        conn.send_datagram(now, 7, &i.to_be_bytes(), Protection::Fec)
            .unwrap();
    }
    let stats = pair.client.connection(ch).unwrap().stats();
    assert_eq!(stats.fec.repair_packets_sent, 0);
    // Once the path counted as lossy, every datagram went twice.
    assert!(stats.datagrams.copies_sent >= 200, "{:?}", stats.datagrams);
}

/// Found by the established_session fuzz target (input `[0, 2, 3, 0, 28, 217, 91, 10, 227,
/// 227, 227]`): a datagram asking for FEC, as large as a packet holds, was sized for a whole
/// packet while its packets kept room for the repair, so it never fit, and every packet built
/// for it went out empty, without end. Now such datagrams are sized for the smaller room, and
/// no packet keeps the room when the next datagram due would not fit beside it.
#[test]
fn datagrams_as_large_as_a_packet_holds_leave_whatever_their_protection() {
    for protection in [Protection::Fec, Protection::Adaptive, Protection::None] {
        for fec in [
            FecMode::Auto,
            FecMode::Fixed {
                sources: 1,
                total: 2,
            },
        ] {
            let config = TransportConfig::default().fec(fec);
            let mut pair = Pair::symmetric(5, ServerConfig::new(config.clone()), lossy(0.0));
            let (ch, sh) = pair.establish(config).expect("handshake");
            let now = pair.now;
            let conn = pair.client.connection(ch).unwrap();
            let sizes = [conn.stats().datagrams.unfragmented_max as usize, 1200, 9000];
            for (i, size) in sizes.into_iter().enumerate() {
                let mut data = (i as u64).to_be_bytes().to_vec();
                data.resize(size, i as u8);
                conn.send_datagram(now, 7, &data, protection).unwrap();
            }
            let sent_before = pair.client.connection(ch).unwrap().stats().packets_sent;
            pair.run_until(Duration::from_millis(500), |_| false);
            let mut seen = HashSet::new();
            let got = drain(&mut pair, true, sh, &mut seen);
            let sent = pair.client.connection(ch).unwrap().stats().packets_sent - sent_before;
            assert_eq!(got, 3, "{protection:?}, {fec}: {got} of 3 arrived");
            assert!(
                sent < 100,
                "{protection:?}, {fec}: {sent} packets for 3 datagrams"
            );
        }
    }
}

/// Written after the established_session fuzz target's second livelock of this change (an ACK
/// confirmed in every packet with an RTT of zero kept a datagram that fits only a packet
/// without an ACK from ever leaving; fixed in `ack_needs_confirming`). On a link without delay
/// that loses packets (gaps), full-size datagrams each way must leave in a bounded number of
/// packets. It found one more: in plaintext mode a server whose handshake is not yet confirmed
/// (the client's packets lost) still sends long-header packets, 12 bytes more header than the
/// short one a datagram is sized for, and built empty packets for it without end; now a packet
/// with nothing to carry is not built.
#[test]
fn full_size_datagrams_leave_on_a_link_without_delay_that_leaves_gaps() {
    // A livelock never returns: run it on a thread and fail after a minute instead of hanging.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for fec in [FecMode::Off, FecMode::Auto] {
            full_size_datagrams_without_delay(fec);
        }
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("packets sent without end at one instant");
}

fn full_size_datagrams_without_delay(fec: FecMode) {
    let config = TransportConfig::default().fec(fec);
    let link = LinkConfig::default().with_loss(0.2);
    let mut pair = Pair::symmetric(8, ServerConfig::new(config.clone()), link);
    let (ch, sh) = pair.establish(config).expect("handshake");
    for round in 0..20u64 {
        let now = pair.now;
        for (handle, client) in [(ch, true), (sh, false)] {
            let endpoint = if client {
                &mut pair.client
            } else {
                &mut pair.server
            };
            let conn = endpoint.connection(handle).unwrap();
            let max = conn.stats().datagrams.unfragmented_max as usize;
            let mut data = round.to_be_bytes().to_vec();
            data.resize(max, round as u8);
            conn.send_datagram(now, 7, &data, Protection::None).unwrap();
            conn.send_datagram(now, 7, &data[..8], Protection::None)
                .unwrap();
        }
        let until = pair.now + Duration::from_millis(5);
        pair.run_until(Duration::from_secs(1), |p| p.now >= until);
    }
    let sent = pair.client.connection(ch).unwrap().stats().packets_sent
        + pair.server.connection(sh).unwrap().stats().packets_sent;
    assert!(sent < 2_000, "{sent} packets for 80 datagrams");
    let received = pair
        .server
        .connection(sh)
        .unwrap()
        .stats()
        .datagrams
        .received;
    assert!(
        received >= 20,
        "{received} of 40 datagrams reached the server"
    );
}

#[test]
fn a_datagram_larger_than_a_packet_arrives_whole_in_fragments() {
    for size in [1400, 5000, 9000] {
        let o = game_flow(3, lossy(0.0), Protection::None, 20, size, false);
        assert_eq!(o.delivered, o.sent, "size {size}");
    }
    // Under loss, a fragmented datagram needs all its pieces; duplication gives them back.
    let o = game_flow(4, lossy(0.05), Protection::Duplicate, 200, 2500, false);
    assert!(o.delivered as f64 >= 0.97 * o.sent as f64, "{o:?}");
}

#[test]
fn too_large_a_datagram_is_refused_naming_its_size_and_unsupported_peers_refuse_all() {
    let mut pair = Pair::symmetric(5, ServerConfig::default(), lossy(0.0));
    let (ch, _sh) = pair
        .establish(TransportConfig::default())
        .expect("handshake");
    let now = pair.now;
    let conn = pair.client.connection(ch).unwrap();
    match conn.send_datagram(now, 1, &[0; 20_000], Protection::None) {
        Err(DatagramError::TooBig { size, max }) => {
            assert_eq!(size, 20_000);
            assert!((9_000..12_000).contains(&max), "{max}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.stats().datagrams.dropped_too_big, 1);

    let no_fragments = TransportConfig {
        datagram_fragmentation: false,
        ..TransportConfig::default()
    };
    let mut pair = Pair::symmetric(6, ServerConfig::default(), lossy(0.0));
    let (ch, _) = pair.establish(no_fragments).expect("handshake");
    let now = pair.now;
    let conn = pair.client.connection(ch).unwrap();
    assert!(conn
        .send_datagram(now, 1, &[0; 1200], Protection::None)
        .is_ok());
    assert!(matches!(
        conn.send_datagram(now, 1, &[0; 1400], Protection::None),
        Err(DatagramError::TooBig { size: 1400, .. })
    ));

    // Found by `cargo fuzz run established_session`: a flow id above the varint range hit a
    // debug assertion in the frame encoder (and would have been mis-encoded in release).
    assert_eq!(
        conn.send_datagram(now, u64::MAX, b"x", Protection::None),
        Err(DatagramError::FlowOutOfRange(u64::MAX))
    );

    let refuses = ServerConfig::new(TransportConfig {
        max_datagram_payload: 0,
        ..TransportConfig::default()
    });
    let mut pair = Pair::symmetric(7, refuses, lossy(0.0));
    let (ch, _) = pair
        .establish(TransportConfig::default())
        .expect("handshake");
    let now = pair.now;
    let conn = pair.client.connection(ch).unwrap();
    assert_eq!(
        conn.send_datagram(now, 1, b"x", Protection::None),
        Err(DatagramError::Unsupported)
    );
}
