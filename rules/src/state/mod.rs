//! Per-number behaviour state: sliding windows, distinct callees, dialling
//! runs, call outcomes, concurrent calls.
//!
//! One [`CallerState`] (80 bytes, ten words) per tracked A-number, in a
//! [`Tracker`]: a fixed-capacity [`table::Table`] sized up front for its cap,
//! which workers update without locks and sweeps evict without ever making
//! a worker wait. Time comes from the caller as whole seconds
//! ([`CallTime`]); nothing here reads a clock, so tests are deterministic
//! and never sleep.
//!
//! Windows are *sliding window counters*: a current and a previous bucket,
//! each one window long; the count is `current + previous × (the share of
//! the previous bucket still inside the window)`. Exact while all calls
//! fall in one bucket, within one call of exact across a boundary for the
//! thresholds rules use, and 8 bytes per window.
//!
//! Memory is bounded: the tracker never holds more than its cap. A number
//! first seen while the tracker is full is scored without behaviour state
//! (and counted). [`Tracker::sweep`], run off the call path, drops numbers
//! idle longer than the TTL, then, if still above 90% of the cap, the
//! least recently seen down to 80% (LRU by a histogram of idle times).

pub mod table;

use std::sync::atomic::{AtomicU64, Ordering};

use table::{Miss, Packed, Table};

/// When a call happens, as the engine's clock says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallTime {
    /// Monotonic seconds (any origin, never going back).
    pub secs: u32,
    /// Local hour of day, 0-23, for rule scopes.
    pub hour: u8,
    /// Local weekday, 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
}

/// A sliding-window counter: 8 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    start: u32,
    prev: u16,
    cur: u16,
}

impl Window {
    fn roll(&mut self, now: u32, len: u32) {
        let len = len.max(1);
        if self.start == 0 && self.cur == 0 && self.prev == 0 {
            self.start = now;
            return;
        }
        let elapsed = now.saturating_sub(self.start);
        if elapsed >= 2 * len {
            *self = Window {
                start: now - (elapsed % len),
                prev: 0,
                cur: 0,
            };
        } else if elapsed >= len {
            self.prev = self.cur;
            self.cur = 0;
            self.start += len;
        }
    }

    /// Adds `n` at `now` and returns the count over the last `len` seconds.
    pub fn add(&mut self, now: u32, len: u32, n: u16) -> u32 {
        self.roll(now, len);
        self.cur = self.cur.saturating_add(n);
        self.count(now, len)
    }

    /// The count over the last `len` seconds, as of `now`.
    pub fn count(&self, now: u32, len: u32) -> u32 {
        let len = len.max(1);
        let elapsed = now.saturating_sub(self.start);
        // Read as if rolled to `now`, without changing anything.
        let (prev, cur, into) = if elapsed >= 2 * len {
            return 0;
        } else if elapsed >= len {
            (self.cur, 0, elapsed - len)
        } else {
            (self.prev, self.cur, elapsed)
        };
        let prev_share = u64::from(prev) * u64::from(len - into);
        u32::from(cur) + (prev_share / u64::from(len)) as u32
    }
}

/// How many velocity windows one tracker keeps per number.
pub const VELOCITY_SLOTS: usize = 3;
/// Bits in a caller's callee bitmap (eight words).
pub const FANOUT_BITS: usize = 512;

