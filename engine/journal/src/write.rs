//! The journal's writer: a thread of its own (`SCHED_IDLE`) that drains the
//! data plane's journal queue into Parquet files, one folder per kind, per
//! day and per hour (`calls/day=2026-12-05/hour=18/NODE-SEQ.parquet`, the
//! layout DuckDB's `hive_partitioning` reads as columns). A file is
//! written under a hidden name (`.NODE-SEQ.parquet.part`) and renamed when
//! closed: at the hour's end, after `roll_s`, or at shutdown, so a reader
//! never sees half a file. Files are 0600 in 0700 folders, created with
//! `O_NOFOLLOW | O_EXCL`.
//!
//! Every loss is counted and said at WARN (at most once a minute, with
//! counts): a full queue (the data plane's `journal_dropped_total`), a
//! failing disk (`journal_write_failed_total`: the rows of the file that
//! failed; the writer tries a new file at most once a second), the size
//! cap with nothing older left to prune (`journal_capped_total`). While
//! writing fails the gauge `journal_failing_seconds` grows, and `/readyz`
//! warns. Hours older than `keep_hours` are pruned, and past `max_mb` the
//! oldest files go first.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::ArrayBuilder;
use arrow_array::builder::{
    BooleanBuilder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
    UInt64Builder, UInt8Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use kuzet_dataplane::journal::{CallFact, Entry, OutcomeFact, OutcomeWhat};
use kuzet_dataplane::metrics::{Gauge, Metrics};
use kuzet_dataplane::SharedLists;
use kuzet_rules::{ListSet, Number};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::WriterProperties;

use crate::archive::Archive;
use crate::config::JournalConfig;
use crate::schema::{self, Kind};

kuzet_dataplane::counter_set! {
    /// The journal writer's counters.
    pub struct JournalCounters {
        calls => "journal_calls_total", "Calls written to the call journal",
        outcomes => "journal_outcomes_total", "Outcomes written to the call journal",
        write_failed => "journal_write_failed_total", "Journal rows lost because their file could not be written",
        capped => "journal_capped_total", "Journal rows dropped because the journal was at its size cap with nothing older to prune",
        files => "journal_files_total", "Journal files closed and readable",
        pruned => "journal_files_pruned_total", "Journal files removed for age or size",
        versions => "journal_versions_archived_total", "Snapshot versions kept beside the journal",
        cut_short => "journal_files_cut_short_total", "Journal files left half-written by a crash and removed at start",
    }
}

/// How long the writer waits before looking at an empty queue again.
const POLL: Duration = Duration::from_millis(5);

/// Rows gathered before they are handed to the file as one batch.
const BATCH_ROWS: usize = 8192;

/// The day and hour folders of a µs timestamp: (hour start in µs,
/// `day=YYYY-MM-DD/hour=HH`).
pub fn hour_of(ts_us: i64) -> (i64, String) {
    let hour = ts_us.div_euclid(3_600_000_000);
    let (y, m, d) = kuzet_store::days::civil_from_days(hour.div_euclid(24));
    (
        hour * 3_600_000_000,
        format!("day={y:04}-{m:02}-{d:02}/hour={:02}", hour.rem_euclid(24)),
    )
}

/// The hour start (µs) a `day=…/hour=…` folder pair names.
pub fn parse_hour(day: &str, hour: &str) -> Option<i64> {
    let day = day.strip_prefix("day=")?;
    let hour: i64 = hour.strip_prefix("hour=")?.parse().ok()?;
    let mut it = day.split('-');
    let (y, m, d): (i64, u32, u32) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || !(0..24).contains(&hour) || !(1..=12).contains(&m) {
        return None;
    }
    let days = kuzet_store::days::days_from_civil(y, m, d);
    Some((days * 24 + hour) * 3_600_000_000)
}

/// Creates `path` 0600, never through a link, never over a file.
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates the folders of `path` below `root`, 0700 each, refusing a
/// link on the way.
fn make_dirs(root: &Path, rel: &Path) -> io::Result<()> {
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory (a link is never followed)",
                    at.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                use std::os::unix::fs::DirBuilderExt;
                match std::fs::DirBuilder::new().mode(0o700).create(&at) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The column builders of one kind of file.
enum Rows {
    Calls(Box<CallCols>),
    Outcomes(Box<OutcomeCols>),
}

struct CallCols {
    seq: UInt64Builder,
    ts: TimestampMicrosecondBuilder,
    secs: UInt32Builder,
    hour: UInt8Builder,
    weekday: UInt8Builder,
    node: StringBuilder,
    trunk: StringBuilder,
    trunk_kind: StringBuilder,
    source: StringBuilder,
    numbers: [(StringBuilder, UInt64Builder); 5],
    a_present: BooleanBuilder,
    caller_trust: StringBuilder,
    digest: UInt64Builder,
    decision: StringBuilder,
    shadow_decision: StringBuilder,
    score: UInt32Builder,
    allowlisted: BooleanBuilder,
    fired: ListBuilder<StringBuilder>,
    fired_shadow: ListBuilder<StringBuilder>,
    version: StringBuilder,
}

struct OutcomeCols {
    seq: UInt64Builder,
    ts: TimestampMicrosecondBuilder,
    secs: UInt32Builder,
    node: StringBuilder,
    caller: StringBuilder,
    caller_key: UInt64Builder,
    callee: StringBuilder,
    callee_key: UInt64Builder,
    outcome: StringBuilder,
    ms: UInt32Builder,
    via: StringBuilder,
    known: BooleanBuilder,
}

fn ts_builder() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

impl Rows {
    fn new(kind: Kind) -> Rows {
        match kind {
            Kind::Calls => Rows::Calls(Box::new(CallCols {
                seq: UInt64Builder::new(),
                ts: ts_builder(),
                secs: UInt32Builder::new(),
                hour: UInt8Builder::new(),
                weekday: UInt8Builder::new(),
                node: StringBuilder::new(),
                trunk: StringBuilder::new(),
                trunk_kind: StringBuilder::new(),
                source: StringBuilder::new(),
                numbers: std::array::from_fn(|_| (StringBuilder::new(), UInt64Builder::new())),
                a_present: BooleanBuilder::new(),
                caller_trust: StringBuilder::new(),
                digest: UInt64Builder::new(),
                decision: StringBuilder::new(),
                shadow_decision: StringBuilder::new(),
                score: UInt32Builder::new(),
                allowlisted: BooleanBuilder::new(),
                fired: ListBuilder::new(StringBuilder::new()),
                fired_shadow: ListBuilder::new(StringBuilder::new()),
                version: StringBuilder::new(),
            })),
            Kind::Outcomes => Rows::Outcomes(Box::new(OutcomeCols {
                seq: UInt64Builder::new(),
                ts: ts_builder(),
                secs: UInt32Builder::new(),
                node: StringBuilder::new(),
                caller: StringBuilder::new(),
                caller_key: UInt64Builder::new(),
                callee: StringBuilder::new(),
                callee_key: UInt64Builder::new(),
                outcome: StringBuilder::new(),
                ms: UInt32Builder::new(),
                via: StringBuilder::new(),
                known: BooleanBuilder::new(),
            })),
        }
    }

    fn len(&self) -> usize {
        match self {
            Rows::Calls(c) => c.seq.len(),
            Rows::Outcomes(o) => o.seq.len(),
        }
    }

    /// The rows gathered as one batch; the builders start again empty.
    fn finish(&mut self, kind: Kind) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let cols: Vec<ArrayRef> = match self {
            Rows::Calls(c) => {
                let mut v: Vec<ArrayRef> = vec![
                    Arc::new(c.seq.finish()),
                    Arc::new(c.ts.finish()),
                    Arc::new(c.secs.finish()),
                    Arc::new(c.hour.finish()),
                    Arc::new(c.weekday.finish()),
                    Arc::new(c.node.finish()),
                    Arc::new(c.trunk.finish()),
                    Arc::new(c.trunk_kind.finish()),
                    Arc::new(c.source.finish()),
                ];
                for (i, (text, key)) in c.numbers.iter_mut().enumerate() {
                    v.push(Arc::new(text.finish()));
                    v.push(Arc::new(key.finish()));
                    if i == 3 {
                        v.push(Arc::new(c.a_present.finish()));
                    }
                }
                v.extend([
                    Arc::new(c.caller_trust.finish()) as ArrayRef,
                    Arc::new(c.digest.finish()),
                    Arc::new(c.decision.finish()),
                    Arc::new(c.shadow_decision.finish()),
                    Arc::new(c.score.finish()),
                    Arc::new(c.allowlisted.finish()),
                    Arc::new(c.fired.finish()),
                    Arc::new(c.fired_shadow.finish()),
                    Arc::new(c.version.finish()),
                ]);
                v
            }
            Rows::Outcomes(o) => vec![
                Arc::new(o.seq.finish()),
                Arc::new(o.ts.finish()),
                Arc::new(o.secs.finish()),
                Arc::new(o.node.finish()),
                Arc::new(o.caller.finish()),
                Arc::new(o.caller_key.finish()),
                Arc::new(o.callee.finish()),
                Arc::new(o.callee_key.finish()),
                Arc::new(o.outcome.finish()),
                Arc::new(o.ms.finish()),
                Arc::new(o.via.finish()),
                Arc::new(o.known.finish()),
            ],
        };
        RecordBatch::try_new(kind.schema(), cols)
    }
}

/// The trust names, by `records::trust` value.
fn trust_name(t: u8) -> &'static str {
    match t {
        kuzet_dataplane::records::trust::NETWORK => "network",
        kuzet_dataplane::records::trust::CLAIMED => "claimed",
        _ => "none",
    }
}

