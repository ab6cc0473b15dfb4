//! The feed as a layer of the snapshot: the `nb_feed` list, fed to the
//! publisher like any other source, so its entries take effect through
//! the same checked, atomic swap as a published list.
//!
//! [`FeedLayer`] holds the entries in force in memory, compactly (a packed
//! number or range, its expiry, its category's id and confidence: 16
//! bytes an entry plus the map's own), applies each verified batch in
//! order (adds replace, withdrawals remove), and drops entries whose
//! `expires_at` has come ([`FeedLayer::expire`], which the puller calls
//! at the earliest expiry it is told of, [`FeedLayer::next_expiry`]).
//! Each change marks the layer changed, then raises the source's sequence
//! to the batch's, so the version in force says which batch it reflects.
//! What it holds survives a restart in the store ([`kuzet_store::Centre`]);
//! [`FeedLayer::restore`] loads it back before the first snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use kuzet_rules::{ListId, Number, NumberingPlan, Prefix};
use kuzet_store::centre::{FeedChange, FeedRow};

use super::batch::{Action, Entry};
use crate::publish::{Feed, Layers, LoadError, Source};

/// The name errors and logs give the layer's input.
const NAME: &str = "nbfeed";

/// Set in a packed key for a range (numbers never set it: their packing
/// uses bits 0-60 and 63).
const RANGE: u64 = 1 << 62;

/// One entry in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    /// Unix seconds it leaves the layer (u32 holds dates to 2106).
    expires_at: u32,
    /// Its category's id in [`Live::categories`].
    category: u16,
    confidence: u8,
}

/// The entries in force and the batch they reflect.
#[derive(Default)]
struct Live {
    entries: HashMap<u64, Held>,
    categories: Vec<Box<str>>,
    category_ids: HashMap<Box<str>, u16>,
    cursor: u64,
    /// The earliest expiry among the entries (a bound: an entry replaced
    /// or withdrawn may have held it), `u32::MAX` with none.
    next_expiry: u32,
}

impl Live {
    fn category(&mut self, c: &str) -> u16 {
        if let Some(id) = self.category_ids.get(c) {
            return *id;
        }
        // The Centre's categories are a handful; past 65,535 distinct ones
        // the last id is shared (the reason shown is then the last one).
        let id = u16::try_from(self.categories.len()).unwrap_or(u16::MAX);
        if usize::from(id) == self.categories.len() {
            self.categories.push(c.into());
            self.category_ids.insert(c.into(), id);
        }
        id
    }

    fn add(&mut self, key: u64, expires_at: i64, category: &str, confidence: u8) {
        let expires_at = clamp_time(expires_at);
        let category = self.category(category);
        self.next_expiry = self.next_expiry.min(expires_at);
        self.entries.insert(
            key,
            Held {
                expires_at,
                category,
                confidence,
            },
        );
    }
}

fn clamp_time(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

/// What one batch did to the layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries added or replaced.
    pub added: usize,
    /// Entries withdrawn (that were in the layer).
    pub withdrawn: usize,
    /// Adds already expired when they arrived: not entered.
    pub stale: usize,
}

