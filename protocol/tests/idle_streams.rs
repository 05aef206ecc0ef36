//! What an open but quiet stream costs the protocol core, measured on the real heap.
//!
//! A tunnel keeps one stream per client connection, and most client connections are idle most
//! of the time, so the memory a stream keeps after its bytes were delivered is what a process
//! pays per idle client. These tests count every byte the process allocates (a counting global
//! allocator: this file is its own test binary and holds one test, so nothing else allocates
//! meanwhile) while 1,000 streams exchange data in the simulator and fall quiet.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::connection::Event;
use ferry_protocol::endpoint::{ConnectionHandle, Endpoint};
use ferry_protocol::sim::{LinkConfig, Pair};
use ferry_protocol::streams::ReadOutcome;
use ferry_protocol::StreamId;

/// The system allocator, counting the bytes live at any moment.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const STREAMS: usize = 1000;

/// Reads everything readable on `handle`'s streams; returns (stream, bytes) pairs read.
fn read_all(
    endpoint: &mut Endpoint,
    handle: ConnectionHandle,
    now: std::time::Instant,
) -> Vec<(StreamId, usize)> {
    let mut readable = Vec::new();
    while let Some((h, event)) = endpoint.poll_event() {
        if h != handle {
            continue;
        }
        if let Event::StreamOpened(id) | Event::StreamReadable(id) = event {
            readable.push(id);
        }
    }
    let conn = endpoint.connection(handle).expect("connection");
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    for id in readable {
        while let Ok(ReadOutcome::Data(n)) = conn.read(now, id, &mut buf) {
            got.push((id, n));
        }
    }
    got
}

/// The client writes `bytes` on each of `ids`, the server echoes what it reads, and the
/// simulation runs until the client read every echo and nothing is left unacknowledged.
fn echo_on_every_stream(
    pair: &mut Pair,
    (ch, sh): (ConnectionHandle, ConnectionHandle),
    ids: &[StreamId],
    bytes: usize,
) {
    let message = vec![0x42u8; bytes];
    let conn = pair.client.connection(ch).expect("client");
    for id in ids {
        assert_eq!(conn.write(*id, &message), Ok(bytes));
    }
    let expected = ids.len() * bytes;
    let mut echoed = 0;
    let done = pair.run_until(Duration::from_secs(60), |p| {
        let now = p.now;
        for (id, n) in read_all(&mut p.server, sh, now) {
            let server = p.server.connection(sh).expect("server");
            assert_eq!(server.write(id, &message[..n]), Ok(n), "echo fits");
        }
        echoed += read_all(&mut p.client, ch, now)
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>();
        let quiet = |e: &Endpoint, h| {
            let c = e.connection_ref(h).expect("connection");
            c.buffered_bytes() == (0, 0) && c.stats().bytes_in_flight == 0
        };
        echoed == expected && quiet(&p.client, ch) && quiet(&p.server, sh)
    });
    assert!(
        done,
        "the echoes did not all arrive ({echoed} of {expected} bytes)"
    );
    // Past the last acknowledgements and timers of the exchange.
    let settle = pair.now + Duration::from_millis(500);
    pair.advance_to(settle);
}

/// The client finishes each of `ids`, the server finishes its side on reading the end, and the
/// simulation runs until both ends forgot the streams.
fn close_every_stream(
    pair: &mut Pair,
    (ch, sh): (ConnectionHandle, ConnectionHandle),
    ids: &[StreamId],
) {
    let client = pair.client.connection(ch).expect("client");
    let open_before = client.stream_count();
    for id in ids {
        client.finish(*id).expect("open stream");
    }
    let mut buf = [0u8; 64];
    let done = pair.run_until(Duration::from_secs(60), |p| {
        let now = p.now;
        for (h, endpoint, echoes) in [(sh, &mut p.server, true), (ch, &mut p.client, false)] {
            let mut readable = Vec::new();
            while let Some((_, event)) = endpoint.poll_event() {
                if let Event::StreamReadable(id) = event {
                    readable.push(id);
                }
            }
            let conn = endpoint.connection(h).expect("connection");
            for id in readable {
                if conn.read(now, id, &mut buf) == Ok(ReadOutcome::Finished) && echoes {
                    conn.finish(id).expect("echo side open");
                }
            }
        }
        let count = |e: &Endpoint, h| e.connection_ref(h).expect("connection").stream_count();
        count(&p.client, ch) == open_before - ids.len()
            && count(&p.server, sh) == open_before - ids.len()
    });
    assert!(done, "the streams did not close");
    let settle = pair.now + Duration::from_millis(500);
    pair.advance_to(settle);
}

#[test]
fn quiet_streams_keep_no_buffers_whatever_they_carried() {
    let config = TransportConfig {
        max_concurrent_streams: 2 * STREAMS as u64,
        ..TransportConfig::default()
    };
    let mut pair = Pair::symmetric(
        14,
        ServerConfig::new(config.clone()),
        LinkConfig::default().with_delay(Duration::from_millis(5)),
    );
    let handles = pair.establish(config).expect("handshake");
    // The same traffic on other streams first, so that what the connection keeps at its
    // high-water mark (packet history, the links' queues, event queues) has mostly grown
    // before counting.
    let client = pair.client.connection(handles.0).expect("client");
    let warm: Vec<StreamId> = (0..STREAMS)
        .map(|_| client.open_stream().unwrap())
        .collect();
    echo_on_every_stream(&mut pair, handles, &warm, 20_000);

    let client = pair.client.connection(handles.0).expect("client");
    let ids: Vec<StreamId> = (0..STREAMS)
        .map(|_| client.open_stream().unwrap())
        .collect();
    echo_on_every_stream(&mut pair, handles, &ids, 100);
    echo_on_every_stream(&mut pair, handles, &ids, 20_000);
    let idle = live_bytes();
    // What the quiet streams held is what closing them gives back (the connection's own
    // high-water marks stay either way).
    close_every_stream(&mut pair, handles, &ids);
    let closed = live_bytes();

    // Both ends of each stream live in this process.
    let per_stream_side = (idle - closed) as f64 / STREAMS as f64 / 2.0;
    println!(
        "a quiet stream that carried 20 KB each way holds {per_stream_side:.0} bytes of heap \
         per side"
    );
    // The stream's own state (offsets, windows, flags) and its place in the connection's map:
    // a few hundred bytes, no buffer (20 KB each way passed through it), and well under the
    // 4 KiB per idle stream the tunnel allows for all it keeps.
    assert!(
        per_stream_side <= 640.0,
        "a quiet stream holds {per_stream_side:.0} bytes of heap per side"
    );
}
