//! Packet protection once the handshake is done: AES-256-GCM with the header as associated data
//! and the packet number as nonce, one key per direction and epoch of 2^22 packets, each derived
//! with HKDF-SHA256 from the direction's exporter secret.

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;

/// Bytes the AEAD tag adds to every sealed packet.
pub const TAG_LEN: usize = 16;

/// Packets sealed under one key before the next epoch's key takes over.
const EPOCH_BITS: u32 = 22;

/// Both directions' packet keys.
pub(crate) struct PacketKeys {
    /// Keys for what we send.
    pub seal: DirectionKeys,
    /// Keys for what we receive.
    pub open: DirectionKeys,
}

impl fmt::Debug for PacketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKeys(..)")
    }
}

/// One direction: its secret and the keys of the epochs in use (two, so that packets reordered
/// across an epoch boundary still open without deriving keys again).
pub(crate) struct DirectionKeys {
    secret: hkdf::Prk,
    cache: [Option<EpochKey>; 2],
}

struct EpochKey {
    epoch: u64,
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
}

/// HKDF output length for one epoch: key then IV.
struct KeyAndIv;

impl hkdf::KeyType for KeyAndIv {
    fn len(&self) -> usize {
        32 + aead::NONCE_LEN
    }
}

impl DirectionKeys {
    pub(super) fn new(secret: &[u8]) -> Self {
        Self {
            // The exporter's output is already uniformly random: it is the PRK, no extract step.
            secret: hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret),
            cache: [None, None],
        }
    }

    fn key(&mut self, pn: u64) -> &EpochKey {
        let epoch = pn >> EPOCH_BITS;
        let slot = (epoch & 1) as usize;
        if self.cache[slot].as_ref().is_none_or(|k| k.epoch != epoch) {
            let material = self.material(epoch);
            let key = UnboundKey::new(&AES_256_GCM, &material[..32])
                .expect("AES-256-GCM takes a 32-byte key");
            let mut iv = [0u8; aead::NONCE_LEN];
            iv.copy_from_slice(&material[32..]);
            self.cache[slot] = Some(EpochKey {
                epoch,
                key: LessSafeKey::new(key),
                iv,
            });
        }
        self.cache[slot].as_ref().expect("filled above")
    }

    /// Key and IV of one epoch.
    fn material(&self, epoch: u64) -> [u8; 32 + aead::NONCE_LEN] {
        let info_epoch = epoch.to_be_bytes();
        let info = [b"ferry packet key".as_slice(), &info_epoch];
        let mut material = [0u8; 32 + aead::NONCE_LEN];
        // Expanding 44 bytes from SHA-256 cannot fail (the limit is 255 * 32).
        self.secret
            .expand(&info, KeyAndIv)
            .and_then(|okm| okm.fill(&mut material))
            .expect("HKDF output length within limits");
        material
    }

    fn nonce(iv: &[u8; aead::NONCE_LEN], pn: u64) -> Nonce {
        let mut n = *iv;
        for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Seals the packet at the end of `buf` in place and appends the tag: the header is
    /// `buf[start..payload]`, the plaintext `buf[payload..]`. `pn` must never repeat.
    pub fn seal(&mut self, pn: u64, buf: &mut Vec<u8>, start: usize, payload: usize) {
        let k = self.key(pn);
        let nonce = Self::nonce(&k.iv, pn);
        let (header, payload) = buf[start..].split_at_mut(payload - start);
        let tag = k
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), payload)
            .expect("AES-GCM seals any packet-sized payload");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Opens `sealed` (payload and tag) in place; returns the plaintext length, or `None` if
    /// the packet is not authentic.
    pub fn open(&mut self, pn: u64, header: &[u8], sealed: &mut [u8]) -> Option<usize> {
        let k = self.key(pn);
        let nonce = Self::nonce(&k.iv, pn);
        k.key
            .open_in_place(nonce, Aad::from(header), sealed)
            .ok()
            .map(|plain| plain.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (DirectionKeys, DirectionKeys) {
        (
            DirectionKeys::new(&[7u8; 32]),
            DirectionKeys::new(&[7u8; 32]),
        )
    }

    #[test]
    fn sealed_packets_open_with_the_same_secret_and_packet_number() {
        let (mut a, mut b) = pair();
        for pn in [
            0,
            1,
            (1 << EPOCH_BITS) - 1,
            1 << EPOCH_BITS,
            5 << EPOCH_BITS,
        ] {
            let mut packet = b"header".to_vec();
            packet.extend_from_slice(b"frames of the packet");
            a.seal(pn, &mut packet, 0, 6);
            assert_eq!(packet.len(), 6 + 20 + TAG_LEN);
            assert_ne!(&packet[6..26], b"frames of the packet");
            let (header, sealed) = packet.split_at_mut(6);
            let n = b.open(pn, header, sealed).expect("authentic");
            assert_eq!(&sealed[..n], b"frames of the packet");
        }
    }

    #[test]
    fn any_change_to_header_payload_or_packet_number_fails_to_open() {
        let (mut a, mut b) = pair();
        let mut packet = b"hdr".to_vec();
        packet.extend_from_slice(b"payload");
        a.seal(42, &mut packet, 0, 3);
        for i in 0..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x01;
            let (header, sealed) = bad.split_at_mut(3);
            assert!(b.open(42, header, sealed).is_none(), "bit flip at {i}");
        }
        let mut same = packet.clone();
        let (header, sealed) = same.split_at_mut(3);
        assert!(b.open(43, header, sealed).is_none(), "wrong packet number");
        let mut other = DirectionKeys::new(&[8u8; 32]);
        let mut same = packet.clone();
        let (header, sealed) = same.split_at_mut(3);
        assert!(other.open(42, header, sealed).is_none(), "wrong secret");
    }

    #[test]
    fn every_epoch_has_its_own_key_and_iv() {
        let (a, _) = pair();
        let materials: Vec<_> = (0..4).map(|e| a.material(e)).collect();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(materials[i][..32], materials[j][..32]);
                assert_ne!(materials[i][32..], materials[j][32..]);
            }
        }
        // Packets of an earlier epoch still open after a later one was used.
        let (mut a, mut b) = pair();
        let mut old = b"h".to_vec();
        old.extend_from_slice(b"old");
        a.seal((1 << EPOCH_BITS) - 1, &mut old, 0, 1);
        let mut new = b"h".to_vec();
        new.extend_from_slice(b"new");
        a.seal(1 << EPOCH_BITS, &mut new, 0, 1);
        let (h, s) = new.split_at_mut(1);
        assert!(b.open(1 << EPOCH_BITS, h, s).is_some());
        let (h, s) = old.split_at_mut(1);
        assert!(b.open((1 << EPOCH_BITS) - 1, h, s).is_some());
    }
}
