//! Loading list files (and the rule file) and swapping them in: one path
//! for start-up and reload.
//!
//! [`load`] reads every configured file line by line (bounded memory, even
//! for 10M-line files; each line capped in length), feeds the lines to the
//! scoring core's builders and returns a complete [`ListSet`], or the first
//! error with its file and line. Only regular files are read (see
//! [`crate::files`]), a list with no entries is refused unless its config
//! entry allows it (a truncated upload must not silently unblock
//! everything), and a load checks a cancel flag as it goes, so a reload
//! that takes too long is abandoned. [`Reloader`] holds what the control
//! plane needs between loads: the files' fingerprints, and the shared
//! `ArcSwap` a good set is stored in, so a call sees either the old lists
//! or the new ones, never half of either. On failure the lists in force
//! stay.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::files::{self, FileError, Lines, MAX_LIST_LINE, MAX_RULE_FILE};

use kuzet_rules::ruleset::RuleSet;
use kuzet_rules::{ListBuilder, ListPolicy, ListSet, NumberingPlan};

use kuzet_dataplane::metrics::{Counter, Metrics};
use kuzet_dataplane::SharedLists;

/// Which list a file feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// Numbers whose calls are blocked.
    Block,
    /// Numbers whose calls are always allowed.
    Allow,
    /// Numbers whose calls are flagged.
    Flag,
    /// Protected (do-not-originate) numbers, used by the rules.
    Protected,
    /// Premium-rate / IRSF destinations, used by the rules.
    Premium,
    /// The operator's own subscribers roaming abroad now.
    Roamers,
}

impl ListKind {
    /// `blocklist`, `allowlist`, `flaglist`, `protected` or `premium`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Block => "blocklist",
            ListKind::Allow => "allowlist",
            ListKind::Flag => "flaglist",
            ListKind::Protected => "protected",
            ListKind::Premium => "premium",
            ListKind::Roamers => "roamers",
        }
    }
}

/// One list file to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFile {
    /// Where it is.
    pub path: PathBuf,
    /// Which list it feeds.
    pub kind: ListKind,
    /// Whether a file with no entries is accepted (otherwise it is refused,
    /// and on reload the lists in force stay).
    pub allow_empty: bool,
}

/// Where the lists and rules come from: what the config names, resolved
/// to paths, or texts compiled into the binary.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// List files with their kinds, in order.
    pub files: Vec<ListFile>,
    /// Lists given as text (the binary's compiled-in samples): name, text, kind.
    pub embedded: Vec<(&'static str, &'static str, ListKind)>,
    /// The behaviour rule file, if any.
    pub rule_file: Option<PathBuf>,
    /// Rules given as text when there is no rule file (the binary's
    /// compiled-in defaults): name and text.
    pub embedded_rules: Option<(&'static str, &'static str)>,
    /// Scores and sides for list hits.
    pub policy: ListPolicy,
}

/// Why a list set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read: missing, not a regular file, a line too
    /// long or not UTF-8.
    #[error(transparent)]
    File(#[from] FileError),
    /// A list file with no entries, which its config entry does not allow.
    #[error(
        "{path}: the {kind} file has no entries; refusing it, since a truncated upload \
         would silently drop every entry (if it may be empty, list it as \
         {{ path = \"...\", allow_empty = true }})"
    )]
    Empty {
        /// The file.
        path: String,
        /// Which list.
        kind: &'static str,
    },
    /// The load was abandoned (it took longer than the reload timeout, or
    /// kuzet is stopping).
    #[error("the load was abandoned after {0:?}")]
    Abandoned(Duration),
    /// A list line is not an entry.
    #[error(transparent)]
    List(#[from] kuzet_rules::ListError),
    /// The rule file cannot be used.
    #[error(transparent)]
    Rules(#[from] kuzet_rules::ruleset::RuleError),
}

/// What was loaded, for the log.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Entries (exact and prefix, before de-duplication) per list file.
    pub per_file: Vec<(String, usize)>,
    /// Lines read, comments included.
    pub lines: usize,
    /// Exact numbers across the lists.
    pub exact: usize,
    /// Prefixes across the lists.
    pub prefixes: usize,
    /// Heap the lists take.
    pub bytes: usize,
}

