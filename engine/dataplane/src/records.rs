//! The record queue: where the call path leaves each verdict worth
//! recording, in a memory-mapped file in the data directory, so a record
//! outlives the process that answered the call.
//!
//! A [`RecordRing`] is a ring of variable-length entries over shared
//! memory ([`kuzet_net::SharedWords`]): a header, then data words. Any
//! number of workers write at once and one recorder reads. A worker
//! reserves room with one compare-and-swap on `head` (never a lock, never
//! a wait: a full ring refuses), writes its entry into the reserved words
//! and publishes it with one release store. The recorder reads entries in
//! order and hands them to the store; once the store has committed them,
//! `tail` moves past them and their room is free. A SIGKILL leaves the
//! file as it was (the kernel keeps a shared mapping's pages), so a
//! restart replays every entry between `tail` and `head` before serving:
//! every verdict id a caller was given is found. A power cut can still
//! lose what the kernel had not yet written back.
//!
//! Room is reserved by class, so the records that matter most are dropped
//! last: a call whose verdict id goes to the caller (a block, a redirect)
//! may fill the ring; a low-value record (a flag, a sampled or shadow
//! allow) only the part outside the reserve; a plain allow queued for HEP
//! alone half of that. A call that finds no room for its record is
//! answered without a verdict id, so no id ever names a record that does
//! not exist.
//!
//! An entry is `[start stamp][length and kind][done stamp][payload]`,
//! the stamps being its position + 1 mixed with a secret the ring keeps
//! in its header: a reader takes an entry only when its done stamp
//! matches, so a half-written entry (or one from an earlier lap) is never
//! read, and no payload a caller wrote in an earlier lap can pass for a
//! stamp. A writer clears the done word and writes the length before it
//! publishes the start stamp (release), so a reader that sees the start
//! stamp sees both. Entries are whole multiples of four words and never
//! wrap; the end of the ring is skipped with a padding entry. A header
//! that does not add up (a damaged file) is never trusted: the file is
//! made anew, and the loss is said.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use kuzet_net::SharedWords;
use kuzet_rules::ruleset::Decision;
use kuzet_rules::Number;

/// `KZRQ` and the layout's version.
const MAGIC: u64 = 0x4b5a_5251_0000_0001;
/// Header words before the data.
const HEADER: usize = 8;
const H_MAGIC: usize = 0;
const H_CAP: usize = 1;
const H_HEAD: usize = 2;
const H_TAIL: usize = 3;
/// The secret mixed into every stamp.
const H_KEY: usize = 4;
/// Words of an entry's own header.
const ENTRY_HEAD: usize = 3;
/// Entries are multiples of this many words, so the end of the ring
/// always has room for a padding entry's header.
const ALIGN: usize = 4;

const KIND_RECORD: u64 = 1;
const KIND_PAD: u64 = 2;
const KIND_VOID: u64 = 3;

/// The payload format this build writes: 2 names the lists' version by
/// sequence and content digest. Format 1 entries (`<start>.<generation>`)
/// left by an older kuzet are still read, so an upgrade loses none.
const FORMAT: u8 = 2;

/// How much of the ring an entry may use: records whose verdict id the
/// caller is given may fill it; others stop short of the reserve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A block or a redirect: its verdict id goes to the caller.
    IdGiven,
    /// A flag, a sampled allow, a shadow verdict that differs.
    Low,
    /// A plain allow queued for HEP alone.
    HepOnly,
}

/// The record queue (see the module docs).
pub struct RecordRing {
    mem: SharedWords,
    cap: usize,
    limit_low: usize,
    limit_hep: usize,
}

/// Why a ring file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RingError(pub String);

impl RecordRing {
    /// The ring in `file`: the one an earlier process left there, with
    /// its entries and at its own size, so they can be replayed
    /// ([`RecordRing::replay`]); or, in a new or unreadable file, a fresh
    /// ring of about `bytes` bytes. `reserve_percent` of it is kept for
    /// records whose id is given. After a replay, a ring of another size
    /// than asked is made anew with [`RecordRing::fresh`].
    pub fn in_file(
        file: &std::fs::File,
        bytes: usize,
        reserve_percent: u8,
    ) -> Result<RecordRing, RingError> {
        let len = file
            .metadata()
            .map_err(|e| RingError(format!("reading the record queue: {e}")))?
            .len() as usize;
        if len >= (HEADER + ALIGN * 64) * 8 && len.is_multiple_of(8) {
            let mem = SharedWords::map_file(file, len / 8)
                .map_err(|e| RingError(format!("mapping the record queue: {e}")))?;
            let w = mem.words();
            let cap = w[H_CAP].load(Ordering::Acquire) as usize;
            let (head, tail) = (
                w[H_HEAD].load(Ordering::Acquire),
                w[H_TAIL].load(Ordering::Acquire),
            );
            let magic = w[H_MAGIC].load(Ordering::Acquire);
            let sound = magic == MAGIC
                && HEADER + cap == len / 8
                && cap.is_multiple_of(ALIGN)
                && tail <= head
                && head - tail <= cap as u64
                && head.is_multiple_of(ALIGN as u64)
                && tail.is_multiple_of(ALIGN as u64);
            if sound {
                return Ok(Self::over(mem, cap, reserve_percent));
            }
            tracing::warn!(
                bytes = len,
                "the record queue's file is not one this kuzet can read (another version, or damaged): made anew; records it held, if any, are lost"
            );
        }
        Self::fresh(file, bytes, reserve_percent)
    }

