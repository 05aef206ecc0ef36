//! Handshake settings: what each end announces in its HELLO, and how the two are reconciled.
//!
//! Two kinds of setting exist. *Negotiated* ones (idle timeout, datagram size, initial flow-control
//! credit) may differ: each end uses the smaller timeout and datagram size, and each end's credit
//! applies to what the other sends. *Required* ones are named string pairs that must be equal on
//! both ends (crypto mode, compression capability, a deployment's tunnel name...). If they differ,
//! the handshake fails with a CLOSE whose reason lists every difference in one line, and both ends
//! report that same line. kcptun's mismatched keys or options fail silently; Ferry's never do.
//!
//! Encoding: a sequence of `key (varint), length (varint), value` records. Unknown keys are
//! skipped, so later versions can add settings without breaking older peers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::BufMut;

use crate::wire::coding::{BufMutExt, DecodeError, Reader};

mod keys {
    pub const IDLE_TIMEOUT_MS: u64 = 0x01;
    pub const MAX_DATAGRAM_SIZE: u64 = 0x02;
    pub const INITIAL_MAX_DATA: u64 = 0x03;
    pub const INITIAL_MAX_STREAM_DATA: u64 = 0x04;
    pub const INITIAL_MAX_STREAMS: u64 = 0x05;
    pub const REQUIRED: u64 = 0x06;
    pub const MAX_ACK_DELAY_US: u64 = 0x07;
    pub const MAX_DATAGRAM_PAYLOAD: u64 = 0x08;
    /// An earlier version's block code (FEC_REPAIR 0x37) and its repair limit: no longer
    /// announced, and skipped when a peer announces them, so that such a peer, which could
    /// not decode this version's repairs, is sent none and sends none.
    #[cfg(test)]
    pub const RETIRED_BLOCK_FEC: [u64; 2] = [0x09, 0x0a];
    pub const FEC: u64 = 0x0b;
}

/// Largest unreliable datagram an end may announce that it accepts: a UDP payload.
pub const MAX_DATAGRAM_PAYLOAD_LIMIT: u32 = 65_535;

/// At most this many required settings are accepted from a peer.
pub const MAX_REQUIRED: usize = 32;
/// Longest name or value of a required setting, in bytes.
pub const MAX_REQUIRED_LEN: usize = 128;

/// What one end announces in its HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long without any packet from the peer before the connection is abandoned.
    pub idle_timeout: Duration,
    /// Largest UDP payload this end will send and accepts.
    pub max_datagram_size: u16,
    /// Connection-wide bytes the peer may send before further credit.
    pub initial_max_data: u64,
    /// Per-stream bytes the peer may send before further credit.
    pub initial_max_stream_data: u64,
    /// How many streams the peer may open before further credit.
    pub initial_max_streams: u64,
    /// Longest this end holds an acknowledgement back, hoping for data to carry it: the peer
    /// adds it to its retransmission timeout, so a delayed ACK never looks like a loss. Absent
    /// (an older peer) means zero.
    pub max_ack_delay: Duration,
    /// Largest unreliable datagram (DATAGRAM frames, reassembled) this end accepts; zero (or
    /// absent: an older peer) means none.
    pub max_datagram_payload: u32,
    /// This end decodes forward error correction (FEC_SOURCE and FEC_REPAIR frames, and
    /// sends LOSS_REPORT frames; see [`crate::fec`]), so the peer may protect its packets.
    /// Absent (an older peer, whose block code this version does not speak) means no: such a
    /// peer is never sent repair packets.
    pub fec: bool,
    /// Settings that must be identical on both ends, by name.
    pub required: BTreeMap<String, String>,
}

/// Largest acknowledgement delay a peer may announce: a longer one would stretch our
/// retransmission timeout past any use.
pub const MAX_ACK_DELAY_LIMIT: Duration = Duration::from_secs(1);

