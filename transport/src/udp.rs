//! Batched UDP I/O for tokio: [`BatchSocket`] and [`RecvBatch`].
//!
//! A plain `sendto`/`recvfrom` costs one system call per datagram, and at a few hundred
//! nanoseconds to microseconds each, the system calls — not the protocol — cap how many packets
//! one core can move. This module batches them with the `quinn-udp` crate:
//!
//! - **Sending** uses generic segmentation offload (GSO, Linux `UDP_SEGMENT`): one `sendmsg`
//!   carries up to [`BatchSocket::max_gso_segments`] equal-sized datagrams, which the kernel (or
//!   the NIC) splits on the way out.
//! - **Receiving** uses `recvmmsg` to fill up to [`quinn_udp::BATCH_SIZE`] buffers per call, and
//!   generic receive offload (GRO, Linux `UDP_GRO`) lets the kernel coalesce up to
//!   [`BatchSocket::max_recv_segments`] datagrams of one flow into each buffer.
//!
//! Together they cut the system calls per packet by one to two orders of magnitude, which is what
//! lets one core push more than 100k packets/s. Where an offload is unavailable the socket
//! degrades to one datagram per call with the same API.
//!
//! UDP errors are per destination, not per socket: an ICMP "port unreachable" from one peer may
//! surface as `ECONNREFUSED` on a later, unrelated `sendmsg`/`recvmmsg`. Such errors are logged at
//! debug level, counted ([`BatchSocket::send_errors`], [`BatchSocket::recv_errors`]) and skipped;
//! only errors that mean the socket itself is unusable are returned.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;

/// Socket buffer size requested by [`BatchSocket::bind`] for each direction.
///
/// Large buffers absorb bursts (a whole congestion window can leave in a few GSO calls) and the
/// gap between the driver task's wake-ups. Linux caps the request at `net.core.rmem_max` /
/// `net.core.wmem_max`; the granted size is logged at debug level.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Bytes of one receive buffer in a [`RecvBatch`]: the largest UDP datagram, and the largest
/// GRO-coalesced buffer the kernel builds by default (64 KiB).
pub const RECV_BUFFER_BYTES: usize = 1 << 16;

/// Most payload bytes one GSO `sendmsg` may carry: the whole batch travels as one IP packet
/// inside the kernel, so it must fit the IPv4 length field (65535 - 20 IP - 8 UDP header bytes).
const MAX_GSO_PAYLOAD: usize = 65_507;

/// Per-destination errors skipped in one `poll_recv` call before it yields to other tasks.
const MAX_SKIPPED_RECV_ERRORS: usize = 64;

/// A UDP socket that sends and receives many datagrams per system call.
///
/// Wraps a [`tokio::net::UdpSocket`] (readiness) and a [`quinn_udp::UdpSocketState`] (GSO, GRO,
/// `recvmmsg`). All methods take `&self`; one task normally owns the socket and does both
/// directions.
#[derive(Debug)]
pub struct BatchSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
    /// ICMP port-unreachable reports (`ECONNREFUSED`) not yet taken by
    /// [`take_refused`](Self::take_refused): nothing listens where a datagram went.
    refused: AtomicU64,
    /// Test hook: if non-zero, what `max_gso_segments` reports instead of quinn-udp's value.
    #[cfg(test)]
    gso_override: std::sync::atomic::AtomicUsize,
}