    /// A new, empty ring of about `bytes` bytes in `file`, whatever it
    /// held.
    pub fn fresh(
        file: &std::fs::File,
        bytes: usize,
        reserve_percent: u8,
    ) -> Result<RecordRing, RingError> {
        let cap = Self::words_for(bytes);
        allocate(file, (HEADER + cap) * 8)
            .map_err(|e| RingError(format!("making the record queue ({bytes} bytes): {e}")))?;
        let mem = SharedWords::map_file(file, HEADER + cap)
            .map_err(|e| RingError(format!("mapping the record queue: {e}")))?;
        let r = Self::over(mem, cap, reserve_percent);
        r.init();
        Ok(r)
    }

    /// True when the ring holds about `bytes` bytes (as [`RecordRing::fresh`]
    /// would make it).
    pub fn is_size(&self, bytes: usize) -> bool {
        self.cap == Self::words_for(bytes)
    }

    /// A ring in memory only (kuzet without a store): nothing survives
    /// the process, which has nothing to replay into anyway.
    pub fn in_memory(bytes: usize, reserve_percent: u8) -> Result<RecordRing, RingError> {
        let cap = Self::words_for(bytes);
        let mem = SharedWords::anonymous(HEADER + cap)
            .map_err(|e| RingError(format!("allocating the record queue: {e}")))?;
        let r = Self::over(mem, cap, reserve_percent);
        r.init();
        Ok(r)
    }

    fn words_for(bytes: usize) -> usize {
        let words = (bytes / 8).max(ALIGN * 64);
        words - words % ALIGN
    }

    fn over(mem: SharedWords, cap: usize, reserve_percent: u8) -> RecordRing {
        let reserve = cap * usize::from(reserve_percent.min(90)) / 100;
        let limit_low = cap - reserve;
        RecordRing {
            mem,
            cap,
            limit_low,
            limit_hep: limit_low / 2,
        }
    }

    /// Marks a fresh ring (its memory all zeros: a file [`allocate`]
    /// wrote, or anonymous memory) as kuzet's and empty. Its data is not
    /// touched, so its pages come into memory only as records use them.
    fn init(&self) {
        let h = self.header();
        h[H_KEY].store(ring_key(), Ordering::Relaxed);
        h[H_CAP].store(self.cap as u64, Ordering::Relaxed);
        h[H_HEAD].store(0, Ordering::Relaxed);
        h[H_TAIL].store(0, Ordering::Relaxed);
        h[H_MAGIC].store(MAGIC, Ordering::Release);
    }

    fn header(&self) -> &[AtomicU64] {
        &self.mem.words()[..HEADER]
    }

    /// The stamp of the entry at `pos`: its position + 1, mixed with the
    /// ring's secret (never 0 for a live entry of a fresh ring, and never
    /// something a payload could be made to hold).
    fn stamp(&self, pos: u64) -> u64 {
        (pos + 1) ^ self.header()[H_KEY].load(Ordering::Relaxed)
    }

    fn data(&self) -> &[AtomicU64] {
        &self.mem.words()[HEADER..]
    }

    /// Bytes of room in all.
    pub fn capacity_bytes(&self) -> u64 {
        (self.cap * 8) as u64
    }

    /// Bytes kept for records whose verdict id is given.
    pub fn reserved_bytes(&self) -> u64 {
        ((self.cap - self.limit_low) * 8) as u64
    }

    /// Bytes held now: written and not yet committed to the store.
    pub fn used_bytes(&self) -> u64 {
        let h = self.header();
        let head = h[H_HEAD].load(Ordering::Acquire);
        let tail = h[H_TAIL].load(Ordering::Acquire);
        head.saturating_sub(tail) * 8
    }