impl Settings {
    /// Appends the encoded settings.
    pub fn encode(&self, out: &mut impl BufMut) {
        let record = |out: &mut dyn BufMut, key: u64, value: &[u8]| {
            out.put_varint(key);
            out.put_varint(value.len() as u64);
            out.put_slice(value);
        };
        let mut num = Vec::with_capacity(8);
        for (key, value) in [
            (
                keys::IDLE_TIMEOUT_MS,
                self.idle_timeout.as_millis().min(u128::from(u32::MAX)) as u64,
            ),
            (keys::MAX_DATAGRAM_SIZE, u64::from(self.max_datagram_size)),
            (keys::INITIAL_MAX_DATA, self.initial_max_data),
            (keys::INITIAL_MAX_STREAM_DATA, self.initial_max_stream_data),
            (keys::INITIAL_MAX_STREAMS, self.initial_max_streams),
            (
                keys::MAX_ACK_DELAY_US,
                self.max_ack_delay.as_micros().min(u128::from(u32::MAX)) as u64,
            ),
            (
                keys::MAX_DATAGRAM_PAYLOAD,
                u64::from(self.max_datagram_payload),
            ),
            (keys::FEC, u64::from(self.fec)),
        ] {
            num.clear();
            num.put_varint(value);
            record(out, key, &num);
        }
        for (name, value) in &self.required {
            let mut pair = Vec::with_capacity(name.len() + value.len() + 4);
            pair.put_length_prefixed(name.as_bytes());
            pair.put_length_prefixed(value.as_bytes());
            record(out, keys::REQUIRED, &pair);
        }
    }

    /// Parses a peer's settings. Missing numeric settings are errors; unknown keys are skipped.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let mut idle = None;
        let mut datagram = None;
        let mut max_data = None;
        let mut max_stream_data = None;
        let mut max_streams = None;
        let mut max_ack_delay = Duration::ZERO;
        let mut max_datagram_payload = 0;
        let mut fec = false;
        let mut required = BTreeMap::new();
        while !r.is_empty() {
            let key = r.varint()?;
            let value = r.length_prefixed()?;
            let number = || Reader::new(value).varint();
            match key {
                keys::IDLE_TIMEOUT_MS => idle = Some(Duration::from_millis(number()?)),
                keys::MAX_DATAGRAM_SIZE => {
                    let size = number()?;
                    if !(1200..=65527).contains(&size) {
                        return Err(DecodeError::Invalid("max datagram size"));
                    }
                    datagram = Some(size as u16);
                }
                keys::INITIAL_MAX_DATA => max_data = Some(number()?),
                keys::INITIAL_MAX_STREAM_DATA => max_stream_data = Some(number()?),
                keys::INITIAL_MAX_STREAMS => max_streams = Some(number()?),
                keys::MAX_ACK_DELAY_US => {
                    max_ack_delay = Duration::from_micros(number()?);
                    if max_ack_delay > MAX_ACK_DELAY_LIMIT {
                        return Err(DecodeError::Invalid("max ack delay"));
                    }
                }
                keys::MAX_DATAGRAM_PAYLOAD => {
                    let size = number()?;
                    if size > u64::from(MAX_DATAGRAM_PAYLOAD_LIMIT) {
                        return Err(DecodeError::Invalid("max datagram payload"));
                    }
                    max_datagram_payload = size as u32;
                }
                keys::FEC => {
                    fec = match number()? {
                        0 => false,
                        1 => true,
                        _ => return Err(DecodeError::Invalid("fec")),
                    }
                }
                keys::REQUIRED => {
                    let mut pr = Reader::new(value);
                    let name = pr.length_prefixed()?;
                    let val = pr.length_prefixed()?;
                    if name.len() > MAX_REQUIRED_LEN || val.len() > MAX_REQUIRED_LEN {
                        return Err(DecodeError::Invalid("required setting too long"));
                    }
                    let name = std::str::from_utf8(name)
                        .map_err(|_| DecodeError::Invalid("setting name"))?;
                    let val = std::str::from_utf8(val)
                        .map_err(|_| DecodeError::Invalid("setting value"))?;
                    // A mismatch is reported in one line that both ends log: a peer's line
                    // breaks (or terminal escapes) must not forge lines of their own there.
                    if name.chars().chain(val.chars()).any(char::is_control) {
                        return Err(DecodeError::Invalid("control character in a setting"));
                    }
                    required.insert(name.to_owned(), val.to_owned());
                    if required.len() > MAX_REQUIRED {
                        return Err(DecodeError::Invalid("too many required settings"));
                    }
                }
                _ => {}
            }
        }
        let missing = DecodeError::Invalid("missing setting");
        Ok(Settings {
            idle_timeout: idle.ok_or(missing)?,
            max_datagram_size: datagram.ok_or(missing)?,
            initial_max_data: max_data.ok_or(missing)?,
            initial_max_stream_data: max_stream_data.ok_or(missing)?,
            initial_max_streams: max_streams.ok_or(missing)?,
            max_ack_delay,
            max_datagram_payload,
            fec,
            required,
        })
    }

    /// Checks that every required setting matches. The error is one line naming each difference
    /// with both ends' values, labelled by role (`client`, `server`) so that both ends can log
    /// the very same line.
    pub fn check_required(
        &self,
        ours_role: &str,
        peer: &Settings,
        theirs_role: &str,
    ) -> Result<(), SettingsMismatch> {
        let mut diffs = String::new();
        let names: std::collections::BTreeSet<&String> =
            self.required.keys().chain(peer.required.keys()).collect();
        for name in names {
            let ours_value = self.required.get(name);
            let theirs_value = peer.required.get(name);
            if ours_value != theirs_value {
                if !diffs.is_empty() {
                    diffs.push_str("; ");
                }
                let _ = write!(
                    diffs,
                    "{name}: {ours_label} {}, {theirs_label} {}",
                    ours_value.map_or("unset", String::as_str),
                    theirs_value.map_or("unset", String::as_str),
                    ours_label = ours_role,
                    theirs_label = theirs_role,
                );
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(SettingsMismatch { differences: diffs })
        }
    }

    /// Idle timeout both ends use: the smaller non-zero one (zero means "none").
    pub fn negotiated_idle_timeout(&self, peer: &Settings) -> Option<Duration> {
        match (self.idle_timeout.is_zero(), peer.idle_timeout.is_zero()) {
            (true, true) => None,
            (false, true) => Some(self.idle_timeout),
            (true, false) => Some(peer.idle_timeout),
            (false, false) => Some(self.idle_timeout.min(peer.idle_timeout)),
        }
    }
}

