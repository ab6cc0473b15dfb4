//! Scenario files: who calls whom, how often, and which calls are fraud.
//!
//! A scenario is a TOML file (examples and every key documented in
//! `sim/scenarios/`). It names a seed, a length of traffic, the trunks the
//! calls arrive on (as loopback source addresses), the own-subscriber
//! range, legitimate traffic sources and fraud campaigns. Parsing checks
//! everything a run depends on and reports `file:line:col: reason`, so a
//! typo cannot silently change an experiment.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

/// What a traffic source does. The first seven are legitimate; the rest
/// are fraud campaigns, one per pattern kuzet must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Own subscribers calling each other.
    Subscribers,
    /// Genuine callers from abroad with foreign numbers.
    InboundInternational,
    /// A few numbers calling many people: bank call centre, taxi dispatch,
    /// delivery service.
    HighVolume,
    /// Callers from Russia (+7 9xx, sharing code 7): on the international
    /// trunk, or roaming on the mobile network.
    RussianCallers,
    /// The operator's own subscribers roaming abroad, calling home through
    /// an international carrier with their domestic number (listed in the
    /// roamers file the scenario writes).
    OutboundRoamers,
    /// Enterprise PBXs: P-Asserted-Identity carries the main number, From
    /// an extension's direct number.
    Pbx,
    /// Busy business lines that are not allowlisted (a clinic's reminders,
    /// a courier's dispatch): many distinct callees, a share of whom call
    /// back.
    Business,
    /// Fraud: callers on the blocklist the scenario writes.
    Blocklist,
    /// Fraud: callers reported in the National Bank feed.
    NbFeed,
    /// Fraud: domestic caller IDs arriving on an international trunk.
    CliSpoof,
    /// Fraud: protected numbers (bank hotlines, 102, 112) as caller ID.
    ProtectedSpoof,
    /// Fraud: one ring, then CANCEL within 3 s, from premium-rate numbers.
    Wangiri,
    /// Fraud: a SIM box, few local SIMs each calling very many numbers.
    Simbox,
    /// Fraud: B-numbers tried in numeric order.
    Sequential,
    /// Fraud: calls pumped to international premium-rate destinations.
    Irsf,
    /// Fraud: a trusted (allowlisted) number, a bank's own, spoofed from
    /// abroad.
    AllowlistSpoof,
}

impl Kind {
    /// Every kind, legitimate ones first, in declaration order.
    pub const ALL: [Kind; 16] = [
        Kind::Subscribers,
        Kind::InboundInternational,
        Kind::HighVolume,
        Kind::RussianCallers,
        Kind::OutboundRoamers,
        Kind::Pbx,
        Kind::Business,
        Kind::Blocklist,
        Kind::NbFeed,
        Kind::CliSpoof,
        Kind::ProtectedSpoof,
        Kind::Wangiri,
        Kind::Simbox,
        Kind::Sequential,
        Kind::Irsf,
        Kind::AllowlistSpoof,
    ];

    /// The name used in scenario files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Subscribers => "subscribers",
            Kind::InboundInternational => "inbound_international",
            Kind::HighVolume => "high_volume",
            Kind::RussianCallers => "russian_callers",
            Kind::OutboundRoamers => "outbound_roamers",
            Kind::Pbx => "pbx",
            Kind::Business => "business",
            Kind::Blocklist => "blocklist",
            Kind::NbFeed => "nb_feed",
            Kind::CliSpoof => "cli_spoof",
            Kind::ProtectedSpoof => "protected_spoof",
            Kind::Wangiri => "wangiri",
            Kind::Simbox => "simbox",
            Kind::Sequential => "sequential",
            Kind::Irsf => "irsf",
            Kind::AllowlistSpoof => "allowlist_spoof",
        }
    }

    /// True for the fraud kinds.
    pub fn is_fraud(self) -> bool {
        !matches!(
            self,
            Kind::Subscribers
                | Kind::InboundInternational
                | Kind::HighVolume
                | Kind::RussianCallers
                | Kind::OutboundRoamers
                | Kind::Pbx
                | Kind::Business
        )
    }

    fn default_trunk(self) -> &'static str {
        match self {
            Kind::Subscribers | Kind::Simbox | Kind::Irsf => "mobile",
            Kind::HighVolume | Kind::NbFeed | Kind::Sequential | Kind::Pbx | Kind::Business => {
                "domestic"
            }
            _ => "international",
        }
    }
}

