//! Where the benchmark's sockets and processes live: on this host, or in a network namespace
//! that `ferry-bench` made for the run.
//!
//! A namespace here is anonymous: it is created by `unshare` on a short-lived thread and held
//! only by a file descriptor (and by the processes started in it), so it disappears with its
//! last holder, even if the benchmark is killed. Sockets are made in a namespace by a thread
//! that joins it just for the call (a socket stays in the namespace it was created in, whatever
//! thread uses it later); processes join it between fork and exec. Every child also gets
//! `PR_SET_PDEATHSIG`, so no tunnel process outlives an interrupted run.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

/// A network namespace, held open by a descriptor.
#[derive(Debug)]
pub struct Netns {
    handle: File,
    /// TCP congestion control of the sockets the benchmark makes here (`TCP_CONGESTION`).
    tcp_cc: Option<String>,
}

impl Netns {
    /// A new, empty namespace (only a loopback interface, down).
    pub fn create() -> io::Result<Netns> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare affects only this thread, which ends right after.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Netns {
                    handle: File::open("/proc/thread-self/ns/net")?,
                    tcp_cc: None,
                })
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        })
    }

    /// Makes the TCP sockets the benchmark creates here use congestion control `name` (a
    /// listener's setting passes to the connections it accepts). Fails if the kernel lacks it.
    pub fn set_tcp_congestion(&mut self, name: &str) -> io::Result<()> {
        let probe = self.run(|| std::net::TcpListener::bind("127.0.0.1:0"))?;
        set_congestion(probe.as_raw_fd(), name)?;
        self.tcp_cc = Some(name.to_owned());
        Ok(())
    }

    /// Runs `f` on a thread that has joined this namespace: sockets `f` creates belong to it.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> io::Result<R> + Send) -> io::Result<R> {
        let fd = self.handle.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this short-lived thread only; `fd` outlives the scope.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        })
    }
}

/// The side of the link a socket or process is on.
#[derive(Debug, Clone)]
pub enum Place {
    /// This host's own network (loopback runs).
    Host,
    /// A namespace of the run.
    Netns(Arc<Netns>),
}

impl Place {
    /// A TCP socket of this place for connecting to `addr`, not yet connected.
    fn socket(&self, addr: SocketAddr) -> io::Result<TcpSocket> {
        let new = move || {
            if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
        };
        match self {
            Place::Host => new(),
            Place::Netns(ns) => {
                let socket = ns.run(new)?;
                if let Some(cc) = &ns.tcp_cc {
                    set_congestion(socket.as_raw_fd(), cc)?;
                }
                Ok(socket)
            }
        }
    }

    /// A TCP connection from this place.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        match self {
            Place::Host => TcpStream::connect(addr).await,
            Place::Netns(_) => self.socket(addr)?.connect(addr).await,
        }
    }

    /// A TCP connection from this place whose receive buffer is fixed at `bytes` (the kernel
    /// does not grow it): a client that reads little, or not at all.
    pub async fn connect_with_recv_buffer(
        &self,
        addr: SocketAddr,
        bytes: u32,
    ) -> io::Result<TcpStream> {
        let socket = self.socket(addr)?;
        socket.set_recv_buffer_size(bytes)?;
        socket.connect(addr).await
    }

    /// A TCP listener at `addr` in this place, with room for `many`'s thousands of
    /// connections arriving at once in its accept queue (as the agent's listeners have).
    pub async fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let std_listener = match self {
            Place::Host => {
                let listener = TcpListener::bind(addr).await?;
                widen_backlog(listener.as_raw_fd())?;
                return Ok(listener);
            }
            Place::Netns(ns) => {
                let listener = ns.run(|| std::net::TcpListener::bind(addr))?;
                if let Some(cc) = &ns.tcp_cc {
                    set_congestion(listener.as_raw_fd(), cc)?;
                }
                listener
            }
        };
        widen_backlog(std_listener.as_raw_fd())?;
        std_listener.set_nonblocking(true)?;
        TcpListener::from_std(std_listener)
    }

    /// A UDP socket bound to `addr` in this place.
    pub fn udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let bind = move || std::net::UdpSocket::bind(addr);
        let socket = match self {
            Place::Host => bind()?,
            Place::Netns(ns) => ns.run(bind)?,
        };
        socket.set_nonblocking(true)?;
        UdpSocket::from_std(socket)
    }

    /// A command that runs `program` in this place, and is killed if this process dies.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let ns_fd = match self {
            Place::Host => None,
            Place::Netns(ns) => Some(ns.handle.as_raw_fd()),
        };
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(fd) = ns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `ip ARGS` in this place; an error names the command and what it printed.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let out = self
            .command("ip")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// Accept-queue length asked of the kernel (capped by `net.core.somaxconn`): the default
/// listeners' 128 or 1024 overflow when `many` connects thousands of clients at once, and each
/// dropped SYN costs a one-second retransmission that would be charged to the peer.
const LISTEN_BACKLOG: libc::c_int = 8192;

/// Raises the backlog of a listening socket: Linux lets `listen` be called again to change it.
fn widen_backlog(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: `fd` is a listening socket owned by the caller.
    if unsafe { libc::listen(fd, LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `TCP_CONGESTION` on a socket.
fn set_congestion(fd: std::os::fd::RawFd, name: &str) -> io::Result<()> {
    // SAFETY: a live socket and a buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("TCP congestion control {name}: {e} (see net.ipv4.tcp_available_congestion_control)"),
        ))
    }
}

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: a name, then the flags (the rest of the union unused).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Creates TUN device `name` (layer 3, no packet-information header) in `ns` and returns its
/// descriptor: each read is one IP packet the namespace sent into it, each write one it receives.
pub fn create_tun(ns: &Netns, name: &str) -> io::Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!(
            "interface name {name} is too long"
        )));
    }
    ns.run(|| {
        let path = c"/dev/net/tun";
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open /dev/net/tun: {e}"),
            ));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _rest: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a properly laid out ifreq that lives across the call.
        if unsafe { libc::ioctl(owned.as_raw_fd(), TUNSETIFF as _, &mut req) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
        }
        Ok(owned)
    })
}
