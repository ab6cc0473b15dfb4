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
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use kuzet_rules::ruleset::RuleSet;
use kuzet_rules::{ListBuilder, ListPolicy, ListSet, NumberingPlan};

use crate::config::{Config, ListKind, EMBEDDED_LISTS};
use crate::handler::SharedLists;
use crate::metrics::{Counter, Metrics};

/// Why a list set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: the line is not valid UTF-8")]
    Utf8 { path: String, line: usize },
    #[error(transparent)]
    List(#[from] kuzet_rules::ListError),
    #[error("{0}")]
    Rules(String),
}

/// What was loaded, for the log.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadStats {
    pub lines: usize,
    pub exact: usize,
    pub prefixes: usize,
    pub bytes: usize,
}

/// Lines between progress messages on a long load.
const PROGRESS_EVERY: usize = 1_000_000;

/// Builds the whole list set from the config: its files, or the embedded
/// samples when none is configured.
pub fn load(cfg: &Config, plan: &NumberingPlan) -> Result<(ListSet, LoadStats), LoadError> {
    let mut block = ListBuilder::new(plan);
    let mut allow = ListBuilder::new(plan);
    let mut flag = ListBuilder::new(plan);
    let mut protected = ListBuilder::new(plan);
    let mut premium = ListBuilder::new(plan);
    let mut stats = LoadStats::default();
    let pick = |k: ListKind| -> usize {
        match k {
            ListKind::Block => 0,
            ListKind::Allow => 1,
            ListKind::Flag => 2,
            ListKind::Protected => 3,
            ListKind::Premium => 4,
        }
    };
    {
        let builders = [
            &mut block,
            &mut allow,
            &mut flag,
            &mut protected,
            &mut premium,
        ];
        if cfg.embedded_lists {
            for (name, text, kind) in EMBEDDED_LISTS {
                builders[pick(kind)].add_text(name, text)?;
                stats.lines += text.lines().count();
            }
        } else {
            for (path, kind) in cfg.lists.files() {
                let path = cfg.resolve(&path);
                stats.lines += load_file(&path, builders[pick(kind)])?;
            }
        }
    }
    let rules = match &cfg.rules.file {
        None => None,
        Some(p) => {
            let path = cfg.resolve(p);
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let set = RuleSet::from_toml_str(&text, &path.display().to_string(), plan)
                .map_err(|e| LoadError::Rules(e.to_string()))?;
            Some(Box::new(set))
        }
    };
    let set = ListSet {
        block: block.finish(),
        allow: allow.finish(),
        flag: flag.finish(),
        protected: protected.finish(),
        premium: premium.finish(),
        policy: ListPolicy {
            block_score: cfg.verdict.block_score,
            flag_score: cfg.verdict.flag_score,
            sides: cfg.lists.sides(),
        },
        rules,
    };
    for l in [
        &set.block,
        &set.allow,
        &set.flag,
        &set.protected,
        &set.premium,
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
    cfg: Arc<Config>,
    plan: NumberingPlan,
    lists: SharedLists,
    metrics: Arc<Metrics>,
    paths: Vec<PathBuf>,
    seen: Fingerprint,
}

impl Reloader {
    /// A reloader for the files in `cfg`; `seen` starts at their current state.
    pub fn new(
        cfg: Arc<Config>,
        plan: NumberingPlan,
        lists: SharedLists,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut paths: Vec<PathBuf> = if cfg.embedded_lists {
            Vec::new()
        } else {
            cfg.lists
                .files()
                .iter()
                .map(|(p, _)| cfg.resolve(p))
                .collect()
        };
        // The rule file reloads with the lists, into the same snapshot.
        paths.extend(cfg.rules.file.iter().map(|p| cfg.resolve(p)));
        let seen = fingerprint(&paths);
        Reloader {
            cfg,
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
        match load(&self.cfg, &self.plan) {
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
