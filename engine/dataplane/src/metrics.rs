//! Counters, gauges, per-rule hit counts and the service-time histograms.
//!
//! Counters are plain relaxed atomics named `*_total`; no label ever holds a
//! phone number or Call-ID (rule ids and list names are the only labels,
//! both from the operator's own files). The call path's own counters are
//! [`Counter`], an indexed array; every other part of kuzet declares its
//! counters where it counts them, as a [`CounterSet`] made with
//! [`counter_set!`], and the binary registers each set with [`Metrics`]
//! once at start-up, so the log line, the shutdown summary and `/metrics`
//! show them all without this file naming them. Service time and its
//! stages go into HDR histograms: each worker records into its own and
//! merges them into the shared ones now and then, so the call path never
//! waits on a lock held by a scrape. The control plane reads all of it
//! for logs and for `/metrics`.

use std::any::Any;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;
use kuzet_rules::ruleset::Mode as RuleMode;
use kuzet_rules::snapshot::ListSet;

macro_rules! counters {
    ($($name:ident => $text:literal, $help:literal,)*) => {
        /// The call path's counters (the data plane increments each of
        /// them); each variant's name in metrics and logs is the string
        /// beside it below. A counter only another part of kuzet
        /// increments belongs in that part's [`CounterSet`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types, missing_docs)]
        pub enum Counter { $($name,)* }

        const NAMES: &[&str] = &[$($text,)*];
        const HELP: &[&str] = &[$($help,)*];
    };
}

counters! {
    Requests => "sip_requests_total", "SIP requests received",
    Responses => "sip_responses_total", "SIP responses received",
    Invites => "invites_total", "INVITEs judged (retransmissions excluded)",
    InviteRetransmissions => "invite_retransmissions_total", "INVITE retransmissions answered with the verdict already given",
    TransactionReused => "invite_transaction_reused_total", "INVITEs that reused a judged INVITE's Call-ID, CSeq and branch but were not the same request (judged on their own)",
    TransactionsUntracked => "transactions_untracked_total", "INVITEs whose transaction could not be remembered (table full)",
    Allowed => "verdict_allow_total", "Calls allowed",
    Flagged => "verdict_flag_total", "Calls flagged",
    Blocked => "verdict_block_total", "Calls blocked",
    Redirected => "verdict_redirect_total", "Calls redirected",
    ShadowDiffers => "rules_shadow_differs_total", "Calls where shadow rules would have decided otherwise",
    VerdictLogDropped => "verdict_log_dropped_total", "Verdicts not logged because the verdict queue was full",
    StoreDropped => "store_dropped_total", "Intercepted-call records lost: the record queue full, or not written to the store",
    VerdictIdsWithheld => "verdict_ids_withheld_total", "Blocks and redirects answered without a verdict id because the record queue had no room (not recorded)",
    StoreSamplesSkipped => "store_samples_skipped_total", "Allowed calls not sampled because the store is over its size limit",
    StoreLowValueRefused => "store_low_value_refused_total", "Flags and shadow verdicts not recorded because the store is over its size limit",
    Outcomes => "outcome_events_total", "Call outcome events accepted",
    OutcomesRefused => "outcome_events_refused_total", "Call outcome events refused (not authorized)",
    OutcomesIgnored => "outcome_events_unknown_caller_total", "Call outcome events for callers kuzet has not seen",
    FailOpenOverload => "failopen_overload_total", "Calls let through unscored because they waited past the budget",
    FailOpenInternal => "failopen_internal_total", "Calls let through unscored because of an internal fault",
    Unparseable => "sip_unparseable_total", "Datagrams or messages that are not SIP",
    BadRequests => "sip_bad_request_total", "SIP requests refused as malformed",
    Forwarded => "proxy_forwarded_total", "Requests forwarded in proxy mode",
    ForgedHeadersRemoved => "proxy_foreign_kuzet_headers_removed_total", "X-Kuzet headers from outside removed before forwarding",
    ResponsesRouted => "proxy_responses_routed_total", "Responses relayed in proxy mode",
    InDialogForwarded => "proxy_in_dialog_forwarded_total", "Requests inside a dialog (ACK, re-INVITE, BYE) routed in proxy mode, never scored",
    RoutesRemoved => "proxy_routes_removed_total", "Route headers naming kuzet removed from requests it routed",
    CallsUntracked => "proxy_calls_untracked_total", "Calls proxy mode could not follow because its call table was full (max_tracked_numbers)",
    AnswersDropped => "answered_events_dropped_total", "Answered calls not handed to the National Bank reports because their queue was full",
    JournalDropped => "journal_dropped_total", "Calls and outcomes not handed to the call journal because its queue was full",
    ResponsesDropped => "sip_responses_dropped_total", "Responses dropped (no route back)",
    AcksAbsorbed => "acks_absorbed_total", "ACKs for kuzet's own final answers",
    UnknownSource => "unknown_source_total", "Requests from sources no trunk covers",
    SendErrors => "send_errors_total", "Datagrams or messages that could not be sent",
    RepliesTooBig => "replies_too_big_total", "Answers cut to fit a datagram, or answered 513",
    TcpConnections => "tcp_connections_total", "TCP connections accepted",
    TcpRefused => "tcp_refused_total", "TCP connections refused at the connection limit",
    TcpClosedBadInput => "tcp_closed_bad_input_total", "TCP connections closed for bad input",
    TcpRefusedPerSource => "tcp_refused_per_source_total", "TCP connections refused at the per-source limit",
    TcpClosedSlowMessage => "tcp_closed_slow_message_total", "TCP connections closed for a message not completed in time",
    TcpClosedNotReading => "tcp_closed_not_reading_total", "TCP connections closed because the peer did not read",
    WorkerPanics => "worker_panics_total", "Worker panics caught (each is a bug)",
    CallsExpired => "proxy_calls_expired_total", "Calls in progress forgotten after the longest call time",
    HepQueueDropped => "hep_queue_dropped_total", "Plain allows not sent to HEP because the verdict queue was full",
}

