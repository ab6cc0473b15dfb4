//! Incidents and the register outbox on PostgreSQL: the same grouping,
//! reporting policy and outbox rules as on SQLite ([`crate::incident`],
//! whose `groups`, `Incident::add` and `Incident::judge` decide what a
//! call joins and what is reported), made safe for several writers.
//!
//! **One incident per group, cluster-wide.** Every node's writer groups
//! its own batches into the one shared store. Before reading a group's
//! incident, the writer's transaction takes a transaction-scoped advisory
//! lock on the group's slot (a 64-bit hash of `kind` and `key`, modulo
//! [`GROUP_LOCK_SLOTS`]), every slot the batch's groups fall in, in
//! ascending order and in one statement (so two writers never wait on
//! each other in a cycle); it then reads the group's newest incident with
//! its row locked. A second node grouping the same source waits for the
//! first to commit, then reads (a statement of its own, so a fresh view)
//! the incident the first made or grew, and joins it: one incident, and
//! its submission queued once. Two groups in one slot only wait on each
//! other.
//!
//! **Row locks in one order.** Whatever touches an incident and its outbox
//! entries locks the incident's row first (the writer's read, the
//! outbox's `delivered`, `retry`, `dead_letter`), so the writer and the
//! reporter never deadlock; a tick enqueues dirty incidents it can lock
//! at once and leaves those another node is working on (`SKIP LOCKED`).
//! A payload is rewritten only while its entry was never tried, checked
//! in the statement that rewrites it, so a claim that commits first
//! freezes it (the writer then queues the growth later, as SQLite does
//! for an entry already tried).

use std::collections::HashMap;

use postgres::{GenericClient, Row, Transaction};

use crate::incident::{self, Incident, Policy};
use crate::outbox::{self, Due, Payload};
use crate::Record;

/// The incident columns [`from_row`] reads, in order.
pub const COLUMNS: &str = "id, kind, key, state, first_seen_us, last_seen_us, blocked, flagged,
    other, evidence, reportable, register_state, register_case, register_error";

/// Reads a row selected with [`COLUMNS`].
pub fn from_row(r: &Row) -> Result<Incident, postgres::Error> {
    let ev: String = r.try_get(9)?;
    Ok(Incident {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        key: r.try_get(2)?,
        state: r.try_get(3)?,
        first_seen_us: r.try_get(4)?,
        last_seen_us: r.try_get(5)?,
        blocked: r.try_get::<_, i64>(6)?.max(0) as u64,
        flagged: r.try_get::<_, i64>(7)?.max(0) as u64,
        other: r.try_get::<_, i64>(8)?.max(0) as u64,
        evidence: serde_json::from_str(&ev).unwrap_or_default(),
        reportable: r.try_get(10)?,
        register_state: r.try_get(11)?,
        register_case: r.try_get(12)?,
        register_error: r.try_get(13)?,
    })
}

