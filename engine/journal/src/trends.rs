//! Early warnings read from the journal: what a week of calls shows that
//! no rule fired on yet. [`trends`] reads journal rows once, in journal
//! order, and reports three kinds of finding, each with the numbers
//! involved, its figures and an entry a rule author can backtest:
//!
//! - **surges** ([`Surge`]): a foreign range (the caller's first
//!   [`TrendOptions::range_digits`] digits) or a trunk reaching many more
//!   distinct callees a day in the recent period than the days before it;
//! - **slow SIM boxes** ([`SlowSimbox`]): a caller that stays under every
//!   hourly threshold yet reaches many distinct subscribers over the
//!   window, none of whom call it back;
//! - **groups** ([`Group`]): callers on one source address or trunk whose
//!   calls keep the same machine-regular cadence.
//!
//! The window is `[since_us, until_us)`; its last
//! [`TrendOptions::recent_s`] are the recent period and the days before
//! it that the journal holds (from the window's first row) the baseline,
//! compared per day. Rows are read in journal order
//! (time order within a node): a caller's hourly counts, gaps and
//! callbacks assume its calls arrive roughly in time order, and a row
//! that does not only makes it look busier, never slower.
//!
//! Pure: no I/O and no clock; the window is the caller's or the rows'.
//! Memory is bounded: at most [`TrendOptions::max_callers`] callers are
//! tracked (about 180 bytes each with the map's own, so about 180 MB at
//! the default million) and [`TrendOptions::max_keys`] ranges and trunks
//! (each a few kilobytes); what did not fit is counted, not lost
//! silently. Distinct
//! counts are estimates: a caller's callees are a 512-bit linear-counting
//! bitmap, as the rules' `fan_out` keeps (exact while few, within a few
//! percent up to about a thousand, "at least 3072" once full), and a
//! range's or trunk's callees per hour and per day a 256-register
//! HyperLogLog (within about 7%). Allowlisted calls are never findings and
//! feed no figure but callbacks.

use std::collections::{BTreeMap, HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::fmt::{self, Write};

use kuzet_rules::{Number, NumberingPlan, Origin, TrunkKind};
use serde::{Deserialize, Serialize};

use crate::row::{CallRow, OutcomeKind, OutcomeRow, Row};
use crate::text::{Safe, Utc};

#[cfg(test)]
mod tests;

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;
/// An answered call shorter than this is short (the rule file's default
/// `short_talk_ms`).
const SHORT_TALK_MS: u32 = 10_000;
/// Most findings of each kind a report keeps, strongest first.
pub const MAX_FINDINGS: usize = 20;
/// Most numbers a group lists (its `size` still counts them all).
const MAX_GROUP_NUMBERS: usize = 100;
/// Most distinct source addresses remembered; callers on others have no
/// source to be grouped by.
const MAX_SOURCES: usize = 65_536;
/// Inter-call gaps kept per caller: the most recent ones.
const GAPS: usize = 16;
/// Fewest gaps for a cadence to be judged.
const MIN_GAPS: usize = 8;
/// A gap longer than this is a pause, not part of a cadence.
const MAX_GAP_DS: i64 = 36_000;
/// A cadence is machine-regular when its gaps' interquartile range is at
/// most this share of their median.
const REGULAR_SPREAD: f64 = 0.2;
/// Fewest answered or cancelled calls for a caller's outcomes to count.
const MIN_OUTCOMES: u32 = 10;

/// What to look for and where; [`Default`] gives the shipped values.
#[derive(Clone, Debug, PartialEq)]
pub struct TrendOptions {
    /// Start of the window, µs since the epoch; 0: the earliest row's.
    pub since_us: i64,
    /// End of the window (exclusive), µs; 0: just after the latest row,
    /// and the recent period then begins on the whole UTC hour at or
    /// before `until_us - recent_s`.
    pub until_us: i64,
    /// The recent period: the window's last this many seconds (one day).
    /// The days before it are the baseline.
    pub recent_s: i64,
    /// A range or trunk surges when its distinct callees a day in the
    /// recent period exceed the baseline's daily average this many times.
    pub surge_factor: f64,
    /// ... and reach at least this many distinct callees: a handful of
    /// calls from a quiet range is not news.
    pub surge_floor: u32,
    /// A slow SIM box never places more than this many calls in one
    /// clock hour: it stays under hourly velocity and fan-out rules.
    pub slow_max_per_hour: u32,
    /// ... yet reaches at least this many distinct callees in the window.
    pub slow_min_callees: u32,
    /// ... and at most this share of them call it back (the shipped
    /// `fan_out` rule's `max_called_back`): a business is called back.
    pub slow_max_called_back: f64,
    /// Fewest callers sharing a source or trunk and a cadence to report.
    pub group_min: usize,
    /// Callers in one group have median gaps within this share of each
    /// other (0.1: 10%).
    pub group_gap_tolerance: f64,
    /// Leading E.164 digits that make a foreign caller's range: 5 gives
    /// the country code and the next digits (`+22507`, `+79161`).
    pub range_digits: usize,
    /// Most callers tracked; calls from others still count towards their
    /// range and trunk, and the report says how many were left out.
    pub max_callers: usize,
    /// Most ranges, and most trunks, tracked.
    pub max_keys: usize,
}

impl Default for TrendOptions {
    fn default() -> Self {
        TrendOptions {
            since_us: 0,
            until_us: 0,
            recent_s: 86_400,
            surge_factor: 3.0,
            surge_floor: 20,
            slow_max_per_hour: 30,
            slow_min_callees: 100,
            slow_max_called_back: 0.05,
            group_min: 3,
            group_gap_tolerance: 0.1,
            range_digits: 5,
            max_callers: 1_000_000,
            max_keys: 4096,
        }
    }
}

/// What the journal shows, strongest findings first, at most
/// [`MAX_FINDINGS`] of each kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TrendReport {
    /// The window read, µs since the epoch.
    pub since_us: i64,
    /// Its end (exclusive).
    pub until_us: i64,
    /// Where the recent period begins (the baseline ends).
    pub recent_since_us: i64,
    /// Calls in the window, allowlisted ones included.
    pub calls: u64,
    /// Ranges and trunks reaching many more callees than before.
    pub surges: Vec<Surge>,
    /// Callers under every hourly threshold reaching many subscribers.
    pub slow_simboxes: Vec<SlowSimbox>,
    /// Callers sharing a source or trunk and a cadence.
    pub groups: Vec<Group>,
    /// Callers not tracked because [`TrendOptions::max_callers`] were
    /// (estimated): they can be in no slow-SIM-box or group finding.
    pub untracked_callers: u64,
    /// Calls that fed no range or trunk figure because
    /// [`TrendOptions::max_keys`] were tracked.
    pub untracked_key_calls: u64,
}

