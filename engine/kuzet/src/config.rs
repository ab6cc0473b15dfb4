//! Configuration: the TOML file, its embedded defaults, and how the
//! crates' sections compose into one [`Config`].
//!
//! Every key is optional; `deploy/kuzet.toml` documents each one with its
//! default and is compiled into the binary, so `kuzet run` with no
//! arguments works anywhere. Unknown keys are errors, so a typo never
//! silently leaves a default in force.
//!
//! Each `[section]` belongs to the crate that uses it, in that crate's
//! `config` module: its struct (serde, defaults, the user-facing docs),
//! the checks of its own values and what it alone turns into. The call
//! path's are `kuzet_dataplane::config` (`[server]`, `[proxy]`,
//! `[verdict]`, `[numbers]`, `[outcomes]`, `[[trunks]]`), the control
//! plane's `kuzet_control::config` (`[lists]`, `[control]`, `[admin]`,
//! `[hep]`, `[register]`), the store's `kuzet_store::config` (`[store]`,
//! `[incidents]`) and the scoring core's `kuzet_rules::config`
//! (`[numbering]`, `[rules]`). This file keeps what spans them: the
//! [`Config`] that names every section, reading the file (errors with
//! `file:line:col`), the files the config names (the numbering plan, the
//! outcome secret) and paths resolved against its folder, the rules that
//! compare two sections, the embedded defaults, and the runtime settings
//! built from several sections (the handler's [`Settings`], the control
//! plane's [`Sources`]). Command-line overrides are applied to a
//! [`Config`] by `main.rs` and checked here again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kuzet_control::cluster::ClusterConfig;
use kuzet_control::config::{AdminConfig, ControlConfig, HepSection, ListsConfig, RegisterConfig};
use kuzet_control::files::{self, FileError, MAX_CONFIG_FILE, MAX_RULE_FILE, MAX_SECRET_FILE};
use kuzet_control::lists::{ListFile, Sources};
use kuzet_control::nbfeed::NbankConfig;
use kuzet_control::publishing::PublishingConfig;
use kuzet_dataplane::config::{
    NumbersConfig, OutcomesConfig, ProxyConfig, ServerConfig, VerdictConfig,
};
use kuzet_dataplane::trunks::TrunkMap;
use kuzet_dataplane::Settings;
use kuzet_rules::config::{NumberingConfig, RulesConfig};
use kuzet_rules::{Countries, ListId, ListPolicy, NumberingPlan};
use kuzet_store::config::{IncidentsConfig, StoreConfig};
use serde::Deserialize;

pub use kuzet_control::config::{HepCalls, ListEntry, MatchSides, TokenConfig, MAX_EXPORTS};
pub use kuzet_dataplane::config::TrunkConfig;
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

