//! The National Bank's Anti-Fraud Centre, connected both ways
//! (docs/nb-feed.md): its signed feed of fraud numbers becomes the
//! `nb_feed` layer of the snapshot, its alerts on the operator's own
//! numbers become cases with legal deadlines, and kuzet's reports go back
//! to it through a durable outbox.
//!
//! - [`batch`]: what a batch (and an alerts batch) is, verified over its
//!   raw bytes before it is parsed, read strictly, and placed in sequence.
//! - [`layer`]: the feed's entries in force, a [`crate::publish::Source`]
//!   of the `nb_feed` list, expiring on time.
//! - [`calendar`]: working days, for the cases' deadlines.
//! - [`pull`]: the HTTP client and the puller task: fetch, verify, apply
//!   (store first, then the layer), expire, say how stale the feed is.
//! - [`cases`]: alerts into cases, their deadlines and their gauges.
//! - [`reports`]: the Centre's outbox, delivered with idempotency keys.
//! - [`watch`]: the reports kuzet makes from what it sees: fraud
//!   numbers, potential victims, feedback on the feed's numbers.
//! - [`service`]: `kuzet.cases.v1`, the cases listed, shown and decided
//!   behind the access gate.
//! - [`follow`]: with a store every node shares, the feed on the nodes
//!   that do not lead it: their layers kept in step with the store.
//!
//! With a store every node shares and `[cluster]` on, the puller, the
//! case clock and the report outbox each run on one node at a time, the
//! holder of its lease ([`crate::lease`]); the other nodes follow the
//! feed from the store. Otherwise every task runs on its node.
//! `[nbank]` configures it; without `url` none of it runs. Nothing here is
//! on the call path: a dead, stale or hostile feed changes nothing that is
//! enforced except through a batch that passed every check, and a call
//! never waits on any of it.

pub mod batch;
pub mod calendar;
pub mod cases;
pub mod follow;
pub mod layer;
pub mod pull;
pub mod reports;
pub mod service;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use tokio::sync::watch as signal;

use kuzet_dataplane::counter_set;
use kuzet_dataplane::metrics::{Gauge, Metrics};
use kuzet_store::Centre;

use self::batch::Key;
use self::calendar::{day_of, Calendar, Day};
use crate::lease::{fenced, singleton, Lease, Leases, Singleton};

/// `[nbank]`: the Centre's base URL, its keys, and the cases' calendar.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NbankConfig {
    /// The Centre's base URL: `https://host/path`, or `http://` on
    /// loopback only. Unset: no feed, no cases, no reports.
    pub url: Option<String>,
    /// How often the feed and the alerts are asked for news.
    pub poll_ms: u64,
    /// Deadline of each request to the Centre.
    pub timeout_ms: u64,
    /// A feed with no good answer for this long is stale: logged at WARN,
    /// shown by `/readyz` as a warning, alerted on. Calls are unaffected.
    pub stale_after_s: u64,
    /// PEM of the CA that signs the Centre's certificate (https).
    pub ca_file: Option<PathBuf>,
    /// PEM of kuzet's client certificate, for mTLS (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM of the client certificate's private key.
    pub client_key_file: Option<PathBuf>,
    /// The Centre's signing keys, each with its validity period.
    pub keys: Vec<KeyConfig>,
    /// Working days an operator has to check a number the Centre names.
    pub case_working_days: u32,
    /// An open case due within this many seconds counts as due soon.
    pub case_warn_s: u64,
    /// The operator's local time, seconds east of UTC (Kazakhstan: +5 h).
    pub utc_offset_s: i64,
    /// Kazakhstan's fixed public holidays are days off (and move off a
    /// weekend); false leaves only weekends and the holiday file.
    pub national_holidays: bool,
    /// Extra days off and weekend days worked: lines `YYYY-MM-DD off` or
    /// `YYYY-MM-DD on`, `#` comments.
    pub holidays_file: Option<PathBuf>,
    /// Report the attributable sources of kuzet's incidents to the Centre
    /// as numbers that made fraud-like calls (the operator's policy).
    pub report_fraud_numbers: bool,
    /// A potential victim is reported at most this long after kuzet knows
    /// both that the source is a fraud source and that the call was
    /// answered: kuzet queues it within a second and sends it at once; a
    /// report still waiting after this is late (WARN, `/readyz`, gauge).
    pub victim_delay_s: u64,
    /// How far back a newly caught source's answered calls are looked at.
    pub victim_lookback_s: u64,
    /// How often hits on the feed's numbers are reported.
    pub feedback_every_s: u64,
}