/// Everything kept about one A-number: 128 bytes, sixteen words.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallerState {
    /// Last time the number was seen (for TTL and LRU eviction).
    pub last_seen: u32,
    /// Call counts over the rule set's velocity windows, one per slot.
    pub velocity: [Window; VELOCITY_SLOTS],
    fanout_start: u32,
    /// The callees of the current fan-out window, one hashed bit each: the
    /// distinct count is estimated from the bits still clear (linear
    /// counting, exact while callees are few, within a few percent up to
    /// about a thousand), and "has this number called X" is a bit test.
    fanout_bits: [u64; FANOUT_BITS / 64],
    /// Calls from this number's callees back to it, in the fan-out window:
    /// a business is called back, a SIM box is not.
    callbacks: u16,
    /// Low 32 bits of the last B-number and the length of the run of
    /// consecutive B-numbers ending there.
    last_b: u32,
    run: u16,
    /// Call outcomes in the current outcome window.
    outcome_start: u32,
    rings: u16,
    short_rings: u16,
    answered: u16,
    short_answered: u16,
    /// Calls in progress (proxy mode sees them start and end).
    pub concurrent: u16,
    /// When a call last started: an in-progress count older than the
    /// longest call is stale (a lost BYE, a forged start) and decays.
    pub concurrent_at: u32,
}

impl CallerState {
    fn fanout_window(&mut self, now: u32, window: u32) {
        if now.saturating_sub(self.fanout_start) >= window.max(1) || self.fanout_start == 0 {
            self.fanout_start = now;
            self.fanout_bits = [0; FANOUT_BITS / 64];
            self.callbacks = 0;
        }
    }

    fn callee_bit(b: u64) -> (usize, u64) {
        let h = (b.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55) as usize;
        (h / 64, 1 << (h % 64))
    }

    /// Records callee `b` and returns the distinct callees in the window.
    pub fn fan_out(&mut self, now: u32, window: u32, b: u64) -> u32 {
        self.fanout_window(now, window);
        let (w, bit) = Self::callee_bit(b);
        self.fanout_bits[w] |= bit;
        self.distinct_callees()
    }

    /// Distinct callees in the window, estimated from the clear bits.
    pub fn distinct_callees(&self) -> u32 {
        let set: u32 = self.fanout_bits.iter().map(|w| w.count_ones()).sum();
        let clear = FANOUT_BITS as u32 - set;
        if clear == 0 {
            // Saturated: at least this many.
            return FANOUT_BITS as u32 * 6;
        }
        let m = FANOUT_BITS as f64;
        (-m * (f64::from(clear) / m).ln()).round() as u32
    }

    /// Whether this number called `b` in its current fan-out window (as of
    /// `now`); a hashed bit, so a small share of false yeses.
    pub fn has_called(&self, b: u64, now: u32, window: u32) -> bool {
        if self.fanout_start == 0 || now.saturating_sub(self.fanout_start) >= window.max(1) {
            return false;
        }
        let (w, bit) = Self::callee_bit(b);
        self.fanout_bits[w] & bit != 0
    }

    /// Counts a call from one of this number's callees back to it.
    pub fn called_back(&mut self) {
        self.callbacks = self.callbacks.saturating_add(1);
    }

    /// The share of distinct callees that called back, per mille (at most
    /// 1000).
    pub fn called_back_per_mille(&self) -> u32 {
        let d = self.distinct_callees().max(1);
        (u32::from(self.callbacks) * 1000 / d).min(1000)
    }

    /// Records callee `b`; returns the length of the run of consecutive
    /// B-numbers (each one more than the last) that ends with it.
    pub fn sequential(&mut self, b: u64) -> u32 {
        let low = b as u32;
        self.run = if self.run > 0 && low == self.last_b.wrapping_add(1) {
            self.run.saturating_add(1)
        } else if self.run > 0 && low == self.last_b {
            self.run // a retry of the same number neither breaks nor extends
        } else {
            1
        };
        self.last_b = low;
        u32::from(self.run)
    }

    fn outcomes(&mut self, now: u32, window: u32) {
        if now.saturating_sub(self.outcome_start) >= window.max(1) || self.outcome_start == 0 {
            self.outcome_start = now;
            self.rings = 0;
            self.short_rings = 0;
            self.answered = 0;
            self.short_answered = 0;
        }
    }

    /// (calls that rang out or were cancelled, of which cancelled within
    /// the short ring time) in the outcome window.
    pub fn rings(&self) -> (u32, u32) {
        (u32::from(self.rings), u32::from(self.short_rings))
    }

