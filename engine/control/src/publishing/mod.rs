//! Rule authors publish lists and rules to a running kuzet: the
//! `kuzet.lists.v1` and `kuzet.rules.v1` services, on the control address
//! beside the investigators' API.
//!
//! A published version is one more [`crate::publish::Source`] of the
//! snapshot ([`source::PublishedSource`]); its versions live on shelves
//! in the data directory ([`shelf`]), named by content, and a restart
//! comes back with the ones in force. A list is either fed by files or
//! published, as `[publishing] lists` declares; the config refuses a list
//! that is both.
//!
//! Who may do what is the access gate's ([`crate::gate`]), checked on the
//! server for every call and audited with the version ids: a rule author
//! pushes and stages, and puts in force what blocks no more; a version
//! that blocks more ([`diff::list_blocks_more`], [`diff::rules`]) needs an
//! approver (admin implies it), and with `require_approval` one that is
//! not its author. Compare-and-set: a push names the newest version it
//! expects, an activation the one in force, and loses to whoever got
//! there first.
//!
//! An activation is recorded on the shelf first, then offered to the
//! publisher, which swaps the new layer in alone (a list built while it
//! was checked is not parsed again); the answer comes once calls are
//! scored with it.
//!
//! In a cluster ([`shared`]), every change is made on the shared index
//! first and this node's shelf is its copy: a version published on any
//! node is stored once and put in force on every node.

pub mod backtest;
pub mod diff;
pub mod lists;
pub mod rules;
pub mod shared;
pub mod shelf;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use kuzet_dataplane::SharedLists;
use kuzet_rules::{ListId, ListPolicy, NumberingPlan};
use serde::Deserialize;
use tonic::Status;

use crate::gate::{AccessGate, Credentials, Op, Permission, Principal};
use shelf::{Index, Meta, Shelf};
pub use source::{Nudge, PublishedSource, Which};

/// `[publishing]`: which lists and whether the rules are published, and
/// how versions are approved and kept.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishingConfig {
    /// Lists fed by published versions (`kuzet lists push`) instead of
    /// files. A list named here must name no file in `[lists]`.
    pub lists: Vec<ListId>,
    /// The rules are published (`kuzet rules stage`) instead of read from
    /// `[rules] file`, which must then be unset.
    pub rules: bool,
    /// A version that blocks more is put in force only by an approver who
    /// is not its author.
    pub require_approval: bool,
    /// Versions kept per list (and for the rules), at least; the one in
    /// force, the one before it and the newest are always kept.
    pub keep_versions: usize,
    /// Versions older than this are pruned (same exceptions).
    pub keep_days: u32,
    /// How long an activation waits for the swap before it answers that
    /// the version is recorded but not yet in force.
    pub activate_timeout_s: u64,
    /// The PostgreSQL database (`postgres://user@host:port/db`) that holds
    /// the published versions of a cluster's nodes, with `[cluster]
    /// redis_url` set. Unset: the store's database when the store is
    /// shared, else versions are this node's own.
    pub shared_url: Option<String>,
    /// How often a node looks at the shared versions without an
    /// announcement (a node that missed one, or Redis down).
    pub shared_poll_ms: u64,
    /// A rule version that enforces more than the one in force (a rule
    /// from shadow to enforce, a threshold lowered) is put in force only
    /// with a backtest (`kuzet rules backtest`) over at least this many
    /// hours of the last seven days' calls, or by an admin with
    /// `--without-backtest` (audited). 0 asks for no backtest.
    pub backtest_min_hours: f64,
}

impl Default for PublishingConfig {
    fn default() -> Self {
        PublishingConfig {
            lists: Vec::new(),
            rules: false,
            require_approval: false,
            keep_versions: 20,
            keep_days: 90,
            activate_timeout_s: 120,
            shared_url: None,
            shared_poll_ms: 2_000,
            backtest_min_hours: 24.0,
        }
    }
}

