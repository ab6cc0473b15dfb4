//! Per-number behaviour state: sliding windows, distinct callees, dialling
//! runs, call outcomes, concurrent calls, counted in Unix time so that
//! nodes can add up each other's counts.
//!
//! One [`CallerState`] (eighteen words) per tracked A-number, in a
//! [`Tracker`]: a fixed-capacity [`table::Table`] sized up front for its
//! cap, which workers update without locks and sweeps evict without ever
//! making a worker wait. Time comes from the caller as whole **Unix
//! seconds** in a `u32` ([`CallTime`]; good until 2106); nothing here reads
//! a clock, so tests are deterministic and never sleep.
//!
//! **Windows are aligned to their length.** A window of length `L` is a
//! run of buckets `[k·L, (k+1)·L)` of Unix time ([`bucket_start`]), the
//! same buckets on every node whatever its first call, which is what lets
//! two nodes add their counts bucket by bucket. Velocity windows (and the
//! premium-destination and escalation counts) are *sliding window
//! counters*: the current and the previous bucket, and the count is
//! `current + previous × (the share of the previous bucket still inside
//! the last L seconds)`, rounded down. The true count over `(now − L, now]`
//! lies between `current` and `current + previous`, and so does the
//! estimate: **its error is at most the previous bucket's count** (zero
//! when that bucket's calls were evenly spread, and exact while every call
//! is in one bucket), plus the rounding down (under one call). Fan-out and
//! outcome counts are *tumbling*: they count the current bucket only, and
//! start from nothing at each boundary. A count stamped one bucket late (a
//! worker behind another by a moment) goes into the previous bucket; a
//! clock stepped back by more than a window restarts the window rather
//! than count into a bucket the clock is not in.
//!
//! **Counts can merge across nodes** ([`delta`]): each counter also keeps
//! this node's own counts not yet handed over, [`State::export`] takes
//! them (the deltas since the last export, each labelled with its window
//! length and bucket start) and [`State::merge`] adds what other nodes
//! exported. Merged counts are never exported again, so nodes exchanging
//! deltas converge on the sums (a G-counter per bucket). Once every delta
//! has arrived, a node's buckets hold the counts one node fed all the
//! traffic would hold, so it scores a call as that node would: the two
//! differ from the true count by the same window-edge error above, and
//! by nothing more. Until then a node is short of what the other nodes
//! counted since their last export (about nodes × rate × push interval),
//! never over; and a clock skew of `s` seconds between nodes can put a
//! call made in the last `s` seconds before a boundary in the next
//! bucket. The dialling run and calls in progress are local to a node
//! (see [`delta`]).
//!
//! Memory is bounded: the tracker never holds more than its cap. A number
//! first seen while the tracker is full is scored without behaviour state
//! (and counted); a merge creates state only below 90% of the cap.
//! [`Tracker::sweep`], run off the call path, drops numbers idle longer
//! than the TTL, then, if still above 90% of the cap, the least recently
//! seen down to 80% (LRU by a histogram of idle times).

pub mod delta;
pub mod table;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};

pub use delta::{
    Buckets, CallerDelta, CountDelta, Delta, DeltaError, FanOutDelta, Merged, OutcomeDelta,
    Windows, DELTA_VERSION,
};
use table::{Miss, Packed, Table};

/// When a call happens, as the engine's clock says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallTime {
    /// Unix time, whole seconds (a `u32`: good until 2106). Every node's
    /// windows are aligned on it, so nodes must keep their clocks in step
    /// (NTP); a second or two of skew costs what the module docs say.
    pub secs: u32,
    /// Local hour of day, 0-23, for rule scopes.
    pub hour: u8,
    /// Local weekday, 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
}

/// The start of the bucket of length `len` that holds `t`: windows of
/// length `len` are the buckets `[k·len, (k+1)·len)`, the same on every
/// node. A length of 0 counts as 1.
pub fn bucket_start(t: u32, len: u32) -> u32 {
    t - t % len.max(1)
}

