//! Verdict ids: what a blocked caller can cite, and nothing more.
//!
//! Inside kuzet a verdict is numbered by its node (a hash of its name) and
//! a per-node sequence that starts at the start-up time in microseconds
//! (and after the last one its store holds), so it is unique across nodes
//! and restarts. What a caller is given is a [`PublicId`]: 96 bits of a
//! keyed MAC (SipHash-2-4, 128-bit output) of that internal id, under a
//! secret kept in the store. Two ids tell an outsider nothing: neither
//! how many calls were recorded between them, nor when the process
//! started, nor which node. The store keeps the public form, so `kuzet
//! calls --verdict-id` finds the call by it.

use std::fmt;
use std::hash::Hasher as _;
use std::str::FromStr;

/// A verdict's internal id: unique across nodes and restarts, never shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VerdictId {
    /// The node: a hash of its name.
    pub node: u32,
    /// The node's sequence number (starts at the start-up time in µs).
    pub seq: u64,
}

impl VerdictId {
    /// The node part of ids made by the node called `name`.
    pub fn node_of(name: &str) -> u32 {
        // The handler's FNV-1a, folded to 32 bits.
        let mut h = super::Fnv::default();
        h.write(name.as_bytes());
        let x = h.finish();
        (x ^ (x >> 32)) as u32
    }
}

/// The secret under which public ids are made (16 bytes, from the store).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdKey(pub [u8; 16]);

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdKey(..)")
    }
}

impl IdKey {
    /// A fresh random key (a kuzet without a store: its ids are never
    /// looked up, but must not leak either).
    pub fn random() -> IdKey {
        let mut k = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut k);
        }
        // Mixed with the clock and the address of a stack value, in case
        // /dev/urandom is missing.
        let t = unix_us() as u64;
        let p = &k as *const _ as u64;
        for (i, b) in t
            .to_le_bytes()
            .iter()
            .chain(p.to_le_bytes().iter())
            .enumerate()
        {
            k[i] ^= b;
        }
        IdKey(k)
    }

    /// The public id of `id`.
    pub fn public(&self, id: VerdictId) -> PublicId {
        let mut h = siphasher::sip128::SipHasher24::new_with_key(&self.0);
        h.write(&id.node.to_le_bytes());
        h.write(&id.seq.to_le_bytes());
        let x = u128::from(siphasher::sip128::Hasher128::finish128(&h)).to_le_bytes();
        let mut out = [0u8; 12];
        out.copy_from_slice(&x[..12]);
        PublicId(out)
    }
}

/// The id a caller is given (in a block's Reason, a redirect's verdict
/// header): 24 lowercase hex digits, opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublicId(pub [u8; 12]);

impl PublicId {
    /// The length of the written form.
    pub const LEN: usize = 24;

    /// Writes the id's 24 hex digits into `out` without allocating.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hex());
    }

    /// The 24 hex digits.
    pub fn hex(&self) -> [u8; 24] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut h = [0u8; 24];
        for (i, b) in self.0.iter().enumerate() {
            h[2 * i] = HEX[usize::from(b >> 4)];
            h[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        h
    }
}

impl fmt::Display for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or("?"))
    }
}

/// A string that is not a verdict id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a verdict id is 24 hex digits, as in a blocked call's Reason text")]
pub struct BadVerdictId;

impl FromStr for PublicId {
    type Err = BadVerdictId;
    fn from_str(s: &str) -> Result<Self, BadVerdictId> {
        let s = s.trim();
        if s.len() != Self::LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadVerdictId);
        }
        let mut out = [0u8; 12];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| BadVerdictId)?;
        }
        Ok(PublicId(out))
    }
}

/// The current time in µs since the Unix epoch (a vDSO call, no syscall).
pub fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// How much of the header section beyond the headers kuzet knows by name
/// is kept as evidence: identity and routing headers are always kept
/// whole, the rest share this budget.
pub const OTHER_HEADERS_MAX: usize = 4096;
/// How much of kuzet's own answer is kept, for mirroring it to HEP.
pub const ANSWER_MAX: usize = 1500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ids_are_opaque_and_round_trip_through_their_written_form() {
        let key = IdKey([7; 16]);
        let a = key.public(VerdictId {
            node: VerdictId::node_of("kz-alm-1"),
            seq: 1_763_798_400_000_123,
        });
        let b = key.public(VerdictId {
            node: VerdictId::node_of("kz-alm-1"),
            seq: 1_763_798_400_000_124,
        });
        let text = a.to_string();
        assert_eq!(text.len(), PublicId::LEN);
        let mut raw = Vec::new();
        a.write_to(&mut raw);
        assert_eq!(raw, text.as_bytes());
        assert_eq!(text.parse::<PublicId>(), Ok(a));
        assert_eq!(text.to_uppercase().parse::<PublicId>(), Ok(a));
        assert!("12345".parse::<PublicId>().is_err());
        assert!(format!("{}g", &text[..23]).parse::<PublicId>().is_err());
        // Consecutive internal ids share no visible structure.
        let same = a.0.iter().zip(&b.0).filter(|(x, y)| x == y).count();
        assert!(same <= 3, "{a} {b}");
        // Another key, another id.
        assert_ne!(
            IdKey([8; 16]).public(VerdictId { node: 1, seq: 1 }),
            key.public(VerdictId { node: 1, seq: 1 })
        );
        assert_ne!(VerdictId::node_of("a"), VerdictId::node_of("b"));
    }
}
