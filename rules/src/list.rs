//! Number lists: exact numbers and prefix ranges, built from text.
//!
//! A list file has one entry a line: `NUMBER[,reason]` for one number or
//! `PREFIX*[,reason]` for a range; `#` starts a comment. Entries are
//! normalized with the [`NumberingPlan`] as they are added, so lookups
//! compare packed integers. This module reads no files: the engine feeds it
//! lines, and the first bad line fails the whole build, so a caller that
//! gets an error keeps the list it had.
//!
//! Layout, chosen for 10M numbers in well under 400 MB: exact numbers are a
//! sorted `Vec<u64>` with a parallel `Vec<u32>` of reason ids (12 bytes an
//! entry), fronted by a Bloom filter so that a number on no list, which is
//! most calls, costs one filter probe. Prefixes live in one small hash map
//! per prefix length, probed longest first.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use bloomfilter::Bloom;

use crate::number::{Number, NumberingPlan, Prefix, MAX_E164_DIGITS};

/// Longest reason text kept with an entry.
pub const MAX_REASON_LEN: usize = 200;

/// False-positive rate of the Bloom filter in front of the exact set.
const BLOOM_FP_RATE: f64 = 0.01;
/// Fixed seed: the same list gives the same filter on every node and run.
const BLOOM_SEED: [u8; 32] = *b"kuzet-list-bloom-seed-v1........";

/// A line that could not be added to a list, with where it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {kind}")]
pub struct ListError {
    /// The file (or other source name) the line came from.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub kind: ListErrorKind,
}

/// Characters of a bad entry quoted in an error.
pub const EXCERPT_CHARS: usize = 60;

/// The start of `text`, at most `max` characters, quoted with control
/// characters escaped, and `…` after it when cut: an error quotes what it
/// refuses without repeating a huge or hostile line.
pub fn excerpt(text: &str, max: usize) -> String {
    let cut = text
        .char_indices()
        .nth(max)
        .map_or(text, |(i, _)| &text[..i]);
    let more = cut.len() < text.len();
    let cut = cut.trim_end_matches(['\r', '\n']);
    if more {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// What is wrong with a list line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListErrorKind {
    /// An exact entry that does not normalize to a number in the plan
    /// (the entry quoted, cut short by [`excerpt`]).
    #[error("{0} is not a phone number in the numbering plan")]
    NotANumber(String),
    /// A `PREFIX*` entry whose digits are not a valid prefix in the plan.
    #[error("{0} is not a number prefix (digits, then `*`)")]
    NotAPrefix(String),
    /// A `*` anywhere but at the end of the entry.
    #[error("`*` may only end a prefix, as in `+7701*`: {0}")]
    MisplacedWildcard(String),
    /// The reason holds a quote, a backslash or a control character.
    #[error("the reason may not hold quotes, backslashes or control characters")]
    BadReason,
    /// The reason is longer than [`MAX_REASON_LEN`] bytes.
    #[error("the reason is longer than {MAX_REASON_LEN} bytes")]
    ReasonTooLong,
}

/// Multiplicative hashing for keys that are already well-spread integers.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let x = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

type IntMap<V> = HashMap<u64, V, BuildHasherDefault<IntHasher>>;

/// How an entry matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    /// The number itself is listed.
    Exact,
    /// A prefix of this many digits is listed.
    Prefix(u8),
}

/// A list hit: how it matched and the reason written in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListMatch<'l> {
    /// Exact number or prefix.
    pub kind: MatchKind,
    /// The reason from the list line; empty when the line gave none.
    pub reason: &'l str,
    /// The reason's id in this list ([`NumberList::reason`] gives it back),
    /// so a verdict can carry it without a borrow.
    pub reason_id: u32,
}

/// An immutable, normalized number list. Build one with [`ListBuilder`].
pub struct NumberList {
    exact: Vec<u64>,
    exact_reason: Vec<u32>,
    bloom: Option<Bloom<u64>>,
    /// One map per prefix length present, longest first.
    prefixes: Vec<(u8, IntMap<u32>)>,
    reasons: Vec<Box<str>>,
}