/// One counter of a [`CounterSet`]: a relaxed atomic, so adding to it is
/// one instruction from any thread and never a lock.
#[derive(Debug, Default)]
pub struct Tally(AtomicU64);

impl Tally {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A group of counters that one crate or feature owns and increments
/// itself: the reloads, the recorder, the register, HEP. Declared with
/// [`counter_set!`] where it is counted, and registered with
/// [`Metrics::register`] (or [`Metrics::counter_set`]), so every report of
/// the counters includes it while nothing in the data plane names it.
pub trait CounterSet: Send + Sync + 'static {
    /// Every counter of the set, in the order declared: its metric name
    /// (`*_total`), its help text and its value.
    fn visit(&self, f: &mut dyn FnMut(&'static str, &'static str, u64));
}

/// Declares a [`CounterSet`]: a struct with one public [`Tally`] per
/// counter, each with its metric name and help text, and the trait's
/// `visit` over them in the order written.
///
/// ```
/// kuzet_dataplane::counter_set! {
///     /// What the widget counts.
///     pub struct WidgetCounters {
///         spun => "widget_spins_total", "Widgets spun",
///         jammed => "widget_jams_total", "Widgets that jammed",
///     }
/// }
/// let c = WidgetCounters::default();
/// c.spun.inc();
/// c.jammed.add(2);
/// assert_eq!((c.spun.get(), c.jammed.get()), (1, 2));
/// ```
#[macro_export]
macro_rules! counter_set {
    (
        $(#[$meta:meta])*
        $vis:vis struct $ty:ident {
            $($field:ident => $name:literal, $help:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $ty {
            $(
                #[doc = concat!("`", $name, "`: ", $help, ".")]
                pub $field: $crate::metrics::Tally,
            )*
        }

        impl $crate::metrics::CounterSet for $ty {
            fn visit(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
                $(f($name, $help, self.$field.get());)*
            }
        }
    };
}

pub use crate::counter_set;

/// A counter set was refused: one of its names is already taken (by the
/// call path's counters, a set registered before, or twice in the set).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("counter {0} is declared twice; the counter set that repeats it is not registered")]
pub struct DuplicateCounter(pub &'static str);

/// A registered set, kept twice: to visit, and to hand back by type.
struct Registered {
    set: Arc<dyn CounterSet>,
    any: Arc<dyn Any + Send + Sync>,
}

/// Values that go up and down, set by whoever owns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Gauge {
    StoreWritable,
    /// 1 when the store is one every node shares (PostgreSQL): its
    /// failure is every node's, so it makes no node unready while the
    /// record queue holds what it does not take.
    StoreShared,
    OutboxPending,
    OutboxDeadLetters,
    TcpConnections,
    ListsGeneration,
    ListsLoadedUnix,
    SocketsBound,
    /// 0: the store is within its size limit; 1: over it, sampled allows
    /// are skipped; 2: still over, low-value records are refused.
    StorePressure,
    /// 1 while records are being lost in most of the last seconds.
    RecordLossSustained,
    /// Calls proxy mode follows now (set each stats interval).
    CallsInProgress,
    /// 1 when the National Bank feed is configured (`[nbank] url`).
    NbankOn,
    /// Unix time of the feed's last good fetch (0: none since start).
    NbankLastOkUnix,
    /// 1 while the feed is staler than `[nbank] stale_after_s`.
    NbankStale,
    /// The feed batch sequence the layer reflects.
    NbankSeq,
    /// The Centre's cases still open.
    CasesOpen,
    /// Open cases due within `[nbank] case_warn_s`.
    CasesDueSoon,
    /// Open cases past their deadline.
    CasesOverdue,
    /// Reports waiting for delivery to the Centre.
    CentrePending,
    /// Reports the Centre refused.
    CentreDeadLetters,
    /// Unix time the oldest report still waiting was queued (0: none).
    CentreOldestPendingUnix,
    /// 1 while a report has waited longer than `[nbank] victim_delay_s`.
    CentreLate,
    /// 1 when the node shares its counts (`[cluster] redis_url` or
    /// `redis_cluster_urls`).
    ClusterOn,
    /// 1 when the last exchange with Redis went through.
    ClusterRedisUp,
    /// Age of the newest other node's delta merged, at its merge (ms).
    ClusterLagMs,
    /// 1 when published versions are shared by the cluster's nodes.
    VersionsShared,
    /// 1 when the last look at the shared versions went through.
    VersionsStoreUp,
    /// 1 when the call journal is written.
    JournalOn,
    /// Bytes of the call journal's closed files.
    JournalBytes,
    /// Seconds the call journal's writing has been failing (0: it is not).
    JournalFailingS,
    /// 1 while the call journal's queue dropped entries in most of the
    /// last 10 seconds.
    JournalDropping,
    /// Surging ranges and trunks the last trends read found.
    TrendSurges,
    /// Slow SIM boxes it found.
    TrendSlowSimboxes,
    /// Groups of callers with one cadence it found.
    TrendGroups,
    /// When the last trends read ended, Unix seconds (0: none yet).
    TrendLastRunUnix,
    /// How long it took, ms.
    TrendLastRunMs,
    /// Seconds this node has been behind the shared versions (0: it holds
    /// every change, or they are not shared).
    /// The last variant: `GAUGES` counts up to it.
    VersionsBehindS,
}

/// How many gauges there are: one past the last variant, so a gauge added
/// before it grows the array with it (one added after it must take its
/// place here).
const GAUGES: usize = Gauge::VersionsBehindS as usize + 1;

/// The stages of a request's service time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// From the kernel's arrival stamp to the worker reading it.
    Queue = 0,
    /// Parsing, lists, rules and the answer built (per batch).
    Handle = 1,
    /// The send system call (per batch).
    Send = 2,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 3] = [Stage::Queue, Stage::Handle, Stage::Send];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Handle => "handle",
            Stage::Send => "send",
        }
    }
}

