//! Loading list files (and the rule file) and swapping them in: one path
//! for start-up and reload.
//!
//! [`load`] reads every configured file line by line (bounded memory, even
//! for 10M-line files), feeds the lines to the scoring core's builders and
//! returns a complete [`ListSet`], or the first error with its file and
//! line. [`Reloader`] runs on the control plane: it polls the files'
//! fingerprints and reacts to SIGHUP, and on success stores the new set in
//! the shared `ArcSwap`, so a call sees either the old lists or the new
//! ones, never half of either. On failure the lists in force stay.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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

/// Where the lists and rules come from: what the config names, resolved
/// to paths, or texts compiled into the binary.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// List files with their kinds, in order.
    pub files: Vec<(PathBuf, ListKind)>,
    /// Lists given as text (the binary's compiled-in samples): name, text, kind.
    pub embedded: Vec<(&'static str, &'static str, ListKind)>,
    /// The behaviour rule file, if any.
    pub rule_file: Option<PathBuf>,
    /// Scores and sides for list hits.
    pub policy: ListPolicy,
}

/// Why a list set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not UTF-8.
    #[error("{path}:{line}: the line is not valid UTF-8")]
    Utf8 {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
    },
    /// A list line is not an entry.
    #[error(transparent)]
    List(#[from] kuzet_rules::ListError),
    /// The rule file cannot be used.
    #[error(transparent)]
    Rules(#[from] kuzet_rules::ruleset::RuleError),
}

/// What was loaded, for the log.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadStats {
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

/// Builds the whole list set from its sources: the embedded texts, then
/// every file, then the rule file.
pub fn load(src: &Sources, plan: &NumberingPlan) -> Result<(ListSet, LoadStats), LoadError> {
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
        for (path, kind) in &src.files {
            stats.lines += load_file(path, builders[pick(*kind)])?;
        }
    }
    let rules = match &src.rule_file {
        None => RuleSet::builtin(&src.policy, plan),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
                path: path.display().to_string(),
                source,
            })?;
            RuleSet::from_toml_str(&text, &path.display().to_string(), plan, &src.policy)?
        }
    };
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
    let shown = path.display().to_string();
    let io = |e| LoadError::Io {
        path: shown.clone(),
        source: e,
    };
    let file = File::open(path).map_err(io)?;
    if let Ok(meta) = file.metadata() {
        // About 14 bytes a line for E.164 numbers: reserve once.
        builder.reserve((meta.len() / 14) as usize);
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(256);
    let mut n = 0;
    let started = Instant::now();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
            break;
        }
        n += 1;
        let text = std::str::from_utf8(&line).map_err(|_| LoadError::Utf8 {
            path: shown.clone(),
            line: n,
        })?;
        builder.add_line(&shown, n, text)?;
        if n % PROGRESS_EVERY == 0 {
            tracing::info!(
                file = %shown,
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

/// Watches list files and reloads them into the shared snapshot.
pub struct Reloader {
    src: Arc<Sources>,
    plan: NumberingPlan,
    lists: SharedLists,
    metrics: Arc<Metrics>,
    paths: Vec<PathBuf>,
    seen: Fingerprint,
}

impl Reloader {
    /// A reloader for the files in `src`; `seen` starts at their current state.
    pub fn new(
        src: Arc<Sources>,
        plan: NumberingPlan,
        lists: SharedLists,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut paths: Vec<PathBuf> = src.files.iter().map(|(p, _)| p.clone()).collect();
        // The rule file reloads with the lists, into the same snapshot.
        paths.extend(src.rule_file.iter().cloned());
        let seen = fingerprint(&paths);
        Reloader {
            src,
            plan,
            lists,
            metrics,
            paths,
            seen,
        }
    }

    /// Reloads if any file changed since the last look. Returns whether a
    /// reload was attempted.
    pub fn poll(&mut self) -> bool {
        let now = fingerprint(&self.paths);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        self.reload("file change");
        true
    }

    /// Loads everything again and swaps it in; keeps the old set on error.
    pub fn reload(&mut self, why: &str) -> bool {
        let started = Instant::now();
        match load(&self.src, &self.plan) {
            Ok((set, stats)) => {
                self.lists.store(Arc::new(set));
                self.metrics.inc(Counter::ListReloads);
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
                self.metrics.inc(Counter::ListReloadFailures);
                tracing::error!(trigger = why, error = %e, "list reload rejected; the lists in force stay");
                false
            }
        }
    }
}
