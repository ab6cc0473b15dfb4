//! One leader per singleton: with `[cluster]` on and a store every node
//! shares, the work that must be done once for the whole cluster (the
//! National Bank feed's puller, its case clock, its report outbox, the
//! register outbox) runs on one node at a time, the holder of that
//! singleton's lease in Redis.
//!
//! - [`keeper`]: the lease on Redis: won with a fencing token, renewed,
//!   given up, and the store told of the new token before the node leads.
//! - [`singleton`]: runs a task while this node leads its lease (or, for
//!   a follower's work, while it does not), and stops it when that ends.
//! - [`fenced`]: the store's ports as a singleton sees them: every call
//!   checks first that this node still leads, and a write the store
//!   refuses as fenced ends its lead.
//!
//! **The safety argument.** A lease is a key `{prefix}:lease:{name}`
//! (the braces are Redis Cluster's hash tag: every key of a kuzet
//! cluster in one slot) holding `"{node} {token}"` that Redis deletes
//! `lease_ms` after it was last set or renewed. The token comes from
//! `INCR {prefix}:lease:{name}:token` (never below Redis's clock in
//! milliseconds) in the same script that sets the key, so each holder's
//! token is higher than every earlier holder's. A holder
//! reads the monotonic clock *before* it sends each request that sets or
//! renews the key; Redis sets the expiry after that, so the key cannot
//! expire before that instant plus `lease_ms` (clocks running at the same
//! rate). The holder stops acting at that instant plus `lease_ms` less a
//! margin (a tenth of it, for the clocks' rates), whether or not its
//! keeper ran since: [`Lease::check`] compares the monotonic clock with
//! that deadline on every call a singleton makes to the store, so a
//! process that was paused (SIGSTOP, a stalled VM, a blocked thread)
//! finds on waking that it no longer leads before it writes anything. No
//! other node can win the key before it expires, so two nodes never act
//! at once as long as clocks run at rates within the margin.
//!
//! What the clock cannot cover (a write already on its way when the
//! deadline passes, a pause between the check and the write, a Redis
//! that lost its keys on a restart) the fencing token does: the new
//! holder writes its token to the shared store before it leads
//! ([`Claim`], the store's `fence_claim`), the store refuses every write
//! carrying a lower one ([`kuzet_store::StoreError::Fenced`]), and a
//! singleton that sees that refusal stops at once. A Redis that lost its
//! data starts its counter again, but from its clock, above every token
//! handed out before; should a token still come out at or below one the
//! store has seen (a clock set back), the claim is refused with the
//! store's highest, and the keeper raises Redis's counter past it and
//! tries again. A Redis Cluster's failover is such a loss at worst: the
//! replica that takes over may lack the master's last writes (a lease
//! won or renewed, a token counted), as Redis replicates asynchronously;
//! the lease key's expiry, an absolute time, goes over as it is.
//!
//! Without `[cluster]`, or with a store of the node's own, there are no
//! leases ([`Leases::for_cluster`] gives none) and every singleton runs
//! on its node as it always did.

pub mod fenced;
pub mod keeper;
pub mod singleton;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kuzet_dataplane::metrics::{CounterSet, Metrics, Tally};
use kuzet_store::pg::Fence;
use kuzet_store::StoreError;
use tokio::sync::{watch, Notify};

use crate::cluster::link::{Client, Endpoint};
use crate::cluster::ClusterConfig;

/// The work done once for the whole cluster, one lease each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Singleton {
    /// The National Bank feed's puller (the feed and the alerts).
    NbankFeed,
    /// The Centre's case clock: the cases' deadlines and gauges.
    NbankCases,
    /// The Centre's report outbox.
    NbankReports,
    /// The register's outbox.
    RegisterOutbox,
}

impl Singleton {
    /// Every singleton, in the order metrics and `kuzet nodes` list them.
    pub const ALL: [Singleton; 4] = [
        Singleton::NbankFeed,
        Singleton::NbankCases,
        Singleton::NbankReports,
        Singleton::RegisterOutbox,
    ];

