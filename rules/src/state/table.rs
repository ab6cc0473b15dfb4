//! A fixed-capacity concurrent map from 56-bit keys to small values kept as
//! atomic words, for per-number state that workers update on every call
//! while a sweep evicts idle entries.
//!
//! Why not `DashMap`: its `len()` read-locks every shard, and `retain`
//! holds each shard's write lock while it walks it, so a sweep of a million
//! numbers stalls every worker that touches a number in that shard. Here
//! there are no shard locks at all:
//!
//! - **Layout.** Open addressing with linear probing over two flat arrays
//!   sized once at start-up: one key word per slot (probing reads only
//!   these, eight to a cache line) and `V::WORDS` value words per slot.
//!   Capacity is the cap plus a quarter, so probe runs stay short.
//! - **The key word** holds the key (bits 0..56), a 7-bit sequence number
//!   (bits 56..63) bumped on every release, and an *owned* bit (63).
//! - **Workers** take an entry with one compare-and-swap that sets the
//!   owned bit, read and write its value words, and release it with one
//!   store that clears the bit and bumps the sequence. Two workers on the
//!   same number at once: the second retries a bounded number of times
//!   (spinning, never sleeping) and then gives up; the caller scores that
//!   call without behaviour state and counts it.
//! - **Sweeps never own an entry.** A sweep reads the key word, then the
//!   value words, decides, and evicts with a compare-and-swap from the key
//!   word it read to a tombstone. Any worker that took the entry in
//!   between changed that word (owned bit set, or sequence bumped on
//!   release), so the swap fails and the entry stays. A worker is never
//!   made to wait by a sweep.
//! - **Exports take only what has news.** [`Table::take_news`] walks like
//!   a sweep but reads only the words a value keeps its unexported counts
//!   in ([`Packed::NEWS`]); an entry with news is taken like a worker
//!   takes one, with a single compare-and-swap from the word just read,
//!   never retried (an entry a worker holds is left for the next export),
//!   and given back with a bumped sequence. A worker that meets it retries
//!   as it would for another worker.
//! - **Counting** is one atomic counter, changed on insert and removal.
//!
//! Known edge: two workers inserting the same new key at the same instant,
//! racing with a tombstone cleanup, can leave a second copy further along
//! the probe run. Lookups find the first; the second idles out at the
//! next sweeps. It costs one slot for a while, never a wrong count.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bits of a key word that hold the key.
pub const KEY_BITS: u32 = 56;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;
const SEQ_ONE: u64 = 1 << KEY_BITS;
const SEQ_MASK: u64 = 0x7f << KEY_BITS;
const OWNED: u64 = 1 << 63;
const EMPTY: u64 = 0;
/// A removed entry: probing goes on past it; inserts may reuse it.
const TOMB: u64 = KEY_MASK;
/// Longest probe run looked at before the table counts as full.
const MAX_PROBE: usize = 128;
/// Compare-and-swap attempts on an entry another worker holds.
const SPINS: u32 = 256;
/// Most value words a type may use.
pub const MAX_WORDS: usize = 20;

/// A value stored as `WORDS` 64-bit words.
pub trait Packed: Copy + Default {
    /// How many words one value takes (at most [`MAX_WORDS`]).
    const WORDS: usize;
    /// The words that say whether the value has news for other nodes
    /// (counts not yet exported): [`Table::take_news`] reads only these
    /// to decide whether to take an entry. Empty: never any news.
    const NEWS: std::ops::Range<usize> = 0..0;
    /// Whether the words of [`NEWS`](Self::NEWS), in order, hold news.
    fn news_in(news: &[u64]) -> bool {
        let _ = news;
        false
    }
    /// Rebuilds a value from its words.
    fn unpack(w: &[u64]) -> Self;
    /// Writes the value into its words.
    fn pack(&self, w: &mut [u64]);
}

/// Why an update did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The key is new and the table holds its cap (or the probe run is full).
    Full,
    /// Another worker held the entry through every retry.
    Contended,
}

/// Turns any 64-bit value into a usable key: 56 bits, never the empty or
/// tombstone marker.
pub fn key_of(x: u64) -> u64 {
    let k = x & KEY_MASK;
    if k == EMPTY || k == TOMB {
        1
    } else {
        k
    }
}

/// The map. See the module docs for the protocol.
pub struct Table<V: Packed> {
    keys: Box<[AtomicU64]>,
    words: Box<[AtomicU64]>,
    len: AtomicUsize,
    cap: usize,
    _v: std::marker::PhantomData<V>,
}