impl Default for NbankConfig {
    fn default() -> Self {
        NbankConfig {
            url: None,
            poll_ms: 5_000,
            timeout_ms: 10_000,
            stale_after_s: 900,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keys: Vec::new(),
            case_working_days: 2,
            case_warn_s: 4 * 3600,
            utc_offset_s: 5 * 3600,
            national_holidays: true,
            holidays_file: None,
            report_fraud_numbers: false,
            victim_delay_s: 60,
            victim_lookback_s: 24 * 3600,
            feedback_every_s: 300,
        }
    }
}

/// One `[[nbank.keys]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's id, as signatures name it.
    pub id: String,
    /// The ed25519 public key, 64 hex digits.
    pub public: String,
    /// RFC 3339: signatures before this are refused.
    pub valid_from: String,
    /// RFC 3339, once the key is retired: signatures from then on are
    /// refused.
    #[serde(default)]
    pub valid_until: Option<String>,
}

/// Unix seconds of an RFC 3339 time.
pub fn rfc3339(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

/// The last second four digits of year can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339: i64 = 253_402_300_799;

/// An RFC 3339 UTC time (seconds) of Unix seconds `t`, held between
/// 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z: a case due after year
/// 9999 (an alert the Centre dated in that year's last days) is written
/// as the last second RFC 3339 has, not a panic in the puller.
pub fn to_rfc3339(t: i64) -> String {
    let s = t.clamp(0, LAST_RFC3339) as u64;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl NbankConfig {
    /// Whether the Centre is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Checks the section; every error names its key.
    pub fn check(&self) -> Result<(), String> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        crate::config::check_endpoint("nbank.url", url, "nbank.ca_file")?;
        if self.keys.is_empty() {
            return Err(
                "nbank.url is set but [[nbank.keys]] names no key: every batch would be refused"
                    .into(),
            );
        }
        self.keys()?;
        if self.poll_ms == 0 || self.timeout_ms == 0 {
            return Err("nbank.poll_ms and nbank.timeout_ms must be above 0".into());
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(
                "nbank.client_cert_file and nbank.client_key_file go together (mTLS)".into(),
            );
        }
        if self.case_working_days == 0 || self.case_working_days > 60 {
            return Err(format!(
                "nbank.case_working_days = {}: between 1 and 60",
                self.case_working_days
            ));
        }
        if self.utc_offset_s.unsigned_abs() > 14 * 3600 {
            return Err(format!(
                "nbank.utc_offset_s = {}: at most 14 hours either way",
                self.utc_offset_s
            ));
        }
        if self.feedback_every_s == 0 {
            return Err("nbank.feedback_every_s must be above 0".into());
        }
        Ok(())
    }

    /// The configured keys, read.
    pub fn keys(&self) -> Result<Vec<Key>, String> {
        let mut out: Vec<Key> = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            let at = |what: &str| format!("[[nbank.keys]] #{} ({:?}): {what}", i + 1, k.id);
            if k.id.is_empty()
                || k.id.len() > 64
                || !k
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(at("id: letters, digits, '-' and '_', at most 64"));
            }
            if out.iter().any(|o| o.id == k.id) {
                return Err(at("the id is listed twice"));
            }
            let bytes = crate::access::unhex::<32>(&k.public)
                .ok_or_else(|| at("public must be 64 hex digits (an ed25519 public key)"))?;
            let public = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| at("public is not a valid ed25519 public key"))?;
            let valid_from = rfc3339(&k.valid_from).map_err(|e| at(&format!("valid_from {e}")))?;
            let valid_until = match &k.valid_until {
                Some(u) => Some(rfc3339(u).map_err(|e| at(&format!("valid_until {e}")))?),
                None => None,
            };
            if valid_until.is_some_and(|u| u <= valid_from) {
                return Err(at("valid_until must be after valid_from"));
            }
            out.push(Key {
                id: k.id.clone(),
                public,
                valid_from,
                valid_until,
            });
        }
        Ok(out)
    }

    /// The working-day calendar: weekends, the national holidays when on,
    /// and the holiday file (a path already resolved).
    pub fn calendar(&self, holidays: Option<&Path>) -> Result<Calendar, String> {
        let (off, on) = match holidays {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("nbank.holidays_file {}: {e}", p.display()))?;
                holiday_lines(&text, &p.display().to_string())?
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(if self.national_holidays {
            Calendar::kazakhstan(off, on)
        } else {
            Calendar::weekends(off, on)
        })
    }
}