/// One file being written.
struct Open {
    part: PathBuf,
    done: PathBuf,
    writer: ArrowWriter<File>,
    hour: i64,
    opened: Instant,
    rows: u64,
}

/// One kind's current file and the rows not yet handed to it.
struct Segment {
    open: Option<Open>,
    rows: Rows,
    /// Rows handed to `open` or gathered, lost together if it fails.
    pending: u64,
}

/// A closed file, for pruning.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Closed {
    hour: i64,
    path: PathBuf,
}

/// Every snapshot put in force, handed over by the publisher as it swaps
/// one in (bounded: the oldest of more than 256 waiting is let go), so a
/// version the writer would meet too late on the shared snapshot is kept
/// all the same.
#[derive(Debug, Default)]
pub struct VersionFeed {
    q: std::sync::Mutex<std::collections::VecDeque<Arc<ListSet>>>,
}

impl VersionFeed {
    /// A snapshot was put in force.
    pub fn offer(&self, s: &Arc<ListSet>) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(s.clone());
        if q.len() > 256 {
            q.pop_front();
        }
    }

    fn take(&self) -> Vec<Arc<ListSet>> {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }
}

/// What the writer needs besides its queue.
pub struct WriterSetup {
    /// The journal's folder (checked and made by [`prepare`]).
    pub root: PathBuf,
    /// This node's name, written in every row.
    pub node: String,
    /// The trunks' names in config order.
    pub trunks: Vec<Arc<str>>,
    /// `[journal]`.
    pub cfg: JournalConfig,
    /// The snapshot in force, for rule names and the version archive.
    pub lists: SharedLists,
    /// Every snapshot as it is put in force.
    pub versions: Arc<VersionFeed>,
    /// The shared counters and gauges.
    pub metrics: Arc<Metrics>,
}

