//! A new configuration applied to the running agent (the shared machinery, SIGHUP and its
//! reporting, is [`crate::reload`]).
//!
//! What changes live, for what starts from then on:
//! - `--allow-ip`, `--session-wait`, `--compress`: new clients and UDP flows (those already
//!   carried are never re-checked, so narrowing the allow-list cuts no one).
//! - `--max-connections`: at once; lowered below the clients carried now, it cuts none of
//!   them and admits new ones only once under the new limit.
//! - The sessions' transport settings (`--idle-timeout`, `--batch-delay`, `--ack-delay`,
//!   `--fec`, `--max-packet-size`) and the TLS files (`--tls-ca`, the client certificate and
//!   key, read again): a link's next session (a reconnect); the sessions up now keep theirs.
//! - `--drain-timeout`: the next shutdown.
//!
//! What needs a restart, and stays as it is: `--listen` (bound sockets), `--gateway` and
//! `--links` (the links and their sockets), `--monitor`, and the UDP flows' settings
//! (`--udp-idle-timeout`, `--udp-protect`).

use std::sync::{Arc, Mutex};

use ferry_transport::{CryptoConfig, TransportConfig};

use super::client::{ClientSettings, Context};
use super::AgentConfig;
use crate::reload::{Changes, Reload, ReloadStatus};

/// Applies new configurations to a running agent: [`super::Agent::reloader`].
pub struct AgentReloader {
    pub(super) ctx: Arc<Context>,
    pub(super) current: Arc<Mutex<AgentConfig>>,
    pub(super) status: Arc<ReloadStatus>,
}

/// The settings of `t` that the flags set, each with its flag.
fn transport_flags(t: &TransportConfig) -> [(&'static str, String); 5] {
    [
        ("idle-timeout", format!("{:?}", t.idle_timeout)),
        ("batch-delay", format!("{:?}", t.batch_delay)),
        ("ack-delay", format!("{:?}", t.ack_delay)),
        ("fec", format!("{:?}", t.fec)),
        ("max-packet-size", t.largest_datagram().to_string()),
    ]
}

/// The changes from `old` to `new`, and `new` as it is applied: with the settings that need a
/// restart put back to their running values.
pub(super) fn diff(old: &AgentConfig, mut new: AgentConfig) -> (Changes, AgentConfig) {
    let mut c = Changes::default();
    let listens = |cfg: &AgentConfig| -> Vec<String> {
        cfg.listen
            .iter()
            .map(|l| format!("{}={}", l.address, l.service))
            .collect()
    };
    c.restart("listen", &listens(old), &listens(&new));
    let gateways = |cfg: &AgentConfig| -> Vec<std::net::SocketAddr> {
        cfg.gateways.iter().map(|(g, _)| *g).collect()
    };
    c.restart("gateway", &gateways(old), &gateways(&new));
    c.restart("links", &old.links, &new.links);
    c.restart("monitor", &old.monitor, &new.monitor);
    c.restart(
        "udp-idle-timeout",
        &old.udp_idle_timeout,
        &new.udp_idle_timeout,
    );
    c.restart(
        "udp-protect",
        &format!("{:?}", old.udp_protect),
        &format!("{:?}", new.udp_protect),
    );
    if gateways(old) != gateways(&new) {
        new.gateways = old.gateways.clone();
    } else if let (Some((_, ot)), Some((_, nt))) = (old.gateways.first(), new.gateways.first()) {
        for ((flag, a), (_, b)) in transport_flags(ot).iter().zip(transport_flags(nt).iter()) {
            c.live(flag, a, b);
        }
        match (&ot.crypto, &nt.crypto) {
            (CryptoConfig::None, CryptoConfig::None) => {}
            (CryptoConfig::TlsClient { .. }, CryptoConfig::TlsClient { .. }) => c.applied.push(
                "TLS CA and client certificate (read again; the next sessions use them)".into(),
            ),
            _ => c.applied.push("crypto (the next sessions)".into()),
        }
    }
    new.listen = old.listen.clone();
    new.links = old.links;
    new.monitor = old.monitor;
    new.udp_idle_timeout = old.udp_idle_timeout;
    new.udp_protect = old.udp_protect;
    let shown = |a: &Option<crate::allow::AllowList>| a.as_ref().map(ToString::to_string);
    c.live("allow-ip", &shown(&old.allow), &shown(&new.allow));
    c.live(
        "max-connections",
        &old.max_connections,
        &new.max_connections,
    );
    c.live("session-wait", &old.session_wait, &new.session_wait);
    c.live("compress", &old.compress, &new.compress);
    c.live("drain-timeout", &old.drain_timeout, &new.drain_timeout);
    (c, new)
}

impl Reload for AgentReloader {
    type Config = AgentConfig;

    fn apply(&self, config: AgentConfig) -> Result<Changes, String> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (changes, new) = diff(&current, config);
        for (gateway, transport) in &new.gateways {
            transport
                .validate_for(ferry_transport::Side::Client)
                .map_err(|e| format!("invalid transport settings for {gateway}: {e}"))?;
        }
        for (gateway, transport) in &new.gateways {
            self.ctx.sessions.set_transport(*gateway, transport);
        }
        self.ctx.settings.set(ClientSettings {
            allow: new.allow.clone(),
            session_wait: new.session_wait,
            compress: new.compress.clone(),
        });
        if new.max_connections != current.max_connections {
            // Warns if the new limit does not fit the open-files limit, as at start-up.
            crate::process::raise_and_check_open_files(
                new.max_connections as u64,
                "--max-connections",
                "client connection",
            );
        }
        self.ctx.limit.set(new.max_connections);
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
    use std::time::Duration;

    fn config() -> AgentConfig {
        AgentConfig {
            listen: vec!["tcp://127.0.0.1:7000".parse().unwrap()],
            gateways: vec![(
                "127.0.0.1:9000".parse().unwrap(),
                TransportConfig::default(),
            )],
            links: 1,
            allow: None,
            max_connections: 10,
            session_wait: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            compress: crate::compress::Compression::default(),
            monitor: None,
            udp_idle_timeout: Duration::from_secs(60),
            udp_protect: ferry_transport::datagrams::Protection::default(),
        }
    }

    #[test]
    fn live_settings_are_applied_and_the_rest_is_named_and_kept() {
        let old = config();
        let mut new = config();
        new.links = 2;
        new.max_connections = 5;
        new.gateways[0].1.idle_timeout = Duration::from_secs(9);
        new.allow = crate::allow::AllowList::from_flags(&["10.0.0.0/8".into()]).unwrap();
        let (changes, applied) = diff(&old, new);
        assert_eq!(
            changes.applied,
            ["idle-timeout", "allow-ip", "max-connections"]
        );
        assert_eq!(changes.needs_restart, ["links"]);
        assert_eq!(applied.links, 1);
        assert_eq!(applied.gateways[0].1.idle_timeout, Duration::from_secs(9));

        let mut moved = config();
        moved.gateways[0].0 = "127.0.0.1:9001".parse().unwrap();
        moved.gateways[0].1.idle_timeout = Duration::from_secs(9);
        let (changes, applied) = diff(&old, moved);
        assert_eq!(changes.needs_restart, ["gateway"]);
        assert!(changes.applied.is_empty());
        assert_eq!(applied.gateways[0].0, old.gateways[0].0);
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let (changes, _) = diff(&config(), config());
        assert_eq!(changes, Changes::default());
    }
}
