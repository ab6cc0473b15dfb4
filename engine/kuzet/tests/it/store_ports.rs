//! The store's ports as a seam: control's recorder and reporter run on a
//! second store written here, in memory, with no SQLite below them. Calls
//! judged by a real handler go through the record queue and the recorder
//! into this store; the store queues a report; the reporter delivers it
//! through the outbox port to the stand-in register over a real socket,
//! exactly once, and dead-letters what it cannot read.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kuzet::config::ListEntry;
use kuzet_dataplane::handler::Handler;
use kuzet_dataplane::metrics::{Counter, Metrics};
use kuzet_dataplane::records::RecordRing;
use kuzet_sim::register::{read_entries, Mode};
use kuzet_store::incident::{Evidence, Incident};
use kuzet_store::outbox::{Due, Payload};
use kuzet_store::ports::Backlog;
use kuzet_store::{Outbox, Record, RecordWriter, Retired, StoreError};

use crate::common::{invite, status, test_config, wait, Reg, TempDir};

/// One outbox entry of the store in memory.
#[derive(Clone, Debug)]
struct Entry {
    id: i64,
    incident: i64,
    seq: i64,
    kind: &'static str,
    payload: Result<Payload, String>,
    attempts: i64,
    next_at_us: i64,
    state: &'static str,
    case: String,
    error: String,
}

#[derive(Default)]
struct Inner {
    records: Vec<Record>,
    /// Inserts tried, and how many of the next ones fail as a full disk
    /// would.
    inserts: usize,
    failing: usize,
    outbox: Vec<Entry>,
    /// What each claim handed out, by entry.
    claims: HashMap<i64, Vec<Payload>>,
    retries: usize,
}

/// A store in memory: the recorder port and the outbox port over one
/// state. It groups a caller's blocks into one incident and queues its
/// report once it has three, as a real store's policy might.
#[derive(Clone, Default)]
struct MemStore(Arc<Mutex<Inner>>);

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap()
    }
}

const STORE_ID: &str = "mem-5eed";

impl RecordWriter for MemStore {
    fn location(&self) -> String {
        "memory".into()
    }

