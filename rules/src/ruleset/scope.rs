//! Rule scopes (trunk kinds, caller and callee prefixes, hours, weekdays)
//! and the prefix sets they test, with each number's leading digits worked
//! out at most once per call.

use super::*;

/// When and to what a rule applies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    pub(super) trunks: Vec<TrunkKind>,
    pub(super) caller_prefixes: PrefixSet,
    pub(super) callee_prefixes: PrefixSet,
    /// Bit h set = applies during hour h.
    pub(super) hours: u32,
    /// Bit d set = applies on weekday d (0 = Monday).
    pub(super) weekdays: u8,
}

impl Scope {
    pub(super) fn applies(
        &self,
        c: &CallInput,
        a: &mut Option<Leads>,
        b: &mut Option<Leads>,
    ) -> bool {
        if !self.trunks.is_empty() && !c.trunk.is_some_and(|t| self.trunks.contains(&t)) {
            return false;
        }
        let any = |ps: &PrefixSet, l: &mut Option<Leads>| {
            ps.is_empty() || l.as_mut().is_some_and(|l| ps.contains_leads(l))
        };
        if !any(&self.caller_prefixes, a) || !any(&self.callee_prefixes, b) {
            return false;
        }
        (self.hours == 0 || self.hours & (1 << c.time.hour.min(23)) != 0)
            && (self.weekdays == 0 || self.weekdays & (1 << c.time.weekday.min(6)) != 0)
    }
}

/// A set of number prefixes, grouped by length: a membership test costs one
/// `leading` and one binary search per distinct length, however many
/// prefixes there are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixSet {
    pub(super) by_len: Vec<(u8, Vec<u64>)>,
}

impl PrefixSet {
    pub(super) fn new(prefixes: Vec<Prefix>) -> PrefixSet {
        let mut by_len: Vec<(u8, Vec<u64>)> = Vec::new();
        for p in prefixes {
            match by_len.iter_mut().find(|(l, _)| *l == p.len) {
                Some((_, v)) => v.push(p.value),
                None => by_len.push((p.len, vec![p.value])),
            }
        }
        for (_, v) in &mut by_len {
            v.sort_unstable();
            v.dedup();
        }
        PrefixSet { by_len }
    }

    /// True when no prefix was given.
    pub fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }

    /// Whether `n` lies in one of the ranges.
    pub fn contains(&self, n: Number) -> bool {
        self.contains_leads(&mut Leads::new(n))
    }

    /// [`contains`](Self::contains), reusing the leading digits already
    /// worked out for this number (a 64-bit division each).
    pub(super) fn contains_leads(&self, l: &mut Leads) -> bool {
        l.n.is_e164()
            && self.by_len.iter().any(|(len, v)| {
                l.n.len() >= usize::from(*len) && v.binary_search(&l.get(usize::from(*len))).is_ok()
            })
    }
}

/// A number's leading digits by length, each worked out at most once per
/// call: thirty rules with prefix scopes cost one division per distinct
/// prefix length, not one per rule.
pub(super) struct Leads {
    pub(super) n: Number,
    pub(super) vals: [u64; 16],
    pub(super) known: u16,
}

impl Leads {
    pub(super) fn new(n: Number) -> Leads {
        Leads {
            n,
            vals: [0; 16],
            known: 0,
        }
    }

    pub(super) fn get(&mut self, len: usize) -> u64 {
        if len >= 16 {
            return self.n.leading(len);
        }
        if self.known & (1 << len) == 0 {
            self.vals[len] = self.n.leading(len);
            self.known |= 1 << len;
        }
        self.vals[len]
    }
}
