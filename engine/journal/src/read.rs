//! Reading a window of the journal back, in journal order: each kind's
//! files in the order they were opened (the writer's sequence in their
//! names), each as Arrow batches, the two kinds merged row by row on
//! their `seq`. [`Reader::next`] hands out a borrowed view of the next row
//! ([`RowRef`]), so the replay allocates nothing per call; [`rows`] gives
//! owned [`Row`]s to whoever prefers them.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, UInt32Type, UInt64Type, UInt8Type};
use arrow_array::{
    Array, BooleanArray, GenericListArray, PrimitiveArray, RecordBatch, StringArray,
};
use kuzet_rules::ruleset::Decision;
use kuzet_rules::{CallTime, Number, TrunkKind};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::row::{CallRow, OutcomeKind, OutcomeRow, Row};
use crate::schema::Kind;
use crate::write::files_of;

/// A file of the window, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalFile {
    /// Its path.
    pub path: PathBuf,
    /// The hour it holds (start, µs).
    pub hour: i64,
    /// Its length in bytes.
    pub len: u64,
    /// The writer's sequence when it was opened.
    pub first_seq: u64,
}

/// The files of `kind` holding rows of `[since_us, until_us)`, in journal
/// order.
pub fn files(root: &Path, kind: Kind, since_us: i64, until_us: i64) -> Vec<JournalFile> {
    let mut out: Vec<JournalFile> = files_of(root, kind, false)
        .into_iter()
        .filter(|(hour, _, _)| *hour + 3_600_000_000 > since_us && *hour < until_us)
        .map(|(hour, path, len)| {
            let first_seq = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit('-').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            JournalFile {
                path,
                hour,
                len,
                first_seq,
            }
        })
        .collect();
    out.sort_by_key(|f| (f.first_seq, f.hour));
    out
}

/// Why a journal could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {why}")]
pub struct ReadError {
    /// The file.
    pub file: String,
    /// What was wrong.
    pub why: String,
}

fn err(file: &Path, why: impl std::fmt::Display) -> ReadError {
    ReadError {
        file: file.display().to_string(),
        why: why.to_string(),
    }
}

/// The columns of a calls batch.
pub struct CallCols {
    /// `seq`.
    pub seq: PrimitiveArray<UInt64Type>,
    ts: PrimitiveArray<TimestampMicrosecondType>,
    secs: PrimitiveArray<UInt32Type>,
    hour: PrimitiveArray<UInt8Type>,
    weekday: PrimitiveArray<UInt8Type>,
    trunk: StringArray,
    trunk_kind: StringArray,
    source: StringArray,
    keys: [PrimitiveArray<UInt64Type>; 5],
    a_present: BooleanArray,
    caller_trust: StringArray,
    digest: PrimitiveArray<UInt64Type>,
    decision: StringArray,
    shadow_decision: StringArray,
    score: PrimitiveArray<UInt32Type>,
    allowlisted: BooleanArray,
    fired: GenericListArray<i32>,
    fired_shadow: GenericListArray<i32>,
    version: StringArray,
}

/// The columns of an outcomes batch.
pub struct OutcomeCols {
    /// `seq`.
    pub seq: PrimitiveArray<UInt64Type>,
    ts: PrimitiveArray<TimestampMicrosecondType>,
    secs: PrimitiveArray<UInt32Type>,
    caller_key: PrimitiveArray<UInt64Type>,
    callee_key: PrimitiveArray<UInt64Type>,
    outcome: StringArray,
    ms: PrimitiveArray<UInt32Type>,
    via: StringArray,
    known: BooleanArray,
}

fn col<'b>(b: &'b RecordBatch, name: &str) -> Result<&'b dyn Array, String> {
    b.column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| format!("no column {name}"))
}

macro_rules! typed {
    ($b:expr, $name:literal, prim $t:ty) => {
        col($b, $name)?
            .as_primitive_opt::<$t>()
            .ok_or(concat!("column ", $name, " has the wrong type"))?
            .clone()
    };
    ($b:expr, $name:literal, text) => {
        col($b, $name)?
            .as_string_opt::<i32>()
            .ok_or(concat!("column ", $name, " has the wrong type"))?
            .clone()
    };
    ($b:expr, $name:literal, bool) => {
        col($b, $name)?
            .as_boolean_opt()
            .ok_or(concat!("column ", $name, " has the wrong type"))?
            .clone()
    };
    ($b:expr, $name:literal, list) => {
        col($b, $name)?
            .as_list_opt::<i32>()
            .ok_or(concat!("column ", $name, " has the wrong type"))?
            .clone()
    };
}

