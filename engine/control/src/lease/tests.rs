//! The leases against a real `redis-server` (and a real PostgreSQL for
//! the fencing tokens), each "node" a runtime of its own with one worker:
//! dropping the runtime is a node that dies without a word, and blocking
//! its worker is a node paused (SIGSTOP, a stalled VM): no timer fires,
//! no renewal goes out, until it wakes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kuzet_dataplane::metrics::Metrics;
use kuzet_sim::servers::{PgServer, RedisCluster, RedisServer};
use kuzet_store::outbox::{Due, Payload};
use kuzet_store::pg::{fence_claim, Fence, PgConn};
use kuzet_store::ports::Backlog;
use kuzet_store::{Outbox, StoreError};
use tokio::sync::watch;

use super::*;

/// The tests' lease: short, so a takeover takes about a second.
const LEASE: Duration = Duration::from_millis(1200);
/// The tests' Redis deadline (at most a third of the lease).
const TIMEOUT: Duration = Duration::from_millis(300);
/// What a loaded 2-core machine may add to a bound: scheduling, a Redis
/// round trip, a claim.
const SLACK: Duration = Duration::from_millis(300);

fn redis() -> RedisServer {
    RedisServer::start().expect("redis-server (scripts/install-deps.sh installs it)")
}

/// A PostgreSQL database with the fences' table, and a claim on it.
fn pg(name: &str) -> (PgServer, Arc<PgConn>) {
    let pg = PgServer::start().expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let url = pg.create_db(name).unwrap();
    let conn = Arc::new(PgConn::new(&url));
    kuzet_store::pg::migrate(&conn, "fences", kuzet_store::pg::fence::MIGRATIONS).unwrap();
    (pg, conn)
}

fn pg_claim(conn: &Arc<PgConn>) -> Claim {
    let conn = conn.clone();
    Arc::new(move |f: &Fence| fence_claim(&conn, f))
}

/// Polls `f` every 5 ms until it gives a value; fails naming `what` past
/// `within`.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A command to Redis, from outside the nodes.
fn redis_cmd<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = redis::Client::open(url).unwrap();
        let mut k = c.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut k).await.unwrap()
    })
}

/// One kuzet node as the leases see it.
struct Node {
    rt: Option<tokio::runtime::Runtime>,
    leases: Arc<Leases>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
}

impl Node {
    fn start(redis: &RedisServer, name: &str, claim: Claim) -> Node {
        Node::on(Endpoint::Single(redis.url()), name, claim)
    }

    fn on(redis: Endpoint, name: &str, claim: Claim) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        crate::register_counters(&metrics).unwrap();
        let settings = Settings {
            redis,
            prefix: "test".into(),
            node: name.into(),
            lease: LEASE,
            timeout: TIMEOUT,
        };
        let leases = Leases::new(
            settings,
            SharedStore {
                fences: Fences::new(),
                claim,
            },
            &metrics,
        )
        .unwrap();
        Node {
            rt: Some(rt),
            leases,
            metrics,
            shutdown: watch::channel(false).0,
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("a live node")
    }

    fn lease(&self, s: Singleton) -> Arc<Lease> {
        self.leases.get(s)
    }

    /// Competes for `s`'s lease.
    fn keep(&self, s: Singleton) {
        let _in = self.rt().enter();
        self.lease(s).keep(self.shutdown.subscribe());
    }

    /// The node dies: its tasks vanish, nothing is released.
    fn die(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// The node is paused for `d`: its one worker blocked.
    fn pause(&self, d: Duration) {
        self.rt().spawn(async move { std::thread::sleep(d) });
    }

    fn alive(&self) -> bool {
        self.rt.is_some()
    }

    fn counter(&self, name: &str) -> u64 {
        self.metrics.value(name).unwrap()
    }
}

impl Drop for Node {
    /// Stops the node and waits for its tasks to go: they hold the
    /// PostgreSQL client, whose drop must not happen on a runtime's worker
    /// after the test let go of its own handle.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// The live nodes that lead `s` now.
fn leaders(nodes: &[Node], s: Singleton) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].alive() && nodes[i].lease(s).is_leader())
        .collect()
}

/// The live nodes whose fence for `s` holds a token now.
fn fenced(nodes: &[Node], s: Singleton) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].alive() && nodes[i].lease(s).fence().token().is_some())
        .collect()
}

