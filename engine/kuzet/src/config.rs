//! Configuration: the TOML file, its embedded defaults, and the trunk map.
//!
//! Every key is optional; `deploy/kuzet.toml` documents each one with its
//! default and is compiled into the binary, so `kuzet run` with no
//! arguments works anywhere. Unknown keys are errors, so a typo never
//! silently leaves a default in force.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use kuzet_control::files::{self, FileError, MAX_CONFIG_FILE, MAX_RULE_FILE, MAX_SECRET_FILE};
use kuzet_control::lists::{ListFile, Sources};
use kuzet_dataplane::trunks::TrunkMap;
use kuzet_dataplane::Settings;
use kuzet_rules::{ByList, Countries, ListId, ListPolicy, NumberingPlan, Sides, TrunkKind};
use serde::Deserialize;

pub use kuzet_dataplane::handler::{Mode, NumberSource};

/// The documented example config, compiled in as the defaults.
pub const EMBEDDED_CONFIG: &str = include_str!("../../../deploy/kuzet.toml");

/// The shipped default rules, used when kuzet runs on its embedded config
/// and names no rule file.
pub const EMBEDDED_RULES: &str = include_str!("../../../deploy/rules/default.toml");

/// Sample lists shipped in `deploy/lists/`, compiled in for `kuzet run`.
pub const EMBEDDED_LISTS: [(&str, &str, ListId); 3] = [
    (
        "embedded:deploy/lists/blocklist.txt",
        include_str!("../../../deploy/lists/blocklist.txt"),
        ListId::Block,
    ),
    (
        "embedded:deploy/lists/allowlist.txt",
        include_str!("../../../deploy/lists/allowlist.txt"),
        ListId::Allow,
    ),
    (
        "embedded:deploy/lists/flaglist.txt",
        include_str!("../../../deploy/lists/flaglist.txt"),
        ListId::Flag,
    ),
];

/// Exports that may run at once, at most (`control.max_exports`).
pub const MAX_EXPORTS: usize = 16;
/// The control API's query threads (see `kuzet_control::plane`).
const API_THREADS: usize = 24;

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: where and how kuzet listens.
    pub server: ServerConfig,
    /// `[proxy]`: proxy mode's next hop and source policy.
    pub proxy: ProxyConfig,
    /// `[verdict]`: block code, list scores, fail-open budget.
    pub verdict: VerdictConfig,
    /// `[numbers]`: where the A-number is read from.
    pub numbers: NumbersConfig,
    /// `[numbering]`: the numbering plan that normalizes numbers.
    pub numbering: NumberingConfig,
    /// `[lists]`: list files and how they are matched.
    pub lists: ListsConfig,
    /// `[rules]`: the rule file and the behaviour state behind it.
    pub rules: RulesConfig,
    /// `[outcomes]`: who may report call outcomes.
    pub outcomes: OutcomesConfig,
    /// `[store]`: the intercepted-call log.
    pub store: StoreConfig,
    /// `[control]`: the investigators' API and its tokens.
    pub control: ControlConfig,
    /// `[admin]`: `/metrics`, `/healthz` and `/readyz` over HTTP.
    pub admin: AdminConfig,
    /// `[hep]`: each decision to a Homer collector.
    pub hep: HepSection,
    /// `[incidents]`: grouping intercepted calls and the reporting policy.
    pub incidents: IncidentsConfig,
    /// `[register]`: the pre-trial register incidents are reported to.
    pub register: RegisterConfig,
    /// `[[trunks]]`: source CIDRs to trunk name and kind.
    pub trunks: Vec<TrunkConfig>,
    /// Where relative list paths are resolved from: the config file's
    /// folder, or the working directory for the embedded config.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// True when no list source was named anywhere: use the embedded samples.
    #[serde(skip)]
    pub embedded_lists: bool,
    /// True when kuzet runs on its embedded config and no rule file was
    /// named: use the shipped default rules (deploy/rules/default.toml).
    #[serde(skip)]
    pub embedded_rules: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            proxy: ProxyConfig::default(),
            verdict: VerdictConfig::default(),
            numbers: NumbersConfig::default(),
            numbering: NumberingConfig::default(),
            lists: ListsConfig::default(),
            rules: RulesConfig::default(),
            outcomes: OutcomesConfig::default(),
            store: StoreConfig::default(),
            control: ControlConfig::default(),
            admin: AdminConfig::default(),
            hep: HepSection::default(),
            incidents: IncidentsConfig::default(),
            register: RegisterConfig::default(),
            trunks: Vec::new(),
            base_dir: PathBuf::from("."),
            embedded_lists: false,
            embedded_rules: false,
        }
    }
}