/// Reads a holiday file's lines (`YYYY-MM-DD off|on`, `#` comments); an
/// error names `name:line` and the reason.
pub fn holiday_lines(text: &str, name: &str) -> Result<(Vec<Day>, Vec<Day>), String> {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("{name}:{}: {why}: {:?}", i + 1, crate::safe::visible(line));
        let mut parts = line.split_ascii_whitespace();
        let (Some(date), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected `YYYY-MM-DD off` or `YYYY-MM-DD on`"));
        };
        let mut ymd = date.splitn(3, '-').map(|p| p.parse::<u32>().ok());
        let (Some(Some(y)), Some(Some(m)), Some(Some(d))) = (ymd.next(), ymd.next(), ymd.next())
        else {
            return Err(bad("the date is not YYYY-MM-DD"));
        };
        let day = day_of(i64::from(y), m, d);
        if !(1..=12).contains(&m) || calendar::civil(day) != (i64::from(y), m, d) {
            return Err(bad("no such date"));
        }
        match kind {
            "off" => off.push(day),
            "on" => on.push(day),
            _ => return Err(bad("the second word must be off or on")),
        }
    }
    Ok((off, on))
}

/// The Centre's parts, built at start-up and run by the control plane.
pub struct Nbank {
    /// Pulls the feed and the alerts.
    pub puller: Arc<pull::Puller>,
    /// Opens and decides cases.
    pub cases: Arc<cases::CaseDesk>,
    /// The Centre's client, for the reports.
    pub http: pull::Http,
    /// The store's Centre port.
    pub store: Arc<dyn Centre>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// Fraud numbers, potential victims and feedback (with the store).
    pub watch: Option<Arc<watch::Watch>>,
}