/// Waits until exactly one live node leads `s`; its index and token.
fn one_leader(nodes: &[Node], s: Singleton, within: Duration) -> (usize, u64) {
    wait_for("one node leads", within, || match leaders(nodes, s)[..] {
        [i] => Some((i, nodes[i].lease(s).check().unwrap())),
        _ => None,
    })
}

const S: Singleton = Singleton::NbankFeed;

#[test]
fn exactly_one_of_three_keepers_holds_a_lease() {
    let redis = redis();
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start(&redis, n, no_claim()))
        .collect();
    for n in &nodes {
        n.keep(S);
    }
    let (first, token) = one_leader(&nodes, S, LEASE * 2);
    // For three lease periods, through nine renewals: never two fences,
    // never a change of holder, and Redis names the holder and its token.
    let t = Instant::now();
    while t.elapsed() < LEASE * 3 {
        assert_eq!(fenced(&nodes, S), [first], "fences at {:?}", t.elapsed());
        assert_eq!(leaders(&nodes, S), [first]);
        std::thread::sleep(Duration::from_millis(10));
    }
    let held: String = redis_cmd(
        &redis.url(),
        redis::cmd("GET").arg("{test}:lease:nbank-feed"),
    );
    assert_eq!(
        parse_holder(&held),
        Some((["a", "b", "c"][first], token)),
        "{held}"
    );
    assert_eq!(nodes[first].counter("lease_acquired_total"), 1);
    let lost: u64 = nodes.iter().map(|n| n.counter("lease_lost_total")).sum();
    assert_eq!(lost, 0);
    // The other leases are apart: nobody competes for them, nobody holds.
    assert!(leaders(&nodes, Singleton::RegisterOutbox).is_empty());
    let states = nodes[first]
        .metrics
        .find::<LeaseCounters>()
        .unwrap()
        .states();
    assert_eq!(
        states[0],
        LeaseState {
            name: "nbank-feed",
            configured: true,
            held: true,
            token
        }
    );
    assert!(!states[3].configured && !states[3].held);
}

#[test]
fn a_dead_holder_is_replaced_within_the_lease_and_one_renew_period_with_a_higher_token() {
    let redis = redis();
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start(&redis, n, no_claim()))
        .collect();
    for n in &nodes {
        n.keep(S);
    }
    let bound = LEASE + LEASE / 3 + SLACK;
    let (mut holder, mut token) = one_leader(&nodes, S, LEASE * 2);
    for round in 0..2 {
        nodes[holder].die();
        let died = Instant::now();
        let (next, next_token) = one_leader(&nodes, S, bound * 2);
        let took = died.elapsed();
        eprintln!("round {round}: node {holder} died, node {next} leads after {took:?}");
        assert!(took <= bound, "taken over after {took:?}, past {bound:?}");
        assert_ne!(next, holder);
        assert!(next_token > token, "{next_token} after {token}");
        (holder, token) = (next, next_token);
    }
}

#[test]
fn a_holder_that_shuts_down_hands_the_lease_over_at_once() {
    let redis = redis();
    let nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|n| Node::start(&redis, n, no_claim()))
        .collect();
    for n in &nodes {
        n.keep(S);
    }
    let (holder, _) = one_leader(&nodes, S, LEASE * 2);
    nodes[holder].shutdown.send(true).unwrap();
    let stopped = Instant::now();
    wait_for("the lease is given up", LEASE, || {
        nodes[holder]
            .lease(S)
            .fence()
            .token()
            .is_none()
            .then_some(())
    });
    // The key was deleted: the other node wins at its next try, well
    // before the lease would have run out.
    let (next, _) = one_leader(&nodes, S, LEASE * 2);
    assert_ne!(next, holder);
    let took = stopped.elapsed();
    assert!(took < LEASE, "handed over after {took:?}");
    assert_eq!(
        nodes[holder].counter("lease_lost_total"),
        0,
        "given up, not lost"
    );
}