/// Each load's generation: verdicts kept for retransmissions are reused
/// only under the snapshot that gave them.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Lines between progress messages on a long load.
const PROGRESS_EVERY: usize = 1_000_000;

/// Lines between looks at the cancel flag.
const CANCEL_EVERY: usize = 16_384;

/// Builds the whole list set from its sources: the embedded texts, then
/// every file, then the rule file. Returns [`LoadError::Abandoned`] soon
/// after `cancel` turns true.
pub fn load(
    src: &Sources,
    plan: &NumberingPlan,
    cancel: &AtomicBool,
) -> Result<(ListSet, LoadStats), LoadError> {
    let started = Instant::now();
    let mut block = ListBuilder::new(plan);
    let mut allow = ListBuilder::new(plan);
    let mut flag = ListBuilder::new(plan);
    let mut protected = ListBuilder::new(plan);
    let mut premium = ListBuilder::new(plan);
    let mut roamers = ListBuilder::new(plan);
    let mut stats = LoadStats::default();
    let pick = |k: ListKind| -> usize {
        match k {
            ListKind::Block => 0,
            ListKind::Allow => 1,
            ListKind::Flag => 2,
            ListKind::Protected => 3,
            ListKind::Premium => 4,
            ListKind::Roamers => 5,
        }
    };
    {
        let builders = [
            &mut block,
            &mut allow,
            &mut flag,
            &mut protected,
            &mut premium,
            &mut roamers,
        ];
        for (name, text, kind) in &src.embedded {
            builders[pick(*kind)].add_text(name, text)?;
            stats.lines += text.lines().count();
        }
        for f in &src.files {
            let b = &mut *builders[pick(f.kind)];
            let before = b.entries();
            stats.lines += load_file_cancellable(&f.path, b, cancel, started)?;
            let entries = b.entries() - before;
            if entries == 0 && !f.allow_empty {
                return Err(LoadError::Empty {
                    path: f.path.display().to_string(),
                    kind: f.kind.as_str(),
                });
            }
            stats.per_file.push((f.path.display().to_string(), entries));
        }
    }
    let rules = match &src.rule_file {
        None => match src.embedded_rules {
            Some((name, text)) => RuleSet::from_toml_str(text, name, plan, &src.policy)?,
            None => RuleSet::builtin(&src.policy, plan),
        },
        Some(path) => {
            let text = files::read_text(path, MAX_RULE_FILE)?;
            RuleSet::from_toml_str(&text, &path.display().to_string(), plan, &src.policy)?
        }
    };
    if cancel.load(Ordering::Relaxed) {
        return Err(LoadError::Abandoned(started.elapsed()));
    }
    let set = ListSet {
        block: block.finish(),
        allow: allow.finish(),
        flag: flag.finish(),
        protected: protected.finish(),
        premium: premium.finish(),
        roamers: roamers.finish(),
        rules,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
    };
    for l in [
        &set.block,
        &set.allow,
        &set.flag,
        &set.protected,
        &set.premium,
        &set.roamers,
    ] {
        stats.exact += l.exact_count();
        stats.prefixes += l.prefix_count();
        stats.bytes += l.heap_bytes();
    }
    Ok((set, stats))
}

/// Feeds one file to a builder; returns the number of lines read.
pub fn load_file(path: &Path, builder: &mut ListBuilder<'_>) -> Result<usize, LoadError> {
    load_file_cancellable(path, builder, &AtomicBool::new(false), Instant::now())
}

fn load_file_cancellable(
    path: &Path,
    builder: &mut ListBuilder<'_>,
    cancel: &AtomicBool,
    load_started: Instant,
) -> Result<usize, LoadError> {
    let shown = path.display().to_string();
    let file = files::open_regular(path)?;
    if let Ok(meta) = file.metadata() {
        // About 14 bytes a line for E.164 numbers: reserve once.
        builder.reserve((meta.len() / 14) as usize);
    }
    load_lines(
        BufReader::with_capacity(1 << 20, file),
        &shown,
        builder,
        cancel,
        load_started,
    )
}