/// A range or trunk whose distinct callees a day surged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Surge {
    /// `range` (foreign callers by leading digits) or `trunk`.
    pub scope: String,
    /// The range (`+22507`) or the trunk's name.
    pub key: String,
    /// The range's country: the plan's name for it (`RU`), else its
    /// calling code (`+225`); empty for a trunk.
    pub country: String,
    /// Distinct callees in the recent period.
    pub recent_callees: u64,
    /// The same, a day.
    pub recent_callees_per_day: f64,
    /// Distinct callees a day in the baseline, on average.
    pub baseline_callees_per_day: f64,
    /// Recent over baseline a day (the baseline counted as at least 1).
    pub ratio: f64,
    /// Calls in the recent period.
    pub recent_calls: u64,
    /// Calls a day in the baseline.
    pub baseline_calls_per_day: f64,
    /// Answered over answered and cancelled, recent (none: no outcomes).
    pub recent_answer_ratio: Option<f64>,
    /// The same in the baseline.
    pub baseline_answer_ratio: Option<f64>,
    /// Short (under 10 s) over answered, recent.
    pub recent_short_ratio: Option<f64>,
    /// The same in the baseline.
    pub baseline_short_ratio: Option<f64>,
    /// For a range, a flaglist line (`+22507*, trends: ...`); for a trunk,
    /// a shadow `fan_out` rule scoped to the trunk's kind, as TOML.
    pub suggestion: String,
}

/// A caller reaching many subscribers slowly, never called back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SlowSimbox {
    /// The caller, E.164 (`+77011234567`).
    pub number: String,
    /// Distinct callees over the window (estimated).
    pub callees: u32,
    /// Calls over the window.
    pub calls: u32,
    /// Most calls in one clock hour.
    pub max_per_hour: u32,
    /// Calls from its callees back to it.
    pub callbacks: u32,
    /// Answered over answered and cancelled (none: too few outcomes).
    pub answer_ratio: Option<f64>,
    /// Short over answered (none: too few outcomes).
    pub short_ratio: Option<f64>,
    /// A flaglist line for the number.
    pub suggestion: String,
    /// A shadow `fan_out` rule over a long window that would have caught
    /// it, as TOML.
    pub rule: String,
}

/// Callers on one source or trunk keeping one cadence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Group {
    /// The callers, E.164, by median gap (at most 100 listed).
    pub numbers: Vec<String>,
    /// How many callers the group has.
    pub size: usize,
    /// What they share: `source 192.0.2.7` or `trunk intl-gw`.
    pub shared: String,
    /// The cadence in words: the median gap and the hours of day.
    pub pattern: String,
    /// The median of the members' median gaps, seconds.
    pub median_gap_s: f64,
    /// The members' calls over the window.
    pub calls: u64,
    /// Flaglist lines for the numbers, one a line.
    pub suggestion: String,
}

impl TrendReport {
    /// How many findings of each kind, for a metric family.
    pub fn counts(&self) -> [(&'static str, usize); 3] {
        [
            ("surge", self.surges.len()),
            ("slow_simbox", self.slow_simboxes.len()),
            ("group", self.groups.len()),
        ]
    }

    /// The report for a person: every string from the network escaped.
    pub fn write_text(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(
            out,
            "trends {} .. {}: {} calls; recent since {}",
            Utc(self.since_us),
            Utc(self.until_us),
            self.calls,
            Utc(self.recent_since_us)
        )?;
        if self.untracked_callers > 0 || self.untracked_key_calls > 0 {
            writeln!(
                out,
                "not tracked: about {} callers, {} calls of ranges or trunks over the cap",
                self.untracked_callers, self.untracked_key_calls
            )?;
        }
        writeln!(out, "surges: {}", self.surges.len())?;
        for s in &self.surges {
            write!(out, "  {} {}", s.scope, Safe(&s.key))?;
            if !s.country.is_empty() {
                write!(out, " ({})", Safe(&s.country))?;
            }
            writeln!(
                out,
                ": {:.0} distinct callees a day, was {:.1} (x{:.1}); {} calls, was {:.1} a day",
                s.recent_callees_per_day,
                s.baseline_callees_per_day,
                s.ratio,
                s.recent_calls,
                s.baseline_calls_per_day
            )?;
            writeln!(
                out,
                "    answered {} (was {}), short {} (was {})",
                Pct(s.recent_answer_ratio),
                Pct(s.baseline_answer_ratio),
                Pct(s.recent_short_ratio),
                Pct(s.baseline_short_ratio)
            )?;
            let label = if s.scope == "range" {
                "flaglist line"
            } else {
                "rule to backtest"
            };
            write_suggestion(out, label, &s.suggestion)?;
        }
        writeln!(out, "slow SIM boxes: {}", self.slow_simboxes.len())?;
        for s in &self.slow_simboxes {
            writeln!(
                out,
                "  {}: {} distinct callees in {} calls, at most {} an hour, {} callbacks; answered {}, short {}",
                Safe(&s.number),
                s.callees,
                s.calls,
                s.max_per_hour,
                s.callbacks,
                Pct(s.answer_ratio),
                Pct(s.short_ratio)
            )?;
            write_suggestion(out, "flaglist line", &s.suggestion)?;
            write_suggestion(out, "rule to backtest", &s.rule)?;
        }
        writeln!(out, "groups: {}", self.groups.len())?;
        for g in &self.groups {
            writeln!(
                out,
                "  {} callers on {}, {}; {} calls",
                g.size,
                Safe(&g.shared),
                Safe(&g.pattern),
                g.calls
            )?;
            for n in &g.numbers {
                writeln!(out, "    {}", Safe(n))?;
            }
            write_suggestion(out, "flaglist lines", &g.suggestion)?;
        }
        Ok(())
    }
}

fn write_suggestion(out: &mut impl Write, label: &str, text: &str) -> fmt::Result {
    writeln!(out, "    {label}:")?;
    for line in text.lines() {
        writeln!(out, "      {}", Safe(line))?;
    }
    Ok(())
}

/// A ratio as a percentage, `-` when there is none.
struct Pct(Option<f64>);

impl fmt::Display for Pct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{:.0}%", r * 100.0),
            None => f.write_str("-"),
        }
    }
}