/// Service time (kernel arrival to answer sent) and its stages, in µs.
#[derive(Clone)]
pub struct Latencies {
    /// Kernel arrival to answer sent, per request.
    pub service: Histogram<u64>,
    /// Per stage, indexed by [`Stage`].
    pub stages: [Histogram<u64>; 3],
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            service: new_histogram(),
            stages: [new_histogram(), new_histogram(), new_histogram()],
        }
    }
}

impl Latencies {
    fn add(&mut self, other: &Latencies) {
        let _ = self.service.add(&other.service);
        for (a, b) in self.stages.iter_mut().zip(&other.stages) {
            let _ = a.add(b);
        }
    }

    fn is_empty(&self) -> bool {
        self.service.is_empty() && self.stages.iter().all(|h| h.is_empty())
    }

    fn reset(&mut self) {
        self.service.reset();
        for h in &mut self.stages {
            h.reset();
        }
    }

    /// Records one stage of `count` requests.
    #[inline]
    pub fn stage(&mut self, s: Stage, d: Duration, count: u64) {
        record(&mut self.stages[s as usize], d, count);
    }
}

/// One rule's hit counter, kept across reloads for as long as a rule with
/// that id and mode exists (and after: a counter never goes back).
#[derive(Debug)]
pub struct RuleHits {
    /// The rule's id, from the rule file (or a built-in list rule's).
    pub id: Box<str>,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// Calls it fired on.
    pub hits: AtomicU64,
}

