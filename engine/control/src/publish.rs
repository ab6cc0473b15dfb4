//! The one writer of the data plane's snapshot: sources in, checked and
//! versioned snapshots out.
//!
//! Every input of the lists and rules is a [`Source`]: the files of the
//! config ([`crate::lists::FileSource`]) today, published versions and the
//! National Bank's feed next. A source says which layers it feeds (a list
//! per [`ListId`], or the rules), which of them changed since it was last
//! asked (cheaply: a stat, a flag), and feeds a layer's entries on demand.
//!
//! The [`Publisher`] is the only code that stores into the shared snapshot.
//! It keeps the layers in force, each behind an `Arc` with its content
//! digest, and the set of *dirty* layers: changed, and not yet replaced by
//! a good build. A [`Job`] rebuilds only the dirty layers, on a thread of
//! the caller's choosing; [`Publisher::apply`] puts the new layers beside
//! the untouched ones (shared, not copied), names the result by content
//! ([`Version`]: the highest input sequence and a digest of every layer and
//! the rules, so two nodes with the same inputs report the same version),
//! and swaps it in whole. A layer leaves the dirty set only when a build of
//! it is in force: a load that fails or is abandoned leaves it dirty, and
//! it is tried again after a back-off that doubles up to
//! [`MAX_RETRY_BACKOFF`] (at once when a source changes again).
//!
//! Every candidate passes the same checks before it can be swapped in: each
//! list line parses; a source's list that comes out empty is refused
//! unless the source allows it (a truncated upload must not silently
//! unblock everything); a rule file parses, its thresholds do not undercut
//! a list's score, and its `redirect_uri`s are valid SIP URIs. On any
//! failure the snapshot in force stays.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use kuzet_dataplane::counter_set;
use kuzet_dataplane::metrics::Metrics;
use kuzet_dataplane::SharedLists;
use kuzet_rules::ruleset::RuleSet;
use kuzet_rules::snapshot::Version;
use kuzet_rules::{
    ByList, ListBuilder, ListError, ListErrorKind, ListId, ListPolicy, ListSet, Number, NumberList,
    NumberingPlan, Prefix,
};

pub use crate::lists::{LoadError, LoadStats};

/// A set of layers: lists by [`ListId`], and the rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layers(u32);

impl Layers {
    /// No layer.
    pub const NONE: Layers = Layers(0);
    /// The rules layer.
    pub const RULES: Layers = Layers(1 << ListId::COUNT);
    /// Every layer.
    pub const ALL: Layers = Layers((1 << (ListId::COUNT + 1)) - 1);

    /// The layer of list `l`.
    pub const fn list(l: ListId) -> Layers {
        Layers(1 << l as u32)
    }

    /// Whether every layer of `o` is in this set.
    pub const fn contains(self, o: Layers) -> bool {
        self.0 & o.0 == o.0
    }

    /// Whether list `l`'s layer is in this set.
    pub const fn has(self, l: ListId) -> bool {
        self.contains(Layers::list(l))
    }

    /// Both sets.
    #[must_use]
    pub const fn with(self, o: Layers) -> Layers {
        Layers(self.0 | o.0)
    }

    /// This set without `o`.
    #[must_use]
    pub const fn without(self, o: Layers) -> Layers {
        Layers(self.0 & !o.0)
    }

    /// The set as bits (one per [`ListId`], then the rules).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The set with these bits (others dropped).
    pub const fn from_bits(b: u32) -> Layers {
        Layers(b & Layers::ALL.0)
    }

    /// True when no layer is in the set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The lists in the set, in [`ListId::ALL`] order.
    pub fn lists(self) -> impl Iterator<Item = ListId> {
        ListId::ALL.into_iter().filter(move |l| self.has(*l))
    }

    /// Names, for logs: `blocklist,rules`.
    pub fn describe(self) -> String {
        let mut v: Vec<&str> = self.lists().map(ListId::name).collect();
        if self.contains(Layers::RULES) {
            v.push("rules");
        }
        v.join(",")
    }
}

/// A rule file's text and the name errors give it.
#[derive(Clone, Debug)]
pub struct RulesText {
    /// The file's path, or what the text is.
    pub name: String,
    /// The TOML.
    pub text: String,
}