    /// Reserves room for an entry of `payload` bytes in `class`; `None`
    /// when the ring has no room for that class (never waits).
    pub fn reserve(&self, payload: usize, class: Class) -> Option<Slot<'_>> {
        let need = ENTRY_HEAD + payload.div_ceil(8);
        let need = need.div_ceil(ALIGN) * ALIGN;
        let limit = match class {
            Class::IdGiven => self.cap,
            Class::Low => self.limit_low,
            Class::HepOnly => self.limit_hep,
        };
        if need > limit {
            return None;
        }
        let h = self.header();
        let data = self.data();
        let mut head = h[H_HEAD].load(Ordering::Acquire);
        loop {
            let tail = h[H_TAIL].load(Ordering::Acquire);
            if tail > head {
                // `head` was read before the recorder freed past it: read
                // it again rather than compute a negative fill.
                head = h[H_HEAD].load(Ordering::Acquire);
                continue;
            }
            let off = (head % self.cap as u64) as usize;
            let pad = if off + need > self.cap {
                self.cap - off
            } else {
                0
            };
            let total = (pad + need) as u64;
            if head + total - tail > limit as u64 {
                return None;
            }
            match h[H_HEAD].compare_exchange_weak(
                head,
                head + total,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if pad > 0 {
                        let stamp = self.stamp(head);
                        data[off + 1].store(pad as u64 | KIND_PAD << 32, Ordering::Relaxed);
                        data[off].store(stamp, Ordering::Relaxed);
                        data[off + 2].store(stamp, Ordering::Release);
                    }
                    let pos = head + pad as u64;
                    let at = (pos % self.cap as u64) as usize;
                    // The done word cleared and the length written before
                    // the start stamp is published.
                    data[at + 2].store(0, Ordering::Relaxed);
                    data[at + 1].store(need as u64 | KIND_RECORD << 32, Ordering::Relaxed);
                    data[at].store(self.stamp(pos), Ordering::Release);
                    return Some(Slot {
                        ring: self,
                        pos,
                        at,
                        end: at + need,
                        w: at + ENTRY_HEAD,
                        acc: 0,
                        nacc: 0,
                        done: false,
                    });
                }
                Err(now) => head = now,
            }
        }
    }

    /// Where reading starts: the first entry not yet committed.
    pub fn tail(&self) -> u64 {
        self.header()[H_TAIL].load(Ordering::Acquire)
    }

    /// How far entries have been reserved.
    pub fn head(&self) -> u64 {
        self.header()[H_HEAD].load(Ordering::Acquire)
    }

    /// The entry at position `rd`, if one is there and published.
    pub fn read(&self, rd: u64) -> Read {
        let head = self.head();
        if rd >= head {
            return Read::Empty;
        }
        if !rd.is_multiple_of(ALIGN as u64) {
            return Read::Corrupt;
        }
        let data = self.data();
        let at = (rd % self.cap as u64) as usize;
        let (Some(start), Some(lk), Some(done)) =
            (data.get(at), data.get(at + 1), data.get(at + 2))
        else {
            return Read::Corrupt;
        };
        let stamp = self.stamp(rd);
        // A length is read only when it belongs to this entry, and only
        // used when it fits the ring.
        let sane = |len: u64| {
            len >= ENTRY_HEAD as u64
                && len.is_multiple_of(ALIGN as u64)
                && at as u64 + len <= self.cap as u64
        };
        if done.load(Ordering::Acquire) != stamp {
            if start.load(Ordering::Acquire) == stamp {
                let len = lk.load(Ordering::Relaxed) & 0xffff_ffff;
                return Read::Busy {
                    len: sane(len).then_some(len),
                };
            }
            return Read::Busy { len: None };
        }
        let lk = lk.load(Ordering::Relaxed);
        let len = lk & 0xffff_ffff;
        let kind = lk >> 32;
        if !sane(len) {
            return Read::Corrupt;
        }
        let len = len as usize;
        let next = rd + len as u64;
        match kind {
            KIND_RECORD => {
                let mut src = Source {
                    words: &data[at + ENTRY_HEAD..at + len],
                    w: 0,
                    acc: [0; 8],
                    nacc: 0,
                };
                Read::Entry(decode(&mut src).map(Box::new), next)
            }
            KIND_PAD | KIND_VOID => Read::Skip(next),
            _ => Read::Corrupt,
        }
    }

    /// Frees every entry before `upto`: the store committed them.
    pub fn release(&self, upto: u64) {
        self.header()[H_TAIL].fetch_max(upto, Ordering::AcqRel);
    }

    /// Reads every entry left between `tail` and `head` by an earlier
    /// process (call it before any worker writes): the entries, and how
    /// many bytes could not be read (an entry its writer had not finished
    /// when the process died, and whatever followed it unreadable).
    pub fn replay(&self) -> (Vec<(RecordEntry, u64)>, u64) {
        let mut out = Vec::new();
        let mut rd = self.tail();
        let head = self.head();
        let mut lost = 0u64;
        while rd < head {
            match self.read(rd) {
                Read::Entry(Ok(e), next) => {
                    out.push((*e, next));
                    rd = next;
                }
                Read::Entry(Err(_), next) => {
                    lost += (next - rd) * 8;
                    rd = next;
                }
                Read::Skip(next) => rd = next,
                Read::Busy { len: Some(len) } => {
                    lost += len * 8;
                    rd += len;
                }
                Read::Busy { len: None } | Read::Corrupt | Read::Empty => {
                    lost += (head - rd) * 8;
                    break;
                }
            }
        }
        (out, lost)
    }

    /// After a replay: everything up to `head` is done with.
    pub fn release_all(&self) {
        self.release(self.head());
    }

    /// Asks the kernel to write the ring's dirty pages back now.
    pub fn flush(&self) {
        let _ = self.mem.flush_async();
    }
}

/// A secret for a new ring's stamps: random, from the OS (the clock and
/// an address where it cannot be read).
fn ring_key() -> u64 {
    let mut k = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut k);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    u64::from_le_bytes(k) ^ t.rotate_left(29) ^ (&k as *const _ as u64)
}