/// An entry a worker owns: its slot and the key word to release it to.
#[derive(Clone, Copy)]
struct Owned {
    slot: usize,
    word: u64,
}

/// An entry taken with a compare-and-swap, given back when dropped: a
/// closure that panics while it runs on the entry (a bug, caught by the
/// handler) leaves the entry as it was, not owned for ever. A new entry
/// whose first closure panicked becomes a tombstone.
struct Taken<'t, V: Packed> {
    table: &'t Table<V>,
    o: Owned,
    new: bool,
}

impl<V: Packed> Drop for Taken<'_, V> {
    fn drop(&mut self) {
        if self.new {
            self.table.keys[self.o.slot].store(TOMB, Ordering::Release);
            self.table.len.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.table.release(self.o);
        }
    }
}

impl<V: Packed> Taken<'_, V> {
    /// Writes `v` and releases the entry.
    fn finish(self, v: &V) {
        self.table.write(self.o.slot, v);
        self.table.release(self.o);
        std::mem::forget(self);
    }
}

impl<V: Packed> Table<V> {
    /// A table for at most `cap` entries.
    pub fn new(cap: usize) -> Table<V> {
        assert!(V::WORDS <= MAX_WORDS, "value too wide for the table");
        assert!(V::NEWS.end <= V::WORDS, "news words outside the value");
        let cap = cap.max(1);
        let slots = cap + cap / 4 + MAX_PROBE;
        Table {
            keys: (0..slots).map(|_| AtomicU64::new(EMPTY)).collect(),
            words: (0..slots * V::WORDS).map(|_| AtomicU64::new(0)).collect(),
            len: AtomicUsize::new(0),
            cap,
            _v: std::marker::PhantomData,
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries it will hold.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes the table holds, allocated once at start-up.
    pub fn heap_bytes(&self) -> usize {
        (self.keys.len() + self.words.len()) * 8
    }

    fn home(&self, key: u64) -> usize {
        // Multiply-shift spreads nearby numbers; the product's high half
        // maps the hash onto the slot range without a division.
        let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((u128::from(h) * (self.keys.len() - MAX_PROBE) as u128) >> 64) as usize
    }

    fn read(&self, slot: usize) -> V {
        let mut w = [0u64; MAX_WORDS];
        let base = slot * V::WORDS;
        for (i, x) in w[..V::WORDS].iter_mut().enumerate() {
            *x = self.words[base + i].load(Ordering::Relaxed);
        }
        V::unpack(&w[..V::WORDS])
    }

    fn write(&self, slot: usize, v: &V) {
        let mut w = [0u64; MAX_WORDS];
        v.pack(&mut w[..V::WORDS]);
        let base = slot * V::WORDS;
        for (i, x) in w[..V::WORDS].iter().enumerate() {
            self.words[base + i].store(*x, Ordering::Relaxed);
        }
    }

    fn release(&self, o: Owned) {
        let seq = (o.word & SEQ_MASK).wrapping_add(SEQ_ONE) & SEQ_MASK;
        let next = (o.word & KEY_MASK) | seq;
        self.keys[o.slot].store(next, Ordering::Release);
    }

    /// Finds `key` and takes it. `Ok(None)`: not present, with the first
    /// free slot of its probe run (if any) to insert into.
    fn find_owned(&self, key: u64) -> Result<Result<Owned, Option<usize>>, Miss> {
        'again: for _ in 0..SPINS {
            let home = self.home(key);
            let mut free = None;
            for slot in home..home + MAX_PROBE {
                let w = self.keys[slot].load(Ordering::Acquire);
                let k = w & KEY_MASK;
                if k == key {
                    if w & OWNED != 0 {
                        std::hint::spin_loop();
                        continue 'again;
                    }
                    if self.keys[slot]
                        .compare_exchange(w, w | OWNED, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Ok(Ok(Owned {
                            slot,
                            word: w | OWNED,
                        }));
                    }
                    continue 'again;
                }
                if w == EMPTY {
                    return Ok(Err(free.or(Some(slot))));
                }
                if w == TOMB && free.is_none() {
                    free = Some(slot);
                }
            }
            return Ok(Err(free));
        }
        Err(Miss::Contended)
    }

    /// Runs `f` on the value of `key`, creating it (from `V::default()`) if
    /// it is new and there is room.
    pub fn upsert<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Result<R, Miss> {
        debug_assert!(key != EMPTY && key != TOMB && key <= KEY_MASK);
        for _ in 0..SPINS {
            match self.find_owned(key)? {
                Ok(o) => {
                    let taken = Taken {
                        table: self,
                        o,
                        new: false,
                    };
                    let mut v = self.read(o.slot);
                    let r = f(&mut v);
                    taken.finish(&v);
                    return Ok(r);
                }
                Err(None) => return Err(Miss::Full),
                Err(Some(slot)) => {
                    if self.len.fetch_add(1, Ordering::Relaxed) >= self.cap {
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        return Err(Miss::Full);
                    }
                    let seen = self.keys[slot].load(Ordering::Relaxed);
                    if (seen == EMPTY || seen == TOMB)
                        && self.keys[slot]
                            .compare_exchange(
                                seen,
                                key | OWNED,
                                Ordering::Acquire,
                                Ordering::Relaxed,
                            )
                            .is_ok()
                    {
                        let taken = Taken {
                            table: self,
                            o: Owned {
                                slot,
                                word: key | OWNED,
                            },
                            new: true,
                        };
                        let mut v = V::default();
                        let r = f(&mut v);
                        taken.finish(&v);
                        return Ok(r);
                    }
                    // Someone took the slot first (maybe with this key):
                    // look again.
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        Err(Miss::Contended)
    }

    /// Runs `f` on the value of `key` if it is present.
    pub fn update<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        match self.find_owned(key) {
            Ok(Ok(o)) => {
                let taken = Taken {
                    table: self,
                    o,
                    new: false,
                };
                let mut v = self.read(o.slot);
                let r = f(&mut v);
                taken.finish(&v);
                Some(r)
            }
            _ => None,
        }
    }

    /// Removes `key` if `pred` says so, and returns its value.
    pub fn remove_if(&self, key: u64, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        let Ok(Ok(o)) = self.find_owned(key) else {
            return None;
        };
        let taken = Taken {
            table: self,
            o,
            new: false,
        };
        let v = self.read(o.slot);
        if pred(&v) {
            std::mem::forget(taken);
            self.keys[o.slot].store(TOMB, Ordering::Release);
            self.len.fetch_sub(1, Ordering::Relaxed);
            Some(v)
        } else {
            drop(taken);
            None
        }
    }

    /// A copy of the value of `key`, if present.
    pub fn get(&self, key: u64) -> Option<V> {
        self.update(key, |v| *v)
    }

    /// Calls `f` with every entry's value as last released. Values a
    /// worker is changing right now are skipped. Never takes an entry.
    pub fn for_each(&self, mut f: impl FnMut(&V)) {
        for slot in 0..self.keys.len() {
            let w = self.keys[slot].load(Ordering::Acquire);
            if w == EMPTY || w == TOMB || w & OWNED != 0 {
                continue;
            }
            let v = self.read(slot);
            if self.keys[slot].load(Ordering::Acquire) == w {
                f(&v);
            }
        }
    }

    /// Calls `f` with the key and value of every entry whose news words
    /// say it has news ([`Packed::NEWS`]), and keeps what `f` leaves. An
    /// entry is taken the way a worker takes one, with one
    /// compare-and-swap from the key word just read, and given back with
    /// a bumped sequence; it is tried once: an entry a worker holds, or
    /// changed since it was read, is left for the next call (its news
    /// stays). An entry without news costs a read of its news words, no
    /// compare-and-swap. Off the call path; a worker that meets an entry
    /// held here retries as it would for another worker. Returns how many
    /// entries `f` saw.
    pub fn take_news(&self, mut f: impl FnMut(u64, &mut V)) -> usize {
        let news = V::NEWS;
        let n = news.len();
        if n == 0 {
            return 0;
        }
        let mut buf = [0u64; MAX_WORDS];
        let mut seen = 0;
        for slot in 0..self.keys.len() {
            let w = self.keys[slot].load(Ordering::Acquire);
            if w == EMPTY || w == TOMB || w & OWNED != 0 {
                continue;
            }
            let base = slot * V::WORDS + news.start;
            for (i, x) in buf[..n].iter_mut().enumerate() {
                *x = self.words[base + i].load(Ordering::Relaxed);
            }
            if !V::news_in(&buf[..n]) {
                continue;
            }
            if self.keys[slot]
                .compare_exchange(w, w | OWNED, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let taken = Taken {
                table: self,
                o: Owned {
                    slot,
                    word: w | OWNED,
                },
                new: false,
            };
            let mut v = self.read(slot);
            f(w & KEY_MASK, &mut v);
            taken.finish(&v);
            seen += 1;
        }
        seen
    }

    /// Removes every entry `keep` refuses, calling `removed` with each
    /// removed value, then turns tombstones at the end of probe runs back
    /// into free slots. Never takes an entry (see the module docs); an
    /// entry a worker touches meanwhile simply stays. Returns how many
    /// were removed.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool, mut removed: impl FnMut(&V)) -> usize {
        let mut n = 0;
        for slot in 0..self.keys.len() {
            let w = self.keys[slot].load(Ordering::Acquire);
            if w == EMPTY || w == TOMB || w & OWNED != 0 {
                continue;
            }
            let v = self.read(slot);
            if keep(&v) {
                continue;
            }
            if self.keys[slot]
                .compare_exchange(w, TOMB, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.len.fetch_sub(1, Ordering::Relaxed);
                removed(&v);
                n += 1;
            }
        }
        // A tombstone followed by a free slot (or the end of the array:
        // probe runs never wrap) ends no probe run that holds a live key, so
        // it can be freed too; walk back from each free slot.
        let len = self.keys.len();
        for end in (1..=len).rev() {
            if end < len && self.keys[end].load(Ordering::Relaxed) != EMPTY {
                continue;
            }
            let mut j = end;
            while j > 0
                && self.keys[j - 1]
                    .compare_exchange(TOMB, EMPTY, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                j -= 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Regression: a panic inside a closure run on an entry left the
    /// entry owned for ever: every later call from that number spun, then
    /// was scored without state. The entry is given back as it was (a new
    /// one is dropped), and the next update finds it.
    #[test]
    fn a_panic_inside_a_state_update_does_not_poison_the_entry() {
        let t: Table<Pair> = Table::new(16);
        t.upsert(7, |v| v.0 = 1).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.upsert(7, |v| {
                v.0 = 99;
                panic!("a bug in a rule");
            })
        }));
        let new = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.upsert(8, |_| panic!("a bug on a new number"))
        }));
        assert!(r.is_err() && new.is_err());
        assert_eq!(t.get(7), Some(Pair(1, 0)), "given back as it was");
        assert_eq!(t.upsert(7, |v| v.0 += 1), Ok(()));
        assert_eq!(t.get(7), Some(Pair(2, 0)));
        assert_eq!(t.get(8), None, "the new entry was dropped");
        assert_eq!(t.len(), 1);
        assert_eq!(t.upsert(8, |v| v.1 = 5), Ok(()));
    }

    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    struct Pair(u64, u64);