    /// The lease's name, in Redis keys, logs, metrics and the store's
    /// fences.
    pub const fn name(self) -> &'static str {
        match self {
            Singleton::NbankFeed => "nbank-feed",
            Singleton::NbankCases => "nbank-cases",
            Singleton::NbankReports => "nbank-reports",
            Singleton::RegisterOutbox => "register-outbox",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The Redis key of `name`'s lease under `prefix`: `{prefix}:lease:{name}`.
pub fn lease_key(prefix: &str, name: &str) -> String {
    format!("{}:lease:{name}", crate::cluster::tag(prefix))
}

/// The Redis key of `name`'s token counter under `prefix`:
/// `{prefix}:lease:{name}:token`.
pub fn token_key(prefix: &str, name: &str) -> String {
    format!("{}:lease:{name}:token", crate::cluster::tag(prefix))
}

/// A lease's holder and token as its key in Redis holds them.
pub fn parse_holder(value: &str) -> Option<(&str, u64)> {
    let (node, token) = value.rsplit_once(' ')?;
    Some((node, token.parse().ok()?))
}

/// How the leases are kept.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The cluster's Redis: one instance or a Redis Cluster.
    pub redis: Endpoint,
    /// The key prefix (`[cluster] key_prefix`).
    pub prefix: String,
    /// This node's name, written into the leases it holds.
    pub node: String,
    /// How long a lease lasts unrenewed.
    pub lease: Duration,
    /// Deadline of each Redis request (at most a third of `lease`).
    pub timeout: Duration,
}

impl Settings {
    /// From `[cluster]`, for node `node`; none when the section names
    /// no Redis.
    pub fn of(cfg: &ClusterConfig, node: &str) -> Option<Settings> {
        Some(Settings {
            redis: cfg.endpoint()?,
            prefix: cfg.key_prefix.clone(),
            node: node.to_string(),
            lease: Duration::from_millis(cfg.lease_ms),
            timeout: Duration::from_millis(cfg.timeout_ms),
        })
    }

    /// How often a holder renews, and a follower tries to win: a third
    /// of the lease.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// How long before the lease could expire on Redis a holder that has
    /// not renewed stops acting: a tenth of the lease, for clocks that
    /// run at slightly different rates.
    pub fn margin(&self) -> Duration {
        self.lease / 10
    }
}

/// What a node does to the shared store on winning a lease, before it
/// leads: records the fence's token as the highest seen (the store's
/// `fence_claim`), so a former holder's writes are refused from then on.
/// Called on a blocking thread.
pub type Claim = Arc<dyn Fn(&Fence) -> Result<(), StoreError> + Send + Sync>;

/// A claim that records nothing: for a store that has no fences.
pub fn no_claim() -> Claim {
    Arc::new(|_| Ok(()))
}

/// Where a lease stands on this node.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    /// The token won (0: none).
    token: u64,
    /// Until when the holder may act: the start of its last good renewal
    /// plus the lease, less the margin.
    until: Option<Instant>,
    /// The store took the claim: the node leads.
    leading: bool,
}

/// One singleton's lease on this node: its fence (the token the store
/// checks), whether the node leads it and until when, and a channel that
/// says when that changes.
pub struct Lease {
    which: Singleton,
    fence: Arc<Fence>,
    held: Mutex<Held>,
    leader: watch::Sender<Option<u64>>,
    /// Wakes the keeper when the lead ends outside it (the clock, a
    /// fenced write), so it gives up the key in Redis at once.
    kick: Notify,
    kept: AtomicBool,
    shared: Arc<Shared>,
}

