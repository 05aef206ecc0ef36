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
    /// Test hook: behave as if GSO were unavailable.
    #[cfg(test)]
    gso_off: std::sync::atomic::AtomicBool,
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
            #[cfg(test)]
            gso_off: std::sync::atomic::AtomicBool::new(false),
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
        if self.gso_off.load(Ordering::Relaxed) {
            return 1;
        }
        self.state.max_gso_segments()
    }

    /// Most datagrams the kernel may coalesce into one receive buffer with GRO; 1 without GRO.
    pub fn max_recv_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Send failures so far: datagrams dropped because their destination failed (unreachable,
    /// refused, too big), datagrams cut from a split batch by a full socket buffer, and errors
    /// the kernel reported late for datagrams already sent (ICMP unreachable surfacing on a
    /// later send).
    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Per-destination errors skipped while receiving (ICMP errors for earlier sends that the
    /// kernel reports on `recvmmsg`, e.g. `ECONNREFUSED`, or Windows' `WSAECONNRESET`).
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
                Err(e) if is_destination_error(&e) || quinn_udp::is_msg_size_err(&e) => {
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
                self.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "UDP error reported for an earlier datagram; retrying send");
                send()
            }
            result => result,
        }
    }

    fn count_send_drop(&self, e: &io::Error, destination: SocketAddr, datagrams: usize) {
        self.send_errors
            .fetch_add(datagrams as u64, Ordering::Relaxed);
        tracing::debug!(error = %e, %destination, datagrams, "UDP send failed; datagrams dropped");
    }

    /// Receives as many datagrams as are ready (up to [`quinn_udp::BATCH_SIZE`] buffers, each
    /// holding up to [`max_recv_segments`](Self::max_recv_segments) GRO segments) into `batch`,
    /// replacing its previous contents. Returns the number of datagrams, each GRO segment
    /// counted as one; read them with [`RecvBatch::iter`].
    ///
    /// Per-destination errors reported on receive (`ECONNREFUSED` from an ICMP port
    /// unreachable, and the like) are counted in [`recv_errors`](Self::recv_errors) and skipped.
    /// `Err` means the socket itself failed.
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
                Err(e) if is_destination_error(&e) => {
                    self.recv_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "UDP receive reported a per-destination error; skipped");
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

/// Errors that concern one destination (or one datagram), not the socket: the datagram is
/// dropped and the socket keeps working.
fn is_destination_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
            | AddrNotAvailable
            | PermissionDenied
            | InvalidInput
            | NotConnected
            | TimedOut
    ) {
        return true;
    }
    if quinn_udp::is_msg_size_err(e) {
        return true;
    }
    #[cfg(unix)]
    if let Some(code) = e.raw_os_error() {
        return matches!(
            code,
            libc::ENOBUFS | libc::EHOSTDOWN | libc::EAFNOSUPPORT | libc::EPROTO
        ) || {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                code == libc::ENONET
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            {
                false
            }
        };
    }
    false
}

/// Errors that an ICMP message about an earlier datagram leaves pending on the socket.
fn is_async_icmp_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable
    )
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
    /// largest datagram and for a full GRO buffer, so nothing is ever truncated.
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