/// Writes `len` zero bytes into `file` from the start and syncs it, so
/// every block of the ring is allocated before it is mapped: a write into
/// the mapping never needs a new block, and a disk that fills later can
/// never fault the call path (a shared mapping of a sparse file raises
/// SIGBUS when the file system has no block to give). On copy-on-write
/// file systems (btrfs, ZFS) overwrites allocate anyway: keep the data
/// directory on ext4 or XFS, or mark it no-CoW.
fn allocate(file: &std::fs::File, len: usize) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    file.set_len(0)?;
    let mut f = file;
    f.seek(std::io::SeekFrom::Start(0))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        f.write_all(&zeros[..n])?;
        left -= n;
    }
    f.sync_all()
}

/// What [`RecordRing::read`] found.
pub enum Read {
    /// Nothing more has been reserved.
    Empty,
    /// An entry is reserved there but not yet published; its length in
    /// words when its writer has got that far.
    Busy {
        /// Words, if known.
        len: Option<u64>,
    },
    /// A published entry (or why its payload did not decode), and where
    /// the next one starts.
    Entry(Result<Box<RecordEntry>, String>, u64),
    /// Padding or an abandoned entry: go on at this position.
    Skip(u64),
    /// Not a ring entry: the file was damaged.
    Corrupt,
}

/// A reserved entry being written. Dropped without
/// [`Slot::commit`] (a panic between), it is published as void, so the
/// reader skips it instead of waiting for it.
pub struct Slot<'r> {
    ring: &'r RecordRing,
    pos: u64,
    at: usize,
    end: usize,
    w: usize,
    acc: u64,
    nacc: usize,
    done: bool,
}

impl Slot<'_> {
    /// Publishes the entry: the reader may take it from now on.
    pub fn commit(mut self) {
        self.flush_acc();
        let data = self.ring.data();
        data[self.at + 2].store(self.ring.stamp(self.pos), Ordering::Release);
        self.done = true;
    }

    fn flush_acc(&mut self) {
        if self.nacc > 0 {
            if self.w < self.end {
                self.ring.data()[self.w].store(self.acc, Ordering::Relaxed);
            }
            self.w += 1;
            self.acc = 0;
            self.nacc = 0;
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let data = self.ring.data();
        let len = (self.end - self.at) as u64;
        data[self.at + 1].store(len | KIND_VOID << 32, Ordering::Relaxed);
        data[self.at + 2].store(self.ring.stamp(self.pos), Ordering::Release);
    }
}

/// Where an entry's payload is written: the ring, or a counter that sizes
/// it first.
pub trait Sink {
    /// Appends raw bytes.
    fn raw(&mut self, b: &[u8]);
    /// One byte.
    fn u8(&mut self, v: u8) {
        self.raw(&[v]);
    }
    /// Two bytes, little-endian.
    fn u16(&mut self, v: u16) {
        self.raw(&v.to_le_bytes());
    }
    /// Four bytes, little-endian.
    fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }
    /// Eight bytes, little-endian.
    fn u64(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }
    /// A length-prefixed byte string (cut at 4 GiB, which no SIP message
    /// reaches).
    fn bytes(&mut self, b: &[u8]) {
        let n = b.len().min(u32::MAX as usize);
        self.u32(n as u32);
        self.raw(&b[..n]);
    }
}

/// Counts what a payload would take.
#[derive(Default)]
pub struct Sizer(pub usize);

impl Sink for Sizer {
    fn raw(&mut self, b: &[u8]) {
        self.0 += b.len();
    }
}

impl Sink for Slot<'_> {
    fn raw(&mut self, mut b: &[u8]) {
        let data = self.ring.data();
        // Whole words go straight in when the accumulator is empty.
        while !b.is_empty() {
            if self.nacc == 0 && b.len() >= 8 {
                let mut word = [0u8; 8];
                word.copy_from_slice(&b[..8]);
                if self.w < self.end {
                    data[self.w].store(u64::from_le_bytes(word), Ordering::Relaxed);
                }
                self.w += 1;
                b = &b[8..];
                continue;
            }
            self.acc |= u64::from(b[0]) << (8 * self.nacc);
            self.nacc += 1;
            b = &b[1..];
            if self.nacc == 8 {
                self.flush_acc();
            }
        }
    }
}

/// Reads a payload back, byte by byte over the words.
struct Source<'a> {
    words: &'a [AtomicU64],
    w: usize,
    acc: [u8; 8],
    nacc: usize,
}

impl Source<'_> {
    fn raw(&mut self, out: &mut [u8]) -> Result<(), String> {
        let mut i = 0;
        while i < out.len() {
            if self.nacc == 0 {
                let word = self
                    .words
                    .get(self.w)
                    .ok_or("entry payload ends early")?
                    .load(Ordering::Relaxed);
                self.w += 1;
                if out.len() - i >= 8 {
                    out[i..i + 8].copy_from_slice(&word.to_le_bytes());
                    i += 8;
                    continue;
                }
                self.acc = word.to_le_bytes();
                self.nacc = 8;
            }
            out[i] = self.acc[8 - self.nacc];
            self.nacc -= 1;
            i += 1;
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.raw(&mut b)?;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        if n > (self.words.len() - self.w) * 8 + self.nacc {
            return Err("a field longer than its entry".into());
        }
        let mut v = vec![0u8; n];
        self.raw(&mut v)?;
        Ok(v)
    }

    fn text(&mut self) -> Result<String, String> {
        Ok(String::from_utf8_lossy(&self.bytes()?).into_owned())
    }
}

