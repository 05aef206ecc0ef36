//! An echo service: every stream of every accepted connection is sent back to its sender.
//! Used by the quick start example, the tests and the benchmarks as a backend that needs nothing
//! else; compiled only with the crate's `echo` feature (they turn it on through this crate's
//! dev-dependency on itself), so the shipped library does not carry it.

use tokio::io::AsyncWriteExt;

use crate::Endpoint;

/// Accepts connections on `endpoint` until it fails, echoing every stream (half-close
/// included: the echo finishes when the peer finishes). Run it in a task:
/// `tokio::spawn(ferry_transport::echo::serve(server.clone()))`.
pub async fn serve(endpoint: Endpoint) {
    while let Some(conn) = endpoint.accept().await {
        tokio::spawn(async move {
            while let Some(stream) = conn.accept_stream().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(stream);
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = w.shutdown().await;
                    }
                });
            }
        });
    }
}
