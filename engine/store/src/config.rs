//! The sections of `kuzet.toml` the store owns: `[store]` (the
//! intercepted-call log, in the data directory or on a shared PostgreSQL
//! server, and the record queue in front of it) and `[incidents]` (how calls group into incidents and which
//! are reported), with their checks and what they turn into: the store's
//! [`Options`] and the incident [`Policy`].
//!
//! The binary composes them into its `Config`; it resolves `dir` against
//! the config file's folder and says whether a register is configured,
//! which is `[register]`'s to know.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::incident::Policy;
use crate::pg::Partitioning;
use crate::Options;

/// The environment variable that gives the PostgreSQL store's URL, so a
/// password need not sit in the config file; when set, it wins over
/// `store.url`. The binary reads it (it alone reads the environment).
pub const STORE_URL_ENV: &str = "KUZET_STORE_URL";

/// Which database holds the store (`[store] backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite file per node, in its data directory.
    #[default]
    Sqlite,
    /// One PostgreSQL database shared by every node (`store.url`).
    Postgres,
}

/// A PostgreSQL URL: shown (in `Debug`, in messages) without its
/// password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::pg::redacted(&self.0))
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
    /// `sqlite` (one file per node in its data directory) or `postgres`
    /// (one database every node shares, at `url`).
    pub backend: Backend,
    /// The PostgreSQL store's URL (`postgres://user@host:port/db`), for
    /// `backend = "postgres"`; [`STORE_URL_ENV`] overrides it.
    pub url: Option<StoreUrl>,
    /// On PostgreSQL, the calls log's partitions: `daily` or `monthly`
    /// (retention drops a whole partition at a time).
    pub partition: Partitioning,
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
            backend: Backend::Sqlite,
            url: None,
            partition: Partitioning::Daily,
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

    /// This node's name: configured, or the host name.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.node_name {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kuzet".into())
    }

    /// Checks what serde cannot: the queue's size and share, the node
    /// name's form, and that a PostgreSQL store has a URL it can read
    /// (and a SQLite one none).
    pub fn check(&self) -> Result<(), String> {
        match (self.backend, &self.url) {
            (Backend::Postgres, None) => {
                return Err(format!(
                    "store.backend = \"postgres\" needs the server's URL: set store.url (postgres://user@host:port/database) or the environment variable {STORE_URL_ENV}"
                ))
            }
            (Backend::Postgres, Some(u)) => {
                if let Err(e) = u.0.parse::<postgres::Config>() {
                    return Err(format!(
                        "store.url ({}): not a PostgreSQL URL: {e}",
                        crate::pg::redacted(&u.0)
                    ));
                }
                if !u.0.starts_with("postgres://") && !u.0.starts_with("postgresql://") {
                    return Err(format!(
                        "store.url ({}) must be a postgres:// URL",
                        crate::pg::redacted(&u.0)
                    ));
                }
            }
            (Backend::Sqlite, Some(_)) => {
                return Err(
                    "store.url is set but store.backend is \"sqlite\": set backend = \"postgres\" to use the server, or remove the URL".into(),
                )
            }
            (Backend::Sqlite, None) => {}
        }
        if self.queue == Some(0) || self.queue_mb == 0 || self.queue_mb > 16_384 {
            return Err(
                "store.queue_mb must be 1 to 16384 (and store.queue, if set, at least 1)".into(),
            );
        }
        if self.queue_reserved_percent > 90 {
            return Err("store.queue_reserved_percent must be 0 to 90".into());
        }
        if let Some(n) = &self.node_name {
            if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("store.node_name must be 1 to 64 visible ASCII characters".into());
            }
        }
        Ok(())
    }

    /// The store's options, with the incident policy `[incidents]` makes.
    pub fn options(&self, incidents: Policy) -> Options {
        Options {
            node: self.node_name(),
            max_age: Duration::from_secs(u64::from(self.max_age_days) * 86_400),
            max_bytes: self.max_size_mb.saturating_mul(1 << 20),
            retire_chunk: 2000,
            incidents,
        }
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

impl IncidentsConfig {
    /// The incident policy the store applies; `report` when a register is
    /// configured to report to.
    pub fn policy(&self, report: bool) -> Policy {
        Policy {
            enabled: self.enabled,
            window_us: (self.window_secs.max(1) * 1_000_000) as i64,
            close_after_us: (self.close_after_secs.max(1) * 1_000_000) as i64,
            min_blocked: self.report_min_blocked.max(1),
            report_rules: self.report_rules.clone(),
            campaign_min_sources: self.campaign_min_sources.max(1),
            report,
            update_interval_us: (self.update_interval_secs * 1_000_000) as i64,
            max_open_us: (self.max_open_secs.max(60) * 1_000_000) as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_section_checks_its_own_ranges() {
        assert_eq!(StoreConfig::default().check(), Ok(()));
        let bad = |f: fn(&mut StoreConfig)| {
            let mut s = StoreConfig::default();
            f(&mut s);
            s.check().unwrap_err()
        };
        assert!(bad(|s| s.queue_mb = 0).starts_with("store.queue_mb must be 1 to 16384"));
        assert!(bad(|s| s.queue = Some(0)).starts_with("store.queue_mb must be 1 to 16384"));
        assert_eq!(
            bad(|s| s.queue_reserved_percent = 91),
            "store.queue_reserved_percent must be 0 to 90"
        );
        assert!(bad(|s| s.node_name = Some("a b".into())).starts_with("store.node_name"));
        let pg = |url: Option<&str>| StoreConfig {
            backend: Backend::Postgres,
            url: url.map(|u| StoreUrl(u.into())),
            ..StoreConfig::default()
        };
        assert!(pg(None).check().unwrap_err().contains(STORE_URL_ENV));
        assert_eq!(pg(Some("postgres://kuzet@db:5432/calls")).check(), Ok(()));
        let e = pg(Some("host=db password=s3cret")).check().unwrap_err();
        assert!(
            e.contains("postgres:// URL") && !e.contains("s3cret"),
            "{e}"
        );
        let e = pg(Some("postgres://kuzet:s3cret@db:notaport/calls"))
            .check()
            .unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        let e = StoreConfig {
            url: Some(StoreUrl("postgres://db/calls".into())),
            ..StoreConfig::default()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("backend = \"postgres\""), "{e}");
        let shown = format!("{:?}", pg(Some("postgres://kuzet:s3cret@db:5432/calls")));
        assert!(!shown.contains("s3cret"), "{shown}");
        let s = StoreConfig {
            queue: Some(4),
            ..StoreConfig::default()
        };
        assert_eq!(
            s.queue_bytes(),
            1 << 20,
            "a queue of records is at least 1 MiB"
        );
    }

    #[test]
    fn the_default_incident_policy_is_the_stores() {
        let p = IncidentsConfig::default().policy(false);
        let d = Policy::default();
        assert_eq!(
            (p.window_us, p.close_after_us, p.min_blocked, p.max_open_us),
            (d.window_us, d.close_after_us, d.min_blocked, d.max_open_us)
        );
    }
}
