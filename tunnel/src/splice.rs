//! Moving bytes between a local socket (the client's on the agent, the backend's on the gateway)
//! and a Ferry stream, so that nothing is lost silently.
//!
//! - Each direction is copied until its source ends; the end is then passed on as a half-close
//!   (FIN), so request/response protocols that half-close keep working through the tunnel.
//! - If either side fails (the socket errors or is reset, the stream is reset or its connection
//!   dies, the compressed data is corrupt) the splice stops at once, resets the Ferry stream and
//!   aborts the socket with a TCP reset (`SO_LINGER` 0), so the far end sees an error, never a
//!   clean but truncated close. From the splice's start the socket closes with a reset unless
//!   both directions ended cleanly ([`Abort::reset_unless_finished`]), so even this process
//!   dying (killed, crashed) resets the far end rather than ending its transfer with a FIN.
//! - Bytes into the tunnel are compressed chunk by chunk with this end's codec, bytes out of it
//!   decoded whatever the peer's codec ([`crate::compress`]); a [`Meter`] counts both sides of
//!   that, live, for the session's accounting.
//! - A quiet connection costs only its sockets and a few hundred bytes of task state: each
//!   direction waits for data holding no buffer (the socket side polls with a buffer lent just
//!   for the poll, the stream side reads a chunk header into four bytes of its own), takes a
//!   [`ChunkBuffer`] when bytes come and gives it back once they are passed on; a compressing
//!   direction quiet for [`compress::CONTEXT_IDLE`] ends its compression context.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use ferry_transport::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::chunk_buffer::ChunkBuffer;
use crate::compress::{self, Codec, Compression, Decoder, HEADER, NO_COMPRESSION};

/// Reset codes a tunnel puts on a Ferry stream (application range, above the transport's).
pub mod codes {
    /// The local socket failed or was reset.
    pub const SOCKET_FAILED: u64 = 0x101;
    /// The backend could not be reached.
    pub const BACKEND_UNREACHABLE: u64 = 0x102;
    /// The stream named a service the gateway does not have.
    pub const UNKNOWN_SERVICE: u64 = 0x103;
    /// A limit (connections, streams, backend capacity) refused the stream.
    pub const LIMIT: u64 = 0x104;
    /// The stream's preamble was malformed.
    pub const BAD_PREAMBLE: u64 = 0x105;
    /// The process is shutting down and the drain timeout passed.
    pub const SHUTDOWN: u64 = 0x106;
    /// The compressed data was corrupt or a decompression bomb.
    pub const CORRUPT: u64 = 0x107;
    /// The agent's address is not in the gateway's `--allow-ip` (any more: a reload took it
    /// out while its session was up).
    pub const NOT_ALLOWED: u64 = 0x108;
}

/// A local stream socket that can be aborted with a reset.
pub trait Abort: AsyncRead + AsyncWrite + Unpin + Send {
    /// Closes the socket so that its peer sees an error (TCP: RST) rather than a clean close.
    fn abort(self);

    /// From now on, any close of the socket other than [`Abort::finished_cleanly`]'s resets
    /// the peer, even when no code of ours runs any more: the process killed (SIGKILL, a
    /// crash, the OOM killer), a task dropped. The kernel closes a socket with zero linger by
    /// sending RST. Without it, a dying process's sockets end with FIN, and a client halfway
    /// through a download reads a clean end-of-file.
    fn reset_unless_finished(&self);

    /// Both directions ended cleanly: closing the socket is an orderly close again (what it
    /// has queued is still delivered, then FIN).
    fn finished_cleanly(&self);
}

impl Abort for tokio::net::TcpStream {
    fn abort(self) {
        // A zero linger makes close() send RST and discard unsent data.
        let _ = self.set_zero_linger();
        drop(self);
    }

    fn reset_unless_finished(&self) {
        let _ = self.set_zero_linger();
    }

    #[allow(deprecated)] // Deprecated for a non-zero linger, which blocks in close(); None does not.
    fn finished_cleanly(&self) {
        let _ = self.set_linger(None);
    }
}