/// Feeds the lines of a reader to a builder (lines capped in length, each
/// line UTF-8), checking `cancel` as it goes; returns the number of lines
/// read. `name` labels errors. The loader's whole text path, with no file
/// under it, so it is fuzzed as it runs (fuzz/, target `list`).
pub fn load_lines<R: std::io::BufRead>(
    reader: R,
    name: &str,
    builder: &mut ListBuilder<'_>,
    cancel: &AtomicBool,
    load_started: Instant,
) -> Result<usize, LoadError> {
    let mut lines = Lines::new(reader, name.to_string(), MAX_LIST_LINE);
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

/// Size, modification time and inode of a file: a change in any of them
/// (including an atomic rename over it) means reload.
type Fingerprint = Vec<Option<(u64, SystemTime, u64)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0;
            Some((m.len(), m.modified().ok()?, ino))
        })
        .collect()
}

/// What the control plane keeps between loads: the sources, the files'
/// fingerprints, and where a good set goes.
pub struct Reloader {
    src: Arc<Sources>,
    plan: Arc<NumberingPlan>,
    lists: SharedLists,
    metrics: Arc<Metrics>,
    paths: Vec<PathBuf>,
    seen: Fingerprint,
}

/// One load, ready to run on a blocking thread.
pub struct LoadJob {
    src: Arc<Sources>,
    plan: Arc<NumberingPlan>,
    /// Set to abandon the load; it returns soon after.
    pub cancel: Arc<AtomicBool>,
}

impl LoadJob {
    /// Runs the load (seconds for a big list: not on a runtime thread).
    pub fn run(&self) -> Result<(ListSet, LoadStats), LoadError> {
        load(&self.src, &self.plan, &self.cancel)
    }
}

impl Reloader {
    /// A reloader for the files in `src`; `seen` starts at their current state.
    pub fn new(
        src: Arc<Sources>,
        plan: NumberingPlan,
        lists: SharedLists,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut paths: Vec<PathBuf> = src.files.iter().map(|f| f.path.clone()).collect();
        // The rule file reloads with the lists, into the same snapshot.
        paths.extend(src.rule_file.iter().cloned());
        let seen = fingerprint(&paths);
        metrics.lists_loaded(&lists.load(), unix_now());
        Reloader {
            src,
            plan: Arc::new(plan),
            lists,
            metrics,
            paths,
            seen,
        }
    }

    /// Whether any file changed since the last look (a stat per file, which
    /// never blocks on a FIFO).
    pub fn changed(&mut self) -> bool {
        let now = fingerprint(&self.paths);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }

    /// A load of every source, to run off the runtime.
    pub fn job(&self) -> LoadJob {
        LoadJob {
            src: self.src.clone(),
            plan: self.plan.clone(),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Swaps a loaded set in, or keeps the lists in force on error; logs
    /// and counts either way. Returns whether the set was swapped in.
    pub fn apply(
        &self,
        why: &str,
        loaded: Result<(ListSet, LoadStats), LoadError>,
        started: Instant,
    ) -> bool {
        match loaded {
            Ok((set, stats)) => {
                self.metrics.lists_loaded(&set, unix_now());
                self.lists.store(Arc::new(set));
                self.metrics.inc(Counter::ListReloads);
                log_files(&stats);
                tracing::info!(
                    trigger = why,
                    lines = stats.lines,
                    exact = stats.exact,
                    prefixes = stats.prefixes,
                    heap_mb = stats.bytes / (1 << 20),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "lists reloaded"
                );
                true
            }
            Err(e) => {
                if matches!(e, LoadError::Abandoned(_)) {
                    self.metrics.inc(Counter::ListReloadsAbandoned);
                } else {
                    self.metrics.inc(Counter::ListReloadFailures);
                }
                tracing::error!(trigger = why, error = %e, "list reload rejected; the lists in force stay");
                false
            }
        }
    }
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
