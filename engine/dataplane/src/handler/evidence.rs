//! What the call path hands to the intercepted-call log: a verdict id that
//! a blocked caller can cite, and the evidence copied inline (no
//! allocation) into the bounded queue's preallocated slot.
//!
//! A [`VerdictId`] is the node (a hash of its name) and a per-process
//! sequence that starts at the start-up time in microseconds, so ids are
//! unique across nodes and restarts without any coordination. It is
//! written as 24 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use kuzet_rules::Number;

/// Bytes copied inline, cut at `N`: no allocation on the call path.
#[derive(Clone, Copy)]
pub struct Inline<const N: usize> {
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> Inline<N> {
    /// Copies up to `N` bytes of `b`.
    pub fn new(b: &[u8]) -> Self {
        let mut s = Self::EMPTY;
        s.set(b);
        s
    }

    /// Nothing.
    pub const EMPTY: Self = Inline {
        len: 0,
        bytes: [0; N],
    };

    /// Replaces the content with up to `N` bytes of `b`.
    pub fn set(&mut self, b: &[u8]) {
        let n = b.len().min(N).min(usize::from(u16::MAX));
        self.bytes[..n].copy_from_slice(&b[..n]);
        self.len = n as u16;
    }

    /// The bytes kept.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The bytes kept, as text (invalid UTF-8 replaced).
    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl<const N: usize> fmt::Display for Inline<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A recorded verdict's id: unique across nodes and restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VerdictId {
    /// The node: a hash of its name.
    pub node: u32,
    /// The node's sequence number (starts at the start-up time in µs).
    pub seq: u64,
}

impl VerdictId {
    /// The length of the written form.
    pub const LEN: usize = 24;

    /// The node part of ids made by the node called `name`.
    pub fn node_of(name: &str) -> u32 {
        use std::hash::Hasher as _;
        // The handler's FNV-1a, folded to 32 bits.
        let mut h = super::Fnv::default();
        h.write(name.as_bytes());
        let x = h.finish();
        (x ^ (x >> 32)) as u32
    }

    /// Writes the id's 24 hex digits into `out` without allocating.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for i in (0..8).rev() {
            out.push(HEX[((self.node >> (i * 4)) & 0xf) as usize]);
        }
        for i in (0..16).rev() {
            out.push(HEX[((self.seq >> (i * 4)) & 0xf) as usize]);
        }
    }
}

impl fmt::Display for VerdictId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}{:016x}", self.node, self.seq)
    }
}

/// A string that is not a verdict id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a verdict id is 24 hex digits, as in a blocked call's Reason text")]
pub struct BadVerdictId;

impl FromStr for VerdictId {
    type Err = BadVerdictId;
    fn from_str(s: &str) -> Result<Self, BadVerdictId> {
        let s = s.trim();
        if s.len() != Self::LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadVerdictId);
        }
        Ok(VerdictId {
            node: u32::from_str_radix(&s[..8], 16).map_err(|_| BadVerdictId)?,
            seq: u64::from_str_radix(&s[8..], 16).map_err(|_| BadVerdictId)?,
        })
    }
}

/// How much of a request's header section is kept as evidence.
pub const HEAD_MAX: usize = 4096;
/// How much of a Request-URI, From or P-Asserted-Identity is kept.
pub const FIELD_MAX: usize = 256;
/// How much of kuzet's own answer is kept, for mirroring it to HEP.
pub const ANSWER_MAX: usize = 1500;

/// A recorded call's evidence beyond the verdict itself.
#[derive(Clone, Copy)]
pub struct Evidence {
    /// The verdict's id (also in a blocked call's Reason).
    pub verdict_id: VerdictId,
    /// When it was judged: µs since the Unix epoch, UTC.
    pub unix_us: i64,
    /// The SIP answer: the block code, 302, or 0 when proxy mode forwarded
    /// the call.
    pub code: u16,
    /// An allowed call kept as a sample (for reviewing false positives).
    pub sampled: bool,
    /// The number in From, normalized.
    pub from: Option<Number>,
    /// The number in P-Asserted-Identity, normalized.
    pub pai: Option<Number>,
    /// The Request-URI as received.
    pub ruri: Inline<FIELD_MAX>,
    /// The From header as received.
    pub from_raw: Inline<FIELD_MAX>,
    /// The P-Asserted-Identity header as received.
    pub pai_raw: Inline<FIELD_MAX>,
    /// The start line and header section as received, cut at [`HEAD_MAX`].
    pub head: Inline<HEAD_MAX>,
    /// kuzet's answer as sent, when HEP mirrors SIP (empty otherwise, and
    /// when proxy mode forwarded the call).
    pub answer: Inline<ANSWER_MAX>,
}

/// The current time in µs since the Unix epoch (a vDSO call, no syscall).
pub fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_ids_round_trip_through_their_written_form() {
        let id = VerdictId {
            node: VerdictId::node_of("kz-alm-1"),
            seq: 1_763_798_400_000_123,
        };
        let text = id.to_string();
        assert_eq!(text.len(), VerdictId::LEN);
        let mut raw = Vec::new();
        id.write_to(&mut raw);
        assert_eq!(raw, text.as_bytes());
        assert_eq!(text.parse::<VerdictId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<VerdictId>(), Ok(id));
        assert!("12345".parse::<VerdictId>().is_err());
        assert!(format!("{}g", &text[..23]).parse::<VerdictId>().is_err());
        assert_ne!(VerdictId::node_of("a"), VerdictId::node_of("b"));
    }

    #[test]
    fn inline_bytes_are_cut_at_their_capacity() {
        let s = Inline::<4>::new(b"abcdef");
        assert_eq!(s.as_bytes(), b"abcd");
        assert_eq!(Inline::<8>::new(b"ab").to_text(), "ab");
    }
}
