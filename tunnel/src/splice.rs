//! Moving bytes between a local socket (the client's on the agent, the backend's on the gateway)
//! and a Ferry stream, so that nothing is lost silently.
//!
//! - Each direction is copied until its source ends; the end is then passed on as a half-close
//!   (FIN), so request/response protocols that half-close keep working through the tunnel.
//! - If either side fails (the socket errors or is reset, the stream is reset or its connection
//!   dies) the splice stops at once, resets the Ferry stream and aborts the socket with a TCP
//!   reset (`SO_LINGER` 0), so the far end sees an error, never a clean but truncated close.

use std::io;

use ferry_transport::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
}

/// A local stream socket that can be aborted with a reset.
pub trait Abort: AsyncRead + AsyncWrite + Unpin + Send {
    /// Closes the socket so that its peer sees an error (TCP: RST) rather than a clean close.
    fn abort(self);
}

impl Abort for tokio::net::TcpStream {
    fn abort(self) {
        // A zero linger makes close() send RST and discard unsent data.
        let _ = self.set_zero_linger();
        drop(self);
    }
}

#[cfg(unix)]
impl Abort for tokio::net::UnixStream {
    fn abort(self) {
        // Unix-domain sockets have no reset; the peer sees the close (and EPIPE/ECONNRESET if it
        // still writes). Dropping without shutdown is the closest equivalent.
        drop(self);
    }
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
}

/// Bytes moved by a splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// From the local socket into the tunnel.
    pub to_tunnel: u64,
    /// From the tunnel to the local socket.
    pub from_tunnel: u64,
}

enum Side {
    Socket,
    Tunnel,
}

/// Copies `r` to `w` until `r` ends, then shuts `w` down. Errors say which side failed.
async fn pump<R, W>(r: &mut R, w: &mut W, r_side: Side, w_side: Side) -> Result<u64, SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let wrap = |side: &Side, e: io::Error| match side {
        Side::Socket => SpliceError::Socket(e),
        Side::Tunnel => SpliceError::Tunnel(e),
    };
    let mut buf = vec![0u8; 32 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.map_err(|e| wrap(&r_side, e))?;
        if n == 0 {
            w.shutdown().await.map_err(|e| wrap(&w_side, e))?;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await.map_err(|e| wrap(&w_side, e))?;
        total += n as u64;
    }
}

/// Splices `socket` and `stream` until both directions ended. On failure the stream is reset
/// and the socket aborted before the error is returned.
pub async fn splice<S: Abort>(socket: S, stream: Stream) -> Result<SpliceStats, SpliceError> {
    let (mut sr, mut sw) = tokio::io::split(socket);
    let (mut tr, mut tw) = tokio::io::split(stream);
    let result = tokio::try_join!(
        pump(&mut sr, &mut tw, Side::Socket, Side::Tunnel),
        pump(&mut tr, &mut sw, Side::Tunnel, Side::Socket),
    );
    match result {
        Ok((to_tunnel, from_tunnel)) => Ok(SpliceStats {
            to_tunnel,
            from_tunnel,
        }),
        Err(e) => {
            let mut stream = tr.unsplit(tw);
            stream.reset(codes::SOCKET_FAILED);
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
        let server =
            Endpoint::server("127.0.0.1:0".parse().unwrap(), ServerConfig::default()).unwrap();
        let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = client
            .connect(server.local_addr(), TransportConfig::default())
            .await
            .unwrap();
        let near = conn.open_stream().await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp_accepted, _) = listener.accept().await.unwrap();
        let splice_task = tokio::spawn(splice(tcp_accepted, near));
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
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"hello world",
            "the client's FIN reached the far end after its bytes"
        );
        far.write_all(b"response").await.unwrap();
        far.shutdown().await.unwrap();
        let mut back = Vec::new();
        tcp.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response");
        let stats = task.await.unwrap().unwrap();
        assert_eq!(
            stats,
            SpliceStats {
                to_tunnel: 11,
                from_tunnel: 8
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_stream_resets_the_client_socket() {
        let (mut tcp, mut far, task, _keep) = setup().await;
        let mut buf = [0u8; 5];
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
}