/// One input of the snapshot (see the module docs). Its methods are
/// called from the control plane's threads, never from a SIP worker.
pub trait Source: Send + Sync {
    /// What it is, for logs: `files`, `published`, `nbfeed`.
    fn name(&self) -> &str;

    /// The layers it feeds.
    fn layers(&self) -> Layers;

    /// Which of its layers changed since the last call. Cheap and never
    /// blocking: a stat per file, a flag. The first call after
    /// construction reports changes since construction.
    fn changed(&self) -> Layers;

    /// The sequence of the content it offers now: a published version's
    /// number, a feed batch's; 0 for inputs that have none (files). A
    /// source raises it only after [`Source::changed`] reports the layers
    /// that changed with it: the publisher reads it before asking what
    /// changed, so a snapshot named with sequence N holds every change up
    /// to N.
    fn sequence(&self) -> u64 {
        0
    }

    /// Feeds its entries of list `l` (one of its [`Source::layers`]).
    /// Runs on a load thread; may take seconds for a big list, and checks
    /// [`Feed::cancelled`] as it goes.
    fn feed(&self, l: ListId, into: &mut Feed<'_, '_>) -> Result<(), LoadError>;

    /// Its rule file, when it feeds [`Layers::RULES`].
    fn rules(&self) -> Result<Option<RulesText>, LoadError> {
        Ok(None)
    }

    /// List `l` already built, with its digest ([`list_digest`]), when the
    /// source has it in memory: a published version checked and built as
    /// it arrived. Used instead of [`Source::feed`] when this source alone
    /// feeds the list, so putting a 10M-entry version in force costs no
    /// second parse. Taken once: a later build feeds as usual.
    fn prebuilt(&self, _l: ListId) -> Option<(Arc<NumberList>, [u8; 16])> {
        None
    }
}

/// Where a source writes one list's entries during a build.
pub struct Feed<'b, 'p> {
    builder: &'b mut ListBuilder<'p>,
    cancel: &'b AtomicBool,
    started: Instant,
    stats: &'b mut LoadStats,
}

/// Lines between looks at the cancel flag.
const CANCEL_EVERY: usize = 16_384;

/// Lines between progress messages on a long load.
const PROGRESS_EVERY: usize = 1_000_000;

impl Feed<'_, '_> {
    /// Entries fed so far into this list (from every source).
    pub fn entries(&self) -> usize {
        self.builder.entries()
    }

    /// Whether the build was abandoned: the feeder should return
    /// [`LoadError::Abandoned`] soon (see [`Feed::abandoned`]).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The error for an abandoned build.
    pub fn abandoned(&self) -> LoadError {
        LoadError::Abandoned(self.started.elapsed())
    }

    /// Feeds a whole text (a compiled-in list); `name` labels errors.
    pub fn text(&mut self, name: &str, text: &str) -> Result<(), LoadError> {
        self.builder.add_text(name, text)?;
        self.stats.lines += text.lines().count();
        Ok(())
    }

    /// Feeds one number, already normalized, with its reason; `name`
    /// labels an error.
    pub fn number(&mut self, name: &str, n: Number, reason: &str) -> Result<(), LoadError> {
        self.entry(name, |b| b.add_number(n, reason))
    }

    /// Feeds one range, already normalized, with its reason.
    pub fn prefix(&mut self, name: &str, p: Prefix, reason: &str) -> Result<(), LoadError> {
        self.entry(name, |b| b.add_prefix(p, reason))
    }