#[cfg(unix)]
impl Abort for tokio::net::UnixStream {
    fn abort(self) {
        // Unix-domain sockets have no reset: the peer reads end-of-file (and a write gets
        // EPIPE). Linux reports ECONNRESET to the peer's read instead only when the closing
        // socket still held unread data, which is not ours to choose. Dropping without a
        // shutdown is the closest equivalent.
        drop(self);
    }

    fn reset_unless_finished(&self) {}

    fn finished_cleanly(&self) {}
}

/// Which side of a splice failed.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The local socket.
    #[error("local socket: {0}")]
    Socket(io::Error),
    /// The Ferry stream (reset by the peer, or its connection ended).
    #[error("tunnel stream: {0}")]
    Tunnel(io::Error),
    /// The peer's compressed data did not decode.
    #[error("tunnel stream: {0}")]
    Corrupt(compress::DecodeError),
}

/// Bytes moved by a splice: payload (what the sockets saw) and encoded (what the stream
/// carried, after compression and chunk headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Payload from the local socket into the tunnel.
    pub to_tunnel: u64,
    /// Payload from the tunnel to the local socket.
    pub from_tunnel: u64,
    /// Encoded bytes written into the stream.
    pub to_tunnel_encoded: u64,
    /// Encoded bytes read from the stream.
    pub from_tunnel_encoded: u64,
}

/// Live byte counts of many splices (a session's, or a process's): payload and encoded, each
/// way. Shared by reference; updated as every chunk passes.
#[derive(Debug, Default)]
pub struct Meter {
    /// Payload into the tunnel.
    pub payload_out: AtomicU64,
    /// Payload out of the tunnel.
    pub payload_in: AtomicU64,
    /// Encoded bytes into the tunnel.
    pub encoded_out: AtomicU64,
    /// Encoded bytes out of the tunnel.
    pub encoded_in: AtomicU64,
}

impl Meter {
    /// The counts now.
    pub fn snapshot(&self) -> SpliceStats {
        SpliceStats {
            to_tunnel: self.payload_out.load(Ordering::Relaxed),
            from_tunnel: self.payload_in.load(Ordering::Relaxed),
            to_tunnel_encoded: self.encoded_out.load(Ordering::Relaxed),
            from_tunnel_encoded: self.encoded_in.load(Ordering::Relaxed),
        }
    }
}

/// How a splice encodes and decodes, and where it counts.
#[derive(Debug, Clone, Copy)]
pub struct SpliceOptions<'a> {
    /// The codec (and dictionary) for what this end sends into the tunnel, and the
    /// dictionaries it decodes what it receives with.
    pub compression: &'a Compression,
    /// Counters to add to (each chunk is counted once in every meter given).
    pub meters: &'a [&'a Meter],
}

impl Default for SpliceOptions<'_> {
    fn default() -> Self {
        Self {
            compression: &NO_COMPRESSION,
            meters: &[],
        }
    }
}