impl CallCols {
    fn of(b: &RecordBatch) -> Result<CallCols, String> {
        Ok(CallCols {
            seq: typed!(b, "seq", prim UInt64Type),
            ts: typed!(b, "ts", prim TimestampMicrosecondType),
            secs: typed!(b, "secs", prim UInt32Type),
            hour: typed!(b, "hour", prim UInt8Type),
            weekday: typed!(b, "weekday", prim UInt8Type),
            trunk: typed!(b, "trunk", text),
            trunk_kind: typed!(b, "trunk_kind", text),
            source: typed!(b, "source", text),
            keys: [
                typed!(b, "caller_key", prim UInt64Type),
                typed!(b, "from_key", prim UInt64Type),
                typed!(b, "pai_key", prim UInt64Type),
                typed!(b, "display_key", prim UInt64Type),
                typed!(b, "callee_key", prim UInt64Type),
            ],
            a_present: typed!(b, "a_present", bool),
            caller_trust: typed!(b, "caller_trust", text),
            digest: typed!(b, "digest", prim UInt64Type),
            decision: typed!(b, "decision", text),
            shadow_decision: typed!(b, "shadow_decision", text),
            score: typed!(b, "score", prim UInt32Type),
            allowlisted: typed!(b, "allowlisted", bool),
            fired: typed!(b, "fired", list),
            fired_shadow: typed!(b, "fired_shadow", list),
            version: typed!(b, "version", text),
        })
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// True when the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
}

impl OutcomeCols {
    fn of(b: &RecordBatch) -> Result<OutcomeCols, String> {
        Ok(OutcomeCols {
            seq: typed!(b, "seq", prim UInt64Type),
            ts: typed!(b, "ts", prim TimestampMicrosecondType),
            secs: typed!(b, "secs", prim UInt32Type),
            caller_key: typed!(b, "caller_key", prim UInt64Type),
            callee_key: typed!(b, "callee_key", prim UInt64Type),
            outcome: typed!(b, "outcome", text),
            ms: typed!(b, "ms", prim UInt32Type),
            via: typed!(b, "via", text),
            known: typed!(b, "known", bool),
        })
    }
}

/// A decision's name read back.
pub fn decision(s: &str) -> Decision {
    match s {
        "block" => Decision::Block,
        "redirect" => Decision::Redirect,
        "flag" => Decision::Flag,
        _ => Decision::Allow,
    }
}

fn key(a: &PrimitiveArray<UInt64Type>, i: usize) -> Option<Number> {
    if a.is_null(i) {
        None
    } else {
        Number::from_raw(a.value(i))
    }
}

fn text(a: &StringArray, i: usize) -> Option<&str> {
    (!a.is_null(i)).then(|| a.value(i))
}

/// One call of a batch, borrowed.
#[derive(Clone, Copy)]
pub struct CallRef<'b> {
    c: &'b CallCols,
    i: usize,
}