impl PublishingConfig {
    /// Checks the values alone.
    pub fn check(&self) -> Result<(), String> {
        if self.keep_versions < 2 {
            return Err("publishing.keep_versions must be at least 2 (the version in force and the one a rollback restores)".into());
        }
        if self.keep_days == 0 || self.keep_days > 36_500 {
            return Err("publishing.keep_days must be between 1 and 36500".into());
        }
        if self.activate_timeout_s == 0 {
            return Err("publishing.activate_timeout_s must be at least 1".into());
        }
        if let Some(u) = &self.shared_url {
            kuzet_store::pg::shelves::check_url(u)
                .map_err(|e| format!("publishing.shared_url: {e}"))?;
        }
        if !(100..=600_000).contains(&self.shared_poll_ms) {
            return Err("publishing.shared_poll_ms must be between 100 and 600000".into());
        }
        if !(0.0..=168.0).contains(&self.backtest_min_hours) {
            return Err("publishing.backtest_min_hours must be between 0 and 168 (a backtest is looked for in the last seven days)".into());
        }
        let mut seen = Vec::new();
        for l in &self.lists {
            if seen.contains(l) {
                return Err(format!("publishing.lists names {l} twice"));
            }
            seen.push(*l);
        }
        Ok(())
    }

    /// Whether anything is published.
    pub fn any(&self) -> bool {
        self.rules || !self.lists.is_empty()
    }
}

/// The publishing services' operations, as the gate and the audit log
/// name them.
pub mod ops {
    use crate::gate::{Op, Permission};

    /// Push a list version.
    pub const PUSH_LIST: Op = Op {
        action: "PushList",
        needs: Permission::Publish,
    };
    /// Put a list version in force.
    pub const ACTIVATE_LIST: Op = Op {
        action: "ActivateList",
        needs: Permission::Activate,
    };
    /// Put the list version before the one in force back.
    pub const ROLLBACK_LIST: Op = Op {
        action: "RollbackList",
        needs: Permission::Activate,
    };
    /// A list's versions.
    pub const LIST_VERSIONS: Op = Op {
        action: "ListVersions",
        needs: Permission::ReadLists,
    };
    /// Two list versions' difference.
    pub const DIFF_LIST: Op = Op {
        action: "DiffList",
        needs: Permission::ReadLists,
    };
    /// Where a number stands.
    pub const LOOKUP: Op = Op {
        action: "Lookup",
        needs: Permission::ReadLists,
    };
    /// Check a rule file.
    pub const VALIDATE_RULES: Op = Op {
        action: "ValidateRules",
        needs: Permission::Activate,
    };
    /// Store a rule version.
    pub const STAGE_RULES: Op = Op {
        action: "StageRules",
        needs: Permission::Publish,
    };
    /// Put a rule version in force.
    pub const ACTIVATE_RULES: Op = Op {
        action: "ActivateRules",
        needs: Permission::Activate,
    };
    /// Put the rule version before the one in force back.
    pub const ROLLBACK_RULES: Op = Op {
        action: "RollbackRules",
        needs: Permission::Activate,
    };
    /// The rule versions.
    pub const RULE_VERSIONS: Op = Op {
        action: "RuleVersions",
        needs: Permission::ReadLists,
    };
    /// Two rule versions' difference.
    pub const DIFF_RULES: Op = Op {
        action: "DiffRules",
        needs: Permission::ReadLists,
    };
    /// Replay the call journal through candidate rules and lists.
    pub const BACKTEST_RULES: Op = Op {
        action: "BacktestRules",
        needs: Permission::Publish,
    };
    /// Early warnings read from the call journal.
    pub const TRENDS: Op = Op {
        action: "Trends",
        needs: Permission::CountCalls,
    };
}

/// The longest wait for the turn to build a whole list.
pub(crate) const TURN_WAIT: Duration = Duration::from_secs(120);

/// What the publishing services share.
pub struct Publishing {
    pub(crate) source: Arc<PublishedSource>,
    pub(crate) gate: Arc<AccessGate>,
    pub(crate) shared: SharedLists,
    pub(crate) plan: Arc<NumberingPlan>,
    pub(crate) policy: ListPolicy,
    pub(crate) nudge: Nudge,
    pub(crate) cfg: PublishingConfig,
    /// Held by an activation until its swap: one at a time.
    pub(crate) activating: tokio::sync::Mutex<()>,
    /// Held while a whole list is built in memory (a push checked, a
    /// diff's or rollback's version read back): one at a time, so no
    /// number of clients can make kuzet hold more than one extra list.
    heavy: Arc<tokio::sync::Semaphore>,
    /// The National Bank feed's layer, when `[nbank]` is set: a lookup
    /// names the batch it reflects.
    pub(crate) feed: std::sync::OnceLock<Arc<crate::nbfeed::layer::FeedLayer>>,
    /// The cluster's shared versions, when they are shared.
    pub(crate) versions: std::sync::OnceLock<Arc<shared::SharedVersions>>,
    /// The call journal backtests and trends read, when it is kept.
    pub(crate) journal: std::sync::OnceLock<backtest::JournalAccess>,
}