    /// (answered calls, of which shorter than the short talk time).
    pub fn answers(&self) -> (u32, u32) {
        (u32::from(self.answered), u32::from(self.short_answered))
    }

    /// Calls in progress as of `now`: none once the last start is older
    /// than `max_call_s` (a call cannot last longer, so the count is stale).
    pub fn concurrent_now(&self, now: u32, max_call_s: u32) -> u32 {
        if now.saturating_sub(self.concurrent_at) >= max_call_s {
            0
        } else {
            u32::from(self.concurrent)
        }
    }
}

/// How a call ended, reported after the fact (proxy mode sees it on the
/// wire; in redirect mode the switch reports it through the outcome API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The caller hung up (CANCEL) after ringing this long.
    Cancelled {
        /// How long it rang before the caller hung up, milliseconds.
        ring_ms: u32,
    },
    /// Answered, then lasted this long.
    Answered {
        /// How long the answered call lasted, milliseconds.
        talk_ms: u32,
    },
}

/// Outcome thresholds the tracker classifies by (from the rule set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutcomePolicy {
    /// Length of the window outcomes are counted over, seconds.
    pub window_s: u32,
    /// A cancelled call that rang less than this counts as a short ring.
    pub short_ring_ms: u32,
    /// An answered call shorter than this counts as a short call.
    pub short_talk_ms: u32,
}

impl Default for OutcomePolicy {
    fn default() -> Self {
        OutcomePolicy {
            window_s: 3600,
            short_ring_ms: 3000,
            short_talk_ms: 10_000,
        }
    }
}

impl Packed for CallerState {
    const WORDS: usize = 16;

    fn unpack(w: &[u64]) -> Self {
        let lo = |x: u64| x as u32;
        let hi = |x: u64| (x >> 32) as u32;
        let h16 = |x: u64, i: u32| (x >> (16 * i)) as u16;
        let win = |x: u64| Window {
            start: lo(x),
            prev: h16(x, 2),
            cur: h16(x, 3),
        };
        let mut fanout_bits = [0u64; FANOUT_BITS / 64];
        fanout_bits.copy_from_slice(&w[4..12]);
        CallerState {
            last_seen: lo(w[0]),
            fanout_start: hi(w[0]),
            velocity: [win(w[1]), win(w[2]), win(w[3])],
            fanout_bits,
            last_b: lo(w[12]),
            run: h16(w[12], 2),
            callbacks: h16(w[12], 3),
            outcome_start: lo(w[13]),
            rings: h16(w[13], 2),
            short_rings: h16(w[13], 3),
            answered: h16(w[14], 0),
            short_answered: h16(w[14], 1),
            concurrent: h16(w[14], 2),
            concurrent_at: lo(w[15]),
        }
    }

    fn pack(&self, w: &mut [u64]) {
        let win =
            |v: &Window| u64::from(v.start) | u64::from(v.prev) << 32 | u64::from(v.cur) << 48;
        w[0] = u64::from(self.last_seen) | u64::from(self.fanout_start) << 32;
        for (i, v) in self.velocity.iter().enumerate() {
            w[1 + i] = win(v);
        }
        w[4..12].copy_from_slice(&self.fanout_bits);
        w[12] =
            u64::from(self.last_b) | u64::from(self.run) << 32 | u64::from(self.callbacks) << 48;
        w[13] = u64::from(self.outcome_start)
            | u64::from(self.rings) << 32
            | u64::from(self.short_rings) << 48;
        w[14] = u64::from(self.answered)
            | u64::from(self.short_answered) << 16
            | u64::from(self.concurrent) << 32;
        w[15] = u64::from(self.concurrent_at);
    }
}