impl fmt::Debug for NumberList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumberList")
            .field("exact", &self.exact.len())
            .field("prefixes", &self.prefix_count())
            .finish()
    }
}

impl Default for NumberList {
    fn default() -> Self {
        NumberList {
            exact: Vec::new(),
            exact_reason: Vec::new(),
            bloom: None,
            prefixes: Vec::new(),
            reasons: vec!["".into()],
        }
    }
}

impl NumberList {
    /// How many exact numbers the list holds.
    pub fn exact_count(&self) -> usize {
        self.exact.len()
    }

    /// How many prefixes the list holds.
    pub fn prefix_count(&self) -> usize {
        self.prefixes.iter().map(|(_, m)| m.len()).sum()
    }

    /// True when the list holds nothing.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Approximate heap bytes held, for reporting.
    pub fn heap_bytes(&self) -> usize {
        let bloom = self.bloom.as_ref().map_or(0, |b| (b.len() / 8) as usize);
        let prefixes: usize = self
            .prefixes
            .iter()
            .map(|(_, m)| m.capacity() * (8 + 4 + 1))
            .sum();
        self.exact.capacity() * 8 + self.exact_reason.capacity() * 4 + bloom + prefixes
    }

    /// Hands the list's content to `out` in a canonical byte form, in
    /// chunks: the same entries with the same reasons give the same bytes
    /// whatever order their lines came in, comments and spacing included,
    /// so a digest of them names the list's content. Exact numbers in
    /// order, each with its reason, then prefixes by length and value.
    pub fn write_canonical(&self, mut out: impl FnMut(&[u8])) {
        let mut buf = Vec::with_capacity(1 << 16);
        let mut flush = |buf: &mut Vec<u8>, force: bool| {
            if force || buf.len() >= (1 << 16) - 512 {
                out(buf);
                buf.clear();
            }
        };
        let reason = |buf: &mut Vec<u8>, id: u32| {
            let r = self.reason(id).as_bytes();
            buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            buf.extend_from_slice(r);
        };
        buf.extend_from_slice(b"exact");
        buf.extend_from_slice(&(self.exact.len() as u64).to_le_bytes());
        for (k, id) in self.exact.iter().zip(&self.exact_reason) {
            buf.extend_from_slice(&k.to_le_bytes());
            reason(&mut buf, *id);
            flush(&mut buf, false);
        }
        let mut by_len: Vec<_> = self.prefixes.iter().collect();
        by_len.sort_by_key(|(len, _)| *len);
        for (len, map) in by_len {
            let mut entries: Vec<(u64, u32)> = map.iter().map(|(k, r)| (*k, *r)).collect();
            entries.sort_unstable();
            buf.extend_from_slice(b"prefix");
            buf.push(*len);
            buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
            for (k, id) in entries {
                buf.extend_from_slice(&k.to_le_bytes());
                reason(&mut buf, id);
                flush(&mut buf, false);
            }
        }
        flush(&mut buf, true);
    }