/// Behaviour rules: the rule file and the per-number state behind it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Rule file (see deploy/rules/default.toml). None: lists alone decide.
    pub file: Option<PathBuf>,
    /// At most this many A-numbers (and as many destinations) are tracked.
    pub max_tracked_numbers: usize,
    /// A number not seen for this long is forgotten.
    pub idle_ttl_secs: u32,
    /// Local time for rule scopes (hours, weekdays): minutes east of UTC.
    pub utc_offset_minutes: i32,
    /// The longest call: a call counted in progress for longer (a lost BYE,
    /// a `started` never `ended`) is stale and stops counting.
    pub max_call_secs: u32,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            file: None,
            max_tracked_numbers: 1_000_000,
            idle_ttl_secs: 86_400,
            utc_offset_minutes: 300,
            max_call_secs: 14_400,
        }
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

impl Config {
    /// The control API's tokens, checked.
    pub fn access(&self) -> Result<kuzet_control::access::Access, String> {
        use kuzet_control::access::{parse_sha256, Role, Token};
        let mut tokens = Vec::new();
        for t in &self.control.tokens {
            let role = Role::from_name(&t.role).ok_or_else(|| {
                format!(
                    "control.tokens {:?}: role must be investigator, rule-author or admin, not {:?}",
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
        Ok(kuzet_control::access::Access::new(tokens))
    }
}

/// `[incidents]`: how intercepted calls group into incidents, and which
/// are reported.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// Group calls into incidents at all.
    pub enabled: bool,
    /// Calls of one source further apart than this start a new incident.
    pub window_secs: u64,
    /// An incident quiet for this long is closed.
    pub close_after_secs: u64,
    /// Report an incident once it has this many blocked calls...
    pub report_min_blocked: u64,
    /// ...or as soon as one of these rules fires in it.
    pub report_rules: Vec<String>,
    /// A campaign (one rule, one trunk) is an incident from this many
    /// distinct callers.
    pub campaign_min_sources: u64,
    /// At most one update per incident to the register per this long.
    pub update_interval_secs: u64,
    /// An incident open this long is closed even if its calls go on (they
    /// open a new one), so retention, which keeps open incidents' calls,
    /// always ends.
    pub max_open_secs: u64,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig {
            enabled: true,
            window_secs: 3600,
            close_after_secs: 86_400,
            report_min_blocked: 3,
            report_rules: Vec::new(),
            campaign_min_sources: 3,
            update_interval_secs: 60,
            max_open_secs: 7 * 86_400,
        }
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

impl Config {
    /// The incident policy the store applies.
    pub fn incident_policy(&self) -> kuzet_store::incident::Policy {
        let i = &self.incidents;
        kuzet_store::incident::Policy {
            enabled: i.enabled,
            window_us: (i.window_secs.max(1) * 1_000_000) as i64,
            close_after_us: (i.close_after_secs.max(1) * 1_000_000) as i64,
            min_blocked: i.report_min_blocked.max(1),
            report_rules: i.report_rules.clone(),
            campaign_min_sources: i.campaign_min_sources.max(1),
            report: self.register.endpoint.is_some(),
            update_interval_us: (i.update_interval_secs * 1_000_000) as i64,
            max_open_us: (i.max_open_secs.max(60) * 1_000_000) as i64,
        }
    }

    /// Checks the register endpoint: https anywhere, http on loopback only.
    fn check_register(&self) -> Result<(), String> {
        let Some(ep) = &self.register.endpoint else {
            return Ok(());
        };
        let bad_scheme = || format!("register.endpoint {ep:?} must start with https:// or http://");
        let uri: tonic::codegen::http::Uri = ep.parse().map_err(|_| bad_scheme())?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!(
                "register.endpoint {ep:?}: user information (\"user@\") is not allowed"
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
                "register.endpoint {ep:?}: plain http only on loopback; use https:// with register.ca_file"
            )),
            _ => Err(bad_scheme()),
        }
    }
}

/// `[store]`: the intercepted-call log in the data directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Record verdicts at all (off: they are only logged).
    pub enabled: bool,
    /// The data directory. Unset: `./kuzet-data` in the working directory;
    /// a relative path is resolved against the config file's folder.
    /// `--data` overrides both.
    pub dir: Option<PathBuf>,
    /// This node's name in records and verdict ids. Unset: the host name.
    pub node_name: Option<String>,
    /// Record one allowed call in this many, so false positives can be
    /// reviewed (0: none).
    pub record_allowed_every: u32,
    /// The record queue between the call path and the store, in MiB: a
    /// file in the data directory (`records.ring`), mapped into memory, so
    /// records a caller was told about survive a crash of the process.
    pub queue_mb: usize,
    /// The share of the queue (percent) only records whose verdict id is
    /// given to the caller (blocks, redirects) may use: flags and samples
    /// are refused first.
    pub queue_reserved_percent: u8,
    /// Before `queue_mb`: the queue's size in records. Still read: each
    /// record counts 8 KiB.
    pub queue: Option<usize>,
    /// Records older than this are retired (0: kept for ever).
    pub max_age_days: u32,
    /// The calls log is trimmed, oldest first, to stay under this size
    /// (0: no limit).
    pub max_size_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            dir: None,
            node_name: None,
            record_allowed_every: 1000,
            queue_mb: 64,
            queue_reserved_percent: 25,
            queue: None,
            max_age_days: 90,
            max_size_mb: 0,
        }
    }
}