/// What a record says of its caller's number: how far the network vouches
/// for it.
pub mod trust {
    /// No A-number.
    pub const NONE: u8 = 0;
    /// Asserted in P-Asserted-Identity by a trunk trusted to assert it.
    pub const NETWORK: u8 = 1;
    /// What the caller wrote (From, or PAI from an untrusted source).
    pub const CLAIMED: u8 = 2;

    /// Its name in records: `network`, `claimed` or empty.
    pub fn name(t: u8) -> &'static str {
        match t {
            NETWORK => "network",
            CLAIMED => "claimed",
            _ => "",
        }
    }
}

/// What a record makes of its caller (see `kuzet_store`'s roles).
pub mod role {
    /// Nothing suspect.
    pub const NONE: u8 = 0;
    /// An attributable suspect.
    pub const SOURCE: u8 = 1;
    /// A suspect nobody vouches for.
    pub const CLAIMED: u8 = 2;
    /// A caller-ID spoof: the presented numbers are victims.
    pub const IMPERSONATED: u8 = 3;
    /// It dialled a listed number.
    pub const POTENTIAL_VICTIM: u8 = 4;

    /// Its name in records.
    pub fn name(r: u8) -> &'static str {
        match r {
            SOURCE => "source",
            CLAIMED => "claimed",
            IMPERSONATED => "impersonated",
            POTENTIAL_VICTIM => "potential_victim",
            _ => "",
        }
    }
}

/// Entry flags.
pub mod flags {
    /// Recorded (false: a plain allow for HEP alone).
    pub const RECORD: u8 = 1;
    /// An allowed call kept as a sample.
    pub const SAMPLED: u8 = 2;
    /// It came over TCP.
    pub const TCP: u8 = 4;
    /// The caller was given its verdict id.
    pub const ID_GIVEN: u8 = 8;
}

/// One rule that fired, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleEntry {
    /// The rule's id.
    pub id: String,
    /// What it measured.
    pub value: u32,
    /// Its threshold.
    pub threshold: u32,
    /// Shadow: reported, not enforced.
    pub shadow: bool,
    /// What it measured, in words (`21 calls > 20`).
    pub why: String,
}

/// The list entry a call matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListHitEntry {
    /// The list.
    pub list: String,
    /// The side that matched.
    pub side: String,
    /// The number itself, not a range.
    pub exact: bool,
    /// The list line's reason.
    pub reason: String,
}

/// A record as read back from the ring: everything the store and HEP need,
/// so nothing of the snapshot that judged the call is needed to explain
/// it (after a restart, that snapshot is gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    /// [`flags`].
    pub flags: u8,
    /// The decision.
    pub decision: Decision,
    /// What shadow rules would have made it.
    pub shadow_decision: Decision,
    /// The SIP answer (block code, 302, or 0 when forwarded).
    pub code: u16,
    /// The enforced score.
    pub score: u32,
    /// When it was judged, µs since the epoch.
    pub ts_us: i64,
    /// The node's hash.
    pub node: u32,
    /// The verdict's internal sequence.
    pub seq: u64,
    /// The verdict id as given out (24 hex digits).
    pub verdict_id: String,
    /// The A-number scored.
    pub a: Option<Number>,
    /// The B-number.
    pub b: Option<Number>,
    /// The number in From.
    pub from: Option<Number>,
    /// The number in PAI.
    pub pai: Option<Number>,
    /// [`trust`].
    pub a_trust: u8,
    /// [`role`].
    pub caller_role: u8,
    /// Where the request came from.
    pub source: SocketAddr,
    /// The trunk's name and kind.
    pub trunk: Option<(String, String)>,
    /// The lists' version that judged it.
    pub lists_version: String,
    /// The Call-ID.
    pub call_id: String,
    /// The Request-URI as received.
    pub ruri: String,
    /// From as received.
    pub from_hdr: String,
    /// PAI as received.
    pub pai_hdr: String,
    /// Every rule that fired.
    pub rules: Vec<RuleEntry>,
    /// The list entry that matched.
    pub list_hit: Option<ListHitEntry>,
    /// The start line and header section (identity and routing headers
    /// whole; others up to a budget).
    pub head: Vec<u8>,
    /// kuzet's answer, when HEP mirrors SIP.
    pub answer: Vec<u8>,
}

impl RecordEntry {
    /// The explanation, as the verdict header writes it.
    pub fn explanation(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                s.push_str("; ");
            }
            s.push_str(&r.id);
            s.push_str(": ");
            s.push_str(&r.why);
        }
        s
    }

    /// A flag is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// The borrowed facts of one record, written on the call path.
