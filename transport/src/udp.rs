//! Batched UDP I/O for tokio, over `quinn-udp`.
//!
//! A reliable-UDP tunnel moves one datagram per ~1.3 KB: at 100 MB/s that is ~75,000 datagrams a
//! second each way, and one syscall per datagram would eat a core by itself. Where the platform
//! has them, sends use GSO (one `sendmsg` carries many equal-size datagrams, split by the kernel)
//! and receives use GRO and `recvmmsg` (one call returns many datagrams). `quinn-udp` implements
//! those system interfaces; this module adapts them to tokio's readiness model and to Ferry's
//! error policy: an error caused by one destination (an ICMP "port unreachable" surfacing as
//! `ECONNREFUSED`, a datagram too large for a path) drops that datagram, never the socket.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;

/// Socket buffer size requested from the kernel, bytes (it may grant less; see the debug log).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// Room for one receive slot: the largest UDP payload, or a GRO batch of datagrams.
const RECV_SLOT_BYTES: usize = 64 * 1024;

/// Errors that concern one datagram or one destination, not the socket.
fn is_per_datagram(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::PermissionDenied
    ) || quinn_udp::is_msg_size_err(e)
}

/// A UDP socket with batched sends and receives.
#[derive(Debug)]
pub struct BatchSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    dropped_sends: AtomicU64,
}