impl StoreConfig {
    /// The record queue's size in bytes.
    pub fn queue_bytes(&self) -> usize {
        match self.queue {
            Some(records) => records.saturating_mul(8 << 10).max(1 << 20),
            None => self.queue_mb << 20,
        }
    }
}

impl Config {
    /// The data directory the store uses.
    pub fn data_dir(&self) -> PathBuf {
        match &self.store.dir {
            Some(d) => self.resolve(d),
            None => PathBuf::from("kuzet-data"),
        }
    }

    /// This node's name: configured, or the host name.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.store.node_name {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kuzet".into())
    }
}

/// `[outcomes]`: who may report call outcomes (the outcome API).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    /// Trunk names (from `[[trunks]]`) whose sources may report.
    pub reporters: Vec<String>,
    /// A file holding a shared secret; a source that sends it in
    /// `X-Kuzet-Outcome-Key` may report.
    pub secret_file: Option<PathBuf>,
    /// The secret, once read.
    #[serde(skip)]
    pub secret: Option<Vec<u8>>,
}

/// `[server]`: where and how kuzet listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address for SIP over UDP and TCP.
    pub listen: SocketAddr,
    /// Redirect (answer 302/603) or proxy (forward).
    pub mode: Mode,
    /// UDP worker threads; 0 = one per core.
    pub udp_workers: usize,
    /// Datagrams moved per recvmmsg/sendmmsg call.
    pub udp_batch: usize,
    /// SO_RCVBUF/SO_SNDBUF asked of the kernel, so bursts queue rather than drop.
    pub socket_buffer_bytes: usize,
    /// Also accept SIP over TCP on the listen address.
    pub tcp: bool,
    /// TCP connections beyond this are refused, bounding memory.
    pub max_tcp_connections: usize,
    /// TCP connections from one source address beyond this are refused.
    pub max_tcp_connections_per_source: usize,
    /// The TCP listen backlog (the kernel caps it at net.core.somaxconn).
    pub tcp_backlog: u32,
    /// A TCP connection with no message in progress this long is closed.
    pub tcp_idle_timeout_secs: u64,
    /// A TCP message not complete this long after its first byte closes
    /// the connection.
    pub tcp_message_timeout_ms: u64,
    /// An answer a TCP peer has not taken this long closes the connection.
    pub tcp_write_timeout_ms: u64,
    /// How often counters are logged and behaviour state is swept.
    pub stats_interval_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            mode: Mode::Redirect,
            udp_workers: 0,
            udp_batch: 32,
            socket_buffer_bytes: 4 << 20,
            tcp: true,
            max_tcp_connections: 4096,
            max_tcp_connections_per_source: 256,
            tcp_backlog: 4096,
            tcp_idle_timeout_secs: 60,
            tcp_message_timeout_ms: 10_000,
            tcp_write_timeout_ms: 10_000,
            stats_interval_secs: 10,
        }
    }
}