pub struct Facts<'a> {
    /// [`flags`].
    pub flags: u8,
    /// The decision.
    pub decision: Decision,
    /// The shadow decision.
    pub shadow_decision: Decision,
    /// The SIP answer.
    pub code: u16,
    /// The enforced score.
    pub score: u32,
    /// When, µs since the epoch.
    pub ts_us: i64,
    /// The node's hash.
    pub node: u32,
    /// The internal sequence.
    pub seq: u64,
    /// The verdict id as given out, 24 hex digits (empty: none).
    pub verdict_id: &'a [u8],
    /// The numbers: A, B, From, PAI.
    pub numbers: [Option<Number>; 4],
    /// [`trust`].
    pub a_trust: u8,
    /// [`role`].
    pub caller_role: u8,
    /// The source address.
    pub source: SocketAddr,
    /// The trunk's name and kind.
    pub trunk: Option<(&'a str, &'a str)>,
    /// The version of the snapshot that judged it.
    pub version: kuzet_rules::snapshot::Version,
    /// Call-ID, Request-URI, From, PAI as received.
    pub call_id: &'a [u8],
    /// The Request-URI.
    pub ruri: &'a [u8],
    /// From.
    pub from_hdr: &'a [u8],
    /// PAI.
    pub pai_hdr: &'a [u8],
    /// Fired rules: id, value, threshold, shadow, why.
    pub rules: &'a [(&'a str, u32, u32, bool, &'a [u8])],
    /// The list hit: list, side, exact, reason.
    pub list_hit: Option<(&'a str, &'a str, bool, &'a str)>,
    /// The header section's parts, in order (written back to back).
    pub head: &'a [&'a [u8]],
}

/// Writes `f`'s payload (all but the answer, which [`put_answer`] adds
/// last) into `s`.
pub fn put_facts<S: Sink>(s: &mut S, f: &Facts<'_>) {
    s.u8(FORMAT);
    s.u8(f.flags);
    s.u8(f.decision as u8);
    s.u8(f.shadow_decision as u8);
    s.u16(f.code);
    s.u32(f.score);
    s.u64(f.ts_us as u64);
    s.u32(f.node);
    s.u64(f.seq);
    s.bytes(f.verdict_id);
    for n in f.numbers {
        s.u64(n.map_or(0, Number::raw));
    }
    s.u8(f.a_trust);
    s.u8(f.caller_role);
    match f.source.ip() {
        IpAddr::V4(ip) => {
            s.u8(4);
            s.raw(&ip.octets());
        }
        IpAddr::V6(ip) => {
            s.u8(6);
            s.raw(&ip.octets());
        }
    }
    s.u16(f.source.port());
    match f.trunk {
        Some((name, kind)) => {
            s.u8(1);
            s.bytes(name.as_bytes());
            s.bytes(kind.as_bytes());
        }
        None => s.u8(0),
    }
    s.u64(f.version.seq);
    s.raw(&f.version.digest);
    s.bytes(f.call_id);
    s.bytes(f.ruri);
    s.bytes(f.from_hdr);
    s.bytes(f.pai_hdr);
    s.u8(f.rules.len().min(255) as u8);
    for (id, value, threshold, shadow, why) in f.rules.iter().take(255) {
        s.bytes(id.as_bytes());
        s.u32(*value);
        s.u32(*threshold);
        s.u8(u8::from(*shadow));
        s.bytes(why);
    }
    match f.list_hit {
        Some((list, side, exact, reason)) => {
            s.u8(1);
            s.bytes(list.as_bytes());
            s.bytes(side.as_bytes());
            s.u8(u8::from(exact));
            s.bytes(reason.as_bytes());
        }
        None => s.u8(0),
    }
    let total: usize = f.head.iter().map(|p| p.len()).sum();
    s.u32(total.min(u32::MAX as usize) as u32);
    for p in f.head {
        s.raw(p);
    }
}

/// Writes the last field, kuzet's answer (empty when not mirrored).
pub fn put_answer<S: Sink>(s: &mut S, answer: &[u8]) {
    s.bytes(answer);
}

fn decision(v: u8) -> Result<Decision, String> {
    Ok(match v {
        0 => Decision::Allow,
        1 => Decision::Flag,
        2 => Decision::Redirect,
        3 => Decision::Block,
        _ => return Err(format!("unknown decision {v}")),
    })
}