/// The feed's layer (see the module docs).
pub struct FeedLayer {
    plan: Arc<NumberingPlan>,
    live: RwLock<Live>,
    changed: AtomicBool,
    seq: AtomicU64,
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl FeedLayer {
    /// An empty layer, normalizing with `plan`, on the system clock.
    pub fn new(plan: Arc<NumberingPlan>) -> FeedLayer {
        FeedLayer::with_clock(
            plan,
            Arc::new(|| kuzet_store::now_us().div_euclid(1_000_000)),
        )
    }

    /// An empty layer on a clock of the caller's (Unix seconds): tests
    /// move time on without waiting for it.
    pub fn with_clock(
        plan: Arc<NumberingPlan>,
        clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    ) -> FeedLayer {
        FeedLayer {
            plan,
            live: RwLock::new(Live {
                next_expiry: u32::MAX,
                ..Live::default()
            }),
            changed: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            clock,
        }
    }

    /// The time on the layer's clock.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The packed key of a target (`+77011234567` or `+7702555*`), if the
    /// plan reads it.
    pub fn key(&self, target: &str) -> Option<u64> {
        match target.strip_suffix('*') {
            Some(stem) => {
                let p = self.plan.normalize_prefix(stem.as_bytes())?;
                Some(RANGE | (u64::from(p.len) << 56) | p.value)
            }
            None => Some(self.plan.normalize(target.as_bytes())?.raw()),
        }
    }

    /// Marks the layer changed, then raises the sequence (the publisher
    /// reads the sequence first: a snapshot named with it holds the
    /// change).
    fn mark(&self, cursor: u64) {
        self.changed.store(true, Ordering::Release);
        self.seq.fetch_max(cursor, Ordering::AcqRel);
    }

    /// Loads what the store kept: `load` hands every row still in force
    /// to the closure it is given (a 10M-row table streams, never
    /// collected) and returns the batch they reflect. Rows the plan cannot
    /// read (a plan changed since they were stored) are skipped and
    /// counted. Returns (entries kept, rows skipped).
    pub fn restore<E>(
        &self,
        load: impl FnOnce(&mut dyn FnMut(FeedRow)) -> Result<u64, E>,
    ) -> Result<(usize, usize), E> {
        let now = self.now();
        let (mut kept, mut unreadable) = (0, 0);
        let cursor = {
            let mut live = self.write();
            let cursor = load(&mut |r: FeedRow| {
                if r.expires_at_s <= now {
                    return;
                }
                match self.key(&r.target) {
                    Some(k) => {
                        live.add(k, r.expires_at_s, &r.category, r.confidence);
                        kept += 1;
                    }
                    None => unreadable += 1,
                }
            })?;
            live.cursor = cursor;
            cursor
        };
        self.mark(cursor);
        Ok((kept, unreadable))
    }

    /// Replaces every entry with the rows `load` hands it (the store's
    /// rows in force, streamed, and the batch they reflect): built aside
    /// and swapped in whole, so a lookup or a snapshot build never sees
    /// the layer half loaded. A load that reflects an older batch than the
    /// layer already does changes nothing: the layer never moves back (a
    /// follower's reload that finishes after the node began to lead and
    /// applied a newer batch itself). Returns (entries kept, rows the plan
    /// cannot read) when it swapped, `None` when it kept the layer as it
    /// was. Both copies are in memory while it swaps.
    pub fn reload<E>(
        &self,
        load: impl FnOnce(&mut dyn FnMut(FeedRow)) -> Result<u64, E>,
    ) -> Result<Option<(usize, usize)>, E> {
        let now = self.now();
        let mut fresh = Live {
            next_expiry: u32::MAX,
            ..Live::default()
        };
        let (mut kept, mut unreadable) = (0, 0);
        let cursor = load(&mut |r: FeedRow| {
            if r.expires_at_s <= now {
                return;
            }
            match self.key(&r.target) {
                Some(k) => {
                    fresh.add(k, r.expires_at_s, &r.category, r.confidence);
                    kept += 1;
                }
                None => unreadable += 1,
            }
        })?;
        fresh.cursor = cursor;
        let old = {
            let mut live = self.write();
            if cursor < live.cursor {
                return Ok(None);
            }
            std::mem::replace(&mut *live, fresh)
        };
        // The old map is freed outside the lock.
        drop(old);
        self.mark(cursor);
        Ok(Some((kept, unreadable)))
    }

    /// Applies batch `seq` (one that [`super::batch::follows`] the cursor),
    /// as the changes the store kept. Targets the plan cannot read were
    /// refused before (see [`FeedLayer::check`]).
    pub fn apply(&self, seq: u64, changes: &[FeedChange]) -> Applied {
        let now = self.now();
        let mut out = Applied::default();
        {
            let mut live = self.write();
            for c in changes {
                let Some(k) = self.key(c.target()) else {
                    continue;
                };
                match c {
                    FeedChange::Add(r) if r.expires_at_s <= now => {
                        // Gone already: an add cannot revive it, but it
                        // replaces what was there.
                        live.entries.remove(&k);
                        out.stale += 1;
                    }
                    FeedChange::Add(r) => {
                        live.add(k, r.expires_at_s, &r.category, r.confidence);
                        out.added += 1;
                    }
                    FeedChange::Withdraw(_) => {
                        if live.entries.remove(&k).is_some() {
                            out.withdrawn += 1;
                        }
                    }
                }
            }
            live.cursor = seq;
        }
        self.mark(seq);
        out
    }

    /// The changes a verified batch makes, taken out of it (no copy of a
    /// million strings).
    pub fn changes(entries: Vec<Entry>) -> Vec<FeedChange> {
        entries
            .into_iter()
            .map(|e| match e.action {
                Action::Add => FeedChange::Add(FeedRow {
                    target: e.target,
                    category: e.category,
                    confidence: e.confidence,
                    reported_at_s: e.reported_at,
                    expires_at_s: e.expires_at,
                    case_ref: e.case,
                }),
                Action::Withdraw => FeedChange::Withdraw(e.target),
            })
            .collect()
    }

    /// The first entry of a verified batch whose number or range this
    /// plan cannot read, with its 1-based line (the header is line 1):
    /// such a batch is refused whole, like a malformed one.
    pub fn check(&self, entries: &[Entry]) -> Result<(), (usize, String)> {
        for (i, e) in entries.iter().enumerate() {
            if self.key(&e.target).is_none() {
                return Err((
                    i + 2,
                    format!(
                        "{:?} is not a number or range of the numbering plan",
                        crate::safe::visible(&e.target)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Drops the entries whose expiry has come; returns how many went.
    /// A full pass over the map (tens of milliseconds at 10M entries), so
    /// the puller calls it at [`FeedLayer::next_expiry`], not on a timer.
    pub fn expire(&self) -> usize {
        let now = self.now();
        let mut live = self.write();
        if i64::from(live.next_expiry) > now {
            return 0;
        }
        let before = live.entries.len();
        let mut next = u32::MAX;
        live.entries.retain(|_, h| {
            let keep = i64::from(h.expires_at) > now;
            if keep {
                next = next.min(h.expires_at);
            }
            keep
        });
        live.next_expiry = next;
        let gone = before - live.entries.len();
        let cursor = live.cursor;
        drop(live);
        if gone > 0 {
            self.mark(cursor);
        }
        gone
    }

    /// The earliest time an entry leaves (Unix seconds), if any is held.
    pub fn next_expiry(&self) -> Option<i64> {
        let n = self.read().next_expiry;
        (n != u32::MAX).then_some(i64::from(n))
    }

    /// The batch the layer reflects.
    pub fn cursor(&self) -> u64 {
        self.read().cursor
    }

    /// Entries in force (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    /// True with no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry that covers `n`, as its target (the number, or the
    /// longest range), with its category: what a hit on the feed is
    /// reported against.
    pub fn covering(&self, n: Number) -> Option<(String, String)> {
        let live = self.read();
        let now = self.now();
        let alive = |h: &Held| i64::from(h.expires_at) > now;
        let category = |h: &Held| live.categories[usize::from(h.category)].to_string();
        if let Some(h) = live.entries.get(&n.raw()).filter(|h| alive(h)) {
            return Some((n.to_string(), category(h)));
        }
        for len in (1..n.len()).rev() {
            let key = RANGE | ((len as u64) << 56) | n.leading(len);
            if let Some(h) = live.entries.get(&key).filter(|h| alive(h)) {
                let p = Prefix {
                    value: n.leading(len),
                    len: len as u8,
                };
                return Some((p.to_string(), category(h)));
            }
        }
        None
    }
}

impl Source for FeedLayer {
    fn name(&self) -> &str {
        NAME
    }

    fn layers(&self) -> Layers {
        Layers::list(ListId::NbFeed)
    }

    fn changed(&self) -> Layers {
        if self.changed.swap(false, Ordering::AcqRel) {
            self.layers()
        } else {
            Layers::NONE
        }
    }

    fn sequence(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn feed(&self, _l: ListId, into: &mut Feed<'_, '_>) -> Result<(), LoadError> {
        let now = self.now();
        let live = self.read();
        into.reserve(live.entries.len());
        for (k, h) in &live.entries {
            if i64::from(h.expires_at) <= now {
                continue;
            }
            let reason = &live.categories[usize::from(h.category)];
            if k & RANGE != 0 {
                let p = Prefix {
                    value: k & ((1 << 56) - 1),
                    len: ((k >> 56) & 0x1f) as u8,
                };
                into.prefix(NAME, p, reason)?;
            } else if let Some(n) = Number::from_raw(*k) {
                into.number(NAME, n, reason)?;
            }
        }
        into.note(format!("nbfeed batch {}", live.cursor), live.entries.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    fn entry(action: Action, target: &str, expires_at: i64) -> Entry {
        Entry {
            action,
            target: target.into(),
            category: "bank-impersonation".into(),
            confidence: 90,
            reported_at: 1,
            expires_at,
            case: "AFC-1".into(),
        }
    }

    fn layer(at: &Arc<AtomicI64>) -> FeedLayer {
        let plan = Arc::new(NumberingPlan::kazakhstan().validated().unwrap());
        let t = at.clone();
        FeedLayer::with_clock(plan, Arc::new(move || t.load(Ordering::Relaxed)))
    }

    #[test]
    fn entries_enter_leave_on_withdrawal_and_expire_on_the_layers_clock() {
        let t = Arc::new(AtomicI64::new(1_000));
        let l = layer(&t);
        let b = FeedLayer::changes(vec![
            entry(Action::Add, "+77011234567", 1_060),
            entry(Action::Add, "+7702555*", 2_000),
            entry(Action::Add, "+77013330000", 900),
        ]);
        assert_eq!(
            l.apply(1, &b),
            Applied {
                added: 2,
                withdrawn: 0,
                stale: 1
            }
        );
        assert_eq!((l.len(), l.cursor(), l.sequence()), (2, 1, 1));
        assert_eq!(l.changed(), Layers::list(ListId::NbFeed));
        assert_eq!(l.changed(), Layers::NONE, "taken once");
        let n = |s: &str| NumberingPlan::kazakhstan().normalize(s.as_bytes()).unwrap();
        assert_eq!(
            l.covering(n("+77025551234")),
            Some(("+7702555*".into(), "bank-impersonation".into()))
        );
        assert_eq!(l.next_expiry(), Some(1_060));
        // Not yet: nothing goes.
        t.store(1_059, Ordering::Relaxed);
        assert_eq!(l.expire(), 0);
        assert!(l.covering(n("+77011234567")).is_some());
        // On time: the number leaves at its expires_at, the range stays.
        t.store(1_060, Ordering::Relaxed);
        assert!(
            l.covering(n("+77011234567")).is_none(),
            "a lookup never shows an expired entry"
        );
        assert_eq!(l.expire(), 1);
        assert_eq!(l.changed(), Layers::list(ListId::NbFeed));
        assert_eq!((l.len(), l.next_expiry()), (1, Some(2_000)));
        // A withdrawal removes the range; the version names batch 2.
        let w = FeedLayer::changes(vec![entry(Action::Withdraw, "+7702555*", 0)]);
        assert_eq!(l.apply(2, &w).withdrawn, 1);
        assert_eq!((l.len(), l.sequence()), (0, 2));
    }

    #[test]
    fn a_reload_replaces_the_layer_whole_and_never_moves_it_back() {
        let t = Arc::new(AtomicI64::new(1_000));
        let l = layer(&t);
        l.apply(
            3,
            &FeedLayer::changes(vec![entry(Action::Add, "+77011234567", 5_000)]),
        );
        let _ = l.changed();
        let row = |target: &str, expires_at_s: i64| FeedRow {
            target: target.into(),
            category: "sim-swap".into(),
            confidence: 50,
            reported_at_s: 1,
            expires_at_s,
            case_ref: String::new(),
        };
        // The store is at batch 5: its rows replace the layer's (an expired
        // one and one the plan cannot read left out).
        let got = l
            .reload(|each| {
                each(row("+77029998877", 5_000));
                each(row("+7702555*", 900));
                each(row("+7", 5_000));
                Ok::<u64, ()>(5)
            })
            .unwrap();
        assert_eq!(got, Some((1, 1)));
        assert_eq!((l.len(), l.cursor(), l.sequence()), (1, 5, 5));
        assert_eq!(l.changed(), Layers::list(ListId::NbFeed));
        let n = |s: &str| NumberingPlan::kazakhstan().normalize(s.as_bytes()).unwrap();
        assert!(
            l.covering(n("+77011234567")).is_none(),
            "replaced, not added to"
        );
        assert_eq!(
            l.covering(n("+77029998877")),
            Some(("+77029998877".into(), "sim-swap".into()))
        );
        // An older view (batch 4) never replaces batch 5.
        let got = l
            .reload(|each| {
                each(row("+77011234567", 5_000));
                Ok::<u64, ()>(4)
            })
            .unwrap();
        assert_eq!(got, None);
        assert_eq!((l.len(), l.cursor()), (1, 5));
        assert_eq!(l.changed(), Layers::NONE);
        // A load that fails changes nothing.
        assert_eq!(l.reload(|_| Err::<u64, &str>("down")), Err("down"));
        assert_eq!(l.cursor(), 5);
    }

    #[test]
    fn a_target_the_plan_cannot_read_is_named_with_its_line() {
        let t = Arc::new(AtomicI64::new(0));
        let l = layer(&t);
        let es = [
            entry(Action::Add, "+77011234567", 10),
            entry(Action::Add, "+7", 10),
        ];
        let (line, why) = l.check(&es).unwrap_err();
        assert_eq!(line, 3);
        assert!(why.contains("\"+7\""), "{why}");
    }
}
