//! Counts that travel between nodes: what [`State::export`] hands over
//! and [`State::merge`] takes in.
//!
//! Every counter keeps, beside its count, this node's own share of it not
//! yet exported. An export walks the trackers like a sweep does, takes
//! each entry that has such news the way a worker takes one (one
//! compare-and-swap, tried once: an entry a worker holds right now waits
//! for the next export), copies the news into a [`Delta`] and clears it.
//! An entry without news costs a read of its last words and no
//! compare-and-swap. A merge takes each entry a delta names the same way
//! (creating it only while its tracker is below 90% of the cap) and adds
//! the counts into the buckets they are labelled with. Merged counts are
//! never marked as news, so nothing echoes back, and exporting twice with
//! no traffic in between gives an empty delta the second time. Neither
//! adds anything to the call path: a worker that meets an entry an export
//! or merge holds (a few dozen nanoseconds) retries as it would for
//! another worker.
//!
//! A delta is plain data, versioned ([`DELTA_VERSION`]), and made to be
//! encoded as it stands (fixed-width integers, the only variable parts
//! being the three lists): per number, its table key ([`state_key`]
//! folds a number the same way on every node), when it was last seen, and
//! per counter the window length, the start of the bucket the counts
//! belong to and the counts. Nodes add what they receive: a G-counter per
//! bucket.
//!
//! What merges, and how:
//! - **Velocity windows, premium-destination counts, escalation counts**:
//!   exactly, by adding per bucket (the current and the previous one; an
//!   older bucket no longer counts and is dropped). Velocity windows are
//!   matched by window length, not slot, so rule files that order their
//!   velocity rules differently still agree; a length this node does not
//!   count over is dropped.
//! - **Fan-out (distinct callees)**: exactly as a sketch: the bitmaps of
//!   one bucket are OR-ed, which is the bitmap one node fed every call
//!   would hold, so the estimate is the same (with its own error). An
//!   export sends the whole bitmap when it gained a bit.
//! - **Callbacks** (callees calling the number back): added per fan-out
//!   bucket, but each node recognises a callback with the bitmap it has
//!   at that moment, which lacks the last push interval of the other
//!   nodes' bits: approximate, short by callbacks to callees called
//!   elsewhere in that interval.
//! - **Outcomes** (rings, short rings, answered, short answered): added
//!   per outcome bucket, exactly; a node records an outcome only for a
//!   number it has state for, merged state included.
//! - **Local only**: the sequential-dialling run (it needs every B-number
//!   in order, which no sum of counts gives) and calls in progress (a
//!   call is in progress on the node that saw it start; summing starts
//!   and ends that cross between nodes would leave counts that never
//!   return to zero). Each node judges these on its own traffic.
//!
//! The counts of a tumbling bucket (fan-out, outcomes) that ended before
//! an export are dropped with it: other nodes have moved on too. Counts
//! of a sliding window's previous bucket are still exported. A delta
//! carries at most 65535 of a counter's counts per bucket (32767
//! callbacks); an export every few hundred milliseconds never comes near.

use super::*;

/// The delta format this build writes and reads.
pub const DELTA_VERSION: u16 = 1;

/// The window lengths a rule set counts over (seconds; 0: not counted):
/// what an export labels counts with and a merge places them by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    /// The velocity windows, by slot.
    pub velocity: [u32; VELOCITY_SLOTS],
    /// The fan-out window.
    pub fan_out: u32,
    /// The outcome window.
    pub outcomes: u32,
}

/// Counts of a sliding window: `cur` in the bucket `[start, start + len)`
/// and `prev` in the bucket before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    /// The window's length, seconds.
    pub len: u32,
    /// The start of the later bucket, Unix seconds (a multiple of `len`).
    pub start: u32,
    /// Count in the bucket before `start`.
    pub prev: u16,
    /// Count in the bucket at `start`.
    pub cur: u16,
}

/// A number's fan-out bucket: the callees' bitmap and the callbacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanOutDelta {
    /// The window's length, seconds.
    pub len: u32,
    /// The bucket's start, Unix seconds.
    pub start: u32,
    /// The callees' bitmap (OR-ed into the receiver's).
    pub bits: [u64; FANOUT_BITS / 64],
    /// Callbacks counted since the last export.
    pub callbacks: u16,
}

/// A number's outcomes since the last export, in one outcome bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeDelta {
    /// The window's length, seconds.
    pub len: u32,
    /// The bucket's start, Unix seconds.
    pub start: u32,
    /// Rings, short rings, answered, short answered.
    pub counts: [u16; 4],
}