/// Checks or makes the journal's folder: a real directory, kuzet's own,
/// 0700.
pub fn prepare(root: &Path) -> Result<(), String> {
    kuzet_store::private::prepare_dir(root)
        .map_err(|e| format!("journal folder {}: {e}", root.display()))
}

/// The writer's state.
pub struct Writer {
    s: WriterSetup,
    counters: Arc<JournalCounters>,
    archive: Archive,
    seq: u64,
    calls: Segment,
    outcomes: Segment,
    closed: BTreeMap<Closed, u64>,
    bytes: u64,
    /// Snapshots by generation, for fired rules' names (the last few).
    sets: Vec<Arc<ListSet>>,
    /// Versions named by rows of the files open now.
    versions_open: Vec<kuzet_rules::snapshot::Version>,
    /// The last version a row named, and its text.
    version_text: (kuzet_rules::snapshot::Version, String),
    failing_since: Option<Instant>,
    retry_at: Option<Instant>,
    capped: bool,
    warn: Warn,
    text: String,
    last_prune: Instant,
}

/// WARN lines at most once a minute, with what was lost since the last.
#[derive(Default)]
struct Warn {
    last: Option<Instant>,
    failed: u64,
    capped: u64,
}

impl Warn {
    fn note(&mut self, failed: u64, capped: u64, why: &dyn std::fmt::Display) {
        self.failed += failed;
        self.capped += capped;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                lost_to_errors = self.failed,
                dropped_at_cap = self.capped,
                reason = %why,
                "call journal rows lost (journal_write_failed_total, journal_capped_total); calls go on"
            );
            self.last = Some(Instant::now());
            self.failed = 0;
            self.capped = 0;
        }
    }
}