/// Required settings on which the two ends differ: one line naming each difference with both
/// ends' values (`settings differ: compress: server snappy, client none`), which both ends log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("settings differ: {differences}")]
pub struct SettingsMismatch {
    /// The differences, `; `-separated: `name: <role> <value>, <role> <value>`.
    pub differences: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Settings {
        Settings {
            idle_timeout: Duration::from_secs(30),
            max_datagram_size: 1350,
            initial_max_data: 1 << 24,
            initial_max_stream_data: 1 << 20,
            initial_max_streams: 256,
            max_ack_delay: Duration::from_millis(2),
            max_datagram_payload: 1500,
            fec: true,
            required: BTreeMap::from([("crypto".into(), "none".into())]),
        }
    }

    #[test]
    fn settings_round_trip_and_unknown_keys_are_skipped() {
        let s = sample();
        let mut buf = Vec::new();
        s.encode(&mut buf);
        buf.put_varint(0x7777);
        buf.put_length_prefixed(b"future");
        assert_eq!(Settings::decode(&buf), Ok(s));
    }

    /// Encoded settings without the record of `dropped`, as an older peer would send them.
    fn without(encoded: &[u8], dropped: u64) -> Vec<u8> {
        let mut older = Vec::new();
        let mut r = Reader::new(encoded);
        while !r.is_empty() {
            let key = r.varint().unwrap();
            let value = r.length_prefixed().unwrap();
            if key != dropped {
                older.put_varint(key);
                older.put_length_prefixed(value);
            }
        }
        older
    }

    #[test]
    fn an_absent_ack_delay_is_zero_and_a_huge_one_is_malformed() {
        let mut s = sample();
        s.max_ack_delay = Duration::ZERO;
        let mut buf = Vec::new();
        s.encode(&mut buf);
        // Drop the ack-delay record, as an older peer would: it decodes as zero.
        let older = without(&buf, keys::MAX_ACK_DELAY_US);
        assert!(older.len() < buf.len());
        assert_eq!(Settings::decode(&older), Ok(s.clone()));
        s.max_ack_delay = MAX_ACK_DELAY_LIMIT + Duration::from_micros(1);
        let mut huge = Vec::new();
        s.encode(&mut huge);
        assert_eq!(
            Settings::decode(&huge),
            Err(DecodeError::Invalid("max ack delay"))
        );
    }