    /// The list whose canonical form ([`NumberList::write_canonical`]) is
    /// `bytes`: how a list kept beside the call journal is built again.
    /// The same entries and reasons come back, so its canonical form (and
    /// digest) is the same.
    pub fn from_canonical(bytes: &[u8], plan: &NumberingPlan) -> Result<NumberList, String> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = bytes
                .get(at..at + n)
                .ok_or_else(|| format!("cut short at byte {at}"))?;
            at += n;
            Ok(s)
        };
        let mut b = ListBuilder::new(plan);
        let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
        if take(5)? != b"exact" {
            return Err("not a canonical list".into());
        }
        let n = word(take(8)?);
        for _ in 0..n {
            let k = word(take(8)?);
            let len = u32::from_le_bytes(take(4)?.try_into().unwrap_or([0; 4])) as usize;
            let reason = std::str::from_utf8(take(len)?).map_err(|_| "a reason is not UTF-8")?;
            let num = Number::from_raw(k).ok_or_else(|| format!("{k} is not a number's key"))?;
            b.add_number(num, reason).map_err(|e| e.to_string())?;
        }
        while let Ok(tag) = take(6) {
            if tag != b"prefix" {
                return Err("not a canonical list".into());
            }
            let len = take(1)?[0];
            let n = word(take(8)?);
            for _ in 0..n {
                let value = word(take(8)?);
                let rl = u32::from_le_bytes(take(4)?.try_into().unwrap_or([0; 4])) as usize;
                let reason = std::str::from_utf8(take(rl)?).map_err(|_| "a reason is not UTF-8")?;
                b.add_prefix(Prefix { value, len }, reason)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(b.finish())
    }

    /// Every exact number (its raw key: [`Number::from_raw`]) with its
    /// reason, in key order.
    pub fn exact_entries(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.exact
            .iter()
            .zip(&self.exact_reason)
            .map(|(k, r)| (*k, self.reason(*r)))
    }

    /// Every range with its reason, by length, then by value: the order
    /// two lists are compared in.
    pub fn prefix_entries(&self) -> Vec<(Prefix, &str)> {
        let mut v: Vec<(Prefix, &str)> = self
            .prefixes
            .iter()
            .flat_map(|(len, m)| {
                m.iter().map(move |(value, r)| {
                    (
                        Prefix {
                            value: *value,
                            len: *len,
                        },
                        self.reason(*r),
                    )
                })
            })
            .collect();
        v.sort_unstable_by_key(|(p, _)| (p.len, p.value));
        v
    }

    /// The reason text with this id (empty for an unknown id).
    pub fn reason(&self, id: u32) -> &str {
        self.reasons.get(id as usize).map_or("", |r| r)
    }

    /// Looks a number up: exact entries first, then the longest prefix.
    #[inline]
    pub fn lookup(&self, n: Number) -> Option<ListMatch<'_>> {
        if let Some(bloom) = &self.bloom {
            let key = n.raw();
            if bloom.check(&key) {
                if let Ok(i) = self.exact.binary_search(&key) {
                    let id = self.exact_reason[i];
                    return Some(ListMatch {
                        kind: MatchKind::Exact,
                        reason: &self.reasons[id as usize],
                        reason_id: id,
                    });
                }
            }
        }
        if !n.is_e164() {
            return None;
        }
        let len = n.len();
        for (plen, map) in &self.prefixes {
            let plen_us = usize::from(*plen);
            if plen_us > len {
                continue;
            }
            if let Some(r) = map.get(&n.leading(plen_us)) {
                return Some(ListMatch {
                    kind: MatchKind::Prefix(*plen),
                    reason: &self.reasons[*r as usize],
                    reason_id: *r,
                });
            }
        }
        None
    }
}

/// Builds a [`NumberList`] from lines of text.
pub struct ListBuilder<'p> {
    plan: &'p NumberingPlan,
    exact: Vec<(u64, u32)>,
    prefixes: Vec<(Prefix, u32)>,
    reasons: Vec<Box<str>>,
    reason_ids: HashMap<Box<str>, u32>,
}

impl<'p> ListBuilder<'p> {
    /// A builder that normalizes entries with `plan`.
    pub fn new(plan: &'p NumberingPlan) -> Self {
        ListBuilder {
            plan,
            exact: Vec::new(),
            prefixes: Vec::new(),
            // The empty reason is id 0, and never in the map
            // (`ListBuilder::intern` answers it first).
            reasons: vec!["".into()],
            reason_ids: HashMap::new(),
        }
    }

