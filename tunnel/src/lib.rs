//! The tunnel pair as library code: the agent and the gateway themselves, and what they share,
//! written once.
//!
//! - [`agent`]: the agent, run as `agent::run(config, shutdown)`: client listeners, sessions to
//!   the gateways with reconnection, a stream per client on the least-loaded session.
//! - [`gateway`]: the gateway, run as `gateway::run(config, shutdown)`: agent sessions, each
//!   stream forwarded to the least-loaded healthy backend of its service.
//!
//! - [`address`]: `tcp://HOST:PORT` and `unix:/PATH` endpoints, parsed with one-line errors.
//! - [`chunk_buffer`]: the pool of chunk-sized buffers splices borrow only while bytes pass.
//! - [`allow`]: CIDR allow-lists that treat IPv4-mapped IPv6 sources as the IPv4 address they are.
//! - [`compress`]: per-stream compression (snappy, deflate, zstd) in chunks, adaptive, bomb-proof.
//! - [`config`]: `--config FILE` (TOML whose keys are the flags).
//! - [`duration`]: durations on the command line (`250ms`, `3s`).
//! - [`preamble`]: the few bytes that open every tunnelled stream: which service, which client.
//! - [`process`]: logging set-up, the shutdown signal, and draining work in progress.
//! - [`proxy_protocol`]: PROXY protocol v1/v2 headers so backends see the real client address.
//! - [`static_secret`]: the gateway's secret for stateless resets and address tokens (its TLS
//!   key, or a key file), the same across restarts and a fleet.
//! - [`tls`]: the `--crypto` and `--tls-*` flags, read into the protocol's crypto configuration.
//! - [`registry`]: live sessions, totals of closed ones and the last 100, for the monitor.
//! - [`splice`]: moving bytes between a client socket and a Ferry stream with "nothing lost
//!   silently" semantics: half-close propagates, failure becomes a reset on the other side.
//!
//! Crate-private, shared by agent and gateway: `backoff` (the doubling pause after failures),
//! `load` (streams carried, for least-loaded choices), `monitoring` (the monitor's listener,
//! task and the common part of a snapshot).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod agent;
pub mod allow;
mod backoff;
pub mod chunk_buffer;
pub mod compress;
pub mod config;
pub mod duration;
pub mod gateway;
mod load;
mod monitoring;
pub mod preamble;
pub mod process;
pub mod proxy_protocol;
pub mod registry;
pub mod reload;
pub mod splice;
pub mod start_error;
pub mod static_secret;
pub mod systemd;
pub mod tls;
pub mod udp;