/// The whole configuration: every crate's section, by its key.
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
    /// `[journal]`: every call's facts, for analytics and backtests.
    pub journal: kuzet_journal::JournalConfig,
    /// `[incidents]`: grouping intercepted calls and the reporting policy.
    pub incidents: IncidentsConfig,
    /// `[register]`: the pre-trial register incidents are reported to.
    pub register: RegisterConfig,
    /// `[publishing]`: which lists (and whether the rules) are published
    /// to the running kuzet instead of read from files.
    pub publishing: PublishingConfig,
    /// `[nbank]`: the National Bank's Anti-Fraud Centre: its feed, its
    /// alerts as cases, and kuzet's reports to it.
    pub nbank: NbankConfig,
    /// `[cluster]`: the nodes' shared Redis, for behaviour counts.
    pub cluster: ClusterConfig,
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
            journal: kuzet_journal::JournalConfig::default(),
            incidents: IncidentsConfig::default(),
            register: RegisterConfig::default(),
            publishing: PublishingConfig::default(),
            nbank: NbankConfig::default(),
            cluster: ClusterConfig::default(),
            trunks: Vec::new(),
            base_dir: PathBuf::from("."),
            embedded_lists: false,
            embedded_rules: false,
        }
    }
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

    /// Parses and checks TOML text; `name` labels errors. With a
    /// PostgreSQL store, the environment variable `KUZET_STORE_URL`, when
    /// set, gives its URL (over `store.url`), so a password need not sit
    /// in the file.
    pub fn from_toml_str(text: &str, name: &str) -> Result<Config, ConfigError> {
        let mut c = Self::parse_toml(text, name)?;
        if c.store.backend == kuzet_store::config::Backend::Postgres {
            if let Ok(url) = std::env::var(kuzet_store::config::STORE_URL_ENV) {
                c.store.url = Some(kuzet_store::config::StoreUrl(url));
            }
        }
        c.check(name)?;
        Ok(c)
    }

    /// Parses TOML text, unchecked; `name` labels errors.
    fn parse_toml(text: &str, name: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, col) = kuzet_rules::toml_pos::error_at(text, &e);
            ConfigError::Toml {
                path: name.to_string(),
                line,
                col,
                message: e.message().to_string(),
            }
        })
    }

    /// Checks what serde cannot: each section's own value ranges (its
    /// `check`), then the rules that compare sections.
    pub fn check(&self, name: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: name.to_string(),
            message,
        };
        self.verdict.check().map_err(bad)?;
        self.proxy.check().map_err(bad)?;
        if self.server.mode == Mode::Proxy && self.proxy.next_hop.is_none() {
            return Err(bad(
                "proxy mode needs a next hop: set proxy.next_hop or pass --next-hop".into(),
            ));
        }
        self.server.check().map_err(bad)?;
        self.hep.check().map_err(bad)?;
        self.journal.check().map_err(bad)?;
        self.control.check().map_err(bad)?;
        self.admin.check().map_err(bad)?;
        self.register.check().map_err(bad)?;
        self.store.check().map_err(bad)?;
        self.numbers.check().map_err(bad)?;
        self.publishing.check().map_err(bad)?;
        self.nbank.check().map_err(bad)?;
        self.cluster.check().map_err(bad)?;
        if self.nbank.enabled() && !self.store.enabled {
            return Err(bad(
                "[nbank] needs the store ([store] enabled): the feed's layer, the cases and the reports to the Centre are kept there".into(),
            ));
        }
        for l in &self.publishing.lists {
            if !self.lists.files[*l].is_empty() {
                return Err(bad(format!(
                    "{l} is declared published ([publishing] lists) and also names files ([lists] {l}): a list is fed by files or published, never both; take one out"
                )));
            }
        }
        if self.publishing.shared_url.is_some() && !self.cluster.enabled() {
            return Err(bad(
                "publishing.shared_url shares published versions between the nodes of a cluster, and the nodes announce them on Redis: set [cluster] redis_url too".into(),
            ));
        }
        if self.publishing.rules && self.rules.file.is_some() {
            return Err(bad(
                "the rules are declared published ([publishing] rules = true) and [rules] file names a rule file too: they come from one or the other; take one out".into(),
            ));
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
            t.check().map_err(bad)?;
        }
        Ok(())
    }

    /// The numbering plan, validated.
    pub fn plan(&self) -> Result<NumberingPlan, kuzet_rules::PlanError> {
        self.numbering.plan()
    }

    /// The control API's tokens, checked.
    pub fn access(&self) -> Result<kuzet_control::access::Access, String> {
        self.control.access()
    }

    /// A list path as written, resolved against the config's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The call journal's folder: `[journal] dir`, else `journal` in the
    /// data directory. None when there is no journal (off, or no store).
    pub fn journal_dir(&self) -> Option<PathBuf> {
        if !self.journal.enabled || !self.store.enabled {
            return None;
        }
        Some(match &self.journal.dir {
            Some(d) => self.resolve(d),
            None => self.data_dir().join("journal"),
        })
    }

    /// The data directory the store uses.
    pub fn data_dir(&self) -> PathBuf {
        match &self.store.dir {
            Some(d) => self.resolve(d),
            None => PathBuf::from("kuzet-data"),
        }
    }

    /// The PostgreSQL database holding the published versions a cluster's
    /// nodes share, if any: `[publishing] shared_url` when set, else the
    /// store's own database when the store is shared (`[store] backend =
    /// "postgres"`) and the node is clustered (`[cluster] redis_url`).
    /// The one place that decides where shared versions live.
    pub fn shared_versions_url(&self) -> Option<&str> {
        if let Some(u) = &self.publishing.shared_url {
            return Some(u);
        }
        match (&self.store.url, self.store.backend) {
            (Some(u), kuzet_store::config::Backend::Postgres)
                if self.store.enabled && self.cluster.enabled() =>
            {
                Some(&u.0)
            }
            _ => None,
        }
    }

    /// This node's name: configured, or the host name.
    pub fn node_name(&self) -> String {
        self.store.node_name()
    }

    /// The incident policy the store applies: `[incidents]`, reporting
    /// when `[register]` names an endpoint.
    pub fn incident_policy(&self) -> kuzet_store::incident::Policy {
        self.incidents.policy(self.register.endpoint.is_some())
    }

    /// The store's options.
    pub fn store_options(&self) -> kuzet_store::Options {
        self.store.options(self.incident_policy())
    }

    /// The trunk table.
    pub fn trunk_map(&self) -> TrunkMap {
        TrunkConfig::trunk_map(&self.trunks)
    }

    /// What the call path needs, from this config: the handler's settings
    /// span `[server]`, `[proxy]`, `[verdict]`, `[numbers]`, `[numbering]`,
    /// `[rules]`, `[outcomes]`, `[store]`, `[hep]` and `[[trunks]]`.
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
            events_for_every_call: self.hep.every_call(),
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
        let published = |l: ListId| self.publishing.lists.contains(&l);
        Sources {
            files,
            // A published list never gets the compiled-in samples.
            embedded: if self.embedded_lists {
                EMBEDDED_LISTS
                    .iter()
                    .filter(|e| !published(e.2))
                    .copied()
                    .collect()
            } else {
                Vec::new()
            },
            rule_file: self.rules.file.as_deref().map(|p| self.resolve(p)),
            embedded_rules: (self.embedded_rules
                && self.rules.file.is_none()
                && !self.publishing.rules)
                .then_some((
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
    use kuzet_rules::TrunkKind;

    #[test]
    fn embedded_config_parses_and_uses_embedded_lists() {
        let c = Config::embedded();
        assert_eq!(c.server.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(c.server.mode, Mode::Redirect);
        assert!(c.embedded_lists);
        assert_eq!(c.verdict.block_code, 603);
    }

    /// `deploy/kuzet.toml` documents every key with its default: parsed,
    /// it is the sections' own defaults, section by section.
    #[test]
    fn the_documented_example_config_is_the_defaults() {
        let documented = Config::embedded();
        let defaults = Config::default();
        let sections = |c: &Config| {
            [
                format!("{:?}", c.server),
                format!("{:?}", c.proxy),
                format!("{:?}", c.verdict),
                format!("{:?}", c.numbers),
                format!("{:?}", c.numbering),
                format!("{:?}", c.lists),
                format!("{:?}", c.rules),
                format!("{:?}", c.outcomes),
                format!("{:?}", c.store),
                format!("{:?}", c.control),
                format!("{:?}", c.admin),
                format!("{:?}", c.hep),
                format!("{:?}", c.journal),
                format!("{:?}", c.incidents),
                format!("{:?}", c.register),
                format!("{:?}", c.nbank),
                format!("{:?}", c.cluster),
                format!("{:?}", c.trunks),
            ]
        };
        for (d, e) in sections(&documented).iter().zip(sections(&defaults).iter()) {
            assert_eq!(d, e, "deploy/kuzet.toml and the section's Default differ");
        }
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
            e.to_string()
                .contains("investigator, rule-author, approver or admin"),
            "{e}"
        );
    }

    #[test]
    fn cluster_names_one_redis_or_a_redis_clusters_seed_nodes() {
        let c = Config::from_toml_str(
            "[cluster]\nredis_cluster_urls = [\"redis://10.0.0.1:6379/\", \"redis://10.0.0.2:6379/\"]\n",
            "k.toml",
        )
        .unwrap();
        assert_eq!(
            c.cluster.endpoint(),
            Some(kuzet_control::cluster::link::Endpoint::Cluster(vec![
                "redis://10.0.0.1:6379/".into(),
                "redis://10.0.0.2:6379/".into()
            ]))
        );
        let e = Config::from_toml_str(
            "[cluster]\nredis_url = \"redis://10.0.0.9:6379/\"\nredis_cluster_urls = [\"redis://10.0.0.1:6379/\"]\n",
            "k.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("cluster.redis_url and cluster.redis_cluster_urls are both set"),
            "{e}"
        );
        let e = Config::from_toml_str(
            "[cluster]\nredis_cluster_urls = [\"redis://10.0.0.1:6379/3\"]\n",
            "k.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("database 0 only"), "{e}");
        let e = Config::from_toml_str("[cluster]\nredis_cluster_urls = \"redis://h/\"\n", "k.toml")
            .unwrap_err();
        assert!(e.to_string().starts_with("k.toml:2:"), "{e}");
    }

    #[test]
    fn the_store_backend_and_its_url_are_checked() {
        let e = Config::from_toml_str("[store]\nbackend = \"mysql\"\n", "k.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("k.toml:2:")
                && e.to_string().contains("`sqlite` or `postgres`"),
            "{e}"
        );
        let c = Config::from_toml_str(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://kuzet:pw@db:5432/kz\"\npartition = \"monthly\"\n",
            "k.toml",
        )
        .unwrap();
        assert_eq!(c.store.partition, kuzet_store::pg::Partitioning::Monthly);
        assert!(!format!("{:?}", c.store).contains(":pw@"));
        let e = Config::from_toml_str("[store]\npartition = \"weekly\"\n", "k.toml").unwrap_err();
        assert!(e.to_string().contains("`daily` or `monthly`"), "{e}");
        let e =
            Config::from_toml_str("[store]\nurl = \"postgres://db/kz\"\n", "k.toml").unwrap_err();
        assert!(e.to_string().contains("backend = \"postgres\""), "{e}");
        // Without a URL (and none in the environment): named, with both
        // ways to give one.
        if std::env::var_os(kuzet_store::config::STORE_URL_ENV).is_none() {
            let e =
                Config::from_toml_str("[store]\nbackend = \"postgres\"\n", "k.toml").unwrap_err();
            assert!(
                e.to_string().contains("store.url") && e.to_string().contains("KUZET_STORE_URL"),
                "{e}"
            );
        }
    }

    #[test]
    fn shared_versions_live_in_the_shared_store_of_a_cluster_or_where_shared_url_says() {
        let store = "[store]\nbackend = \"postgres\"\nurl = \"postgres://kuzet@db:5432/kz\"\n";
        let cluster = "[cluster]\nredis_url = \"redis://127.0.0.1:6379/\"\n";
        // A node alone, or a clustered node on its own SQLite store: its
        // versions are its own.
        let c = Config::from_toml_str(store, "k.toml").unwrap();
        assert_eq!(c.shared_versions_url(), None);
        let c = Config::from_toml_str(cluster, "k.toml").unwrap();
        assert_eq!(c.shared_versions_url(), None);
        // Clustered on a shared store: the store's database.
        let c = Config::from_toml_str(&format!("{store}{cluster}"), "k.toml").unwrap();
        assert!(c.shared_versions_url().is_some());
        // Named: that one, which needs Redis to announce the versions.
        let named = "[publishing]\nshared_url = \"postgres://kuzet@versions:5432/v\"\n";
        let c = Config::from_toml_str(&format!("{named}{cluster}"), "k.toml").unwrap();
        assert_eq!(
            c.shared_versions_url(),
            Some("postgres://kuzet@versions:5432/v")
        );
        let e = Config::from_toml_str(named, "k.toml").unwrap_err();
        assert!(e.to_string().contains("[cluster] redis_url"), "{e}");
        let e = Config::from_toml_str("[publishing]\nshared_url = \"mysql://db/v\"\n", "k.toml")
            .unwrap_err();
        assert!(e.to_string().contains("publishing.shared_url"), "{e}");
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