impl Nbank {
    /// Starts its tasks on the current runtime: the puller, the feed's
    /// expiry, the cases' clock and gauges, the reports watch and the
    /// report outbox, each until `shutdown`. With `leases` (a store every
    /// node shares), the puller, the case clock and the report outbox run
    /// only while this node leads their leases, each writing through a
    /// port fenced by its lease, and the feed's layer follows the store
    /// while another node leads the feed; the expiry and the watch run on
    /// every node.
    pub fn spawn(self, shutdown: signal::Receiver<bool>, leases: Option<Arc<Leases>>) {
        let lease = |s: Singleton| leases.as_ref().map(|l| l.get(s));
        let fenced = |l: &Option<Arc<Lease>>| match l {
            Some(l) => fenced::centre(self.store.clone(), l.clone()),
            None => self.store.clone(),
        };
        // The feed: pulled by its leader (which first brings its layer to
        // what the store holds), followed from the store elsewhere.
        let feed = lease(Singleton::NbankFeed);
        let p = match &feed {
            Some(_) => Arc::new(self.puller.with_store(fenced(&feed))),
            None => self.puller.clone(),
        };
        let leased = feed.is_some();
        let m = self.metrics.clone();
        singleton::spawn(
            "the feed's puller",
            feed.clone(),
            shutdown.clone(),
            move |sd| {
                let p = p.clone();
                async move {
                    if leased {
                        if let Err(e) = follow::catch_up(&p).await {
                            tracing::warn!(error = %e, "bringing the feed's layer to the store's batch failed; the puller asks the Centre from the layer's");
                        }
                    }
                    p.run(sd).await
                }
            },
            // Staleness is the leader's to judge.
            move || m.set(Gauge::NbankStale, 0),
        );
        if let Some(l) = feed {
            let p = self.puller.clone();
            singleton::spawn_follower("the feed's follower", l, shutdown.clone(), move |sd| {
                follow::run(p.clone(), sd)
            });
        }
        let p = self.puller.clone();
        supervise("the feed's expiry", shutdown.clone(), move |sd| {
            p.clone().expiry(sd)
        });
        let clock = lease(Singleton::NbankCases);
        let c = match &clock {
            Some(_) => Arc::new(self.cases.with_store(fenced(&clock))),
            None => self.cases.clone(),
        };
        let m = self.metrics.clone();
        singleton::spawn(
            "the cases' gauges",
            clock,
            shutdown.clone(),
            move |sd| c.clone().gauges(sd),
            // The cases' and the outbox's gauges are the leader's to show.
            move || {
                for g in [
                    Gauge::CasesOpen,
                    Gauge::CasesDueSoon,
                    Gauge::CasesOverdue,
                    Gauge::CentrePending,
                    Gauge::CentreDeadLetters,
                    Gauge::CentreOldestPendingUnix,
                    Gauge::CentreLate,
                ] {
                    m.set(g, 0);
                }
            },
        );
        if let Some(w) = self.watch {
            supervise("the Centre's reports watch", shutdown.clone(), move |sd| {
                w.clone().run(sd)
            });
        }
        let outbox = lease(Singleton::NbankReports);
        let (http, store, metrics) = (self.http, fenced(&outbox), self.metrics);
        singleton::spawn(
            "the Centre's report outbox",
            outbox,
            shutdown,
            move |sd| reports::run(http.clone(), store.clone(), metrics.clone(), sd),
            || {},
        );
    }
}