fn add(counter: impl Fn(&Meter) -> &AtomicU64, meters: &[&Meter], n: usize) {
    for m in meters {
        counter(m).fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Waits until `socket` has bytes to read (or has ended) without holding a buffer, then reads
/// at most [`compress::MAX_CHUNK`] of them into a borrowed buffer, behind [`HEADER`] bytes of
/// room for the chunk header. `None` when the socket ended.
///
/// Each poll borrows a buffer for the length of one `poll_read`: a socket with nothing to read
/// returns `Pending` having written nothing (the `AsyncRead` contract), and the buffer goes
/// straight back.
async fn read_payload<R: AsyncRead + Unpin>(socket: &mut R) -> io::Result<Option<ChunkBuffer>> {
    std::future::poll_fn(|cx| {
        let mut buf = ChunkBuffer::take();
        buf.resize(HEADER, 0);
        let mut reader = (&mut *socket).take(compress::MAX_CHUNK as u64);
        let polled = std::pin::pin!(reader.read_buf(&mut *buf)).poll(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(Some(buf))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    })
    .await
}

/// Copies `socket` into `stream` as encoded chunks until the socket ends, then finishes the
/// stream. Returns (payload, encoded) byte counts.
pub async fn send_chunks<R, W>(
    socket: &mut R,
    stream: &mut W,
    options: SpliceOptions<'_>,
) -> Result<(u64, u64), SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut encoder = options.compression.encoder();
    let (mut payload, mut encoded) = (0u64, 0u64);
    loop {
        let read = if encoder.holds_context() {
            match tokio::time::timeout(compress::CONTEXT_IDLE, read_payload(socket)).await {
                Ok(read) => read,
                Err(_quiet) => {
                    let mut end = ChunkBuffer::take();
                    if encoder.end_context(&mut end) {
                        stream.write_all(&end).await.map_err(SpliceError::Tunnel)?;
                        encoded += end.len() as u64;
                        add(|m| &m.encoded_out, options.meters, end.len());
                    }
                    continue;
                }
            }
        } else {
            read_payload(socket).await
        };
        let Some(mut input) = read.map_err(SpliceError::Socket)? else {
            stream.shutdown().await.map_err(SpliceError::Tunnel)?;
            return Ok((payload, encoded));
        };
        let n = input.len() - HEADER;
        let chunk = if encoder.codec() == Codec::None {
            // Sent as read: the header goes in the room left in front of the payload.
            input[..HEADER].copy_from_slice(&compress::raw_header(n));
            input
        } else {
            // The input goes back before the write, which waits as long as the peer does not
            // read: a stalled stream holds one buffer, not two.
            let mut out = ChunkBuffer::take();
            encoder.encode(&input[HEADER..], &mut out);
            out
        };
        stream
            .write_all(&chunk)
            .await
            .map_err(SpliceError::Tunnel)?;
        payload += n as u64;
        encoded += chunk.len() as u64;
        add(|m| &m.payload_out, options.meters, n);
        add(|m| &m.encoded_out, options.meters, chunk.len());
    }
}

/// Decodes chunks from `stream` into `socket` until the stream ends (at a chunk boundary),
/// then shuts the socket's write side. Returns (payload, encoded) byte counts.
pub async fn receive_chunks<R, W>(
    stream: &mut R,
    socket: &mut W,
    options: SpliceOptions<'_>,
) -> Result<(u64, u64), SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let meters = options.meters;
    let mut decoder = options.compression.decoder();
    let (mut payload, mut encoded) = (0u64, 0u64);
    loop {
        // A quiet stream waits here, holding four bytes.
        let mut header = [0u8; HEADER];
        let first = stream
            .read(&mut header)
            .await
            .map_err(SpliceError::Tunnel)?;
        if first == 0 {
            socket.shutdown().await.map_err(SpliceError::Socket)?;
            return Ok((payload, encoded));
        }
        // The stream ending inside a chunk is an error (read_exact says UnexpectedEof).
        stream
            .read_exact(&mut header[first..])
            .await
            .map_err(SpliceError::Tunnel)?;
        let (kind, len) = Decoder::header(header).map_err(SpliceError::Corrupt)?;
        let mut body = ChunkBuffer::take();
        // Zeroed once, not at every read: a Ferry stream reads into initialised memory only,
        // and a chunk arrives in many reads when its packets trickle in.
        body.resize(len, 0);
        stream
            .read_exact(&mut body)
            .await
            .map_err(SpliceError::Tunnel)?;
        // A raw chunk is written from where it was read; a compressed one is decoded into a
        // second buffer and its body goes back first. Either way a socket that does not read
        // (its write waits) holds one buffer, not two.
        let data = if Decoder::is_raw(kind) {
            // Checked like any chunk; the output buffer, never touched, allocates nothing.
            decoder
                .decode(kind, &body, &mut Vec::new())
                .map_err(SpliceError::Corrupt)?;
            body
        } else {
            let mut out = ChunkBuffer::take();
            let n = decoder
                .decode(kind, &body, &mut out)
                .map_err(SpliceError::Corrupt)?
                .len();
            // `decode` returns `out` itself for every kind but RAW.
            debug_assert_eq!(n, out.len());
            drop(body);
            out
        };
        socket.write_all(&data).await.map_err(SpliceError::Socket)?;
        payload += data.len() as u64;
        encoded += (HEADER + len) as u64;
        add(|m| &m.payload_in, meters, data.len());
        add(|m| &m.encoded_in, meters, HEADER + len);
    }
}

/// Splices `socket` and `stream` until both directions ended. On failure the stream is reset
/// (with [`codes::CORRUPT`] for undecodable data, else [`codes::SOCKET_FAILED`]) and the socket
/// aborted before the error is returned.
pub async fn splice<S: Abort>(
    socket: S,
    stream: Stream,
    options: SpliceOptions<'_>,
) -> Result<SpliceStats, SpliceError> {
    socket.reset_unless_finished();
    let (mut sr, mut sw) = tokio::io::split(socket);
    let (mut tr, mut tw) = tokio::io::split(stream);
    let result = tokio::try_join!(
        send_chunks(&mut sr, &mut tw, options),
        receive_chunks(&mut tr, &mut sw, options),
    );
    match result {
        Ok(((to_tunnel, to_tunnel_encoded), (from_tunnel, from_tunnel_encoded))) => {
            sr.unsplit(sw).finished_cleanly();
            Ok(SpliceStats {
                to_tunnel,
                from_tunnel,
                to_tunnel_encoded,
                from_tunnel_encoded,
            })
        }
        Err(e) => {
            let mut stream = tr.unsplit(tw);
            let code = match &e {
                SpliceError::Corrupt(reason) => {
                    // The peer's data, or the two ends' settings (a dictionary only one end
                    // holds): worth an operator's eye, unlike a client hanging up.
                    crate::warn_limited!(reason = %reason, "stream reset: what the peer sent cannot be decoded");
                    codes::CORRUPT
                }
                _ => codes::SOCKET_FAILED,
            };
            stream.reset(code);
            sr.unsplit(sw).abort();
            Err(e)
        }
    }
}

/// Resets `stream` with `code` (its peer sees the code) and aborts `socket` if given: for
/// streams that fail before any splice starts (unreachable backend, unknown service, limits).
pub fn refuse<S: Abort>(mut stream: Stream, code: u64, socket: Option<S>) {
    stream.reset(code);
    if let Some(s) = socket {
        s.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_transport::{Connection, Endpoint, ServerConfig, TransportConfig};
    use tokio::net::{TcpListener, TcpStream};

    /// Endpoints and connections a test keeps alive while it runs.
    type Keep = (Endpoint, Endpoint, Connection, Connection);

    /// A Ferry client/server pair on loopback and a TCP socket pair; the TCP "client" end is
    /// returned to the test, the other end is spliced into a stream whose far end is returned.
    async fn setup() -> (
        TcpStream,
        Stream,
        tokio::task::JoinHandle<Result<SpliceStats, SpliceError>>,
        Keep,
    ) {
        setup_with(Codec::None).await
    }

    /// As [`setup`], the splice compressing with `codec`.
    async fn setup_with(
        codec: Codec,
    ) -> (
        TcpStream,
        Stream,
        tokio::task::JoinHandle<Result<SpliceStats, SpliceError>>,
        Keep,
    ) {
        let (server, client, conn) = session().await;
        let near = conn.open_stream().await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp_accepted, _) = listener.accept().await.unwrap();
        let compression = Compression::new(codec);
        let splice_task = tokio::spawn(async move {
            let options = SpliceOptions {
                compression: &compression,
                meters: &[],
            };
            splice(tcp_accepted, near, options).await
        });
        // Something must be sent for the server to learn of the stream.
        let mut tcp_client = tcp_client;
        tcp_client.write_all(b"hello").await.unwrap();
        let sconn = server.accept().await.unwrap();
        let far = sconn.accept_stream().await.unwrap();
        (tcp_client, far, splice_task, (client, server, conn, sconn))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_close_propagates_both_ways() {
        let (mut tcp, mut far, task, _keep) = setup().await;
        tcp.write_all(b" world").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut got = Vec::new();
        receive_chunks(&mut far, &mut got, SpliceOptions::default())
            .await
            .unwrap();
        assert_eq!(
            got, b"hello world",
            "the client's FIN reached the far end after its bytes"
        );
        let mut response = &b"response"[..];
        send_chunks(&mut response, &mut far, SpliceOptions::default())
            .await
            .unwrap();
        let mut back = Vec::new();
        tcp.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response");
        let stats = task.await.unwrap().unwrap();
        assert_eq!((stats.to_tunnel, stats.from_tunnel), (11, 8));
        // Two chunks in ("hello", " world"), one out, each with a 4-byte header.
        assert_eq!(
            (stats.to_tunnel_encoded, stats.from_tunnel_encoded),
            (19, 12)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_stream_resets_the_client_socket() {
        let (mut tcp, mut far, task, _keep) = setup().await;
        let mut buf = [0u8; 9];
        far.read_exact(&mut buf).await.unwrap();
        far.reset(codes::BACKEND_UNREACHABLE);
        let mut rest = Vec::new();
        let err = tcp.read_to_end(&mut rest).await.unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionReset,
            "client sees RST, not a clean close"
        );
        assert!(matches!(task.await.unwrap(), Err(SpliceError::Tunnel(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aborted_client_resets_the_far_stream() {
        let (tcp, mut far, task, _keep) = setup().await;
        tcp.abort();
        let mut rest = Vec::new();
        let err = far.read_to_end(&mut rest).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert!(matches!(task.await.unwrap(), Err(SpliceError::Socket(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_compressed_data_resets_the_stream_and_the_client() {
        let (mut tcp, mut far, task, _keep) = setup().await;
        let mut buf = [0u8; 9];
        far.read_exact(&mut buf).await.unwrap();
        // A FLATE chunk whose body is not deflate.
        far.write_all(&[2, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let mut rest = Vec::new();
        let err = tcp.read_to_end(&mut rest).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(matches!(task.await.unwrap(), Err(SpliceError::Corrupt(_))));
        let err = far.read_to_end(&mut rest).await.unwrap_err();
        assert!(err.to_string().contains("0x107"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compressed_text_arrives_intact_and_the_meter_sees_the_saving() {
        let text: Vec<u8> = b"{\"id\":\"bid-1\",\"imp\":[{\"banner\":{\"w\":320,\"h\":50}}]}\n"
            .iter()
            .copied()
            .cycle()
            .take(500_000)
            .collect();
        for codec in [Codec::Snappy, Codec::Flate(1), Codec::Flate(6)] {
            let (mut tcp, far, _task, keep) = setup_with(codec).await;
            let meter = Meter::default();
            let writer = {
                let text = text.clone();
                tokio::spawn(async move {
                    tcp.write_all(&text).await.unwrap();
                    tcp.shutdown().await.unwrap();
                    tcp
                })
            };
            let mut got = Vec::new();
            let mut far = far;
            let options = SpliceOptions {
                meters: &[&meter],
                ..SpliceOptions::default()
            };
            receive_chunks(&mut far, &mut got, options).await.unwrap();
            let _tcp = writer.await.unwrap();
            assert!(
                got.len() == 5 + text.len() && got[5..] == text[..],
                "{codec}"
            );
            let s = meter.snapshot();
            assert_eq!(s.from_tunnel, got.len() as u64);
            assert!(s.from_tunnel_encoded * 5 < s.from_tunnel, "{codec}: {s:?}");
            drop(keep);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_compressed_direction_ends_its_context_on_both_ends() {
        let (mut tcp, mut far, _task, _keep) = setup_with(Codec::Flate(6)).await;
        let mut decoder = Decoder::new();
        // Reads one chunk from the far end of the stream and decodes it.
        async fn next_payload(far: &mut Stream, decoder: &mut Decoder<'_>) -> Vec<u8> {
            let mut header = [0u8; HEADER];
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                far.read_exact(&mut header),
            )
            .await
            .expect("a chunk within 10 s")
            .unwrap();
            let (kind, len) = Decoder::header(header).unwrap();
            let mut body = vec![0u8; len];
            far.read_exact(&mut body).await.unwrap();
            let mut out = Vec::new();
            decoder.decode(kind, &body, &mut out).unwrap().to_vec()
        }
        assert_eq!(next_payload(&mut far, &mut decoder).await, b"hello");
        assert!(decoder.holds_context());
        // Nothing more is written: after a quiet second the sender ends its deflate stream,
        // and the receiver's context goes with it.
        assert_eq!(next_payload(&mut far, &mut decoder).await, b"");
        assert!(!decoder.holds_context());
        // Later data begins a new deflate stream.
        tcp.write_all(b"hello again").await.unwrap();
        assert_eq!(next_payload(&mut far, &mut decoder).await, b"hello again");
    }

    /// A server and a client endpoint on loopback, and the client's connection.
    async fn session() -> (Endpoint, Endpoint, Connection) {
        let server =
            Endpoint::server("127.0.0.1:0".parse().unwrap(), ServerConfig::default()).unwrap();
        let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = client
            .connect(server.local_addr(), TransportConfig::default())
            .await
            .unwrap();
        (server, client, conn)
    }

    /// A TCP socket pair on loopback.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decompression_bomb_resets_only_its_own_stream() {
        let (server, _client, conn) = session().await;
        let sconn_task = tokio::spawn(async move { server.accept().await.map(|c| (c, server)) });
        // Two client connections spliced into two streams of one session.
        let (mut victim, victim_inner) = socket_pair().await;
        let (mut bystander, bystander_inner) = socket_pair().await;
        let victim_stream = conn.open_stream().await.unwrap();
        let bystander_stream = conn.open_stream().await.unwrap();
        let victim_splice = tokio::spawn(async move {
            splice(victim_inner, victim_stream, SpliceOptions::default()).await
        });
        let bystander_splice = tokio::spawn(async move {
            splice(bystander_inner, bystander_stream, SpliceOptions::default()).await
        });
        victim.write_all(b"v").await.unwrap();
        bystander.write_all(b"b").await.unwrap();
        let (sconn, _server) = sconn_task.await.unwrap().unwrap();
        let mut far_victim = sconn.accept_stream().await.unwrap();
        let mut far_bystander = sconn.accept_stream().await.unwrap();
        let mut first = [0u8; 5];
        far_victim.read_exact(&mut first).await.unwrap();
        far_bystander.read_exact(&mut first).await.unwrap();

        // The hostile far end sends a deflate bomb on one stream: 16 MiB of zeros in one chunk.
        let mut deflate = flate2::Compress::new(flate2::Compression::best(), false);
        let mut body = Vec::with_capacity(64 << 10);
        deflate
            .compress_vec(&vec![0u8; 16 << 20], &mut body, flate2::FlushCompress::Sync)
            .unwrap();
        let mut chunk = vec![2u8];
        chunk.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        chunk.extend_from_slice(&body);
        far_victim.write_all(&chunk).await.unwrap();
        let err = victim.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        match victim_splice.await.unwrap() {
            Err(SpliceError::Corrupt(e)) => assert!(e.to_string().contains("bomb"), "{e}"),
            other => panic!("expected a bomb error, got {other:?}"),
        }

        // The other stream of the same session carries on both ways.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        bystander.write_all(&data).await.unwrap();
        bystander.shutdown().await.unwrap();
        let mut got = Vec::new();
        receive_chunks(&mut far_bystander, &mut got, SpliceOptions::default())
            .await
            .unwrap();
        assert!(got.len() == data.len() && got == data);
        let mut reply = &b"still here"[..];
        send_chunks(&mut reply, &mut far_bystander, SpliceOptions::default())
            .await
            .unwrap();
        let mut back = Vec::new();
        bystander.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"still here");
        assert!(bystander_splice.await.unwrap().is_ok());
        assert!(conn.close_reason().is_none(), "the session survived");
    }
}