/// What the leases of a node share.
struct Shared {
    settings: Settings,
    client: Client,
    claim: Claim,
    counters: Arc<LeaseCounters>,
    redis_errors: Arc<crate::cluster::ClusterCounters>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name())
            .field("leader", &*self.leader.borrow())
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The lease's name.
    pub fn name(&self) -> &'static str {
        self.which.name()
    }

    /// Which singleton it is for.
    pub fn singleton(&self) -> Singleton {
        self.which
    }

    /// The fence the shared store checks this singleton's writes against.
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    /// How the lease is kept.
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token this node leads with, if it leads now: checked against
    /// the monotonic clock, so a lead whose time ran out (the keeper could
    /// not renew, or the process was paused) ends here, its fence released,
    /// before the caller acts. Every unit of a singleton's work asks
    /// first.
    pub fn check(&self) -> Result<u64, StoreError> {
        let mut h = self.held();
        match (h.leading, h.until) {
            (true, Some(until)) if Instant::now() < until => Ok(h.token),
            (true, _) => {
                let token = h.token;
                self.end(&mut h, "its lease ran out before it could renew it (Redis unreachable or slow, or this process was paused)");
                Err(self.refusal(token))
            }
            (false, _) => Err(self.refusal(0)),
        }
    }

    /// Whether this node leads now (see [`check`](Lease::check)).
    pub fn is_leader(&self) -> bool {
        self.check().is_ok()
    }

    /// The refusal a singleton gets from a store call it may no longer
    /// make.
    fn refusal(&self, token: u64) -> StoreError {
        StoreError::Fenced {
            at: format!("{} (not the holder)", self.shared.settings.node),
            name: self.name().to_string(),
            token,
            seen: 0,
        }
    }

    /// The store refused a write of this singleton as fenced: another
    /// node leads with a higher token. Counted, said at WARN, and the lead
    /// ends, unless the refused token is not the one held now (a write of
    /// an earlier lead that ended late).
    pub fn fenced(&self, e: &StoreError) {
        self.shared.counters.fenced.inc();
        let mut h = self.held();
        let refused = match e {
            StoreError::Fenced { token, .. } => *token,
            _ => h.token,
        };
        if h.token == 0 || refused != h.token {
            return;
        }
        tracing::warn!(lease = self.name(), error = %e, "the store refused a write of this node's: another node leads now; it stops until it wins the lease again");
        self.end(&mut h, "the store refused its token");
    }

    /// Ends the lead (or the attempt at one) under the lock: the fence
    /// first, so no write goes out with the token from here on.
    fn end(&self, h: &mut Held, why: &str) {
        self.end_as(h, why, true);
    }

    /// As [`end`](Lease::end); `lost` false for a lead given up at
    /// shutdown (said at INFO, not counted as lost).
    fn end_as(&self, h: &mut Held, why: &str, lost: bool) {
        self.fence.release();
        let was_leading = h.leading;
        let token = h.token;
        *h = Held::default();
        let c = &self.shared.counters;
        c.gauges[self.which.index()].set(false, 0);
        if was_leading && lost {
            c.lost.inc();
            tracing::warn!(lease = self.name(), token, why, "this node no longer leads");
        } else if was_leading {
            tracing::info!(
                lease = self.name(),
                token,
                why,
                "this node gives up its lead"
            );
        }
        self.leader.send_replace(None);
        self.kick.notify_one();
    }

    /// The keeper won the key with `token`, valid until `until`: the
    /// fence holds it (the claim writes with it), not yet leading.
    fn won(&self, token: u64, until: Instant) {
        let mut h = self.held();
        self.fence.hold(token);
        *h = Held {
            token,
            until: Some(until),
            leading: false,
        };
    }

    /// The store took the claim of `token`: the node leads, unless the
    /// time ran out meanwhile. False when it does not lead.
    fn lead(&self, token: u64) -> bool {
        let mut h = self.held();
        if h.token != token || h.until.is_none_or(|u| Instant::now() >= u) {
            if h.token == token {
                self.end(&mut h, "the store's claim took longer than the lease");
            }
            return false;
        }
        h.leading = true;
        let c = &self.shared.counters;
        c.acquired.inc();
        c.gauges[self.which.index()].set(true, token);
        tracing::info!(lease = self.name(), token, "this node leads");
        self.leader.send_replace(Some(token));
        true
    }

    /// A renewal that started at `started` went through: the lead lasts
    /// from then. False when the lead ended meanwhile (the clock got
    /// there first).
    fn renewed(&self, token: u64, started: Instant) -> bool {
        let mut h = self.held();
        if h.token != token {
            return false;
        }
        let until = started + self.shared.settings.lease - self.shared.settings.margin();
        match h.until {
            Some(u) if Instant::now() < u => {
                h.until = Some(until.max(u));
                true
            }
            _ => {
                self.end(&mut h, "its lease ran out before it could renew it");
                false
            }
        }
    }

    /// Ends the lead with `token` (if it is still the one held).
    fn lose(&self, token: u64, why: &str) {
        let mut h = self.held();
        if h.token == token && token != 0 {
            self.end(&mut h, why);
        }
    }

    /// Ends whatever lead (or attempt at one) this node has.
    fn abandon(&self, why: &str) {
        let mut h = self.held();
        if h.token != 0 {
            self.end(&mut h, why);
        }
    }

    /// Gives up the lead with `token` at shutdown.
    fn give_up(&self, token: u64) {
        let mut h = self.held();
        if h.token == token && token != 0 {
            self.end_as(&mut h, "this node is shutting down", false);
        }
    }

    /// The token won and its deadline, if any (leading or claiming).
    fn holding(&self) -> Option<(u64, Instant)> {
        let h = self.held();
        Some((h.token, h.until?)).filter(|(t, _)| *t != 0)
    }

    /// Waits until this node leads the lease; `None` at shutdown.
    pub async fn wait_leader(
        self: &Arc<Self>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Term> {
        let mut rx = self.leader.subscribe();
        loop {
            if *shutdown.borrow() {
                return None;
            }
            let now = *rx.borrow_and_update();
            if let Some(token) = now {
                if matches!(self.check(), Ok(t) if t == token) {
                    return Some(Term {
                        lease: self.clone(),
                        token,
                        rx,
                    });
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return None },
                r = shutdown.changed() => if r.is_err() { return None },
            }
        }
    }

    /// Waits until this node does not lead the lease; false at shutdown.
    pub async fn wait_follower(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut rx = self.leader.subscribe();
        loop {
            if *shutdown.borrow() {
                return false;
            }
            if rx.borrow_and_update().is_none() || !self.is_leader() {
                return true;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return false },
                r = shutdown.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Starts the lease's keeper on the current runtime, once: the node
    /// competes for the lease from then until `shutdown`. Also marks the
    /// lease as kept here (its `configured` gauge).
    pub fn keep(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        if self.kept.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.counters.gauges[self.which.index()]
            .configured
            .store(true, Ordering::Relaxed);
        let lease = self.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::spawn(keeper::run(lease.clone(), shutdown.clone())).await;
                if *shutdown.borrow() {
                    return;
                }
                match r {
                    Err(e) if e.is_panic() => {
                        // A bug: the lead ends now (nothing renews it), and
                        // the keeper starts again from nothing.
                        tracing::error!(
                            lease = lease.name(),
                            "the lease's keeper panicked (a bug); started again in a second"
                        );
                        lease.abandon("its keeper panicked");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    _ => return,
                }
            }
        });
    }
}