    fn insert(&mut self, recs: &[Record]) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.inserts += 1;
        if g.failing > 0 {
            g.failing -= 1;
            return Err(StoreError::Backend {
                at: "memory".into(),
                transient: true,
                source: "no space left (a test's full disk)".into(),
            });
        }
        g.records.extend_from_slice(recs);
        let blocks: Vec<&Record> = g.records.iter().filter(|r| r.decision == "block").collect();
        let report = (blocks.len() >= 3 && g.outbox.is_empty()).then(|| {
            let mut evidence = Evidence {
                basis: "listed".into(),
                ..Evidence::default()
            };
            for r in &blocks {
                evidence.victims.extend(r.b.clone());
                evidence.rules.extend(r.rules.iter().map(|h| h.id.clone()));
                evidence
                    .sources
                    .insert(r.source.rsplit_once(':').unwrap().0.to_string());
                evidence.samples.push(r.verdict_id.clone());
            }
            let inc = Incident {
                id: 7,
                kind: "source".into(),
                key: blocks[0].a.clone().unwrap(),
                first_seen_us: blocks[0].ts_us,
                last_seen_us: blocks[blocks.len() - 1].ts_us,
                blocked: blocks.len() as u64,
                evidence,
                ..Incident::default()
            };
            Payload::of(&inc)
        });
        if let Some(report) = report {
            // The submission, an update that must not overtake it, and an
            // entry of another incident whose payload cannot be read.
            let mut grown = report.clone();
            grown.blocked += 1;
            for (id, incident, seq, kind, payload) in [
                (1, 7, 1, "submit", Ok(report)),
                (2, 7, 2, "update", Ok(grown)),
                (
                    3,
                    9,
                    1,
                    "submit",
                    Err("the outbox payload is version 99".to_string()),
                ),
            ] {
                g.outbox.push(Entry {
                    id,
                    incident,
                    seq,
                    kind,
                    payload,
                    attempts: 0,
                    next_at_us: 0,
                    state: "pending",
                    case: String::new(),
                    error: String::new(),
                });
            }
        }
        Ok(())
    }

    fn insert_replayed(&mut self, recs: Vec<Record>) -> Result<usize, StoreError> {
        let n = recs.len();
        self.insert(&recs).map(|()| n)
    }

    fn tick(&mut self, _now_us: i64) -> Result<(), StoreError> {
        Ok(())
    }

    fn probe(&mut self, _now_us: i64) -> Result<(), StoreError> {
        Ok(())
    }

    fn retire_chunk(&mut self, _now_us: i64) -> Result<Retired, StoreError> {
        Ok(Retired::default())
    }

    fn used_bytes(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn store_id(&self) -> &str {
        STORE_ID
    }

    fn last_verdict_seq(&self, _node_prefix: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    fn verdict_key(&self) -> Result<[u8; 16], StoreError> {
        Ok([7; 16])
    }
}

impl Outbox for MemStore {
    fn due(&self, now_us: i64, limit: usize) -> Result<Vec<Due>, StoreError> {
        let g = self.lock();
        let lowest = |incident: i64| {
            g.outbox
                .iter()
                .filter(|e| e.incident == incident && e.state == "pending")
                .map(|e| e.seq)
                .min()
        };
        Ok(g.outbox
            .iter()
            .filter(|e| {
                e.state == "pending" && e.next_at_us <= now_us && Some(e.seq) == lowest(e.incident)
            })
            .take(limit)
            .map(|e| Due {
                id: e.id,
                incident: e.incident,
                seq: e.seq,
                kind: e.kind.into(),
                report: e.payload.clone(),
                attempts: e.attempts,
            })
            .collect())
    }

    fn claim(&self, id: i64) -> Result<Result<Payload, String>, StoreError> {
        let mut g = self.lock();
        let e = g.outbox.iter_mut().find(|e| e.id == id).unwrap();
        e.attempts += 1;
        let p = e.payload.clone();
        if let Ok(p) = &p {
            g.claims.entry(id).or_default().push(p.clone());
        }
        Ok(p)
    }

    fn delivered(&self, d: &Due, case: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        let e = g.outbox.iter_mut().find(|e| e.id == d.id).unwrap();
        e.state = "done";
        e.case = case.into();
        Ok(())
    }

    fn retry(&self, d: &Due, next_at_us: i64, error: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.retries += 1;
        let e = g.outbox.iter_mut().find(|e| e.id == d.id).unwrap();
        e.next_at_us = next_at_us;
        e.error = error.into();
        Ok(())
    }

    fn dead_letter(&self, d: &Due, error: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        for e in g.outbox.iter_mut() {
            if e.incident == d.incident && e.seq >= d.seq && e.state == "pending" {
                e.state = "dead";
                e.error = error.into();
            }
        }
        Ok(())
    }

    fn backlog(&self) -> Result<Backlog, StoreError> {
        let g = self.lock();
        Ok(Backlog {
            pending: g.outbox.iter().filter(|e| e.state == "pending").count() as u64,
            dead_letters: g
                .outbox
                .iter()
                .filter(|e| e.state == "dead")
                .map(|e| e.incident)
                .collect::<BTreeSet<_>>()
                .len() as u64,
        })
    }
}

#[test]
fn control_records_and_reports_exactly_once_through_the_ports_of_a_store_without_sqlite() {
    let dir = TempDir::new("mem-store");
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![ListEntry::path(
        dir.write("block.txt", "+77011112233,fraud line\n"),
    )];
    let plan = cfg.plan().unwrap();
    let (set, _) =
        kuzet_control::lists::load(&cfg.sources(), &plan, &AtomicBool::new(false)).unwrap();
    let metrics = Arc::new(Metrics::default());
    let ring = Arc::new(RecordRing::in_memory(1 << 20, 10).unwrap());
    let handler = Handler::new(
        cfg.dataplane().unwrap(),
        Arc::new(ArcSwap::from_pointee(set)),
        metrics.clone(),
    )
    .with_records(ring.clone());
    let store = MemStore::default();
    // The store fails its first two commits as a full disk would: the
    // recorder keeps the records in the queue and tries again.
    store.lock().failing = 2;

    // Three calls of a blocklisted caller, judged by the real handler.
    let src: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    let mut out = Vec::new();
    for n in 0..3 {
        let call = invite(
            "+77011112233",
            &format!("+7702000000{n}"),
            &format!("m-{n}"),
            5060,
        );
        handler.handle(call.as_bytes(), src, None, Instant::now(), &mut out);
        assert_eq!(status(&String::from_utf8_lossy(&out)), 603);
    }
    assert!(ring.used_bytes() > 0, "the records wait in the queue");

    // The recorder, on the port.
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = {
        let (ring, metrics, stop) = (ring.clone(), metrics.clone(), stop.clone());
        let writer: Box<dyn RecordWriter> = Box::new(store.clone());
        std::thread::spawn(move || {
            kuzet_control::recorder::record_verdicts(ring, metrics, Some(writer), None, stop)
        })
    };
    wait("the records in the store", || {
        (store.lock().records.len() == 3).then_some(())
    });
    wait("the queue freed", || (ring.used_bytes() == 0).then_some(()));
    {
        let g = store.lock();
        assert_eq!(g.inserts, 3, "two failed commits, then one that took");
        let callees: BTreeSet<_> = g.records.iter().filter_map(|r| r.b.clone()).collect();
        assert_eq!(callees.len(), 3, "each call recorded once");
        assert!(g
            .records
            .iter()
            .all(|r| r.rules.iter().any(|h| h.id == "blocklist")));
    }
    assert_eq!(
        metrics
            .counter_set::<kuzet_control::recorder::RecorderCounters>()
            .recorded
            .get(),
        3
    );
    assert_eq!(metrics.get(Counter::StoreDropped), 0);

    // The reporter, on the port, with the register down at first.
    let reg_addr = SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port()));
    let reg_file = dir.path().join("register.jsonl");
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let reporter = {
        let outbox: Arc<dyn Outbox> = Arc::new(store.clone());
        let metrics = metrics.clone();
        let target = kuzet_control::report::Target {
            endpoint: format!("http://{reg_addr}"),
            ca_pem: None,
            timeout: Duration::from_secs(2),
            node: "mem-node".into(),
            store_id: STORE_ID.into(),
        };
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(kuzet_control::report::run(
                    target,
                    outbox,
                    metrics,
                    shutdown_rx,
                ))
        })
    };
    wait("a failed delivery retried", || {
        (store.lock().retries > 0).then_some(())
    });
    let _reg = Reg::start(reg_addr, &reg_file, Mode::Accept, Duration::ZERO);
    wait("the report and its update delivered", || {
        let g = store.lock();
        g.outbox
            .iter()
            .filter(|e| e.incident == 7)
            .all(|e| e.state == "done")
            .then_some(())
    });
    // A moment more: nothing is sent again.
    std::thread::sleep(Duration::from_millis(600));
    let _ = shutdown.send(true);
    reporter.join().unwrap();
    stop.store(true, Ordering::Release);
    recorder.join().unwrap();

    let sent = read_entries(&reg_file).unwrap();
    let got: Vec<_> = sent
        .iter()
        .map(|e| (e.op.as_str(), e.key.as_str(), e.seq, e.duplicate, e.blocked))
        .collect();
    assert_eq!(
        got,
        [
            ("submit", "mem-5eed/7", 1, false, 3),
            ("update", "mem-5eed/7", 2, false, 4)
        ],
        "the submission once, then its update"
    );
    assert_eq!(sent[0].subject, "+77011112233");
    assert_eq!(
        sent[0].parties[0],
        ("+77011112233".into(), "source".into(), "listed".into())
    );
    let g = store.lock();
    // Every try of an entry carried what its first claim froze.
    for (id, claims) in &g.claims {
        assert!(claims.windows(2).all(|w| w[0] == w[1]), "entry {id}");
    }
    assert!(g.claims[&1].len() >= 2, "the submission was tried again");
    let unreadable = g.outbox.iter().find(|e| e.incident == 9).unwrap();
    assert_eq!(unreadable.state, "dead", "never sent");
    assert!(
        unreadable.error.contains("version 99"),
        "{}",
        unreadable.error
    );
    assert_eq!(g.outbox[0].case, g.outbox[1].case);
    assert!(g.outbox[0].case.starts_with("ERDR-"));
    assert_eq!(metrics.value("register_delivered_total"), Some(2));
}