impl Tracker<CallerState> {
    /// Records how a call from `number` ended. Only a number seen calling
    /// has state to record it in: an outcome never creates state, so
    /// reports about numbers kuzet never saw cannot fill the tracker.
    pub fn outcome(&self, number: u64, now: u32, o: Outcome, p: &OutcomePolicy) -> bool {
        self.update_existing(number, |s| {
            s.outcomes(now, p.window_s);
            match o {
                Outcome::Cancelled { ring_ms } => {
                    s.rings = s.rings.saturating_add(1);
                    if ring_ms < p.short_ring_ms {
                        s.short_rings = s.short_rings.saturating_add(1);
                    }
                }
                Outcome::Answered { talk_ms } => {
                    s.answered = s.answered.saturating_add(1);
                    if talk_ms < p.short_talk_ms {
                        s.short_answered = s.short_answered.saturating_add(1);
                    }
                }
            }
        })
        .is_some()
    }

    /// A call from `number` started (`+1`) or ended (`-1`), as of `now`,
    /// calls lasting at most `max_call_s`: a stale count restarts from
    /// zero. Like outcomes, it never creates state; returns whether the
    /// number was known.
    pub fn concurrent(&self, number: u64, now: u32, delta: i8, max_call_s: u32) -> bool {
        self.update_existing(number, |s| {
            let live = s.concurrent_now(now, max_call_s) as u16;
            s.concurrent = if delta >= 0 {
                s.concurrent_at = now;
                live.saturating_add(1)
            } else {
                live.saturating_sub(1)
            };
        })
        .is_some()
    }
}

/// The table key for a tracked number (a packed [`Number`](crate::Number)
/// or a destination key): its digits, length and kind folded into 56 bits.
pub fn state_key(x: u64) -> u64 {
    table::key_of((x & ((1 << 50) - 1)) | ((x >> 56) & 0x1f) << 50 | (x >> 63) << 55)
}

/// A value a [`Tracker`] keeps per key: it knows when it was last seen,
/// and whether it must outlive its idle time (a call in progress).
pub trait Aged: Packed {
    /// When the key was last seen.
    fn last_seen(&self) -> u32;
    /// Marks it seen at `now`.
    fn touch(&mut self, now: u32);
    /// True when a sweep must keep it however idle, as of `now`, calls
    /// lasting at most `max_call_s`.
    fn pinned(&self, now: u32, max_call_s: u32) -> bool {
        let _ = (now, max_call_s);
        false
    }
}

impl Aged for CallerState {
    fn last_seen(&self) -> u32 {
        self.last_seen
    }
    fn touch(&mut self, now: u32) {
        self.last_seen = now;
    }
    fn pinned(&self, now: u32, max_call_s: u32) -> bool {
        self.concurrent_now(now, max_call_s) > 0
    }
}

/// One sliding-window count per key: calls to a premium destination, or
/// how often a rule fired for a caller (escalation). Two words.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count {
    /// When the key was last counted.
    pub last_seen: u32,
    /// The count's window.
    pub window: Window,
}

impl Packed for Count {
    const WORDS: usize = 2;
    fn unpack(w: &[u64]) -> Self {
        Count {
            last_seen: w[0] as u32,
            window: Window {
                start: w[1] as u32,
                prev: (w[1] >> 32) as u16,
                cur: (w[1] >> 48) as u16,
            },
        }
    }
    fn pack(&self, w: &mut [u64]) {
        w[0] = u64::from(self.last_seen);
        w[1] = u64::from(self.window.start)
            | u64::from(self.window.prev) << 32
            | u64::from(self.window.cur) << 48;
    }
}

impl Aged for Count {
    fn last_seen(&self) -> u32 {
        self.last_seen
    }
    fn touch(&mut self, now: u32) {
        self.last_seen = now;
    }
}

/// The longest call kuzet believes in by default, seconds (4 hours).
pub const MAX_CALL_S: u32 = 4 * 3600;