impl Publishing {
    /// Lookups name the feed's batch for the `nb_feed` list.
    pub fn set_feed(&self, layer: Arc<crate::nbfeed::layer::FeedLayer>) {
        let _ = self.feed.set(layer);
    }

    /// Changes go through the cluster's shared versions.
    pub fn set_shared(&self, versions: Arc<shared::SharedVersions>) {
        let _ = self.versions.set(versions);
    }

    /// Brings shelf `w` up to the cluster's versions before a change
    /// reads it (nothing when versions are not shared). Blocks.
    pub(crate) fn catch_up(&self, w: Which) -> Result<(), Status> {
        match self.versions.get() {
            Some(v) => v.catch_up(w),
            None => Ok(()),
        }
    }

    /// The publishing sequence of an activation: this node's next, or the
    /// cluster's when versions are shared. Blocks.
    pub(crate) fn next_seq(&self) -> Result<u64, Status> {
        match self.versions.get() {
            Some(v) => v.next_seq(),
            None => Ok(self.source.next_seq()),
        }
    }

    /// Stores a new content of shelf `w` in the shared store ahead of the
    /// change that names it, outside the shelf's lock (nothing when
    /// versions are not shared). Blocks.
    pub(crate) fn upload(&self, w: Which, file: std::fs::File, digest: &str) -> Result<(), Status> {
        match self.versions.get() {
            Some(v) => v.upload_file(w, file, digest),
            None => Ok(()),
        }
    }

    /// Changes shelf `w`'s index (`s`, locked by the caller) by `edit`,
    /// which checks what it needs against the index it is handed and
    /// changes it: here alone, or, when versions are shared, on the
    /// shared index first ([`shared::SharedVersions::commit`]). Contents
    /// the new index no longer names are removed. Blocks.
    pub(crate) fn commit<T>(
        &self,
        w: Which,
        s: &mut Shelf,
        mut edit: impl FnMut(&mut Index) -> Result<T, Status>,
    ) -> Result<T, Status> {
        if let Some(v) = self.versions.get() {
            return v.commit(w, s, edit);
        }
        let mut idx = s.index.clone();
        let out = edit(&mut idx)?;
        s.replace(idx)
            .map_err(|e| Status::internal(format!("recording a change of {}: {e}", w.name())))?;
        Ok(out)
    }

    /// The services over `source` (the publisher's published source),
    /// writing into nothing themselves: activations go through the
    /// publisher, which `nudge` wakes.
    pub fn new(
        source: Arc<PublishedSource>,
        gate: Arc<AccessGate>,
        shared: SharedLists,
        plan: NumberingPlan,
        policy: ListPolicy,
        nudge: Nudge,
        cfg: PublishingConfig,
    ) -> Arc<Publishing> {
        Arc::new(Publishing {
            source,
            gate,
            shared,
            plan: Arc::new(plan),
            policy,
            nudge,
            cfg,
            activating: tokio::sync::Mutex::new(()),
            heavy: Arc::new(tokio::sync::Semaphore::new(1)),
            feed: std::sync::OnceLock::new(),
            versions: std::sync::OnceLock::new(),
            journal: std::sync::OnceLock::new(),
        })
    }

    /// The published lists' names, for messages (`none` when none is).
    pub(crate) fn published_lists(&self) -> String {
        let v: Vec<&str> = ListId::ALL
            .into_iter()
            .filter(|l| self.source.publishes(*l))
            .map(ListId::name)
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// The turn to build a whole list in memory, waited for (one push,
    /// diff or rollback build at a time); a refusal past [`TURN_WAIT`].
    pub(crate) async fn heavy(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        match tokio::time::timeout(TURN_WAIT, self.heavy.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Status::resource_exhausted(format!(
                "another push, diff or rollback has been building for over {} s (each holds a whole list in memory, one at a time); try again when it ends",
                TURN_WAIT.as_secs()
            ))),
        }
    }