impl Writer {
    /// A writer over `s`; files a crash left half-written are removed
    /// (counted), and the closed files are listed for pruning.
    pub fn new(s: WriterSetup) -> Result<Writer, String> {
        prepare(&s.root)?;
        let counters: Arc<JournalCounters> = s.metrics.counter_set();
        let archive = Archive::new(&s.root).map_err(|e| format!("journal versions: {e}"))?;
        let mut w = Writer {
            counters,
            archive,
            seq: 0,
            calls: Segment {
                open: None,
                rows: Rows::new(Kind::Calls),
                pending: 0,
            },
            outcomes: Segment {
                open: None,
                rows: Rows::new(Kind::Outcomes),
                pending: 0,
            },
            closed: BTreeMap::new(),
            bytes: 0,
            sets: Vec::new(),
            versions_open: Vec::new(),
            version_text: Default::default(),
            failing_since: None,
            retry_at: None,
            capped: false,
            warn: Warn::default(),
            text: String::new(),
            last_prune: Instant::now(),
            s,
        };
        w.scan();
        w.s.metrics.set(Gauge::JournalOn, 1);
        w.gauges();
        Ok(w)
    }

    /// Lists the closed files and removes the parts a crash left.
    fn scan(&mut self) {
        for kind in [Kind::Calls, Kind::Outcomes] {
            for (hour, path, len) in files_of(&self.s.root, kind, true) {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".part") {
                    if std::fs::remove_file(&path).is_ok() {
                        self.counters.cut_short.inc();
                        tracing::warn!(file = %path.display(), "a journal file a crash left half-written was removed; its rows are lost");
                    }
                    continue;
                }
                self.bytes += len;
                self.closed.insert(Closed { hour, path }, len);
            }
        }
    }

    /// Runs until the queue's every sender is gone or `stop` is set (then
    /// whatever is queued is taken), and closes the open files.
    ///
    /// The queue is polled, never waited on: a receiver parked in `recv`
    /// makes the next `try_send` wake it, a system call on the call path
    /// for every entry (measured: the journal cost 9.35 µs of CPU a call
    /// at 20,000 calls/s so, about 2 polled; benches/README.md). An empty
    /// queue is looked at again
    /// after [`POLL`]; at 100,000 entries a second that leaves 500 of the
    /// queue's 65,536 places in use.
    pub fn run(mut self, rx: Receiver<Entry>, stop: Arc<std::sync::atomic::AtomicBool>) {
        loop {
            let stopping = stop.load(std::sync::atomic::Ordering::Acquire);
            let mut taken = 0usize;
            let gone = loop {
                match rx.try_recv() {
                    Ok(e) => {
                        self.take(e);
                        taken += 1;
                        // Timers get their turn even under a flood.
                        if taken == 65_536 && !stopping {
                            break false;
                        }
                    }
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            if gone || stopping {
                // The workers are gone and what they left is taken.
                break;
            }
            self.tick();
            if taken == 0 {
                std::thread::sleep(POLL);
            }
        }
        self.close_all();
    }

    /// Takes one entry (public for benches and tests that drive a writer
    /// without a queue).
    pub fn take(&mut self, e: Entry) {
        let now_us = match &e {
            Entry::Call(c) => c.at.ts_us,
            Entry::Outcome(o) => o.ts_us,
        };
        self.seq = (self.seq + 1).max(now_us.max(0) as u64);
        let seq = self.seq;
        if self.capped {
            self.counters.capped.inc();
            self.warn.note(0, 1, &"the journal is at [journal] max_mb");
            return;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            self.counters.write_failed.inc();
            self.warn.note(1, 0, &"the journal's disk is failing");
            return;
        }
        match e {
            Entry::Call(c) => {
                self.note_version(&c);
                if let Err(err) = self.ensure_open(Kind::Calls, c.at.ts_us) {
                    self.failed(Kind::Calls, 1, &err);
                    return;
                }
                self.push_call(seq, &c);
                self.counters.calls.inc();
            }
            Entry::Outcome(o) => {
                if let Err(err) = self.ensure_open(Kind::Outcomes, o.ts_us) {
                    self.failed(Kind::Outcomes, 1, &err);
                    return;
                }
                self.push_outcome(seq, &o);
                self.counters.outcomes.inc();
            }
        }
        for kind in [Kind::Calls, Kind::Outcomes] {
            if self.seg(kind).rows.len() >= BATCH_ROWS {
                if let Err(err) = self.flush(kind) {
                    self.failed(kind, 0, &err);
                }
            }
        }
    }

    /// Timers: closes files past `roll_s` and prunes.
    pub fn tick(&mut self) {
        self.drain_versions();
        let roll = Duration::from_secs(u64::from(self.s.cfg.roll_s));
        for kind in [Kind::Calls, Kind::Outcomes] {
            if self
                .seg(kind)
                .open
                .as_ref()
                .is_some_and(|o| o.opened.elapsed() >= roll)
            {
                self.close(kind);
            }
        }
        if self.last_prune.elapsed() >= Duration::from_secs(10) {
            self.prune();
        }
        self.gauges();
    }

    /// Closes both open files (shutdown, tests).
    pub fn close_all(&mut self) {
        self.close(Kind::Calls);
        self.close(Kind::Outcomes);
        self.prune();
        self.gauges();
    }

    fn seg(&mut self, kind: Kind) -> &mut Segment {
        match kind {
            Kind::Calls => &mut self.calls,
            Kind::Outcomes => &mut self.outcomes,
        }
    }

    fn gauges(&self) {
        let m = &self.s.metrics;
        m.set(Gauge::JournalBytes, self.bytes as i64);
        m.set(
            Gauge::JournalFailingS,
            self.failing_since
                .map_or(0, |t| t.elapsed().as_secs().max(1) as i64),
        );
    }

    /// Keeps the snapshot a call was judged under, for its rules' names
    /// and the archive.
    fn note_version(&mut self, c: &CallFact) {
        if self.sets.iter().any(|s| s.generation == c.generation) {
            return;
        }
        self.drain_versions();
        if self.sets.iter().any(|s| s.generation == c.generation) {
            return;
        }
        let now = self.s.lists.load_full();
        if now.generation == c.generation {
            self.keep_set(now);
        }
    }

    fn keep_set(&mut self, set: Arc<ListSet>) {
        if self.sets.iter().any(|s| s.generation == set.generation) {
            return;
        }
        match self.archive.keep(&set) {
            Ok(true) => self.counters.versions.inc(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(version = %set.version, error = %e, "a snapshot version could not be kept beside the journal: its calls cannot be replayed under it")
            }
        }
        self.sets.push(set);
        if self.sets.len() > 16 {
            self.sets.remove(0);
        }
    }

    /// Takes in the snapshot in force, so a version is archived even
    /// before a call names it.
    fn drain_versions(&mut self) {
        for set in self.s.versions.take() {
            self.keep_set(set);
        }
        let now = self.s.lists.load_full();
        if now.version.seq > 0 || now.version.digest != [0; 16] {
            self.keep_set(now);
        }
    }

    fn ensure_open(&mut self, kind: Kind, ts_us: i64) -> io::Result<()> {
        let (hour, rel) = hour_of(ts_us);
        if let Some(o) = &self.seg(kind).open {
            if o.hour == hour || ts_us < o.hour {
                // A row a little late for the hour just begun stays in the
                // file it is given to: files are in journal order.
                return Ok(());
            }
            self.close(kind);
        }
        let dir = PathBuf::from(kind.dir()).join(&rel);
        make_dirs(&self.s.root, &dir)?;
        let name = format!("{}-{}.parquet", self.s.node, self.seq);
        let full = self.s.root.join(&dir);
        let part = full.join(format!(".{name}.part"));
        let done = full.join(&name);
        let file = create_private(&part)?;
        // `seq` and `ts` rise row by row: stored as deltas they take a
        // byte or two where a dictionary that overflows at once took
        // seven. The digest is random: a dictionary of it is all waste.
        let col = |n: &str| parquet::schema::types::ColumnPath::from(n);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_column_encoding(col("seq"), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(col("seq"), false)
            .set_column_encoding(col("ts"), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(col("ts"), false)
            .set_column_dictionary_enabled(col("digest"), false)
            .set_max_row_group_row_count(Some(65_536))
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                "kuzet.journal".into(),
                schema::VERSION.to_string(),
            )]))
            .build();
        let writer =
            ArrowWriter::try_new(file, kind.schema(), Some(props)).map_err(io::Error::other)?;
        let seg = self.seg(kind);
        seg.open = Some(Open {
            part,
            done,
            writer,
            hour,
            opened: Instant::now(),
            rows: 0,
        });
        Ok(())
    }

    fn flush(&mut self, kind: Kind) -> io::Result<()> {
        let seg = self.seg(kind);
        if seg.rows.len() == 0 {
            return Ok(());
        }
        let n = seg.rows.len() as u64;
        let batch = seg.rows.finish(kind).map_err(io::Error::other)?;
        let Some(open) = seg.open.as_mut() else {
            return Err(io::Error::other("no file open"));
        };
        open.writer.write(&batch).map_err(io::Error::other)?;
        open.rows += n;
        Ok(())
    }

    /// Flushes and closes `kind`'s file, renaming it into sight.
    fn close(&mut self, kind: Kind) {
        if self.seg(kind).open.is_none() {
            return;
        }
        if let Err(e) = self.flush(kind) {
            self.failed(kind, 0, &e);
            return;
        }
        let Some(open) = self.seg(kind).open.take() else {
            return;
        };
        let rows = open.rows;
        let (part, done, hour) = (open.part.clone(), open.done.clone(), open.hour);
        let finished = open
            .writer
            .close()
            .map_err(io::Error::other)
            .and_then(|_| std::fs::rename(&part, &done));
        match finished {
            Ok(()) => {
                self.seg(kind).pending = 0;
                let len = std::fs::metadata(&done).map(|m| m.len()).unwrap_or(0);
                self.bytes += len;
                self.closed.insert(Closed { hour, path: done }, len);
                self.counters.files.inc();
                self.recovered();
                if kind == Kind::Calls {
                    for v in std::mem::take(&mut self.versions_open) {
                        self.archive.touch(&v.to_string());
                    }
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                self.seg(kind).pending = rows;
                self.failed(kind, 0, &e);
            }
        }
    }

    /// A write failed: the open file and the rows gathered for it are
    /// lost (counted); nothing is tried again for a second.
    fn failed(&mut self, kind: Kind, also: u64, e: &dyn std::fmt::Display) {
        let seg = self.seg(kind);
        let mut lost = also + seg.rows.len() as u64 + seg.pending;
        seg.rows = Rows::new(kind);
        seg.pending = 0;
        if let Some(open) = seg.open.take() {
            lost += open.rows;
            let part = open.part.clone();
            drop(open);
            let _ = std::fs::remove_file(&part);
        }
        self.counters.write_failed.add(lost);
        self.warn.note(lost, 0, e);
        self.failing_since.get_or_insert_with(Instant::now);
        self.retry_at = Some(Instant::now() + Duration::from_secs(1));
    }

    fn recovered(&mut self) {
        if self.failing_since.take().is_some() {
            tracing::info!("the call journal is being written again");
        }
        self.retry_at = None;
    }

    fn push_call(&mut self, seq: u64, c: &CallFact) {
        let set = self.sets.iter().find(|s| s.generation == c.generation);
        // The version's text is made once per version, not per row.
        if self.version_text.0 != c.version || self.version_text.1.is_empty() {
            self.version_text = (c.version, c.version.to_string());
        }
        if !self.versions_open.contains(&c.version) {
            self.versions_open.push(c.version);
        }
        let version = &self.version_text.1;
        let trunk = usize::from(c.at.trunk)
            .checked_sub(1)
            .and_then(|i| self.s.trunks.get(i));
        let node = &self.s.node;
        let text = &mut self.text;
        let Rows::Calls(cols) = &mut self.calls.rows else {
            return;
        };
        cols.seq.append_value(seq);
        cols.ts.append_value(c.at.ts_us);
        cols.secs.append_value(c.input.time.secs);
        cols.hour.append_value(c.input.time.hour);
        cols.weekday.append_value(c.input.time.weekday);
        cols.node.append_value(node);
        cols.trunk.append_option(trunk.map(|t| &**t));
        cols.trunk_kind
            .append_option(c.input.trunk.map(|k| k.as_str()));
        text.clear();
        let _ = write!(text, "{}", c.at.source);
        cols.source.append_value(&*text);
        let i = &c.input;
        for (k, n) in [i.a, i.from, i.pai, i.display, i.b].into_iter().enumerate() {
            let (t, key) = &mut cols.numbers[k];
            match n {
                Some(n) => {
                    text.clear();
                    let _ = write!(text, "{n}");
                    t.append_value(&*text);
                    key.append_value(n.raw());
                }
                None => {
                    t.append_null();
                    key.append_null();
                }
            }
            if k == 3 {
                cols.a_present.append_value(i.a_present);
            }
        }
        cols.caller_trust.append_value(trust_name(c.at.a_trust));
        cols.digest.append_value(c.at.digest);
        cols.decision.append_value(c.decision.as_str());
        cols.shadow_decision
            .append_value(c.shadow_decision.as_str());
        cols.score.append_value(c.score);
        cols.allowlisted.append_value(c.allowlisted);
        for (shadow, list) in [(false, &mut cols.fired), (true, &mut cols.fired_shadow)] {
            for f in c.fired().iter().filter(|f| f.shadow == shadow) {
                match set
                    .as_ref()
                    .and_then(|s| s.rules.rules.get(usize::from(f.rule)))
                {
                    Some(r) => list.values().append_value(&*r.id),
                    None => {
                        text.clear();
                        let _ = write!(text, "#{}", f.rule);
                        list.values().append_value(&*text);
                    }
                }
            }
            list.append(true);
        }
        cols.version.append_value(version);
    }

    fn push_outcome(&mut self, seq: u64, o: &OutcomeFact) {
        let node = &self.s.node;
        let text = &mut self.text;
        let Rows::Outcomes(cols) = &mut self.outcomes.rows else {
            return;
        };
        cols.seq.append_value(seq);
        cols.ts.append_value(o.ts_us);
        cols.secs.append_value(o.secs);
        cols.node.append_value(node);
        text.clear();
        match Number::from_raw(o.caller) {
            Some(n) => {
                let _ = write!(text, "{n}");
            }
            None => {
                let _ = write!(text, "#{}", o.caller);
            }
        }
        cols.caller.append_value(&*text);
        cols.caller_key.append_value(o.caller);
        match Number::from_raw(o.callee).filter(|_| o.callee != 0) {
            Some(n) => {
                text.clear();
                let _ = write!(text, "{n}");
                cols.callee.append_value(&*text);
                cols.callee_key.append_value(o.callee);
            }
            None => {
                cols.callee.append_null();
                cols.callee_key.append_null();
            }
        }
        let (what, ms) = match o.what {
            OutcomeWhat::Cancelled(ms) => ("cancelled", ms),
            OutcomeWhat::Answered(ms) => ("answered", ms),
            OutcomeWhat::Started => ("started", 0),
            OutcomeWhat::Ended => ("ended", 0),
        };
        cols.outcome.append_value(what);
        cols.ms.append_value(ms);
        cols.via.append_value(if o.proxy { "proxy" } else { "api" });
        cols.known.append_value(o.known);
    }

    /// Removes hours past `keep_hours`, then the oldest files while over
    /// `max_mb`; at the cap with nothing closed left, new rows are
    /// dropped until there is room.
    fn prune(&mut self) {
        self.last_prune = Instant::now();
        let now_us = kuzet_store::now_us();
        let oldest = now_us - i64::from(self.s.cfg.keep_hours) * 3_600_000_000;
        let cap = self.s.cfg.max_mb.saturating_mul(1 << 20);
        let open_bytes: u64 = [&self.calls, &self.outcomes]
            .iter()
            .filter_map(|s| s.open.as_ref())
            .map(|o| o.writer.bytes_written() as u64)
            .sum();
        while let Some((c, len)) = self.closed.first_key_value().map(|(c, l)| (c.clone(), *l)) {
            let old = c.hour + 3_600_000_000 <= oldest;
            if !old && self.bytes + open_bytes <= cap {
                break;
            }
            match std::fs::remove_file(&c.path) {
                Ok(()) => self.counters.pruned.inc(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %c.path.display(), error = %e, "a journal file could not be pruned");
                }
            }
            if let Some(dir) = c.path.parent() {
                // The hour's folder, and its day's, once empty.
                if std::fs::remove_dir(dir).is_ok() {
                    if let Some(day) = dir.parent() {
                        let _ = std::fs::remove_dir(day);
                    }
                }
            }
            self.closed.remove(&c);
            self.bytes = self.bytes.saturating_sub(len);
        }
        let was = self.capped;
        self.capped = self.bytes + open_bytes > cap;
        if self.capped && !was {
            tracing::warn!(
                max_mb = self.s.cfg.max_mb,
                "the call journal is at its size cap with nothing older to prune: new rows are dropped (journal_capped_total)"
            );
        }
        self.archive
            .prune(Duration::from_secs(u64::from(self.s.cfg.keep_hours) * 3600));
    }
}