/// Whether a tumbling count kept for the bucket at `start` is the one
/// `now` falls in: the same bucket, or `now` one bucket behind it (a late
/// stamp). A later bucket, or a clock more than a window back, starts a
/// new count.
fn tumbling_live(start: u32, now: u32, len: u32) -> bool {
    let b = bucket_start(now, len);
    b == start || start.checked_sub(len.max(1)) == Some(b)
}

/// A sliding-window counter over aligned buckets: the current bucket's
/// start and count, the previous bucket's count, and how much of each
/// this node counted itself and has not exported yet. Twelve bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    start: u32,
    prev: u16,
    cur: u16,
    out_prev: u16,
    out_cur: u16,
}

/// Where a count for a bucket belongs.
enum Place {
    Cur,
    Prev,
    TooOld,
}

impl Window {
    /// Makes bucket `b` current if it is later than the current one (the
    /// current becomes the previous if adjacent, else both empty), then
    /// says where a count for `b` belongs.
    fn place(&mut self, b: u32, len: u32) -> Place {
        if b > self.start {
            if self.start.checked_add(len) == Some(b) {
                self.prev = self.cur;
                self.out_prev = self.out_cur;
            } else {
                self.prev = 0;
                self.out_prev = 0;
            }
            self.cur = 0;
            self.out_cur = 0;
            self.start = b;
        }
        if b == self.start {
            Place::Cur
        } else if self.start.checked_sub(len) == Some(b) {
            Place::Prev
        } else {
            Place::TooOld
        }
    }

    /// Adds `n` of this node's own at `now` and returns the count over the
    /// last `len` seconds.
    pub fn add(&mut self, now: u32, len: u32, n: u16) -> u32 {
        let len = len.max(1);
        let b = bucket_start(now, len);
        match self.place(b, len) {
            Place::Cur => {
                self.cur = self.cur.saturating_add(n);
                self.out_cur = self.out_cur.saturating_add(n);
            }
            Place::Prev => {
                self.prev = self.prev.saturating_add(n);
                self.out_prev = self.out_prev.saturating_add(n);
            }
            Place::TooOld => {
                // The clock went back more than a window: start again
                // from its bucket rather than count into one it is not in.
                *self = Window {
                    start: b,
                    cur: n,
                    out_cur: n,
                    ..Window::default()
                };
            }
        }
        self.count(now, len)
    }

    /// The count over the last `len` seconds, as of `now` (the sliding
    /// estimate; see the module docs for its error).
    pub fn count(&self, now: u32, len: u32) -> u32 {
        let len = len.max(1);
        let b = bucket_start(now, len);
        let (prev, cur) = if b == self.start {
            (self.prev, self.cur)
        } else if self.start.checked_add(len) == Some(b) {
            (self.cur, 0)
        } else if self.start.checked_sub(len) == Some(b) {
            // A moment late: both buckets, the later one included.
            return u32::from(self.prev) + u32::from(self.cur);
        } else {
            return 0;
        };
        let into = now - b;
        let prev_share = u64::from(prev) * u64::from(len - into) / u64::from(len);
        u32::from(cur) + prev_share as u32
    }

    /// Adds `n` counted elsewhere to the bucket starting at `b`: nothing
    /// if `b` is not a bucket start of `len` or is older than the previous
    /// bucket. Never marks anything for export. Returns whether it counted.
    pub(crate) fn merge(&mut self, b: u32, len: u32, n: u16) -> bool {
        if n == 0 || len == 0 || !b.is_multiple_of(len) {
            return false;
        }
        match self.place(b, len) {
            Place::Cur => self.cur = self.cur.saturating_add(n),
            Place::Prev => self.prev = self.prev.saturating_add(n),
            Place::TooOld => return false,
        }
        true
    }

