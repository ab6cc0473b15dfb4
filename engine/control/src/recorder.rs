//! The recorder: reads the record queue the workers write
//! ([`kuzet_dataplane::records`]), logs each verdict, sends it to HEP, and
//! hands records in batches to the store's writer thread, which commits
//! them and only then frees their room in the queue. A record leaves the
//! queue only once the store holds it: a batch the store refuses (a full
//! disk) is kept and tried again, and the queue in front fills (calls
//! then go on without a verdict id, counted) rather than anything given
//! out being lost. After a crash, [`replay`] commits what the queue still
//! held before kuzet serves again.
//!
//! The store is the recorder port ([`RecordWriter`]): whatever database is
//! behind it, the recorder only commits, retries what the port says is
//! transient, and keeps the upkeep going between batches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuzet_dataplane::counter_set;
use kuzet_dataplane::handler::evidence::unix_us;
use kuzet_dataplane::metrics::{Counter, Gauge, Metrics};
use kuzet_dataplane::records::{self, Read, RecordEntry, RecordRing};
use kuzet_store::{ListHitRec, Record, RecordWriter, RuleHit};

use crate::hep::HepSender;

/// Records committed in one transaction, at most: with the indexes on
/// numbers, a commit rewrites the index pages its records land on, so a
/// bigger batch writes fewer pages a record (16384 fills the store 1.8
/// times as fast as 4096 in `store_bench fill`).
const BATCH: usize = 16384;

/// Full batches that may wait for the store's writer, besides the one it
/// is committing.
const WRITER_QUEUE: usize = 1;

/// How long the recorder sleeps when the queue is empty.
const IDLE_PAUSE: Duration = Duration::from_millis(5);

/// How long records gather before they are committed, at most.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// An entry reserved but not published for this long was abandoned by a
/// writer that will not finish it (a writer that panics publishes its
/// entry void, so it cannot happen short of a bug): it is skipped and
/// counted when its length is known.
const STUCK: Duration = Duration::from_secs(10);

/// A batch for the writer: its records, and the queue position after its
/// last entry (freed once they are committed).
type Batch = (Vec<Record>, u64);

counter_set! {
    /// The recorder's counters: what it logged, committed, replayed and
    /// retired. What is lost on the way (`store_dropped_total`) is the
    /// call path's counter, since a full queue loses records there too.
    pub struct RecorderCounters {
        logged => "verdicts_logged_total", "Verdicts written to the log",
        replayed => "records_replayed_total", "Records an earlier process left in the record queue, committed at start-up",
        unreadable => "records_unreadable_total", "Record queue entries that could not be read (cut off by a crash, or damaged)",
        recorded => "store_records_total", "Intercepted-call records committed to the store",
        write_errors => "store_write_errors_total", "Store commits that failed",
        retired => "store_retired_total", "Records retired by age or size",
    }
}

