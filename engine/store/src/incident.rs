//! Incidents: intercepted calls grouped by what the calls accuse, within a
//! window, and the outbox of reports to the pre-trial register.
//!
//! A record accuses only a number the network vouches for. An incident's
//! key is, by its kind:
//! - `source`: an attributable A-number (asserted in P-Asserted-Identity
//!   by a trunk trusted to assert it, or itself listed);
//! - `trunk` or `address`: the interconnect (or the source address on no
//!   trunk) that delivered calls whose numbers nobody vouches for: caller-ID
//!   spoofs, whose presented numbers are kept as *impersonated* (their
//!   holders are victims), and unattributable suspects, kept as *claimed*;
//! - `destination`: a listed number that callers dialled; the callers are
//!   *potential victims*, never sources;
//! - `campaign`: one behaviour rule through one trunk or address, tying
//!   three or more callers together.
//!
//! [`parties`] lists every number an incident names with its role and the
//! basis for it; reports carry it.
//!
//! Grouping runs in the writer's transaction, with the calls it groups: a
//! call, its incident and the incident's outbox entry are committed
//! together or not at all, so a SIGKILL never leaves one without the
//! others. An outbox entry holds the report as it will be sent (a
//! [`Payload`], the outbox's own versioned type), with a
//! sequence number per incident: once an entry has been tried it never
//! changes, so a retry carries exactly what the first try did, and the
//! register's idempotency key plus the sequence make the effect exactly
//! once. Growth after that goes into the next sequence, at most once per
//! update interval.

use std::collections::{BTreeSet, HashMap};

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use crate::outbox::{self, Due, Party, Payload};
use crate::record::role;
use crate::Record;

/// Which incidents exist and which are reported.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Group incidents at all.
    pub enabled: bool,
    /// Calls of one source (or campaign) further apart than this start a
    /// new incident.
    pub window_us: i64,
    /// An incident with an activity gap this long is closed.
    pub close_after_us: i64,
    /// Report an incident once it has this many blocked calls...
    pub min_blocked: u64,
    /// ...or as soon as one of these rules fires in it (e.g. the National
    /// Bank list's rule).
    pub report_rules: Vec<String>,
    /// A campaign is an incident only once it ties this many sources.
    pub campaign_min_sources: u64,
    /// Send reports at all (a register is configured).
    pub report: bool,
    /// At most one update per incident per this long.
    pub update_interval_us: i64,
    /// An incident open this long (its calls never further apart than the
    /// window) is closed all the same, so retention, which keeps an open
    /// incident's calls, always ends; calls that go on open a new one.
    pub max_open_us: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            window_us: 3_600_000_000,
            close_after_us: 86_400_000_000,
            min_blocked: 3,
            report_rules: Vec::new(),
            campaign_min_sources: 3,
            report: false,
            update_interval_us: 60_000_000,
            max_open_us: 7 * 86_400_000_000,
        }
    }
}

/// The built-in list rules' ids.
const LIST_RULES: [&str; 4] = ["blocklist", "flaglist", "allowlist", "premium"];

/// Most victims, sources and samples an incident keeps (its counts go on).
pub const MAX_LISTED: usize = 100;
/// Sample verdict ids kept per incident.
pub const MAX_SAMPLES: usize = 10;

/// What an incident has gathered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// B-numbers reached or attempted (at most [`MAX_LISTED`]).
    pub victims: BTreeSet<String>,
    /// Rules that fired (enforced).
    pub rules: BTreeSet<String>,
    /// Trunks the calls came through.
    pub trunks: BTreeSet<String>,
    /// Source addresses (ip) the calls came from.
    pub sources: BTreeSet<String>,
    /// A-numbers (for a campaign), at most [`MAX_LISTED`].
    pub callers: BTreeSet<String>,
    /// Distinct A-numbers seen (a campaign's count goes on past the cap).
    pub callers_seen: u64,
    /// Some of its calls' verdict ids, the first ones.
    pub samples: Vec<String>,
    /// Numbers presented on spoofed calls (at most [`MAX_LISTED`]): their
    /// holders were impersonated.
    #[serde(default)]
    pub impersonated: BTreeSet<String>,
    /// Numbers presented by callers nobody vouches for (at most
    /// [`MAX_LISTED`]): unverified, no accusation.
    #[serde(default)]
    pub claimed: BTreeSet<String>,
    /// Callers who dialled a listed number (at most [`MAX_LISTED`]).
    #[serde(default)]
    pub potential_victims: BTreeSet<String>,
    /// Why a `source` incident's number is attributable: `asserted` or
    /// `listed` (empty for other kinds).
    #[serde(default)]
    pub basis: String,
}

