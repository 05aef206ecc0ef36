//! Unit tests of the stream set: ends of streams, window growth, the growth budget and the
//! connection credit.

use std::time::Duration;

use super::*;
use crate::recovery::SentFrame;
use crate::wire::close::close_code;
use crate::wire::frame::StreamFrame;

fn set(side: Side) -> StreamSet {
    let limits = StreamLimits {
        initial_stream_window: 1 << 16,
        stream_window: 1 << 16,
        growth_budget: 1 << 20,
        send_buffer: 1 << 16,
        max_concurrent: 16,
    };
    let mut s = StreamSet::new(side, limits);
    s.apply_peer_settings(1 << 20, 1 << 16, 16);
    s
}

/// The application reads the last bytes; before it reads again (to see the end), our own
/// direction's acknowledgement arrives. The stream must still answer `Finished`, not vanish.
#[test]
fn a_stream_is_kept_until_the_application_saw_its_end() {
    let mut streams = set(Side::Client);
    let id = streams.open().unwrap();
    assert_eq!(streams.write(id, b"request").unwrap(), 7);
    streams.finish(id).unwrap();
    let mut buf = Vec::new();
    let mut sent = Vec::new();
    streams.write_data(&mut buf, 1200, &mut sent);
    // The peer's reply and FIN arrive; the application reads the bytes.
    streams
        .on_stream_frame(&StreamFrame {
            id,
            offset: 0,
            fin: true,
            data: b"reply",
        })
        .unwrap();
    let mut out = [0u8; 16];
    let now = Instant::now();
    let rtt = Duration::from_millis(40);
    assert_eq!(
        streams.read(now, rtt, id, &mut out).unwrap(),
        ReadOutcome::Data(5)
    );
    // Our request and FIN are acknowledged now.
    streams.on_stream_acked(id, 0, 7, true);
    assert_eq!(
        streams.read(now, rtt, id, &mut out).unwrap(),
        ReadOutcome::Finished
    );
    // Only now is the stream forgotten.
    assert!(streams.is_empty());
}

const KIB: u64 = 1 << 10;
const RTT: Duration = Duration::from_millis(40);

fn tuned_set(initial: u64, largest: u64, budget: u64) -> StreamSet {
    let limits = StreamLimits {
        initial_stream_window: initial,
        stream_window: largest,
        growth_budget: budget,
        send_buffer: 1 << 16,
        max_concurrent: 16,
    };
    StreamSet::new(Side::Server, limits)
}

/// The peer fills stream `id` up to its credit; returns how many bytes that took.
fn fill(streams: &mut StreamSet, id: StreamId) -> u64 {
    let s = &streams.streams.get(&id);
    let (from, to) = s.map_or((0, 64 * KIB), |s| (s.recv.highest(), s.recv_limit));
    let data = vec![7u8; (to - from) as usize];
    streams
        .on_stream_frame(&StreamFrame {
            id,
            offset: from,
            fin: false,
            data: &data,
        })
        .expect("within credit");
    to - from
}

/// The application reads everything readable on `id` at `now`.
fn drain(streams: &mut StreamSet, id: StreamId, now: Instant) {
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(ReadOutcome::Data(_)) = streams.read(now, RTT, id, &mut buf) {}
}

fn window(streams: &StreamSet, id: StreamId) -> u64 {
    streams.streams[&id].recv_window
}

#[test]
fn a_window_doubles_while_the_reader_keeps_up_and_stays_when_it_is_slow() {
    let mut streams = tuned_set(64 * KIB, 256 * KIB, 1 << 20);
    let id = StreamId::new(Side::Client, 0);
    let mut now = Instant::now();
    // A reader that drains every window within a millisecond: 64 -> 128 -> 256, no more.
    let mut windows = Vec::new();
    for _ in 0..5 {
        fill(&mut streams, id);
        drain(&mut streams, id, now);
        windows.push(window(&streams, id) / KIB);
        now += Duration::from_millis(1);
    }
    assert_eq!(windows, [64, 128, 256, 256, 256]);
    assert_eq!(streams.growth_used, 192 * KIB);
    // A slow reader (renewals 5 RTTs apart) keeps the window it has and earns no more.
    let mut slow = tuned_set(64 * KIB, 256 * KIB, 1 << 20);
    for _ in 0..4 {
        fill(&mut slow, id);
        drain(&mut slow, id, now);
        now += RTT * 5;
    }
    assert_eq!(window(&slow, id), 64 * KIB);
    assert_eq!(slow.growth_used, 0);
}

#[test]
fn a_stream_nobody_reads_holds_only_its_initial_window() {
    let mut streams = tuned_set(64 * KIB, 4 << 20, 16 << 20);
    let id = StreamId::new(Side::Client, 0);
    assert_eq!(fill(&mut streams, id), 64 * KIB);
    // More is a flow-control violation.
    let err = streams
        .on_stream_frame(&StreamFrame {
            id,
            offset: 64 * KIB,
            fin: false,
            data: b"x",
        })
        .unwrap_err();
    assert_eq!(err.code, close_code::FLOW_CONTROL);
    assert_eq!(streams.recv_buffered() as u64, 64 * KIB);
}