    /// This node's counts not yet exported, labelled for a window of
    /// `len`, and forgets them. `None` when there are none, or when the
    /// window is not aligned to `len` (its rule's length changed).
    pub(crate) fn take(&mut self, len: u32) -> Option<Buckets> {
        if self.out_prev == 0 && self.out_cur == 0 {
            return None;
        }
        let b = Buckets {
            len,
            start: self.start,
            prev: self.out_prev,
            cur: self.out_cur,
        };
        self.out_prev = 0;
        self.out_cur = 0;
        (len > 0 && b.start.is_multiple_of(len)).then_some(b)
    }

    /// The start of the current bucket.
    pub fn start(&self) -> u32 {
        self.start
    }

    fn word(&self) -> u64 {
        u64::from(self.start) | u64::from(self.prev) << 32 | u64::from(self.cur) << 48
    }

    fn from_word(x: u64, out_prev: u16, out_cur: u16) -> Window {
        Window {
            start: x as u32,
            prev: (x >> 32) as u16,
            cur: (x >> 48) as u16,
            out_prev,
            out_cur,
        }
    }
}

/// How many velocity windows one tracker keeps per number.
pub const VELOCITY_SLOTS: usize = 3;
/// Bits in a caller's callee bitmap (eight words).
pub const FANOUT_BITS: usize = 512;
/// Most callbacks one export hands over (the count not yet exported keeps
/// 15 bits).
const OUT_CALLBACKS_MAX: u16 = 0x7fff;

/// Everything kept about one A-number: eighteen words packed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallerState {
    /// Last time the number was seen (for TTL and LRU eviction).
    pub last_seen: u32,
    /// Call counts over the rule set's velocity windows, one per slot.
    pub velocity: [Window; VELOCITY_SLOTS],
    /// Start of the fan-out bucket the bitmap and callbacks are of.
    fanout_start: u32,
    /// The callees of the current fan-out bucket, one hashed bit each: the
    /// distinct count is estimated from the bits still clear (linear
    /// counting, exact while callees are few, within a few percent up to
    /// about a thousand), and "has this number called X" is a bit test.
    /// Two nodes' bitmaps of one bucket merge by OR: the union is the
    /// bitmap one node fed every call would have.
    fanout_bits: [u64; FANOUT_BITS / 64],
    /// Calls from this number's callees back to it, in the fan-out
    /// bucket: a business is called back, a SIM box is not.
    callbacks: u16,
    /// Callbacks not yet exported, and whether the bitmap gained a bit
    /// since the last export.
    out_callbacks: u16,
    fanout_news: bool,
    /// Low 32 bits of the last B-number and the length of the run of
    /// consecutive B-numbers ending there (local to this node).
    last_b: u32,
    run: u16,
    /// Call outcomes in the current outcome bucket: rings (calls that
    /// rang out or were cancelled), short rings, answered, short answered.
    outcome_start: u32,
    outcomes: [u16; 4],
    /// The outcomes of the bucket not yet exported, the same four.
    out_outcomes: [u16; 4],
    /// Calls in progress (proxy mode sees them start and end; local).
    pub concurrent: u16,
    /// When a call last started: an in-progress count older than the
    /// longest call is stale (a lost BYE, a forged start) and decays.
    pub concurrent_at: u32,
}

impl CallerState {
    fn fanout_window(&mut self, now: u32, window: u32) {
        if !tumbling_live(self.fanout_start, now, window) {
            self.fanout_start = bucket_start(now, window);
            self.fanout_bits = [0; FANOUT_BITS / 64];
            self.callbacks = 0;
            self.out_callbacks = 0;
            self.fanout_news = false;
        }
    }

    fn callee_bit(b: u64) -> (usize, u64) {
        let h = (b.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55) as usize;
        (h / 64, 1 << (h % 64))
    }

    /// Records callee `b` and returns the distinct callees in the bucket.
    pub fn fan_out(&mut self, now: u32, window: u32, b: u64) -> u32 {
        self.fanout_window(now, window);
        let (w, bit) = Self::callee_bit(b);
        if let Some(word) = self.fanout_bits.get_mut(w) {
            if *word & bit == 0 {
                *word |= bit;
                self.fanout_news = true;
            }
        }
        self.distinct_callees()
    }

