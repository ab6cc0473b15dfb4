//! The PostgreSQL store's schema, one list of migrations per component
//! ([`super::migrate`] applies each once, under an advisory lock, so nodes
//! starting together migrate once): `meta` (the store's own facts and
//! each node's last verdict sequence), `calls` (the call log, partitioned
//! by time), `incidents`, `outbox` and `audit`.
//!
//! The concepts are SQLite's ([`crate::schema`]); what differs is said
//! where it differs:
//! - `calls` is partitioned by range of `ts_us` (µs since the epoch, UTC)
//!   into daily or monthly partitions (`super::partitions`), with a
//!   default partition as the catch-all. A unique key on a partitioned
//!   table must hold the partition key, so a call's identity is
//!   `(verdict_id, ts_us)`: a retried batch carries both unchanged, so
//!   `ON CONFLICT DO NOTHING` on it records each call once. Ids come from
//!   one sequence shared by every node and every partition, so a cursor
//!   (`id < before`) pages the whole log.
//! - The rules that fired are a `text[]` column of the call (every rule id
//!   once, enforced and shadow) with a GIN index, instead of SQLite's
//!   `call_rules` table: dropping a partition then takes a call with its
//!   rules, and nothing else points into a partition.
//! - There is no `pinned` table: every call an incident names (linked, or
//!   as a sample) lies between its first and last call, so retention
//!   keeps a partition whose time range meets an incident not yet closed.
//! - Incidents are found by `(kind, key)` through an index of their own
//!   (SQLite finds a source's through the caller's latest call): the
//!   calls of one source may come from several nodes' batches.

/// `meta`: the store's id and verdict key (one row each, written once by
/// whichever node comes first), and each node's highest verdict sequence
/// and last probe.
pub const META: &[&str] = &["
    CREATE TABLE kuzet_meta (
        key   text PRIMARY KEY,
        value text NOT NULL
    );
    CREATE TABLE kuzet_nodes (
        node          text PRIMARY KEY,
        verdict_seq   bigint NOT NULL DEFAULT 0,
        last_probe_us bigint NOT NULL DEFAULT 0
    );
"];

/// `calls`: the call log, partitioned by time, with the registry of its
/// partitions (name and range; written with each partition it names).
pub const CALLS: &[&str] = &["
    CREATE SEQUENCE calls_id_seq AS bigint;
    CREATE TABLE calls (
        id              bigint NOT NULL DEFAULT nextval('calls_id_seq'),
        verdict_id      text NOT NULL,
        ts_us           bigint NOT NULL,
        node            text NOT NULL,
        call_id         text NOT NULL,
        ruri            text NOT NULL,
        from_hdr        text NOT NULL,
        pai_hdr         text NOT NULL,
        a               text,
        b               text,
        from_num        text,
        pai_num         text,
        trunk           text,
        trunk_kind      text,
        source          text NOT NULL,
        transport       text NOT NULL,
        decision        text NOT NULL,
        shadow_decision text NOT NULL,
        code            integer NOT NULL,
        score           bigint NOT NULL,
        sampled         boolean NOT NULL,
        explanation     text NOT NULL,
        rules           text NOT NULL,
        list_hit        text,
        lists_version   text NOT NULL,
        headers         bytea NOT NULL,
        incident        bigint,
        a_trust         text NOT NULL DEFAULT '',
        caller_role     text NOT NULL DEFAULT '',
        rule_ids        text[] NOT NULL DEFAULT '{}',
        PRIMARY KEY (id, ts_us),
        UNIQUE (verdict_id, ts_us)
    ) PARTITION BY RANGE (ts_us);
    ALTER SEQUENCE calls_id_seq OWNED BY calls.id;
    CREATE INDEX calls_a ON calls (a, id);
    CREATE INDEX calls_b ON calls (b, id);
    CREATE INDEX calls_ts ON calls (ts_us);
    CREATE INDEX calls_incident ON calls (incident) WHERE incident IS NOT NULL;
    CREATE INDEX calls_rules ON calls USING gin (rule_ids);
    CREATE TABLE calls_default PARTITION OF calls DEFAULT;
    CREATE TABLE call_partitions (
        name  text PRIMARY KEY,
        lo_us bigint NOT NULL,
        hi_us bigint NOT NULL,
        CHECK (lo_us < hi_us)
    );
"];

/// `incidents`: calls grouped by what they accuse, one row per incident,
/// found by kind and key (the newest first).
pub const INCIDENTS: &[&str] = &["
    CREATE TABLE incidents (
        id             bigserial PRIMARY KEY,
        kind           text NOT NULL,
        key            text NOT NULL,
        state          text NOT NULL,
        first_seen_us  bigint NOT NULL,
        last_seen_us   bigint NOT NULL,
        blocked        bigint NOT NULL,
        flagged        bigint NOT NULL,
        other          bigint NOT NULL,
        evidence       text NOT NULL,
        reportable     boolean NOT NULL,
        dirty          boolean NOT NULL,
        register_state text NOT NULL,
        register_case  text NOT NULL,
        register_error text NOT NULL
    );
    CREATE INDEX incidents_key ON incidents (kind, key, id);
    CREATE INDEX incidents_dirty ON incidents (id) WHERE dirty;
    CREATE INDEX incidents_open ON incidents (last_seen_us) WHERE state <> 'closed';
"];

/// `outbox`: the reports to the pre-trial register, one sequence per
/// incident.
pub const OUTBOX: &[&str] = &["
    CREATE TABLE outbox (
        id          bigserial PRIMARY KEY,
        incident    bigint NOT NULL,
        seq         bigint NOT NULL,
        kind        text NOT NULL,
        payload     text NOT NULL,
        created_us  bigint NOT NULL,
        attempts    bigint NOT NULL,
        next_at_us  bigint NOT NULL,
        state       text NOT NULL,
        last_error  text NOT NULL,
        UNIQUE (incident, seq)
    );
    CREATE INDEX outbox_due ON outbox (next_at_us) WHERE state = 'pending';
"];

/// `audit`: who asked what, only ever appended to.
pub const AUDIT: &[&str] = &["
    CREATE TABLE audit (
        id      bigserial PRIMARY KEY,
        ts_us   bigint NOT NULL,
        who     text NOT NULL,
        role    text NOT NULL,
        action  text NOT NULL,
        filter  text NOT NULL,
        rows    bigint NOT NULL,
        outcome text NOT NULL,
        count   bigint NOT NULL DEFAULT 1
    );
"];

/// Every component and its migrations, in the order they are applied
/// (the fencing table too: the outbox's writes check it).
pub const COMPONENTS: &[(&str, &[&str])] = &[
    ("meta", META),
    ("calls", CALLS),
    ("incidents", INCIDENTS),
    ("outbox", OUTBOX),
    ("audit", AUDIT),
    ("fences", super::fence::MIGRATIONS),
];