/// One incident.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Its id.
    pub id: i64,
    /// `source` or `campaign`.
    pub kind: String,
    /// The A-number, or the campaign's `rule@trunk`.
    pub key: String,
    /// `open`, `reported`, `updated` or `closed`.
    pub state: String,
    /// First call, µs since the epoch.
    pub first_seen_us: i64,
    /// Last call.
    pub last_seen_us: i64,
    /// Blocked calls.
    pub blocked: u64,
    /// Flagged calls.
    pub flagged: u64,
    /// Other intercepted calls (redirected).
    pub other: u64,
    /// What it gathered.
    pub evidence: Evidence,
    /// The policy says report it.
    pub reportable: bool,
    /// `""` (not reportable), `pending`, `delivered` or `dead_letter`.
    pub register_state: String,
    /// The register's case number, once delivered.
    pub register_case: String,
    /// Why the register refused it, or the last delivery error.
    pub register_error: String,
}

impl Incident {
    pub(crate) fn add(&mut self, r: &Record, policy_kind_campaign: bool) {
        self.first_seen_us = self.first_seen_us.min(r.ts_us);
        self.last_seen_us = self.last_seen_us.max(r.ts_us);
        match r.decision.as_str() {
            "block" => self.blocked += 1,
            "flag" => self.flagged += 1,
            _ => self.other += 1,
        }
        let e = &mut self.evidence;
        let put = |set: &mut BTreeSet<String>, v: &str| {
            if set.len() < MAX_LISTED && !v.is_empty() {
                set.insert(v.to_string());
            }
        };
        let put_num = |set: &mut BTreeSet<String>, v: &Option<String>| {
            if let Some(v) = v {
                if set.len() < MAX_LISTED && !v.is_empty() {
                    set.insert(v.clone());
                }
            }
        };
        // Whether the caller is one this incident had not named yet.
        let mut new_caller = false;
        match r.caller_role.as_str() {
            role::POTENTIAL_VICTIM => put_num(&mut e.potential_victims, &r.a),
            role::IMPERSONATED => {
                new_caller = r.a.as_ref().is_some_and(|a| !e.impersonated.contains(a));
                for n in [&r.a, &r.from_num, &r.pai_num] {
                    put_num(&mut e.impersonated, n);
                }
                put_num(&mut e.victims, &r.b);
            }
            role::CLAIMED => {
                new_caller = r.a.as_ref().is_some_and(|a| !e.claimed.contains(a));
                put_num(&mut e.claimed, &r.a);
                put_num(&mut e.victims, &r.b);
            }
            _ => put_num(&mut e.victims, &r.b),
        }
        if self.kind == "source" && e.basis.is_empty() {
            e.basis = if r.a_trust == "network" {
                "asserted"
            } else {
                "listed"
            }
            .into();
        }
        for h in r.rules.iter().filter(|h| !h.shadow) {
            put(&mut e.rules, &h.id);
        }
        if let Some(t) = &r.trunk {
            put(&mut e.trunks, t);
        }
        put(&mut e.sources, source_ip(&r.source));
        if policy_kind_campaign {
            // Distinct callers are counted while they are listed; past the
            // list's cap a campaign is long since an incident. Only an
            // attributable caller is named a caller; the others are
            // claimed or impersonated numbers (above), counted all the
            // same.
            if let Some(a) = &r.a {
                let named = match r.caller_role.as_str() {
                    role::SOURCE | "" => {
                        e.callers.len() < MAX_LISTED && e.callers.insert(a.clone())
                    }
                    _ => new_caller,
                };
                if named {
                    e.callers_seen += 1;
                }
            }
        }
        if e.samples.len() < MAX_SAMPLES {
            e.samples.push(r.verdict_id.clone());
        }
    }

    pub(crate) fn judge(&mut self, p: &Policy) {
        let distinct_ok =
            self.kind != "campaign" || self.evidence.callers_seen >= p.campaign_min_sources;
        let by_rule = self
            .evidence
            .rules
            .iter()
            .any(|r| p.report_rules.iter().any(|x| x == r));
        self.reportable = distinct_ok && (self.blocked >= p.min_blocked || by_rule);
    }
}

/// `1.2.3.4` of `1.2.3.4:5060`, `::1` of `[::1]:5060`.
fn source_ip(s: &str) -> &str {
    match s.rsplit_once(':') {
        Some((ip, _)) => ip.trim_start_matches('[').trim_end_matches(']'),
        None => s,
    }
}