#[test]
fn a_holder_cut_off_from_redis_lets_go_before_its_lease_can_expire() {
    let redis = redis();
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start(&redis, n, no_claim()))
        .collect();
    for n in &nodes {
        n.keep(S);
    }
    let (holder, token) = one_leader(&nodes, S, LEASE * 2);
    let lease = nodes[holder].lease(S);
    redis.pause();
    let paused = Instant::now();
    // Until it lets go, note the last deadline it had: a renewal that
    // went through started before the pause, so Redis keeps the key at
    // least until that start plus the lease.
    let mut until = None;
    let released = wait_for("the holder lets go", LEASE * 2, || match lease.holding() {
        Some((t, u)) if t == token => {
            until = Some(u);
            None
        }
        _ => Some(Instant::now()),
    });
    let until = until.expect("it held the lease when Redis stopped");
    let margin = LEASE / 10;
    assert!(
        until <= paused + LEASE - margin,
        "a deadline that no renewal before the pause gave"
    );
    // Let go on time: by its deadline (a timer's slack aside), which is
    // the margin before the key could expire on Redis.
    assert!(
        released <= until + Duration::from_millis(50),
        "let go {:?} after its deadline",
        released.saturating_duration_since(until)
    );
    assert!(released.duration_since(paused) < LEASE - margin + Duration::from_millis(50));
    assert!(!lease.is_leader());
    assert!(fenced(&nodes, S).is_empty(), "nobody leads without Redis");
    assert_eq!(nodes[holder].counter("lease_lost_total"), 1);
    // Redis back after the key has expired: one node wins, and at no
    // moment do two hold a fence.
    std::thread::sleep(LEASE.saturating_sub(paused.elapsed()));
    redis.resume();
    let t = Instant::now();
    let mut led = None;
    while t.elapsed() < LEASE * 4 {
        let f = fenced(&nodes, S);
        assert!(f.len() <= 1, "two fences at once: {f:?}");
        if led.is_none() {
            led = match leaders(&nodes, S)[..] {
                [i] => Some(i),
                _ => None,
            };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let i = led.expect("a node leads once Redis is back");
    assert!(nodes[i].lease(S).check().unwrap() > token);
}

#[test]
fn a_paused_holder_wakes_to_find_its_token_refused_by_postgres() {
    let redis = redis();
    let (_pg, conn) = pg("paused");
    let nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|n| Node::start(&redis, n, pg_claim(&conn)))
        .collect();
    // Each node runs a singleton that writes with its fence every 20 ms,
    // asking its lease first, as every singleton does; each write that
    // went through is noted with its token and when it ended.
    let writes: Arc<Mutex<Vec<(usize, u64, Instant)>>> = Arc::default();
    for (i, n) in nodes.iter().enumerate() {
        let lease = n.lease(S);
        let (conn, writes) = (conn.clone(), writes.clone());
        let _in = n.rt().enter();
        singleton::spawn(
            "a writer",
            Some(lease.clone()),
            n.shutdown.subscribe(),
            move |_| {
                let (lease, conn, writes) = (lease.clone(), conn.clone(), writes.clone());
                async move {
                    loop {
                        if let Ok(token) = lease.check() {
                            let (c, f) = (conn.clone(), lease.fence().clone());
                            // When the write committed, read on its thread.
                            let r = tokio::task::spawn_blocking(move || {
                                fence_claim(&c, &f).map(|()| Instant::now())
                            })
                            .await;
                            if let Ok(Ok(at)) = r {
                                writes.lock().unwrap().push((i, token, at));
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            },
            || {},
        );
    }
    let (a, ta) = one_leader(&nodes, S, LEASE * 2);
    let b = 1 - a;
    wait_for("the leader writes", LEASE, || {
        writes
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.0 == a)
            .then_some(())
    });
    // The leader is paused for three leases: its keeper cannot renew, its
    // singleton cannot ask.
    nodes[a].pause(LEASE * 3);
    let paused = Instant::now();
    let tb = wait_for("the other node takes over", LEASE * 3, || {
        nodes[b].lease(S).check().ok()
    });
    let b_led = Instant::now();
    assert!(tb > ta, "{tb} after {ta}");
    // Asleep, the old leader still holds its token on its fence: nothing
    // ran to let it go. A write it had on its way now carries it, and
    // PostgreSQL refuses it: the new leader claimed a higher token.
    assert!(paused.elapsed() < LEASE * 3, "still asleep");
    assert_eq!(nodes[a].lease(S).fence().token(), Some(ta));
    let err = fence_claim(&conn, nodes[a].lease(S).fence()).unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { token, seen, .. } if token == ta && seen == tb),
        "{err}"
    );
    // It wakes: it finds it no longer leads before anything else, lets go
    // of its fence, and writes nothing more.
    wait_for("the old leader lets go on waking", LEASE * 4, || {
        nodes[a].lease(S).fence().token().is_none().then_some(())
    });
    assert!(!nodes[a].lease(S).is_leader());
    let woke = Instant::now();
    wait_for("the new leader writes after the wake", LEASE * 2, || {
        writes
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.0 == b && w.2 > woke)
            .then_some(())
    });
    let w = writes.lock().unwrap();
    assert!(
        w.iter()
            .all(|&(i, t, at)| i != a || (t == ta && at < b_led)),
        "the old leader wrote after the new one led"
    );
    assert!(w.iter().all(|&(i, t, _)| i != b || t == tb));
}

