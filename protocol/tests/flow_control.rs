//! Flow control and scheduling under a hostile mix of streams, in virtual time, from seeds.
//!
//! The issue these tests protect: streams whose reader never reads must not hold the
//! connection's credit (cross-stream head-of-line blocking moved into flow control), bulk
//! streams must share the path equally, and a new stream must not queue behind them.

use std::time::{Duration, Instant};

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::sim::transfer::{verify, BulkSide};
use ferry_protocol::sim::{LinkConfig, Pair};
use ferry_protocol::StreamId;

const MS: Duration = Duration::from_millis(1);
/// One-way delay of the simulated path: 40 ms round trips, so a 64 KiB window moves only
/// 1.6 MB/s and the bulk windows have to grow.
const ONE_WAY: Duration = Duration::from_millis(20);
const RTT: Duration = Duration::from_millis(40);

fn link(rate_bps: u64) -> LinkConfig {
    // A queue of one bandwidth-delay product.
    let bdp_bytes = (rate_bps / 8) as usize * RTT.as_millis() as usize / 1000;
    LinkConfig::default()
        .with_delay(ONE_WAY)
        .with_rate(rate_bps, bdp_bytes)
}

/// What one bulk run measured.
struct BulkRun {
    /// Bytes per second the bulk streams delivered together, from their opening to the last FIN.
    goodput: f64,
    /// Most bytes the receiver held (received, unread) at any step while the bulk streams ran.
    max_receiver_buffered: usize,
    /// Bytes the receiver held once the bulk streams were done (the stalled streams' share).
    receiver_buffered_after: usize,
}

const STALL_RATE_BPS: u64 = 200_000_000;
const BULK_STREAMS: usize = 4;
const BULK_BYTES: u64 = 8 << 20;

/// `stalled` streams are opened, written twice their initial window, and never read by the
/// server; once they hold all the credit they will ever get, four bulk streams send
/// `BULK_BYTES` each to a server that reads them.
fn bulk_beside_stalled_streams(stalled: usize, seed: u64) -> BulkRun {
    let config = TransportConfig::default();
    let initial = config.stream_initial_receive_window;
    let mut pair = Pair::symmetric(
        seed,
        ServerConfig::new(config.clone()),
        link(STALL_RATE_BPS),
    );
    let (ch, sh) = pair.establish(config).expect("handshake");

    let junk = vec![0x5au8; 2 * initial as usize];
    for _ in 0..stalled {
        let conn = pair.client.connection(ch).expect("client connection");
        let id = conn.open_stream().expect("within the stream limit");
        assert_eq!(conn.write(id, &junk), Ok(junk.len()));
    }
    // Let the stalled streams take every byte of credit they can get (or 30 s pass).
    let expected = stalled as u64 * initial;
    let filled = pair.run_until(Duration::from_secs(30), |p| {
        let (_, held) = p
            .server
            .connection_ref(sh)
            .expect("server")
            .buffered_bytes();
        held as u64 >= expected
    });
    assert!(filled, "stalled streams never filled their initial windows");
    // The server application learnt of the stalled streams and chose never to read them.
    while pair.server.poll_event().is_some() {}

    let mut client = BulkSide::new(ch, true, seed, BULK_STREAMS, BULK_BYTES);
    let mut server = BulkSide::new(sh, false, seed, 0, 0);
    let start = pair.now;
    let mut max_receiver_buffered = 0;
    let done = pair.run_until(Duration::from_secs(120), |p| {
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        let (_, held) = p
            .server
            .connection_ref(sh)
            .expect("server")
            .buffered_bytes();
        max_receiver_buffered = max_receiver_buffered.max(held);
        server.streams.len() == BULK_STREAMS && server.is_done()
    });
    assert!(
        done,
        "seed {seed}, {stalled} stalled streams: bulk streams incomplete after {:?}: {} of {} bytes",
        pair.now - start,
        server.received_bytes(),
        BULK_STREAMS as u64 * BULK_BYTES
    );
    let elapsed = pair.now - start;
    verify(&client, &server).expect("bulk bytes intact");
    BulkRun {
        goodput: (BULK_STREAMS as u64 * BULK_BYTES) as f64 / elapsed.as_secs_f64(),
        max_receiver_buffered,
        receiver_buffered_after: pair
            .server
            .connection_ref(sh)
            .expect("server")
            .buffered_bytes()
            .1,
    }
}