/// Every file of `kind` under `root` with its hour start and length, by
/// hour then name; `parts` includes the hidden files still being written.
pub fn files_of(root: &Path, kind: Kind, parts: bool) -> Vec<(i64, PathBuf, u64)> {
    let mut out = Vec::new();
    let top = root.join(kind.dir());
    let Ok(days) = std::fs::read_dir(&top) else {
        return out;
    };
    for day in days.flatten() {
        let day_name = day.file_name().to_string_lossy().into_owned();
        let Ok(hours) = std::fs::read_dir(day.path()) else {
            continue;
        };
        for hour in hours.flatten() {
            let hour_name = hour.file_name().to_string_lossy().into_owned();
            let Some(start) = parse_hour(&day_name, &hour_name) else {
                continue;
            };
            let Ok(files) = std::fs::read_dir(hour.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let part = name.ends_with(".part");
                if !(name.ends_with(".parquet") || (parts && part)) {
                    continue;
                }
                let Ok(m) = f.metadata() else { continue };
                if !m.is_file() {
                    continue;
                }
                out.push((start, f.path(), m.len()));
            }
        }
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out
}

/// Starts the writer on a thread of its own, draining `rx`. The thread is
/// in `SCHED_IDLE`, as the record writer is: it runs on time no call
/// wants, so its bursts of Parquet encoding never sit in front of a
/// worker (at nice 10 the 99th percentile at 20,000 calls/s on two cores
/// went from 375-584 µs to about 900 µs in two runs; in `SCHED_IDLE` it
/// stays within the journal-off figure's noise). Under a load that
/// leaves no idle time its queue fills and drops, counted: the journal's
/// promise is never to delay a call.
pub fn spawn(
    s: WriterSetup,
    rx: Receiver<Entry>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let w = Writer::new(s)?;
    std::thread::Builder::new()
        .name("kuzet-journal".into())
        .spawn(move || {
            if let Err(e) = kuzet_net::idle_thread_policy() {
                tracing::debug!(error = %e, "no idle scheduling class for the journal writer; nice 10 instead");
                let _ = kuzet_net::lower_thread_priority(10);
            }
            w.run(rx, stop);
        })
        .map_err(|e| format!("cannot start the journal writer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_name_their_day_and_read_back() {
        let (start, rel) = hour_of(1_764_957_600_000_000 + 5);
        assert_eq!(rel, "day=2025-12-05/hour=18");
        assert_eq!(start, 1_764_957_600_000_000);
        assert_eq!(parse_hour("day=2025-12-05", "hour=18"), Some(start));
        assert_eq!(
            parse_hour("day=2024-02-29", "hour=00")
                .map(hour_of)
                .map(|x| x.1),
            Some("day=2024-02-29/hour=00".into())
        );
        assert_eq!(parse_hour("day=2025-13-01", "hour=00"), None);
        assert_eq!(parse_hour("day=2025-12-05", "hour=24"), None);
    }
}
