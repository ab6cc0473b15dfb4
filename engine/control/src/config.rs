//! The sections of `kuzet.toml` the control plane owns: `[lists]`,
//! `[control]` (with its `[[control.tokens]]`), `[admin]`, `[hep]` and
//! `[register]`, with their defaults, the checks each makes of its own
//! values, and what a section alone turns into (the list files, the
//! tokens' [`Access`], the export caps, HEP's sender settings).
//!
//! The binary composes them with the other crates' sections into its
//! `Config`: it resolves the paths they name against the config file's
//! folder, reads the register's CA file, and fits the connection caps
//! inside the descriptor limit.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;

use kuzet_rules::{ByList, ListId, Sides};
use serde::Deserialize;

use crate::access::{parse_sha256, Access, Role, Token};
use crate::hep::HepConfig;
use crate::investigate::ExportLimits;
use crate::lists::ListFile;

/// Exports that may run at once, at most (`control.max_exports`).
pub const MAX_EXPORTS: usize = 16;

/// Which numbers the lists are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchSides {
    /// The A-number only.
    Caller,
    /// The B-number only.
    Callee,
    /// Both numbers.
    Both,
}

/// `[lists]`: list files and how they are matched. Each list's key is its
/// name ([`ListId::name`]: `blocklist = ["block.txt"]`), so a list added
/// to [`ListId`] is configurable with no change here.
#[derive(Clone, Debug)]
pub struct ListsConfig {
    /// The files of each list.
    pub files: ByList<Vec<ListEntry>>,
    /// Which numbers the lists are checked against.
    pub match_sides: MatchSides,
    /// How often list files are checked for changes.
    pub reload_interval_ms: u64,
    /// A reload still running after this long is abandoned and the lists
    /// in force stay (and it is tried again).
    pub reload_timeout_ms: u64,
}

/// `[lists]`'s keys besides the lists'.
const LISTS_KEYS: [&str; 3] = ["match", "reload_interval_ms", "reload_timeout_ms"];

impl<'de> Deserialize<'de> for ListsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        static FIELDS: std::sync::LazyLock<Vec<&'static str>> =
            std::sync::LazyLock::new(|| ListId::NAMES.iter().chain(&LISTS_KEYS).copied().collect());
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ListsConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the [lists] table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<ListsConfig, A::Error> {
                let mut c = ListsConfig::default();
                while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "match" => c.match_sides = m.next_value()?,
                        "reload_interval_ms" => c.reload_interval_ms = m.next_value()?,
                        "reload_timeout_ms" => c.reload_timeout_ms = m.next_value()?,
                        k => match ListId::from_name(k) {
                            Some(l) => c.files[l] = m.next_value()?,
                            None => return Err(serde::de::Error::unknown_field(k, &FIELDS[..])),
                        },
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}

impl Default for ListsConfig {
    fn default() -> Self {
        ListsConfig {
            files: ByList::default(),
            match_sides: MatchSides::Both,
            reload_interval_ms: 1000,
            reload_timeout_ms: 120_000,
        }
    }
}

impl ListsConfig {
    /// Every configured list file with its list, in [`ListId::ALL`] order,
    /// its path as written.
    pub fn files(&self) -> Vec<ListFile> {
        self.files
            .iter()
            .flat_map(|(kind, entries)| {
                entries.iter().map(move |e| ListFile {
                    path: e.path.clone(),
                    kind,
                    allow_empty: e.allow_empty,
                })
            })
            .collect()
    }

    /// The sides as the scoring core wants them.
    pub fn sides(&self) -> Sides {
        match self.match_sides {
            MatchSides::Caller => Sides {
                caller: true,
                callee: false,
            },
            MatchSides::Callee => Sides {
                caller: false,
                callee: true,
            },
            MatchSides::Both => Sides::BOTH,
        }
    }
}

/// One list file in `[lists]`: a path, or `{ path = "...", allow_empty =
/// true }` for a list that may legitimately be empty (a list with no
/// entries is otherwise refused, because a truncated upload would silently
/// drop every entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// The file, relative to the config's folder.
    pub path: PathBuf,
    /// Whether the file may hold no entries.
    pub allow_empty: bool,
}

impl ListEntry {
    /// A plain path, which may not be empty.
    pub fn path(p: impl Into<PathBuf>) -> Self {
        ListEntry {
            path: p.into(),
            allow_empty: false,
        }
    }
}

impl From<PathBuf> for ListEntry {
    fn from(p: PathBuf) -> Self {
        ListEntry::path(p)
    }
}