/// All the behaviour state scoring reads and writes, bounded.
pub struct State {
    /// Per A-number.
    pub callers: Tracker<CallerState>,
    /// Per premium destination (the matched premium prefix).
    pub destinations: Tracker<Count>,
    /// Per caller and escalating rule: how often the rule fired.
    pub escalations: Tracker<Count>,
    /// Calls last at most this long: an in-progress count older decays.
    pub max_call_s: u32,
}

impl State {
    /// State for at most `max_numbers` callers (and a sixteenth as many
    /// destinations, an eighth as many escalation counts), each forgotten
    /// after `ttl_s` idle seconds.
    pub fn new(max_numbers: usize, ttl_s: u32) -> State {
        State {
            callers: Tracker::new(max_numbers, ttl_s),
            destinations: Tracker::new(max_numbers / 16 + 1024, ttl_s),
            escalations: Tracker::new(max_numbers / 8 + 1024, ttl_s),
            max_call_s: MAX_CALL_S,
        }
    }

    /// Calls last at most `max_call_s` seconds (default [`MAX_CALL_S`]).
    pub fn with_max_call(mut self, max_call_s: u32) -> State {
        self.max_call_s = max_call_s.max(1);
        self
    }

    /// Sweeps every tracker; returns how many keys went.
    pub fn sweep(&self, now: u32) -> usize {
        let m = self.max_call_s;
        self.callers.sweep(now, m)
            + self.destinations.sweep(now, m)
            + self.escalations.sweep(now, m)
    }

    /// Bytes reserved, all at start-up.
    pub fn heap_bytes(&self) -> usize {
        self.callers.heap_bytes() + self.destinations.heap_bytes() + self.escalations.heap_bytes()
    }
}

/// Bounded per-number state shared by all workers.
pub struct Tracker<V: Aged = CallerState> {
    table: Table<V>,
    ttl_s: u32,
    /// Numbers not tracked because the tracker was full.
    pub full_misses: AtomicU64,
    /// Calls scored without state because another worker held the number's
    /// state through every retry.
    pub contended: AtomicU64,
    /// Numbers dropped by sweeps.
    pub evicted: AtomicU64,
}