/// A parsed, checked scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Same seed, same traffic, byte for byte.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Seconds of traffic the scenario describes.
    pub duration_s: f64,
    /// Trunk name → source IPv4 address the driver sends that trunk's calls
    /// from. Defaults: mobile 127.0.0.1, domestic 127.0.0.3,
    /// international 127.0.0.2.
    #[serde(default = "default_trunks")]
    pub trunks: BTreeMap<String, Ipv4Addr>,
    /// The own-subscriber range most calls go to.
    #[serde(default)]
    pub subscribers: Subscribers,
    /// Extra list entries that pad the engine's list files.
    #[serde(default)]
    pub lists: ListsSpec,
    /// Legitimate traffic sources.
    #[serde(default)]
    pub legit: Vec<Source>,
    /// Fraud campaigns.
    #[serde(default)]
    pub campaign: Vec<Source>,
}

/// The own-subscriber range: B-numbers of most calls, A-numbers of
/// outgoing ones.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribers {
    /// First national significant number (10 digits) of the range.
    #[serde(default = "default_first_subscriber")]
    pub first: u64,
    /// How many subscribers.
    #[serde(default = "default_subscriber_count")]
    pub count: u64,
}

impl Default for Subscribers {
    fn default() -> Self {
        Subscribers {
            first: default_first_subscriber(),
            count: default_subscriber_count(),
        }
    }
}

/// Extra entries for the list files, beyond the campaign numbers, so the
/// engine under test holds lists of a realistic size.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListsSpec {
    /// Extra blocklist numbers that never call (padding).
    #[serde(default)]
    pub extra_blocklist: u64,
}

/// One traffic source: a legitimate population or a fraud campaign.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Unique name; reports group campaigns by it.
    pub name: String,
    /// What the source does, and so whether its calls are fraud.
    pub kind: Kind,
    /// Trunk the calls arrive on (a key of `[trunks]`); the default fits
    /// the kind.
    #[serde(default)]
    pub trunk: Option<String>,
    /// Mean calls per second (Poisson arrivals).
    pub cps: f64,
    /// When the source starts and stops, in seconds from the start.
    #[serde(default)]
    pub start_s: f64,
    /// When the source stops, seconds from the start; unset means at the
    /// end of the traffic.
    #[serde(default)]
    pub end_s: Option<f64>,
    /// Distinct A-numbers the source calls from (at most 100,000).
    #[serde(default = "default_callers")]
    pub callers: u64,
    /// Share of calls the callee answers, and share the caller abandons
    /// while it rings; the rest ring out unanswered.
    #[serde(default = "default_answer")]
    pub answer_ratio: f64,
    /// Share of calls the caller abandons (CANCEL) while they ring.
    #[serde(default = "default_cancel")]
    pub cancel_ratio: f64,
    /// Mean talk time of answered calls, seconds (exponential).
    #[serde(default = "default_duration")]
    pub mean_duration_s: f64,
    /// high_volume only: the callers are on the allowlist.
    #[serde(default)]
    pub allowlisted: bool,
    /// protected_spoof: the protected numbers used as caller ID.
    /// wangiri/inbound_international: foreign caller prefixes (E.164 with +).
    /// irsf: premium destination prefixes (E.164 with +).
    #[serde(default)]
    pub numbers: Vec<String>,
    /// protected_spoof and cli_spoof: which identity carries the spoofed
    /// number.
    #[serde(default)]
    pub identity: Identity,
    /// inbound_international and russian_callers: numbers written without
    /// their '+', as some carriers send them.
    #[serde(default)]
    pub no_plus: bool,
    /// Share of calls nobody answered that the caller dials again (1 to 3
    /// times, 30 to 120 s apart).
    #[serde(default)]
    pub redial_ratio: f64,
    /// business: share of callees who call the line back.
    #[serde(default = "default_callback_ratio")]
    pub callback_ratio: f64,
    /// business: mean delay before a callee calls back, seconds.
    #[serde(default = "default_callback_delay")]
    pub callback_mean_s: f64,
}