    fn entry(
        &mut self,
        name: &str,
        add: impl FnOnce(&mut ListBuilder<'_>) -> Result<(), ListErrorKind>,
    ) -> Result<(), LoadError> {
        self.stats.lines += 1;
        add(self.builder).map_err(|kind| {
            LoadError::List(ListError {
                file: name.to_string(),
                line: self.stats.lines,
                kind,
            })
        })?;
        if self.stats.lines.is_multiple_of(CANCEL_EVERY) && self.cancelled() {
            return Err(self.abandoned());
        }
        Ok(())
    }

    /// Reserves room for about `n` more entries.
    pub fn reserve(&mut self, n: usize) {
        self.builder.reserve(n);
    }

    /// Feeds the lines of a reader (each capped in length and UTF-8),
    /// checking the cancel flag as it goes; `name` labels errors and
    /// progress lines. Returns the lines read.
    pub fn lines<R: BufRead>(&mut self, reader: R, name: &str) -> Result<usize, LoadError> {
        let n = feed_lines(reader, name, self.builder, self.cancel, self.started)?;
        self.stats.lines += n;
        Ok(n)
    }

    /// Notes how many entries one input (a file) gave, for the log.
    pub fn note(&mut self, input: String, entries: usize) {
        self.stats.per_file.push((input, entries));
    }
}

/// Feeds the lines of a reader to a builder (lines capped in length, each
/// line UTF-8), checking `cancel` as it goes; returns the number of lines
/// read. `name` labels errors. The loader's whole text path, with no file
/// under it, so it is fuzzed as it runs (fuzz/, target `list`).
pub fn feed_lines<R: BufRead>(
    reader: R,
    name: &str,
    builder: &mut ListBuilder<'_>,
    cancel: &AtomicBool,
    load_started: Instant,
) -> Result<usize, LoadError> {
    let mut lines = crate::files::Lines::new(reader, name.to_string(), crate::files::MAX_LIST_LINE);
    let mut n = 0;
    let started = Instant::now();
    while let Some((at, text)) = lines.next_line()? {
        n = at;
        builder.add_line(name, n, text)?;
        if n % CANCEL_EVERY == 0 && cancel.load(Ordering::Relaxed) {
            return Err(LoadError::Abandoned(load_started.elapsed()));
        }
        if n % PROGRESS_EVERY == 0 {
            tracing::info!(
                file = %name,
                lines = n,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "loading list"
            );
        }
    }
    Ok(n)
}

/// A layer as the publisher keeps it: the list and its content digest.
#[derive(Clone, Debug)]
struct Built {
    list: Arc<NumberList>,
    digest: [u8; 16],
}

/// What a job built: the dirty layers, new.
pub struct Candidate {
    /// The layers built: the ones it replaces.
    layers: Layers,
    /// The layers that failed, if any did (they stay dirty), and the
    /// first one's error.
    failed: Option<(Layers, LoadError)>,
    lists: Vec<(ListId, Built)>,
    rules: Option<(Arc<RuleSet>, [u8; 16])>,
    seq: u64,
    stats: LoadStats,
}

impl Candidate {
    /// The layers it replaces.
    pub fn layers(&self) -> Layers {
        self.layers
    }
}

/// One build of the dirty layers, ready to run on a thread of its own.
pub struct Job {
    layers: Layers,
    /// The inputs' sequence when the layers were found dirty.
    seq: u64,
    sources: Arc<[Arc<dyn Source>]>,
    plan: Arc<NumberingPlan>,
    policy: ListPolicy,
    /// Set to abandon the build; it returns soon after.
    pub cancel: Arc<AtomicBool>,
}

impl Job {
    /// The layers it rebuilds.
    pub fn layers(&self) -> Layers {
        self.layers
    }

    /// Builds the layers (seconds for a big list: not on a runtime thread).
    pub fn run(&self) -> Result<Candidate, LoadError> {
        let started = Instant::now();
        let mut stats = LoadStats::default();
        // The sequence was read before the sources were asked what
        // changed: every change it counts is in this job's layers (or was
        // in force already), and a source that moves on meanwhile is read
        // again with its newer number.
        let seq = self.seq;
        // Each layer is checked on its own: one that fails stays dirty
        // (and is tried again) without holding back the others, so a
        // broken list file never keeps a published version out of force.
        let mut built = Layers::NONE;
        let mut failed: Option<(Layers, LoadError)> = None;
        let mut lists = Vec::new();
        for l in self.layers.lists() {
            match self.build_list(l, started, &mut stats) {
                Ok(b) => {
                    lists.push((l, b));
                    built = built.with(Layers::list(l));
                }
                Err(e @ LoadError::Abandoned(_)) => return Err(e),
                Err(e) => fail(&mut failed, Layers::list(l), e),
            }
        }
        let rules = if self.layers.contains(Layers::RULES) {
            match self.build_rules() {
                Ok(r) => {
                    built = built.with(Layers::RULES);
                    Some(r)
                }
                Err(e) => {
                    fail(&mut failed, Layers::RULES, e);
                    None
                }
            }
        } else {
            None
        };
        if self.cancel.load(Ordering::Relaxed) {
            return Err(LoadError::Abandoned(started.elapsed()));
        }
        if built.is_empty() {
            if let Some((_, e)) = failed {
                return Err(e);
            }
        }
        Ok(Candidate {
            layers: built,
            lists,
            rules,
            seq,
            stats,
            failed,
        })
    }