impl<V: Aged> Tracker<V> {
    /// A tracker for at most `cap` numbers, forgetting a number idle for
    /// `ttl_s` seconds.
    pub fn new(cap: usize, ttl_s: u32) -> Tracker<V> {
        Tracker {
            table: Table::new(cap),
            ttl_s: ttl_s.max(1),
            full_misses: AtomicU64::new(0),
            contended: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// Numbers tracked now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes held, all allocated at start-up.
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
    }

    /// Runs `f` on the state of `number`, creating it if there is room;
    /// `None` when the tracker is full and the number is new, or when
    /// another worker held the state through every retry (both counted).
    pub fn with<R>(&self, number: u64, now: u32, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let r = self.table.upsert(state_key(number), |s| {
            s.touch(now);
            f(s)
        });
        match r {
            Ok(r) => Some(r),
            Err(Miss::Full) => {
                self.full_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(Miss::Contended) => {
                self.contended.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A copy of the state of `number`, if tracked.
    pub fn get(&self, number: u64) -> Option<V> {
        self.table.get(state_key(number))
    }

    /// Runs `f` on the state of `number` if it is tracked, without marking
    /// it seen (something happened *to* it, it did not call).
    pub fn update_existing<R>(&self, number: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.table.update(state_key(number), f)
    }

    /// Drops numbers idle longer than the TTL; then, above 90% of the cap,
    /// the least recently seen down to 80%. Run it off the call path; it
    /// never makes a worker wait.
    pub fn sweep(&self, now: u32, max_call_s: u32) -> usize {
        let ttl = self.ttl_s;
        let mut dropped = self.table.retain(
            |s| now.saturating_sub(s.last_seen()) < ttl || s.pinned(now, max_call_s),
            |_| (),
        );
        let cap = self.table.cap();
        if self.table.len() * 10 > cap * 9 {
            // Histogram of idle seconds (log2 buckets), then the cut-off
            // that keeps the most recent 80% of the cap.
            let mut hist = [0usize; 33];
            self.table.for_each(|s| {
                let idle = now.saturating_sub(s.last_seen());
                hist[(32 - idle.leading_zeros()) as usize] += 1;
            });
            let keep = cap * 8 / 10;
            let (mut kept, mut cut) = (0usize, 33usize);
            for (i, n) in hist.iter().enumerate() {
                if kept + n > keep {
                    cut = i;
                    break;
                }
                kept += n;
            }
            dropped += self.table.retain(
                |s| {
                    let idle = now.saturating_sub(s.last_seen());
                    ((32 - idle.leading_zeros()) as usize) < cut || s.pinned(now, max_call_s)
                },
                |_| (),
            );
        }
        self.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_128_bytes_and_packs_into_sixteen_words_losslessly() {
        assert!(std::mem::size_of::<CallerState>() <= 128);
        let mut s = CallerState {
            last_seen: 0xdead_beef,
            fanout_start: 7,
            last_b: 0x1234_5678,
            run: 3,
            callbacks: 11,
            outcome_start: 99,
            rings: 5,
            short_rings: 4,
            answered: 3,
            short_answered: 2,
            concurrent: 1,
            concurrent_at: 0xfeed,
            ..CallerState::default()
        };
        for (i, h) in s.fanout_bits.iter_mut().enumerate() {
            *h = 0x0123_4567_89ab_cdef ^ i as u64;
        }
        for (i, w) in s.velocity.iter_mut().enumerate() {
            w.start = 10 + i as u32;
            w.prev = 20 + i as u16;
            w.cur = u16::MAX - i as u16;
        }
        let mut words = [0u64; 16];
        s.pack(&mut words);
        let back = CallerState::unpack(&words);
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
    }

    #[test]
    fn window_counts_exactly_within_a_bucket_and_slides() {
        let mut w = Window::default();
        for i in 1..=20 {
            assert_eq!(w.add(1000 + i, 60, 1), i);
        }
        // 30 s into the next bucket, half of the previous 20 still counts.
        assert_eq!(w.count(1000 + 60 + 30, 60), 10);
        assert_eq!(w.add(1000 + 60 + 30, 60, 1), 11);
        // Two windows later, nothing is left.
        assert_eq!(w.count(1000 + 200, 60), 0);
        assert_eq!(w.add(1000 + 200, 60, 1), 1);
    }

    #[test]
    fn fan_out_counts_distinct_callees_per_window() {
        let mut s = CallerState::default();
        assert_eq!(s.fan_out(10, 60, 77011110001), 1);
        assert_eq!(s.fan_out(11, 60, 77011110001), 1);
        assert_eq!(s.fan_out(12, 60, 77011110002), 2);
        // Exact while few; within 3% at a few hundred.
        for k in 3..=30u64 {
            let got = s.fan_out(13, 60, 77011110000 + k);
            assert!(got.abs_diff(k as u32) <= 1, "{k}: {got}");
        }
        let mut big = CallerState::default();
        let mut got = 0;
        for k in 0..400u64 {
            got = big.fan_out(1, 3600, 77020000000 + k * 7919);
        }
        assert!(got.abs_diff(400) <= 12, "{got}");
        assert_eq!(
            s.fan_out(80, 60, 77011110001),
            1,
            "a new window starts empty"
        );
    }

    #[test]
    fn callbacks_from_callees_are_recognised_within_the_window() {
        let mut s = CallerState::default();
        for k in 0..20u64 {
            s.fan_out(100, 3600, 77020000000 + k);
        }
        assert!(s.has_called(77020000005, 200, 3600));
        // Numbers it never called: false yeses only as often as bits are set
        // (20 of 512, about 4%).
        let false_yes = (0..1000u64)
            .filter(|k| s.has_called(78000000000 + k * 31, 200, 3600))
            .count();
        assert!(false_yes < 80, "{false_yes} of 1000");
        assert!(
            !s.has_called(77020000005, 100 + 3600, 3600),
            "the window is over"
        );
        for _ in 0..5 {
            s.called_back();
        }
        assert_eq!(s.called_back_per_mille(), 250);
    }

    #[test]
    fn sequential_runs() {
        let mut s = CallerState::default();
        assert_eq!(s.sequential(77010000005), 1);
        assert_eq!(s.sequential(77010000006), 2);
        assert_eq!(s.sequential(77010000006), 2);
        assert_eq!(s.sequential(77010000007), 3);
        assert_eq!(s.sequential(77010000100), 1);
    }

    #[test]
    fn tracker_is_bounded_and_sweeps_idle_then_least_recent() {
        let t = Tracker::new(100, 600);
        for n in 1..=100u64 {
            assert!(t.with(n, n as u32, |_| ()).is_some());
        }
        assert!(
            t.with(1000, 200, |_| ()).is_none(),
            "full: a new number is not tracked"
        );
        assert_eq!(t.full_misses.load(Ordering::Relaxed), 1);
        assert!(t.with(5, 300, |_| ()).is_some(), "a known number still is");
        // Nothing idle past the TTL yet, but above 90% of the cap: the
        // least recently seen go, the recently seen stay.
        let dropped = t.sweep(301, MAX_CALL_S);
        assert!(t.len() <= 80 && dropped >= 20, "{} left", t.len());
        assert!(t.get(5).is_some());
        assert!(t.get(99).is_some());
        assert!(t.get(1).is_none());
        // Past the TTL everything idle goes, except calls in progress.
        assert!(t.concurrent(99, 400, 1, 3600));
        t.sweep(1000, 3600);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(99).unwrap().concurrent, 1);
        // ...and a call "in progress" longer than any call can last is
        // stale: it no longer holds the number.
        t.sweep(400 + 3600, 3600);
        assert_eq!(t.len(), 0);
    }

    /// Regression: outcome events created state for numbers kuzet never
    /// saw calling, and a `started` with no `ended` pinned that state for
    /// ever; a few thousand filled the tracker.
    #[test]
    fn outcomes_never_create_state_and_stale_calls_in_progress_decay() {
        let t = Tracker::new(10, 600);
        let p = OutcomePolicy::default();
        for n in 1..=1000u64 {
            assert!(!t.outcome(n, 10, Outcome::Cancelled { ring_ms: 100 }, &p));
            assert!(!t.concurrent(n, 10, 1, 3600));
        }
        assert_eq!(t.len(), 0, "nothing created from outside");
        assert!(t.with(5, 10, |_| ()).is_some());
        assert!(t.concurrent(5, 10, 1, 3600));
        assert!(t.concurrent(5, 20, 1, 3600));
        let s = t.get(5).unwrap();
        assert_eq!(
            (
                s.concurrent_now(30, 3600),
                s.concurrent_now(20 + 3600, 3600)
            ),
            (2, 0)
        );
        // A new start after the stale ones counts from zero.
        assert!(t.concurrent(5, 20 + 3600, 1, 3600));
        assert_eq!(t.get(5).unwrap().concurrent_now(20 + 3601, 3600), 1);
    }

    #[test]
    fn outcomes_are_classified_short_or_not() {
        let t = Tracker::new(10, 600);
        let p = OutcomePolicy::default();
        t.with(1, 9, |_| ());
        t.outcome(1, 10, Outcome::Cancelled { ring_ms: 2999 }, &p);
        t.outcome(1, 11, Outcome::Cancelled { ring_ms: 3000 }, &p);
        t.outcome(1, 12, Outcome::Answered { talk_ms: 9999 }, &p);
        t.outcome(1, 13, Outcome::Answered { talk_ms: 60_000 }, &p);
        let s = t.get(1).unwrap();
        assert_eq!(s.rings(), (2, 1));
        assert_eq!(s.answers(), (2, 1));
    }
}