    #[test]
    fn an_absent_fec_record_means_no_and_a_value_above_one_is_malformed() {
        let mut s = sample();
        s.fec = false;
        let mut buf = Vec::new();
        s.encode(&mut buf);
        let older = without(&buf, keys::FEC);
        assert!(older.len() < buf.len());
        assert_eq!(Settings::decode(&older), Ok(s.clone()));
        let mut bad = older.clone();
        bad.put_varint(keys::FEC);
        bad.put_length_prefixed(&[2]);
        assert_eq!(Settings::decode(&bad), Err(DecodeError::Invalid("fec")));
    }

    #[test]
    fn an_earlier_versions_block_code_records_are_skipped() {
        // Such a peer announced that it decodes block-code repairs (0x09 = 1) and how many
        // per group (0x0a); it does not decode this version's repairs, so it counts as not
        // decoding FEC at all.
        let mut s = sample();
        s.fec = false;
        let mut buf = Vec::new();
        s.encode(&mut buf);
        let mut older = without(&buf, keys::FEC);
        for key in keys::RETIRED_BLOCK_FEC {
            older.put_varint(key);
            older.put_length_prefixed(&[1]);
        }
        assert_eq!(Settings::decode(&older), Ok(s));
    }

    #[test]
    fn an_absent_datagram_payload_is_zero_and_an_oversized_one_is_malformed() {
        let mut s = sample();
        s.max_datagram_payload = 0;
        let mut buf = Vec::new();
        s.encode(&mut buf);
        let older = without(&buf, keys::MAX_DATAGRAM_PAYLOAD);
        assert!(older.len() < buf.len());
        assert_eq!(Settings::decode(&older), Ok(s.clone()));
        s.max_datagram_payload = MAX_DATAGRAM_PAYLOAD_LIMIT + 1;
        let mut huge = Vec::new();
        s.encode(&mut huge);
        assert_eq!(
            Settings::decode(&huge),
            Err(DecodeError::Invalid("max datagram payload"))
        );
    }

    #[test]
    fn mismatched_required_settings_are_named_in_one_line() {
        let ours = sample();
        let mut theirs = sample();
        theirs.required.insert("crypto".into(), "tls".into());
        theirs.required.insert("compress".into(), "snappy".into());
        let err = ours
            .check_required("server", &theirs, "client")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "settings differ: compress: server unset, client snappy; crypto: server none, client tls"
        );
        assert!(!err.to_string().contains('\n'));
        assert!(ours.check_required("server", &sample(), "client").is_ok());
    }

    /// Found by `cargo fuzz run settings`: a peer's required setting named with a carriage
    /// return (among other control characters) broke the one-line mismatch report in two.
    #[test]
    fn fuzz_crash_required_setting_with_a_line_break_is_malformed() {
        let crash = [
            0x05, 0x01, 0x2d, 0x06, 0x2d, 0x06, 0x05, 0x01, 0x2d, 0x5d, 0x0d, 0x00, 0x04, 0x04,
            0x03, 0x04, 0x04, 0x24, 0x04, 0x04, 0x00, 0x01, 0x01, 0x00, 0x02, 0x02, 0x7a, 0x03,
            0x04, 0x06, 0x00, 0x00, 0x00, 0x03, 0x01, 0x03, 0x03, 0x04, 0x04, 0x24, 0x04, 0x04,
            0x03, 0x03, 0x04, 0x04, 0x24, 0x04, 0x04, 0x00, 0x01, 0x01, 0x00, 0x02, 0x02, 0x7a,
            0x03, 0x04, 0x01, 0x03, 0x03, 0x04, 0x04, 0x24, 0x04, 0x04,
        ];
        assert_eq!(
            Settings::decode(&crash),
            Err(DecodeError::Invalid("control character in a setting"))
        );
        for (name, value) in [
            ("tunnel\nforged", "a"),
            ("tunnel", "a\rb"),
            ("t", "\u{1b}[2J"),
        ] {
            let mut s = sample();
            s.required.insert(name.into(), value.into());
            let mut buf = Vec::new();
            s.encode(&mut buf);
            assert!(Settings::decode(&buf).is_err(), "{name:?} = {value:?}");
        }
    }

    #[test]
    fn missing_mandatory_setting_is_malformed() {
        let mut buf = Vec::new();
        buf.put_varint(keys::IDLE_TIMEOUT_MS);
        buf.put_length_prefixed(&[10]);
        assert!(Settings::decode(&buf).is_err());
    }
}