/// `[proxy]`: proxy mode's next hop and who may use it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Where proxy mode forwards requests.
    pub next_hop: Option<SocketAddr>,
    /// `host:port` written in kuzet's own Via, when the listen address is not reachable as is.
    pub advertised_address: Option<SocketAddr>,
    /// Proxy mode: refuse sources no trunk covers (when trunks exist).
    pub reject_unknown_source: bool,
    /// The code unknown sources are refused with.
    pub unknown_source_code: u16,
    /// Add kuzet's Record-Route to each new call, so the call's later
    /// requests (re-INVITE, BYE) pass through kuzet (see the handler's
    /// `Settings::record_route` for what turning it off costs).
    pub record_route: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            next_hop: None,
            advertised_address: None,
            reject_unknown_source: true,
            unknown_source_code: 403,
            record_route: true,
        }
    }
}

/// `[verdict]`: how a blocked call is answered and what list hits score.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictConfig {
    /// 603, 403 or 607 for a blocked call.
    pub block_code: u16,
    /// What a blocklist hit scores (the built-in blocklist rule).
    pub block_score: u32,
    /// What a flaglist hit scores (the built-in flaglist rule).
    pub flag_score: u32,
    /// A request older than this when scoring starts is allowed unscored.
    pub failopen_budget_us: u64,
    /// INVITE transactions whose verdict is kept, so a retransmission gets
    /// the same answer without being scored or counted again.
    pub max_transactions: usize,
    /// How long a transaction's verdict is kept, seconds (RFC 3261 Timer
    /// B: 32).
    pub transaction_window_secs: u64,
    /// Where a wrongly blocked caller can appeal (a phone number or a web
    /// address), written in a block's Reason text beside its verdict id.
    pub appeal_contact: Option<String>,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig {
            block_code: 603,
            block_score: 100,
            flag_score: 50,
            failopen_budget_us: 50_000,
            max_transactions: 262_144,
            transaction_window_secs: 32,
            appeal_contact: None,
        }
    }
}

/// `[numbers]`: where the numbers of a call are read from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumbersConfig {
    /// Headers the A-number is read from, first match wins.
    pub a_number_order: Vec<NumberSource>,
}

impl Default for NumbersConfig {
    fn default() -> Self {
        NumbersConfig {
            a_number_order: vec![NumberSource::Pai, NumberSource::From],
        }
    }
}

/// `[numbering]`: the numbering plan, as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumberingConfig {
    /// Country calling code (7 for Kazakhstan).
    pub country_code: String,
    /// Dialled before a national number (8).
    pub trunk_prefix: String,
    /// International access prefixes (810, 00).
    pub international_prefixes: Vec<String>,
    /// Digits in a national significant number.
    pub national_number_length: usize,
    /// Numbers this short that are nothing else are service numbers.
    pub max_short_number_length: usize,
    /// The countries within the shared country codes and the home
    /// country's allocations (what is domestic, foreign or invalid); unset:
    /// `deploy/numbering/kz.toml`, compiled in. Read at start-up.
    pub plan: Option<PathBuf>,
    /// The table `plan` names (or the compiled-in one), once loaded.
    #[serde(skip)]
    pub countries: Countries,
}

impl Default for NumberingConfig {
    fn default() -> Self {
        let p = NumberingPlan::kazakhstan();
        NumberingConfig {
            country_code: p.country_code,
            trunk_prefix: p.trunk_prefix,
            international_prefixes: p.international_prefixes,
            national_number_length: p.national_number_length,
            max_short_number_length: p.max_short_number_length,
            plan: None,
            countries: p.countries,
        }
    }
}

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
                while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
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
    /// Every configured list file with its list, in [`ListId::ALL`] order.
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

