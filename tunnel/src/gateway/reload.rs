//! A new configuration applied to the running gateway (the shared machinery, SIGHUP and its
//! reporting, is [`crate::reload`]).
//!
//! What changes live, for what starts from then on:
//! - services and their backends (`--service`, `--backend`), `--backend-max-streams`,
//!   `--connect-timeout`, `--proxy-protocol`, `--compress`: new streams. A removed backend is
//!   no longer picked; its open streams hold it until they end. A kept backend keeps its health.
//! - `--allow-ip`: new sessions (the endpoint's address filter; a session's packets from its
//!   own address are never filtered, so established sessions are not cut) and new streams (an
//!   agent taken out opens no new stream: reset with `NOT_ALLOWED`; its open ones finish).
//! - `--max-connections`, the sessions' transport settings (`--max-streams`, `--idle-timeout`,
//!   `--batch-delay`, `--ack-delay`, `--fec`, `--max-packet-size`) and the TLS certificate and
//!   keys (read again from their files): new sessions, new handshakes. Running sessions keep
//!   what they were made with.
//! - `--drain-timeout`: the next shutdown.
//!
//! What needs a restart, and stays as it is: `--listen` (the bound socket), `--monitor`, the
//! stateless reset key (`--reset-key-file`, or the TLS key it is derived from: sessions' reset
//! tokens come from it), `--server-id` (in every connection ID), and the UDP flows' settings
//! (`--udp-idle-timeout`, `--max-udp-flows`, `--max-udp-flows-per-session`), which running
//! flows and their shared limit were built with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ferry_transport::{AddressFilter, CryptoConfig, Endpoint, TransportConfig};

use super::forward::{Forwarding, Routes};
use super::pool::Pool;
use super::GatewayConfig;
use crate::address::Address;
use crate::allow::AllowList;
use crate::reload::{Changes, Reload, ReloadStatus};

/// Applies new configurations to a running gateway: [`super::Gateway::reloader`].
pub struct GatewayReloader {
    pub(super) endpoint: Endpoint,
    pub(super) fwd: Arc<Forwarding>,
    pub(super) current: Arc<Mutex<GatewayConfig>>,
    pub(super) status: Arc<ReloadStatus>,
}

/// The endpoint's filter for `allow` (`None`: every address).
pub(super) fn address_filter(allow: Option<AllowList>) -> Option<AddressFilter> {
    allow.map(|list| Arc::new(move |a: &SocketAddr| list.allows(a.ip())) as AddressFilter)
}

/// The pools of `services`, keeping the backends of `old` pools that are still named (their
/// health and stream counts), and logging each service's backends.
pub(super) fn pools(
    old: &HashMap<String, Pool>,
    services: HashMap<String, Vec<Address>>,
    backend_max_streams: usize,
) -> HashMap<String, Pool> {
    let mut names: Vec<_> = services.keys().cloned().collect();
    names.sort();
    let pools: HashMap<String, Pool> = services
        .into_iter()
        .map(|(name, addresses)| {
            let pool = match old.get(&name) {
                Some(pool) => pool.reconfigured(addresses, backend_max_streams),
                None => Pool::new(addresses, backend_max_streams),
            };
            (name, pool)
        })
        .collect();
    for name in names {
        let backends: Vec<String> = pools
            .get(&name)
            .map(|p| p.backends().iter().map(|b| b.address.to_string()).collect())
            .unwrap_or_default();
        let shown = if name.is_empty() { "(default)" } else { &name };
        tracing::info!(service = shown, backends = %backends.join(","), "service configured");
    }
    pools
}