    /// The same turn, waited for, from a blocking thread (an activation
    /// that reads its version back).
    pub(crate) fn heavy_blocking(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::runtime::Handle::current()
            .block_on(self.heavy.clone().acquire_owned())
            .ok()
    }

    /// Prunes `idx` by the configured count and age (see
    /// [`shelf::Index::prune`]); `what` names it in the log.
    pub(crate) fn prune(&self, idx: &mut Index, what: &str) {
        let keep_us = i64::from(self.cfg.keep_days) * 86_400_000_000;
        let d = idx.prune(self.cfg.keep_versions, keep_us, now_us());
        if !d.is_empty() {
            tracing::info!(what, dropped = ?d, "old versions pruned");
        }
    }

    /// The gate.
    pub fn gate(&self) -> &Arc<AccessGate> {
        &self.gate
    }

    /// Refuses `p` unless a version that blocks more may be put in force
    /// by them: an approver (or admin), and with `require_approval` not
    /// its author. `what` names the version for the message.
    pub(crate) fn approve(
        &self,
        p: &Principal,
        author: &str,
        what: &str,
        why: &str,
    ) -> Result<(), Status> {
        if !Permission::Approve.granted_to(p.role) {
            return Err(Status::permission_denied(format!(
                "{what} blocks more than the version in force ({why}): putting it in force needs the role {}",
                Permission::Approve.roles()
            )));
        }
        if self.cfg.require_approval && p.who == author {
            return Err(Status::permission_denied(format!(
                "{what} blocks more than the version in force ({why}), and [publishing] require_approval is on: an approver other than its author ({author}) must put it in force"
            )));
        }
        Ok(())
    }

    /// Waits until the snapshot in force carries publishing sequence
    /// `seq` or later, and names it; past the timeout, says the version is
    /// recorded but not yet in force.
    pub(crate) async fn in_force(&self, seq: u64, what: &str) -> Result<String, Status> {
        self.nudge.notify_one();
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.cfg.activate_timeout_s);
        let mut wait = Duration::from_millis(2);
        loop {
            let set = self.shared.load();
            if set.version.seq >= seq {
                return Ok(set.version.to_string());
            }
            drop(set);
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "{what} is recorded as in force, but the swap has not happened within {} s; kuzet's log says why (a restart puts it in force)",
                    self.cfg.activate_timeout_s
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(50));
        }
    }

    /// Every call's frame: admits `creds` for `op` (a refusal is counted
    /// by the gate and written to the audit log within a second), runs
    /// `work` as the admitted principal, and audits its answer or failure
    /// with `filter` (which the call renames as it learns the version ids)
    /// before it is given: an answer that cannot be audited is not given.
    pub(crate) async fn answer<T, Fut>(
        &self,
        creds: &Credentials,
        op: &Op,
        filter: &Filter,
        work: impl FnOnce(Principal) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: std::future::Future<Output = Result<(T, u64), Status>>,
    {
        answer(&self.gate, creds, op, filter, work).await
    }

    /// Writes that `p` is about to change what is stored or in force
    /// (`op`, named by `filter`), before it does: if the call is then
    /// abandoned (the client gone while it waits for the swap), the audit
    /// log still holds it. A change that cannot be audited is not made.
    pub(crate) async fn starting(
        &self,
        p: &Principal,
        op: &Op,
        filter: &Filter,
    ) -> Result<(), Status> {
        self.gate
            .audit(p, op, &filter.get(), 0, "started")
            .await
            .map_err(Status::from)
    }
}

/// A gRPC call's frame behind `gate` (see [`Publishing::answer`]): admit,
/// work as the principal, audit the answer or the failure before it is
/// given.
pub(crate) async fn answer<T, Fut>(
    gate: &AccessGate,
    creds: &Credentials,
    op: &Op,
    filter: &Filter,
    work: impl FnOnce(Principal) -> Fut,
) -> Result<T, Status>
where
    Fut: std::future::Future<Output = Result<(T, u64), Status>>,
{
    let p = gate.admit(creds, op, &filter.get()).map_err(Status::from)?;
    let r = work(p.clone()).await;
    let (rows, outcome) = match &r {
        Ok((_, n)) => (*n, "ok".to_string()),
        Err(s) => (0, format!("{:?}: {}", s.code(), s.message())),
    };
    gate.audit(&p, op, &filter.get(), rows, &outcome).await?;
    r.map(|(t, _)| t)
}