    /// Entries added so far (exact and prefix, duplicates included).
    pub fn entries(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    /// Reserves room for about `n` more exact entries.
    pub fn reserve(&mut self, n: usize) {
        self.exact.reserve(n);
    }

    /// The id of `reason`, interned once. Most lines give no reason: the
    /// empty one is id 0 (put first by [`ListBuilder::new`]) and needs no
    /// probe of the map. That probe's key comparison called glibc's
    /// AVX-512 `memcmp` with length 0 on an empty boxed `str`'s dangling
    /// pointer, and nearly all of its time went to the masked load there
    /// (a fault-suppressing load of an unmapped page is slow): about a
    /// third of the CPU of loading a list without reasons
    /// (benches/README.md, `publish`).
    fn intern(&mut self, reason: &str) -> u32 {
        if reason.is_empty() {
            return 0;
        }
        if let Some(id) = self.reason_ids.get(reason) {
            return *id;
        }
        let id = self.reasons.len() as u32;
        self.reasons.push(reason.into());
        self.reason_ids.insert(reason.into(), id);
        id
    }

    /// Adds one line of a list file. `file` and `line` (1-based) only serve
    /// the error message.
    pub fn add_line(&mut self, file: &str, line: usize, text: &str) -> Result<(), ListError> {
        let err = |kind| ListError {
            file: file.to_string(),
            line,
            kind,
        };
        // A byte-order mark (spreadsheet exports start with one).
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let text = match text.find('#') {
            Some(i) => &text[..i],
            None => text,
        };
        // trim() also takes the \r of CRLF line ends.
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let (entry, reason) = match text.split_once(',') {
            Some((e, r)) => (e.trim(), r.trim()),
            None => (text, ""),
        };
        let entry = bare_number(entry);
        let reason_id = self.checked_reason(reason).map_err(err)?;
        if let Some(stem) = entry.strip_suffix('*') {
            if stem.contains('*') {
                return Err(err(ListErrorKind::MisplacedWildcard(excerpt(
                    entry,
                    EXCERPT_CHARS,
                ))));
            }
            let p = self
                .plan
                .normalize_prefix(stem.as_bytes())
                .ok_or_else(|| err(ListErrorKind::NotAPrefix(excerpt(entry, EXCERPT_CHARS))))?;
            self.prefixes.push((p, reason_id));
            return Ok(());
        }
        if entry.contains('*') {
            return Err(err(ListErrorKind::MisplacedWildcard(excerpt(
                entry,
                EXCERPT_CHARS,
            ))));
        }
        let n = self
            .plan
            .normalize(entry.as_bytes())
            .ok_or_else(|| err(ListErrorKind::NotANumber(excerpt(entry, EXCERPT_CHARS))))?;
        self.exact.push((n.raw(), reason_id));
        Ok(())
    }

    /// Adds one number, already normalized, with its reason (checked as a
    /// list line's would be): the way a source that holds numbers rather
    /// than text (the National Bank's feed) fills a list without printing
    /// and parsing each one.
    pub fn add_number(&mut self, n: Number, reason: &str) -> Result<(), ListErrorKind> {
        let id = self.checked_reason(reason)?;
        self.exact.push((n.raw(), id));
        Ok(())
    }

    /// Adds one range, already normalized, with its reason.
    pub fn add_prefix(&mut self, p: Prefix, reason: &str) -> Result<(), ListErrorKind> {
        if p.len == 0 || usize::from(p.len) > MAX_E164_DIGITS {
            return Err(ListErrorKind::NotAPrefix(p.to_string()));
        }
        let id = self.checked_reason(reason)?;
        self.prefixes.push((p, id));
        Ok(())
    }

    fn checked_reason(&mut self, reason: &str) -> Result<u32, ListErrorKind> {
        if reason.len() > MAX_REASON_LEN {
            return Err(ListErrorKind::ReasonTooLong);
        }
        if reason
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(ListErrorKind::BadReason);
        }
        Ok(self.intern(reason))
    }

    /// Adds every line of `text`; stops at the first bad one.
    pub fn add_text(&mut self, file: &str, text: &str) -> Result<(), ListError> {
        for (i, line) in text.lines().enumerate() {
            self.add_line(file, i + 1, line)?;
        }
        Ok(())
    }

