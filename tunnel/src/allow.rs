//! IP allow-lists: `10.0.0.0/8,192.0.2.7,2001:db8::/32`.
//!
//! A dual-stack socket reports IPv4 clients as IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`).
//! httptp's allow-list compares those against its IPv4 entries textually, so an IPv4-only list
//! silently lets them through (or locks them out). Here every address is normalised first: a
//! mapped address is matched as the IPv4 address it is, against IPv4 entries, and never slips past
//! an IPv4 list by matching nothing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One `ADDRESS[/PREFIX]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why an allow-list entry did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid allow-list entry {input:?}: {reason} (expected ADDRESS or ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32)")]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

/// IPv4-mapped IPv6 addresses become IPv4; everything else is unchanged.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> u32 {
    let bits = u32::from(ip);
    if prefix == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> u128 {
    let bits = u128::from(ip);
    if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix)))
    }
}

impl Cidr {
    /// True when `ip` (normalised) is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, normalize(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(net, self.prefix) == mask_v4(ip, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(net, self.prefix) == mask_v6(ip, self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            input: s.to_owned(),
            reason,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| err("not an IP address"))?;
        // A mapped entry means its IPv4 address.
        let (network, shift) = match network {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => (normalize(network), 96),
            other => (other, 0),
        };
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let p: u8 = p
                    .trim()
                    .parse()
                    .map_err(|_| err("prefix is not a number"))?;
                let p = p
                    .checked_sub(shift)
                    .ok_or_else(|| err("prefix too short for an IPv4-mapped address"))?;
                if p > max {
                    return Err(err("prefix longer than the address"));
                }
                p
            }
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A list of networks; an address is allowed if any entry contains it. An empty list allows
/// nothing, so callers represent "no restriction" as `Option::None`, never as an empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Cidr>,
}

impl AllowList {
    /// Parses comma-separated entries; repeated flags can be joined first.
    pub fn parse(list: &str) -> Result<Self, CidrError> {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Cidr>, _>>()?;
        Ok(Self { entries })
    }

    /// The list given by repeated `--allow-ip` flags: `None` (no restriction) when there are none.
    pub fn from_flags(flags: &[String]) -> Result<Option<Self>, CidrError> {
        let mut list: Option<Self> = None;
        for flag in flags {
            list.get_or_insert_with(Self::default).extend(flag)?;
        }
        Ok(list)
    }

    /// Adds entries from another comma-separated list.
    pub fn extend(&mut self, list: &str) -> Result<(), CidrError> {
        self.entries.extend(Self::parse(list)?.entries);
        Ok(())
    }

    /// True if `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.entries.iter().any(|c| c.contains(ip))
    }

    /// The entries.
    pub fn entries(&self) -> &[Cidr] {
        &self.entries
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_list_matches_ipv4_and_mapped_ipv6_alike_and_nothing_else() {
        let list = AllowList::parse("10.0.0.0/8, 192.0.2.7").unwrap();
        assert!(list.allows(ip("10.1.2.3")));
        assert!(
            list.allows(ip("::ffff:10.1.2.3")),
            "mapped IPv4 is the IPv4 address"
        );
        assert!(list.allows(ip("192.0.2.7")));
        assert!(!list.allows(ip("192.0.2.8")));
        assert!(
            !list.allows(ip("::ffff:192.0.2.8")),
            "mapped must not slip past"
        );
        assert!(!list.allows(ip("::1")));
        assert!(!list.allows(ip("2001:db8::1")));
    }

    #[test]
    fn ipv6_entries_match_ipv6_only() {
        let list = AllowList::parse("2001:db8::/32,::1").unwrap();
        assert!(list.allows(ip("2001:db8:ffff::1")));
        assert!(list.allows(ip("::1")));
        assert!(!list.allows(ip("2001:db9::1")));
        assert!(!list.allows(ip("127.0.0.1")));
    }

    #[test]
    fn mapped_entries_and_edge_prefixes() {
        let list = AllowList::parse("::ffff:192.0.2.0/120").unwrap();
        assert_eq!(list.to_string(), "192.0.2.0/24");
        assert!(list.allows(ip("192.0.2.99")));
        let all = AllowList::parse("0.0.0.0/0").unwrap();
        assert!(all.allows(ip("203.0.113.1")) && all.allows(ip("::ffff:203.0.113.1")));
        assert!(
            !all.allows(ip("2001:db8::1")),
            "an IPv4 /0 is not an IPv6 wildcard"
        );
        assert!(AllowList::parse("").unwrap().entries().is_empty());
    }

    #[test]
    fn bad_entries_are_named() {
        for (s, why) in [
            ("10.0.0.0/33", "prefix longer"),
            ("10.0.0/8", "not an IP"),
            ("::1/x", "not a number"),
            ("::ffff:1.2.3.4/90", "too short"),
        ] {
            let e = AllowList::parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
