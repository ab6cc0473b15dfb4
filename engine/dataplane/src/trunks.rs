//! Trunks: which interconnect a call arrived on, from its source address.
//!
//! The operator names each trunk and gives its kind (international,
//! domestic, mobile, other), its source CIDRs, and whether the network
//! behind it is trusted to assert its callers' identity (RFC 3325's trust
//! domain: P-Asserted-Identity from it is the network vouching for the
//! caller; from anywhere else it is only a claim). The most specific CIDR
//! that covers a source wins. The trunk kind is a scoring fact; in proxy
//! mode a source no trunk covers can be refused. A source on no trunk is
//! never trusted.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use kuzet_rules::TrunkKind;

/// Source address to trunk, most specific CIDR first.
#[derive(Clone, Debug, Default)]
pub struct TrunkMap {
    names: Vec<Arc<str>>,
    trusted: Vec<bool>,
    entries: Vec<(IpNet, u16, TrunkKind)>,
}

impl TrunkMap {
    /// Builds the map from `(name, kind, cidrs, trust_pai)` per trunk.
    pub fn new<'a>(
        trunks: impl IntoIterator<Item = (&'a str, TrunkKind, &'a [IpNet], bool)>,
    ) -> TrunkMap {
        let mut names = Vec::new();
        let mut trusted = Vec::new();
        let mut entries = Vec::new();
        for (i, (name, kind, cidrs, trust)) in trunks.into_iter().enumerate() {
            names.push(Arc::from(name));
            trusted.push(trust);
            for c in cidrs {
                entries.push((*c, i as u16, kind));
            }
        }
        // Longest prefix first, so the first hit is the most specific.
        entries.sort_by_key(|(c, _, _)| std::cmp::Reverse(c.prefix_len()));
        TrunkMap {
            names,
            trusted,
            entries,
        }
    }
}

/// The trunk a call came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trunk<'t> {
    /// The operator's name for it (shared, so events can keep it cheaply).
    pub name: &'t Arc<str>,
    /// What kind of interconnect it is.
    pub kind: TrunkKind,
    /// Its P-Asserted-Identity is the network vouching for the caller.
    pub trust_pai: bool,
    /// Its place in the config's `[[trunks]]` (see [`TrunkMap::names`]).
    pub index: u16,
}

impl TrunkMap {
    /// The trunk for a source address, if any CIDR covers it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Trunk<'_>> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.entries
            .iter()
            .find(|(c, _, _)| c.contains(&ip))
            .map(|(_, i, k)| Trunk {
                name: &self.names[*i as usize],
                kind: *k,
                trust_pai: self.trusted.get(*i as usize).copied().unwrap_or(false),
                index: *i,
            })
    }

    /// Every trunk's name, in the config's order ([`Trunk::index`]).
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// True when no trunk is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