const COLUMNS: &str = "id, kind, key, state, first_seen_us, last_seen_us, blocked, flagged, other,
    evidence, reportable, register_state, register_case, register_error";

/// Reads a row selected with the incident columns.
pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let ev: String = r.get(9)?;
    Ok(Incident {
        id: r.get(0)?,
        kind: r.get(1)?,
        key: r.get(2)?,
        state: r.get(3)?,
        first_seen_us: r.get(4)?,
        last_seen_us: r.get(5)?,
        blocked: r.get::<_, i64>(6)? as u64,
        flagged: r.get::<_, i64>(7)? as u64,
        other: r.get::<_, i64>(8)? as u64,
        evidence: serde_json::from_str(&ev).unwrap_or_default(),
        reportable: r.get(10)?,
        register_state: r.get(11)?,
        register_case: r.get(12)?,
        register_error: r.get(13)?,
    })
}

/// The groups a recorded call belongs to: its primary incident (what the
/// call accuses: an attributable number, the trunk or address that
/// delivered it, or a listed destination), and a campaign per enforced
/// behaviour rule unless the caller is a potential victim (list hits name
/// a number, not a campaign). The first group, when there is one, is the
/// primary: the call links to it.
pub(crate) fn groups(r: &Record) -> Vec<(&'static str, String)> {
    let mut g = Vec::new();
    if !matches!(r.decision.as_str(), "block" | "flag" | "redirect") || r.sampled {
        return g;
    }
    let (via_kind, via) = match &r.trunk {
        Some(t) => ("trunk", t.clone()),
        None => ("address", source_ip(&r.source).to_string()),
    };
    match r.caller_role.as_str() {
        // An empty role: a record from before roles were kept.
        role::SOURCE | "" => {
            if let Some(a) = &r.a {
                g.push(("source", a.clone()));
            }
        }
        role::CLAIMED | role::IMPERSONATED => g.push((via_kind, via.clone())),
        role::POTENTIAL_VICTIM => {
            if let Some(b) = &r.b {
                g.push(("destination", b.clone()));
            }
            return g;
        }
        _ => {}
    }
    for h in &r.rules {
        // A list hit names a number, not a campaign.
        if h.shadow || LIST_RULES.contains(&h.id.as_str()) {
            continue;
        }
        g.push(("campaign", format!("{}@{via}", h.id)));
    }
    g
}

/// The kinds of incident a call links to (its primary group).
pub(crate) fn is_primary(kind: &str) -> bool {
    matches!(kind, "source" | "trunk" | "address" | "destination")
}

/// Groups a batch's calls into incidents, in the writer's transaction
/// (before the calls are written), and queues the reports the policy
/// calls for. Returns each call's source incident, to be written with it.
pub fn group_batch(
    tx: &Transaction<'_>,
    recs: &[Record],
    p: &Policy,
    now_us: i64,
) -> rusqlite::Result<Vec<Option<i64>>> {
    let mut linked = vec![None; recs.len()];
    if !p.enabled {
        return Ok(linked);
    }
    // One read and one write per group per batch, however many calls.
    let mut by_group: HashMap<(&'static str, String), Vec<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        for k in groups(r) {
            by_group.entry(k).or_default().push(i);
        }
    }
    for ((kind, key), members) in by_group {
        let first = &recs[members[0]];
        let mut inc = open_incident(tx, kind, &key)?
            .filter(|i| first.ts_us - i.last_seen_us <= p.window_us)
            .unwrap_or_else(|| Incident {
                kind: kind.into(),
                key: key.clone(),
                state: "open".into(),
                first_seen_us: first.ts_us,
                last_seen_us: first.ts_us,
                ..Incident::default()
            });
        let samples_before = inc.evidence.samples.len();
        for &m in &members {
            inc.add(&recs[m], kind == "campaign");
        }
        inc.judge(p);
        if inc.reportable && p.report && inc.register_state.is_empty() {
            inc.register_state = "pending".into();
        }
        let ev = serde_json::to_string(&inc.evidence).unwrap_or_default();
        if inc.id == 0 {
            tx.prepare_cached(
                "INSERT INTO incidents (kind, key, state, first_seen_us, last_seen_us, blocked,
                 flagged, other, evidence, reportable, dirty, register_state, register_case,
                 register_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, '', '')",
            )?
            .execute(params![
                inc.kind,
                inc.key,
                inc.state,
                inc.first_seen_us,
                inc.last_seen_us,
                inc.blocked as i64,
                inc.flagged as i64,
                inc.other as i64,
                ev,
                inc.reportable,
                inc.register_state
            ])?;
            inc.id = tx.last_insert_rowid();
        } else {
            tx.prepare_cached(
                "UPDATE incidents SET first_seen_us = ?2, last_seen_us = ?3, blocked = ?4,
                 flagged = ?5, other = ?6, evidence = ?7, reportable = ?8, register_state = ?9
                 WHERE id = ?1",
            )?
            .execute(params![
                inc.id,
                inc.first_seen_us,
                inc.last_seen_us,
                inc.blocked as i64,
                inc.flagged as i64,
                inc.other as i64,
                ev,
                inc.reportable,
                inc.register_state
            ])?;
        }
        // A call links to its primary incident (the one investigators
        // start from); campaigns list sample verdict ids. Every sample an
        // incident names is pinned, so retention keeps it while the
        // incident is open.
        if is_primary(kind) {
            for &m in &members {
                linked[m] = Some(inc.id);
            }
        }
        for v in inc.evidence.samples.iter().skip(samples_before) {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO pinned (verdict_id, incident) VALUES (?1, ?2)",
            )?
            .execute(params![v, inc.id])?;
        }
        if inc.reportable && p.report && inc.register_state != "dead_letter" {
            enqueue(tx, &inc, p, now_us)?;
        }
    }
    Ok(linked)
}