/// One caller's counts since the last export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallerDelta {
    /// The number's table key ([`state_key`]).
    pub key: u64,
    /// When the number last called, Unix seconds.
    pub last_seen: u32,
    /// Velocity windows, one per distinct length (`len` 0: none).
    pub velocity: [Buckets; VELOCITY_SLOTS],
    /// The fan-out bucket, when it gained a callee or a callback.
    pub fan_out: Option<FanOutDelta>,
    /// Outcomes, when there were any.
    pub outcomes: Option<OutcomeDelta>,
}

/// One count's news: a premium destination's calls, or a caller's
/// firings of one escalating rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountDelta {
    /// The table key (the destination's, or the caller and rule's).
    pub key: u64,
    /// When it was last counted, Unix seconds.
    pub last_seen: u32,
    /// The counts, with the window's length.
    pub window: Buckets,
}

/// Everything a node counted since its last export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// [`DELTA_VERSION`] when written.
    pub version: u16,
    /// The exporting node's clock at the export, Unix seconds.
    pub at: u32,
    /// Per caller.
    pub callers: Vec<CallerDelta>,
    /// Per premium destination.
    pub destinations: Vec<CountDelta>,
    /// Per caller and escalating rule.
    pub escalations: Vec<CountDelta>,
}

impl Delta {
    /// True when there is nothing to hand over.
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty() && self.destinations.is_empty() && self.escalations.is_empty()
    }
}

/// Why a delta was refused whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// Written by a build with another format.
    #[error("behaviour delta version {0}; this node reads version {DELTA_VERSION}")]
    Version(u16),
    /// Bytes that are not a delta ([`Delta::decode`]).
    #[error("not a behaviour delta: {0}")]
    Malformed(&'static str),
}

/// What a merge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Entries that took at least one count.
    pub applied: usize,
    /// Of those, entries created here.
    pub created: usize,
    /// Entries not merged: no room (the tracker at 90% of its cap), held
    /// by a worker through every retry, or an invalid key.
    pub skipped: usize,
    /// Entries with nothing that counts here: buckets too old, or window
    /// lengths this node does not count over.
    pub stale: usize,
}

/// A key a delta may name: what [`table::key_of`] can produce.
fn valid_key(key: u64) -> bool {
    table::key_of(key) == key
}

impl CallerState {
    /// Takes this node's news as a delta for `key`, labelled with the
    /// rule set's window lengths, and clears it.
    fn take_news(&mut self, key: u64, w: &Windows) -> Option<CallerDelta> {
        let mut d = CallerDelta {
            key,
            last_seen: self.last_seen,
            ..CallerDelta::default()
        };
        let mut any = false;
        for (i, (win, &len)) in self.velocity.iter_mut().zip(&w.velocity).enumerate() {
            // A slot whose length an earlier slot has counts the same calls.
            let repeat = w.velocity.get(..i).is_some_and(|e| e.contains(&len));
            match win.take(len) {
                Some(b) if !repeat => {
                    if let Some(slot) = d.velocity.get_mut(i) {
                        *slot = b;
                        any = true;
                    }
                }
                _ => {}
            }
        }
        if self.fanout_news || self.out_callbacks != 0 {
            let len = w.fan_out;
            if len > 0 && self.fanout_start.is_multiple_of(len) {
                d.fan_out = Some(FanOutDelta {
                    len,
                    start: self.fanout_start,
                    bits: self.fanout_bits,
                    callbacks: self.out_callbacks,
                });
                any = true;
            }
            self.fanout_news = false;
            self.out_callbacks = 0;
        }
        if self.out_outcomes != [0; 4] {
            let len = w.outcomes;
            if len > 0 && self.outcome_start.is_multiple_of(len) {
                d.outcomes = Some(OutcomeDelta {
                    len,
                    start: self.outcome_start,
                    counts: self.out_outcomes,
                });
                any = true;
            }
            self.out_outcomes = [0; 4];
        }
        any.then_some(d)
    }

