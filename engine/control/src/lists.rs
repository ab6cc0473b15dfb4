//! The files of today as a [`Source`]: list files, the lists compiled
//! into the binary, and the rule file, as the config names them.
//!
//! [`FileSource`] reads every configured file line by line (bounded
//! memory, even for 10M-line files; each line capped in length) into the
//! list it feeds. Only regular files are read (see [`crate::files`]); a
//! file with no entries is refused unless its config entry allows it (a
//! truncated upload must not silently unblock everything); a load checks a
//! cancel flag as it goes, so a reload that takes too long is abandoned.
//! Its [`Source::changed`] is a stat per file (size, modification time,
//! inode: an atomic rename over a file counts), which never blocks on a
//! FIFO. The publisher ([`crate::publish`]) decides what is rebuilt and
//! when, and keeps a changed file's list dirty until a load of it is in
//! force, so a load abandoned at its timeout is tried again.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::files::{self, FileError, MAX_RULE_FILE};
use crate::publish::{Feed, Layers, Publisher, RulesText, Source};

use kuzet_dataplane::metrics::Metrics;
use kuzet_rules::{ListBuilder, ListId, ListPolicy, ListSet, NumberingPlan};

/// One list file to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFile {
    /// Where it is.
    pub path: PathBuf,
    /// Which list it feeds.
    pub kind: ListId,
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
    pub embedded: Vec<(&'static str, &'static str, ListId)>,
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
    /// The load failed for a reason of kuzet's own (a thread that could
    /// not start, a loader that panicked).
    #[error("the load failed: {0}")]
    Crashed(String),
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

/// Builds the whole snapshot from `src` once, as start-up does (a
/// publisher over one [`FileSource`], into a snapshot of its own): for
/// checks, tools and tests.
pub fn load(
    src: &Sources,
    plan: &NumberingPlan,
    cancel: &AtomicBool,
) -> Result<(ListSet, LoadStats), LoadError> {
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(ListSet::default()));
    let mut p = Publisher::new(
        vec![Arc::new(FileSource::new(src.clone()))],
        plan.clone(),
        src.policy,
        shared.clone(),
        Arc::new(Metrics::default()),
        Duration::from_secs(1),
    );
    let job = p.job();
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        job.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let built = job.run()?;
    let stats = p.install(built);
    let set = ListSet::clone(&shared.load());
    Ok((set, stats))
}

/// Feeds one file to a builder; returns the number of lines read.
pub fn load_file(path: &Path, builder: &mut ListBuilder<'_>) -> Result<usize, LoadError> {
    let file = files::open_regular(path)?;
    if let Ok(meta) = file.metadata() {
        // About 14 bytes a line for E.164 numbers: reserve once.
        builder.reserve((meta.len() / 14) as usize);
    }
    load_lines(
        BufReader::with_capacity(1 << 20, file),
        &path.display().to_string(),
        builder,
        &AtomicBool::new(false),
        Instant::now(),
    )
}

pub use crate::publish::feed_lines as load_lines;

/// Size, modification time and inode of a file: a change in any of them
/// (including an atomic rename over it) means reload.
type Fingerprint = Option<(u64, SystemTime, u64)>;

fn fingerprint(p: &Path) -> Fingerprint {
    let m = std::fs::metadata(p).ok()?;
    Some((
        m.len(),
        m.modified().ok()?,
        std::os::unix::fs::MetadataExt::ino(&m),
    ))
}

/// The config's files (and compiled-in texts) as a source.
pub struct FileSource {
    src: Sources,
    /// Each watched path with the layer it feeds, and its fingerprint
    /// when last asked.
    watched: Mutex<Vec<(PathBuf, Layers, Fingerprint)>>,
}

impl FileSource {
    /// A source over `src`; its files' state now is the baseline
    /// [`Source::changed`] compares with.
    pub fn new(src: Sources) -> FileSource {
        let mut watched: Vec<(PathBuf, Layers, Fingerprint)> = src
            .files
            .iter()
            .map(|f| (f.path.clone(), Layers::list(f.kind), fingerprint(&f.path)))
            .collect();
        if let Some(r) = &src.rule_file {
            watched.push((r.clone(), Layers::RULES, fingerprint(r)));
        }
        FileSource {
            src,
            watched: Mutex::new(watched),
        }
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        "files"
    }

    fn layers(&self) -> Layers {
        let mut l = Layers::NONE;
        for f in &self.src.files {
            l = l.with(Layers::list(f.kind));
        }
        for (_, _, kind) in &self.src.embedded {
            l = l.with(Layers::list(*kind));
        }
        if self.src.rule_file.is_some() || self.src.embedded_rules.is_some() {
            l = l.with(Layers::RULES);
        }
        l
    }

    fn changed(&self) -> Layers {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = Layers::NONE;
        for (path, layer, seen) in w.iter_mut() {
            let now = fingerprint(path);
            if now != *seen {
                *seen = now;
                changed = changed.with(*layer);
            }
        }
        changed
    }

    fn feed(&self, l: ListId, into: &mut Feed<'_, '_>) -> Result<(), LoadError> {
        for (name, text, _) in self.src.embedded.iter().filter(|e| e.2 == l) {
            into.text(name, text)?;
        }
        for f in self.src.files.iter().filter(|f| f.kind == l) {
            let before = into.entries();
            let file = files::open_regular(&f.path)?;
            if let Ok(meta) = file.metadata() {
                // About 14 bytes a line for E.164 numbers: reserve once.
                into.reserve((meta.len() / 14) as usize);
            }
            let shown = f.path.display().to_string();
            into.lines(BufReader::with_capacity(1 << 20, file), &shown)?;
            let entries = into.entries() - before;
            if entries == 0 && !f.allow_empty {
                return Err(LoadError::Empty {
                    path: shown,
                    kind: l.name(),
                });
            }
            into.note(shown, entries);
        }
        Ok(())
    }

    fn rules(&self) -> Result<Option<RulesText>, LoadError> {
        Ok(match (&self.src.rule_file, self.src.embedded_rules) {
            (Some(path), _) => Some(RulesText {
                name: path.display().to_string(),
                text: files::read_text(path, MAX_RULE_FILE)?,
            }),
            (None, Some((name, text))) => Some(RulesText {
                name: name.into(),
                text: text.into(),
            }),
            (None, None) => None,
        })
    }
}
