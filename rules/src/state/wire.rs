//! A [`Delta`] as bytes, to travel between nodes (through Redis).
//!
//! Little-endian, fixed-width, in the order the structs declare their
//! fields: the version, the export time, then the three lists, each its
//! length (u32) and its items. A caller's optional parts are a flag byte
//! (bit 0: fan-out, bit 1: outcomes) and then the parts present. Nothing
//! is trusted on the way in: every length is checked against the bytes
//! left before anything is allocated for it, a flag byte with unknown
//! bits or bytes left over refuse the delta whole, and a version other
//! than [`DELTA_VERSION`] is refused before the rest is read.

use super::delta::{
    Buckets, CallerDelta, CountDelta, Delta, DeltaError, FanOutDelta, OutcomeDelta, DELTA_VERSION,
};
use super::{FANOUT_BITS, VELOCITY_SLOTS};

const FLAG_FAN_OUT: u8 = 1;
const FLAG_OUTCOMES: u8 = 2;

/// Bytes of one [`Buckets`].
const BUCKETS_LEN: usize = 4 + 4 + 2 + 2;
/// The least a caller takes (no optional part).
const CALLER_MIN: usize = 8 + 4 + VELOCITY_SLOTS * BUCKETS_LEN + 1;
/// Bytes of one [`CountDelta`].
const COUNT_LEN: usize = 8 + 4 + BUCKETS_LEN;

impl Delta {
    /// The delta as bytes (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(
            16 + self.callers.len() * (CALLER_MIN + 8 + FANOUT_BITS / 8)
                + (self.destinations.len() + self.escalations.len()) * COUNT_LEN,
        );
        o.extend_from_slice(&self.version.to_le_bytes());
        o.extend_from_slice(&self.at.to_le_bytes());
        o.extend_from_slice(&(self.callers.len() as u32).to_le_bytes());
        for c in &self.callers {
            o.extend_from_slice(&c.key.to_le_bytes());
            o.extend_from_slice(&c.last_seen.to_le_bytes());
            for b in &c.velocity {
                put_buckets(&mut o, b);
            }
            let flags = if c.fan_out.is_some() { FLAG_FAN_OUT } else { 0 }
                | if c.outcomes.is_some() {
                    FLAG_OUTCOMES
                } else {
                    0
                };
            o.push(flags);
            if let Some(f) = &c.fan_out {
                o.extend_from_slice(&f.len.to_le_bytes());
                o.extend_from_slice(&f.start.to_le_bytes());
                for w in &f.bits {
                    o.extend_from_slice(&w.to_le_bytes());
                }
                o.extend_from_slice(&f.callbacks.to_le_bytes());
            }
            if let Some(x) = &c.outcomes {
                o.extend_from_slice(&x.len.to_le_bytes());
                o.extend_from_slice(&x.start.to_le_bytes());
                for n in &x.counts {
                    o.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        for list in [&self.destinations, &self.escalations] {
            o.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for c in list {
                o.extend_from_slice(&c.key.to_le_bytes());
                o.extend_from_slice(&c.last_seen.to_le_bytes());
                put_buckets(&mut o, &c.window);
            }
        }
        o
    }

    /// Reads bytes [`Delta::encode`] wrote; anything else is refused whole.
    pub fn decode(b: &[u8]) -> Result<Delta, DeltaError> {
        let mut r = Reader { b };
        let version = r.u16()?;
        if version != DELTA_VERSION {
            return Err(DeltaError::Version(version));
        }
        let at = r.u32()?;
        let n = r.count(CALLER_MIN)?;
        let mut callers = Vec::with_capacity(n);
        for _ in 0..n {
            let key = r.u64()?;
            let last_seen = r.u32()?;
            let mut velocity = [Buckets::default(); VELOCITY_SLOTS];
            for v in &mut velocity {
                *v = r.buckets()?;
            }
            let flags = r.u8()?;
            if flags & !(FLAG_FAN_OUT | FLAG_OUTCOMES) != 0 {
                return Err(DeltaError::Malformed("unknown caller flags"));
            }
            let fan_out = if flags & FLAG_FAN_OUT != 0 {
                let (len, start) = (r.u32()?, r.u32()?);
                let mut bits = [0u64; FANOUT_BITS / 64];
                for w in &mut bits {
                    *w = r.u64()?;
                }
                Some(FanOutDelta {
                    len,
                    start,
                    bits,
                    callbacks: r.u16()?,
                })
            } else {
                None
            };
            let outcomes = if flags & FLAG_OUTCOMES != 0 {
                let (len, start) = (r.u32()?, r.u32()?);
                let mut counts = [0u16; 4];
                for c in &mut counts {
                    *c = r.u16()?;
                }
                Some(OutcomeDelta { len, start, counts })
            } else {
                None
            };
            callers.push(CallerDelta {
                key,
                last_seen,
                velocity,
                fan_out,
                outcomes,
            });
        }
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = r.count(COUNT_LEN)?;
            list.reserve(n);
            for _ in 0..n {
                list.push(CountDelta {
                    key: r.u64()?,
                    last_seen: r.u32()?,
                    window: r.buckets()?,
                });
            }
        }
        if !r.b.is_empty() {
            return Err(DeltaError::Malformed("bytes after the end"));
        }
        let [destinations, escalations] = lists;
        Ok(Delta {
            version,
            at,
            callers,
            destinations,
            escalations,
        })
    }
}

