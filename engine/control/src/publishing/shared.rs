//! Published versions shared by the nodes of a cluster: a list or rule
//! version published on any node is stored once in the shared store
//! ([`kuzet_store::SharedShelves`]) and announced on Redis; every node
//! fetches it, and a node that missed the announcement or was down
//! catches up by looking at the shared store every few seconds.
//!
//! The shared index of a shelf is the truth; each node's shelf
//! ([`super::shelf`]) is its copy, which records the shared sequence it
//! copies (`Index::shared_seq`) and is what a restart reads first, so a
//! node starts on the versions it held even with PostgreSQL down.
//!
//! A change (a push, an activation, a rollback, staged rules) is made on
//! the shared index first ([`SharedVersions::commit`]): read it, apply
//! the change (a new version is numbered from the shared `next`),
//! upload every content it names that the shared store lacks, and write
//! it back by compare-and-set; a writer that lost re-reads and applies the
//! change again, so the compare-and-set a rule author asked for (`expect`)
//! is judged against what the cluster holds, and loses the same way as on
//! one node. Only then is the node's own copy replaced and the change
//! announced (`PUBLISH {prefix}:versions "SHELF SEQ"`). An activation's
//! publishing sequence comes from the shared store too, so every node
//! names the same snapshot with the same version (`SEQ.DIGEST`), and
//! `kuzet nodes` shows them equal once they have caught up.
//!
//! The follower, on a thread of its own at nice 10 (the reload loop's
//! priority, which builds lists from files too: in the idle class a node
//! on a busy machine could go on judging with other versions than the
//! cluster's for as long as the machine stays busy),
//! wakes on an announcement or every `shared_poll_ms`, compares every
//! shelf's shared sequence with its copy's, and for a shelf it is behind
//! on fetches the index and every content it lacks (outside the shelf's
//! lock), builds the version in force and checks it against its digest,
//! then replaces its copy, provided nothing else replaced it meanwhile,
//! and offers the version to the publisher as a local activation does. A
//! shared shelf that has no index yet is seeded with the versions of the
//! first node that holds some.
//!
//! Nothing here touches the call path or makes a call wait. Redis down:
//! announcements fail (counted) and the follower's polling still brings
//! every node up to date. PostgreSQL down: a change is refused with the
//! reason (a version is stored once in the shared store before it is in
//! force anywhere), and every node keeps what it holds; a node behind or
//! unable to look for more than [`BEHIND_WARN_S`] says so on `/readyz`.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kuzet_dataplane::counter_set;
use kuzet_dataplane::metrics::{Gauge, Metrics};
use kuzet_rules::{ListBuilder, ListId, NumberList, NumberingPlan};
use kuzet_store::{SharedShelves, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::Status;

use super::shelf::{Index, Meta, Shelf};
use super::source::{lock, Nudge, PublishedSource, Which, MAX_RULES};
use super::{hex, unhex};
use crate::publish::{feed_lines, list_digest};

/// A node behind the shared versions (or unable to look) for longer than
/// this says so on `/readyz`.
pub const BEHIND_WARN_S: i64 = 30;

/// Compare-and-set tries of one change before it is given up.
const CAS_TRIES: usize = 8;

/// The Redis channel changes are announced on, under `[cluster]
/// key_prefix`.
pub fn channel(key_prefix: &str) -> String {
    format!("{key_prefix}:versions")
}

counter_set! {
    /// The shared versions' counters.
    pub struct VersionCounters {
        fetched => "versions_fetched_total", "Published contents this node fetched from the shared store",
        applied => "versions_applied_total", "Versions put in force here because the shared index had them in force",
        failures => "versions_fetch_failures_total", "Looks at the shared versions that failed (the store unreachable, a content missing or not matching its digest)",
        changes => "versions_shared_changes_total", "Changes this node made to the shared versions (pushes, stagings, activations, rollbacks)",
        lost => "versions_cas_lost_total", "Changes another node made first while this node was making one (tried again)",
        announced => "versions_announced_total", "Changes announced on Redis",
        announce_errors => "versions_announce_errors_total", "Announcements Redis did not take (the other nodes find the change by polling)",
        messages => "versions_messages_total", "Announcements received from Redis",
    }
}

/// How a node follows the shared versions.
#[derive(Clone, Debug)]
pub struct Follow {
    /// Redis, for announcements both ways (`None`: polling alone).
    pub redis_url: Option<String>,
    /// The channel (see [`channel`]).
    pub channel: String,
    /// Deadline of each Redis request.
    pub timeout: Duration,
    /// How often the shared store is looked at without an announcement.
    pub poll: Duration,
}

/// What the follower last saw, for the gauges and the log.
#[derive(Default)]
struct Seen {
    /// Since when this node has been behind, or unable to look.
    behind_since: Option<Instant>,
    /// The last warning in the log.
    warned: Option<Instant>,
}

/// The shared versions of this node's published shelves (see the module
/// docs).
pub struct SharedVersions {
    store: Arc<dyn SharedShelves>,
    source: Arc<PublishedSource>,
    plan: Arc<NumberingPlan>,
    nudge: Nudge,
    metrics: Arc<Metrics>,
    counters: Arc<VersionCounters>,
    follow: Follow,
    announce: tokio::sync::mpsc::UnboundedSender<(String, u64)>,
    announcements: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, u64)>>>,
    seen: Mutex<Seen>,
}