/// One `[[trunks]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// The operator's name for the trunk, in logs and records.
    pub name: String,
    /// international, domestic, mobile or other.
    pub kind: String,
    /// Source networks that belong to it.
    pub cidrs: Vec<IpNet>,
    /// Its P-Asserted-Identity is trusted: the network behind it vouches
    /// for its callers (RFC 3325). Set it for the operator's own core and
    /// for interconnects whose identities an agreement makes trustworthy;
    /// from anywhere else (and from a source on no trunk) PAI and From are
    /// claims, and no record names such a number as a fraud source.
    #[serde(default)]
    pub trust_pai: bool,
}

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file (or one it names) could not be read: missing, not a
    /// regular file, too big, or not UTF-8 (with the line).
    #[error(transparent)]
    Read(#[from] FileError),
    /// Not TOML, or an unknown key or a value of the wrong type.
    #[error("{path}:{line}:{col}: {message}")]
    Toml {
        /// The config file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The parser's message.
        message: String,
    },
    /// Parses, but a value is out of range or values contradict each other.
    #[error("{path}: {message}")]
    Invalid {
        /// The config file (or "command line").
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// The embedded defaults, with the embedded sample lists.
    pub fn embedded() -> Config {
        let mut c = Self::from_toml_str(EMBEDDED_CONFIG, "embedded:deploy/kuzet.toml")
            .expect("the embedded config is checked by a unit test");
        c.embedded_lists = c.lists.files().is_empty();
        c
    }

    /// Reads and checks a config file; list paths are resolved from its folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = files::read_text(path, MAX_CONFIG_FILE)?;
        let mut c = Self::from_toml_str(&text, &path.display().to_string())?;
        c.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        c.load_side_files(&path.display().to_string())?;
        Ok(c)
    }

    /// Reads the files the config names beside the lists: the numbering
    /// plan and the outcome secret (relative to the config's folder).
    pub fn load_side_files(&mut self, name: &str) -> Result<(), ConfigError> {
        if let Some(p) = &self.outcomes.secret_file {
            let path = self.resolve(p);
            let text = files::read_bytes(&path, MAX_SECRET_FILE)?;
            let secret = text.trim_ascii().to_vec();
            if secret.len() < 16 {
                return Err(ConfigError::Invalid {
                    path: path.display().to_string(),
                    message: "the outcome secret must be at least 16 bytes".into(),
                });
            }
            self.outcomes.secret = Some(secret);
        }
        self.load_plan(name)
    }

    /// Reads the numbering plan file `[numbering] plan` names (relative to
    /// the config's folder) and checks it against `[numbering]`.
    pub fn load_plan(&mut self, name: &str) -> Result<(), ConfigError> {
        if let Some(p) = &self.numbering.plan {
            let path = self.resolve(p);
            let text = files::read_text(&path, MAX_RULE_FILE)?;
            self.numbering.countries = Countries::from_toml_str(&text, &path.display().to_string())
                .map_err(|e| ConfigError::Toml {
                    path: e.file,
                    line: e.line,
                    col: e.col,
                    message: e.message,
                })?;
        }
        self.plan().map_err(|e| ConfigError::Invalid {
            path: name.to_string(),
            message: format!("numbering: {e}"),
        })?;
        Ok(())
    }

    /// Parses and checks TOML text; `name` labels errors.
    pub fn from_toml_str(text: &str, name: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = kuzet_rules::toml_pos::error_at(text, &e);
            ConfigError::Toml {
                path: name.to_string(),
                line,
                col,
                message: e.message().to_string(),
            }
        })?;
        c.check(name)?;
        Ok(c)
    }

    /// Checks what serde cannot: value ranges and cross-field rules.
    pub fn check(&self, name: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: name.to_string(),
            message,
        };
        if ![603, 403, 607].contains(&self.verdict.block_code) {
            return Err(bad(format!(
                "verdict.block_code must be 603, 403 or 607, not {}",
                self.verdict.block_code
            )));
        }
        if !(400..=699).contains(&self.proxy.unknown_source_code) {
            return Err(bad(
                "proxy.unknown_source_code must be a 4xx-6xx code".into()
            ));
        }
        if self.server.mode == Mode::Proxy && self.proxy.next_hop.is_none() {
            return Err(bad(
                "proxy mode needs a next hop: set proxy.next_hop or pass --next-hop".into(),
            ));
        }
        if self.server.udp_batch == 0 || self.server.udp_batch > 1024 {
            return Err(bad("server.udp_batch must be 1 to 1024".into()));
        }
        if self.server.max_tcp_connections_per_source == 0 || self.server.tcp_backlog == 0 {
            return Err(bad(
                "server.max_tcp_connections_per_source and server.tcp_backlog must be at least 1"
                    .into(),
            ));
        }
        if self.hep.auth_key.as_ref().is_some_and(|k| k.len() > 256) {
            return Err(bad("hep.auth_key must be at most 256 bytes".into()));
        }
        if let Some(c) = &self.verdict.appeal_contact {
            if c.len() > 128
                || c.bytes()
                    .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
            {
                return Err(bad(
                    "verdict.appeal_contact must be at most 128 characters, without quotes, backslashes or control characters (it is written inside the Reason header's quoted text)".into(),
                ));
            }
        }
        self.access().map_err(bad)?;
        self.check_register().map_err(bad)?;
        if self.store.queue == Some(0) || self.store.queue_mb == 0 || self.store.queue_mb > 16_384 {
            return Err(bad(
                "store.queue_mb must be 1 to 16384 (and store.queue, if set, at least 1)".into(),
            ));
        }
        if self.store.queue_reserved_percent > 90 {
            return Err(bad("store.queue_reserved_percent must be 0 to 90".into()));
        }
        if self.control.max_connections == 0
            || self.control.max_connections_per_source == 0
            || self.admin.max_connections == 0
            || self.admin.max_connections_per_source == 0
            || self.control.max_exports == 0
            || self.control.max_exports_per_token == 0
        {
            return Err(bad(
                "control and admin connection and export caps must be at least 1".into(),
            ));
        }
        if self.control.max_exports > MAX_EXPORTS {
            return Err(bad(format!(
                "control.max_exports must be at most {MAX_EXPORTS}: each export holds one of the control API's {API_THREADS} query threads, and queries need the rest"
            )));
        }
        if let Some(n) = &self.store.node_name {
            if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "store.node_name must be 1 to 64 visible ASCII characters".into(),
                ));
            }
        }
        if self.numbers.a_number_order.is_empty() {
            return Err(bad("numbers.a_number_order may not be empty".into()));
        }
        self.plan().map_err(|e| bad(format!("numbering: {e}")))?;
        for r in &self.outcomes.reporters {
            if !self.trunks.iter().any(|t| &t.name == r) {
                return Err(bad(format!(
                    "outcomes.reporters names trunk {r:?}, which no [[trunks]] entry defines"
                )));
            }
        }
        for t in &self.trunks {
            TrunkKind::from_name(&t.kind).ok_or_else(|| {
                bad(format!(
                    "trunk {:?}: kind must be international, domestic, mobile or other, not {:?}",
                    t.name, t.kind
                ))
            })?;
        }
        Ok(())
    }

    /// The numbering plan, validated.
    pub fn plan(&self) -> Result<NumberingPlan, kuzet_rules::PlanError> {
        NumberingPlan {
            country_code: self.numbering.country_code.clone(),
            trunk_prefix: self.numbering.trunk_prefix.clone(),
            international_prefixes: self.numbering.international_prefixes.clone(),
            national_number_length: self.numbering.national_number_length,
            max_short_number_length: self.numbering.max_short_number_length,
            countries: self.numbering.countries.clone(),
        }
        .validated()
    }

    /// A list path as written, resolved against the config's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The trunk table.
    pub fn trunk_map(&self) -> TrunkMap {
        TrunkMap::new(self.trunks.iter().map(|t| {
            let kind = TrunkKind::from_name(&t.kind).unwrap_or(TrunkKind::Other);
            (t.name.as_str(), kind, t.cidrs.as_slice(), t.trust_pai)
        }))
    }

    /// What the call path needs, from this config.
    pub fn dataplane(&self) -> Result<Settings, kuzet_rules::PlanError> {
        Ok(Settings {
            mode: self.server.mode,
            via_address: self.proxy.advertised_address.unwrap_or(self.server.listen),
            plan: self.plan()?,
            trunks: self.trunk_map(),
            a_order: self.numbers.a_number_order.clone(),
            block_code: self.verdict.block_code,
            failopen_budget: Duration::from_micros(self.verdict.failopen_budget_us),
            next_hop: self.proxy.next_hop,
            record_route: self.proxy.record_route,
            reject_unknown_source: self.proxy.reject_unknown_source,
            unknown_source_code: self.proxy.unknown_source_code,
            max_tracked_numbers: self.rules.max_tracked_numbers,
            idle_ttl_secs: self.rules.idle_ttl_secs,
            utc_offset_minutes: self.rules.utc_offset_minutes,
            max_transactions: self.verdict.max_transactions.max(1),
            transaction_window: Duration::from_secs(self.verdict.transaction_window_secs),
            outcome_reporters: self.outcomes.reporters.clone(),
            outcome_secret: self.outcomes.secret.clone(),
            max_call: Duration::from_secs(u64::from(self.rules.max_call_secs.max(1))),
            node_name: self.node_name(),
            record_allowed_every: if self.store.enabled {
                self.store.record_allowed_every
            } else {
                0
            },
            appeal_contact: self.verdict.appeal_contact.clone(),
            first_verdict_seq: None,
            verdict_key: None,
            events_for_every_call: self.hep.enabled && self.hep.calls == HepCalls::All,
            copy_answers: self.hep.enabled && self.hep.mirror_sip,
        })
    }

    /// Where the control plane loads lists and rules from: the config's
    /// files resolved against its folder, or the embedded samples.
    pub fn sources(&self) -> Sources {
        let files = if self.embedded_lists {
            Vec::new()
        } else {
            self.lists
                .files()
                .into_iter()
                .map(|f| ListFile {
                    path: self.resolve(&f.path),
                    ..f
                })
                .collect()
        };
        Sources {
            files,
            embedded: if self.embedded_lists {
                EMBEDDED_LISTS.to_vec()
            } else {
                Vec::new()
            },
            rule_file: self.rules.file.as_deref().map(|p| self.resolve(p)),
            embedded_rules: (self.embedded_rules && self.rules.file.is_none()).then_some((
                "default rules (deploy/rules/default.toml, compiled in)",
                EMBEDDED_RULES,
            )),
            policy: ListPolicy {
                block_score: self.verdict.block_score,
                flag_score: self.verdict.flag_score,
                sides: self.lists.sides(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_parses_and_uses_embedded_lists() {
        let c = Config::embedded();
        assert_eq!(c.server.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(c.server.mode, Mode::Redirect);
        assert!(c.embedded_lists);
        assert_eq!(c.verdict.block_code, 603);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = Config::from_toml_str("[server]\nlisten = \"nope\"\n", "k.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("k.toml:2:"), "{s}");
        let e = Config::from_toml_str("[server]\nlistne = \"1.2.3.4:5\"\n", "k.toml").unwrap_err();
        assert!(e.to_string().contains("unknown field `listne`"), "{e}");
        let e = Config::from_toml_str("[verdict]\nblock_code = 486\n", "k.toml").unwrap_err();
        assert!(e.to_string().contains("603, 403 or 607"), "{e}");
        let e = Config::from_toml_str("[server]\nmode = \"proxy\"\n", "k.toml").unwrap_err();
        assert!(e.to_string().contains("next hop"), "{e}");
        let e = Config::from_toml_str(
            "[register]\nendpoint = \"http://10.0.0.1:50061\"\n",
            "k.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("only on loopback"), "{e}");
        for ok in [
            "http://127.0.0.1:50061",
            "http://[::1]:1",
            "https://register.example:443",
        ] {
            Config::from_toml_str(&format!("[register]\nendpoint = {ok:?}\n"), "k.toml").unwrap();
        }
        let e = Config::from_toml_str(
            "[[control.tokens]]\nname = \"a\"\nrole = \"boss\"\nsha256 = \"00\"\n",
            "k.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("investigator, rule-author or admin"),
            "{e}"
        );
    }

    #[test]
    fn trunks_match_most_specific_cidr() {
        let c = Config::from_toml_str(
            "[[trunks]]\nname='intl'\nkind='international'\ncidrs=['10.0.0.0/8']\n\
             [[trunks]]\nname='mob'\nkind='mobile'\ncidrs=['10.1.0.0/16','::1/128']\n",
            "t",
        )
        .unwrap();
        let m = c.trunk_map();
        assert_eq!(
            &**m.lookup("10.1.2.3".parse().unwrap()).unwrap().name,
            "mob"
        );
        assert_eq!(
            m.lookup("10.2.2.3".parse().unwrap()).unwrap().kind,
            TrunkKind::International
        );
        assert_eq!(&**m.lookup("::1".parse().unwrap()).unwrap().name, "mob");
        assert!(m.lookup("192.0.2.1".parse().unwrap()).is_none());
        let e = Config::from_toml_str("[[trunks]]\nname='x'\nkind='satellite'\ncidrs=[]\n", "t");
        assert!(e.is_err());
    }
}