impl BatchSocket {
    /// Binds a UDP socket to `addr` and asks for [`SOCKET_BUFFER_BYTES`] of send and receive
    /// buffer (the kernel may grant less; what it granted is logged at debug level).
    ///
    /// Must be called within a tokio runtime; returns an error otherwise.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let sock = Self::from_std(std::net::UdpSocket::bind(addr)?)?;
        sock.enlarge_buffers(SOCKET_BUFFER_BYTES);
        Ok(sock)
    }

    /// Like [`bind`](Self::bind), and connects the socket to `remote`: the kernel then reports
    /// ICMP errors about datagrams sent to it (port unreachable as `ECONNREFUSED`, seen by
    /// [`take_refused`](Self::take_refused)), and drops datagrams from anyone else.
    pub fn bind_connected(local: SocketAddr, remote: SocketAddr) -> io::Result<Self> {
        let std = std::net::UdpSocket::bind(local)?;
        std.connect(remote)?;
        let sock = Self::from_std(std)?;
        sock.enlarge_buffers(SOCKET_BUFFER_BYTES);
        Ok(sock)
    }

    /// The address the socket is connected to, if it is.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.io.peer_addr().ok()
    }

    /// How many port-unreachable reports arrived since the last call (connected sockets only).
    pub fn take_refused(&self) -> u64 {
        self.refused.swap(0, Ordering::Relaxed)
    }

    /// Wraps an already bound std socket, e.g. one configured by the caller. The socket is made
    /// non-blocking and the offloads are enabled; its buffer sizes are left as they are.
    ///
    /// Must be called within a tokio runtime; returns an error otherwise.
    pub fn from_std(sock: std::net::UdpSocket) -> io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "BatchSocket must be created within a tokio runtime",
            ));
        }
        // Sets O_NONBLOCK and the GRO/pktinfo/ECN/don't-fragment options.
        let state = UdpSocketState::new((&sock).into())?;
        let io = tokio::net::UdpSocket::from_std(sock)?;
        let sock = Self {
            io,
            state,
            send_errors: AtomicU64::new(0),
            recv_errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            #[cfg(test)]
            gso_override: std::sync::atomic::AtomicUsize::new(0),
        };
        tracing::debug!(
            local = ?sock.io.local_addr().ok(),
            gso_segments = sock.state.max_gso_segments(),
            gro_segments = sock.state.gro_segments(),
            may_fragment = sock.state.may_fragment(),
            "UDP batch socket ready"
        );
        Ok(sock)
    }

    /// Asks for `bytes` of send and receive buffer and logs what the kernel granted. Failure is
    /// not fatal: the socket works with the default buffers, only with less burst tolerance.
    fn enlarge_buffers(&self, bytes: usize) {
        if let Err(e) = self.state.set_recv_buffer_size(self.sock_ref(), bytes) {
            tracing::debug!(error = %e, bytes, "could not set SO_RCVBUF");
        }
        if let Err(e) = self.state.set_send_buffer_size(self.sock_ref(), bytes) {
            tracing::debug!(error = %e, bytes, "could not set SO_SNDBUF");
        }
        let recv = self.state.recv_buffer_size(self.sock_ref()).ok();
        let send = self.state.send_buffer_size(self.sock_ref()).ok();
        // Linux reports twice the usable size (it counts its bookkeeping overhead) and silently
        // caps the request at net.core.rmem_max / wmem_max.
        tracing::debug!(
            requested = bytes,
            so_rcvbuf = ?recv,
            so_sndbuf = ?send,
            "UDP socket buffers granted (Linux caps them at net.core.rmem_max/wmem_max)"
        );
    }

    fn sock_ref(&self) -> UdpSockRef<'_> {
        (&self.io).into()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Most datagrams one send call can carry with GSO; 1 where GSO is unavailable.
    ///
    /// This can drop to 1 at runtime (some drivers reject GSO with `EIO`), so read it before
    /// building each batch rather than once.
    pub fn max_gso_segments(&self) -> usize {
        #[cfg(test)]
        match self.gso_override.load(Ordering::Relaxed) {
            0 => {}
            n => return n,
        }
        self.state.max_gso_segments()
    }

    /// Most datagrams the kernel may coalesce into one receive buffer with GRO; 1 without GRO.
    pub fn max_recv_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Send failures so far: datagrams dropped because their destination failed (unreachable,
    /// refused, too big), datagrams cut from a split batch by a full socket buffer, and
    /// datagrams already sent whose failure the kernel reported later (an ICMP unreachable
    /// surfacing as `ECONNREFUSED` on a later send or receive, which is skipped, not returned).
    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Other per-datagram errors skipped while receiving (e.g. a datagram too large for the
    /// buffer on platforms that report it as an error). ICMP errors for earlier sends count in
    /// [`send_errors`](Self::send_errors) instead.
    pub fn recv_errors(&self) -> u64 {
        self.recv_errors.load(Ordering::Relaxed)
    }

    /// Sends `contents` to `destination`, waiting for socket buffer space.
    ///
    /// With `segment_size: None`, `contents` is one datagram. With `Some(s)`, it holds several
    /// datagrams of `s` bytes each (the last may be shorter), sent with as few GSO calls as
    /// [`max_gso_segments`](Self::max_gso_segments) allows, or one call per datagram without
    /// GSO. A GSO call the kernel rejects (`EIO`/`EINVAL` from some drivers, `EMSGSIZE`) is
    /// retried as individual datagrams.
    ///
    /// `Ready(Ok(()))` means the datagrams were handed to the kernel or dropped as UDP drops
    /// them: a destination error, or the socket buffer filling part-way through a batch that had
    /// to be split (possible only when the caller passes more than `max_gso_segments()`
    /// segments). Drops are counted in [`send_errors`](Self::send_errors); a reliable protocol
    /// recovers them like network loss. `Pending` means nothing was sent: call again with the
    /// same arguments once woken. `Err` means the socket itself failed.
    pub fn poll_send(
        &self,
        cx: &mut Context<'_>,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.io.poll_send_ready(cx))?;
            match self.try_send(destination, contents, segment_size) {
                // Readiness was cleared; the next poll_send_ready registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Like [`poll_send`](Self::poll_send) without waiting: returns
    /// [`io::ErrorKind::WouldBlock`] (having sent nothing) when the socket buffer is full.
    pub fn try_send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let segment = match segment_size {
            Some(0) if !contents.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "segment_size must be non-zero",
                ))
            }
            Some(s) if s < contents.len() => s,
            // One datagram (possibly empty).
            _ => {
                return match self.send_raw(destination, contents, None) {
                    Err(e) if is_destination_error(&e) => {
                        self.count_send_drop(&e, destination, 1);
                        Ok(())
                    }
                    result => result,
                };
            }
        };

        let mut offset = 0;
        let mut split = false;
        while offset < contents.len() {
            let per_call = if split {
                1
            } else {
                self.max_gso_segments()
                    .min(MAX_GSO_PAYLOAD / segment)
                    .max(1)
            };
            let end = contents.len().min(offset + per_call * segment);
            let chunk = &contents[offset..end];
            let datagrams = chunk.len().div_ceil(segment);
            let gso = (datagrams > 1).then_some(segment);
            match self.send_raw(destination, chunk, gso) {
                Ok(()) => offset = end,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if offset == 0 {
                        return Err(e);
                    }
                    let dropped = (contents.len() - offset).div_ceil(segment);
                    self.count_send_drop(&e, destination, dropped);
                    return Ok(());
                }
                Err(e) if gso.is_some() && is_gso_rejection(&e) => {
                    // quinn-udp has already turned GSO off for later calls if the driver
                    // refused it; resend this chunk one datagram at a time.
                    tracing::debug!(error = %e, %destination, datagrams, "GSO send rejected; splitting");
                    split = true;
                }
                Err(e) if is_destination_error(&e) => {
                    self.count_send_drop(&e, destination, datagrams);
                    offset = end;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One `sendmsg`, clearing tokio's write readiness on `WouldBlock`. An error the kernel
    /// had queued for an earlier datagram (ICMP unreachable, reported on the next call when the
    /// socket is connected or has `IP_RECVERR`) is consumed by the failed call, so the send is
    /// retried once: the new datagram should not pay for an old one's destination.
    fn send_raw(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        let send = || {
            self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send(self.sock_ref(), &transmit)
            })
        };
        match send() {
            Err(e) if is_async_icmp_error(&e) => {
                let drained = self.drain_error_queue();
                let retry = send();
                // The same error again means this destination fails by itself (no route): the
                // caller counts that drop. Otherwise the first error was about earlier datagrams.
                let repeated = matches!(&retry, Err(r) if r.kind() == e.kind());
                self.count_earlier_failures(&e, if repeated { drained } else { drained.max(1) });
                retry
            }
            result => result,
        }
    }

    /// Reads and logs the socket's error queue, returning how many entries it held. The queue
    /// only fills when `IP_RECVERR`/`IPV6_RECVERR` is on (not by default); its entries are
    /// charged to the receive buffer until read, so they are drained whenever an ICMP error
    /// shows up. Reading the last entry also clears the socket's pending error.
    fn drain_error_queue(&self) -> u64 {
        const MAX_DRAIN: u64 = 1024;
        let mut drained = 0;
        while drained < MAX_DRAIN {
            match self.state.recv_transport_error(self.sock_ref()) {
                Ok(Some(err)) => {
                    drained += 1;
                    tracing::debug!(addr = ?err.addr, payload = ?err.payload, "UDP error queued for an earlier datagram");
                }
                _ => break,
            }
        }
        drained
    }

    fn count_earlier_failures(&self, e: &io::Error, datagrams: u64) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        if datagrams > 0 {
            self.send_errors.fetch_add(datagrams, Ordering::Relaxed);
            tracing::debug!(error = %e, datagrams, "UDP error reported for earlier datagrams; skipped");
        }
    }

    fn count_send_drop(&self, e: &io::Error, destination: SocketAddr, datagrams: usize) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.send_errors
            .fetch_add(datagrams as u64, Ordering::Relaxed);
        tracing::debug!(error = %e, %destination, datagrams, "UDP send failed; datagrams dropped");
    }

    /// Receives as many datagrams as are ready (up to [`quinn_udp::BATCH_SIZE`] buffers, each
    /// holding up to [`max_recv_segments`](Self::max_recv_segments) GRO segments) into `batch`,
    /// replacing its previous contents. Returns the number of datagrams, each GRO segment
    /// counted as one; read them with [`RecvBatch::iter`].
    ///
    /// Errors about earlier sends reported on receive (`ECONNREFUSED` from an ICMP port
    /// unreachable, Windows' `WSAECONNRESET`) count in [`send_errors`](Self::send_errors), other
    /// per-datagram errors in [`recv_errors`](Self::recv_errors); both are skipped. `Err` means
    /// the socket itself failed.
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        batch: &mut RecvBatch,
    ) -> Poll<io::Result<usize>> {
        batch.filled = 0;
        let mut skipped = 0;
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let result = self.io.try_io(Interest::READABLE, || {
                let mut slots = batch.buf.chunks_exact_mut(RECV_BUFFER_BYTES);
                let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                    IoSliceMut::new(slots.next().expect("RecvBatch holds BATCH_SIZE buffers"))
                });
                self.state.recv(self.sock_ref(), &mut bufs, &mut batch.meta)
            });
            match result {
                Ok(n) => {
                    batch.filled = n;
                    return Poll::Ready(Ok(batch.iter().count()));
                }
                // Readiness was cleared; the next poll_recv_ready registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // Only errors that consume themselves are skipped (each is reported once), so
                // this cannot spin on a persistent failure.
                Err(e) if is_async_icmp_error(&e) || quinn_udp::is_msg_size_err(&e) => {
                    if is_async_icmp_error(&e) {
                        let drained = self.drain_error_queue();
                        self.count_earlier_failures(&e, drained.max(1));
                    } else {
                        self.recv_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "UDP receive error; datagram skipped");
                    }
                    skipped += 1;
                    if skipped >= MAX_SKIPPED_RECV_ERRORS {
                        // Let other tasks run; come back right away.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Errors that concern one destination (or one datagram), not the socket: on send, the
/// datagram is dropped and the socket keeps working.
fn is_destination_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if is_async_icmp_error(e) || quinn_udp::is_msg_size_err(e) {
        return true;
    }
    if matches!(
        e.kind(),
        ConnectionAborted
            | NetworkDown
            | AddrNotAvailable
            | PermissionDenied
            | InvalidInput
            | NotConnected
            | TimedOut
    ) {
        return true;
    }
    #[cfg(unix)]
    if let Some(code) = e.raw_os_error() {
        return matches!(code, libc::ENOBUFS | libc::EAFNOSUPPORT);
    }
    false
}

/// Errors that an ICMP message about an earlier datagram leaves pending on the socket, to be
/// reported by its next send or receive (Linux: connected sockets or `IP_RECVERR`; Windows:
/// `WSAECONNRESET` on receive).
fn is_async_icmp_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable
    ) {
        return true;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(code) = e.raw_os_error() {
        return matches!(code, libc::EHOSTDOWN | libc::EPROTO | libc::ENONET);
    }
    false
}