/// Logs and records every verdict the workers queue, on its own thread,
/// until `stop` is set (the workers have stopped) and the queue is empty:
/// nothing queued is lost at shutdown. Each log line carries what matches
/// it to the switch's records: Call-ID, source, transport and trunk, with
/// the decision, score, numbers and the explanation of every rule that
/// fired. With a store, each verdict is also committed to the
/// intercepted-call log, in batches, and old records are retired a chunk
/// at a time between batches.
pub fn record_verdicts(
    ring: Arc<RecordRing>,
    metrics: Arc<Metrics>,
    store: Option<Box<dyn RecordWriter>>,
    mut hep: Option<HepSender>,
    stop: Arc<AtomicBool>,
) {
    let recording = store.is_some();
    let counters = metrics.counter_set::<RecorderCounters>();
    // The store has a thread of its own (it inherits this one's idle
    // class): while SQLite commits one batch, this thread goes on reading
    // the queue into the next.
    let (to_writer, writer) = match store {
        Some(st) => {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(WRITER_QUEUE);
            let (m, r, s) = (metrics.clone(), ring.clone(), stop.clone());
            match std::thread::Builder::new()
                .name("kuzet-store".into())
                .spawn(move || write_batches(rx, st, m, r, s))
            {
                Ok(h) => (Some(tx), Some(h)),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the store's writer thread; verdicts are logged, not recorded");
                    (None, None)
                }
            }
        }
        None => (None, None),
    };
    let mut rd = ring.tail();
    let mut batch: Vec<Record> = Vec::with_capacity(if recording { 1024 } else { 0 });
    let mut batch_started: Option<Instant> = None;
    let mut stuck: Option<(u64, Instant)> = None;
    let mut handed = rd;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut got = 0usize;
        while batch.len() < BATCH {
            match ring.read(rd) {
                Read::Entry(Ok(e), next) => {
                    take(*e, &counters, recording, &mut batch, &mut hep);
                    rd = next;
                    got += 1;
                }
                Read::Entry(Err(why), next) => {
                    counters.unreadable.inc();
                    metrics.inc(Counter::StoreDropped);
                    tracing::warn!(why = ?why, "a record queue entry could not be read; skipped");
                    rd = next;
                }
                Read::Skip(next) => rd = next,
                Read::Busy { len } => {
                    // A writer is in the middle of it: normally a matter of
                    // microseconds.
                    match stuck {
                        Some((at, since)) if at == rd && since.elapsed() > STUCK => {
                            match len {
                                Some(len) => {
                                    counters.unreadable.inc();
                                    metrics.inc(Counter::StoreDropped);
                                    tracing::error!(
                                        position = rd,
                                        "a record queue entry was never finished; skipped"
                                    );
                                    rd += len;
                                    stuck = None;
                                }
                                None => {
                                    // Its length is unknown: skipping could
                                    // drop entries published after it.
                                    // Wait, and say so every STUCK.
                                    tracing::error!(position = rd, "the record queue waits on an entry its writer never began; records queue up behind it");
                                    stuck = Some((rd, Instant::now()));
                                    break;
                                }
                            }
                        }
                        Some((at, _)) if at == rd => break,
                        _ => {
                            stuck = Some((rd, Instant::now()));
                            break;
                        }
                    }
                }
                Read::Empty => break,
                Read::Corrupt => {
                    counters.unreadable.inc();
                    tracing::error!(position = rd, "the record queue holds something that is not an entry; skipping to its end");
                    rd = ring.head();
                }
            }
        }
        if !batch.is_empty() && batch_started.is_none() {
            batch_started = Some(Instant::now());
        }
        let drained = rd >= ring.head();
        let due = batch.len() >= BATCH
            || batch_started.is_some_and(|t| t.elapsed() >= COMMIT_EVERY)
            || (stopping && drained);
        match &to_writer {
            Some(tx) if rd != handed && (due || batch.is_empty()) => {
                // A full batch, or the last one, waits for the writer (the
                // queue in front absorbs the wait: a call never does); a
                // partial one keeps gathering while the writer is busy.
                let full = std::mem::take(&mut batch);
                let last = stopping && drained;
                // Whether the writer took it (`Ok(true)`), was busy
                // (`Ok(false)`: the batch keeps gathering), or is gone.
                let sent = if last || full.len() >= BATCH {
                    tx.send((full, rd)).map(|()| true).map_err(|e| e.0)
                } else {
                    match tx.try_send((full, rd)) {
                        Ok(()) => Ok(true),
                        Err(std::sync::mpsc::TrySendError::Full((b, _))) => {
                            batch = b;
                            Ok(false)
                        }
                        Err(std::sync::mpsc::TrySendError::Disconnected(b)) => Err(b),
                    }
                };
                match sent {
                    Ok(true) => {
                        handed = rd;
                        batch_started = None;
                    }
                    Ok(false) => {}
                    Err(_) if stopping => {
                        // The writer gave up on a store that takes nothing,
                        // at shutdown: the records stay in the queue's file
                        // for the next start, which commits them first.
                        break;
                    }
                    Err((lost, _)) => {
                        writer_gone(&metrics, lost.len());
                        // Nothing can commit them: free the room so calls
                        // keep their verdict ids coming.
                        ring.release(rd);
                        handed = rd;
                        batch_started = None;
                    }
                }
            }
            None => {
                // No store: logged and sent to HEP, nothing to keep.
                ring.release(rd);
                handed = rd;
            }
            _ => {}
        }
        if stopping && drained && batch.is_empty() && handed == rd {
            break;
        }
        if got == 0 {
            std::thread::sleep(IDLE_PAUSE);
        }
    }
    drop(to_writer);
    if let Some(h) = writer {
        if h.join().is_err() {
            tracing::error!("the store's writer thread panicked");
        }
    }
    ring.flush();
}