/// Reads `rows` (journal order) and reports what trends they show.
pub fn trends(
    rows: impl Iterator<Item = Row>,
    plan: &NumberingPlan,
    opts: &TrendOptions,
) -> TrendReport {
    let mut t = Tracker::new(plan, opts);
    for row in rows {
        match row {
            Row::Call(c) => t.call(&c),
            Row::Outcome(o) => t.outcome(&o),
        }
    }
    t.finish()
}

// ---- distinct counters ----

/// SplitMix64's finalizer: a packed number's bits, well mixed.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A caller's callees: 512 hashed bits, as the rules' `fan_out` keeps.
/// Their count is estimated from the bits still clear (linear counting);
/// "has it called X" is a bit test, with a small share of false yeses.
#[derive(Clone, Copy, Default)]
struct Callees([u64; 8]);

impl Callees {
    fn bit(raw: u64) -> (usize, u64) {
        let h = (mix(raw) >> 55) as usize;
        (h / 64, 1 << (h % 64))
    }

    fn insert(&mut self, raw: u64) {
        let (w, b) = Self::bit(raw);
        self.0[w] |= b;
    }

    fn contains(&self, raw: u64) -> bool {
        let (w, b) = Self::bit(raw);
        self.0[w] & b != 0
    }

    fn estimate(&self) -> u32 {
        let set: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        let clear = 512 - set;
        if clear == 0 {
            return 512 * 6;
        }
        (-512.0 * (f64::from(clear) / 512.0).ln()).round() as u32
    }
}

const HLL_M: usize = 256;
/// Distinct hashes a sketch keeps exactly before it turns to registers.
const HLL_SPARSE: usize = 32;

/// Distinct callees of a range or trunk in an hour or a day: up to 32
/// exactly (their hashes, sorted), then a HyperLogLog of 256 one-byte
/// registers (standard error about 6.5%). Empty, it holds nothing; two
/// merge by union or by register-wise maximum.
#[derive(Clone, Default)]
struct Hll {
    sparse: Vec<u64>,
    regs: Vec<u8>,
}

impl Hll {
    fn insert(&mut self, raw: u64) {
        self.add_hash(mix(raw ^ 0x5EED));
    }

    fn add_hash(&mut self, h: u64) {
        if self.regs.is_empty() {
            if let Err(at) = self.sparse.binary_search(&h) {
                if self.sparse.len() < HLL_SPARSE {
                    self.sparse.insert(at, h);
                    return;
                }
                self.densify();
            } else {
                return;
            }
        }
        let idx = (h >> 56) as usize;
        // The rank of the remaining 56 bits; the guard bit caps it at 57.
        let rank = ((h << 8) | 0x80).leading_zeros() as u8 + 1;
        if self.regs[idx] < rank {
            self.regs[idx] = rank;
        }
    }

    fn densify(&mut self) {
        self.regs = vec![0; HLL_M];
        for h in std::mem::take(&mut self.sparse) {
            self.add_hash(h);
        }
    }

    fn merge(&mut self, other: &Hll) {
        for &h in &other.sparse {
            self.add_hash(h);
        }
        if !other.regs.is_empty() {
            if self.regs.is_empty() {
                self.densify();
            }
            for (a, b) in self.regs.iter_mut().zip(&other.regs) {
                *a = (*a).max(*b);
            }
        }
    }