/// The loopback story, scaled up and on a long path: a thousand streams whose reader
/// never reads (each may hold only its small initial window) do not slow the four bulk streams
/// beside them, whose windows must grow to fill a 40 ms path. The receiver holds exactly the
/// stalled streams' initial windows, and never more than those plus the bulk streams' windows.
#[test]
fn a_thousand_unread_streams_leave_bulk_streams_ninety_percent_of_their_goodput() {
    let stalled = 1000;
    let config = TransportConfig::default();
    let initial = config.stream_initial_receive_window;
    let seed = 21;
    let alone = bulk_beside_stalled_streams(0, seed);
    let beside = bulk_beside_stalled_streams(stalled, seed);
    let ratio = beside.goodput / alone.goodput;
    eprintln!(
        "bulk goodput alone {:.1} MB/s, beside {stalled} stalled streams {:.1} MB/s ({:.1}%); \
         receiver held at most {} bytes, {} after",
        alone.goodput / 1e6,
        beside.goodput / 1e6,
        ratio * 100.0,
        beside.max_receiver_buffered,
        beside.receiver_buffered_after
    );
    // Windows that stayed at 64 KiB would carry 4 x 64 KiB per 40 ms round trip, 6.6 MB/s.
    let ungrown = (BULK_STREAMS as u64 * initial) as f64 / RTT.as_secs_f64();
    assert!(
        alone.goodput > 2.0 * ungrown,
        "the bulk windows did not grow: {:.1} MB/s",
        alone.goodput / 1e6
    );
    assert!(
        ratio >= 0.9,
        "bulk goodput beside stalled streams is {:.1}% of alone",
        ratio * 100.0
    );
    let stalled_bound = stalled as u64 * initial;
    assert_eq!(
        beside.receiver_buffered_after as u64, stalled_bound,
        "each stalled stream holds exactly its initial window"
    );
    let bulk_bound = BULK_STREAMS as u64 * config.stream_receive_window;
    assert!(
        beside.max_receiver_buffered as u64 <= stalled_bound + bulk_bound,
        "receiver held {} bytes, above {stalled_bound} (stalled) + {bulk_bound} (bulk windows)",
        beside.max_receiver_buffered
    );
}

/// Jain's fairness index of `shares`: 1 when all are equal, 1/n when one takes everything.
fn jain_index(shares: &[f64]) -> f64 {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    sum * sum / (shares.len() as f64 * squares)
}

/// Sixteen bulk streams through a 50 Mbit/s, 40 ms bottleneck get equal shares of it (Jain's
/// index >= 0.95 over 2-10 s), and a stream opened at 5 s while they run has its first byte at
/// the server within one round trip plus 10 ms: the scheduler does not queue it behind them.
#[test]
fn sixteen_bulk_streams_share_the_path_equally_and_a_new_stream_does_not_wait_behind_them() {
    let seed = 22;
    let rate = 50_000_000;
    let config = TransportConfig::default();
    let mut pair = Pair::symmetric(seed, ServerConfig::new(config.clone()), link(rate));
    let (ch, sh) = pair.establish(config).expect("handshake");
    let streams = 16;
    let mut client = BulkSide::new(ch, true, seed, streams, u64::MAX / 4);
    let mut server = BulkSide::new(sh, false, seed, 0, 0);
    let start = pair.now;
    let measure_from = start + Duration::from_secs(2);
    let newcomer_at = start + Duration::from_secs(5);
    let measure_to = start + Duration::from_secs(10);
    let mut at_measure_from: Option<Vec<u64>> = None;
    let mut newcomer: Option<(StreamId, Instant)> = None;
    let mut newcomer_latency = None;
    pair.run_until(measure_to - start, |p| {
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        if at_measure_from.is_none() && p.now >= measure_from {
            at_measure_from = Some(server.streams.values().map(|s| s.received).collect());
        }
        if newcomer.is_none() && p.now >= newcomer_at {
            let conn = p.client.connection(ch).expect("client");
            let id = conn.open_stream().expect("stream");
            assert_eq!(conn.write(id, b"first byte"), Ok(10));
            newcomer = Some((id, p.now));
        }
        if let Some((id, opened)) = newcomer {
            if newcomer_latency.is_none() && server.streams.get(&id).is_some_and(|s| s.received > 0)
            {
                newcomer_latency = Some(p.now - opened);
            }
        }
        p.now >= measure_to
    });
    let before = at_measure_from.expect("measurement started");
    // The bulk streams are the first 16 the server saw (stream IDs are ordered); the newcomer
    // came after them.
    let bulk_ids: Vec<StreamId> = server.streams.keys().copied().take(streams).collect();
    assert_eq!(before.len(), streams, "all bulk streams were open at 2 s");
    let shares: Vec<f64> = bulk_ids
        .iter()
        .zip(&before)
        .map(|(id, b)| (server.streams[id].received - b) as f64)
        .collect();
    let index = jain_index(&shares);
    let total: f64 = shares.iter().sum();
    let seconds = (measure_to - measure_from).as_secs_f64();
    let latency = newcomer_latency.expect("the new stream's first byte arrived");
    eprintln!(
        "16 streams: Jain index {index:.4}, {:.1}% of the link, shares {:?} KB; new stream's \
         first byte after {latency:?}",
        total * 8.0 / seconds / rate as f64 * 100.0,
        shares
            .iter()
            .map(|s| (s / 1000.0).round())
            .collect::<Vec<_>>()
    );
    assert!(index >= 0.95, "Jain's fairness index {index:.4}");
    assert!(
        latency <= RTT + 10 * MS,
        "the new stream's first byte took {latency:?}"
    );
    assert!(client.closed.is_none() && server.closed.is_none());
}