/// A group's advisory lock: 64 bits of FNV-1a over `kind`, a zero byte
/// and `key`, the same on every node and build.
pub fn group_lock(kind: &str, key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// How many advisory locks a writer's transaction takes for its groups
/// at most: a group locks its slot, [`group_lock`] modulo this. Every lock
/// held stays in the server's lock table until the transaction ends, and
/// that table is bounded (`max_locks_per_transaction` ×
/// `max_connections`, 6,400 by default): a batch of 16,384 calls from
/// distinct sources took a lock each and was refused ("out of shared
/// memory", a transient error, so the recorder tried it again for ever
/// while the record queue filled). 1,024 a writer leave room for six
/// nodes' writers at once in the default table.
pub const GROUP_LOCK_SLOTS: i64 = 1024;

/// The first key of the groups' two-key advisory locks: a space apart from
/// the one-key locks of the migrations and the partitions.
const GROUP_LOCK_CLASS: i32 = 0x4b5a;

/// The lock slot of a group whose lock hash is `lock`.
pub fn group_slot(lock: i64) -> i32 {
    // Below GROUP_LOCK_SLOTS, so it fits.
    lock.rem_euclid(GROUP_LOCK_SLOTS) as i32
}

/// Groups the calls `recs` (those the batch actually adds: never one the
/// store held already) into incidents, in the writer's transaction, and
/// queues the reports the policy calls for. Returns each call's primary
/// incident, to be written with it.
pub fn group_batch(
    tx: &mut Transaction<'_>,
    recs: &[&Record],
    p: &Policy,
    now_us: i64,
) -> Result<Vec<Option<i64>>, postgres::Error> {
    let mut linked = vec![None; recs.len()];
    if !p.enabled {
        return Ok(linked);
    }
    let mut by_group: HashMap<(&'static str, String), Vec<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        for k in incident::groups(r) {
            by_group.entry(k).or_default().push(i);
        }
    }
    let mut order: Vec<_> = by_group
        .into_iter()
        .map(|(k, members)| (group_lock(k.0, &k.1), k, members))
        .collect();
    order.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    // Locked in one order on every node, ascending slots, in one round
    // trip (a volatile function in the select list is evaluated in the
    // ORDER BY's order).
    let mut slots: Vec<i32> = order.iter().map(|o| group_slot(o.0)).collect();
    slots.sort_unstable();
    slots.dedup();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, s) FROM unnest($2::int4[]) AS u(s) ORDER BY s",
        &[&GROUP_LOCK_CLASS, &slots],
    )?;
    // Every group's newest incident, locked, in one statement: the
    // lateral reads run (and lock) in the groups' order, as the slots.
    let kinds: Vec<&str> = order.iter().map(|o| o.1 .0).collect();
    let keys: Vec<String> = order.iter().map(|o| o.1 .1.clone()).collect();
    let mut newest: Vec<Option<Incident>> = (0..order.len()).map(|_| None).collect();
    for r in tx.query(
        &format!(
            "SELECT i.*, g.ord FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS g(kind, key, ord)
             CROSS JOIN LATERAL (SELECT {COLUMNS} FROM incidents
                 WHERE kind = g.kind AND key = g.key ORDER BY id DESC LIMIT 1 FOR UPDATE) i
             ORDER BY g.ord"
        ),
        &[&kinds, &keys],
    )? {
        let ord: i64 = r.try_get(14)?;
        if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| newest.get_mut(i)) {
            *slot = Some(from_row(&r)?);
        }
    }
    for (idx, (_, (kind, key), members)) in order.into_iter().enumerate() {
        let first = recs[members[0]];
        let newest = newest.get_mut(idx).and_then(Option::take);
        let mut inc = newest
            .filter(|i| i.state != "closed" && first.ts_us - i.last_seen_us <= p.window_us)
            .unwrap_or_else(|| Incident {
                kind: kind.into(),
                key: key.clone(),
                state: "open".into(),
                first_seen_us: first.ts_us,
                last_seen_us: first.ts_us,
                ..Incident::default()
            });
        for &m in &members {
            inc.add(recs[m], kind == "campaign");
        }
        inc.judge(p);
        if inc.reportable && p.report && inc.register_state.is_empty() {
            inc.register_state = "pending".into();
        }
        let ev = serde_json::to_string(&inc.evidence).unwrap_or_default();
        let (blocked, flagged, other) = (clamp(inc.blocked), clamp(inc.flagged), clamp(inc.other));
        if inc.id == 0 {
            inc.id = tx
                .query_one(
                    "INSERT INTO incidents (kind, key, state, first_seen_us, last_seen_us,
                     blocked, flagged, other, evidence, reportable, dirty, register_state,
                     register_case, register_error)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, false, $11, '', '')
                     RETURNING id",
                    &[
                        &inc.kind,
                        &inc.key,
                        &inc.state,
                        &inc.first_seen_us,
                        &inc.last_seen_us,
                        &blocked,
                        &flagged,
                        &other,
                        &ev,
                        &inc.reportable,
                        &inc.register_state,
                    ],
                )?
                .get(0);
        } else {
            tx.execute(
                "UPDATE incidents SET first_seen_us = $2, last_seen_us = $3, blocked = $4,
                 flagged = $5, other = $6, evidence = $7, reportable = $8, register_state = $9
                 WHERE id = $1",
                &[
                    &inc.id,
                    &inc.first_seen_us,
                    &inc.last_seen_us,
                    &blocked,
                    &flagged,
                    &other,
                    &ev,
                    &inc.reportable,
                    &inc.register_state,
                ],
            )?;
        }
        if incident::is_primary(kind) {
            for &m in &members {
                linked[m] = Some(inc.id);
            }
        }
        if inc.reportable && p.report && inc.register_state != "dead_letter" {
            enqueue(tx, &inc, p, now_us)?;
        }
    }
    Ok(linked)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Puts the incident's current report in the outbox, as SQLite's
/// [`crate::incident::enqueue`]: into the pending entry if it was never
/// tried, else as the next sequence once the update interval has passed
/// (until then the incident is marked dirty). The caller holds the
/// incident's row lock.
pub fn enqueue(
    tx: &mut impl GenericClient,
    inc: &Incident,
    p: &Policy,
    now_us: i64,
) -> Result<(), postgres::Error> {
    let payload = Payload::of(inc).encode();
    let latest = tx.query_opt(
        "SELECT id, seq, attempts, state, created_us FROM outbox WHERE incident = $1
         ORDER BY seq DESC LIMIT 1",
        &[&inc.id],
    )?;
    let latest: Option<(i64, i64, i64, String, i64)> =
        latest.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)));
    let mut dirty = false;
    match latest {
        None => {
            tx.execute(
                "INSERT INTO outbox (incident, seq, kind, payload, created_us, attempts,
                 next_at_us, state, last_error)
                 VALUES ($1, 1, 'submit', $2, $3, 0, $3, 'pending', '')",
                &[&inc.id, &payload, &now_us],
            )?;
        }
        Some((id, _, 0, state, _)) if state == "pending" => {
            // Rewritten only if still never tried: a claim that committed
            // meanwhile froze it, and the growth waits for the interval.
            let n = tx.execute(
                "UPDATE outbox SET payload = $2 WHERE id = $1 AND attempts = 0
                 AND state = 'pending'",
                &[&id, &payload],
            )?;
            dirty = n == 0;
        }
        Some((_, _, _, state, _)) if state == "dead" => {}
        Some((_, seq, _, _, created)) if now_us - created >= p.update_interval_us => {
            tx.execute(
                "INSERT INTO outbox (incident, seq, kind, payload, created_us, attempts,
                 next_at_us, state, last_error)
                 VALUES ($1, $2, 'update', $3, $4, 0, $4, 'pending', '')",
                &[&inc.id, &(seq + 1), &payload, &now_us],
            )?;
        }
        Some(_) => dirty = true,
    }
    tx.execute(
        "UPDATE incidents SET dirty = $2 WHERE id = $1",
        &[&inc.id, &dirty],
    )?;
    Ok(())
}