/// How many of a caller's latest calls are searched for its incident: a
/// source whose last intercepted call is further back than this (all
/// since were sampled allows) starts a new incident.
const SOURCE_LOOKBACK: i64 = 64;

/// The incident of this kind and key that is still open, if any.
///
/// A source's is the incident its latest linked call as a source belongs
/// to: every such call links to its source's current incident, so the
/// caller's index on the calls finds it, and the incidents need no index
/// on every A-number; a destination's likewise through the callee's
/// index. Trunks, addresses and campaigns (few keys) have an index of
/// their own.
fn open_incident(
    tx: &Transaction<'_>,
    kind: &str,
    key: &str,
) -> rusqlite::Result<Option<Incident>> {
    // The limit is written into the statements: as a bound parameter,
    // SQLite would plan the statement again per call.
    let via_calls = match kind {
        "source" => Some(format!(
            "SELECT incident FROM (SELECT incident FROM calls WHERE a = ?1
             AND caller_role IN ('source', '') ORDER BY id DESC LIMIT {SOURCE_LOOKBACK})
             WHERE incident IS NOT NULL LIMIT 1"
        )),
        "destination" => Some(format!(
            "SELECT incident FROM (SELECT incident FROM calls WHERE b = ?1
             AND caller_role = 'potential_victim' ORDER BY id DESC LIMIT {SOURCE_LOOKBACK})
             WHERE incident IS NOT NULL LIMIT 1"
        )),
        _ => None,
    };
    if let Some(sql) = via_calls {
        let id: Option<i64> = tx
            .prepare_cached(&sql)?
            .query_row(params![key], |r| r.get(0))
            .optional()?;
        let Some(id) = id else {
            return Ok(None);
        };
        return tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM incidents
                 WHERE id = ?1 AND kind = ?2 AND key = ?3 AND state != 'closed'"
            ))?
            .query_row(params![id, kind, key], from_row)
            .optional();
    }
    tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM incidents WHERE kind = ?1 AND key = ?2
         AND kind IN ('campaign', 'trunk', 'address')
         AND state != 'closed' ORDER BY id DESC LIMIT 1"
    ))?
    .query_row(params![kind, key], from_row)
    .optional()
}

/// Every number an incident names, with its role: what an investigator
/// may conclude of each (docs/evidence.md says it in words).
pub fn parties(i: &Incident) -> Vec<Party> {
    let e = &i.evidence;
    let mut out = Vec::new();
    let mut push = |set: &BTreeSet<String>, role: &'static str, basis: &'static str| {
        for n in set {
            out.push(Party {
                number: n.clone(),
                role: role.into(),
                basis: basis.into(),
            });
        }
    };
    match i.kind.as_str() {
        "source" => {
            let basis = if e.basis == "asserted" {
                "asserted"
            } else {
                "listed"
            };
            push(&BTreeSet::from([i.key.clone()]), "source", basis);
        }
        "destination" => push(&BTreeSet::from([i.key.clone()]), "source", "listed"),
        _ => {}
    }
    push(&e.victims, "victim", "dialled");
    push(&e.potential_victims, "potential_victim", "presented");
    push(&e.impersonated, "impersonated", "presented");
    push(&e.claimed, "claimed_caller", "presented");
    if i.kind == "campaign" {
        push(&e.callers, "caller", "attributable");
    }
    out
}