    /// Adds another node's counts; returns whether any counted here.
    fn merge(&mut self, d: &CallerDelta, w: &Windows, at: u32) -> bool {
        self.last_seen = self.last_seen.max(d.last_seen.min(at));
        let mut counted = false;
        for (i, b) in d.velocity.iter().enumerate() {
            let repeat = d
                .velocity
                .get(..i)
                .is_some_and(|e| e.iter().any(|x| x.len == b.len));
            if b.len == 0 || repeat {
                continue;
            }
            for (win, &len) in self.velocity.iter_mut().zip(&w.velocity) {
                if len == b.len {
                    if let Some(p) = b.start.checked_sub(len) {
                        counted |= win.merge(p, len, b.prev);
                    }
                    counted |= win.merge(b.start, len, b.cur);
                }
            }
        }
        if let Some(f) = &d.fan_out {
            if f.len > 0 && f.len == w.fan_out && f.start.is_multiple_of(f.len) {
                if f.start > self.fanout_start {
                    self.fanout_start = f.start;
                    self.fanout_bits = [0; FANOUT_BITS / 64];
                    self.callbacks = 0;
                    self.out_callbacks = 0;
                    self.fanout_news = false;
                }
                if f.start == self.fanout_start {
                    for (mine, theirs) in self.fanout_bits.iter_mut().zip(&f.bits) {
                        *mine |= theirs;
                    }
                    self.callbacks = self.callbacks.saturating_add(f.callbacks);
                    counted = true;
                }
            }
        }
        if let Some(o) = &d.outcomes {
            if o.len > 0 && o.len == w.outcomes && o.start.is_multiple_of(o.len) {
                if o.start > self.outcome_start {
                    self.outcome_start = o.start;
                    self.outcomes = [0; 4];
                    self.out_outcomes = [0; 4];
                }
                if o.start == self.outcome_start {
                    for (mine, theirs) in self.outcomes.iter_mut().zip(&o.counts) {
                        *mine = mine.saturating_add(*theirs);
                    }
                    counted = true;
                }
            }
        }
        counted
    }
}

impl Count {
    fn take_news(&mut self, key: u64) -> Option<CountDelta> {
        let window = self.window.take(self.len)?;
        Some(CountDelta {
            key,
            last_seen: self.last_seen,
            window,
        })
    }

    fn merge(&mut self, d: &CountDelta, at: u32) -> bool {
        let b = &d.window;
        if b.len == 0 {
            return false;
        }
        if self.len == 0 {
            self.len = b.len;
        }
        if self.len != b.len {
            // The rule counts over another window here (a different rule
            // file): nothing to add to.
            return false;
        }
        self.last_seen = self.last_seen.max(d.last_seen.min(at));
        let mut counted = false;
        if let Some(p) = b.start.checked_sub(b.len) {
            counted |= self.window.merge(p, b.len, b.prev);
        }
        counted | self.window.merge(b.start, b.len, b.cur)
    }
}

impl<V: Aged + PartialEq> Tracker<V> {
    /// Runs `f` on the entry with table key `key` for a merge: an entry
    /// that is not there is created only below 90% of the cap, so other
    /// nodes' numbers never crowd out this node's own. `None`: not merged
    /// (no room, or held by a worker through every retry). The flag says
    /// whether the entry was created (a new entry starts as
    /// `V::default()`; one that exists has at least been seen).
    fn merge_entry<R>(&self, key: u64, f: impl FnOnce(&mut V, bool) -> R) -> Option<R> {
        if self.table.len() * 10 < self.table.cap() * 9 {
            self.table
                .upsert(key, |v| {
                    let created = *v == V::default();
                    f(v, created)
                })
                .ok()
        } else {
            self.table.update(key, |v| f(v, false))
        }
    }
}

/// Counts one merged entry.
fn tally(m: &mut Merged, r: Option<(bool, bool)>) {
    match r {
        None => m.skipped += 1,
        Some((true, created)) => {
            m.applied += 1;
            m.created += usize::from(created);
        }
        Some((false, _)) => m.stale += 1,
    }
}

impl State {
    /// This node's counts since the last export, labelled with the window
    /// lengths `w` of the rule set in force, as of `now` (Unix seconds).
    /// Off the call path: it walks every tracker like a sweep, and takes
    /// only entries with news, each with one compare-and-swap tried once
    /// (see the module docs).
    pub fn export(&self, now: u32, w: &Windows) -> Delta {
        let mut d = Delta {
            version: DELTA_VERSION,
            at: now,
            ..Delta::default()
        };
        self.callers.table.take_news(|key, s| {
            if let Some(c) = s.take_news(key, w) {
                d.callers.push(c);
            }
        });
        for (t, out) in [
            (&self.destinations, &mut d.destinations),
            (&self.escalations, &mut d.escalations),
        ] {
            t.table.take_news(|key, c| {
                if let Some(x) = c.take_news(key) {
                    out.push(x);
                }
            });
        }
        d
    }