    fn estimate(&self) -> f64 {
        if self.regs.is_empty() {
            return self.sparse.len() as f64;
        }
        let m = HLL_M as f64;
        let sum: f64 = self.regs.iter().map(|&r| (-f64::from(r)).exp2()).sum();
        let zeros = self.regs.iter().filter(|&&r| r == 0).count();
        let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            // Small range: linear counting over the registers.
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

// ---- per range and trunk ----

#[derive(Clone, Copy, Default)]
struct Outcomes {
    answered: u64,
    short: u64,
    cancelled: u64,
}

impl Outcomes {
    fn add(&mut self, o: &OutcomeRow) {
        match o.kind {
            OutcomeKind::Answered => {
                self.answered += 1;
                self.short += u64::from(o.ms < SHORT_TALK_MS);
            }
            OutcomeKind::Cancelled => self.cancelled += 1,
            OutcomeKind::Started | OutcomeKind::Ended => {}
        }
    }

    fn merge(&mut self, o: &Outcomes) {
        self.answered += o.answered;
        self.short += o.short;
        self.cancelled += o.cancelled;
    }

    fn answer_ratio(&self) -> Option<f64> {
        let n = self.answered + self.cancelled;
        (n > 0).then(|| self.answered as f64 / n as f64)
    }

    fn short_ratio(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.short as f64 / self.answered as f64)
    }
}

/// One hour of a range or trunk.
#[derive(Clone, Default)]
struct Bucket {
    callees: Hll,
    calls: u64,
    out: Outcomes,
}

/// A range's or trunk's figures: hours that may still turn out recent,
/// and the baseline's days folded from hours that cannot.
#[derive(Default)]
struct Series {
    hours: VecDeque<(i64, Bucket)>,
    days: BTreeMap<i64, Hll>,
    base_calls: u64,
    base_out: Outcomes,
}

/// Where rows fall: hour buckets aligned so the recent period starts on
/// one when the window's end is given, and baseline days counted from
/// there (or from UTC midnight when the end comes from the rows).
#[derive(Clone, Copy)]
struct Grid {
    phase_us: i64,
    day_anchor_us: i64,
}

impl Grid {
    fn hour(&self, ts_us: i64) -> i64 {
        (ts_us - self.phase_us).div_euclid(HOUR_US)
    }

    fn day_of_hour(&self, h: i64) -> i64 {
        (h * HOUR_US + self.phase_us - self.day_anchor_us).div_euclid(DAY_US)
    }
}

impl Series {
    fn bucket(&mut self, h: i64, horizon: i64, grid: Grid) -> Option<&mut Bucket> {
        while self.hours.front().is_some_and(|(fh, _)| *fh < horizon) {
            if let Some((fh, b)) = self.hours.pop_front() {
                self.fold(fh, &b, grid);
            }
        }
        if h < horizon {
            return None;
        }
        let at = self.hours.partition_point(|(x, _)| *x < h);
        if self.hours.get(at).is_none_or(|(x, _)| *x != h) {
            self.hours.insert(at, (h, Bucket::default()));
        }
        self.hours.get_mut(at).map(|(_, b)| b)
    }

    fn fold(&mut self, h: i64, b: &Bucket, grid: Grid) {
        self.days
            .entry(grid.day_of_hour(h))
            .or_default()
            .merge(&b.callees);
        self.base_calls += b.calls;
        self.base_out.merge(&b.out);
    }

    fn call(&mut self, ts_us: i64, callee: Option<Number>, horizon: i64, grid: Grid) {
        let h = grid.hour(ts_us);
        match self.bucket(h, horizon, grid) {
            Some(b) => {
                b.calls += 1;
                if let Some(n) = callee {
                    b.callees.insert(n.raw());
                }
            }
            None => {
                self.base_calls += 1;
                if let Some(n) = callee {
                    self.days
                        .entry(grid.day_of_hour(h))
                        .or_default()
                        .insert(n.raw());
                }
            }
        }
    }

    fn outcome(&mut self, o: &OutcomeRow, horizon: i64, grid: Grid) {
        match self.bucket(grid.hour(o.ts_us), horizon, grid) {
            Some(b) => b.out.add(o),
            None => self.base_out.add(o),
        }
    }
}

// ---- per caller ----

const ALLOWLISTED: u8 = 1;
const MANY_SOURCES: u8 = 2;
const MANY_TRUNKS: u8 = 4;
const NONE_U32: u32 = u32::MAX;
const NONE_U16: u16 = u16::MAX;

/// What is kept about one caller (160 bytes).
struct Caller {
    callees: Callees,
    calls: u32,
    callbacks: u32,
    hour: i64,
    in_hour: u32,
    max_hour: u32,
    answered: u32,
    short: u32,
    cancelled: u32,
    last_us: i64,
    /// The most recent inter-call gaps up to an hour, in tenths of a
    /// second, as a ring; `gap_n` counts every gap written.
    gaps: [u16; GAPS],
    gap_n: u32,
    /// Local hours of day the caller called in, one bit each.
    hours: u32,
    source: u32,
    trunk: u16,
    flags: u8,
}

impl Caller {
    fn new() -> Caller {
        Caller {
            callees: Callees::default(),
            calls: 0,
            callbacks: 0,
            hour: i64::MIN,
            in_hour: 0,
            max_hour: 0,
            answered: 0,
            short: 0,
            cancelled: 0,
            last_us: i64::MIN,
            gaps: [0; GAPS],
            gap_n: 0,
            hours: 0,
            source: NONE_U32,
            trunk: NONE_U16,
            flags: 0,
        }
    }

    fn call(&mut self, c: &CallRow, source: u32, trunk: u16) {
        self.calls = self.calls.saturating_add(1);
        if let Some(b) = c.callee {
            self.callees.insert(b.raw());
        }
        // Calls per clock hour. A row a little late from another node
        // counts in the current hour: an overestimate, which only keeps
        // a caller out of the slow SIM boxes.
        let h = c.ts_us.div_euclid(HOUR_US);
        if h > self.hour {
            self.hour = h;
            self.in_hour = 0;
        }
        self.in_hour += 1;
        self.max_hour = self.max_hour.max(self.in_hour);
        if self.last_us != i64::MIN {
            let gap_ds = (c.ts_us - self.last_us) / 100_000;
            if (0..=MAX_GAP_DS).contains(&gap_ds) {
                self.gaps[self.gap_n as usize % GAPS] = gap_ds as u16;
                self.gap_n = self.gap_n.saturating_add(1);
            }
        }
        self.last_us = self.last_us.max(c.ts_us);
        self.hours |= 1 << (c.time.hour % 24);
        if self.calls == 1 {
            self.source = source;
            self.trunk = trunk;
        } else {
            if self.source != source {
                self.flags |= MANY_SOURCES;
            }
            if self.trunk != trunk {
                self.flags |= MANY_TRUNKS;
            }
        }
    }