/// The incidents' periodic work, as SQLite's [`crate::incident::tick`]:
/// dirty incidents whose interval has passed are enqueued (those another
/// node holds locked are left to it), quiet ones closed, and with
/// `lifetimes` those open too long.
pub fn tick(
    tx: &mut Transaction<'_>,
    p: &Policy,
    now_us: i64,
    lifetimes: bool,
) -> Result<(), postgres::Error> {
    if p.report {
        let dirty = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM incidents WHERE dirty ORDER BY id LIMIT 1000
                     FOR UPDATE SKIP LOCKED"
                ),
                &[],
            )?
            .iter()
            .map(from_row)
            .collect::<Result<Vec<_>, _>>()?;
        for inc in dirty {
            enqueue(tx, &inc, p, now_us)?;
        }
    }
    tx.execute(
        "UPDATE incidents SET state = 'closed' WHERE state <> 'closed' AND last_seen_us < $1",
        &[&(now_us - p.close_after_us)],
    )?;
    if lifetimes {
        tx.execute(
            "UPDATE incidents SET state = 'closed' WHERE state <> 'closed' AND first_seen_us < $1",
            &[&(now_us - p.max_open_us)],
        )?;
    }
    Ok(())
}

/// Entries due now, oldest first, at most one per incident (the lowest
/// sequence still pending).
pub fn due(
    c: &mut impl GenericClient,
    now_us: i64,
    limit: usize,
) -> Result<Vec<Due>, postgres::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c.query(
        "SELECT o.id, o.incident, o.seq, o.kind, o.payload, o.attempts FROM outbox o
         WHERE o.state = 'pending' AND o.next_at_us <= $1
           AND o.seq = (SELECT min(seq) FROM outbox p
                        WHERE p.incident = o.incident AND p.state = 'pending')
         ORDER BY o.id LIMIT $2",
        &[&now_us, &limit],
    )?;
    rows.iter()
        .map(|r| {
            let payload: String = r.try_get(4)?;
            Ok(Due {
                id: r.try_get(0)?,
                incident: r.try_get(1)?,
                seq: r.try_get(2)?,
                kind: r.try_get(3)?,
                report: outbox::decode(&payload),
                attempts: r.try_get(5)?,
            })
        })
        .collect()
}

/// Incidents, newest first, optionally in one state (or register state
/// `dead_letter`), before the cursor, each with the highest sequence the
/// register has taken: one statement, one view.
pub fn list(
    c: &mut impl GenericClient,
    state: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<(Incident, u64)>, postgres::Error> {
    let limit = limit.clamp(1, 1000) as i64;
    let rows = c.query(
        &format!(
            "SELECT {COLUMNS}, (SELECT coalesce(max(seq), 0) FROM outbox o
                 WHERE o.incident = incidents.id AND o.state = 'done')
             FROM incidents WHERE id < $1
             AND ($2::text IS NULL OR state = $2
                  OR ($2 = 'dead_letter' AND register_state = 'dead_letter'))
             ORDER BY id DESC LIMIT $3"
        ),
        &[&before.unwrap_or(i64::MAX), &state, &limit],
    )?;
    rows.iter()
        .map(|r| Ok((from_row(r)?, r.try_get::<_, i64>(14)?.max(0) as u64)))
        .collect()
}

/// One incident with the highest sequence the register has taken.
pub fn get(
    c: &mut impl GenericClient,
    id: i64,
) -> Result<Option<(Incident, u64)>, postgres::Error> {
    let row = c.query_opt(
        &format!(
            "SELECT {COLUMNS}, (SELECT coalesce(max(seq), 0) FROM outbox o
                 WHERE o.incident = incidents.id AND o.state = 'done')
             FROM incidents WHERE id = $1"
        ),
        &[&id],
    )?;
    row.map(|r| Ok((from_row(&r)?, r.try_get::<_, i64>(14)?.max(0) as u64)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_lock_is_stable_and_apart_per_kind() {
        assert_eq!(group_lock("source", "+7701"), group_lock("source", "+7701"));
        assert_ne!(
            group_lock("source", "+7701"),
            group_lock("campaign", "+7701")
        );
        // The separator keeps "ab"+"c" apart from "a"+"bc".
        assert_ne!(group_lock("ab", "c"), group_lock("a", "bc"));
    }
}