/// One term of this node's lead: from winning the lease to losing it.
pub struct Term {
    lease: Arc<Lease>,
    token: u64,
    rx: watch::Receiver<Option<u64>>,
}

impl Term {
    /// The fencing token of the term.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the term still goes on (see [`Lease::check`]).
    pub fn check(&self) -> bool {
        matches!(self.lease.check(), Ok(t) if t == self.token)
    }

    /// Resolves when the term ends: the lease lost, lapsed or refused.
    pub async fn lost(&mut self) {
        let token = self.token;
        let _ = self.rx.wait_for(|v| *v != Some(token)).await;
    }
}

/// The four singletons' fences, made before the shared store opens (it
/// checks every singleton's write against its fence) and handed to the
/// leases with the store's claim ([`SharedStore`]).
#[derive(Debug)]
pub struct Fences([Arc<Fence>; 4]);

impl Default for Fences {
    fn default() -> Self {
        Fences(Singleton::ALL.map(|s| Arc::new(Fence::new(s.name()))))
    }
}

impl Fences {
    /// A fence per singleton, none held.
    pub fn new() -> Fences {
        Fences::default()
    }

    /// The fence of `s`.
    pub fn get(&self, s: Singleton) -> Arc<Fence> {
        self.0[s.index()].clone()
    }
}

/// A store every node of the cluster shares, as the leases need it: the
/// fences its singletons' writes are checked against, and its claim.
pub struct SharedStore {
    /// The fences the store checks.
    pub fences: Fences,
    /// The store's `fence_claim`.
    pub claim: Claim,
}

/// The four leases of this node (see the module docs).
pub struct Leases {
    leases: [Arc<Lease>; 4],
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.leases.iter()).finish()
    }
}