    impl Packed for Pair {
        const WORDS: usize = 2;
        fn unpack(w: &[u64]) -> Self {
            Pair(w[0], w[1])
        }
        fn pack(&self, w: &mut [u64]) {
            w[0] = self.0;
            w[1] = self.1;
        }
    }

    /// A value whose second word is news.
    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    struct Newsy(u64, u64);

    impl Packed for Newsy {
        const WORDS: usize = 2;
        const NEWS: std::ops::Range<usize> = 1..2;
        fn news_in(w: &[u64]) -> bool {
            w == [1]
        }
        fn unpack(w: &[u64]) -> Self {
            Newsy(w[0], w[1])
        }
        fn pack(&self, w: &mut [u64]) {
            w[0] = self.0;
            w[1] = self.1;
        }
    }

    /// An export takes only entries with news, passes by one a worker
    /// holds (it never waits), and finds it the next time.
    #[test]
    fn take_news_takes_only_news_and_leaves_a_held_entry_for_next_time() {
        let t: Table<Newsy> = Table::new(16);
        t.upsert(7, |v| v.1 = 1).unwrap();
        t.upsert(8, |v| v.0 = 5).unwrap();
        let mut seen = Vec::new();
        t.upsert(7, |v| {
            v.0 = 9;
            assert_eq!(t.take_news(|k, _| seen.push(k)), 0, "held: passed by");
        })
        .unwrap();
        assert!(seen.is_empty());
        let n = t.take_news(|k, v| {
            seen.push(k);
            v.1 = 0;
        });
        assert_eq!((n, seen.as_slice()), (1, [7].as_slice()));
        assert_eq!(t.get(7), Some(Newsy(9, 0)), "what the export left");
        assert_eq!(t.take_news(|_, _| panic!("no news left")), 0);
        // The entry was given back: a worker takes it at once.
        assert_eq!(t.upsert(7, |v| v.0), Ok(9));
    }