    /// Builds list `l` from its sources (taken whole when its one source
    /// has it built already).
    fn build_list(
        &self,
        l: ListId,
        started: Instant,
        stats: &mut LoadStats,
    ) -> Result<Built, LoadError> {
        let mut feeders = self.sources.iter().filter(|s| s.layers().has(l));
        if let (Some(only), None) = (feeders.next(), feeders.next()) {
            if let Some((list, digest)) = only.prebuilt(l) {
                stats.exact += list.exact_count();
                stats.prefixes += list.prefix_count();
                stats.bytes += list.heap_bytes();
                return Ok(Built { list, digest });
            }
        }
        let mut b = ListBuilder::new(&self.plan);
        for s in self.sources.iter().filter(|s| s.layers().has(l)) {
            let mut feed = Feed {
                builder: &mut b,
                cancel: &self.cancel,
                started,
                stats: &mut *stats,
            };
            s.feed(l, &mut feed)?;
            if feed.cancelled() {
                return Err(feed.abandoned());
            }
        }
        let list = b.finish();
        stats.exact += list.exact_count();
        stats.prefixes += list.prefix_count();
        stats.bytes += list.heap_bytes();
        let digest = list_digest(l, &list);
        Ok(Built {
            list: Arc::new(list),
            digest,
        })
    }

    /// Builds the rules from the source that feeds them (the built-in
    /// rules when none does).
    fn build_rules(&self) -> Result<(Arc<RuleSet>, [u8; 16]), LoadError> {
        let text = match self
            .sources
            .iter()
            .find(|s| s.layers().contains(Layers::RULES))
        {
            Some(s) => s.rules()?,
            None => None,
        };
        let set = match &text {
            Some(t) => RuleSet::from_toml_str(&t.text, &t.name, &self.plan, &self.policy)?,
            None => RuleSet::builtin(&self.policy, &self.plan),
        };
        let digest = rules_digest(text.as_ref(), &self.policy, &self.plan);
        Ok((Arc::new(set), digest))
    }
}

/// Notes a failed layer: every failed layer, and the first error.
fn fail(failed: &mut Option<(Layers, LoadError)>, layer: Layers, e: LoadError) {
    match failed {
        Some((layers, _)) => *layers = layers.with(layer),
        None => *failed = Some((layer, e)),
    }
}

/// The longest wait between two tries of a load that keeps failing.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

/// Each swap's generation, across publishers in one process (tests run
/// many engines): verdicts kept for retransmissions are reused only under
/// the snapshot that gave them.
static GENERATION: AtomicU64 = AtomicU64::new(0);

counter_set! {
    /// The reloads' counters: what became of each load of changed layers.
    pub struct ReloadCounters {
        reloads => "list_reloads_total", "Successful list and rule reloads",
        failures => "list_reload_failures_total", "List and rule reloads refused (the lists in force stay)",
        abandoned => "list_reloads_abandoned_total", "List reloads abandoned past the reload timeout",
    }
}

/// The snapshot's only writer (see the module docs).
pub struct Publisher {
    sources: Arc<[Arc<dyn Source>]>,
    plan: Arc<NumberingPlan>,
    policy: ListPolicy,
    shared: SharedLists,
    metrics: Arc<Metrics>,
    counters: Arc<ReloadCounters>,
    /// The layers in force, with their digests.
    lists: ByList<Built>,
    rules: (Arc<RuleSet>, [u8; 16]),
    /// Changed, and no good build of them in force yet.
    dirty: Layers,
    /// The highest input sequence read before the changes it covers were
    /// collected (see [`Source::sequence`]).
    seq_seen: u64,
    /// Loads failed or abandoned in a row.
    failures: u32,
    /// No load before this (a back-off after a failure).
    not_before: Option<Instant>,
    /// How long the first back-off lasts.
    base_backoff: Duration,
    /// Told of every snapshot put in force.
    observer: Option<Observer>,
}

/// What [`Publisher::observe`] keeps.
type Observer = Arc<dyn Fn(&Arc<ListSet>) + Send + Sync>;

impl Publisher {
    /// A publisher of `sources` into `shared`, with every layer dirty:
    /// nothing is in force until the first [`Publisher::publish_now`] or
    /// job applied. `base_backoff` is the first wait after a failure (the
    /// reload interval).
    pub fn new(
        sources: Vec<Arc<dyn Source>>,
        plan: NumberingPlan,
        policy: ListPolicy,
        shared: SharedLists,
        metrics: Arc<Metrics>,
        base_backoff: Duration,
    ) -> Publisher {
        let empty = Built {
            list: Arc::new(NumberList::default()),
            digest: [0; 16],
        };
        let rules = Arc::new(RuleSet::builtin(&policy, &plan));
        // Every layer is dirty: the first job covers all that any source
        // offers now.
        let seq_seen = sources.iter().map(|s| s.sequence()).max().unwrap_or(0);
        Publisher {
            seq_seen,
            sources: sources.into(),
            plan: Arc::new(plan),
            policy,
            shared,
            counters: metrics.counter_set(),
            metrics,
            lists: ByList::from_fn(|_| empty.clone()),
            rules: (rules, [0; 16]),
            dirty: Layers::ALL,
            failures: 0,
            not_before: None,
            base_backoff: base_backoff.max(Duration::from_millis(10)),
            observer: None,
        }
    }