/// The settings of `t` that the flags set, for telling what changed: each with its flag.
fn transport_flags(t: &TransportConfig) -> [(&'static str, String); 6] {
    [
        ("max-streams", t.max_concurrent_streams.to_string()),
        ("idle-timeout", format!("{:?}", t.idle_timeout)),
        ("batch-delay", format!("{:?}", t.batch_delay)),
        ("ack-delay", format!("{:?}", t.ack_delay)),
        ("fec", format!("{:?}", t.fec)),
        ("max-packet-size", t.largest_datagram().to_string()),
    ]
}

/// The changes from `old` to `new`, and `new` as it is applied: with the settings that need a
/// restart put back to their running values.
pub(super) fn diff(old: &GatewayConfig, mut new: GatewayConfig) -> (Changes, GatewayConfig) {
    let mut c = Changes::default();
    c.restart("listen", &old.listen, &new.listen);
    c.restart("monitor", &old.monitor, &new.monitor);
    c.restart(
        "udp-idle-timeout",
        &old.udp_idle_timeout,
        &new.udp_idle_timeout,
    );
    c.restart("max-udp-flows", &old.max_udp_flows, &new.max_udp_flows);
    c.restart(
        "max-udp-flows-per-session",
        &old.max_udp_flows_per_session,
        &new.max_udp_flows_per_session,
    );
    let (o, n) = (&old.server, &mut new.server);
    c.restart(
        "reset key (--reset-key-file, or the --tls-key it comes from)",
        &o.static_secret,
        &n.static_secret,
    );
    c.restart("server-id", &o.server_id, &n.server_id);
    n.static_secret = o.static_secret.clone();
    n.server_id = o.server_id;
    n.stateless_reset_rate = o.stateless_reset_rate;
    new.listen = old.listen;
    new.monitor = old.monitor;
    new.udp_idle_timeout = old.udp_idle_timeout;
    new.max_udp_flows = old.max_udp_flows;
    new.max_udp_flows_per_session = old.max_udp_flows_per_session;

    let mut names: Vec<&String> = old.services.keys().chain(new.services.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let shown = if name.is_empty() { "default" } else { name };
        match (old.services.get(name), new.services.get(name)) {
            (Some(a), Some(b)) if a != b => {
                c.applied.push(format!("service {shown}: backends"));
            }
            (None, Some(_)) => {
                c.applied.push(format!("service {shown}: added"));
            }
            (Some(_), None) => {
                c.applied.push(format!("service {shown}: removed"));
            }
            _ => {}
        }
    }
    c.live(
        "backend-max-streams",
        &old.backend_max_streams,
        &new.backend_max_streams,
    );
    c.live(
        "connect-timeout",
        &old.connect_timeout,
        &new.connect_timeout,
    );
    c.live("proxy-protocol", &old.proxy_protocol, &new.proxy_protocol);
    c.live("compress", &old.compress, &new.compress);
    c.live("drain-timeout", &old.drain_timeout, &new.drain_timeout);
    let shown = |a: &Option<AllowList>| a.as_ref().map(ToString::to_string);
    c.live("allow-ip", &shown(&old.allow), &shown(&new.allow));
    c.live(
        "max-connections",
        &old.server.max_connections,
        &new.server.max_connections,
    );
    let (ot, nt) = (&old.server.transport, &new.server.transport);
    for ((flag, a), (_, b)) in transport_flags(ot).iter().zip(transport_flags(nt).iter()) {
        c.live(flag, a, b);
    }
    match (&ot.crypto, &nt.crypto) {
        (CryptoConfig::None, CryptoConfig::None) => {}
        (CryptoConfig::TlsServer(_), CryptoConfig::TlsServer(_)) => c
            .applied
            .push("TLS certificate and keys (read again; new handshakes use them)".into()),
        _ => c.applied.push("crypto (new sessions)".into()),
    }
    (c, new)
}

impl Reload for GatewayReloader {
    type Config = GatewayConfig;

    fn apply(&self, config: GatewayConfig) -> Result<Changes, String> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (changes, new) = diff(&current, config);
        // The one step that can refuse (the transport settings, checked for a server): first,
        // so that a refusal leaves everything as it was.
        self.endpoint
            .replace_server_config(new.server.clone())
            .map_err(|e| format!("sessions' settings refused: {e}"))?;
        let max_streams = new.server.transport.max_concurrent_streams;
        if max_streams != current.server.transport.max_concurrent_streams {
            // Warns if the new limit does not fit the open-files limit, as at start-up.
            crate::process::raise_and_check_open_files(
                max_streams,
                "--max-streams",
                "backend connection",
            );
        }
        self.endpoint
            .set_address_filter(address_filter(new.allow.clone()));
        let old_routes = self.fwd.routes.get();
        self.fwd.routes.set(Routes {
            services: pools(
                &old_routes.services,
                new.services.clone(),
                new.backend_max_streams,
            ),
            connect_timeout: new.connect_timeout,
            proxy: new.proxy_protocol,
            compress: new.compress.clone(),
            backend_max_streams: new.backend_max_streams,
            allow: new.allow.clone(),
        });
        *current = new;
        Ok(changes)
    }

    fn status(&self) -> &ReloadStatus {
        &self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_transport::ServerConfig;
    use std::time::Duration;

    fn config() -> GatewayConfig {
        GatewayConfig {
            listen: "127.0.0.1:9000".parse().unwrap(),
            services: HashMap::from([(String::new(), vec!["tcp://127.0.0.1:80".parse().unwrap()])]),
            backend_max_streams: 0,
            server: ServerConfig::new(TransportConfig::default()),
            allow: None,
            connect_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(30),
            proxy_protocol: None,
            compress: crate::compress::Compression::default(),
            monitor: None,
            udp_idle_timeout: Duration::from_secs(60),
            max_udp_flows: 10,
            max_udp_flows_per_session: 10,
        }
    }

    #[test]
    fn live_settings_are_applied_and_the_rest_is_named_and_kept() {
        let old = config();
        let mut new = config();
        new.listen = "127.0.0.1:9001".parse().unwrap();
        new.server.server_id = Some(3);
        new.server.max_connections = 5;
        new.server.transport.max_concurrent_streams = 7;
        new.allow = AllowList::from_flags(&["10.0.0.0/8".into()]).unwrap();
        new.services
            .insert("web".into(), vec!["unix:/w".parse().unwrap()]);
        let (changes, applied) = diff(&old, new);
        assert_eq!(
            changes.applied,
            [
                "service web: added",
                "allow-ip",
                "max-connections",
                "max-streams"
            ]
        );
        assert_eq!(changes.needs_restart, ["listen", "server-id"]);
        assert_eq!(applied.listen, old.listen, "the bound address stays");
        assert_eq!(applied.server.server_id, None);
        assert_eq!(applied.server.max_connections, 5);
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let (changes, _) = diff(&config(), config());
        assert_eq!(changes, Changes::default());
    }
}