    #[test]
    fn insert_update_remove_and_count() {
        let t: Table<Pair> = Table::new(100);
        for k in 1..=100u64 {
            assert_eq!(t.upsert(k, |v| v.0 += k), Ok(()));
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.upsert(1000, |_| ()), Err(Miss::Full), "full at the cap");
        assert_eq!(t.upsert(7, |v| v.0), Ok(7), "a known key still updates");
        assert_eq!(t.get(7), Some(Pair(7, 0)));
        assert_eq!(t.remove_if(7, |v| v.0 == 8), None);
        assert_eq!(t.remove_if(7, |v| v.0 == 7), Some(Pair(7, 0)));
        assert_eq!(t.get(7), None);
        assert_eq!(t.len(), 99);
        assert_eq!(t.upsert(1000, |v| v.1 = 5), Ok(()), "room again");
        assert_eq!(t.update(12345, |_| ()), None, "update never inserts");
    }

    #[test]
    fn retain_removes_what_it_refuses_and_frees_the_tombstones() {
        let t: Table<Pair> = Table::new(1000);
        for k in 1..=1000u64 {
            t.upsert(k, |v| v.0 = k).unwrap();
        }
        let mut gone = Vec::new();
        let n = t.retain(|v| v.0 % 2 == 0, |v| gone.push(v.0));
        assert_eq!((n, gone.len(), t.len()), (500, 500, 500));
        assert!(gone.iter().all(|k| k % 2 == 1));
        for k in 1..=1000u64 {
            assert_eq!(t.get(k).is_some(), k % 2 == 0, "{k}");
        }
        t.retain(|_| false, |_| ());
        assert_eq!(t.len(), 0);
        assert!(
            t.keys.iter().all(|k| k.load(Ordering::Relaxed) == EMPTY),
            "every tombstone was freed"
        );
    }