/// Runs the task `make` makes until `shutdown`, started again a second
/// after a panic ([`singleton::supervise`]).
fn supervise<F, Fut>(name: &'static str, shutdown: signal::Receiver<bool>, make: F)
where
    F: Fn(signal::Receiver<bool>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    singleton::supervise(name, shutdown, make)
}

counter_set! {
    /// The Centre's counters: the feed, the alerts and the reports.
    pub struct NbankCounters {
        batches_applied => "nbank_batches_applied_total", "Feed batches verified and applied",
        entries_applied => "nbank_entries_applied_total", "Feed entries added or withdrawn by applied batches",
        entries_expired => "nbank_entries_expired_total", "Feed entries that left the layer at their expires_at",
        rejected_signature => "nbank_batches_rejected_signature_total", "Batches refused: no, bad or tampered signature",
        rejected_key => "nbank_batches_rejected_key_total", "Batches refused: signed by an unknown or retired key",
        rejected_malformed => "nbank_batches_rejected_malformed_total", "Batches refused: signed but malformed, truncated or too large",
        rejected_replay => "nbank_batches_rejected_replay_total", "Batches ignored: a sequence already applied (replay)",
        rejected_gap => "nbank_batches_rejected_gap_total", "Batches refused: a gap in the sequence (fetched again from the last good cursor)",
        fetch_errors => "nbank_fetch_errors_total", "Requests to the Centre that failed (no answer, an error status)",
        alerts_applied => "nbank_alert_batches_applied_total", "Alert batches verified and applied",
        cases_opened => "nbank_cases_opened_total", "Cases opened from the Centre's alerts",
        reports_queued => "nbank_reports_queued_total", "Reports to the Centre queued in the outbox",
        reports_delivered => "nbank_reports_delivered_total", "Reports the Centre took",
        reports_retries => "nbank_reports_retries_total", "Report deliveries that failed and will be retried",
        reports_dead_lettered => "nbank_reports_dead_lettered_total", "Reports the Centre refused (dead-lettered, never retried)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> KeyConfig {
        KeyConfig {
            id: id.into(),
            public: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a".into(),
            valid_from: "2026-01-01T00:00:00Z".into(),
            valid_until: None,
        }
    }

    #[test]
    fn the_section_is_checked_with_its_keys_named() {
        let mut c = NbankConfig {
            url: Some("http://192.0.2.1:8470".into()),
            keys: vec![key("k1")],
            ..NbankConfig::default()
        };
        assert!(c
            .check()
            .unwrap_err()
            .contains("plain http only on loopback"));
        c.url = Some("http://127.0.0.1:8470".into());
        c.check().unwrap();
        c.keys.push(key("k1"));
        assert!(c.check().unwrap_err().contains("listed twice"));
        c.keys[1] = KeyConfig {
            public: "zz".into(),
            ..key("k2")
        };
        assert!(c.check().unwrap_err().contains("64 hex digits"));
        c.keys[1] = KeyConfig {
            valid_until: Some("2025-01-01T00:00:00Z".into()),
            ..key("k2")
        };
        assert!(c.check().unwrap_err().contains("after valid_from"));
        c.keys.truncate(1);
        c.client_cert_file = Some("c.pem".into());
        assert!(c.check().unwrap_err().contains("go together"));
        c.client_cert_file = None;
        // The most negative offset has no absolute value in an i64.
        c.utc_offset_s = i64::MIN;
        assert!(c.check().unwrap_err().contains("at most 14 hours"));
    }

    #[test]
    fn a_case_due_after_year_9999_is_written_as_its_last_second_not_a_panic() {
        // Found by the nbalerts fuzz target: an alert dated 9999-12-30
        // parses, and its case falls due in year 10000.
        let at = rfc3339("9999-12-30T09:30:00Z").unwrap();
        let due = calendar::Calendar::kazakhstan([], []).deadline(at, 5 * 3600, 2);
        assert!(due > LAST_RFC3339);
        for t in [due, LAST_RFC3339 + 1, i64::MAX] {
            assert_eq!(to_rfc3339(t), "9999-12-31T23:59:59Z");
        }
        assert_eq!(to_rfc3339(LAST_RFC3339), "9999-12-31T23:59:59Z");
        assert_eq!(to_rfc3339(-1), "1970-01-01T00:00:00Z");
        assert_eq!(to_rfc3339(1_796_642_400), "2026-12-07T11:20:00Z");
    }

    #[test]
    fn a_holiday_file_is_read_and_its_errors_name_the_line() {
        let (off, on) = holiday_lines(
            "# 2027\n2027-05-27 off  # Kurban Ait\n2027-01-09 on\n",
            "h.txt",
        )
        .unwrap();
        assert_eq!(
            (off, on),
            (vec![day_of(2027, 5, 27)], vec![day_of(2027, 1, 9)])
        );
        let e = holiday_lines("2027-02-30 off\n", "h.txt").unwrap_err();
        assert!(e.starts_with("h.txt:1: no such date"), "{e}");
        let e = holiday_lines("\n2027-05-27 holiday\n", "h.txt").unwrap_err();
        assert!(e.starts_with("h.txt:2: the second word"), "{e}");
        let e = holiday_lines("27/05/2027 off\n", "h.txt").unwrap_err();
        assert!(e.contains("YYYY-MM-DD"), "{e}");
    }
}
