//! The publisher over real files and over a source that hangs: what is
//! rebuilt, how a snapshot is named, which candidates are refused, and
//! that a refused or abandoned load is tried again.

use super::*;
use crate::lists::{FileSource, ListFile, Sources};
use std::path::{Path, PathBuf};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kuzet-publish-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const RULES: &str = "[thresholds]\nflag = 40\nblock = 100\n";

fn plan() -> NumberingPlan {
    NumberingPlan::kazakhstan().validated().unwrap()
}

fn file(dir: &Path, name: &str, kind: ListId) -> ListFile {
    ListFile {
        path: dir.join(name),
        kind,
        allow_empty: false,
    }
}

/// Writes `text` to `path` by renaming a new file over it, as a deploy
/// does (a new inode: the change is seen whatever the clock's grain).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn publisher(src: Sources, backoff: Duration) -> (Publisher, SharedLists, Arc<Metrics>) {
    let shared: SharedLists = Arc::new(arc_swap::ArcSwap::from_pointee(ListSet::default()));
    let metrics = Arc::new(Metrics::default());
    let p = Publisher::new(
        vec![Arc::new(FileSource::new(src.clone()))],
        plan(),
        src.policy,
        shared.clone(),
        metrics.clone(),
        backoff,
    );
    (p, shared, metrics)
}

fn blocked(shared: &SharedLists, n: &str) -> bool {
    let set = shared.load();
    let num = plan().normalize(n.as_bytes()).unwrap();
    set.list(ListId::Block).lookup(num).is_some()
}

/// Regression: the files' fingerprints were recorded before the load, so
/// a reload abandoned at its timeout was never tried again: the new list
/// never came into force until the file changed once more. The layer now
/// stays dirty until a load of it is in force, and is tried again after
/// a back-off, with no further change to the file.
#[test]
fn an_abandoned_reload_is_retried() {
    let dir = temp("abandoned");
    std::fs::write(dir.join("block.txt"), "+77011112233\n").unwrap();
    let src = Sources {
        files: vec![file(&dir, "block.txt", ListId::Block)],
        ..Sources::default()
    };
    let (mut p, shared, metrics) = publisher(src, Duration::from_millis(200));
    p.publish_now().unwrap();
    assert!(!blocked(&shared, "+77019998877"));
    replace(&dir.join("block.txt"), "+77011112233\n+77019998877\n");
    p.poll();
    assert_eq!(p.dirty(), Layers::list(ListId::Block));
    assert!(p.due(Instant::now()));
    // The load runs past its timeout: the loop sets the cancel flag.
    let job = p.job();
    job.cancel.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let built = job.run();
    assert!(matches!(built, Err(LoadError::Abandoned(_))));
    assert!(!p.apply("change", built, started));
    assert_eq!(metrics.counter_set::<ReloadCounters>().abandoned.get(), 1);
    assert!(!blocked(&shared, "+77019998877"), "the lists in force stay");
    // Nothing changes on disk from here on.
    p.poll();
    assert_eq!(p.dirty(), Layers::list(ListId::Block), "still dirty");
    let now = Instant::now();
    assert!(!p.due(now), "backing off");
    assert!(p.due(now + Duration::from_millis(250)), "then due again");
    let started = Instant::now();
    assert!(p.apply("retry", p.job().run(), started));
    assert!(blocked(&shared, "+77019998877"), "the retry is in force");
    assert!(p.dirty().is_empty());
    assert_eq!(metrics.counter_set::<ReloadCounters>().reloads.get(), 1);
}