    /// Distinct callees in the bucket, estimated from the clear bits.
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

    /// Whether this number called `b` in the fan-out bucket `now` is in; a
    /// hashed bit, so a small share of false yeses.
    pub fn has_called(&self, b: u64, now: u32, window: u32) -> bool {
        if !tumbling_live(self.fanout_start, now, window) {
            return false;
        }
        let (w, bit) = Self::callee_bit(b);
        self.fanout_bits.get(w).is_some_and(|x| x & bit != 0)
    }

    /// Counts a call from one of this number's callees back to it.
    pub fn called_back(&mut self) {
        self.callbacks = self.callbacks.saturating_add(1);
        self.out_callbacks = (self.out_callbacks + 1).min(OUT_CALLBACKS_MAX);
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

    fn outcome_window(&mut self, now: u32, window: u32) {
        if !tumbling_live(self.outcome_start, now, window) {
            self.outcome_start = bucket_start(now, window);
            self.outcomes = [0; 4];
            self.out_outcomes = [0; 4];
        }
    }

    /// True when the outcome counts are those of the outcome bucket `now`
    /// is in (else they are over and count as none).
    pub fn outcomes_live(&self, now: u32, window: u32) -> bool {
        tumbling_live(self.outcome_start, now, window)
    }

    /// (calls that rang out or were cancelled, of which cancelled within
    /// the short ring time) in the outcome bucket.
    pub fn rings(&self) -> (u32, u32) {
        let [rings, short, ..] = self.outcomes;
        (u32::from(rings), u32::from(short))
    }

    /// (answered calls, of which shorter than the short talk time).
    pub fn answers(&self) -> (u32, u32) {
        let [.., answered, short] = self.outcomes;
        (u32::from(answered), u32::from(short))
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

    /// True when this node has counts for other nodes not yet exported.
    pub fn has_news(&self) -> bool {
        self.velocity
            .iter()
            .any(|w| w.out_prev != 0 || w.out_cur != 0)
            || self.fanout_news
            || self.out_callbacks != 0
            || self.out_outcomes != [0; 4]
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
    /// Length of the (aligned, tumbling) window outcomes are counted
    /// over, seconds.
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

/// Sixteen bits of `x` from bit `16 * i`.
fn h16(x: u64, i: u32) -> u16 {
    (x >> (16 * i)) as u16
}

impl Packed for CallerState {
    const WORDS: usize = 18;
    /// Every count not yet exported lives in the last four words.
    const NEWS: std::ops::Range<usize> = 14..18;

    fn news_in(w: &[u64]) -> bool {
        match w {
            [w14, w15, w16, w17] => w14 >> 48 != 0 || w15 >> 32 != 0 || *w16 != 0 || *w17 != 0,
            _ => true,
        }
    }

    fn unpack(w: &[u64]) -> Self {
        let lo = |x: u64| x as u32;
        let hi = |x: u64| (x >> 32) as u32;
        let mut fanout_bits = [0u64; FANOUT_BITS / 64];
        fanout_bits.copy_from_slice(&w[4..12]);
        let vel =
            |i: usize| Window::from_word(w[1 + i], h16(w[17], i as u32), h16(w[16], i as u32));
        CallerState {
            last_seen: lo(w[0]),
            fanout_start: hi(w[0]),
            velocity: [vel(0), vel(1), vel(2)],
            fanout_bits,
            last_b: lo(w[12]),
            run: h16(w[12], 2),
            callbacks: h16(w[12], 3),
            outcome_start: lo(w[13]),
            outcomes: [h16(w[13], 2), h16(w[13], 3), h16(w[14], 0), h16(w[14], 1)],
            concurrent: h16(w[14], 2),
            concurrent_at: lo(w[15]),
            out_outcomes: [h16(w[15], 2), h16(w[15], 3), h16(w[14], 3), h16(w[17], 3)],
            out_callbacks: h16(w[16], 3) & OUT_CALLBACKS_MAX,
            fanout_news: w[16] >> 63 != 0,
        }
    }

    fn pack(&self, w: &mut [u64]) {
        w[0] = u64::from(self.last_seen) | u64::from(self.fanout_start) << 32;
        for (i, v) in self.velocity.iter().enumerate() {
            w[1 + i] = v.word();
        }
        w[4..12].copy_from_slice(&self.fanout_bits);
        w[12] =
            u64::from(self.last_b) | u64::from(self.run) << 32 | u64::from(self.callbacks) << 48;
        let [rings, short_rings, answered, short_answered] = self.outcomes;
        w[13] =
            u64::from(self.outcome_start) | u64::from(rings) << 32 | u64::from(short_rings) << 48;
        let [o_rings, o_short_rings, o_answered, o_short_answered] = self.out_outcomes;
        w[14] = u64::from(answered)
            | u64::from(short_answered) << 16
            | u64::from(self.concurrent) << 32
            | u64::from(o_answered) << 48;
        w[15] = u64::from(self.concurrent_at)
            | u64::from(o_rings) << 32
            | u64::from(o_short_rings) << 48;
        let [a, b, c] = self.velocity;
        w[16] = u64::from(a.out_cur)
            | u64::from(b.out_cur) << 16
            | u64::from(c.out_cur) << 32
            | u64::from(self.out_callbacks & OUT_CALLBACKS_MAX) << 48
            | u64::from(self.fanout_news) << 63;
        w[17] = u64::from(a.out_prev)
            | u64::from(b.out_prev) << 16
            | u64::from(c.out_prev) << 32
            | u64::from(o_short_answered) << 48;
    }
}

impl Tracker<CallerState> {
    /// Records how a call from `number` ended. Only a number seen calling
    /// has state to record it in: an outcome never creates state, so
    /// reports about numbers kuzet never saw cannot fill the tracker.
    pub fn outcome(&self, number: u64, now: u32, o: Outcome, p: &OutcomePolicy) -> bool {
        self.update_existing(number, |s| {
            s.outcome_window(now, p.window_s);
            // Which counts go up: (rings, short rings) or (answered, short).
            let (first, short) = match o {
                Outcome::Cancelled { ring_ms } => (0, ring_ms < p.short_ring_ms),
                Outcome::Answered { talk_ms } => (2, talk_ms < p.short_talk_ms),
            };
            for i in [first, first + 1].into_iter().take(1 + usize::from(short)) {
                for c in [s.outcomes.get_mut(i), s.out_outcomes.get_mut(i)]
                    .into_iter()
                    .flatten()
                {
                    *c = c.saturating_add(1);
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
/// Every node folds a number the same way, so deltas carry this key.
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
/// how often a rule fired for a caller (escalation). Three words; it keeps
/// its window's length, so its deltas say what they count over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// When the key was last counted.
    pub last_seen: u32,
    /// The window's length, seconds (0 until first counted).
    pub len: u32,
    /// The count's window.
    pub window: Window,
}

impl Count {
    /// Adds `n` of this node's own at `now` to a window of `len` seconds
    /// and returns the count over it. A window whose length changed (its
    /// rule was reloaded with another) starts again.
    pub fn add(&mut self, now: u32, len: u32, n: u16) -> u32 {
        let len = len.max(1);
        if self.len != len {
            self.len = len;
            self.window = Window::default();
        }
        self.window.add(now, len, n)
    }
}

impl Packed for Count {
    const WORDS: usize = 3;
    const NEWS: std::ops::Range<usize> = 2..3;

    fn news_in(w: &[u64]) -> bool {
        w.iter().any(|x| *x != 0)
    }

    fn unpack(w: &[u64]) -> Self {
        Count {
            last_seen: w[0] as u32,
            len: (w[0] >> 32) as u32,
            window: Window::from_word(w[1], h16(w[2], 0), h16(w[2], 1)),
        }
    }

    fn pack(&self, w: &mut [u64]) {
        w[0] = u64::from(self.last_seen) | u64::from(self.len) << 32;
        w[1] = self.window.word();
        w[2] = u64::from(self.window.out_prev) | u64::from(self.window.out_cur) << 16;
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
    /// Per caller and escalating rule: how often the rule fired, in
    /// aligned windows of the rule's `within_s`.
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

    /// A realistic Unix time (2026-11), and the start of its minute.
    const NOW: u32 = 1_796_000_017;
    const MINUTE: u32 = NOW - NOW % 60;

    #[test]
    fn caller_state_packs_into_eighteen_words_losslessly() {
        let mut s = CallerState {
            last_seen: 0xdead_beef,
            fanout_start: 7,
            last_b: 0x1234_5678,
            run: 3,
            callbacks: 11,
            out_callbacks: 0x7ffe,
            fanout_news: true,
            outcome_start: 99,
            outcomes: [5, 4, 3, 2],
            out_outcomes: [0xfff1, 0xfff2, 0xfff3, 0xfff4],
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
            w.out_prev = 30 + i as u16;
            w.out_cur = 40 + i as u16;
        }
        let mut words = [0u64; 18];
        s.pack(&mut words);
        assert_eq!(CallerState::unpack(&words), s);
        assert!(CallerState::news_in(&words[CallerState::NEWS]));
        // Without news, the news words say so, whatever else is set.
        let mut quiet = s;
        quiet.velocity.iter_mut().for_each(|w| {
            w.out_prev = 0;
            w.out_cur = 0;
        });
        quiet.out_callbacks = 0;
        quiet.fanout_news = false;
        quiet.out_outcomes = [0; 4];
        assert!(!quiet.has_news());
        quiet.pack(&mut words);
        assert!(!CallerState::news_in(&words[CallerState::NEWS]));
        assert_eq!(CallerState::unpack(&words), quiet);

        let c = Count {
            last_seen: 0xfeed_f00d,
            len: 600,
            window: Window {
                start: 0xabcd_0000,
                prev: 1,
                cur: 2,
                out_prev: 3,
                out_cur: 4,
            },
        };
        let mut w3 = [0u64; 3];
        c.pack(&mut w3);
        assert_eq!(Count::unpack(&w3), c);
        assert!(Count::news_in(&w3[Count::NEWS]));
    }

    #[test]
    fn windows_are_aligned_to_their_length_whatever_the_first_call() {
        for len in [1, 7, 60, 600, 3600, 86_400] {
            let (mut early, mut late) = (Window::default(), Window::default());
            let b = bucket_start(NOW, len);
            assert_eq!(b % len, 0);
            assert!(b <= NOW && NOW < b + len, "{len}");
            early.add(b, len, 1);
            late.add(b + len - 1, len, 1);
            assert_eq!(early.start(), b, "{len}");
            assert_eq!(late.start(), b, "a first call late in the bucket: {len}");
        }
        // A day's buckets are UTC days.
        assert_eq!(bucket_start(NOW, 86_400) % 86_400, 0);
        assert_eq!(bucket_start(0, 0), 0, "a zero length counts as one");
    }

    #[test]
    fn window_counts_exactly_within_a_bucket_and_slides() {
        let mut w = Window::default();
        for i in 1..=20 {
            assert_eq!(w.add(MINUTE + i, 60, 1), i);
        }
        // 30 s into the next bucket, half of the previous 20 still counts.
        assert_eq!(w.count(MINUTE + 60 + 30, 60), 10);
        assert_eq!(w.add(MINUTE + 60 + 30, 60, 1), 11);
        // Two windows later, nothing is left.
        assert_eq!(w.count(MINUTE + 200, 60), 0);
        assert_eq!(w.add(MINUTE + 200, 60, 1), 1);
    }

    /// Buckets end on multiples of the length in Unix time: the last
    /// second of one and the first of the next are in different buckets,
    /// the previous bucket's share falls a sixtieth a second, and two
    /// buckets on it is gone.
    #[test]
    fn windows_roll_across_boundaries_in_unix_time() {
        let mut w = Window::default();
        for _ in 0..6 {
            w.add(MINUTE + 59, 60, 1);
        }
        assert_eq!(w.start(), MINUTE);
        assert_eq!(w.add(MINUTE + 60, 60, 1), 7, "all of the previous bucket");
        assert_eq!(w.start(), MINUTE + 60);
        assert_eq!(w.count(MINUTE + 90, 60), 1 + 3);
        assert_eq!(w.count(MINUTE + 119, 60), 1, "6 × 1/60 rounds down");
        assert_eq!(w.count(MINUTE + 120, 60), 1, "now only the previous");
        assert_eq!(w.count(MINUTE + 179, 60), 0);
        assert_eq!(w.count(MINUTE + 180, 60), 0);
        assert_eq!(w.add(MINUTE + 180, 60, 1), 1);
        assert_eq!(w.start(), MINUTE + 180);
        // An hour window rolls on the hour, not an hour after its first call.
        let hour = NOW - NOW % 3600;
        let mut h = Window::default();
        h.add(hour + 3599, 3600, 5);
        assert_eq!(h.add(hour + 3600, 3600, 1), 6);
        assert_eq!(h.start(), hour + 3600);
        // Near the end of u32 time nothing overflows.
        let mut end = Window::default();
        end.add(u32::MAX - 5, 60, 1);
        assert_eq!(end.count(u32::MAX, 60), 1);
    }

    /// The sliding estimate and the true count over the last L seconds
    /// both lie between the current bucket's count and the current plus
    /// the previous: the estimate is never further from the truth than the
    /// previous bucket's count (the documented window-edge error).
    #[test]
    fn the_sliding_estimate_is_within_the_previous_buckets_count_of_the_truth() {
        let len = 60;
        let mut w = Window::default();
        let mut calls: Vec<u32> = Vec::new();
        let mut t = NOW;
        let mut x = 12345u32;
        let mut worst = 0;
        for _ in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            // Bursts and lulls: 0-3 s apart mostly, now and then 40 s.
            t += if x >> 28 == 0 { 40 } else { (x >> 16) % 4 };
            let est = w.add(t, len, 1);
            calls.push(t);
            let truth = calls.iter().filter(|&&c| c + len > t).count() as u32;
            let prev = u32::from(w.prev);
            assert!(
                est.abs_diff(truth) <= prev,
                "at {t}: estimate {est}, truth {truth}, previous bucket {prev}"
            );
            worst = worst.max(est.abs_diff(truth));
        }
        assert!(worst > 0, "the traffic crosses boundaries unevenly");
    }

    /// A count stamped a moment late (one bucket back) goes into the
    /// previous bucket, and is exported as such; a clock stepped back by
    /// more than a window starts the window again from its bucket.
    #[test]
    fn a_late_stamp_counts_into_the_previous_bucket_and_a_clock_stepped_back_restarts() {
        let mut w = Window::default();
        w.add(MINUTE + 60, 60, 3);
        assert_eq!(w.add(MINUTE + 59, 60, 1), 4, "late: both buckets count");
        assert_eq!((w.prev, w.cur, w.start()), (1, 3, MINUTE + 60));
        assert_eq!(
            w.take(60),
            Some(Buckets {
                len: 60,
                start: MINUTE + 60,
                prev: 1,
                cur: 3
            })
        );
        assert_eq!(w.add(MINUTE - 3600, 60, 1), 1, "an hour back: restarts");
        assert_eq!(w.start(), MINUTE - 3600);
        assert_eq!(w.count(MINUTE - 3600, 60), 1);
    }

    #[test]
    fn fan_out_counts_distinct_callees_per_aligned_bucket() {
        let mut s = CallerState::default();
        assert_eq!(s.fan_out(MINUTE + 10, 60, 77011110001), 1);
        assert_eq!(s.fan_out(MINUTE + 11, 60, 77011110001), 1);
        assert_eq!(s.fan_out(MINUTE + 12, 60, 77011110002), 2);
        // Exact while few; within 3% at a few hundred.
        for k in 3..=30u64 {
            let got = s.fan_out(MINUTE + 13, 60, 77011110000 + k);
            assert!(got.abs_diff(k as u32) <= 1, "{k}: {got}");
        }
        let mut big = CallerState::default();
        let mut got = 0;
        for k in 0..400u64 {
            got = big.fan_out(NOW, 3600, 77020000000 + k * 7919);
        }
        assert!(got.abs_diff(400) <= 12, "{got}");
        assert_eq!(
            s.fan_out(MINUTE + 60, 60, 77011110001),
            1,
            "the next bucket starts empty, on the minute"
        );
        assert_eq!(s.fanout_start, MINUTE + 60);
    }

    #[test]
    fn callbacks_from_callees_are_recognised_within_the_bucket() {
        let hour = NOW - NOW % 3600;
        let mut s = CallerState::default();
        for k in 0..20u64 {
            s.fan_out(hour + 100, 3600, 77020000000 + k);
        }
        assert!(s.has_called(77020000005, hour + 200, 3600));
        // Numbers it never called: false yeses only as often as bits are set
        // (20 of 512, about 4%).
        let false_yes = (0..1000u64)
            .filter(|k| s.has_called(78000000000 + k * 31, hour + 200, 3600))
            .count();
        assert!(false_yes < 80, "{false_yes} of 1000");
        assert!(
            !s.has_called(77020000005, hour + 3600, 3600),
            "the bucket is over on the hour"
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
            assert!(t.with(n, NOW + n as u32, |_| ()).is_some());
        }
        assert!(
            t.with(1000, NOW + 200, |_| ()).is_none(),
            "full: a new number is not tracked"
        );
        assert_eq!(t.full_misses.load(Ordering::Relaxed), 1);
        assert!(
            t.with(5, NOW + 300, |_| ()).is_some(),
            "a known number still is"
        );
        // Nothing idle past the TTL yet, but above 90% of the cap: the
        // least recently seen go, the recently seen stay.
        let dropped = t.sweep(NOW + 301, MAX_CALL_S);
        assert!(t.len() <= 80 && dropped >= 20, "{} left", t.len());
        assert!(t.get(5).is_some());
        assert!(t.get(99).is_some());
        assert!(t.get(1).is_none());
        // Past the TTL everything idle goes, except calls in progress.
        assert!(t.concurrent(99, NOW + 400, 1, 3600));
        t.sweep(NOW + 1000, 3600);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(99).unwrap().concurrent, 1);
        // ...and a call "in progress" longer than any call can last is
        // stale: it no longer holds the number.
        t.sweep(NOW + 400 + 3600, 3600);
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
    fn outcomes_are_classified_short_or_not_and_count_per_aligned_bucket() {
        let hour = NOW - NOW % 3600;
        let t = Tracker::new(10, 600);
        let p = OutcomePolicy::default();
        t.with(1, hour + 9, |_| ());
        t.outcome(1, hour + 10, Outcome::Cancelled { ring_ms: 2999 }, &p);
        t.outcome(1, hour + 11, Outcome::Cancelled { ring_ms: 3000 }, &p);
        t.outcome(1, hour + 12, Outcome::Answered { talk_ms: 9999 }, &p);
        t.outcome(1, hour + 13, Outcome::Answered { talk_ms: 60_000 }, &p);
        let s = t.get(1).unwrap();
        assert_eq!(s.rings(), (2, 1));
        assert_eq!(s.answers(), (2, 1));
        assert_eq!(s.out_outcomes, [2, 1, 2, 1], "all of it news");
        assert!(s.outcomes_live(hour + 3599, 3600));
        assert!(!s.outcomes_live(hour + 3600, 3600), "over on the hour");
        t.outcome(1, hour + 3600, Outcome::Answered { talk_ms: 1 }, &p);
        let s = t.get(1).unwrap();
        assert_eq!((s.rings(), s.answers()), ((0, 0), (1, 1)));
    }
}