impl<'de> Deserialize<'de> for ListEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            path: PathBuf,
            #[serde(default)]
            allow_empty: bool,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ListEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a file path, or { path = \"...\", allow_empty = true }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ListEntry, E> {
                Ok(ListEntry::path(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<ListEntry, A::Error> {
                let f = Full::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(ListEntry {
                    path: f.path,
                    allow_empty: f.allow_empty,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[control]`: the gRPC control address (the investigators' API, health,
/// reflection) and the tokens that may use it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve the control API at all.
    pub enabled: bool,
    /// Where: loopback by default, since it gives access to evidence.
    pub listen: SocketAddr,
    /// Who may use it.
    pub tokens: Vec<TokenConfig>,
    /// Connections open at once, at most (more are closed at once).
    pub max_connections: usize,
    /// Connections open at once from one address, at most.
    pub max_connections_per_source: usize,
    /// Exports (`kuzet calls --all`) running at once, at most.
    pub max_exports: usize,
    /// Exports running at once per token, at most.
    pub max_exports_per_token: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tokens: Vec::new(),
            max_connections: 128,
            max_connections_per_source: 16,
            max_exports: 8,
            max_exports_per_token: 2,
        }
    }
}

/// One `[[control.tokens]]` entry: make one with `kuzet token new`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, as the audit log names them.
    pub name: String,
    /// `investigator`, `rule-author` or `admin`.
    pub role: String,
    /// The token's SHA-256, 64 hex digits (the token itself is never
    /// stored).
    pub sha256: String,
}

/// The message for a connection or export cap of zero, `[control]`'s or
/// `[admin]`'s.
const CAPS_AT_LEAST_ONE: &str = "control and admin connection and export caps must be at least 1";

impl ControlConfig {
    /// The control API's tokens, checked.
    pub fn access(&self) -> Result<Access, String> {
        let mut tokens = Vec::new();
        for t in &self.tokens {
            let role = Role::from_name(&t.role).ok_or_else(|| {
                format!(
                    "control.tokens {:?}: role must be investigator, rule-author, approver or admin, not {:?}",
                    t.name, t.role
                )
            })?;
            let sha256 = parse_sha256(&t.sha256).ok_or_else(|| {
                format!(
                    "control.tokens {:?}: sha256 must be 64 hex digits (make one with `kuzet token new`)",
                    t.name
                )
            })?;
            tokens.push(Token {
                name: t.name.clone(),
                role,
                sha256,
            });
        }
        Ok(Access::new(tokens))
    }

    /// Checks what serde cannot: the tokens, and the connection and
    /// export caps.
    pub fn check(&self) -> Result<(), String> {
        self.access()?;
        if self.max_connections == 0
            || self.max_connections_per_source == 0
            || self.max_exports == 0
            || self.max_exports_per_token == 0
        {
            return Err(CAPS_AT_LEAST_ONE.into());
        }
        if self.max_exports > MAX_EXPORTS {
            return Err(format!(
                "control.max_exports must be at most {MAX_EXPORTS}: each export holds one of the control API's {} query threads, and queries need the rest",
                crate::plane::API_BLOCKING_THREADS
            ));
        }
        Ok(())
    }

    /// The exports' caps, in total and per token.
    pub fn export_limits(&self) -> ExportLimits {
        ExportLimits {
            total: self.max_exports,
            per_token: self.max_exports_per_token,
        }
    }
}

/// `[admin]`: the HTTP address for Prometheus and health checks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve it at all.
    pub enabled: bool,
    /// Where: loopback by default. It has no authentication: counters and
    /// rule ids only, never a number; open it to the monitoring network,
    /// not the world.
    pub listen: SocketAddr,
    /// Connections open at once, at most (more are closed at once).
    pub max_connections: usize,
    /// Connections open at once from one address, at most.
    pub max_connections_per_source: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9860)),
            max_connections: 64,
            max_connections_per_source: 16,
        }
    }
}

impl AdminConfig {
    /// Checks what serde cannot: the connection caps.
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_source == 0 {
            return Err(CAPS_AT_LEAST_ONE.into());
        }
        Ok(())
    }
}

/// `[hep]`: verdicts (and optionally the SIP) as HEPv3 to a collector.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HepSection {
    /// Send at all.
    pub enabled: bool,
    /// The collector's UDP address (heplify-server, Homer).
    pub collector: SocketAddr,
    /// The capture agent id Homer files kuzet's packets under.
    pub capture_id: u32,
    /// The collector's shared key, when it wants one.
    pub auth_key: Option<String>,
    /// Also mirror each INVITE and kuzet's answer as SIP packets.
    pub mirror_sip: bool,
    /// "all": every judged call; "intercepted": what is recorded (every
    /// call but a plain allow, and the sampled allows).
    pub calls: HepCalls,
}

/// Which calls go to HEP.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HepCalls {
    /// Every judged INVITE.
    All,
    /// Those the store records.
    Intercepted,
}

impl Default for HepSection {
    fn default() -> Self {
        HepSection {
            enabled: false,
            collector: SocketAddr::from(([127, 0, 0, 1], 9060)),
            capture_id: 2001,
            auth_key: None,
            mirror_sip: false,
            calls: HepCalls::All,
        }
    }
}

impl HepSection {
    /// Checks what serde cannot: the shared key's length.
    pub fn check(&self) -> Result<(), String> {
        if self.auth_key.as_ref().is_some_and(|k| k.len() > 256) {
            return Err("hep.auth_key must be at most 256 bytes".into());
        }
        Ok(())
    }

    /// The sender's settings; `local` is kuzet's own SIP address, the far
    /// end of each mirrored message. An empty key is no key.
    pub fn sender_config(&self, local: SocketAddr) -> HepConfig {
        HepConfig {
            collector: self.collector,
            capture_id: self.capture_id,
            auth_key: self.auth_key.clone().filter(|k| !k.is_empty()),
            mirror_sip: self.mirror_sip,
            local,
        }
    }

    /// Whether the call path queues every judged call for HEP, plain
    /// allows included.
    pub fn every_call(&self) -> bool {
        self.enabled && self.calls == HepCalls::All
    }
}

/// `[register]`: the pre-trial register's gRPC endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegisterConfig {
    /// `https://host:port`, or `http://` on loopback only. Unset: incidents
    /// are kept and shown to investigators, not reported.
    pub endpoint: Option<String>,
    /// PEM file of the CA that signs the register's certificate.
    pub ca_file: Option<PathBuf>,
    /// Deadline of each call to the register.
    pub timeout_ms: u64,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            endpoint: None,
            ca_file: None,
            timeout_ms: 5000,
        }
    }
}

impl RegisterConfig {
    /// Checks the endpoint: https anywhere, http on loopback only, no user
    /// information.
    pub fn check(&self) -> Result<(), String> {
        match &self.endpoint {
            Some(ep) => check_endpoint("register.endpoint", ep, "register.ca_file"),
            None => Ok(()),
        }
    }
}

/// Checks a peer's URL (`what` names its key, `ca_key` the key of its CA
/// file, for the advice): https anywhere, plain http on loopback only, no
/// user information.
pub fn check_endpoint(what: &str, ep: &str, ca_key: &str) -> Result<(), String> {
    let bad_scheme = || format!("{what} {ep:?} must start with https:// or http://");
    let uri: tonic::codegen::http::Uri = ep.parse().map_err(|_| bad_scheme())?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "{what} {ep:?}: user information (\"user@\") is not allowed"
        ));
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let scheme = uri.scheme_str().unwrap_or_default();
    match scheme {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{what} {ep:?}: plain http only on loopback; use https:// with {ca_key}"
        )),
        _ => Err(bad_scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_keyed_by_list_name_and_unknown_keys_are_named() {
        let l: ListsConfig = serde_json::from_str(
            r#"{"blocklist": ["b.txt"], "flaglist": [{"path": "f.txt", "allow_empty": true}], "match": "caller"}"#,
        )
        .unwrap();
        assert_eq!(l.files[ListId::Block], vec![ListEntry::path("b.txt")]);
        assert!(l.files[ListId::Flag][0].allow_empty);
        assert!(l.sides().caller && !l.sides().callee);
        assert_eq!(l.files().len(), 2);
        let e = serde_json::from_str::<ListsConfig>(r#"{"blocklsit": []}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `blocklsit`"), "{e}");
        assert!(e.contains("`reload_timeout_ms`"), "{e}");
    }

    #[test]
    fn control_and_admin_check_their_caps_and_tokens() {
        assert_eq!(ControlConfig::default().check(), Ok(()));
        assert_eq!(AdminConfig::default().check(), Ok(()));
        let admin = AdminConfig {
            max_connections: 0,
            ..AdminConfig::default()
        };
        assert_eq!(admin.check().unwrap_err(), CAPS_AT_LEAST_ONE);
        let control = ControlConfig {
            max_exports: MAX_EXPORTS + 1,
            ..ControlConfig::default()
        };
        assert!(control.check().unwrap_err().contains("at most 16"));
        let control = ControlConfig {
            tokens: vec![TokenConfig {
                name: "a".into(),
                role: "boss".into(),
                sha256: "00".into(),
            }],
            ..ControlConfig::default()
        };
        assert!(control
            .check()
            .unwrap_err()
            .contains("investigator, rule-author, approver or admin"));
    }

    #[test]
    fn register_endpoints_are_https_or_loopback_http() {
        let check = |ep: &str| {
            RegisterConfig {
                endpoint: Some(ep.into()),
                ..RegisterConfig::default()
            }
            .check()
        };
        assert!(check("http://10.0.0.1:50061")
            .unwrap_err()
            .contains("only on loopback"));
        assert!(check("https://u@register.example:443")
            .unwrap_err()
            .contains("user information"));
        assert!(check("ftp://register.example")
            .unwrap_err()
            .contains("must start with https:// or http://"));
        for ok in [
            "http://127.0.0.1:50061",
            "http://[::1]:1",
            "http://localhost:1",
            "https://register.example:443",
        ] {
            check(ok).unwrap();
        }
    }

    #[test]
    fn hep_sends_no_empty_key() {
        let h = HepSection {
            enabled: true,
            auth_key: Some(String::new()),
            ..HepSection::default()
        };
        let c = h.sender_config(SocketAddr::from(([127, 0, 0, 1], 5060)));
        assert_eq!(c.auth_key, None);
        assert!(h.every_call());
        let long = HepSection {
            auth_key: Some("k".repeat(257)),
            ..HepSection::default()
        };
        assert!(long.check().is_err());
    }
}