fn put_buckets(o: &mut Vec<u8>, b: &Buckets) {
    o.extend_from_slice(&b.len.to_le_bytes());
    o.extend_from_slice(&b.start.to_le_bytes());
    o.extend_from_slice(&b.prev.to_le_bytes());
    o.extend_from_slice(&b.cur.to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DeltaError> {
        let (head, rest) = self
            .b
            .split_first_chunk::<N>()
            .ok_or(DeltaError::Malformed("cut short"))?;
        self.b = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DeltaError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DeltaError> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, DeltaError> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, DeltaError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn buckets(&mut self) -> Result<Buckets, DeltaError> {
        Ok(Buckets {
            len: self.u32()?,
            start: self.u32()?,
            prev: self.u16()?,
            cur: self.u16()?,
        })
    }

    /// A list's length, checked against the bytes left (each item takes
    /// at least `min` bytes), so a forged length allocates nothing.
    fn count(&mut self, min: usize) -> Result<usize, DeltaError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.b.len() {
            return Err(DeltaError::Malformed("a length longer than the bytes"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Delta {
        let b = |len, start, prev, cur| Buckets {
            len,
            start,
            prev,
            cur,
        };
        Delta {
            version: DELTA_VERSION,
            at: 1_796_464_680,
            callers: vec![
                CallerDelta {
                    key: 0x1234_5678_9abc_def0,
                    last_seen: 1_796_464_679,
                    velocity: [
                        b(60, 1_796_464_640, 3, 7),
                        b(0, 0, 0, 0),
                        b(3600, 1_796_461_200, 0, 9),
                    ],
                    fan_out: Some(FanOutDelta {
                        len: 3600,
                        start: 1_796_461_200,
                        bits: {
                            let mut x = [0u64; FANOUT_BITS / 64];
                            x[0] = 0b1011;
                            x[7] = u64::MAX;
                            x
                        },
                        callbacks: 2,
                    }),
                    outcomes: None,
                },
                CallerDelta {
                    key: 42,
                    last_seen: 7,
                    velocity: [Buckets::default(); VELOCITY_SLOTS],
                    fan_out: None,
                    outcomes: Some(OutcomeDelta {
                        len: 3600,
                        start: 0,
                        counts: [1, 2, 3, 4],
                    }),
                },
            ],
            destinations: vec![CountDelta {
                key: 9,
                last_seen: 8,
                window: b(3600, 0, 1, 2),
            }],
            escalations: vec![],
        }
    }

    #[test]
    fn a_delta_round_trips_through_its_bytes() {
        let d = sample();
        assert_eq!(Delta::decode(&d.encode()), Ok(d));
        let empty = Delta {
            version: DELTA_VERSION,
            ..Delta::default()
        };
        assert_eq!(Delta::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn damaged_bytes_are_refused_whole_and_allocate_nothing_for_a_forged_length() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Delta::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Delta::decode(&longer),
            Err(DeltaError::Malformed("bytes after the end"))
        );
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(Delta::decode(&other), Err(DeltaError::Version(9)));
        // A caller count of four billion, with a few bytes behind it.
        let mut forged = bytes[..6].to_vec();
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        forged.extend_from_slice(&[0; 64]);
        assert_eq!(
            Delta::decode(&forged),
            Err(DeltaError::Malformed("a length longer than the bytes"))
        );
    }
}