/// The counters of the snapshot in force, by rule index.
#[derive(Default)]
struct HitTable {
    generation: u64,
    by_rule: Vec<Arc<RuleHits>>,
}

/// Shared counters, gauges, rule hits and the merged latency histograms.
pub struct Metrics {
    counters: Vec<AtomicU64>,
    gauges: [AtomicI64; GAUGES],
    latency: Mutex<Latencies>,
    hit_table: ArcSwap<HitTable>,
    /// Every rule counter ever made, in first-seen order.
    rule_hits: Mutex<Vec<Arc<RuleHits>>>,
    /// Entries per list of the snapshot in force.
    list_entries: Mutex<Vec<(&'static str, u64)>>,
    /// Changes of each shared shelf this node does not hold yet.
    versions_lag: Mutex<Vec<(String, u64)>>,
    /// The counter sets of the rest of kuzet, in the order registered.
    /// Read when counters are reported, written at start-up; never
    /// touched on an increment.
    sets: RwLock<Vec<Registered>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counters: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            gauges: std::array::from_fn(|_| AtomicI64::new(0)),
            latency: Mutex::new(Latencies::default()),
            hit_table: ArcSwap::from_pointee(HitTable::default()),
            rule_hits: Mutex::new(Vec::new()),
            list_entries: Mutex::new(Vec::new()),
            versions_lag: Mutex::new(Vec::new()),
            sets: RwLock::new(Vec::new()),
        }
    }
}

/// A histogram of microseconds from 1 µs to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

impl Metrics {
    /// Adds one.
    #[inline]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        if let Some(a) = self.counters.get(c as usize) {
            a.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Current value.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters
            .get(c as usize)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Sets a gauge.
    #[inline]
    pub fn set(&self, g: Gauge, v: i64) {
        self.gauges[g as usize].store(v, Ordering::Relaxed);
    }

    /// Moves a gauge by `d`.
    #[inline]
    pub fn shift(&self, g: Gauge, d: i64) {
        self.gauges[g as usize].fetch_add(d, Ordering::Relaxed);
    }

    /// A gauge's value.
    pub fn gauge(&self, g: Gauge) -> i64 {
        self.gauges[g as usize].load(Ordering::Relaxed)
    }