    fn outcome(&mut self, o: &OutcomeRow) {
        match o.kind {
            OutcomeKind::Answered => {
                self.answered = self.answered.saturating_add(1);
                self.short = self.short.saturating_add(u32::from(o.ms < SHORT_TALK_MS));
            }
            OutcomeKind::Cancelled => self.cancelled = self.cancelled.saturating_add(1),
            OutcomeKind::Started | OutcomeKind::Ended => {}
        }
    }

    fn ratios(&self) -> (Option<f64>, Option<f64>) {
        let n = self.answered + self.cancelled;
        if n < MIN_OUTCOMES {
            return (None, None);
        }
        let answer = f64::from(self.answered) / f64::from(n);
        let short = (self.answered > 0).then(|| f64::from(self.short) / f64::from(self.answered));
        (Some(answer), short)
    }

    /// The median gap in seconds when the caller's recent gaps are
    /// machine-regular (interquartile range within 20% of the median).
    fn cadence(&self) -> Option<f64> {
        let n = (self.gap_n as usize).min(GAPS);
        if n < MIN_GAPS {
            return None;
        }
        let mut g = self.gaps;
        let g = &mut g[..n];
        g.sort_unstable();
        let median = if n.is_multiple_of(2) {
            (f64::from(g[n / 2 - 1]) + f64::from(g[n / 2])) / 2.0
        } else {
            f64::from(g[n / 2])
        };
        let spread = f64::from(g[3 * n / 4]) - f64::from(g[n / 4]);
        (median > 0.0 && spread <= REGULAR_SPREAD * median).then_some(median / 10.0)
    }
}

// ---- the pass ----

struct Tracker<'a> {
    plan: &'a NumberingPlan,
    opts: &'a TrendOptions,
    grid: Grid,
    recent_us: i64,
    min_ts: i64,
    max_ts: i64,
    calls: u64,
    callers: FxHashMap<u64, Caller>,
    untracked: Hll,
    sources: HashMap<String, u32>,
    source_names: Vec<String>,
    trunks: HashMap<String, u16>,
    trunk_info: Vec<(String, Option<TrunkKind>, Series)>,
    ranges: FxHashMap<u64, Series>,
    untracked_key_calls: u64,
}

impl<'a> Tracker<'a> {
    fn new(plan: &'a NumberingPlan, opts: &'a TrendOptions) -> Self {
        let recent_us = opts.recent_s.max(1).saturating_mul(1_000_000);
        let grid = if opts.until_us != 0 {
            let start = opts.until_us - recent_us;
            Grid {
                phase_us: start.rem_euclid(HOUR_US),
                day_anchor_us: start,
            }
        } else {
            Grid {
                phase_us: 0,
                day_anchor_us: 0,
            }
        };
        Tracker {
            plan,
            opts,
            grid,
            recent_us,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            calls: 0,
            callers: FxHashMap::default(),
            untracked: Hll::default(),
            sources: HashMap::new(),
            source_names: Vec::new(),
            trunks: HashMap::new(),
            trunk_info: Vec::new(),
            ranges: FxHashMap::default(),
            untracked_key_calls: 0,
        }
    }

    fn in_window(&mut self, ts_us: i64) -> bool {
        let o = self.opts;
        if (o.since_us != 0 && ts_us < o.since_us) || (o.until_us != 0 && ts_us >= o.until_us) {
            return false;
        }
        self.min_ts = self.min_ts.min(ts_us);
        self.max_ts = self.max_ts.max(ts_us);
        true
    }

    /// Hours before this one can no longer be in the recent period: the
    /// window's end is at least what it is now.
    fn horizon(&self) -> i64 {
        let until = if self.opts.until_us != 0 {
            self.opts.until_us
        } else {
            self.max_ts.saturating_add(1)
        };
        self.grid.hour(until - self.recent_us)
    }

    /// A foreign number's range key: its leading digits and their count.
    fn range_of(&self, n: Number) -> Option<u64> {
        if !n.is_e164() || self.plan.countries.classify(n).origin != Origin::Foreign {
            return None;
        }
        let len = self.opts.range_digits.clamp(1, n.len());
        Some((n.leading(len) << 8) | len as u64)
    }