fn decode(s: &mut Source<'_>) -> Result<RecordEntry, String> {
    let format = s.u8()?;
    if format != FORMAT && format != 1 {
        return Err(format!(
            "record format {format}, this kuzet reads 1 and {FORMAT}"
        ));
    }
    let flags = s.u8()?;
    let dec = decision(s.u8()?)?;
    let shadow = decision(s.u8()?)?;
    let code = s.u16()?;
    let score = s.u32()?;
    let ts_us = s.u64()? as i64;
    let node = s.u32()?;
    let seq = s.u64()?;
    let verdict_id = s.text()?;
    let mut nums = [None; 4];
    for n in &mut nums {
        let raw = s.u64()?;
        *n = if raw == 0 {
            None
        } else {
            Number::from_raw(raw)
        };
    }
    let a_trust = s.u8()?;
    let caller_role = s.u8()?;
    let ip = match s.u8()? {
        4 => IpAddr::from(s.array::<4>()?),
        6 => IpAddr::from(s.array::<16>()?),
        f => return Err(format!("unknown address family {f}")),
    };
    let port = s.u16()?;
    let trunk = match s.u8()? {
        0 => None,
        _ => Some((s.text()?, s.text()?)),
    };
    let lists_version = if format == 1 {
        let base = s.u64()? as i64;
        let generation = s.u64()?;
        format!("{base}.{generation}")
    } else {
        let seq = s.u64()?;
        let digest = s.array::<16>()?;
        kuzet_rules::snapshot::Version { seq, digest }.to_string()
    };
    let call_id = s.text()?;
    let ruri = s.text()?;
    let from_hdr = s.text()?;
    let pai_hdr = s.text()?;
    let n = s.u8()?;
    let mut rules = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        rules.push(RuleEntry {
            id: s.text()?,
            value: s.u32()?,
            threshold: s.u32()?,
            shadow: s.u8()? != 0,
            why: s.text()?,
        });
    }
    let list_hit = match s.u8()? {
        0 => None,
        _ => Some(ListHitEntry {
            list: s.text()?,
            side: s.text()?,
            exact: s.u8()? != 0,
            reason: s.text()?,
        }),
    };
    let head = s.bytes()?;
    let answer = s.bytes()?;
    Ok(RecordEntry {
        flags,
        decision: dec,
        shadow_decision: shadow,
        code,
        score,
        ts_us,
        node,
        seq,
        verdict_id,
        a: nums[0],
        b: nums[1],
        from: nums[2],
        pai: nums[3],
        a_trust,
        caller_role,
        source: SocketAddr::new(ip, port),
        trunk,
        lists_version,
        call_id,
        ruri,
        from_hdr,
        pai_hdr,
        rules,
        list_hit,
        head,
        answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        id: &'a [u8],
        head: &'a [&'a [u8]],
        rules: &'a [(&'a str, u32, u32, bool, &'a [u8])],
    ) -> Facts<'a> {
        Facts {
            flags: flags::RECORD | flags::ID_GIVEN,
            decision: Decision::Block,
            shadow_decision: Decision::Block,
            code: 603,
            score: 100,
            ts_us: 1_764_000_000_000_000,
            node: 7,
            seq: 42,
            verdict_id: id,
            numbers: [
                Number::e164(b"77011234567"),
                Number::e164(b"77020000001"),
                Number::e164(b"77011234567"),
                None,
            ],
            a_trust: trust::CLAIMED,
            caller_role: role::SOURCE,
            source: "[::1]:5060".parse().unwrap(),
            trunk: Some(("intl", "international")),
            version: kuzet_rules::snapshot::Version {
                seq: 3,
                digest: [0xab; 16],
            },
            call_id: b"abc\x1b[2J",
            ruri: b"sip:+77020000001@x",
            from_hdr: b"<sip:+77011234567@x>;tag=1",
            pai_hdr: b"",
            rules,
            list_hit: Some(("blocklist", "caller", true, "bank fraud desk")),
            head,
        }
    }

    fn write(r: &RecordRing, f: &Facts<'_>, class: Class, answer: &[u8]) -> bool {
        let mut size = Sizer::default();
        put_facts(&mut size, f);
        let Some(mut slot) = r.reserve(size.0 + 4 + answer.len(), class) else {
            return false;
        };
        put_facts(&mut slot, f);
        put_answer(&mut slot, answer);
        slot.commit();
        true
    }

    impl Sink for Vec<u8> {
        fn raw(&mut self, b: &[u8]) {
            self.extend_from_slice(b);
        }
    }

    /// An entry an older kuzet (format 1, the version as `<start>.<generation>`)
    /// left in the queue is still read after an upgrade.
    #[test]
    fn a_format_1_entry_left_by_an_older_kuzet_is_read() {
        let head: [&[u8]; 1] = [b"INVITE sip:x SIP/2.0\r\n"];
        let f = facts(b"00112233445566778899aabb", &head, &[]);
        let mut v2 = Vec::new();
        put_facts(&mut v2, &f);
        put_answer(&mut v2, b"SIP/2.0 603");
        // The same payload as format 1 wrote it.
        let mut version = 3u64.to_le_bytes().to_vec();
        version.extend_from_slice(&[0xab; 16]);
        let at = v2.windows(24).position(|w| w == version).unwrap();
        let mut v1 = v2[..at].to_vec();
        v1[0] = 1;
        v1.extend_from_slice(&1_764_000_000u64.to_le_bytes());
        v1.extend_from_slice(&7u64.to_le_bytes());
        v1.extend_from_slice(&v2[at + 24..]);
        let r = RecordRing::in_memory(64 * 1024, 25).unwrap();
        let mut slot = r.reserve(v1.len(), Class::IdGiven).unwrap();
        slot.raw(&v1);
        slot.commit();
        let Read::Entry(Ok(e), _) = r.read(r.tail()) else {
            panic!("no entry");
        };
        assert_eq!(e.lists_version, "1764000000.7");
        assert_eq!(e.answer, b"SIP/2.0 603");
        assert_eq!(e.verdict_id, "00112233445566778899aabb");
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let r = RecordRing::in_memory(64 * 1024, 25).unwrap();
        let head: [&[u8]; 2] = [b"INVITE sip:x SIP/2.0\r\n", b"Via: SIP/2.0/UDP a\r\n"];
        let rules: [(&str, u32, u32, bool, &[u8]); 2] = [
            ("blocklist", 0, 0, false, b"caller listed (bank fraud desk)"),
            ("velocity_1m", 21, 20, true, b"21 calls > 20 (shadow)"),
        ];
        assert!(write(
            &r,
            &facts(b"00112233445566778899aabb", &head, &rules),
            Class::IdGiven,
            b"SIP/2.0 603"
        ));
        let Read::Entry(Ok(e), next) = r.read(r.tail()) else {
            panic!("no entry");
        };
        assert_eq!(e.verdict_id, "00112233445566778899aabb");
        assert_eq!(e.code, 603);
        assert_eq!(e.a.unwrap().to_string(), "+77011234567");
        assert_eq!(e.pai, None);
        assert_eq!(e.source, "[::1]:5060".parse().unwrap());
        assert_eq!(e.call_id, "abc\x1b[2J");
        assert_eq!(e.trunk, Some(("intl".into(), "international".into())));
        assert_eq!(e.lists_version, format!("3.{}", "ab".repeat(16)));
        assert_eq!(
            e.explanation(),
            "blocklist: caller listed (bank fraud desk); velocity_1m: 21 calls > 20 (shadow)"
        );
        assert_eq!(e.head, b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n");
        assert_eq!(e.answer, b"SIP/2.0 603");
        assert_eq!(e.list_hit.as_ref().unwrap().reason, "bank fraud desk");
        assert!(matches!(r.read(next), Read::Empty));
    }

    #[test]
    fn classes_stop_short_of_the_reserve_and_room_returns_on_release() {
        let r = RecordRing::in_memory(64 * 1024, 50).unwrap();
        let pad = vec![b'x'; 2000];
        let head: [&[u8]; 1] = [&pad];
        let f = facts(b"", &head, &[]);
        let mut low = 0;
        while write(&r, &f, Class::Low, b"") {
            low += 1;
        }
        // The low class stopped at about half; blocks still fit.
        assert!((12..=16).contains(&low), "{low}");
        let mut given = 0;
        while write(&r, &f, Class::IdGiven, b"") {
            given += 1;
        }
        assert!(given >= 12, "{given}");
        assert!(!write(&r, &f, Class::HepOnly, b""));
        // Read everything, release: room again for all classes.
        let mut rd = r.tail();
        let mut n = 0;
        loop {
            match r.read(rd) {
                Read::Entry(Ok(_), next) => {
                    n += 1;
                    rd = next;
                }
                Read::Skip(next) => rd = next,
                Read::Empty => break,
                _ => panic!("unexpected"),
            }
        }
        assert_eq!(n, low + given);
        r.release(rd);
        assert!(write(&r, &f, Class::HepOnly, b""));
    }

    #[test]
    fn a_slot_dropped_unwritten_is_skipped_and_wrapping_pads() {
        let r = RecordRing::in_memory(16 * 1024, 0).unwrap();
        let pad = vec![b'y'; 3000];
        let head: [&[u8]; 1] = [&pad];
        let f = facts(b"", &head, &[]);
        drop(r.reserve(100, Class::Low).unwrap());
        let mut rd = r.tail();
        for round in 0..40 {
            assert!(write(&r, &f, Class::Low, b""), "round {round}");
            loop {
                match r.read(rd) {
                    Read::Entry(Ok(e), next) => {
                        assert_eq!(e.head.len(), 3000);
                        rd = next;
                        break;
                    }
                    Read::Skip(next) => rd = next,
                    other => panic!("round {round}: {}", matches!(other, Read::Empty)),
                }
            }
            r.release(rd);
        }
    }

    #[test]
    fn a_ring_file_replays_what_was_not_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.ring");
        let head: [&[u8]; 1] = [b"INVITE sip:x SIP/2.0\r\n"];
        {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            let r = RecordRing::in_file(&f, 64 * 1024, 25).unwrap();
            for i in 0..5u64 {
                let mut fx = facts(b"", &head, &[]);
                fx.seq = i;
                assert!(write(&r, &fx, Class::IdGiven, b""));
            }
            // Two committed to the store, then the process dies.
            let Read::Entry(_, n1) = r.read(r.tail()) else {
                panic!()
            };
            let Read::Entry(_, n2) = r.read(n1) else {
                panic!()
            };
            r.release(n2);
            // A writer that reserved but never finished.
            std::mem::forget(r.reserve(64, Class::IdGiven).unwrap());
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let r = RecordRing::in_file(&f, 64 * 1024, 25).unwrap();
        let (entries, lost) = r.replay();
        let seqs: Vec<u64> = entries.iter().map(|(e, _)| e.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert!(lost > 0, "the unfinished entry is counted lost");
        r.release_all();
        assert_eq!(r.replay().0.len(), 0);
    }
}
