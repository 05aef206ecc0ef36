//! A minimal HTTP/1.1 GET over a fresh TCP connection, for the tests of the monitor's pages:
//! enough to read a status, a content type and a small body sent whole, and no client library
//! whose own behaviour the tests would then be checking too.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET `path` from `addr`; returns status, content type (lower case, empty if none) and body.
/// Panics, failing the test, if the server does not answer with an HTTP response.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    get(addr, path, None).await
}

/// [`http_get`] with an `Accept` header, for endpoints that choose their content type by it.
pub async fn http_get_accepting(
    addr: SocketAddr,
    path: &str,
    accept: &str,
) -> (u16, String, String) {
    get(addr, path, Some(accept)).await
}

async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    // Bodies are small and sent whole; a chunked one is not expected.
    (status, content_type, body.to_owned())
}