/// A call's audit filter: what it asked, then what it did (the version
/// ids), as the call learns them.
pub(crate) struct Filter(std::sync::Mutex<String>);

impl Filter {
    /// A filter of `v`.
    pub(crate) fn new(v: serde_json::Value) -> Filter {
        Filter(std::sync::Mutex::new(v.to_string()))
    }

    /// Renames the call.
    pub(crate) fn set(&self, v: serde_json::Value) {
        *source::lock(&self.0) = v.to_string();
    }

    /// The filter now.
    pub(crate) fn get(&self) -> String {
        source::lock(&self.0).clone()
    }
}

/// Microseconds since the epoch.
pub(crate) fn now_us() -> i64 {
    kuzet_dataplane::handler::evidence::unix_us()
}

/// A version's id as the API writes it (`v7`; empty for none).
pub(crate) fn vname(id: Option<u64>) -> String {
    id.map_or_else(String::new, |i| format!("v{i}"))
}

/// An optional version field (`expect`, a diff's `from`): `None` when
/// empty; `Some(0)` for `v0`. `what` names the field in the error.
pub(crate) fn maybe_id(s: &str, what: &str) -> Result<Option<u64>, Status> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    shelf::parse_id(s).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{what} {s:?} is not a version id (v7, or v0 for none)"
        ))
    })
}

/// An `expect` field (see [`maybe_id`]).
pub(crate) fn expect(s: &str) -> Result<Option<u64>, Status> {
    maybe_id(s, "expect")
}

/// A version id field, which must be set.
pub(crate) fn version_id(s: &str) -> Result<u64, Status> {
    shelf::parse_id(s)
        .filter(|i| *i > 0)
        .ok_or_else(|| Status::invalid_argument(format!("{s:?} is not a version id (v7)")))
}

/// Refuses a compare-and-set that lost.
pub(crate) fn check_expect(
    expected: Option<u64>,
    actual: Option<&Meta>,
    what: &str,
) -> Result<(), Status> {
    let Some(e) = expected else {
        return Ok(());
    };
    let now = actual.map_or(0, |m| m.id);
    if e == now {
        return Ok(());
    }
    Err(Status::aborted(match actual {
        Some(m) => format!(
            "{what} is v{now} (by {}, {}), not v{e} as expected: it got there first; look at it and try again",
            m.author,
            if m.activated_by.is_empty() { "pushed".to_string() } else { format!("put in force by {}", m.activated_by) }
        ),
        None => format!("{what} is none yet, not v{e} as expected"),
    }))
}

pub(crate) use crate::access::{hex, unhex};

/// Runs a whole list's work (a push parsed and built, a version read
/// back, two lists compared) on a thread of its own in the idle
/// scheduling class: a SIP worker that wakes takes the core at once, so
/// building 10M entries beside the call path costs calls next to nothing
/// (at nice 10 a worker could wait out the builder's slice). Falls back
/// to the caller's priority where the class is refused.
pub(crate) async fn idle<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    spawn_idle(what, f)?
        .await
        .map_err(|_| Status::internal(format!("the {what} thread failed")))?
}

/// [`idle`], started now: the answer arrives on the receiver.
pub(crate) fn spawn_idle<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<tokio::sync::oneshot::Receiver<T>, Status> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(format!("kuzet-{what}"))
        .spawn(move || {
            if let Err(e) = kuzet_net::idle_thread_policy() {
                tracing::debug!(error = %e, "no idle scheduling class for {what}");
            }
            // The work may wait on the runtime (a push's chunks, a
            // diff's reader, the turn to build).
            let _rt = rt.enter();
            let _ = tx.send(f());
        })
        .map_err(|e| Status::internal(format!("no thread for {what}: {e}")))?;
    Ok(rx)
}

/// Runs blocking shelf work off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("the publishing task failed: {e}")))?
}