#[test]
fn a_token_behind_the_stores_is_raised_past_it() {
    let redis = redis();
    let (_pg, conn) = pg("behind");
    // The store has seen a token far above anything Redis hands out (a
    // Redis restored from an old copy, a clock set back).
    let ahead = Fence::new(S.name());
    ahead.hold(u64::from(u32::MAX) << 20);
    fence_claim(&conn, &ahead).unwrap();
    let nodes = [Node::start(&redis, "a", pg_claim(&conn))];
    nodes[0].keep(S);
    let (_, token) = one_leader(&nodes, S, LEASE * 3);
    assert!(token > ahead.token().unwrap(), "{token}");
    // And the store took it: the old token is refused now.
    assert!(matches!(
        fence_claim(&conn, &ahead),
        Err(StoreError::Fenced { .. })
    ));
}

#[test]
fn a_redis_that_lost_its_data_still_hands_out_higher_tokens() {
    let mut redis = redis();
    let nodes = [Node::start(&redis, "a", no_claim())];
    nodes[0].keep(S);
    let (_, token) = one_leader(&nodes, S, LEASE * 2);
    redis.restart().unwrap();
    let t = Instant::now();
    let next = wait_for("led again after Redis restarted", LEASE * 4, || {
        nodes[0].lease(S).check().ok().filter(|&n| n != token)
    });
    assert!(next > token, "{next} after {token}");
    eprintln!("led again after {:?}", t.elapsed());
}

/// A task that counts its ticks and starts.
#[derive(Default)]
struct Ticks {
    ticks: AtomicU64,
    starts: AtomicU64,
    stops: AtomicU64,
}