    fn source_id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.sources.get(s) {
            return id;
        }
        if self.source_names.len() >= MAX_SOURCES {
            return NONE_U32;
        }
        let id = self.source_names.len() as u32;
        self.sources.insert(s.to_string(), id);
        self.source_names.push(s.to_string());
        id
    }

    fn trunk_id(&mut self, name: &str, kind: Option<TrunkKind>) -> u16 {
        if let Some(&id) = self.trunks.get(name) {
            return id;
        }
        if self.trunk_info.len() >= self.opts.max_keys.min(usize::from(NONE_U16)) {
            return NONE_U16;
        }
        let id = self.trunk_info.len() as u16;
        self.trunks.insert(name.to_string(), id);
        self.trunk_info
            .push((name.to_string(), kind, Series::default()));
        id
    }

    fn call(&mut self, c: &CallRow) {
        if !self.in_window(c.ts_us) {
            return;
        }
        self.calls += 1;
        // A callback: a callee of B's calling B.
        if let (Some(a), Some(b)) = (c.caller, c.callee) {
            if a != b {
                if let Some(st) = self.callers.get_mut(&b.raw()) {
                    if st.callees.contains(a.raw()) {
                        st.callbacks = st.callbacks.saturating_add(1);
                    }
                }
            }
        }
        if c.allowlisted {
            // Never a finding: remember that, and nothing else.
            if let Some(a) = c.caller {
                if let Some(st) = self.caller_entry(a) {
                    st.flags |= ALLOWLISTED;
                }
            }
            return;
        }
        let horizon = self.horizon();
        let grid = self.grid;
        let trunk = match &c.trunk {
            Some(name) => self.trunk_id(name, c.trunk_kind),
            None => NONE_U16,
        };
        let source = self.source_id(&c.source);
        if let Some(a) = c.caller {
            if let Some(st) = self.caller_entry(a) {
                st.call(c, source, trunk);
            }
            if let Some(key) = self.range_of(a) {
                match self.range_series(key) {
                    Some(s) => s.call(c.ts_us, c.callee, horizon, grid),
                    None => self.untracked_key_calls += 1,
                }
            }
        }
        if c.trunk.is_some() {
            match self.trunk_info.get_mut(usize::from(trunk)) {
                Some((_, _, s)) => s.call(c.ts_us, c.callee, horizon, grid),
                None => self.untracked_key_calls += 1,
            }
        }
    }

    fn caller_entry(&mut self, a: Number) -> Option<&mut Caller> {
        let full = self.callers.len() >= self.opts.max_callers;
        if full && !self.callers.contains_key(&a.raw()) {
            self.untracked.insert(a.raw());
            return None;
        }
        Some(self.callers.entry(a.raw()).or_insert_with(Caller::new))
    }

    fn range_series(&mut self, key: u64) -> Option<&mut Series> {
        if self.ranges.len() >= self.opts.max_keys && !self.ranges.contains_key(&key) {
            return None;
        }
        Some(self.ranges.entry(key).or_default())
    }

    fn outcome(&mut self, o: &OutcomeRow) {
        if !self.in_window(o.ts_us) {
            return;
        }
        if matches!(o.kind, OutcomeKind::Started | OutcomeKind::Ended) {
            return;
        }
        let horizon = self.horizon();
        let grid = self.grid;
        let mut trunk = NONE_U16;
        if let Some(st) = self.callers.get_mut(&o.caller.raw()) {
            if st.flags & ALLOWLISTED != 0 {
                return;
            }
            st.outcome(o);
            if st.flags & MANY_TRUNKS == 0 {
                trunk = st.trunk;
            }
        }
        if let Some(key) = self.range_of(o.caller) {
            if let Some(s) = self.ranges.get_mut(&key) {
                s.outcome(o, horizon, grid);
            }
        }
        if let Some((_, _, s)) = self.trunk_info.get_mut(usize::from(trunk)) {
            s.outcome(o, horizon, grid);
        }
    }

    fn finish(mut self) -> TrendReport {
        let (since, until) = if self.min_ts == i64::MAX {
            (self.opts.since_us, self.opts.until_us)
        } else {
            (
                if self.opts.since_us != 0 {
                    self.opts.since_us
                } else {
                    self.min_ts
                },
                if self.opts.until_us != 0 {
                    self.opts.until_us
                } else {
                    self.max_ts.saturating_add(1)
                },
            )
        };
        // The first hour bucket of the recent period, and where it starts.
        let first_recent = self.grid.hour(until - self.recent_us);
        let recent_since = first_recent * HOUR_US + self.grid.phase_us;
        // The baseline is the days the journal holds before the recent
        // period: a journal younger than the window (a node kept one for
        // three days, asked about seven) has fewer, and dividing by the
        // window's would make every steady range look like a surge.
        let held_since = if self.min_ts == i64::MAX {
            since
        } else {
            since.max(self.min_ts)
        };
        let baseline_days = (recent_since - held_since) as f64 / DAY_US as f64;
        let recent_days = (until - recent_since) as f64 / DAY_US as f64;
        let period = Period {
            first_recent,
            grid: self.grid,
            baseline_days,
            recent_days,
        };

        let mut surges = Vec::new();
        let ranges = std::mem::take(&mut self.ranges);
        for (key, series) in ranges {
            let (value, len) = (key >> 8, (key & 0xff) as usize);
            let label = format!("+{value:0len$}");
            if let Some(mut s) = self.surge(series, &period, "range", label.clone()) {
                s.country = self.country(value, len);
                s.suggestion = format!(
                    "{label}*, {}",
                    reason(&format!(
                        "trends: surge of calls to distinct subscribers from {}",
                        s.country
                    ))
                );
                surges.push(s);
            }
        }
        for i in 0..self.trunk_info.len() {
            let series = std::mem::take(&mut self.trunk_info[i].2);
            let (name, kind) = (&self.trunk_info[i].0, self.trunk_info[i].1);
            if let Some(mut s) = self.surge(series, &period, "trunk", name.clone()) {
                s.suggestion = trunk_rule(name, kind, s.baseline_callees_per_day, self.opts);
                surges.push(s);
            }
        }
        surges.sort_by(|a, b| {
            b.ratio
                .total_cmp(&a.ratio)
                .then(b.recent_callees.cmp(&a.recent_callees))
                .then_with(|| a.key.cmp(&b.key))
        });
        surges.truncate(MAX_FINDINGS);

        let slow_simboxes = self.slow_simboxes(since, until);
        let groups = self.groups();
        TrendReport {
            since_us: since,
            until_us: until,
            recent_since_us: recent_since,
            calls: self.calls,
            surges,
            slow_simboxes,
            groups,
            untracked_callers: self.untracked.estimate().round() as u64,
            untracked_key_calls: self.untracked_key_calls,
        }
    }

    fn country(&self, value: u64, len: usize) -> String {
        // The range's own digits padded to a full number, for the plan.
        let digits = format!("{value:0len$}{}", "0".repeat(12usize.saturating_sub(len)));
        let named = Number::e164(digits.as_bytes())
            .and_then(|n| self.plan.countries.classify(n).country)
            .and_then(|i| self.plan.countries.countries.get(usize::from(i)))
            .map(|c| c.name.clone());
        named.unwrap_or_else(|| {
            let cc = calling_code_len(value, len);
            format!("+{}", value / 10u64.pow((len - cc) as u32))
        })
    }

    fn surge(&self, mut series: Series, p: &Period, scope: &str, key: String) -> Option<Surge> {
        if p.baseline_days < 1.0 {
            // Less than a day before the recent period: nothing to compare.
            return None;
        }
        let mut recent = Bucket::default();
        while let Some((h, b)) = series.hours.pop_front() {
            if h >= p.first_recent {
                recent.callees.merge(&b.callees);
                recent.calls += b.calls;
                recent.out.merge(&b.out);
            } else {
                series.fold(h, &b, p.grid);
            }
        }
        // An estimate, never more than the calls that reached them.
        let recent_callees = recent.callees.estimate().round().min(recent.calls as f64);
        let recent_per_day = recent_callees / p.recent_days.max(f64::MIN_POSITIVE);
        let baseline_per_day =
            series.days.values().map(Hll::estimate).sum::<f64>() / p.baseline_days;
        let ratio = recent_per_day / baseline_per_day.max(1.0);
        if ratio <= self.opts.surge_factor || recent_callees < f64::from(self.opts.surge_floor) {
            return None;
        }
        Some(Surge {
            scope: scope.into(),
            key,
            country: String::new(),
            recent_callees: recent_callees as u64,
            recent_callees_per_day: round3(recent_per_day),
            baseline_callees_per_day: round3(baseline_per_day),
            ratio: round3(ratio),
            recent_calls: recent.calls,
            baseline_calls_per_day: round3(series.base_calls as f64 / p.baseline_days),
            recent_answer_ratio: recent.out.answer_ratio().map(round3),
            baseline_answer_ratio: series.base_out.answer_ratio().map(round3),
            recent_short_ratio: recent.out.short_ratio().map(round3),
            baseline_short_ratio: series.base_out.short_ratio().map(round3),
            suggestion: String::new(),
        })
    }

    fn slow_simboxes(&self, since: i64, until: i64) -> Vec<SlowSimbox> {
        let o = self.opts;
        let window_days = ((until - since).max(1) + DAY_US - 1) / DAY_US;
        let window_s = u32::try_from(window_days * 86_400).unwrap_or(u32::MAX);
        let rule = format!(
            "# a fan_out rule over {window_days} days; a rule file holds one fan_out rule,\n\
             # so this one replaces the file's own for a backtest\n\
             [[rule]]\n\
             id = \"trends_slow_fan_out\"\n\
             kind = \"fan_out\"\n\
             window_s = {window_s}\n\
             max = {}\n\
             max_called_back = {:?}\n\
             score = 60\n\
             mode = \"shadow\"\n",
            o.slow_min_callees.saturating_sub(1),
            o.slow_max_called_back.clamp(0.0, 1.0)
        );
        let mut out: Vec<SlowSimbox> = self
            .callers
            .iter()
            .filter(|(_, c)| c.flags & ALLOWLISTED == 0)
            .filter(|(_, c)| c.max_hour <= o.slow_max_per_hour)
            .filter_map(|(&raw, c)| {
                let callees = c.callees.estimate().min(c.calls);
                if callees < o.slow_min_callees.max(1) {
                    return None;
                }
                let back = f64::from(c.callbacks.min(callees)) / f64::from(callees);
                if back > o.slow_max_called_back {
                    return None;
                }
                let (answer, short) = c.ratios();
                // With outcomes: few answered, or most answered ones short.
                if let Some(a) = answer {
                    if a >= 0.5 && short.is_none_or(|s| s < 0.5) {
                        return None;
                    }
                }
                let number = Number::from_raw(raw)?.to_string();
                Some(SlowSimbox {
                    suggestion: format!(
                        "{number}, {}",
                        reason(&format!(
                            "trends: slow SIM box ({callees} callees, at most {} calls an hour, {} callbacks)",
                            c.max_hour, c.callbacks
                        ))
                    ),
                    number,
                    callees,
                    calls: c.calls,
                    max_per_hour: c.max_hour,
                    callbacks: c.callbacks,
                    answer_ratio: answer.map(round3),
                    short_ratio: short.map(round3),
                    rule: rule.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.callees
                .cmp(&a.callees)
                .then(b.calls.cmp(&a.calls))
                .then_with(|| a.number.cmp(&b.number))
        });
        out.truncate(MAX_FINDINGS);
        out
    }

    fn groups(&self) -> Vec<Group> {
        let o = self.opts;
        // Regular callers by the one source and the one trunk they use.
        let mut by_source: HashMap<u32, Vec<Member>> = HashMap::new();
        let mut by_trunk: HashMap<u16, Vec<Member>> = HashMap::new();
        for (&raw, c) in &self.callers {
            if c.flags & ALLOWLISTED != 0 {
                continue;
            }
            let Some(gap) = c.cadence() else { continue };
            let m = Member {
                raw,
                gap,
                calls: c.calls,
                hours: c.hours,
            };
            if c.flags & MANY_SOURCES == 0 && c.source != NONE_U32 {
                by_source.entry(c.source).or_default().push(m);
            }
            if c.flags & MANY_TRUNKS == 0 && c.trunk != NONE_U16 {
                by_trunk.entry(c.trunk).or_default().push(m);
            }
        }
        let mut groups = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut sources: Vec<_> = by_source.into_iter().collect();
        sources.sort_by_key(|(id, _)| *id);
        for (id, members) in sources {
            let shared = format!("source {}", self.source_names[id as usize]);
            for g in cluster(members, o) {
                seen.extend(g.iter().map(|m| m.raw));
                groups.push(group(g, shared.clone()));
            }
        }
        let mut trunks: Vec<_> = by_trunk.into_iter().collect();
        trunks.sort_by_key(|(id, _)| *id);
        for (id, members) in trunks {
            let shared = format!("trunk {}", self.trunk_info[usize::from(id)].0);
            for g in cluster(members, o) {
                // Already reported on their common source.
                if g.iter().all(|m| seen.contains(&m.raw)) {
                    continue;
                }
                groups.push(group(g, shared.clone()));
            }
        }
        groups.sort_by(|a, b| {
            b.size
                .cmp(&a.size)
                .then(b.calls.cmp(&a.calls))
                .then_with(|| a.shared.cmp(&b.shared))
        });
        groups.truncate(MAX_FINDINGS);
        groups
    }
}

/// Where the recent period starts and how long each part is.
struct Period {
    first_recent: i64,
    grid: Grid,
    baseline_days: f64,
    recent_days: f64,
}

#[derive(Clone, Copy)]
struct Member {
    raw: u64,
    gap: f64,
    calls: u32,
    hours: u32,
}

/// Runs of callers whose median gaps lie within the tolerance of the
/// run's smallest, each at least `group_min` long.
fn cluster(mut members: Vec<Member>, o: &TrendOptions) -> Vec<Vec<Member>> {
    let min = o.group_min.max(2);
    if members.len() < min {
        return Vec::new();
    }
    members.sort_by(|a, b| a.gap.total_cmp(&b.gap).then(a.raw.cmp(&b.raw)));
    let mut out = Vec::new();
    let mut i = 0;
    while i < members.len() {
        let top = members[i].gap * (1.0 + o.group_gap_tolerance);
        let j = i + members[i..].iter().take_while(|m| m.gap <= top).count();
        if j - i >= min {
            out.push(members[i..j].to_vec());
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn group(g: Vec<Member>, shared: String) -> Group {
    let median = g[g.len() / 2].gap;
    let (lo, hi) = (g[0].gap, g[g.len() - 1].gap);
    let hours = g.iter().fold(0, |h, m| h | m.hours);
    let numbers: Vec<String> = g
        .iter()
        .filter_map(|m| Number::from_raw(m.raw))
        .map(|n| n.to_string())
        .collect();
    let suggestion = numbers
        .iter()
        .map(|n| {
            let on = shared.split(' ').next().unwrap_or("source");
            format!(
                "{n}, {}",
                reason(&format!(
                    "trends: one of {} callers keeping one cadence on one {on}",
                    g.len()
                ))
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Group {
        size: numbers.len(),
        numbers: numbers.into_iter().take(MAX_GROUP_NUMBERS).collect(),
        shared,
        pattern: format!(
            "a call every {median:.0} s (medians {lo:.0}-{hi:.0} s), hours {}",
            HourSet(hours)
        ),
        median_gap_s: round3(median),
        calls: g.iter().map(|m| u64::from(m.calls)).sum(),
        suggestion,
    }
}

/// Hours of day as runs: `09-11,20`.
struct HourSet(u32);

impl fmt::Display for HourSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut h = 0;
        while h < 24 {
            if self.0 & (1 << h) == 0 {
                h += 1;
                continue;
            }
            let start = h;
            while h + 1 < 24 && self.0 & (1 << (h + 1)) != 0 {
                h += 1;
            }
            if !first {
                f.write_char(',')?;
            }
            first = false;
            if start == h {
                write!(f, "{start:02}")?;
            } else {
                write!(f, "{start:02}-{h:02}")?;
            }
            h += 1;
        }
        Ok(())
    }
}

/// A figure to three decimals, as reports show it and JSON carries it
/// back unchanged (and never `-0`).
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0 + 0.0
}

/// A list line's reason: no quotes, backslashes or control characters
/// (the list parser refuses them), no `#` (it starts a comment), at
/// most [`kuzet_rules::list::MAX_REASON_LEN`] bytes.
fn reason(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c == '"' || c == '\\' || c == '#' || c.is_control() {
            continue;
        }
        if out.len() + c.len_utf8() > kuzet_rules::list::MAX_REASON_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// A shadow `fan_out` rule scoped to a trunk's kind: a caller alone
/// reaching in a day what the whole trunk used to.
fn trunk_rule(name: &str, kind: Option<TrunkKind>, baseline: f64, o: &TrendOptions) -> String {
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let max = (baseline.ceil() as u32).max(o.surge_floor);
    let mut rule = format!(
        "# a caller alone reaching in a day what trunk {id} used to;\n\
         # a rule file holds one fan_out rule, so this one replaces the file's own\n\
         [[rule]]\n\
         id = \"trends_surge_{id}\"\n\
         kind = \"fan_out\"\n\
         window_s = 86400\n\
         max = {max}\n\
         max_called_back = {:?}\n\
         score = 60\n\
         mode = \"shadow\"\n",
        o.slow_max_called_back.clamp(0.0, 1.0)
    );
    if let Some(k) = kind {
        let _ = write!(rule, "[rule.scope]\ntrunks = [\"{}\"]\n", k.as_str());
    }
    rule
}

/// How many leading digits of an E.164 number are its country calling
/// code (ITU-T E.164 assignments: 1 and 7 are one digit, these two, and
/// every other code three).
fn calling_code_len(value: u64, len: usize) -> usize {
    const TWO: &[u64] = &[
        20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55,
        56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
    ];
    let lead = |n: usize| value / 10u64.pow(len.saturating_sub(n) as u32);
    let cc = if matches!(lead(1), 1 | 7) {
        1
    } else if TWO.contains(&lead(2)) {
        2
    } else {
        3
    };
    cc.min(len)
}