/// Puts the incident's current report in the outbox: into the pending
/// entry if it was never tried, else as the next sequence once the update
/// interval has passed (until then the incident is marked dirty and the
/// reporter enqueues it later).
pub fn enqueue(
    tx: &Transaction<'_>,
    inc: &Incident,
    p: &Policy,
    now_us: i64,
) -> rusqlite::Result<()> {
    // The outbox holds the report, in its own versioned form, never the
    // row: what waits there must read the same after an upgrade.
    let payload = Payload::of(inc).encode();
    let latest: Option<(i64, i64, i64, String, i64)> = tx
        .prepare_cached(
            "SELECT id, seq, attempts, state, created_us FROM outbox WHERE incident = ?1
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![inc.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    match latest {
        None => {
            tx.execute(
                "INSERT INTO outbox (incident, seq, kind, payload, created_us, attempts,
                 next_at_us, state, last_error) VALUES (?1, 1, 'submit', ?2, ?3, 0, ?3, 'pending', '')",
                params![inc.id, payload, now_us],
            )?;
        }
        Some((id, _, 0, state, _)) if state == "pending" => {
            tx.prepare_cached("UPDATE outbox SET payload = ?2 WHERE id = ?1")?
                .execute(params![id, payload])?;
        }
        Some((_, _, _, state, _)) if state == "dead" => {}
        Some((_, seq, _, _, created)) if now_us - created >= p.update_interval_us => {
            tx.execute(
                "INSERT INTO outbox (incident, seq, kind, payload, created_us, attempts,
                 next_at_us, state, last_error) VALUES (?1, ?2, 'update', ?3, ?4, 0, ?4, 'pending', '')",
                params![inc.id, seq + 1, payload, now_us],
            )?;
        }
        Some(_) => {
            tx.execute(
                "UPDATE incidents SET dirty = 1 WHERE id = ?1",
                params![inc.id],
            )?;
            return Ok(());
        }
    }
    tx.execute(
        "UPDATE incidents SET dirty = 0 WHERE id = ?1",
        params![inc.id],
    )?;
    Ok(())
}

/// Enqueues the dirty incidents whose update interval has passed, and
/// closes incidents quiet for the policy's close gap (and, with
/// `lifetimes`, those open longer than the policy allows: a scan of the
/// open incidents, so the writer asks for it once a minute). The writer
/// calls it about once a second.
pub fn tick(
    tx: &Transaction<'_>,
    p: &Policy,
    now_us: i64,
    lifetimes: bool,
) -> rusqlite::Result<()> {
    if p.report {
        let dirty: Vec<Incident> = {
            let mut st = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM incidents WHERE dirty = 1 LIMIT 1000"
            ))?;
            let rows = st.query_map([], from_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for inc in dirty {
            enqueue(tx, &inc, p, now_us)?;
        }
    }
    tx.execute(
        "UPDATE incidents SET state = 'closed' WHERE state != 'closed' AND last_seen_us < ?1",
        params![now_us - p.close_after_us],
    )?;
    if lifetimes {
        tx.execute(
            "UPDATE incidents SET state = 'closed' WHERE state != 'closed' AND first_seen_us < ?1",
            params![now_us - p.max_open_us],
        )?;
    }
    Ok(())
}