impl Leases {
    /// The leases of a node of the cluster `cfg`, or none: only with
    /// `[cluster]` on and a store every node shares (`shared`); without
    /// either, every singleton runs on every node as it always did.
    pub fn for_cluster(
        cfg: &ClusterConfig,
        node: &str,
        shared: Option<SharedStore>,
        metrics: &Metrics,
    ) -> Result<Option<Arc<Leases>>, String> {
        match (shared, Settings::of(cfg, node)) {
            (Some(shared), Some(settings)) => Leases::new(settings, shared, metrics).map(Some),
            _ => Ok(None),
        }
    }

    /// The leases kept as `settings` says, on `shared`'s fences.
    pub fn new(
        settings: Settings,
        shared: SharedStore,
        metrics: &Metrics,
    ) -> Result<Arc<Leases>, String> {
        let client = Client::open(&settings.redis, settings.timeout).map_err(|e| {
            let key = if settings.redis.is_cluster() {
                "cluster.redis_cluster_urls"
            } else {
                "cluster.redis_url"
            };
            format!("{key}: {e}")
        })?;
        let SharedStore { fences, claim } = shared;
        let common = Arc::new(Shared {
            settings,
            client,
            claim,
            counters: metrics.counter_set::<LeaseCounters>(),
            redis_errors: metrics.counter_set::<crate::cluster::ClusterCounters>(),
        });
        let lease = |which: Singleton| {
            Arc::new(Lease {
                which,
                fence: fences.get(which),
                held: Mutex::new(Held::default()),
                leader: watch::channel(None).0,
                kick: Notify::new(),
                kept: AtomicBool::new(false),
                shared: common.clone(),
            })
        };
        Ok(Arc::new(Leases {
            leases: Singleton::ALL.map(lease),
        }))
    }

    /// The lease of `s`.
    pub fn get(&self, s: Singleton) -> Arc<Lease> {
        self.leases[s.index()].clone()
    }

    /// The fence of `s`.
    pub fn fence(&self, s: Singleton) -> Arc<Fence> {
        self.leases[s.index()].fence.clone()
    }
}

/// One lease's gauges.
#[derive(Debug, Default)]
pub struct LeaseGauges {
    /// This node competes for the lease.
    configured: AtomicBool,
    /// This node leads it.
    held: AtomicBool,
    /// The token it leads with (0: none).
    token: AtomicU64,
}

impl LeaseGauges {
    fn set(&self, held: bool, token: u64) {
        self.held.store(held, Ordering::Relaxed);
        self.token.store(token, Ordering::Relaxed);
    }
}

/// The leases' counters (every lease together) and each lease's gauges,
/// which `/metrics` shows by lease.
#[derive(Debug, Default)]
pub struct LeaseCounters {
    /// `lease_acquired_total`.
    pub acquired: Tally,
    /// `lease_lost_total`.
    pub lost: Tally,
    /// `lease_fenced_total`.
    pub fenced: Tally,
    gauges: [LeaseGauges; 4],
}

impl CounterSet for LeaseCounters {
    fn visit(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        f(
            "lease_acquired_total",
            "Singleton leases this node won and led (the store took its fencing token)",
            self.acquired.get(),
        );
        f(
            "lease_lost_total",
            "Singleton leads this node lost: not renewed in time, taken over, or its token refused",
            self.lost.get(),
        );
        f(
            "lease_fenced_total",
            "Writes of a singleton the store refused because another node leads it with a higher fencing token",
            self.fenced.get(),
        );
    }
}

/// One lease as `/metrics` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease's name.
    pub name: &'static str,
    /// This node competes for it.
    pub configured: bool,
    /// This node leads it.
    pub held: bool,
    /// The token it leads with (0: none).
    pub token: u64,
}

impl LeaseCounters {
    /// Every lease's gauges, in [`Singleton::ALL`]'s order.
    pub fn states(&self) -> Vec<LeaseState> {
        Singleton::ALL
            .iter()
            .map(|s| {
                let g = &self.gauges[s.index()];
                LeaseState {
                    name: s.name(),
                    configured: g.configured.load(Ordering::Relaxed),
                    held: g.held.load(Ordering::Relaxed),
                    token: g.token.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}