impl<'b> CallRef<'b> {
    /// The journal's order.
    pub fn seq(&self) -> u64 {
        self.c.seq.value(self.i)
    }
    /// Arrival, µs.
    pub fn ts_us(&self) -> i64 {
        self.c.ts.value(self.i)
    }
    /// The clock scoring read.
    pub fn time(&self) -> CallTime {
        CallTime {
            secs: self.c.secs.value(self.i),
            hour: self.c.hour.value(self.i),
            weekday: self.c.weekday.value(self.i),
        }
    }
    /// The trunk's name.
    pub fn trunk(&self) -> Option<&'b str> {
        text(&self.c.trunk, self.i)
    }
    /// The trunk's kind.
    pub fn trunk_kind(&self) -> Option<TrunkKind> {
        text(&self.c.trunk_kind, self.i).and_then(TrunkKind::from_name)
    }
    /// The source address.
    pub fn source(&self) -> &'b str {
        self.c.source.value(self.i)
    }
    /// The A-number.
    pub fn caller(&self) -> Option<Number> {
        key(&self.c.keys[0], self.i)
    }
    /// From's number.
    pub fn from(&self) -> Option<Number> {
        key(&self.c.keys[1], self.i)
    }
    /// PAI's number.
    pub fn pai(&self) -> Option<Number> {
        key(&self.c.keys[2], self.i)
    }
    /// A display name's number.
    pub fn display(&self) -> Option<Number> {
        key(&self.c.keys[3], self.i)
    }
    /// The B-number.
    pub fn callee(&self) -> Option<Number> {
        key(&self.c.keys[4], self.i)
    }
    /// An A-number was present.
    pub fn a_present(&self) -> bool {
        self.c.a_present.value(self.i)
    }
    /// `network`, `claimed` or `none`.
    pub fn caller_trust(&self) -> &'b str {
        self.c.caller_trust.value(self.i)
    }
    /// The request's digest.
    pub fn digest(&self) -> u64 {
        self.c.digest.value(self.i)
    }
    /// The live decision.
    pub fn decision(&self) -> Decision {
        decision(self.c.decision.value(self.i))
    }
    /// The live shadow decision.
    pub fn shadow_decision(&self) -> Decision {
        decision(self.c.shadow_decision.value(self.i))
    }
    /// The live score.
    pub fn score(&self) -> u32 {
        self.c.score.value(self.i)
    }
    /// Allowlisted live.
    pub fn allowlisted(&self) -> bool {
        self.c.allowlisted.value(self.i)
    }
    /// The version it was judged under.
    pub fn version(&self) -> &'b str {
        self.c.version.value(self.i)
    }
    /// The enforced (`shadow` false) or shadow rules that fired live.
    pub fn fired(&self, shadow: bool) -> impl Iterator<Item = &'b str> + 'b {
        let list = if shadow {
            &self.c.fired_shadow
        } else {
            &self.c.fired
        };
        let offsets = list.value_offsets();
        let (a, b) = (offsets[self.i] as usize, offsets[self.i + 1] as usize);
        let values = list.values().as_string::<i32>();
        (a..b).map(move |j| values.value(j))
    }

    /// The row, owned.
    pub fn to_row(&self) -> CallRow {
        CallRow {
            seq: self.seq(),
            ts_us: self.ts_us(),
            time: self.time(),
            trunk: self.trunk().map(str::to_string),
            trunk_kind: self.trunk_kind(),
            source: self.source().to_string(),
            caller: self.caller(),
            from: self.from(),
            pai: self.pai(),
            display: self.display(),
            a_present: self.a_present(),
            callee: self.callee(),
            caller_trust: match self.caller_trust() {
                "network" => "network",
                "claimed" => "claimed",
                _ => "none",
            },
            digest: self.digest(),
            decision: self.decision(),
            shadow_decision: self.shadow_decision(),
            score: self.score(),
            allowlisted: self.allowlisted(),
            fired: self.fired(false).map(str::to_string).collect(),
            fired_shadow: self.fired(true).map(str::to_string).collect(),
            version: self.version().to_string(),
        }
    }
}

/// One outcome of a batch, borrowed.
#[derive(Clone, Copy)]
pub struct OutcomeRef<'b> {
    c: &'b OutcomeCols,
    i: usize,
}

impl OutcomeRef<'_> {
    /// The journal's order.
    pub fn seq(&self) -> u64 {
        self.c.seq.value(self.i)
    }
    /// When, µs.
    pub fn ts_us(&self) -> i64 {
        self.c.ts.value(self.i)
    }
    /// The second state was updated at.
    pub fn secs(&self) -> u32 {
        self.c.secs.value(self.i)
    }
    /// The caller's packed key.
    pub fn caller_key(&self) -> u64 {
        self.c.caller_key.value(self.i)
    }
    /// Who answered.
    pub fn callee(&self) -> Option<Number> {
        key(&self.c.callee_key, self.i)
    }
    /// What happened.
    pub fn kind(&self) -> Option<OutcomeKind> {
        OutcomeKind::from_name(self.c.outcome.value(self.i))
    }
    /// Ring or talk time, ms.
    pub fn ms(&self) -> u32 {
        self.c.ms.value(self.i)
    }
    /// State knew the caller.
    pub fn known(&self) -> bool {
        self.c.known.value(self.i)
    }

    /// The row, owned (`None` for a row this version cannot read).
    pub fn to_row(&self) -> Option<OutcomeRow> {
        Some(OutcomeRow {
            seq: self.seq(),
            ts_us: self.ts_us(),
            secs: self.secs(),
            caller: Number::from_raw(self.caller_key())?,
            callee: self.callee(),
            kind: self.kind()?,
            ms: self.ms(),
            via: if self.c.via.value(self.i) == "proxy" {
                "proxy"
            } else {
                "api"
            },
            known: self.known(),
        })
    }
}