fn spawn_ticker(node: &Node, s: Singleton, t: &Arc<Ticks>) {
    let _in = node.rt().enter();
    let (t, stop) = (t.clone(), t.clone());
    singleton::spawn(
        "a ticker",
        Some(node.lease(s)),
        node.shutdown.subscribe(),
        move |_| {
            let t = t.clone();
            async move {
                t.starts.fetch_add(1, Ordering::SeqCst);
                loop {
                    t.ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        },
        move || {
            stop.stops.fetch_add(1, Ordering::SeqCst);
        },
    );
}

/// Asserts `t` does not tick for a while (it was stopped).
fn still(t: &Ticks) {
    let n = t.ticks.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(t.ticks.load(Ordering::SeqCst), n, "it still runs");
}

#[test]
fn a_singleton_runs_only_while_its_lease_is_held_and_again_when_won_back() {
    let redis = redis();
    let node = Node::start(&redis, "a", no_claim());
    let t = Arc::new(Ticks::default());
    spawn_ticker(&node, S, &t);
    let lease = node.lease(S);
    let first = wait_for("it leads", LEASE * 2, || lease.check().ok());
    wait_for("the task runs", LEASE, || {
        (t.ticks.load(Ordering::SeqCst) > 3).then_some(())
    });
    // Another node takes the key (as after a partition): the next renewal
    // finds it, the lead ends, and the task stops at once.
    let key = lease_key("test", S.name());
    let _: () = redis_cmd(
        &redis.url(),
        redis::cmd("SET")
            .arg(&key)
            .arg("elsewhere 1")
            .arg("PX")
            .arg(60_000),
    );
    wait_for("the lead ends", LEASE, || {
        (!lease.is_leader()).then_some(())
    });
    wait_for("the task is stopped", Duration::from_millis(200), || {
        (t.stops.load(Ordering::SeqCst) == 1).then_some(())
    });
    still(&t);
    assert_eq!(node.counter("lease_lost_total"), 1);
    // The key goes: the node wins again, with a higher token, and the
    // task starts again.
    let _: () = redis_cmd(&redis.url(), redis::cmd("DEL").arg(&key));
    let second = wait_for("it leads again", LEASE * 2, || lease.check().ok());
    assert!(second > first);
    wait_for("the task runs again", LEASE, || {
        (t.starts.load(Ordering::SeqCst) == 2).then_some(())
    });
    let n = t.ticks.load(Ordering::SeqCst);
    wait_for("it ticks", LEASE, || {
        (t.ticks.load(Ordering::SeqCst) > n + 3).then_some(())
    });
    // Without a lease a task runs as it always did.
    let plain = Arc::new(AtomicU64::new(0));
    let p = plain.clone();
    let _in = node.rt().enter();
    singleton::spawn(
        "a plain task",
        None,
        node.shutdown.subscribe(),
        move |_| {
            let p = p.clone();
            async move {
                p.fetch_add(1, Ordering::SeqCst);
            }
        },
        || {},
    );
    wait_for("the plain task ran", LEASE, || {
        (plain.load(Ordering::SeqCst) == 1).then_some(())
    });
}

/// The register outbox on PostgreSQL as far as the fence goes: every call
/// writes with the fence, as the shared store's will.
struct PgOutbox {
    conn: Arc<PgConn>,
    fence: Arc<Fence>,
}

impl Outbox for PgOutbox {
    fn due(&self, _: i64, _: usize) -> Result<Vec<Due>, StoreError> {
        fence_claim(&self.conn, &self.fence).map(|()| Vec::new())
    }
    fn claim(&self, _: i64) -> Result<Result<Payload, String>, StoreError> {
        Err(StoreError::internal("test", "not used"))
    }
    fn delivered(&self, _: &Due, _: &str) -> Result<(), StoreError> {
        Err(StoreError::internal("test", "not used"))
    }
    fn retry(&self, _: &Due, _: i64, _: &str) -> Result<(), StoreError> {
        Err(StoreError::internal("test", "not used"))
    }
    fn dead_letter(&self, _: &Due, _: &str) -> Result<(), StoreError> {
        Err(StoreError::internal("test", "not used"))
    }
    fn backlog(&self) -> Result<Backlog, StoreError> {
        Ok(Backlog::default())
    }
}

#[test]
fn a_write_refused_as_fenced_stops_the_singleton_until_it_leads_again() {
    let redis = redis();
    let (_pg, conn) = pg("refused");
    const R: Singleton = Singleton::RegisterOutbox;
    let node = Node::start(&redis, "a", pg_claim(&conn));
    let lease = node.lease(R);
    let port = fenced::outbox(
        Arc::new(PgOutbox {
            conn: conn.clone(),
            fence: lease.fence().clone(),
        }),
        lease.clone(),
    );
    // The singleton asks the outbox every 10 ms, as the reporter does.
    let t = Arc::new(Ticks::default());
    let (tt, stop) = (t.clone(), t.clone());
    let _in = node.rt().enter();
    singleton::spawn(
        "the register reporter",
        Some(lease.clone()),
        node.shutdown.subscribe(),
        move |_| {
            let (t, port) = (tt.clone(), port.clone());
            async move {
                t.starts.fetch_add(1, Ordering::SeqCst);
                loop {
                    let p = port.clone();
                    if let Ok(Ok(_)) = tokio::task::spawn_blocking(move || p.due(0, 1)).await {
                        t.ticks.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        },
        move || {
            stop.stops.fetch_add(1, Ordering::SeqCst);
        },
    );
    let first = wait_for("it leads", LEASE * 2, || lease.check().ok());
    wait_for("it writes", LEASE, || {
        (t.ticks.load(Ordering::SeqCst) > 3).then_some(())
    });
    // Another node claims a higher token in the store (its lease came
    // through a Redis this node no longer sees): this node's next write is
    // refused, which ends its lead and stops the task.
    let other = Fence::new(R.name());
    other.hold(first + 1);
    fence_claim(&conn, &other).unwrap();
    wait_for("the task is stopped", LEASE, || {
        (t.stops.load(Ordering::SeqCst) == 1).then_some(())
    });
    assert!(!lease.is_leader());
    assert_eq!(lease.fence().token(), None);
    assert!(node.counter("lease_fenced_total") >= 1);
    assert_eq!(node.counter("lease_lost_total"), 1);
    still(&t);
    // It gave the key up; it wins it back with a token above the other's
    // and goes on.
    let again = wait_for("it leads again", LEASE * 3, || lease.check().ok());
    assert!(again > first + 1, "{again}");
    wait_for("the task runs again", LEASE, || {
        (t.starts.load(Ordering::SeqCst) == 2).then_some(())
    });
    assert!(fence_claim(&conn, &other).is_err());
}

#[test]
fn a_lead_whose_time_ran_out_ends_at_the_first_check_with_no_keeper_running() {
    // No keeper, no Redis: the lead is set by hand, as a keeper that then
    // never got to run again (a paused process) would have left it.
    let metrics = Metrics::default();
    let settings = Settings {
        redis: Endpoint::Single("redis://127.0.0.1:1/".into()),
        prefix: "test".into(),
        node: "a".into(),
        lease: LEASE,
        timeout: TIMEOUT,
    };
    let shared = SharedStore {
        fences: Fences::new(),
        claim: no_claim(),
    };
    let leases = Leases::new(settings, shared, &metrics).unwrap();
    let lease = leases.get(S);
    let until = Instant::now() + Duration::from_millis(50);
    lease.won(7, until);
    assert!(lease.lead(7));
    assert_eq!(lease.check().unwrap(), 7);
    assert_eq!(leases.fence(S).token(), Some(7));
    let mut rx = lease.leader.subscribe();
    assert_eq!(*rx.borrow_and_update(), Some(7));
    wait_for("its time passes", LEASE, || {
        (Instant::now() >= until).then_some(())
    });
    // The first check after the deadline refuses, lets go of the fence
    // (so the store refuses a write already on its way too) and says so.
    let err = lease.check().unwrap_err();
    assert!(matches!(err, StoreError::Fenced { token: 7, .. }), "{err}");
    assert_eq!(leases.fence(S).token(), None);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), None);
    assert_eq!(metrics.value("lease_lost_total"), Some(1));
    // A port fenced by the lease refuses before it reaches the store.
    struct Untouched;
    impl Outbox for Untouched {
        fn due(&self, _: i64, _: usize) -> Result<Vec<Due>, StoreError> {
            panic!("reached the store")
        }
        fn claim(&self, _: i64) -> Result<Result<Payload, String>, StoreError> {
            panic!("reached the store")
        }
        fn delivered(&self, _: &Due, _: &str) -> Result<(), StoreError> {
            panic!("reached the store")
        }
        fn retry(&self, _: &Due, _: i64, _: &str) -> Result<(), StoreError> {
            panic!("reached the store")
        }
        fn dead_letter(&self, _: &Due, _: &str) -> Result<(), StoreError> {
            panic!("reached the store")
        }
        fn backlog(&self) -> Result<Backlog, StoreError> {
            panic!("reached the store")
        }
    }
    let port = fenced::outbox(Arc::new(Untouched), lease.clone());
    assert!(matches!(port.due(0, 1), Err(StoreError::Fenced { .. })));
    // A claim that took past the deadline never leads.
    lease.won(8, Instant::now());
    assert!(!lease.lead(8));
    assert_eq!(leases.fence(S).token(), None);
}

#[test]
fn a_refusal_of_an_earlier_leads_token_leaves_the_current_lead_alone() {
    let metrics = Metrics::default();
    let settings = Settings {
        redis: Endpoint::Single("redis://127.0.0.1:1/".into()),
        prefix: "test".into(),
        node: "a".into(),
        lease: LEASE,
        timeout: TIMEOUT,
    };
    let shared = SharedStore {
        fences: Fences::new(),
        claim: no_claim(),
    };
    let lease = Leases::new(settings, shared, &metrics).unwrap().get(S);
    lease.won(9, Instant::now() + LEASE);
    assert!(lease.lead(9));
    let refused = |token| StoreError::Fenced {
        at: "pg".into(),
        name: S.name().into(),
        token,
        seen: 12,
    };
    // A write of the lead before (token 8) that ended late: counted, and
    // the lead with 9 goes on.
    lease.fenced(&refused(8));
    assert_eq!(lease.check().unwrap(), 9);
    assert_eq!(metrics.value("lease_fenced_total"), Some(1));
    // Token 9 refused: the lead ends.
    lease.fenced(&refused(9));
    assert!(lease.check().is_err());
    assert_eq!(lease.fence().token(), None);
    assert_eq!(metrics.value("lease_fenced_total"), Some(2));
    assert_eq!(metrics.value("lease_lost_total"), Some(1));
}

/// A node of the feed test: the leases' node with its Centre parts.
struct FeedNode {
    node: Node,
    layer: Arc<crate::nbfeed::layer::FeedLayer>,
}

fn feed_node(
    redis: &RedisServer,
    name: &str,
    url: &str,
    keys: &Arc<[crate::nbfeed::batch::Key]>,
    dir: &std::path::Path,
) -> FeedNode {
    use crate::nbfeed::{cases::CaseDesk, layer::FeedLayer, pull};
    let node = Node::start(redis, name, no_claim());
    // Every node on one Centre store (SQLite here: it has no fences, the
    // handover itself is what is tested).
    let centre = kuzet_store::sqlite::ports(dir).centre;
    let plan = Arc::new(
        kuzet_rules::NumberingPlan::kazakhstan()
            .validated()
            .unwrap(),
    );
    let layer = Arc::new(FeedLayer::new(plan));
    let http = pull::Http::new(url, Duration::from_secs(2), &pull::TlsFiles::default()).unwrap();
    let metrics = node.metrics.clone();
    let cases = Arc::new(CaseDesk {
        store: centre.clone(),
        calendar: crate::nbfeed::calendar::Calendar::kazakhstan([], []),
        working_days: 2,
        utc_offset_s: 5 * 3600,
        warn: Duration::from_secs(4 * 3600),
        store_id: "test".into(),
        metrics: metrics.clone(),
        late_after: Duration::from_secs(60),
        refusals: Default::default(),
    });
    let puller = Arc::new(pull::Puller {
        http: http.clone(),
        keys: keys.clone(),
        layer: layer.clone(),
        store: centre.clone(),
        cases: cases.clone(),
        nudge: Default::default(),
        metrics: metrics.clone(),
        poll: Duration::from_millis(100),
        stale_after: Duration::from_secs(900),
    });
    let nb = crate::nbfeed::Nbank {
        puller,
        cases,
        http,
        store: centre,
        metrics,
        watch: None,
    };
    {
        let _in = node.rt().enter();
        nb.spawn(node.shutdown.subscribe(), Some(node.leases.clone()));
    }
    FeedNode { node, layer }
}

#[test]
fn killing_the_feed_leader_hands_the_feed_to_another_node_and_no_batch_is_applied_twice() {
    use kuzet_sim::nbfeed::{FeedEntry, NbFeed};
    let redis = redis();
    let dir = tempfile::tempdir().unwrap();
    // The stand-in Centre, on a runtime of its own.
    let centre_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let feed = NbFeed::new("lease-handover");
    let addr = centre_rt
        .block_on(feed.spawn("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let url = format!("http://{addr}");
    let cfg = crate::nbfeed::NbankConfig {
        url: Some(url.clone()),
        keys: feed
            .keys()
            .into_iter()
            .map(|k| crate::nbfeed::KeyConfig {
                id: k.id,
                public: k.public_hex,
                valid_from: k.valid_from_rfc3339,
                valid_until: None,
            })
            .collect(),
        ..Default::default()
    };
    let keys: Arc<[_]> = cfg.keys().unwrap().into();
    let expires = kuzet_store::now_us() / 1_000_000 + 3600;
    let publish = |n: u64| {
        feed.publish(&[FeedEntry::add(
            format!("+7701555{n:04}"),
            "bank-impersonation",
            expires,
        )])
    };
    let mut nodes: Vec<FeedNode> = ["a", "b", "c"]
        .iter()
        .map(|n| feed_node(&redis, n, &url, &keys, dir.path()))
        .collect();
    let store = kuzet_store::sqlite::ports(dir.path()).centre;
    let leader_of = |nodes: &[FeedNode]| {
        let live: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].node.alive() && nodes[i].node.lease(S).is_leader())
            .collect();
        match live[..] {
            [i] => Some(i),
            _ => None,
        }
    };
    for n in 1..=3 {
        publish(n);
    }
    let first = wait_for("a node leads the feed", LEASE * 2, || leader_of(&nodes));
    // The leader keeps the batches in the store; every node's layer
    // follows (the others' from the store).
    let in_step = |nodes: &[FeedNode], seq: u64| {
        store.cursor("batches").unwrap() == seq
            && nodes
                .iter()
                .filter(|n| n.node.alive())
                .all(|n| n.layer.cursor() == seq && n.layer.len() == seq as usize)
    };
    wait_for("every layer holds batch 3", LEASE * 4, || {
        in_step(&nodes, 3).then_some(())
    });
    // The leader dies; more batches come meanwhile.
    nodes[first].node.die();
    let died = Instant::now();
    for n in 4..=6 {
        publish(n);
    }
    let next = wait_for("another node leads the feed", LEASE * 3, || {
        leader_of(&nodes)
    });
    let took = died.elapsed();
    eprintln!("the feed moved from node {first} to node {next} after {took:?}");
    assert_ne!(next, first);
    assert!(
        took <= LEASE + LEASE / 3 + SLACK,
        "the feed was taken over after {took:?}"
    );
    wait_for("every live layer holds batch 6", LEASE * 4, || {
        in_step(&nodes, 6).then_some(())
    });
    // Each batch was applied once, by whichever node led then.
    let applied: u64 = nodes
        .iter()
        .map(|n| n.node.counter("nbank_batches_applied_total"))
        .sum();
    assert_eq!(applied, 6);
    assert!(nodes[first].node.counter("nbank_batches_applied_total") >= 3);
    let others: Vec<usize> = (0..3).filter(|&i| i != first && i != next).collect();
    assert_eq!(
        nodes[others[0]].node.counter("nbank_batches_applied_total"),
        0,
        "a follower pulled"
    );
    feed.stop();
}

/// Three nodes keeping `S` on a Redis Cluster.
fn on_cluster(cluster: &RedisCluster) -> Vec<Node> {
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::on(Endpoint::Cluster(cluster.seeds()), n, no_claim()))
        .collect();
    for n in &nodes {
        n.keep(S);
    }
    nodes
}

#[test]
fn on_a_redis_cluster_one_node_holds_a_lease_and_a_dead_holders_passes_on_within_the_bound() {
    let cluster =
        RedisCluster::start().expect("redis-server (scripts/install-deps.sh installs it)");
    let mut nodes = on_cluster(&cluster);
    let (first, token) = one_leader(&nodes, S, LEASE * 3);
    let t = Instant::now();
    while t.elapsed() < LEASE * 2 {
        assert_eq!(fenced(&nodes, S), [first], "fences at {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The lease and its counter are on the master of the `{test}` slot.
    let key = "{test}:lease:nbank-feed";
    let master = cluster.master_of(key).unwrap();
    assert_eq!(
        cluster.master_of("{test}:lease:nbank-feed:token").unwrap(),
        master
    );
    let held = cluster.cli(master, &["GET", key]).unwrap();
    assert_eq!(parse_holder(&held), Some((["a", "b", "c"][first], token)));
    // The holder dies: another node leads within the lease and a renew
    // period, with a higher token.
    let bound = LEASE + LEASE / 3 + SLACK;
    nodes[first].die();
    let died = Instant::now();
    let (next, next_token) = one_leader(&nodes, S, bound * 2);
    let took = died.elapsed();
    eprintln!("node {first} died, node {next} leads after {took:?}");
    assert!(took <= bound, "taken over after {took:?}, past {bound:?}");
    assert!(next_token > token);
}

#[test]
fn a_failover_of_the_master_of_the_leases_slot_never_leaves_two_leaders_and_one_leads_again() {
    let mut cluster =
        RedisCluster::start().expect("redis-server (scripts/install-deps.sh installs it)");
    let nodes = on_cluster(&cluster);
    let (_, token) = one_leader(&nodes, S, LEASE * 3);
    let key = "{test}:lease:nbank-feed";
    let master = cluster.master_of(key).unwrap();
    cluster.kill(master);
    let killed = Instant::now();
    // Until a node leads with a new token: never two at once. The holder
    // cannot renew, so its lead ends by its own clock; the key it held
    // expires on the replica at the same time, and a node wins it there
    // once the replica has taken over.
    let mut leaderless: Option<Instant> = None;
    let mut gap = Duration::ZERO;
    let (next, next_token) = loop {
        let f = fenced(&nodes, S);
        assert!(
            f.len() <= 1,
            "two fences after {:?}: {f:?}",
            killed.elapsed()
        );
        match leaders(&nodes, S)[..] {
            [i] => {
                if let Some(t) = leaderless.take() {
                    gap += t.elapsed();
                }
                let t = nodes[i].lease(S).check().unwrap_or(0);
                if t > token {
                    break (i, t);
                }
            }
            _ => {
                leaderless.get_or_insert_with(Instant::now);
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no node leads again after the failover: {}",
            cluster.log_tail(cluster.live_ports()[0], 20)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let promoted = cluster
        .wait_failover(key, master, Duration::from_secs(30))
        .unwrap();
    eprintln!(
        "master {master} killed, port {promoted} took the slot; node {next} leads with a new token after {:?}, no leader for {gap:?} of it",
        killed.elapsed()
    );
    // And it keeps its lead.
    let t = Instant::now();
    while t.elapsed() < LEASE * 2 {
        assert_eq!(leaders(&nodes, S), [next]);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(nodes[next].lease(S).check().unwrap(), next_token);
}