/// Where a spoofing campaign puts its spoofed number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// In P-Asserted-Identity and From alike.
    #[default]
    Pai,
    /// In From only; P-Asserted-Identity carries a clean (protected_spoof)
    /// or foreign (cli_spoof) number.
    From,
    /// In the From display name only; the URIs carry a clean number.
    Display,
}

fn default_callback_ratio() -> f64 {
    0.3
}
fn default_callback_delay() -> f64 {
    120.0
}

fn default_seed() -> u64 {
    1
}
fn default_first_subscriber() -> u64 {
    7_010_000_000
}
fn default_subscriber_count() -> u64 {
    1_000_000
}
fn default_callers() -> u64 {
    100
}
fn default_answer() -> f64 {
    0.6
}
fn default_cancel() -> f64 {
    0.15
}
fn default_duration() -> f64 {
    90.0
}
fn default_trunks() -> BTreeMap<String, Ipv4Addr> {
    [
        ("mobile", Ipv4Addr::new(127, 0, 0, 1)),
        ("international", Ipv4Addr::new(127, 0, 0, 2)),
        ("domestic", Ipv4Addr::new(127, 0, 0, 3)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A scenario that cannot be read, does not parse or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The scenario file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or not a scenario's shape.
    #[error("{file}:{line}:{col}: {message}")]
    Syntax {
        /// The scenario file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The parser's message.
        message: String,
    },
    /// Parses, but a value is out of range or sources contradict each other.
    #[error("{file}{}: {message}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The scenario file.
        file: String,
        /// The line of the source at fault, when there is one.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and checks scenario text; `name` prefixes error messages.
    pub fn from_toml_str(text: &str, name: &str) -> Result<Scenario, ScenarioError> {
        let sc: Scenario = toml::from_str(text).map_err(|e| {
            let (line, col) = kuzet_rules::toml_pos::error_at(text, &e);
            ScenarioError::Syntax {
                file: name.to_string(),
                line,
                col,
                message: e.message().to_string(),
            }
        })?;
        sc.check(text, name)?;
        Ok(sc)
    }

    fn check(&self, text: &str, name: &str) -> Result<(), ScenarioError> {
        // Point at the source's `name = "..."` line where possible.
        let at = |src: &str| {
            let needle = format!("\"{src}\"");
            Some(
                text.lines()
                    .position(|l| l.contains(&needle))
                    .map_or(1, |i| i + 1),
            )
        };
        let bad = |line: Option<usize>, message: String| ScenarioError::Invalid {
            file: name.to_string(),
            line,
            message,
        };
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) {
            return Err(bad(
                None,
                "duration_s must be a positive number".to_string(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in self.sources() {
            let here = at(&s.name);
            if !seen.insert(s.name.as_str()) {
                return Err(bad(here, format!("source name {:?} is used twice", s.name)));
            }
            if !(s.cps >= 0.0 && s.cps.is_finite()) {
                return Err(bad(here, "cps must be zero or more".to_string()));
            }
            if s.callers == 0 {
                return Err(bad(here, "callers must be at least 1".to_string()));
            }
            if s.answer_ratio < 0.0 || s.cancel_ratio < 0.0 || s.answer_ratio + s.cancel_ratio > 1.0
            {
                return Err(bad(
                    here,
                    "answer_ratio and cancel_ratio must be >= 0 and sum to at most 1".to_string(),
                ));
            }
            if !self.trunks.contains_key(s.trunk()) {
                return Err(bad(
                    here,
                    format!("trunk {:?} is not in [trunks]", s.trunk()),
                ));
            }
            let legit_kind = !s.kind.is_fraud();
            let in_legit = self.legit.iter().any(|l| std::ptr::eq(l, s));
            if legit_kind != in_legit {
                return Err(bad(
                    here,
                    format!(
                        "kind {} belongs in [[{}]]",
                        s.kind.as_str(),
                        if legit_kind { "legit" } else { "campaign" }
                    ),
                ));
            }
            if s.allowlisted && s.kind != Kind::HighVolume {
                return Err(bad(
                    here,
                    "allowlisted applies to high_volume only".to_string(),
                ));
            }
            for (what, ok) in [
                ("redial_ratio", (0.0..=1.0).contains(&s.redial_ratio)),
                ("callback_ratio", (0.0..=1.0).contains(&s.callback_ratio)),
                (
                    "callback_mean_s",
                    s.callback_mean_s > 0.0 && s.callback_mean_s.is_finite(),
                ),
            ] {
                if !ok {
                    return Err(bad(here, format!("{what} is out of range")));
                }
            }
            if s.identity != Identity::Pai
                && !matches!(s.kind, Kind::ProtectedSpoof | Kind::CliSpoof)
            {
                return Err(bad(
                    here,
                    "identity applies to protected_spoof and cli_spoof only".to_string(),
                ));
            }
            if s.identity == Identity::Display && s.kind == Kind::CliSpoof {
                return Err(bad(
                    here,
                    "cli_spoof takes identity = \"pai\" or \"from\"".to_string(),
                ));
            }
            if s.kind == Kind::Pbx && s.callers * 10 > crate::traffic::MAX_CALLERS {
                return Err(bad(here, "pbx: at most 10,000 PBXs (callers)".to_string()));
            }
            let needs_numbers = matches!(
                s.kind,
                Kind::ProtectedSpoof | Kind::Irsf | Kind::AllowlistSpoof
            );
            if needs_numbers && s.numbers.is_empty() {
                return Err(bad(
                    here,
                    format!("kind {} needs numbers = [...]", s.kind.as_str()),
                ));
            }
            for n in &s.numbers {
                let digits = n.strip_prefix('+').unwrap_or(n);
                if digits.is_empty()
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                    || digits.len() > 15
                {
                    return Err(bad(here, format!("{n:?} is not a number or prefix")));
                }
                if matches!(
                    s.kind,
                    Kind::Irsf | Kind::Wangiri | Kind::InboundInternational
                ) && !n.starts_with('+')
                {
                    return Err(bad(here, format!("prefix {n:?} must be E.164 with '+'")));
                }
            }
        }
        if self.subscribers.count == 0 || self.subscribers.first.to_string().len() != 10 {
            return Err(bad(
                None,
                "[subscribers] needs a 10-digit first number and count >= 1".to_string(),
            ));
        }
        Ok(())
    }

    /// Legitimate sources, then campaigns, in file order: source indexes in
    /// traffic refer to this order.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.legit.iter().chain(self.campaign.iter())
    }
}

impl Source {
    /// The trunk this source's calls arrive on.
    pub fn trunk(&self) -> &str {
        self.trunk
            .as_deref()
            .unwrap_or_else(|| self.kind.default_trunk())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let e = Scenario::from_toml_str("duration_s = 10\ncps = 3\n", "x.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("x.toml:2:1: unknown field `cps`"),
            "{e}"
        );
        let text = "duration_s = 10\n[[campaign]]\nname = \"a\"\nkind = \"wangiri\"\ncps = 1\ntrunk = \"moon\"\n";
        let e = Scenario::from_toml_str(text, "y.toml").unwrap_err();
        assert_eq!(e.to_string(), "y.toml:3: trunk \"moon\" is not in [trunks]");
        let text = "duration_s = 10\n[[legit]]\nname = \"a\"\nkind = \"wangiri\"\ncps = 1\n";
        let e = Scenario::from_toml_str(text, "z.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "z.toml:3: kind wangiri belongs in [[campaign]]"
        );
        let text = "duration_s = 10\n[[campaign]]\nname = \"a\"\nkind = \"irsf\"\ncps = 1\n";
        let e = Scenario::from_toml_str(text, "w.toml").unwrap_err();
        assert_eq!(e.to_string(), "w.toml:3: kind irsf needs numbers = [...]");
    }
}