/// Errors with which a kernel or driver refuses a GSO batch that it might take as single
/// datagrams.
fn is_gso_rejection(e: &io::Error) -> bool {
    if quinn_udp::is_msg_size_err(e) || e.kind() == io::ErrorKind::InvalidInput {
        return true;
    }
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EIO) {
        return true;
    }
    false
}

/// Reusable receive buffers for [`BatchSocket::poll_recv`]: [`quinn_udp::BATCH_SIZE`] buffers
/// of [`RECV_BUFFER_BYTES`] (2 MiB on Linux, allocated once) and their metadata.
pub struct RecvBatch {
    buf: Box<[u8]>,
    meta: [RecvMeta; BATCH_SIZE],
    /// Buffers filled by the last receive.
    filled: usize,
}

impl RecvBatch {
    /// Buffers sized for `socket`. Every buffer holds [`RECV_BUFFER_BYTES`], enough for the
    /// largest datagram and for a full GRO buffer under the kernel's default `gro_max_size`
    /// (64 KiB), so nothing is truncated.
    pub fn new(socket: &BatchSocket) -> Self {
        // 64 KiB bounds both a single datagram and a GRO-coalesced buffer, so the size does not
        // depend on whether GRO is on; the parameter keeps the door open for sizing by socket.
        let _ = socket;
        Self {
            buf: vec![0u8; BATCH_SIZE * RECV_BUFFER_BYTES].into_boxed_slice(),
            meta: [RecvMeta::default(); BATCH_SIZE],
            filled: 0,
        }
    }

