//! Why an agent or a gateway could not start, or stopped serving: one error type for both
//! (they fail at the same things: a listener, a UDP socket, the monitor), each variant one
//! line that names what failed, so an embedding program can tell a port in use from a path
//! that is not a socket without parsing a message.

use std::net::SocketAddr;
use std::path::PathBuf;

use ferry_monitor::MonitorError;

use crate::address::Address;

/// Why [`agent`](crate::agent) or [`gateway`](crate::gateway) start-up (or serving) failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A client listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The listener's address.
        address: Address,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A Unix-socket listener's path exists and is not a socket.
    #[error("cannot listen on unix:{}: the path exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// A Unix-socket listener's path is a socket something still listens on.
    #[error("cannot listen on unix:{}: address already in use", .0.display())]
    UnixInUse(PathBuf),
    /// A Unix socket left by an earlier run could not be removed.
    #[error("cannot remove stale socket {}: {source}", .path.display())]
    StaleSocket {
        /// The socket's path.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A Unix-socket listener on a platform without them.
    #[error("unix sockets are not supported on this platform")]
    UnixUnsupported,
    /// The agent's UDP sockets toward its gateways could not be opened.
    #[error("cannot open a UDP socket: {0}")]
    UdpSocket(#[source] std::io::Error),
    /// The gateway's UDP address is taken.
    #[error("cannot listen on udp {0}: address already in use")]
    UdpInUse(SocketAddr),
    /// The gateway's UDP socket could not be bound.
    #[error("cannot listen on udp {address}: {source}")]
    UdpListen {
        /// The address asked for.
        address: SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP monitor could not be bound.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// The monitor's listener has no local address (the socket failed).
    #[error("monitor listener failed: {0}")]
    MonitorListener(#[source] std::io::Error),
    /// The gateway's UDP socket failed while serving.
    #[error("UDP socket failed")]
    UdpFailed,
}