    /// Freezes the list. Duplicate entries keep the first reason given.
    pub fn finish(self) -> NumberList {
        let mut exact = self.exact;
        // Stable sort keeps the first occurrence of a duplicate first.
        exact.sort_by_key(|e| e.0);
        exact.dedup_by_key(|e| e.0);
        let bloom = if exact.is_empty() {
            None
        } else {
            Bloom::new_for_fp_rate_with_seed(exact.len(), BLOOM_FP_RATE, &BLOOM_SEED)
                .ok()
                .map(|mut b| {
                    for (k, _) in &exact {
                        b.set(k);
                    }
                    b
                })
        };
        let (keys, reasons): (Vec<u64>, Vec<u32>) = exact.into_iter().unzip();
        let mut by_len: Vec<(u8, IntMap<u32>)> = Vec::new();
        for (p, r) in self.prefixes {
            let slot = match by_len.iter().position(|(l, _)| *l == p.len) {
                Some(i) => i,
                None => {
                    by_len.push((p.len, IntMap::default()));
                    by_len.len() - 1
                }
            };
            by_len[slot].1.entry(p.value).or_insert(r);
        }
        by_len.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
        debug_assert!(by_len
            .iter()
            .all(|(l, _)| usize::from(*l) <= MAX_E164_DIGITS));
        NumberList {
            exact: keys,
            exact_reason: reasons,
            bloom,
            prefixes: by_len,
            reasons: self.reasons,
        }
    }
}