/// Entries due now, oldest first, at most one per incident (the lowest
/// sequence still pending: an update never overtakes its submission).
pub fn due(conn: &rusqlite::Connection, now_us: i64, limit: usize) -> rusqlite::Result<Vec<Due>> {
    let mut st = conn.prepare_cached(
        "SELECT o.id, o.incident, o.seq, o.kind, o.payload, o.attempts FROM outbox o
         WHERE o.state = 'pending' AND o.next_at_us <= ?1
           AND o.seq = (SELECT min(seq) FROM outbox p WHERE p.incident = o.incident AND p.state = 'pending')
         ORDER BY o.id LIMIT ?2",
    )?;
    let rows = st.query_map(params![now_us, limit as i64], |r| {
        let payload: String = r.get(4)?;
        Ok(Due {
            id: r.get(0)?,
            incident: r.get(1)?,
            seq: r.get(2)?,
            kind: r.get(3)?,
            report: outbox::decode(&payload),
            attempts: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Marks an entry tried, before it is sent, and returns the report as it
/// now stands (or why its payload cannot be read): from this moment it
/// never changes (the writer coalesces growth only into entries never
/// tried), so this is what every try sends. One immediate transaction, so
/// no growth slips in between.
pub fn mark_tried(
    conn: &rusqlite::Connection,
    id: i64,
) -> rusqlite::Result<Result<Payload, String>> {
    atomically(conn, || {
        conn.prepare_cached("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?1")?
            .execute(params![id])?;
        let payload: String = conn
            .prepare_cached("SELECT payload FROM outbox WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))?;
        Ok(outbox::decode(&payload))
    })
}

/// Runs `f` in one immediate transaction on a side connection.
fn atomically<T>(
    conn: &rusqlite::Connection,
    f: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f() {
        Ok(v) => match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(v),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        },
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The register took it: the entry is done and the incident shows the
/// case, together.
pub fn delivered(conn: &rusqlite::Connection, d: &Due, case: &str) -> rusqlite::Result<()> {
    atomically(conn, || {
        conn.prepare_cached("UPDATE outbox SET state = 'done', last_error = '' WHERE id = ?1")?
            .execute(params![d.id])?;
        conn.prepare_cached(
            "UPDATE incidents SET register_state = 'delivered', register_case = ?2, register_error = '',
             state = CASE WHEN state = 'closed' THEN state WHEN ?3 = 'submit' THEN 'reported' ELSE 'updated' END
             WHERE id = ?1",
        )?
        .execute(params![d.incident, case, d.kind])?;
        Ok(())
    })
}

/// Try again at `next_at_us`.
pub fn retry(
    conn: &rusqlite::Connection,
    d: &Due,
    next_at_us: i64,
    error: &str,
) -> rusqlite::Result<()> {
    atomically(conn, || {
        conn.prepare_cached("UPDATE outbox SET next_at_us = ?2, last_error = ?3 WHERE id = ?1")?
            .execute(params![d.id, next_at_us, error])?;
        conn.prepare_cached("UPDATE incidents SET register_error = ?2 WHERE id = ?1")?
            .execute(params![d.incident, error])?;
        Ok(())
    })
}

/// The register refused it as invalid: dead-lettered with every later
/// entry of the incident (an update of a case never opened would only be
/// refused in turn), not retried; the incident shows why.
pub fn dead_letter(conn: &rusqlite::Connection, d: &Due, error: &str) -> rusqlite::Result<()> {
    atomically(conn, || {
        conn.prepare_cached(
            "UPDATE outbox SET state = 'dead', last_error = ?3
             WHERE incident = ?1 AND seq >= ?2 AND state = 'pending'",
        )?
        .execute(params![d.incident, d.seq, error])?;
        conn.prepare_cached(
            "UPDATE incidents SET register_state = 'dead_letter', register_error = ?2 WHERE id = ?1",
        )?
        .execute(params![d.incident, error])?;
        Ok(())
    })
}

/// Outbox entries still pending (a gauge for operators).
pub fn backlog(conn: &rusqlite::Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM outbox WHERE state = 'pending'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

/// Incidents the register refused (register state `dead_letter`).
pub fn dead_letters(conn: &rusqlite::Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM incidents WHERE register_state = 'dead_letter'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

/// Incidents, newest first, optionally in one state (or register state
/// `dead_letter`), before the cursor.
pub fn list(
    conn: &rusqlite::Connection,
    state: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<Incident>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM incidents WHERE id < ?1
         AND (?2 IS NULL OR state = ?2 OR (?2 = 'dead_letter' AND register_state = 'dead_letter'))
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = st.query_map(
        params![
            before.unwrap_or(i64::MAX),
            state,
            limit.clamp(1, 1000) as i64
        ],
        from_row,
    )?;
    rows.collect()
}

/// One incident.
pub fn get(conn: &rusqlite::Connection, id: i64) -> rusqlite::Result<Option<Incident>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM incidents WHERE id = ?1"),
        params![id],
        from_row,
    )
    .optional()
}

/// The highest report sequence the register has taken for incident `id`
/// (0: none yet).
pub fn delivered_seq(conn: &rusqlite::Connection, id: i64) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT coalesce(max(seq), 0) FROM outbox WHERE incident = ?1 AND state = 'done'",
    )?
    .query_row([id], |r| r.get::<_, i64>(0))
    .map(|n| n as u64)
}