    /// Counts the rules that fired on one call judged by `set`. A call
    /// judged in the instant between a reload's swap and its counters'
    /// swap goes uncounted; nothing else is lost.
    #[inline]
    pub fn rules_fired(&self, set: &ListSet, fired: &[kuzet_rules::ruleset::Fired]) {
        if fired.is_empty() {
            return;
        }
        let t = self.hit_table.load();
        if t.generation != set.generation {
            return;
        }
        for f in fired {
            if let Some(r) = t.by_rule.get(usize::from(f.rule)) {
                r.hits.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes note of a snapshot about to go into force: its rules' hit
    /// counters (the same counter for the same id and mode as before), its
    /// lists' sizes, its generation and when it was loaded.
    pub fn lists_loaded(&self, set: &ListSet, unix_s: i64) {
        let mut all = self.rule_hits.lock().unwrap_or_else(|e| e.into_inner());
        let by_rule = set
            .rules
            .rules
            .iter()
            .map(|r| {
                let mode = match r.mode {
                    RuleMode::Enforce => "enforce",
                    RuleMode::Shadow => "shadow",
                };
                if let Some(h) = all.iter().find(|h| *h.id == *r.id && h.mode == mode) {
                    return h.clone();
                }
                let h = Arc::new(RuleHits {
                    id: r.id.clone(),
                    mode,
                    hits: AtomicU64::new(0),
                });
                all.push(h.clone());
                h
            })
            .collect();
        drop(all);
        self.hit_table.store(Arc::new(HitTable {
            generation: set.generation,
            by_rule,
        }));
        let sizes: Vec<(&'static str, u64)> = set
            .lists
            .iter()
            .map(|(id, l)| (id.name(), (l.exact_count() + l.prefix_count()) as u64))
            .collect();
        *self.list_entries.lock().unwrap_or_else(|e| e.into_inner()) = sizes;
        self.set(Gauge::ListsGeneration, set.generation as i64);
        self.set(Gauge::ListsLoadedUnix, unix_s);
    }

    /// Every rule counter ever made.
    pub fn rule_hits(&self) -> Vec<Arc<RuleHits>> {
        self.rule_hits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Entries per list in force.
    pub fn list_entries(&self) -> Vec<(&'static str, u64)> {
        self.list_entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets, per shared shelf (`lists/blocklist`, `rules`), how many
    /// changes of the shared index this node does not hold yet.
    pub fn set_versions_lag(&self, lag: Vec<(String, u64)>) {
        *self.versions_lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }

    /// See [`Metrics::set_versions_lag`].
    pub fn versions_lag(&self) -> Vec<(String, u64)> {
        self.versions_lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds a counter set: its counters are reported after the call
    /// path's and those of every set registered before it. Refused, and
    /// said at ERROR, when one of its names is taken already.
    pub fn register<T: CounterSet>(&self, set: Arc<T>) -> Result<(), DuplicateCounter> {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        Self::add_set(&mut sets, set)
    }

    /// The registered set of type `T`; one is made and registered when
    /// there is none yet. Its owner asks once, when it starts, and keeps
    /// it: an increment goes straight to the set's atomics. A set whose
    /// names are taken is handed back all the same, counting but not
    /// reported (the clash is said at ERROR).
    pub fn counter_set<T: CounterSet + Default>(&self) -> Arc<T> {
        if let Some(t) = self.find::<T>() {
            return t;
        }
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = sets.iter().find_map(|r| r.any.clone().downcast::<T>().ok()) {
            return t;
        }
        let t = Arc::new(T::default());
        let _ = Self::add_set(&mut sets, t.clone());
        t
    }

    /// The registered set of type `T`, if there is one.
    pub fn find<T: CounterSet>(&self) -> Option<Arc<T>> {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        sets.iter().find_map(|r| r.any.clone().downcast::<T>().ok())
    }

    fn add_set<T: CounterSet>(
        sets: &mut Vec<Registered>,
        set: Arc<T>,
    ) -> Result<(), DuplicateCounter> {
        let mut taken: Vec<&'static str> = NAMES.to_vec();
        for r in sets.iter() {
            r.set.visit(&mut |n, _, _| taken.push(n));
        }
        let mut clash = None;
        set.visit(&mut |n, _, _| {
            if clash.is_none() && taken.contains(&n) {
                clash = Some(n);
            }
            taken.push(n);
        });
        if let Some(n) = clash {
            tracing::error!(
                counter = n,
                set = std::any::type_name::<T>(),
                "a counter name is declared twice; the counter set is not registered and its counters are not reported"
            );
            return Err(DuplicateCounter(n));
        }
        sets.push(Registered {
            set: set.clone(),
            any: set,
        });
        Ok(())
    }

    /// Visits every counter, the call path's first and then each
    /// registered set's: name, help text, value.
    pub fn each_counter(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
        for ((n, h), a) in NAMES.iter().zip(HELP).zip(&self.counters) {
            f(n, h, a.load(Ordering::Relaxed));
        }
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        for r in sets.iter() {
            r.set.visit(&mut f);
        }
    }

    /// A counter's value by its metric name (`list_reloads_total`),
    /// wherever it is declared; `None` for a name nobody declared.
    pub fn value(&self, name: &str) -> Option<u64> {
        let mut found = None;
        self.each_counter(|n, _, v| {
            if found.is_none() && n == name {
                found = Some(v);
            }
        });
        found
    }

    /// Every counter with its name and what it counts, for `/metrics`.
    pub fn described(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(NAMES.len());
        self.each_counter(|n, h, v| out.push((n, h, v)));
        out
    }

    /// Every counter with its name, for logs and reports.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::with_capacity(NAMES.len());
        self.each_counter(|n, _, v| out.push((n, v)));
        out
    }

    /// Folds a worker's local histograms into the shared ones and clears
    /// them. Uses `try_lock`: if a scrape holds the lock, try again later.
    pub fn merge_latency(&self, local: &mut Latencies) {
        if local.is_empty() {
            return;
        }
        if let Ok(mut h) = self.latency.try_lock() {
            h.add(local);
            local.reset();
        }
    }

    /// A copy of the merged service-time histogram.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .map(|h| h.service.clone())
            .unwrap_or_else(|_| new_histogram())
    }

    /// A copy of every merged histogram.
    pub fn latencies(&self) -> Latencies {
        self.latency.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// One line summarizing service time.
    pub fn latency_line(&self) -> String {
        let h = self.latency();
        if h.is_empty() {
            return "service time: no requests yet".into();
        }
        format!(
            "service time (µs) over {} requests: p50={} p90={} p99={} p99.9={} max={}",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        )
    }

    /// The non-zero counters on one line.
    pub fn counters_line(&self) -> String {
        let parts: Vec<String> = self
            .snapshot()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        if parts.is_empty() {
            "counters: all zero".into()
        } else {
            format!("counters: {}", parts.join(" "))
        }
    }
}

/// Records `count` requests that each took `d`, in microseconds, clamped
/// into the histogram's range.
#[inline]
pub fn record(h: &mut Histogram<u64>, d: Duration, count: u64) {
    let us = (d.as_micros() as u64).clamp(1, 60_000_000);
    let _ = h.record_n(us, count);
}

#[cfg(test)]
mod tests {
    use super::*;

    counter_set! {
        /// A feature's counters, for the tests.
        struct Widgets {
            spun => "widget_spins_total", "Widgets spun",
            jammed => "widget_jams_total", "Widgets that jammed",
        }
    }

    counter_set! {
        /// Another feature's.
        struct Gears {
            turned => "gear_turns_total", "Gears turned",
        }
    }

    counter_set! {
        /// A set that takes a name the call path has.
        struct Thief {
            taken => "invites_total", "Not its own",
        }
    }

    counter_set! {
        /// A set that takes a name another set has.
        struct Copycat {
            own => "copycat_total", "Its own",
            copied => "gear_turns_total", "Another set's",
        }
    }

    #[test]
    fn registered_sets_are_reported_after_the_call_path_in_order() {
        let m = Metrics::default();
        let w = m.counter_set::<Widgets>();
        let g = Arc::new(Gears::default());
        m.register(g.clone()).unwrap();
        w.spun.add(3);
        g.turned.inc();
        m.inc(Counter::Invites);
        let names: Vec<_> = m.snapshot().into_iter().map(|(n, _)| n).collect();
        assert_eq!(&names[..NAMES.len()], NAMES);
        assert_eq!(
            &names[NAMES.len()..],
            [
                "widget_spins_total",
                "widget_jams_total",
                "gear_turns_total"
            ]
        );
        let described = m.described();
        assert_eq!(
            described.last(),
            Some(&("gear_turns_total", "Gears turned", 1))
        );
        assert_eq!(m.value("widget_spins_total"), Some(3));
        assert_eq!(m.value("widget_jams_total"), Some(0));
        assert_eq!(m.value("invites_total"), Some(1));
        assert_eq!(m.value("nobody_total"), None);
        let line = m.counters_line();
        assert!(
            line.ends_with("invites_total=1 widget_spins_total=3 gear_turns_total=1"),
            "{line}"
        );
        // Asked again, the owner gets the same set.
        assert!(Arc::ptr_eq(&w, &m.counter_set::<Widgets>()));
        assert!(Arc::ptr_eq(&g, &m.find::<Gears>().unwrap()));
    }

    #[test]
    fn a_name_taken_twice_is_refused() {
        let m = Metrics::default();
        m.register(Arc::new(Gears::default())).unwrap();
        let before = m.snapshot().len();
        assert_eq!(
            m.register(Arc::new(Thief::default())),
            Err(DuplicateCounter("invites_total"))
        );
        assert_eq!(
            m.register(Arc::new(Copycat::default())),
            Err(DuplicateCounter("gear_turns_total"))
        );
        // The same set twice repeats every name.
        assert_eq!(
            m.register(Arc::new(Gears::default())),
            Err(DuplicateCounter("gear_turns_total"))
        );
        assert_eq!(m.snapshot().len(), before, "nothing refused is reported");
        assert_eq!(m.value("copycat_total"), None);
        // A refused set still counts for its owner, unreported.
        let t = m.counter_set::<Thief>();
        t.taken.inc();
        assert_eq!(m.value("invites_total"), Some(0));
        assert!(m.find::<Thief>().is_none());
    }
}