#[test]
fn growth_stops_at_the_shared_budget_and_comes_back_when_a_stream_is_reset() {
    // Budget for one stream to grow from 64 KiB to 256 KiB, not two.
    let mut streams = tuned_set(64 * KIB, 256 * KIB, 192 * KIB);
    let (a, b) = (
        StreamId::new(Side::Client, 0),
        StreamId::new(Side::Client, 1),
    );
    let mut now = Instant::now();
    for _ in 0..4 {
        for id in [a, b] {
            fill(&mut streams, id);
            drain(&mut streams, id, now);
        }
        now += Duration::from_millis(1);
    }
    assert_eq!(
        window(&streams, a) + window(&streams, b),
        64 * KIB * 2 + 192 * KIB
    );
    assert_eq!(
        streams.growth_used,
        192 * KIB,
        "the budget is spent, not exceeded"
    );
    // A reset gives the stream's growth back; the other stream can grow with it.
    let bigger = if window(&streams, a) > 64 * KIB { a } else { b };
    let other = if bigger == a { b } else { a };
    streams.reset(bigger, 0).unwrap();
    assert_eq!(streams.growth_used, window(&streams, other) - 64 * KIB);
    for _ in 0..4 {
        fill(&mut streams, other);
        drain(&mut streams, other, now);
        now += Duration::from_millis(1);
    }
    assert_eq!(window(&streams, other), 256 * KIB);
}

/// A reader that stalls for 16 round trips or more renews at the initial window again, and
/// the growth it had flows back to the budget with every byte of backlog it reads.
#[test]
fn after_a_stall_the_window_restarts_small_and_its_growth_flows_back_as_it_is_read() {
    let mut streams = tuned_set(64 * KIB, 256 * KIB, 1 << 20);
    let id = StreamId::new(Side::Client, 0);
    let mut now = Instant::now();
    for _ in 0..4 {
        fill(&mut streams, id);
        drain(&mut streams, id, now);
        now += Duration::from_millis(1);
    }
    assert_eq!(window(&streams, id), 256 * KIB);
    // The reader stalls with a full window of backlog: the credit beyond 64 KiB is pinned.
    fill(&mut streams, id);
    assert_eq!(streams.growth_used, 192 * KIB);
    now += RTT * WINDOW_RESET_RTTS;
    // It comes back and reads half the backlog: half the growth is back already.
    let mut half = vec![0u8; 128 * KIB as usize];
    assert_eq!(
        streams.read(now, RTT, id, &mut half),
        Ok(ReadOutcome::Data(128 * KIB as usize))
    );
    assert_eq!(streams.growth_used, 64 * KIB);
    // The rest, and the renewal that follows is at the initial window.
    drain(&mut streams, id, now);
    assert_eq!(window(&streams, id), 64 * KIB);
    assert_eq!(streams.growth_used, 0);
}

/// The connection credit stays above every stream's initial window plus the growth budget,
/// for the peer's streams and for streams we open, so stalled streams never exhaust it.
#[test]
fn connection_credit_covers_every_initial_window_and_the_growth_budget() {
    let (initial, budget) = (64 * KIB, 1 << 20);
    let mut streams = tuned_set(initial, 256 * KIB, budget);
    streams.apply_peer_settings(1 << 30, 1 << 16, 64);
    let covered = |s: &StreamSet| {
        s.conn_recv_limit >= s.conn_consumed + initial * (16 + s.local_live) + budget
    };
    assert!(covered(&streams));
    // All 16 streams the peer may open stall with their initial windows full.
    for i in 0..16 {
        fill(&mut streams, StreamId::new(Side::Client, i));
    }
    assert_eq!(streams.recv_buffered() as u64, 16 * initial);
    // Streams we open reserve their own initial windows too.
    for _ in 0..40 {
        streams.open().unwrap();
        assert!(covered(&streams));
    }
    // A MAX_DATA was owed only once the slack ran out, not for every stream.
    let mut buf = Vec::new();
    let mut sent = Vec::new();
    streams.write_control(&mut buf, 1200, &mut sent);
    let max_data = sent
        .iter()
        .filter(|f| matches!(f, SentFrame::MaxData))
        .count();
    assert_eq!(max_data, 1);
}

/// A finished stream the application has not read to its end (it read every byte but has
/// not asked for the end yet, so the stream is kept) gives its growth back: it needs no
/// more credit. Otherwise a few such streams would hold the whole budget.
#[test]
fn a_stream_whose_length_is_known_keeps_no_growth_beyond_its_unread_bytes() {
    let mut streams = tuned_set(64 * KIB, 1 << 20, 1 << 20);
    let id = StreamId::new(Side::Client, 0);
    let mut now = Instant::now();
    for _ in 0..5 {
        fill(&mut streams, id);
        drain(&mut streams, id, now);
        now += Duration::from_millis(1);
    }
    assert_eq!(window(&streams, id), 1 << 20);
    // The last 100 KiB and the FIN arrive; the application reads them but not the end.
    let end = streams.streams[&id].recv.highest() + 100 * KIB;
    let data = vec![1u8; 100 * KIB as usize];
    streams
        .on_stream_frame(&StreamFrame {
            id,
            offset: end - 100 * KIB,
            fin: true,
            data: &data,
        })
        .unwrap();
    assert_eq!(
        streams.growth_used,
        36 * KIB,
        "only the unread bytes beyond the initial window are charged"
    );
    let mut buf = vec![0u8; 1 << 20];
    assert!(matches!(
        streams.read(now, RTT, id, &mut buf),
        Ok(ReadOutcome::Data(_))
    ));
    assert_eq!(streams.growth_used, 0);
    assert!(
        !streams.is_empty(),
        "kept until the application sees the end"
    );
}
