//! A UDP echo backend for the tests of UDP flows: each datagram goes back to its sender,
//! prefixed with the sender's address as the backend saw it and a `|`, so a test can tell the
//! backend sockets (one per flow) apart.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Starts the echo backend on a loopback port of its own; returns its address.
pub async fn udp_echo_backend() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut reply = from.to_string().into_bytes();
            reply.push(b'|');
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}