    /// Regression for the locks a sweep used to hold: a worker updating
    /// its own numbers while sweeps run back to back never has to retry,
    /// because a sweep never owns an entry.
    #[test]
    fn a_sweep_never_makes_a_worker_retry() {
        let t: Arc<Table<Pair>> = Arc::new(Table::new(100_000));
        for k in 1..=50_000u64 {
            t.upsert(k, |v| v.0 = 1).unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sweeper = {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Keeps everything: walks every entry, evicts nothing.
                    t.retain(|_| true, |_| ());
                    n += 1;
                }
                n
            })
        };
        let mut updates = 0u64;
        for round in 0..20 {
            for k in 1..=50_000u64 {
                assert_eq!(t.upsert(k, |v| v.1 += 1), Ok(()), "round {round} key {k}");
                updates += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(sweeper.join().unwrap() > 0, "the sweeps ran meanwhile");
        assert_eq!(updates, 1_000_000);
        assert_eq!(t.get(777).unwrap().1, 20);
    }

    /// Workers hammer a few hot keys and many cold ones while a sweep
    /// evicts the cold ones over and over: every update to a hot key is
    /// counted exactly once, and no worker ever waited on the sweep.
    #[test]
    fn concurrent_updates_are_never_lost_while_sweeps_run() {
        let t: Arc<Table<Pair>> = Arc::new(Table::new(10_000));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The workers begin once the sweeper has swept: on a loaded
        // machine it could otherwise first run after they are done.
        let sweeping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let per_thread = 200_000u64;
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (t, sweeping) = (t.clone(), sweeping.clone());
                std::thread::spawn(move || {
                    while !sweeping.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                    let mut contended = 0u64;
                    for i in 0..per_thread {
                        let hot = 1 + (i % 4);
                        loop {
                            match t.upsert(hot, |v| v.0 += 1) {
                                Ok(()) => break,
                                Err(Miss::Contended) => contended += 1,
                                Err(Miss::Full) => panic!("hot key refused"),
                            }
                        }
                        // Cold keys: inserted once, then swept.
                        let _ = t.upsert(100 + (w * per_thread + i) % 5000, |v| v.1 = 1);
                    }
                    contended
                })
            })
            .collect();
        let sweeper = {
            let (t, stop, sweeping) = (t.clone(), stop.clone(), sweeping.clone());
            std::thread::spawn(move || {
                let mut sweeps = 0;
                while !stop.load(Ordering::Relaxed) {
                    t.retain(|v| v.1 == 0, |_| ());
                    sweeps += 1;
                    sweeping.store(true, Ordering::Release);
                }
                sweeps
            })
        };
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(sweeper.join().unwrap() > 0);
        let total: u64 = (1..=4).map(|k| t.get(k).unwrap().0).sum();
        assert_eq!(total, 2 * per_thread, "no hot update lost or doubled");
        assert!(t.len() <= 10_000);
    }
}