impl BatchSocket {
    /// Binds `addr`. Must be called within a tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
        Self::from_std(socket)
    }

    /// Adopts a bound standard socket. Must be called within a tokio runtime.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // Bigger buffers absorb bursts between two turns of the driver task.
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER_BYTES);
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER_BYTES);
        tracing::debug!(
            send_buffer = state
                .send_buffer_size(UdpSockRef::from(&socket))
                .unwrap_or(0),
            recv_buffer = state
                .recv_buffer_size(UdpSockRef::from(&socket))
                .unwrap_or(0),
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "UDP socket ready"
        );
        Ok(Self {
            io: tokio::net::UdpSocket::from_std(socket)?,
            state,
            dropped_sends: AtomicU64::new(0),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Most datagrams one send may carry (1 without GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Most datagrams the kernel may coalesce into one receive slot (1 without GRO).
    pub fn max_recv_segments(&self) -> usize {
        self.state.gro_segments().max(1)
    }

    /// Datagrams dropped because of a per-destination error.
    pub fn dropped_sends(&self) -> u64 {
        self.dropped_sends.load(Ordering::Relaxed)
    }

    /// Sends `contents` to `destination`: one datagram, or with `segment_size` several of that
    /// size (the last may be shorter) in one GSO call. The caller keeps the number of segments
    /// within [`BatchSocket::max_gso_segments`]. A per-destination error drops the datagrams
    /// (counted) and reports success.
    pub fn poll_send(
        &self,
        cx: &mut Context<'_>,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> Poll<io::Result<()>> {
        let segment_size = segment_size.filter(|s| *s < contents.len());
        debug_assert!(
            segment_size.is_none_or(|s| contents.len().div_ceil(s) <= self.max_gso_segments())
        );
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        loop {
            ready!(self.io.poll_send_ready(cx))?;
            let result = self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send(UdpSockRef::from(&self.io), &transmit)
            });
            match result {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_per_datagram(&e) => {
                    self.dropped_sends.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%destination, error = %e, "UDP send dropped");
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Receives every datagram ready now (at least one) into `batch`; returns how many slots
    /// were filled (each may hold several GRO segments: iterate with [`RecvBatch::iter`]).
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        batch: &mut RecvBatch,
    ) -> Poll<io::Result<usize>> {
        batch.filled = 0;
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let RecvBatch { buf, meta, .. } = batch;
            let result = self.io.try_io(Interest::READABLE, || {
                let mut slices: Vec<IoSliceMut<'_>> = buf
                    .chunks_mut(RECV_SLOT_BYTES)
                    .map(IoSliceMut::new)
                    .collect();
                self.state
                    .recv(UdpSockRef::from(&self.io), &mut slices, meta)
            });
            match result {
                Ok(n) => {
                    batch.filled = n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An ICMP error from an earlier send: nothing to receive from it.
                Err(e) if is_per_datagram(&e) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Reusable receive buffers for [`BatchSocket::poll_recv`].
pub struct RecvBatch {
    buf: Vec<u8>,
    meta: Vec<RecvMeta>,
    filled: usize,
}

impl RecvBatch {
    /// Buffers for `socket` (the batch size is the platform's, the same for every socket).
    pub fn new(_socket: &BatchSocket) -> Self {
        Self {
            buf: vec![0; BATCH_SIZE * RECV_SLOT_BYTES],
            meta: vec![RecvMeta::default(); BATCH_SIZE],
            filled: 0,
        }
    }

    /// Every datagram of the last receive, with its source (GRO segments split by stride).
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.meta[..self.filled]
            .iter()
            .enumerate()
            .flat_map(move |(i, m)| {
                let start = i * RECV_SLOT_BYTES;
                let data = &self.buf[start..start + m.len.min(RECV_SLOT_BYTES)];
                let stride = if m.stride == 0 {
                    data.len().max(1)
                } else {
                    m.stride
                };
                data.chunks(stride).map(move |d| (m.addr, d))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gso_batches_arrive_as_separate_intact_datagrams() {
        let a = BatchSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = BatchSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let segments = a.max_gso_segments().min(8);
        let mut batch = RecvBatch::new(&b);
        let mut expected = 0u32;
        for round in 0..1250u32 {
            let mut contents = Vec::new();
            for s in 0..segments as u32 {
                let mut d = vec![0u8; 1200];
                d[..4].copy_from_slice(&(round * 100 + s).to_be_bytes());
                contents.extend_from_slice(&d);
            }
            let seg = (segments > 1).then_some(1200);
            std::future::poll_fn(|cx| a.poll_send(cx, to, &contents, seg))
                .await
                .unwrap();
            // Receive this round completely before the next: loopback loses nothing then.
            let mut got = 0;
            while got < segments {
                std::future::poll_fn(|cx| b.poll_recv(cx, &mut batch))
                    .await
                    .unwrap();
                for (from, d) in batch.iter() {
                    assert_eq!(from, a.local_addr().unwrap());
                    assert_eq!(d.len(), 1200);
                    let id = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                    assert_eq!(id, round * 100 + got as u32);
                    got += 1;
                    expected += 1;
                }
            }
        }
        assert_eq!(expected, 1250 * segments as u32);
    }

    #[tokio::test]
    async fn ipv6_loopback_works_and_a_refused_destination_does_not_break_the_socket() {
        let Ok(a) = BatchSocket::bind("[::1]:0".parse().unwrap()) else {
            eprintln!("skipped: no IPv6 loopback on this machine");
            return;
        };
        let b = BatchSocket::bind("[::1]:0".parse().unwrap()).unwrap();
        // A port nobody listens on: the kernel answers with ICMP port unreachable.
        let closed = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        for _ in 0..3 {
            std::future::poll_fn(|cx| a.poll_send(cx, closed_addr, b"nobody", None))
                .await
                .unwrap();
        }
        std::future::poll_fn(|cx| a.poll_send(cx, b.local_addr().unwrap(), b"hello", None))
            .await
            .unwrap();
        std::future::poll_fn(|cx| b.poll_send(cx, a.local_addr().unwrap(), b"back", None))
            .await
            .unwrap();
        let mut batch = RecvBatch::new(&a);
        let n = std::future::poll_fn(|cx| a.poll_recv(cx, &mut batch))
            .await
            .unwrap();
        assert!(n >= 1);
        assert_eq!(batch.iter().next().unwrap().1, b"back");
    }
}