    /// Adds another node's delta to this state, placing its counts by the
    /// window lengths `w` of the rule set in force. Off the call path.
    /// Merged counts are not exported again.
    pub fn merge(&self, d: &Delta, w: &Windows) -> Result<Merged, DeltaError> {
        if d.version != DELTA_VERSION {
            return Err(DeltaError::Version(d.version));
        }
        let mut m = Merged::default();
        for c in &d.callers {
            let r = valid_key(c.key)
                .then(|| {
                    self.callers
                        .merge_entry(c.key, |s, created| (s.merge(c, w, d.at), created))
                })
                .flatten();
            tally(&mut m, r);
        }
        for (t, list) in [
            (&self.destinations, &d.destinations),
            (&self.escalations, &d.escalations),
        ] {
            for c in list {
                let r = valid_key(c.key)
                    .then(|| t.merge_entry(c.key, |s, created| (s.merge(c, d.at), created)))
                    .flatten();
                tally(&mut m, r);
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u32 = 1_796_000_017;
    const MINUTE: u32 = NOW - NOW % 60;
    const HOUR: u32 = NOW - NOW % 3600;
    const W: Windows = Windows {
        velocity: [60, 3600, 0],
        fan_out: 3600,
        outcomes: 3600,
    };

    /// A call from `a` to `b` at `now`, as scoring records it.
    fn call(st: &State, a: u64, b: u64, now: u32) {
        st.callers.with(a, now, |s| {
            s.velocity[0].add(now, 60, 1);
            s.velocity[1].add(now, 3600, 1);
            s.fan_out(now, 3600, b);
            s.sequential(b);
        });
    }

    fn exchange(x: &State, y: &State, now: u32) {
        let (dx, dy) = (x.export(now, &W), y.export(now, &W));
        x.merge(&dy, &W).unwrap();
        y.merge(&dx, &W).unwrap();
    }

    #[test]
    fn an_export_hands_each_count_over_once_and_merged_counts_never_echo() {
        let (x, y) = (State::new(100, 86_400), State::new(100, 86_400));
        call(&x, 77011234567, 77020000001, NOW);
        call(&x, 77011234567, 77020000002, NOW + 1);
        let d = x.export(NOW + 1, &W);
        assert_eq!((d.version, d.at), (DELTA_VERSION, NOW + 1));
        assert_eq!(d.callers.len(), 1);
        let c = &d.callers[0];
        assert_eq!(c.key, state_key(77011234567));
        assert_eq!(c.last_seen, NOW + 1);
        assert_eq!(
            c.velocity,
            [
                Buckets {
                    len: 60,
                    start: MINUTE,
                    prev: 0,
                    cur: 2
                },
                Buckets {
                    len: 3600,
                    start: HOUR,
                    prev: 0,
                    cur: 2
                },
                Buckets::default()
            ]
        );
        let f = c.fan_out.unwrap();
        assert_eq!((f.len, f.start, f.callbacks), (3600, HOUR, 0));
        assert_eq!(f.bits.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
        assert_eq!(c.outcomes, None);
        // Nothing new: nothing to hand over, however often asked.
        assert!(x.export(NOW + 2, &W).is_empty());
        assert!(x.export(NOW + 3, &W).is_empty());
        // What y merges, it does not export again.
        assert_eq!(
            y.merge(&d, &W),
            Ok(Merged {
                applied: 1,
                created: 1,
                ..Merged::default()
            })
        );
        assert!(y.export(NOW + 3, &W).is_empty(), "no echo");
        // A new call is news again, and only it.
        call(&x, 77011234567, 77020000002, NOW + 4);
        let d2 = x.export(NOW + 4, &W);
        assert_eq!(d2.callers[0].velocity[0].cur, 1);
        assert_eq!(d2.callers[0].fan_out, None, "a callee already handed over");
        y.merge(&d2, &W).unwrap();
        let s = y.callers.get(77011234567).unwrap();
        assert_eq!(s.velocity[0].count(NOW + 4, 60), 3);
        assert_eq!(s.distinct_callees(), 2);
        assert_eq!(s.last_seen, NOW + 4);
    }

    /// A bucket that ended before the export is still handed over as the
    /// previous bucket, so a call in the last moment of a minute is not
    /// lost to the other nodes.
    #[test]
    fn counts_of_the_previous_bucket_not_yet_exported_are_still_handed_over() {
        let (x, y, all) = (
            State::new(100, 86_400),
            State::new(100, 86_400),
            State::new(100, 86_400),
        );
        let a = 77011234567;
        for (t, st) in [(MINUTE + 58, &x), (MINUTE + 59, &y), (MINUTE + 61, &x)] {
            call(st, a, 77020000001, t);
            call(&all, a, 77020000001, t);
        }
        let d = x.export(MINUTE + 61, &W);
        assert_eq!(
            d.callers[0].velocity[0],
            Buckets {
                len: 60,
                start: MINUTE + 60,
                prev: 1,
                cur: 1
            }
        );
        exchange(&x, &y, MINUTE + 61);
        y.merge(&d, &W).unwrap();
        let want = all.callers.get(a).unwrap().velocity[0].count(MINUTE + 75, 60);
        for st in [&x, &y] {
            assert_eq!(
                st.callers.get(a).unwrap().velocity[0].count(MINUTE + 75, 60),
                want
            );
        }
    }

    #[test]
    fn merged_counts_land_in_their_buckets_and_the_rest_is_dropped() {
        let st = State::new(100, 86_400);
        let key = state_key(77011234567);
        let caller = |velocity: [Buckets; VELOCITY_SLOTS]| CallerDelta {
            key,
            last_seen: NOW,
            velocity,
            ..CallerDelta::default()
        };
        let b = |len, start, prev, cur| Buckets {
            len,
            start,
            prev,
            cur,
        };
        let mut d = Delta {
            version: DELTA_VERSION,
            at: NOW,
            callers: vec![caller([
                b(60, MINUTE, 4, 5),
                b(3600, HOUR, 0, 9),
                b(0, 0, 0, 0),
            ])],
            ..Delta::default()
        };
        assert_eq!(st.merge(&d, &W).unwrap().applied, 1);
        let s = st.callers.get(77011234567).unwrap();
        assert_eq!((s.velocity[0].prev, s.velocity[0].cur), (4, 5));
        assert_eq!(s.velocity[1].count(NOW, 3600), 9);
        assert!(!s.has_news(), "merged counts are not news");
        // Too old (two minutes back), a length not counted here, a start
        // that is no bucket start: none of it counts.
        d.callers = vec![
            caller([b(60, MINUTE - 120, 1, 1), b(0, 0, 0, 0), b(0, 0, 0, 0)]),
            caller([b(90, MINUTE, 1, 1), b(0, 0, 0, 0), b(0, 0, 0, 0)]),
            caller([b(60, MINUTE + 1, 1, 1), b(0, 0, 0, 0), b(0, 0, 0, 0)]),
        ];
        assert_eq!(st.merge(&d, &W).unwrap().stale, 3);
        assert_eq!(st.callers.get(77011234567).unwrap(), s, "unchanged");
        // A later bucket moves the window on: the current becomes the
        // previous.
        d.callers = vec![caller([
            b(60, MINUTE + 60, 0, 2),
            b(0, 0, 0, 0),
            b(0, 0, 0, 0),
        ])];
        st.merge(&d, &W).unwrap();
        let s = st.callers.get(77011234567).unwrap();
        assert_eq!((s.velocity[0].prev, s.velocity[0].cur), (5, 2));
        // An invalid key is skipped, another version refused whole.
        d.callers = vec![CallerDelta {
            key: 0,
            ..d.callers[0]
        }];
        assert_eq!(st.merge(&d, &W).unwrap().skipped, 1);
        d.version = DELTA_VERSION + 1;
        assert_eq!(
            st.merge(&d, &W),
            Err(DeltaError::Version(DELTA_VERSION + 1))
        );
    }

    /// Other nodes' numbers never fill the tracker: a merge creates state
    /// only below 90% of the cap, and still updates numbers known here.
    #[test]
    fn a_merge_creates_state_only_below_ninety_percent_of_the_cap() {
        let (x, y) = (State::new(1000, 86_400), State::new(100, 86_400));
        for n in 0..200u64 {
            call(&x, 77011000000 + n, 77020000001, NOW);
        }
        call(&y, 77011000000, 77020000002, NOW);
        let m = y.merge(&x.export(NOW, &W), &W).unwrap();
        assert_eq!(y.callers.len(), 90);
        assert_eq!((m.applied, m.created, m.skipped), (90, 89, 110));
        let s = y.callers.get(77011000000).unwrap();
        assert_eq!(s.velocity[0].count(NOW, 60), 2);
        assert_eq!(s.distinct_callees(), 2);
    }

    /// Fan-out bitmaps merge by OR: after an exchange both nodes hold the
    /// bitmap one node fed every call holds, so the distinct count is the
    /// same; callbacks and outcomes add up per bucket.
    #[test]
    fn fan_out_bitmaps_merge_to_the_union_and_outcomes_add_up() {
        let (x, y, all) = (
            State::new(100, 86_400),
            State::new(100, 86_400),
            State::new(100, 86_400),
        );
        let a = 77011234567;
        for k in 0..300u64 {
            let b = 77020000000 + (k * 37) % 250; // repeats included
            let st = if k % 3 == 0 { &x } else { &y };
            call(st, a, b, NOW + k as u32);
            call(&all, a, b, NOW + k as u32);
        }
        let p = OutcomePolicy::default();
        for (st, ring_ms) in [(&x, 100), (&y, 200), (&y, 9000), (&all, 100), (&all, 200)] {
            st.callers
                .outcome(a, NOW + 300, Outcome::Cancelled { ring_ms }, &p);
        }
        all.callers
            .outcome(a, NOW + 300, Outcome::Cancelled { ring_ms: 9000 }, &p);
        for st in [&x, &y] {
            st.callers.update_existing(a, |s| s.called_back());
        }
        exchange(&x, &y, NOW + 301);
        let want = all.callers.get(a).unwrap();
        for st in [&x, &y] {
            let s = st.callers.get(a).unwrap();
            assert_eq!(s.fanout_bits, want.fanout_bits);
            assert_eq!(s.distinct_callees(), want.distinct_callees());
            assert_eq!(s.rings(), want.rings());
            assert_eq!(s.rings(), (3, 2));
            assert_eq!(s.callbacks, 2);
        }
        // A later fan-out bucket from elsewhere replaces an ended one.
        call(&x, a, 77029999999, HOUR + 3600);
        y.merge(&x.export(HOUR + 3600, &W), &W).unwrap();
        let s = y.callers.get(a).unwrap();
        assert_eq!((s.fanout_start, s.distinct_callees()), (HOUR + 3600, 1));
    }

    /// The dialling run and calls in progress are never exported: each
    /// node judges them on its own traffic.
    #[test]
    fn the_dialling_run_and_calls_in_progress_stay_local() {
        let (x, y) = (State::new(100, 86_400), State::new(100, 86_400));
        let a = 77011234567;
        call(&y, a, 77020000009, NOW);
        for k in 0..4 {
            call(&x, a, 77020000001 + k, NOW + k as u32);
        }
        x.callers.concurrent(a, NOW, 1, MAX_CALL_S);
        y.merge(&x.export(NOW + 4, &W), &W).unwrap();
        let mut s = y.callers.get(a).unwrap();
        assert_eq!(s.velocity[0].count(NOW + 4, 60), 5);
        assert_eq!(s.sequential(77020000010), 2, "y's own run, not x's");
        assert_eq!(s.concurrent_now(NOW + 4, MAX_CALL_S), 0);
    }

    /// Escalation and premium-destination counts carry their window's
    /// length and merge like velocity windows.
    #[test]
    fn counts_carry_their_length_and_merge_per_bucket() {
        let (x, y) = (State::new(100, 86_400), State::new(100, 86_400));
        let at = NOW - NOW % 600;
        x.escalations.with(42, at + 1, |c| c.add(at + 1, 600, 1));
        x.escalations.with(42, at + 2, |c| c.add(at + 2, 600, 1));
        y.escalations.with(42, at + 3, |c| c.add(at + 3, 600, 1));
        x.destinations.with(7, at + 3, |c| c.add(at + 3, 60, 1));
        let d = x.export(at + 3, &W);
        assert_eq!(
            d.escalations,
            [CountDelta {
                key: state_key(42),
                last_seen: at + 2,
                window: Buckets {
                    len: 600,
                    start: at,
                    prev: 0,
                    cur: 2
                }
            }]
        );
        assert_eq!(d.destinations.len(), 1);
        y.merge(&d, &W).unwrap();
        let c = y.escalations.get(42).unwrap();
        assert_eq!((c.len, c.window.count(at + 4, 600)), (600, 3));
        assert_eq!(y.destinations.get(7).unwrap().window.count(at + 4, 60), 1);
        // A count kept over another length here takes nothing.
        let mut other = d.clone();
        other.escalations[0].window.len = 300;
        other.escalations[0].window.start = at;
        assert_eq!(y.merge(&other, &W).unwrap().stale, 1);
        assert_eq!(y.escalations.get(42).unwrap().window.count(at + 4, 600), 3);
    }
}