/// The number inside the written forms a list line may use:
/// `"Name" <sip:+77011234567@gw;user=phone>`, `<tel:+77011234567>`,
/// `tel:+77011234567;npdi`, `sip:+77011234567@gw`; anything else as it is.
fn bare_number(entry: &str) -> &str {
    let mut e = entry;
    if let (Some(l), Some(r)) = (e.find('<'), e.rfind('>')) {
        if l < r {
            e = &e[l + 1..r];
        }
    }
    let e = e.trim();
    // Compared as bytes: a multi-byte character may straddle the length
    // of the scheme, where slicing the str would panic.
    let lower = |p: &str| {
        e.as_bytes()
            .get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
    };
    let user = if lower("tel:") {
        &e[4..]
    } else if lower("sips:") {
        e[5..].split('@').next().unwrap_or("")
    } else if lower("sip:") {
        e[4..].split('@').next().unwrap_or("")
    } else {
        return e;
    };
    // Parameters (`;npdi`, `;user=phone`) are not part of the number.
    user.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> Vec<u8> {
        let p = plan();
        let mut b = ListBuilder::new(&p);
        b.add_text("l.txt", text).unwrap();
        let mut out = Vec::new();
        b.finish().write_canonical(|c| out.extend_from_slice(c));
        out
    }

    /// The canonical form names content: order, comments, spacing and
    /// written forms do not change it; an entry or a reason does.
    #[test]
    fn the_canonical_form_names_the_content_only() {
        let a = canonical("+77011234567,fraud\n+7702*,range\n+7703*\n");
        let b = canonical("# export\n+7703*\n\n8 701 123 45 67,fraud\ntel:+7702*,range\n");
        assert_eq!(a, b);
        assert_ne!(a, canonical("+77011234567,fraud!\n+7702*,range\n+7703*\n"));
        assert_ne!(a, canonical("+77011234567,fraud\n+7702*,range\n"));
        assert_ne!(a, canonical("+77011234568,fraud\n+7702*,range\n+7703*\n"));
        assert_ne!(canonical(""), canonical("+7703*\n"));
        // Many entries come in more than one chunk, the same either way.
        let many: String = (0..20_000)
            .map(|i| format!("+7701{i:07},r{}\n", i % 7))
            .collect();
        let rev: String = many.lines().rev().map(|l| format!("{l}\n")).collect();
        assert_eq!(canonical(&many), canonical(&rev));
    }

    /// Regression: a byte-order mark stopped kuzet from starting, and the
    /// `tel:`/`sip:` forms the README calls equivalent were refused.
    #[test]
    fn every_documented_written_form_is_accepted() {
        let p = plan();
        let mut b = ListBuilder::new(&p);
        b.add_text(
            "export.csv",
            "\u{feff}8 701 123 45 67,spreadsheet\r\n\
             +7(701)123-45-68\r\n\
             87011234569\r\n\
             tel:+77011234570;npdi\r\n\
             sip:+77011234571@gw.example;user=phone,from a trace\r\n\
             \"Bank\" <sip:+77011234572@gw>\r\n\
             <tel:+77011234573>\r\n\
             tel:+7702*,range\r\n",
        )
        .unwrap();
        let l = b.finish();
        for k in 67..=73u64 {
            let n = Number::e164(format!("770112345{k}").as_bytes()).unwrap();
            assert!(l.lookup(n).is_some(), "{n}");
        }
        assert_eq!(
            l.lookup(num(&p, "+77011234567")).unwrap().reason,
            "spreadsheet"
        );
        assert_eq!(l.lookup(num(&p, "+77021234567")).unwrap().reason, "range");
    }

    fn plan() -> NumberingPlan {
        NumberingPlan::kazakhstan().validated().unwrap()
    }

    fn num(p: &NumberingPlan, s: &str) -> Number {
        p.normalize(s.as_bytes()).unwrap()
    }

    #[test]
    fn exact_and_prefix_entries_match_after_normalizing() {
        let p = plan();
        let mut b = ListBuilder::new(&p);
        b.add_text(
            "t.txt",
            "# fraud numbers\n8 701 111 22 33, wangiri campaign\n+7 (702) 555-00-00\n\n+88216*,satellite IRSF # premium\n8747*\n112\n",
        )
        .unwrap();
        let l = b.finish();
        assert_eq!(l.exact_count(), 3);
        assert_eq!(l.prefix_count(), 2);
        let m = l.lookup(num(&p, "+77011112233")).unwrap();
        assert_eq!(m.kind, MatchKind::Exact);
        assert_eq!(m.reason, "wangiri campaign");
        assert_eq!(l.lookup(num(&p, "87025550000")).unwrap().reason, "");
        let m = l.lookup(num(&p, "+882161234567")).unwrap();
        assert_eq!(m.kind, MatchKind::Prefix(5));
        assert_eq!(m.reason, "satellite IRSF");
        assert_eq!(
            l.lookup(num(&p, "87471234567")).unwrap().kind,
            MatchKind::Prefix(4)
        );
        assert!(l.lookup(num(&p, "112")).is_some());
        assert!(l.lookup(num(&p, "+77011112234")).is_none());
        assert!(l.lookup(num(&p, "+77481234567")).is_none());
        assert!(l.lookup(num(&p, "102")).is_none());
    }

    /// Lines with no reason, with or without a comma, before and after
    /// other reasons are interned, all share the empty reason, id 0.
    #[test]
    fn lines_without_a_reason_share_the_empty_reason() {
        let p = plan();
        let mut b = ListBuilder::new(&p);
        b.add_text(
            "t",
            "+77011112233\n+77011112234,fraud\n+77011112235,\n+77011112236 , \n+7702*\n",
        )
        .unwrap();
        let l = b.finish();
        for n in [
            "+77011112233",
            "+77011112235",
            "+77011112236",
            "+77021234567",
        ] {
            let m = l.lookup(num(&p, n)).unwrap();
            assert_eq!((m.reason_id, m.reason), (0, ""), "{n}");
        }
        let m = l.lookup(num(&p, "+77011112234")).unwrap();
        assert_eq!((m.reason_id, m.reason), (1, "fraud"));
        assert_eq!(l.reason(0), "");
    }

    #[test]
    fn longest_prefix_wins_and_duplicates_keep_first_reason() {
        let p = plan();
        let mut b = ListBuilder::new(&p);
        b.add_text(
            "t",
            "+77*,country\n+7701*,operator\n+77011112233,first\n+77011112233,second\n",
        )
        .unwrap();
        let l = b.finish();
        assert_eq!(
            l.lookup(num(&p, "+77019998877")).unwrap().reason,
            "operator"
        );
        assert_eq!(l.lookup(num(&p, "+77779998877")).unwrap().reason, "country");
        assert_eq!(l.lookup(num(&p, "+77011112233")).unwrap().reason, "first");
        assert_eq!(l.exact_count(), 1);
    }

    #[test]
    fn bad_lines_name_file_line_and_reason() {
        let p = plan();
        let cases = [
            ("+7701111223x\n", 1, "is not a phone number"),
            ("\n\nalice,why\n", 3, "is not a phone number"),
            ("+77*01*\n", 1, "`*` may only end a prefix"),
            ("*\n", 1, "is not a number prefix"),
            ("+77011112233,say \"hi\"\n", 1, "quotes"),
            ("12345678\n", 1, "is not a phone number"),
        ];
        for (text, line, want) in cases {
            let mut b = ListBuilder::new(&p);
            let e = b.add_text("lists/block.txt", text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("lists/block.txt:{line}: ")),
                "{msg}"
            );
            assert!(msg.contains(want), "{msg}");
        }
        let long = format!("+77011112233,{}\n", "x".repeat(MAX_REASON_LEN + 1));
        let e = ListBuilder::new(&p).add_text("f", &long).unwrap_err();
        assert_eq!(e.kind, ListErrorKind::ReasonTooLong);
    }

    #[test]
    fn empty_list_matches_nothing() {
        let p = plan();
        let l = ListBuilder::new(&p).finish();
        assert!(l.is_empty());
        assert!(l.lookup(num(&p, "+77011112233")).is_none());
        assert!(NumberList::default().lookup(num(&p, "112")).is_none());
    }

    #[test]
    fn many_numbers_all_found_and_neighbours_not() {
        let p = plan();
        let mut b = ListBuilder::new(&p);
        for i in 0..50_000u64 {
            b.add_line("gen", 1, &format!("+7701{:07}", i * 2)).unwrap();
        }
        let l = b.finish();
        for i in 0..50_000u64 {
            let hit = Number::e164(format!("7701{:07}", i * 2).as_bytes()).unwrap();
            let miss = Number::e164(format!("7701{:07}", i * 2 + 1).as_bytes()).unwrap();
            assert!(l.lookup(hit).is_some());
            assert!(l.lookup(miss).is_none());
        }
    }

    #[test]
    fn errors_quote_a_short_excerpt_of_a_long_entry() {
        let plan = NumberingPlan::kazakhstan();
        let mut b = ListBuilder::new(&plan);
        let long = "x".repeat(3000);
        let e = b.add_line("l.txt", 7, &long).unwrap_err().to_string();
        assert!(e.starts_with("l.txt:7: \"xxx"), "{e}");
        assert!(e.contains("x\"… is not a phone number"), "{e}");
        assert!(e.len() < 150, "{e}");
        assert_eq!(b.entries(), 0);
        b.add_line("l.txt", 8, "+77011234567").unwrap();
        b.add_line("l.txt", 9, "+7701*").unwrap();
        assert_eq!(b.entries(), 2);
    }

    /// Regression (found by fuzzing, fuzz/regressions/list/): a line
    /// whose fourth or fifth byte fell inside a multi-byte character
    /// panicked while checking for a `tel:` or `sips:` scheme, which took
    /// down a reload (and start-up) instead of refusing the line.
    #[test]
    fn a_multibyte_character_where_a_scheme_would_end_is_refused_not_a_panic() {
        let plan = NumberingPlan::kazakhstan();
        let mut b = ListBuilder::new(&plan);
        for line in ["UUF\u{feff}+77011112233", "sip\u{0436}+7701", "te\u{0436}"] {
            let e = b.add_line("l.txt", 1, line).unwrap_err();
            assert!(e.to_string().contains("is not a phone number"), "{e}");
        }
    }

    #[test]
    fn excerpts_escape_and_cut_on_characters() {
        assert_eq!(excerpt("ab\u{1b}c", 10), "\"ab\\u{1b}c\"");
        assert_eq!(excerpt("жжжж", 2), "\"жж\"…");
    }
}