/// The reload loop itself: a build that hangs past the reload timeout is
/// abandoned, and tried again after the back-off without any new change;
/// the second try is in force.
#[test]
fn the_reload_loop_tries_an_abandoned_load_again() {
    use std::sync::atomic::AtomicUsize;
    /// Feeds one number; the first feed after a change hangs until it is
    /// cancelled.
    struct Hangs {
        feeds: AtomicUsize,
        changed: AtomicBool,
    }
    impl Source for Hangs {
        fn name(&self) -> &str {
            "hangs"
        }
        fn layers(&self) -> Layers {
            Layers::list(ListId::Block)
        }
        fn changed(&self) -> Layers {
            if self.changed.swap(false, Ordering::SeqCst) {
                Layers::list(ListId::Block)
            } else {
                Layers::NONE
            }
        }
        fn feed(&self, _: ListId, into: &mut Feed<'_, '_>) -> Result<(), LoadError> {
            let n = self.feeds.fetch_add(1, Ordering::SeqCst);
            if n == 1 {
                // A read that stalls (a slow mount) until abandoned.
                while !into.cancelled() {
                    std::thread::yield_now();
                }
                return Err(into.abandoned());
            }
            into.text(
                "hangs",
                if n == 0 {
                    "+77011112233\n"
                } else {
                    "+77019998877\n"
                },
            )
        }
    }
    let src = Arc::new(Hangs {
        feeds: AtomicUsize::new(0),
        changed: AtomicBool::new(false),
    });
    let shared: SharedLists = Arc::new(arc_swap::ArcSwap::from_pointee(ListSet::default()));
    let metrics = Arc::new(Metrics::default());
    let mut p = Publisher::new(
        vec![src.clone()],
        plan(),
        ListPolicy::default(),
        shared.clone(),
        metrics.clone(),
        Duration::from_millis(50),
    );
    p.publish_now().unwrap();
    assert!(blocked(&shared, "+77011112233"));
    src.changed.store(true, Ordering::SeqCst);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let timing = crate::plane::Timing {
        reload_interval: Duration::from_millis(50),
        reload_timeout: Duration::from_millis(300),
        stats_interval: Duration::from_secs(60),
        handle_sighup: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let watched = shared.clone();
    rt.block_on(async move {
        let looping = tokio::spawn(crate::plane::reload_loop(
            timing,
            p,
            stop_rx,
            Default::default(),
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !blocked(&watched, "+77019998877") {
            assert!(Instant::now() < deadline, "the retry never came into force");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(true);
        let _ = looping.await;
    });
    assert_eq!(metrics.counter_set::<ReloadCounters>().abandoned.get(), 1);
    assert_eq!(metrics.counter_set::<ReloadCounters>().reloads.get(), 1);
    assert_eq!(
        src.feeds.load(Ordering::SeqCst),
        3,
        "start, abandoned, retried"
    );
}

/// One changed list is rebuilt alone: the other lists and the rules of
/// the new snapshot are the very ones in force before.
#[test]
fn only_the_changed_layer_is_rebuilt() {
    let dir = temp("one-layer");
    std::fs::write(dir.join("block.txt"), "+77011112233\n").unwrap();
    std::fs::write(dir.join("flag.txt"), "+77015550000\n").unwrap();
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    let src = Sources {
        files: vec![
            file(&dir, "block.txt", ListId::Block),
            file(&dir, "flag.txt", ListId::Flag),
        ],
        rule_file: Some(dir.join("rules.toml")),
        ..Sources::default()
    };
    let (mut p, shared, _) = publisher(src, Duration::from_secs(1));
    p.publish_now().unwrap();
    let before = shared.load_full();
    replace(&dir.join("flag.txt"), "+77015550000\n+77015550001\n");
    p.poll();
    let job = p.job();
    assert_eq!(job.layers(), Layers::list(ListId::Flag));
    assert!(p.apply("change", job.run(), Instant::now()));
    let after = shared.load_full();
    assert!(Arc::ptr_eq(
        &before.lists[ListId::Block],
        &after.lists[ListId::Block]
    ));
    assert!(Arc::ptr_eq(&before.rules, &after.rules));
    assert!(!Arc::ptr_eq(
        &before.lists[ListId::Flag],
        &after.lists[ListId::Flag]
    ));
    assert_eq!(after.list(ListId::Flag).exact_count(), 2);
    assert_ne!(before.version, after.version);
    assert!(after.generation > before.generation);
    // The rule file alone.
    replace(
        &dir.join("rules.toml"),
        "[thresholds]\nflag = 30\nblock = 100\n",
    );
    p.poll();
    assert_eq!(p.job().layers(), Layers::RULES);
}

/// The version names content: two nodes whose files hold the same
/// entries (in another order, with other comments, at other paths)
/// report the same version; a changed reason or rule gives another.
#[test]
fn the_same_inputs_give_the_same_version_on_two_nodes() {
    let version = |name: &str, block: &str, rules: &str| {
        let dir = temp(name);
        std::fs::write(dir.join("b.txt"), block).unwrap();
        std::fs::write(dir.join("r.toml"), rules).unwrap();
        let src = Sources {
            files: vec![file(&dir, "b.txt", ListId::Block)],
            rule_file: Some(dir.join("r.toml")),
            ..Sources::default()
        };
        let (mut p, shared, _) = publisher(src, Duration::from_secs(1));
        p.publish_now().unwrap();
        shared.load().version
    };
    let rules = "[thresholds]\nflag = 40\nblock = 100\n";
    let a = version("node-a", "+77011112233,fraud\n+7705*,range\n", rules);
    let b = version(
        "node-b",
        "# node b's copy\n+7705*,range\n8 701 111 22 33,fraud\n",
        rules,
    );
    assert_eq!(a, b);
    assert_eq!(a.seq, 0, "files carry no sequence");
    assert_eq!(a.to_string().len(), 2 + 32);
    assert_ne!(
        a,
        version("node-c", "+77011112233,fraud!\n+7705*,range\n", rules)
    );
    assert_ne!(
        a,
        version(
            "node-d",
            "+77011112233,fraud\n+7705*,range\n",
            "[thresholds]\nflag = 41\nblock = 100\n"
        )
    );
}

/// Every candidate passes today's checks: a rule file whose thresholds
/// would undercut a list, a `redirect_uri` that would inject headers, and
/// a list file that came out empty are each refused, counted, and the
/// snapshot in force stays.
#[test]
fn bad_candidates_are_refused_and_the_snapshot_stays() {
    let dir = temp("refused");
    std::fs::write(dir.join("block.txt"), "+77011112233\n").unwrap();
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    let src = Sources {
        files: vec![file(&dir, "block.txt", ListId::Block)],
        rule_file: Some(dir.join("rules.toml")),
        ..Sources::default()
    };
    let (mut p, shared, metrics) = publisher(src, Duration::from_millis(1));
    p.publish_now().unwrap();
    let good = shared.load().version;
    let refused = |p: &mut Publisher, what: &str| {
        p.poll();
        let built = p.job().run();
        // Refused whole, or (the other changed layers taken) this layer.
        let e = match &built {
            Err(e) => e.to_string(),
            Ok(c) => c
                .failed
                .as_ref()
                .map(|f| f.1.to_string())
                .unwrap_or_default(),
        };
        assert!(
            !p.apply("change", built, Instant::now()),
            "{what} was taken"
        );
        assert_eq!(
            shared.load().version,
            good,
            "{what}: the snapshot in force stays"
        );
        e
    };
    replace(
        &dir.join("rules.toml"),
        "[thresholds]\nflag = 40\nredirect = 70\nredirect_uri = \"sip:desk@x\\r\\nX-Evil: 1\"\nblock = 100\n",
    );
    let e = refused(&mut p, "a CR/LF redirect_uri");
    assert!(e.contains("rules.toml:4:"), "{e}");
    replace(
        &dir.join("rules.toml"),
        "[thresholds]\nflag = 40\nblock = 200\n",
    );
    let e = refused(&mut p, "an undercut");
    assert!(e.contains("blocklist"), "{e}");
    replace(&dir.join("rules.toml"), RULES);
    replace(&dir.join("block.txt"), "# emptied by a truncated upload\n");
    let e = refused(&mut p, "an emptied list");
    assert!(e.contains("has no entries"), "{e}");
    assert_eq!(metrics.counter_set::<ReloadCounters>().failures.get(), 3);
    assert!(blocked(&shared, "+77011112233"));
}

/// A layer that fails does not hold back the others: a good flaglist goes
/// into force beside a broken blocklist, which stays as it was, dirty,
/// and is tried again; the snapshot's sequence does not claim the broken
/// layer's change.
#[test]
fn a_broken_layer_does_not_hold_back_the_others() {
    let dir = temp("partial");
    std::fs::write(dir.join("block.txt"), "+77011112233\n").unwrap();
    std::fs::write(dir.join("flag.txt"), "+77015550000\n").unwrap();
    let src = Sources {
        files: vec![
            file(&dir, "block.txt", ListId::Block),
            file(&dir, "flag.txt", ListId::Flag),
        ],
        ..Sources::default()
    };
    let (mut p, shared, metrics) = publisher(src, Duration::from_millis(1));
    p.publish_now().unwrap();
    replace(&dir.join("block.txt"), "+77011112233\nnot a number\n");
    replace(&dir.join("flag.txt"), "+77015550000\n+77015550001\n");
    p.poll();
    let both = Layers::list(ListId::Block).with(Layers::list(ListId::Flag));
    assert_eq!(p.job().layers(), both);
    assert!(!p.apply("change", p.job().run(), Instant::now()));
    assert_eq!(
        shared.load().list(ListId::Flag).exact_count(),
        2,
        "the good layer is in force"
    );
    assert!(
        blocked(&shared, "+77011112233"),
        "the broken one stays as it was"
    );
    assert_eq!(p.dirty(), Layers::list(ListId::Block));
    assert_eq!(metrics.counter_set::<ReloadCounters>().failures.get(), 1);
    assert_eq!(metrics.counter_set::<ReloadCounters>().reloads.get(), 1);
    // Start-up takes every layer or none.
    let (mut fresh, _, _) = publisher(
        Sources {
            files: vec![
                file(&dir, "block.txt", ListId::Block),
                file(&dir, "flag.txt", ListId::Flag),
            ],
            ..Sources::default()
        },
        Duration::from_millis(1),
    );
    assert!(fresh.publish_now().is_err());
    // Fixed: tried again, in force.
    replace(&dir.join("block.txt"), "+77011112233\n+77011112234\n");
    p.poll();
    assert!(p.apply("retry", p.job().run(), Instant::now()));
    assert!(blocked(&shared, "+77011112234"));
    assert!(p.dirty().is_empty());
}