    /// The shared snapshot it writes.
    pub fn shared(&self) -> &SharedLists {
        &self.shared
    }

    /// The layers waiting for a good build.
    pub fn dirty(&self) -> Layers {
        self.dirty
    }

    /// Asks every source what changed; a change makes its layers dirty and
    /// ends any back-off (new content deserves a try at once).
    pub fn poll(&mut self) {
        for s in self.sources.iter() {
            // The sequence first: the changes it counts are then reported
            // by `changed` below (or were by an earlier poll).
            self.seq_seen = self.seq_seen.max(s.sequence());
            let c = s.changed();
            if !c.is_empty() {
                self.dirty = self.dirty.with(c);
                self.not_before = None;
            }
        }
    }

    /// Marks every layer dirty (SIGHUP: reload everything now).
    pub fn reload_all(&mut self) {
        self.dirty = Layers::ALL;
        self.not_before = None;
    }

    /// Whether a build is due at `now`: a layer is dirty and no back-off
    /// holds it.
    pub fn due(&self, now: Instant) -> bool {
        !self.dirty.is_empty() && self.not_before.is_none_or(|t| now >= t)
    }

    /// A build of the dirty layers.
    pub fn job(&self) -> Job {
        Job {
            layers: self.dirty,
            seq: self.seq_seen,
            sources: self.sources.clone(),
            plan: self.plan.clone(),
            policy: self.policy,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Builds every dirty layer here and now and swaps the result in, or
    /// returns why not (start-up, which has nothing to fall back on).
    pub fn publish_now(&mut self) -> Result<LoadStats, LoadError> {
        let mut c = self.job().run()?;
        // Start-up takes every layer or none.
        if let Some((_, e)) = c.failed.take() {
            return Err(e);
        }
        Ok(self.install(c))
    }

    /// Swaps a built candidate in without counting it as a reload (start-up,
    /// tools); returns what was loaded.
    pub fn install(&mut self, c: Candidate) -> LoadStats {
        let stats = c.stats.clone();
        let version = self.swap(c);
        tracing::debug!(%version, "snapshot installed");
        stats
    }

    /// Swaps a built candidate in, or keeps the snapshot in force on error
    /// and backs off; logs and counts either way. A candidate whose some
    /// layers failed puts the others in force and backs off for the
    /// failed ones. `why` says what started the load. Returns whether
    /// every changed layer went into force.
    pub fn apply(
        &mut self,
        why: &str,
        built: Result<Candidate, LoadError>,
        started: Instant,
    ) -> bool {
        match built {
            Ok(mut c) => {
                let failed = c.failed.take();
                if let Some((bad, _)) = &failed {
                    // The sequence may count a failed layer's change: when
                    // a source with a sequence feeds one, the snapshot
                    // keeps the sequence in force, so nobody waiting for
                    // that change takes this for it. (Files carry none.)
                    let sequenced = self
                        .sources
                        .iter()
                        .any(|s| s.sequence() > 0 && (s.layers().bits() & bad.bits()) != 0);
                    if sequenced {
                        c.seq = self.shared.load().version.seq;
                    }
                }
                let layers = c.layers;
                let stats = c.stats.clone();
                let version = self.swap(c);
                self.counters.reloads.inc();
                log_files(&stats);
                tracing::info!(
                    trigger = why,
                    layers = %layers.describe(),
                    %version,
                    lines = stats.lines,
                    exact = stats.exact,
                    prefixes = stats.prefixes,
                    heap_mb = stats.bytes / (1 << 20),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "lists reloaded"
                );
                match failed {
                    None => true,
                    Some((_, e)) => {
                        self.refused(why, e);
                        false
                    }
                }
            }
            Err(e) => {
                self.refused(why, e);
                false
            }
        }
    }

    /// Counts and logs a refused or abandoned load, and backs off: its
    /// layers stay dirty and the lists in force stay.
    fn refused(&mut self, why: &str, e: LoadError) {
        if matches!(e, LoadError::Abandoned(_)) {
            self.counters.abandoned.inc();
        } else {
            self.counters.failures.inc();
        }
        self.failures = self.failures.saturating_add(1);
        let wait = self
            .base_backoff
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(MAX_RETRY_BACKOFF);
        self.not_before = Some(Instant::now() + wait);
        tracing::warn!(
            trigger = why,
            layers = %self.dirty.describe(),
            error = %e,
            failures = self.failures,
            retry_in_ms = wait.as_millis() as u64,
            "list reload rejected; the lists in force stay, and the load is tried again"
        );
    }

    /// Puts a candidate's layers beside the untouched ones, names the
    /// result and stores it: the one store into the shared snapshot.
    fn swap(&mut self, c: Candidate) -> Version {
        for (l, b) in c.lists {
            self.lists[l] = b;
        }
        if let Some(r) = c.rules {
            self.rules = r;
        }
        self.dirty = self.dirty.without(c.layers);
        self.failures = 0;
        self.not_before = None;
        let version = Version {
            seq: c.seq,
            digest: version_digest(&self.lists, &self.rules.1),
        };
        let set = ListSet {
            lists: self.lists.map(|_, b| b.list.clone()),
            rules: self.rules.0.clone(),
            version,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
        };
        self.metrics.lists_loaded(&set, unix_now());
        let set = Arc::new(set);
        if let Some(o) = &self.observer {
            o(&set);
        }
        self.shared.store(set);
        version
    }

    /// `f` is told of every snapshot as it is put in force (the call
    /// journal keeps each version its calls are judged under).
    pub fn observe(&mut self, f: impl Fn(&Arc<ListSet>) + Send + Sync + 'static) {
        self.observer = Some(Arc::new(f));
    }
}

fn digest16(h: Sha256) -> [u8; 16] {
    let full = h.finalize();
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// A list's digest: its name and canonical content.
pub fn list_digest(l: ListId, list: &NumberList) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"kuzet list\0");
    h.update(l.name().as_bytes());
    h.update([0]);
    list.write_canonical(|chunk| h.update(chunk));
    digest16(h)
}

/// The rules' digest: the rule file's text (not its path: two nodes may
/// keep it in different places), the list policy and the numbering plan
/// the rules were checked against.
fn rules_digest(text: Option<&RulesText>, policy: &ListPolicy, plan: &NumberingPlan) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"kuzet rules\0");
    match text {
        Some(t) => {
            h.update(b"file\0");
            h.update(t.text.as_bytes());
        }
        None => h.update(b"builtin\0"),
    }
    h.update(format!("\0{policy:?}\0{plan:?}").as_bytes());
    digest16(h)
}

/// The version's digest: every list's digest in [`ListId::ALL`] order,
/// then the rules'.
fn version_digest(lists: &ByList<Built>, rules: &[u8; 16]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"kuzet snapshot\0");
    for (l, b) in lists.iter() {
        h.update(l.name().as_bytes());
        h.update(b.digest);
    }
    h.update(b"rules");
    h.update(rules);
    digest16(h)
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Logs each list file's entry count: a file that shrank by half shows here.
pub fn log_files(stats: &LoadStats) {
    for (file, entries) in &stats.per_file {
        tracing::info!(%file, entries, "list file");
    }
}

#[cfg(test)]
mod tests;