    /// Each datagram of the last receive with its source address, in arrival order; GRO
    /// buffers are split at their stride, so every datagram comes out separately.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        Datagrams {
            batch: self,
            slot: 0,
            offset: 0,
        }
    }
}

/// Iterator behind [`RecvBatch::iter`]: walks the filled buffers and the GRO segments inside
/// each without allocating.
struct Datagrams<'a> {
    batch: &'a RecvBatch,
    /// Buffer being read.
    slot: usize,
    /// Start of the next segment in that buffer.
    offset: usize,
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = (SocketAddr, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let meta = self.batch.meta[..self.batch.filled].get(self.slot)?;
        let start = self.slot * RECV_BUFFER_BYTES;
        let len = meta.len.min(RECV_BUFFER_BYTES);
        let data = &self.batch.buf[start..start + len];
        // Without GRO, or for an empty datagram, the stride equals the length.
        let stride = if meta.stride == 0 { len } else { meta.stride };
        let end = len.min(self.offset + stride);
        let datagram = &data[self.offset..end];
        if end >= len {
            self.slot += 1;
            self.offset = 0;
        } else {
            self.offset = end;
        }
        Some((meta.addr, datagram))
    }
}

impl fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBatch")
            .field("buffers", &BATCH_SIZE)
            .field("filled", &self.filled)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    const V4: &str = "127.0.0.1:0";
    const V6: &str = "[::1]:0";

    fn bind(addr: &str) -> BatchSocket {
        BatchSocket::bind(addr.parse().unwrap()).unwrap()
    }

    /// Binds to IPv6 loopback, or `None` where the machine has no `::1`.
    fn bind_v6() -> Option<BatchSocket> {
        match BatchSocket::bind(V6.parse().unwrap()) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                ferry_test_support::skip("ipv6", "no IPv6 loopback on this machine");
                None
            }
            Err(e) => panic!("binding [::1]: {e}"),
        }
    }

    async fn send(s: &BatchSocket, to: SocketAddr, data: &[u8], segment: Option<usize>) {
        tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| s.poll_send(cx, to, data, segment)),
        )
        .await
        .expect("send timed out")
        .expect("send failed");
    }

    /// One receive; `None` if nothing arrived within `wait`.
    async fn recv(s: &BatchSocket, batch: &mut RecvBatch, wait: Duration) -> Option<usize> {
        tokio::time::timeout(wait, poll_fn(|cx| s.poll_recv(cx, batch)))
            .await
            .ok()
            .map(|r| r.expect("receive failed"))
    }

    /// Small deterministic generator (xorshift64*), so every run sends the same batches.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        }
        fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + self.below(hi - lo + 1)
        }
    }

    /// Datagram `index` of length `len`: the index, then a pattern derived from it.
    fn fill(out: &mut Vec<u8>, index: u32, len: usize) {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend((4..len).map(|j| (index as usize * 31 + j * 7) as u8));
    }

    fn check(datagram: &[u8], lens: &[usize], seen: &mut [bool]) {
        assert!(
            datagram.len() >= 4,
            "runt datagram of {} bytes",
            datagram.len()
        );
        let index = u32::from_be_bytes(datagram[..4].try_into().unwrap());
        let i = index as usize;
        assert!(i < lens.len(), "datagram {index} was never sent");
        assert!(!seen[i], "datagram {index} arrived twice");
        seen[i] = true;
        assert_eq!(
            datagram.len(),
            lens[i],
            "datagram {index} has the wrong length"
        );
        let mut expected = Vec::with_capacity(lens[i]);
        fill(&mut expected, index, lens[i]);
        assert!(
            datagram == expected.as_slice(),
            "datagram {index} corrupted"
        );
    }

    /// What one [`transfer`] saw.
    #[derive(Debug, Default)]
    struct Seen {
        send_calls: usize,
        recv_calls: usize,
        /// Most datagrams the kernel coalesced into one receive buffer (GRO).
        max_gro_segments: usize,
    }

    /// Sends `count` datagrams from `tx` to `rx` in batches of random segment size (4..=1400
    /// bytes, last segment shorter) and count (1..=100, so some exceed one GSO call), and checks
    /// that each arrives exactly once, separately and intact. Sending is paced by receipt:
    /// each burst (at most ~100 KB, far below the socket buffers) is fully received before the
    /// next, so loopback loses nothing and the test does not depend on timing.
    async fn transfer(tx: &BatchSocket, rx: &BatchSocket, count: usize, seed: u64) -> Seen {
        const BURST_BYTES: usize = 100_000;
        let from = tx.local_addr().unwrap();
        let to = rx.local_addr().unwrap();
        let mut rng = Rng(seed);
        let mut lens = Vec::with_capacity(count);
        let mut seen = vec![false; count];
        let mut batch = RecvBatch::new(rx);
        let mut contents = Vec::new();
        let mut stats = Seen::default();
        while lens.len() < count {
            // Send one burst.
            let mut burst_bytes = 0;
            while lens.len() < count && burst_bytes < BURST_BYTES {
                let segment = if rng.below(4) == 0 {
                    rng.range(4, 64)
                } else {
                    rng.range(64, 1400)
                };
                let max = (BURST_BYTES / segment)
                    .clamp(1, 100)
                    .min(count - lens.len());
                let k = rng.range(1, max);
                contents.clear();
                for n in 0..k {
                    let len = if n + 1 == k {
                        rng.range(4, segment)
                    } else {
                        segment
                    };
                    fill(&mut contents, lens.len() as u32, len);
                    lens.push(len);
                }
                let seg = if k == 1 && rng.below(2) == 0 {
                    None
                } else {
                    Some(segment)
                };
                send(tx, to, &contents, seg).await;
                stats.send_calls += 1;
                burst_bytes += contents.len();
            }
            // Receive all of it before sending more.
            let mut received = seen.iter().filter(|s| **s).count();
            while received < lens.len() {
                let n = recv(rx, &mut batch, Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|| {
                        panic!(
                            "{} of {} datagrams never arrived",
                            lens.len() - received,
                            lens.len()
                        )
                    });
                stats.recv_calls += 1;
                for meta in &batch.meta[..batch.filled] {
                    let segs = meta.len.div_ceil(meta.stride.max(1)).max(1);
                    stats.max_gro_segments = stats.max_gro_segments.max(segs);
                }
                let mut got = 0;
                for (addr, datagram) in batch.iter() {
                    assert_eq!(addr, from);
                    check(datagram, &lens, &mut seen);
                    got += 1;
                }
                assert_eq!(got, n, "poll_recv's count disagrees with iter()");
                received += n;
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(tx.send_errors(), 0);
        assert_eq!(rx.recv_errors(), 0);
        stats
    }

    #[tokio::test]
    async fn ten_thousand_gso_datagrams_each_way_arrive_separately_and_intact() {
        let a = bind(V4);
        let b = bind(V4);
        let ab = transfer(&a, &b, 10_000, 1).await;
        let ba = transfer(&b, &a, 10_000, 2).await;
        eprintln!(
            "gso segments {}, gro segments {}; a->b {ab:?}; b->a {ba:?}",
            a.max_gso_segments(),
            a.max_recv_segments()
        );
        if a.max_gso_segments() > 1 {
            // Batching really happened: far fewer send calls than datagrams.
            assert!(ab.send_calls < 2_000, "{ab:?}");
        }
    }

    #[tokio::test]
    async fn ipv6_loopback_exchanges_gso_batches() {
        let (Some(a), Some(b)) = (bind_v6(), bind_v6()) else {
            return;
        };
        assert!(a.local_addr().unwrap().is_ipv6());
        transfer(&a, &b, 3_000, 3).await;
        transfer(&b, &a, 3_000, 4).await;
    }

    #[tokio::test]
    async fn batches_are_split_into_single_sends_without_gso() {
        let a = bind(V4);
        let b = bind(V4);
        a.gso_override.store(1, Ordering::Relaxed);
        assert_eq!(a.max_gso_segments(), 1);
        let seen = transfer(&a, &b, 2_000, 5).await;
        assert_eq!(
            seen.max_gro_segments, 1,
            "without GSO every datagram travels alone"
        );
    }

    /// A GSO call the kernel rejects at runtime (here: more segments than `UDP_MAX_SEGMENTS`,
    /// which fails with `EINVAL` like a driver without GSO support) is resent one datagram at a
    /// time, and quinn-udp turns GSO off for the calls after it.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn a_gso_call_rejected_at_runtime_is_resent_as_single_datagrams() {
        let a = bind(V4);
        let b = bind(V4);
        if a.max_gso_segments() == 1 {
            return ferry_test_support::skip(
                "gso",
                "no UDP GSO on this machine (kernel or driver)",
            );
        }
        const SEGMENTS: usize = 300;
        a.gso_override.store(SEGMENTS, Ordering::Relaxed);
        let mut contents = Vec::new();
        for i in 0..SEGMENTS {
            fill(&mut contents, i as u32, 10);
        }
        send(&a, b.local_addr().unwrap(), &contents, Some(10)).await;
        a.gso_override.store(0, Ordering::Relaxed);
        assert_eq!(
            a.max_gso_segments(),
            1,
            "quinn-udp should have turned GSO off"
        );
        assert_eq!(a.send_errors(), 0);
        let lens = vec![10; SEGMENTS];
        let mut seen = vec![false; SEGMENTS];
        let mut batch = RecvBatch::new(&b);
        let mut received = 0;
        while received < SEGMENTS {
            received += recv(&b, &mut batch, Duration::from_secs(5))
                .await
                .expect("datagrams lost");
            for (_, d) in batch.iter() {
                check(d, &lens, &mut seen);
            }
        }
        // Later batches are split from the start.
        transfer(&a, &b, 1_000, 6).await;
    }

    #[tokio::test]
    async fn empty_and_single_datagrams() {
        let a = bind(V4);
        let b = bind(V4);
        let to = b.local_addr().unwrap();
        send(&a, to, b"", None).await;
        // A segment size not below the length means one datagram.
        send(&a, to, b"0123456789", Some(10)).await;
        send(&a, to, b"abc", Some(1000)).await;
        assert!(a.try_send(to, b"xy", Some(0)).is_err());
        let mut batch = RecvBatch::new(&b);
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 3 {
            recv(&b, &mut batch, Duration::from_secs(5))
                .await
                .expect("datagram lost");
            got.extend(batch.iter().map(|(_, d)| d.to_vec()));
        }
        assert_eq!(got, [&b""[..], b"0123456789", b"abc"]);
    }

    /// A port nobody listens on (bound, then closed): sending there makes the kernel answer
    /// with ICMP port unreachable.
    fn closed_port(addr: &str) -> SocketAddr {
        let s = std::net::UdpSocket::bind(addr).unwrap();
        s.local_addr().unwrap()
    }

    /// Like [`BatchSocket::bind`], with `IP_RECVERR`/`IPV6_RECVERR` on: then Linux reports ICMP
    /// errors even on an unconnected socket, as `ECONNREFUSED` on the next send or receive.
    fn bind_with_recverr(addr: &str) -> BatchSocket {
        let std = std::net::UdpSocket::bind(addr).unwrap();
        let state = UdpSocketState::new((&std).into()).unwrap();
        state.enable_transport_errors((&std).into()).unwrap();
        BatchSocket::from_std(std).unwrap()
    }

    async fn refused_destination_does_not_break_the_socket(
        a: &BatchSocket,
        b: &BatchSocket,
        addr: &str,
    ) {
        let closed = closed_port(addr);
        let a_addr = a.local_addr().unwrap();
        let b_addr = b.local_addr().unwrap();
        let mut batch = RecvBatch::new(a);
        let mut b_batch = RecvBatch::new(b);

        // 1. Refused, then a receive from a working peer.
        send(a, closed, b"nobody home", None).await;
        send(a, closed, b"nobody home, batched", Some(6)).await;
        send(b, a_addr, b"hello a", None).await;
        let n = recv(a, &mut batch, Duration::from_secs(5))
            .await
            .expect("receive broken");
        assert_eq!(n, 1);
        assert_eq!(batch.iter().next().unwrap(), (b_addr, &b"hello a"[..]));

        // 2. Refused, then a send to a working peer.
        send(a, closed, b"still nobody", None).await;
        send(a, b_addr, b"hello b", None).await;
        recv(b, &mut b_batch, Duration::from_secs(5))
            .await
            .expect("send broken");
        assert_eq!(b_batch.iter().next().unwrap(), (a_addr, &b"hello b"[..]));

        // 3. Nothing else is waiting: a receive now just waits (any pending error is skipped).
        assert_eq!(recv(a, &mut batch, Duration::from_millis(100)).await, None);
        send(b, a_addr, b"again", None).await;
        recv(a, &mut batch, Duration::from_secs(5))
            .await
            .expect("receive broken");
        assert_eq!(batch.iter().next().unwrap().1, b"again");
    }

    #[tokio::test]
    async fn refused_destination_does_not_break_the_socket_v4() {
        let (a, b) = (bind(V4), bind(V4));
        refused_destination_does_not_break_the_socket(&a, &b, V4).await;
        // Unconnected and without IP_RECVERR, Linux does not report ICMP errors at all.
        assert_eq!(a.recv_errors(), 0);
    }

    #[tokio::test]
    async fn refused_destination_does_not_break_the_socket_v6() {
        let (Some(a), Some(b)) = (bind_v6(), bind_v6()) else {
            return;
        };
        refused_destination_does_not_break_the_socket(&a, &b, V6).await;
    }

    /// With `IP_RECVERR` the ICMP errors really do surface as `ECONNREFUSED` on this socket's
    /// later calls (tokio does not wake a reader for an error alone, so they show up on the next
    /// send or on the receive of the next datagram); they must be skipped and counted, never
    /// returned.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn reported_icmp_errors_are_skipped_and_counted() {
        for addr in [V4, V6] {
            if addr == V6 && bind_v6().is_none() {
                continue;
            }
            let a = bind_with_recverr(addr);
            let b = bind(addr);
            refused_destination_does_not_break_the_socket(&a, &b, addr).await;
            assert!(a.send_errors() >= 1, "no ICMP error was reported on {addr}");
            assert_eq!(a.recv_errors(), 0);

            // One refused datagram, then a receive: the error is skipped and counted once (the
            // error queue entry and the pending error are the same failure).
            let a = bind_with_recverr(addr);
            send(&a, closed_port(addr), b"nobody home", None).await;
            send(&b, a.local_addr().unwrap(), b"data", None).await;
            let mut batch = RecvBatch::new(&a);
            recv(&a, &mut batch, Duration::from_secs(5))
                .await
                .expect("receive broken");
            assert_eq!(batch.iter().next().unwrap().1, b"data");
            assert_eq!(a.send_errors(), 1, "on {addr}");
        }
    }
}