/// A row of either kind, borrowed.
#[derive(Clone, Copy)]
pub enum RowRef<'b> {
    /// A call.
    Call(CallRef<'b>),
    /// An outcome.
    Outcome(OutcomeRef<'b>),
}

/// One kind's files read batch by batch.
struct Stream<C> {
    files: std::vec::IntoIter<JournalFile>,
    reader: Option<(PathBuf, ParquetRecordBatchReader)>,
    cols: Option<C>,
    at: usize,
    of: fn(&RecordBatch) -> Result<C, String>,
    bytes_done: u64,
    current_len: u64,
}

impl<C> Stream<C> {
    fn new(files: Vec<JournalFile>, of: fn(&RecordBatch) -> Result<C, String>) -> Stream<C> {
        Stream {
            files: files.into_iter(),
            reader: None,
            cols: None,
            at: 0,
            of,
            bytes_done: 0,
            current_len: 0,
        }
    }

    /// Makes `cols` hold a row at `at`, reading on; false at the end.
    fn fill(&mut self, len: impl Fn(&C) -> usize) -> Result<bool, ReadError> {
        loop {
            if let Some(c) = &self.cols {
                if self.at < len(c) {
                    return Ok(true);
                }
            }
            self.cols = None;
            self.at = 0;
            if let Some((path, r)) = &mut self.reader {
                match r.next() {
                    Some(Ok(b)) => {
                        self.cols = Some((self.of)(&b).map_err(|e| err(path, e))?);
                        continue;
                    }
                    Some(Err(e)) => return Err(err(path, e)),
                    None => {
                        self.reader = None;
                        self.bytes_done += self.current_len;
                    }
                }
            }
            let Some(f) = self.files.next() else {
                return Ok(false);
            };
            let file = std::fs::File::open(&f.path).map_err(|e| err(&f.path, e))?;
            let r = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.with_batch_size(8192).build())
                .map_err(|e| err(&f.path, e))?;
            self.current_len = f.len;
            self.reader = Some((f.path, r));
        }
    }
}

/// The rows of a window in journal order.
pub struct Reader {
    calls: Stream<CallCols>,
    outcomes: Stream<OutcomeCols>,
    since_us: i64,
    until_us: i64,
    /// Bytes of the window's files.
    pub total_bytes: u64,
}

impl Reader {
    /// The rows of `[since_us, until_us)` under `root`.
    pub fn open(root: &Path, since_us: i64, until_us: i64) -> Reader {
        let calls = files(root, Kind::Calls, since_us, until_us);
        let outcomes = files(root, Kind::Outcomes, since_us, until_us);
        let total_bytes = calls.iter().chain(&outcomes).map(|f| f.len).sum();
        Reader {
            calls: Stream::new(calls, CallCols::of),
            outcomes: Stream::new(outcomes, OutcomeCols::of),
            since_us,
            until_us,
            total_bytes,
        }
    }

    /// Bytes of the window's files read so far (for a progress bar).
    pub fn bytes_done(&self) -> u64 {
        self.calls.bytes_done + self.outcomes.bytes_done
    }

    /// Hands the next row in the window to `f`; false at the end.
    pub fn next(&mut self, f: &mut impl FnMut(RowRef<'_>)) -> Result<bool, ReadError> {
        loop {
            let c = self.calls.fill(CallCols::len)?;
            let o = self.outcomes.fill(|o: &OutcomeCols| o.seq.len())?;
            let take_call = match (c, o) {
                (false, false) => return Ok(false),
                (true, false) => true,
                (false, true) => false,
                (true, true) => {
                    let cs = self
                        .calls
                        .cols
                        .as_ref()
                        .map_or(0, |x| x.seq.value(self.calls.at));
                    let os = self
                        .outcomes
                        .cols
                        .as_ref()
                        .map_or(0, |x| x.seq.value(self.outcomes.at));
                    cs <= os
                }
            };
            let (in_window, row) = if take_call {
                let Some(cols) = self.calls.cols.as_ref() else {
                    continue;
                };
                let r = CallRef {
                    c: cols,
                    i: self.calls.at,
                };
                self.calls.at += 1;
                let ts = r.ts_us();
                (ts >= self.since_us && ts < self.until_us, RowRef::Call(r))
            } else {
                let Some(cols) = self.outcomes.cols.as_ref() else {
                    continue;
                };
                let r = OutcomeRef {
                    c: cols,
                    i: self.outcomes.at,
                };
                self.outcomes.at += 1;
                let ts = r.ts_us();
                (
                    ts >= self.since_us && ts < self.until_us,
                    RowRef::Outcome(r),
                )
            };
            if in_window {
                f(row);
                return Ok(true);
            }
        }
    }
}

/// Every row of a window, owned, in journal order: an iterator over a
/// [`Reader`] (memory stays at one batch per kind).
pub struct Rows {
    r: Reader,
    /// Why reading stopped early, if it did.
    pub error: Option<ReadError>,
}

impl Rows {
    /// The rows of `[since_us, until_us)` under `root`.
    pub fn open(root: &Path, since_us: i64, until_us: i64) -> Rows {
        Rows {
            r: Reader::open(root, since_us, until_us),
            error: None,
        }
    }
}

impl Iterator for Rows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        loop {
            let mut out = None;
            match self.r.next(&mut |row| {
                out = match row {
                    RowRef::Call(c) => Some(Row::Call(c.to_row())),
                    RowRef::Outcome(o) => o.to_row().map(Row::Outcome),
                }
            }) {
                Ok(true) if out.is_some() => return out,
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.error = Some(e);
                    return None;
                }
            }
        }
    }
}