impl SharedVersions {
    /// The shared versions of `source`'s shelves in `store`, offered to
    /// the publisher that `nudge` wakes.
    pub fn new(
        store: Arc<dyn SharedShelves>,
        source: Arc<PublishedSource>,
        plan: NumberingPlan,
        nudge: Nudge,
        metrics: Arc<Metrics>,
        follow: Follow,
    ) -> Arc<SharedVersions> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        metrics.set(Gauge::VersionsShared, 1);
        Arc::new(SharedVersions {
            store,
            source,
            plan: Arc::new(plan),
            nudge,
            counters: metrics.counter_set::<VersionCounters>(),
            metrics,
            follow,
            announce: tx,
            announcements: Mutex::new(Some(rx)),
            seen: Mutex::new(Seen::default()),
        })
    }

    /// The store's error as a rule author reads it.
    fn refused(&self, e: StoreError) -> Status {
        let text = format!(
            "the shared store of published versions ({}): {e}; a version is stored there once before it is in force on any node, so nothing changed",
            self.store.location()
        );
        if e.is_transient() {
            Status::unavailable(format!("{text}; try again when it is back"))
        } else {
            Status::internal(text)
        }
    }

    /// A shelf's shared index and its sequence (`None`: none yet).
    fn read(&self, w: Which) -> Result<Option<(u64, Index)>, StoreError> {
        let name = w.name();
        match self.store.index(&name)? {
            None => Ok(None),
            Some((seq, doc)) => {
                let mut idx: Index =
                    serde_json::from_str(&doc).map_err(|e| StoreError::Conflict {
                        path: self.store.location().into(),
                        reason: format!("the shared index of {name} is not a versions index: {e}"),
                    })?;
                idx.shared_seq = 0;
                Ok(Some((seq, idx)))
            }
        }
    }

    /// The publishing sequence for an activation: the cluster's next,
    /// above every one this node has seen.
    pub(crate) fn next_seq(&self) -> Result<u64, Status> {
        let seq = self
            .store
            .next_sequence(self.source.allocated())
            .map_err(|e| self.refused(e))?;
        self.source.saw_seq(seq);
        Ok(seq)
    }

    /// Stores `digest`, kept on `s`, in the shared store (nothing when it
    /// is there already).
    pub(crate) fn upload(&self, w: Which, s: &Shelf, digest: &str) -> Result<(), Status> {
        let f = s.open_content(digest).map_err(Status::internal)?;
        self.upload_file(w, f, digest)
    }

    /// Stores `digest`, read from `file`, in the shared store (nothing
    /// when it is there already).
    pub(crate) fn upload_file(
        &self,
        w: Which,
        file: std::fs::File,
        digest: &str,
    ) -> Result<(), Status> {
        let mut r = BufReader::with_capacity(1 << 20, file);
        self.store
            .put_content(&w.name(), digest, &mut r)
            .map_err(|e| self.refused(e))?;
        Ok(())
    }

    /// Makes a change to shelf `w` (see the module docs), `s` being its
    /// copy here, locked by the caller: `edit` is applied to the shared
    /// index as read (again after each lost compare-and-set), every new
    /// content it names is uploaded from `s`, the index written back, and
    /// `s` replaced with it. When that also brings this node a version in
    /// force that `edit` did not put there (this node was behind), it is
    /// offered to the publisher here.
    pub(crate) fn commit<T>(
        &self,
        w: Which,
        s: &mut Shelf,
        mut edit: impl FnMut(&mut Index) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let name = w.name();
        for _ in 0..CAS_TRIES {
            let (seq, base) = match self.read(w).map_err(|e| self.refused(e))? {
                Some(found) => found,
                // None shared yet: this node's versions seed it.
                None => {
                    let mut idx = s.index.clone();
                    idx.shared_seq = 0;
                    (0, idx)
                }
            };
            let stored = if seq == 0 { Vec::new() } else { base.digests() };
            let mut idx = base.clone();
            let out = edit(&mut idx)?;
            if seq > 0 && idx == base {
                // Nothing to change (the same content pushed again):
                // this node's copy is brought up to the index alone.
                if s.index.shared_seq != seq {
                    let caught_up = self.mirror(w, s, seq, idx).map_err(Status::internal)?;
                    if let Some(aseq) = caught_up {
                        self.source.changed_now(aseq, w.layers(), None);
                        self.nudge.notify_one();
                    }
                }
                return Ok(out);
            }
            let named = idx.digests();
            for d in named.iter().filter(|d| !stored.contains(d)) {
                if !s.holds(d) {
                    self.fetch(w, s, d).map_err(|e| {
                        Status::internal(format!(
                            "{name}: the content {d} is neither here nor in the shared store: {e}"
                        ))
                    })?;
                }
                self.upload(w, s, d)?;
            }
            let doc = serde_json::to_string(&idx).map_err(|e| Status::internal(e.to_string()))?;
            if !self
                .store
                .cas_index(&name, seq, &doc, &named)
                .map_err(|e| self.refused(e))?
            {
                self.counters.lost.inc();
                continue;
            }
            self.counters.changes.inc();
            let edited = (idx.active, idx.activated_seq) != (base.active, base.activated_seq);
            let caught_up = self
                .mirror(w, s, seq + 1, idx)
                .map_err(|e| Status::internal(format!("{name}: the change is stored in the shared store, but this node's copy could not be replaced ({e}); it catches up within {} ms", self.follow.poll.as_millis())))?;
            if let (Some(aseq), false) = (caught_up, edited) {
                self.source.changed_now(aseq, w.layers(), None);
                self.nudge.notify_one();
            }
            let _ = self.announce.send((name, seq + 1));
            return Ok(out);
        }
        Err(Status::aborted(format!(
            "{name}: other nodes changed the shared versions {CAS_TRIES} times while this change was being made; nothing changed; try again"
        )))
    }

    /// Fetches the content `digest` of `w` from the shared store into `s`.
    fn fetch(&self, w: Which, s: &Shelf, digest: &str) -> Result<(), String> {
        let (f, p) = s.incoming()?;
        let r = self.fetch_into(w, f, &p, digest);
        match r {
            Ok(()) => s.keep(&p, digest),
            Err(e) => {
                let _ = std::fs::remove_file(&p);
                Err(e)
            }
        }
    }

    /// Writes the content `digest` of `w` into the upload `f` (at `p`),
    /// synced, and checks a rule text against its digest.
    fn fetch_into(
        &self,
        w: Which,
        f: std::fs::File,
        p: &std::path::Path,
        digest: &str,
    ) -> Result<(), String> {
        let name = w.name();
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let n = self
            .store
            .content(&name, digest, &mut out)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{}: the shared store does not hold {name}'s content {digest}",
                    self.store.location()
                )
            })?;
        let f = out
            .into_inner()
            .map_err(|e| format!("{}: {e}", p.display()))?;
        f.sync_all().map_err(|e| format!("{}: {e}", p.display()))?;
        if w == Which::Rules {
            if n > MAX_RULES {
                return Err(format!(
                    "{name}'s content {digest} is {n} bytes, over the largest rule file"
                ));
            }
            let text = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let d = Sha256::digest(&text);
            if hex(&d[..16]) != digest {
                return Err(format!(
                    "{name}'s content {digest} from the shared store does not match its digest"
                ));
            }
        }
        self.counters.fetched.inc();
        Ok(())
    }

    /// Replaces `s` with the shared index `idx` of sequence `seq`,
    /// fetching any content it lacks first. Returns the publishing
    /// sequence of the version in force when that changed.
    fn mirror(
        &self,
        w: Which,
        s: &mut Shelf,
        seq: u64,
        mut idx: Index,
    ) -> Result<Option<u64>, String> {
        for d in idx.digests() {
            if !s.holds(&d) {
                self.fetch(w, s, &d)?;
            }
        }
        let before = (s.index.active, s.index.activated_seq);
        idx.shared_seq = seq;
        s.replace(idx)?;
        self.source.saw_seq(s.index.activated_seq);
        Ok((before != (s.index.active, s.index.activated_seq)).then_some(s.index.activated_seq))
    }

    /// Brings shelf `w` up to the shared index now (before a change that
    /// reads this node's copy). A shared store out of reach refuses.
    pub(crate) fn catch_up(&self, w: Which) -> Result<(), Status> {
        let Some(shelf) = self.source.shelf(w) else {
            return Ok(());
        };
        let held = lock(shelf).index.shared_seq;
        self.follow_shelf(w, held, &AtomicBool::new(false))
            .map_err(|e| {
                Status::unavailable(format!(
                    "the shared store of published versions ({}): this node could not bring {} up to it ({e}); a version is stored there once before it is in force on any node, so nothing changed; try again when it is back",
                    self.store.location(),
                    w.name()
                ))
            })
    }

    /// One look at the shared store: every shelf this node is behind on
    /// is brought up to date. Updates the gauges; says at WARN, at most
    /// once a minute, what failed.
    pub fn look(&self, stop: &AtomicBool) {
        let shelves = self.source.shelves();
        let result = self.store.sequences().map_err(|e| e.to_string());
        let store_up = result.is_ok();
        let mut lag = Vec::new();
        let mut failed: Option<String> = None;
        match result {
            Err(e) => failed = Some(e),
            Ok(seqs) => {
                let seqs: HashMap<String, u64> = seqs.into_iter().collect();
                for w in shelves {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    let Some(shelf) = self.source.shelf(w) else {
                        continue;
                    };
                    let name = w.name();
                    let (held, has_versions) = {
                        let s = lock(shelf);
                        (s.index.shared_seq, !s.index.versions.is_empty())
                    };
                    let shared = seqs.get(&name).copied().unwrap_or(0);
                    let r = if shared == 0 {
                        if has_versions {
                            self.seed(w)
                        } else {
                            Ok(())
                        }
                    } else if shared != held {
                        self.follow_shelf(w, held, stop)
                    } else {
                        Ok(())
                    };
                    let now_held = lock(shelf).index.shared_seq;
                    lag.push((name.clone(), shared.saturating_sub(now_held)));
                    if let Err(e) = r {
                        failed = Some(format!("{name}: {e}"));
                    }
                }
            }
        }
        let behind = failed.is_some() || lag.iter().any(|(_, n)| *n > 0);
        if failed.is_some() {
            self.counters.failures.inc();
        }
        if !lag.is_empty() {
            self.metrics.set_versions_lag(lag);
        }
        self.metrics
            .set(Gauge::VersionsStoreUp, i64::from(store_up));
        let mut seen = lock(&self.seen);
        if behind {
            let since = *seen.behind_since.get_or_insert_with(Instant::now);
            self.metrics
                .set(Gauge::VersionsBehindS, since.elapsed().as_secs() as i64);
        } else {
            seen.behind_since = None;
            self.metrics.set(Gauge::VersionsBehindS, 0);
        }
        if let Some(e) = failed {
            if seen
                .warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                seen.warned = Some(Instant::now());
                tracing::warn!(error = %e, store = %self.store.location(), "could not catch up with the shared published versions: this node keeps the versions it has (calls are not affected)");
            }
        }
    }

    /// Seeds the shared shelf `w`, which has no index, with this node's
    /// versions. Another node seeding it first wins: this one then
    /// follows it.
    fn seed(&self, w: Which) -> Result<(), String> {
        let Some(shelf) = self.source.shelf(w) else {
            return Ok(());
        };
        let name = w.name();
        let mut s = lock(shelf);
        let mut idx = s.index.clone();
        idx.shared_seq = 0;
        let named = idx.digests();
        for d in &named {
            self.upload(w, &s, d).map_err(|e| e.message().to_string())?;
        }
        let doc = serde_json::to_string(&idx).map_err(|e| e.to_string())?;
        if self
            .store
            .cas_index(&name, 0, &doc, &named)
            .map_err(|e| e.to_string())?
        {
            idx.shared_seq = 1;
            s.save(idx)?;
            self.counters.changes.inc();
            let _ = self.announce.send((name.clone(), 1));
            tracing::info!(shelf = %name, versions = s.index.versions.len(), in_force = %super::vname(s.index.active), "the shared versions were empty: this node's versions seed them");
        }
        Ok(())
    }

    /// Brings shelf `w`, whose copy is of shared sequence `held`, up to
    /// the shared index (see the module docs).
    fn follow_shelf(&self, w: Which, held: u64, stop: &AtomicBool) -> Result<(), String> {
        let Some(shelf) = self.source.shelf(w) else {
            return Ok(());
        };
        let Some((seq, idx)) = self.read(w).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        if seq == held {
            return Ok(());
        }
        // Contents first, outside the shelf's lock (named by digest, so
        // whoever else keeps the same one keeps the same bytes).
        for d in idx.digests() {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(());
            }
            let s = lock(shelf);
            if s.holds(&d) {
                continue;
            }
            let (f, p) = s.incoming()?;
            drop(s);
            if let Err(e) = self.fetch_into(w, f, &p, &d) {
                let _ = std::fs::remove_file(&p);
                return Err(e);
            }
            lock(shelf).keep(&p, &d)?;
        }
        let (active, aseq) = {
            let s = lock(shelf);
            (s.index.active, s.index.activated_seq)
        };
        let changes_force = (idx.active, idx.activated_seq) != (active, aseq);
        // The version in force built and checked against its digest
        // before this node names it.
        let offer = match (w, idx.active_meta(), changes_force) {
            (Which::List(l), Some(m), true) => {
                let file = lock(shelf).open_content(&m.digest)?;
                let (list, digest) = self.build(l, m, file)?;
                Some((l, m.id, Arc::new(list), digest))
            }
            _ => None,
        };
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let mut s = lock(shelf);
        if s.index.shared_seq != held {
            // Replaced meanwhile (a change made here): looked at again on
            // the next round.
            return Ok(());
        }
        let changed = self.mirror(w, &mut s, seq, idx)?;
        if let Some(aseq) = changed {
            let version = super::vname(s.index.active);
            self.source.changed_now(aseq, w.layers(), offer);
            drop(s);
            self.nudge.notify_one();
            self.counters.applied.inc();
            tracing::info!(shelf = %w.name(), version = %version, shared_seq = seq, "a version put in force on the cluster is offered for force here");
        }
        Ok(())
    }

    /// Builds list `l`'s version `m` from its content and checks it
    /// against its digest.
    fn build(
        &self,
        l: ListId,
        m: &Meta,
        file: std::fs::File,
    ) -> Result<(NumberList, [u8; 16]), String> {
        let name = format!("{l} {} (shared)", m.name());
        let mut b = ListBuilder::new(&self.plan);
        b.reserve(m.exact as usize);
        feed_lines(
            BufReader::with_capacity(1 << 20, file),
            &name,
            &mut b,
            &AtomicBool::new(false),
            Instant::now(),
        )
        .map_err(|e| e.to_string())?;
        let list = b.finish();
        let digest = list_digest(l, &list);
        if Some(digest) != unhex(&m.digest) {
            return Err(format!(
                "{name}: its content from the shared store does not match its digest {}",
                m.digest
            ));
        }
        Ok((list, digest))
    }

    /// Starts the follower: its thread (joined through the handle
    /// returned, after `shutdown`), and, with Redis, the announcements'
    /// listener and sender on the current runtime.
    pub fn start(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        if let Some(url) = &self.follow.redis_url {
            match redis::Client::open(url.as_str()) {
                Ok(client) => {
                    tokio::spawn(listen(
                        client.clone(),
                        self.follow.clone(),
                        wake.clone(),
                        self.counters.clone(),
                        shutdown.clone(),
                    ));
                    if let Some(rx) = lock(&self.announcements).take() {
                        tokio::spawn(announce(
                            client,
                            self.follow.clone(),
                            rx,
                            self.counters.clone(),
                        ));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cluster.redis_url: versions are followed by polling alone")
                }
            }
        }
        let me = self.clone();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let mut sd = shutdown.clone();
            let wake = wake.clone();
            tokio::spawn(async move {
                let _ = sd.changed().await;
                stop.store(true, std::sync::atomic::Ordering::Release);
                let _ = wake.try_send(());
            });
        }
        std::thread::Builder::new()
            .name("kuzet-versions".into())
            .spawn(move || {
                if let Err(e) = kuzet_net::lower_thread_priority(10) {
                    tracing::warn!(error = %e, "could not lower the versions' follower's priority");
                }
                loop {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    me.look(&stop);
                    match woken.recv_timeout(me.follow.poll) {
                        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
    }
}

/// Listens for announcements on Redis and wakes the follower for each;
/// reconnects after a second (doubling to the poll interval) when Redis
/// goes away, and wakes the follower once subscribed again, for what it
/// may have missed.
async fn listen(
    client: redis::Client,
    follow: Follow,
    wake: std::sync::mpsc::SyncSender<()>,
    counters: Arc<VersionCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio_stream::StreamExt;
    let mut backoff = Duration::from_secs(1);
    loop {
        let subscribed = tokio::time::timeout(follow.timeout, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&follow.channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        if let Ok(Ok(mut ps)) = subscribed {
            backoff = Duration::from_secs(1);
            let _ = wake.try_send(());
            let mut messages = ps.on_message();
            loop {
                tokio::select! {
                    m = messages.next() => match m {
                        Some(_) => {
                            counters.messages.inc();
                            let _ = wake.try_send(());
                        }
                        None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(follow.poll.max(Duration::from_secs(1)));
    }
}

/// Announces each change this node made on Redis (one connection, made
/// again after a failure); a failure is counted, and the other nodes find
/// the change by polling.
async fn announce(
    client: redis::Client,
    follow: Follow,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<(String, u64)>,
    counters: Arc<VersionCounters>,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    while let Some((shelf, seq)) = changes.recv().await {
        if conn.is_none() {
            conn = tokio::time::timeout(follow.timeout, client.get_multiplexed_async_connection())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let sent = match conn.as_mut() {
            Some(k) => tokio::time::timeout(
                follow.timeout,
                redis::cmd("PUBLISH")
                    .arg(&follow.channel)
                    .arg(format!("{shelf} {seq}"))
                    .query_async::<i64>(k),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
            None => false,
        };
        if sent {
            counters.announced.inc();
        } else {
            conn = None;
            counters.announce_errors.inc();
        }
    }
}