/// The writer thread is gone (it panicked): its records are lost and
/// counted, and the node is not ready.
fn writer_gone(metrics: &Metrics, lost: usize) {
    metrics.add(Counter::StoreDropped, lost as u64);
    metrics.set(Gauge::StoreWritable, 0);
    tracing::error!(
        lost,
        "the store's writer thread is gone; records are lost and counted in store_dropped_total"
    );
}

/// The store's writer thread: commits each batch it is handed (trying a
/// failed one again until the store takes it) and then frees its room in
/// the queue; once a second (between batches) does the incidents' upkeep
/// and retires one chunk of old records, and says when the store is over
/// its size limit with nothing left to retire. Ends when the recorder
/// hangs up, after the last batch.
fn write_batches(
    batches: std::sync::mpsc::Receiver<Batch>,
    mut st: Box<dyn RecordWriter>,
    metrics: Arc<Metrics>,
    ring: Arc<RecordRing>,
    stopping: Arc<AtomicBool>,
) {
    let mut last_error: Option<Instant> = None;
    let mut next_retire = Instant::now();
    let mut next_tick = Instant::now();
    let mut pressure = Pressure::default();
    let counters = metrics.counter_set::<RecorderCounters>();
    loop {
        match batches.recv_timeout(Duration::from_secs(1)) {
            Ok((b, end)) => {
                if commit(
                    st.as_mut(),
                    b,
                    &metrics,
                    &counters,
                    &mut last_error,
                    &stopping,
                ) {
                    ring.release(end);
                } else {
                    // Stopping with a store that takes nothing: the records
                    // stay in the queue's file for the next start.
                    tracing::warn!(path = %st.location(), "stopping with records the store would not take: they stay in the record queue and are committed at the next start");
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // No batch for a second after a failed commit: ask the
                // store itself whether it takes commits again.
                if metrics.gauge(Gauge::StoreWritable) == 0 && st.probe(unix_us()).is_ok() {
                    metrics.set(Gauge::StoreWritable, 1);
                    last_error.take();
                    tracing::warn!(path = %st.location(), "the store is writable again");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_tick {
            // Once a second, whatever retention is doing: delayed
            // incident updates, closing quiet incidents.
            if let Err(e) = st.tick(unix_us()) {
                tracing::warn!(error = %e, "incident upkeep failed; retrying in a second");
            }
            next_tick = Instant::now() + Duration::from_secs(1);
        }
        if Instant::now() >= next_retire {
            // One chunk per turn, so a batch never waits on more.
            match st.retire_chunk(unix_us()) {
                Ok(r) => {
                    if r.n > 0 {
                        counters.retired.add(r.n as u64);
                    } else {
                        next_retire = Instant::now() + Duration::from_secs(1);
                    }
                    pressure.update(r.over_size, r.n, st.as_ref(), &metrics);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retiring old records failed; retrying in a second");
                    next_retire = Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }
}

/// The store's size pressure, in stages: over its size limit with
/// nothing retention may take, kuzet first stops sampling allows; still
/// over ten seconds later, it refuses new low-value records (flags, shadow
/// verdicts). Each change is logged at WARN; both stages show on
/// `/readyz`. Back under the limit (retention caught up, or the limit was
/// raised), it records everything again.
#[derive(Default)]
struct Pressure {
    since: Option<Instant>,
}

impl Pressure {
    /// After a turn of retention: `over` when the store is over its size
    /// limit with nothing retirable; `retired` records went this turn.
    fn update(&mut self, over: bool, retired: usize, st: &dyn RecordWriter, metrics: &Metrics) {
        let stage = metrics.gauge(Gauge::StorePressure);
        if over {
            let since = *self.since.get_or_insert_with(Instant::now);
            let want = if since.elapsed() >= Duration::from_secs(10) {
                2
            } else {
                1
            };
            if want > stage {
                metrics.set(Gauge::StorePressure, want);
                let used = st.used_bytes().unwrap_or(0) >> 20;
                if want == 1 {
                    tracing::warn!(used_mb = used, path = %st.location(), "the store is over its size limit and everything left is evidence it must keep: sampled allows are no longer recorded");
                } else {
                    tracing::warn!(used_mb = used, path = %st.location(), "the store is still over its size limit: flags and shadow verdicts are no longer recorded (blocks and redirects still are); raise store.max_size_mb or free space");
                }
            }
        } else if retired == 0 {
            // Nothing due and within the limit.
            self.since = None;
            if stage > 0 {
                metrics.set(Gauge::StorePressure, 0);
                tracing::warn!(path = %st.location(), "the store is within its size limit again: every record is kept");
            }
        }
    }
}

/// Takes one entry off the queue: counted, logged, sent to HEP, and (with
/// a store) added to the batch.
fn take(
    e: RecordEntry,
    counters: &RecorderCounters,
    store: bool,
    batch: &mut Vec<Record>,
    hep: &mut Option<HepSender>,
) {
    let record = e.has(records::flags::RECORD);
    // A sample of allowed calls is recorded, not logged; a plain allow
    // queued for HEP alone is neither.
    let logged = record && !e.has(records::flags::SAMPLED);
    if logged {
        counters.logged.inc();
        if tracing::enabled!(tracing::Level::INFO) {
            log_line(&e);
        }
    }
    if !(store && record) && hep.is_none() {
        return;
    }
    let rec = to_record(&e);
    if let Some(h) = hep.as_mut() {
        h.send(&e, &rec);
    }
    if store && record {
        batch.push(rec);
    }
}

/// Commits the batch, trying again each second while the store refuses
/// for a reason that passes (a full disk, a lock): the records stay in the
/// queue until the store has them. A batch the store refuses for itself
/// is committed record by record, and only the refused records are lost
/// (counted, logged). Returns false only when kuzet is stopping and the
/// store still takes nothing: shutdown never waits on a dead disk, and
/// the records wait in the queue's file instead.
fn commit(
    st: &mut dyn RecordWriter,
    batch: Vec<Record>,
    metrics: &Metrics,
    counters: &RecorderCounters,
    last_error: &mut Option<Instant>,
    stopping: &AtomicBool,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    loop {
        match st.insert(&batch) {
            Ok(()) => {
                counters.recorded.add(batch.len() as u64);
                metrics.set(Gauge::StoreWritable, 1);
                if last_error.take().is_some() {
                    tracing::warn!(path = %st.location(), "the store is writable again");
                }
                return true;
            }
            Err(e) if e.is_transient() => {
                if stopping.load(Ordering::Acquire) {
                    return false;
                }
                metrics.set(Gauge::StoreWritable, 0);
                counters.write_errors.inc();
                // One line per ten seconds while it lasts, not one per try.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::error!(path = %st.location(), error = %e, waiting = batch.len(), "store write failed; the records wait in the record queue and are tried again every second (calls go on; a full queue gives no verdict ids)");
                    *last_error = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                counters.write_errors.inc();
                tracing::error!(path = %st.location(), error = %e, records = batch.len(), "the store refused a batch; committing its records one by one");
                let mut lost = 0u64;
                for r in &batch {
                    if let Err(e) = st.insert(std::slice::from_ref(r)) {
                        lost += 1;
                        tracing::error!(verdict_id = %r.verdict_id, error = %e, "the store refused a record; it is lost");
                    }
                }
                counters.recorded.add(batch.len() as u64 - lost);
                metrics.add(Counter::StoreDropped, lost);
                return true;
            }
        }
    }
}

/// The store's record of a queue entry: every rule explained, the list
/// hit with its reason, the identities and what the call makes of them.
pub fn to_record(e: &RecordEntry) -> Record {
    let num = |n: Option<kuzet_rules::Number>| n.map(|n| n.to_string());
    Record {
        id: 0,
        verdict_id: e.verdict_id.clone(),
        ts_us: e.ts_us,
        node: String::new(),
        call_id: e.call_id.clone(),
        ruri: e.ruri.clone(),
        from_hdr: e.from_hdr.clone(),
        pai_hdr: e.pai_hdr.clone(),
        a: num(e.a),
        b: num(e.b),
        from_num: num(e.from),
        pai_num: num(e.pai),
        trunk: e.trunk.as_ref().map(|t| t.0.clone()),
        trunk_kind: e.trunk.as_ref().map(|t| t.1.clone()),
        source: e.source.to_string(),
        transport: if e.has(records::flags::TCP) {
            "tcp"
        } else {
            "udp"
        }
        .into(),
        decision: e.decision.as_str().into(),
        shadow_decision: e.shadow_decision.as_str().into(),
        code: e.code,
        score: e.score,
        sampled: e.has(records::flags::SAMPLED),
        explanation: e.explanation(),
        rules: e
            .rules
            .iter()
            .map(|r| RuleHit {
                id: r.id.clone(),
                value: r.value,
                threshold: r.threshold,
                shadow: r.shadow,
                why: r.why.clone(),
            })
            .collect(),
        list_hit: e.list_hit.as_ref().map(|h| ListHitRec {
            list: h.list.clone(),
            side: h.side.clone(),
            exact: h.exact,
            reason: h.reason.clone(),
        }),
        lists_version: e.lists_version.clone(),
        headers: e.head.clone(),
        incident: None,
        a_trust: records::trust::name(e.a_trust).into(),
        caller_role: records::role::name(e.caller_role).into(),
        id_seq: e.seq,
    }
}

fn log_line(e: &RecordEntry) {
    let show =
        |n: Option<kuzet_rules::Number>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    tracing::info!(
        decision = e.decision.as_str(),
        shadow_decision = e.shadow_decision.as_str(),
        score = e.score,
        caller = %show(e.a),
        caller_trust = records::trust::name(e.a_trust),
        caller_role = records::role::name(e.caller_role),
        callee = %show(e.b),
        // What a caller or a list sent is quoted and escaped (Debug), so
        // it cannot pose as another field of the line.
        call_id = ?e.call_id,
        verdict_id = %e.verdict_id,
        source = %e.source,
        transport = if e.has(records::flags::TCP) { "tcp" } else { "udp" },
        trunk = ?e.trunk.as_ref().map_or("-", |t| t.0.as_str()),
        rules = ?e.explanation(),
        "verdict"
    );
}

/// Commits what an earlier process left in the record queue (a SIGKILL, a
/// crash) before kuzet serves again: records the store already holds are
/// skipped. Returns how many were committed, and how many bytes of the
/// queue could not be read (an entry cut off mid-write). The queue is
/// then emptied.
pub fn replay(
    ring: &RecordRing,
    st: &mut dyn RecordWriter,
    metrics: &Metrics,
) -> Result<(usize, u64), String> {
    let (entries, lost) = ring.replay();
    let recs: Vec<Record> = entries
        .iter()
        .filter(|(e, _)| e.has(records::flags::RECORD))
        .map(|(e, _)| to_record(e))
        .collect();
    let n = match st.insert_replayed(recs.clone()) {
        Ok(n) => n,
        // One record the store refuses must not keep kuzet from starting:
        // the rest go in one by one, and the refused ones are said.
        Err(e) if !e.is_transient() => {
            tracing::error!(error = %e, "the store refused the replayed records as a batch; committing them one by one");
            let mut n = 0;
            for r in recs {
                let id = r.verdict_id.clone();
                match st.insert_replayed(vec![r]) {
                    Ok(k) => n += k,
                    Err(e) => {
                        metrics.inc(Counter::StoreDropped);
                        tracing::error!(verdict_id = %id, error = %e, "the store refused a replayed record; it is lost");
                    }
                }
            }
            n
        }
        Err(e) => {
            return Err(format!(
                "committing the records left in the record queue: {e}"
            ))
        }
    };
    ring.release_all();
    let counters = metrics.counter_set::<RecorderCounters>();
    counters.replayed.add(n as u64);
    if lost > 0 {
        counters.unreadable.inc();
    }
    Ok((n, lost))
}
