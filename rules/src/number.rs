//! Phone numbers and numbering plans.
//!
//! A [`Number`] is a normalized number packed into one `u64`, so that list
//! lookups compare integers instead of strings and nothing is allocated per
//! call. A [`NumberingPlan`] turns what arrives on the wire (`8 701 123 45 67`,
//! `+7(701)123-45-67`, `87011234567`, `007...`) into E.164. A number that does
//! not normalize is not an error: callers keep `None` as a scoring fact.

use std::fmt;

use crate::plan::{Class, Countries, Origin};

/// Most digits an E.164 number may have (ITU-T E.164, section 6).
pub const MAX_E164_DIGITS: usize = 15;
/// Fewest digits accepted as a full international number.
pub const MIN_E164_DIGITS: usize = 7;

const DIGITS_MASK: u64 = (1 << 50) - 1;
const LEN_SHIFT: u32 = 56;
const SHORT_FLAG: u64 = 1 << 63;

/// Powers of ten up to 10^15, for cutting prefixes off a packed number.
pub(crate) const POW10: [u64; 16] = {
    let mut t = [1u64; 16];
    let mut i = 1;
    while i < 16 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// A normalized phone number: either E.164 (`+77011234567`) or a short
/// service number local to the plan (`102`, `112`).
///
/// Packed as: digit value in bits 0..50, digit count in bits 56..60, bit 63
/// set for short numbers. Two numbers are equal exactly when their digit
/// strings and kinds are equal, leading zeros included.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Number(u64);

impl Number {
    /// Packs an E.164 digit string (country code first, no `+`).
    pub fn e164(digits: &[u8]) -> Option<Number> {
        if !(MIN_E164_DIGITS..=MAX_E164_DIGITS).contains(&digits.len()) || digits[0] == b'0' {
            return None;
        }
        Self::pack(digits, false)
    }

    /// Packs a short service number (`112`).
    pub fn short(digits: &[u8]) -> Option<Number> {
        if digits.is_empty() || digits.len() > MAX_E164_DIGITS {
            return None;
        }
        Self::pack(digits, true)
    }

    fn pack(digits: &[u8], short: bool) -> Option<Number> {
        let mut v: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u64::from(d - b'0');
        }
        let mut raw = v | ((digits.len() as u64) << LEN_SHIFT);
        if short {
            raw |= SHORT_FLAG;
        }
        Some(Number(raw))
    }

    /// The packed form, stable across runs: what the list sets store.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The number whose packed form is `raw`, if it is one [`Number::raw`]
    /// could have made (read back from the record queue's file).
    pub fn from_raw(raw: u64) -> Option<Number> {
        let n = Number(raw);
        let len = n.len();
        let known = SHORT_FLAG | (0x1f << LEN_SHIFT) | DIGITS_MASK;
        if raw & !known != 0 || len == 0 || len > MAX_E164_DIGITS {
            return None;
        }
        if n.value() >= POW10[len] {
            return None;
        }
        if n.is_e164() && (len < MIN_E164_DIGITS || n.value() < POW10[len - 1]) {
            return None;
        }
        Some(n)
    }

    /// Digit count.
    pub fn len(self) -> usize {
        ((self.0 >> LEN_SHIFT) & 0x1f) as usize
    }

    /// Never true for a packed number; present for clippy's sake.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The digits as an integer.
    pub fn value(self) -> u64 {
        self.0 & DIGITS_MASK
    }

    /// True for a full international number, false for a short code.
    pub fn is_e164(self) -> bool {
        self.0 & SHORT_FLAG == 0
    }

    /// The first `len` digits as an integer (the whole number if `len` is
    /// longer). Used for prefix (range) matching.
    pub fn leading(self, len: usize) -> u64 {
        let n = self.len();
        if len >= n {
            self.value()
        } else {
            self.value() / POW10[n - len]
        }
    }

    /// Writes the digits into `out` and returns them as a slice.
    pub fn digits(self, out: &mut [u8; MAX_E164_DIGITS]) -> &[u8] {
        let n = self.len();
        let mut v = self.value();
        for i in (0..n).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        &out[..n]
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; MAX_E164_DIGITS];
        let d = self.digits(&mut buf);
        if self.is_e164() {
            f.write_str("+")?;
        }
        // Digits are ASCII by construction.
        f.write_str(std::str::from_utf8(d).unwrap_or("?"))
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A number prefix (range), in international digits: `+7701*` is digits
/// `7701`. Stored as value and length because leading zeros matter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Prefix {
    /// The prefix digits as an integer.
    pub value: u64,
    /// How many digits the prefix has.
    pub len: u8,
}

impl fmt::Display for Prefix {
    /// `+7701*`: the digits, leading zeros kept, and the wildcard.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{:0w$}*", self.value, w = usize::from(self.len))
    }
}

/// How numbers are written in one country: enough to turn national and
/// international dialling formats into E.164.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberingPlan {
    /// Country calling code, digits only (`7` for Kazakhstan).
    pub country_code: String,
    /// National trunk prefix dialled before a national number (`8`).
    pub trunk_prefix: String,
    /// International access prefixes (`810`, `00`); the longest match wins.
    pub international_prefixes: Vec<String>,
    /// Digits in a national significant number (10 in Kazakhstan).
    pub national_number_length: usize,
    /// Numbers with at most this many digits that are nothing else are
    /// short service numbers (`102`, `112`).
    pub max_short_number_length: usize,
    /// The countries within the shared country codes, with their ranges
    /// and allocations: what makes a number domestic, foreign or invalid.
    pub countries: Countries,
}

impl Default for NumberingPlan {
    fn default() -> Self {
        NumberingPlan::kazakhstan()
    }
}

/// Why a numbering plan is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The country code is empty, over 3 digits, not all digits, or starts
    /// with 0.
    #[error("country_code must be 1 to 3 digits, got {0:?}")]
    CountryCode(String),
    /// The trunk prefix is not all digits, or is over 4 digits.
    #[error("trunk_prefix must be digits, got {0:?}")]
    TrunkPrefix(String),
    /// An international prefix is empty, over 4 digits, or not all digits.
    #[error("international prefix must be 1 to 4 digits, got {0:?}")]
    InternationalPrefix(String),
    /// The national number length is 0, or too long for E.164 with the
    /// country code.
    #[error("national_number_length {0} does not fit E.164 with the country code")]
    NationalLength(usize),
    /// The plan's home country disagrees with the dialling plan.
    #[error("the numbering plan's home country {0} has another country code or national length than [numbering]")]
    HomeMismatch(String),
}

fn digits_value(s: &str) -> u64 {
    s.bytes().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'))
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

impl NumberingPlan {
    /// Kazakhstan: country code 7, trunk prefix 8, international prefixes
    /// 810 and 00, ten-digit national numbers.
    pub fn kazakhstan() -> Self {
        NumberingPlan {
            country_code: "7".into(),
            trunk_prefix: "8".into(),
            international_prefixes: vec!["810".into(), "00".into()],
            national_number_length: 10,
            max_short_number_length: 6,
            countries: Countries::kazakhstan(),
        }
    }

    /// Checks the plan and orders international prefixes longest first.
    pub fn validated(mut self) -> Result<Self, PlanError> {
        let cc = &self.country_code;
        if cc.is_empty() || cc.len() > 3 || !all_digits(cc) || cc.starts_with('0') {
            return Err(PlanError::CountryCode(cc.clone()));
        }
        if !all_digits(&self.trunk_prefix) || self.trunk_prefix.len() > 4 {
            return Err(PlanError::TrunkPrefix(self.trunk_prefix.clone()));
        }
        for p in &self.international_prefixes {
            if p.is_empty() || p.len() > 4 || !all_digits(p) {
                return Err(PlanError::InternationalPrefix(p.clone()));
            }
        }
        let total = cc.len() + self.national_number_length;
        if self.national_number_length == 0 || total > MAX_E164_DIGITS {
            return Err(PlanError::NationalLength(self.national_number_length));
        }
        if let Some(h) = self.countries.home() {
            let code = digits_value(cc);
            if h.code != (code, cc.len() as u8)
                || usize::from(h.national_length) != self.national_number_length
            {
                return Err(PlanError::HomeMismatch(h.name.clone()));
            }
        }
        self.international_prefixes
            .sort_by_key(|p| std::cmp::Reverse(p.len()));
        Ok(self)
    }

    /// Normalizes a number as a person typed it into a query: as
    /// [`NumberingPlan::normalize`], and failing that its digits (and `+`)
    /// alone, whatever else was typed between them.
    pub fn normalize_typed(&self, text: &str) -> Option<Number> {
        self.normalize(text.as_bytes()).or_else(|| {
            let digits: String = text
                .chars()
                .filter(|c| c.is_ascii_digit() || *c == '+')
                .collect();
            self.normalize(digits.as_bytes())
        })
    }

    /// Normalizes a dialled or presented number. Accepts a leading `+`,
    /// visual separators (space, `-`, `.`, `(`, `)`), and ignores anything
    /// from the first `;` on (tel: and user parameters such as `;npdi`).
    /// Returns `None` for anything that is not a number in this plan.
    pub fn normalize(&self, input: &[u8]) -> Option<Number> {
        let mut buf = [0u8; 24];
        let (plus, digits) = collect_digits(input, &mut buf)?;
        if plus {
            return Number::e164(digits);
        }
        if let Some(rest) = self.strip_international(digits) {
            return Number::e164(rest);
        }
        let nsn = self.national_number_length;
        let cc = self.country_code.as_bytes();
        let tp = self.trunk_prefix.as_bytes();
        let mut out = [0u8; 24];
        if !tp.is_empty() && digits.len() == tp.len() + nsn && digits.starts_with(tp) {
            return Number::e164(join(cc, &digits[tp.len()..], &mut out));
        }
        if digits.len() == nsn {
            return Number::e164(join(cc, digits, &mut out));
        }
        if digits.len() == cc.len() + nsn && digits.starts_with(cc) {
            return Number::e164(digits);
        }
        if digits.len() <= self.max_short_number_length {
            return Number::short(digits);
        }
        // Too long to be national: an international number sent without
        // its '+', as many carriers do.
        if digits.len() > cc.len() + nsn && digits.len() <= MAX_E164_DIGITS {
            return Number::e164(digits);
        }
        None
    }

    /// Normalizes a list prefix. `+7701`, `007701`, `8107701` and `8701`
    /// (trunk prefix, national digits) all give international digits
    /// `7701`; bare digits are taken as international digits already.
    pub fn normalize_prefix(&self, input: &[u8]) -> Option<Prefix> {
        let mut buf = [0u8; 24];
        let (plus, digits) = collect_digits(input, &mut buf)?;
        let mut out = [0u8; 24];
        let intl: &[u8] = if plus {
            digits
        } else if let Some(rest) = self.strip_international(digits) {
            rest
        } else if !self.trunk_prefix.is_empty()
            && digits.len() > self.trunk_prefix.len()
            && digits.starts_with(self.trunk_prefix.as_bytes())
        {
            join(
                self.country_code.as_bytes(),
                &digits[self.trunk_prefix.len()..],
                &mut out,
            )
        } else {
            digits
        };
        if intl.is_empty() || intl.len() > MAX_E164_DIGITS || intl[0] == b'0' {
            return None;
        }
        let value = intl.iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
        Some(Prefix {
            value,
            len: intl.len() as u8,
        })
    }

    /// What the plan says about a number: domestic, foreign or invalid,
    /// and its kind.
    pub fn classify(&self, n: Number) -> Class {
        self.countries.classify(n)
    }

    /// Whether a number belongs to this plan's own country (a valid
    /// domestic number or a short code).
    pub fn is_domestic(&self, n: Number) -> bool {
        self.classify(n).origin == Origin::Home
    }

    fn strip_international<'d>(&self, digits: &'d [u8]) -> Option<&'d [u8]> {
        self.international_prefixes
            .iter()
            .find(|p| digits.len() > p.len() && digits.starts_with(p.as_bytes()))
            .map(|p| &digits[p.len()..])
    }
}

/// Copies the digits of `input` into `buf`, skipping visual separators and
/// stopping at `;`. Returns whether a leading `+` was seen.
fn collect_digits<'b>(input: &[u8], buf: &'b mut [u8; 24]) -> Option<(bool, &'b [u8])> {
    let mut n = 0;
    let mut plus = false;
    for (i, &b) in input.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                if n == buf.len() {
                    return None;
                }
                buf[n] = b;
                n += 1;
            }
            b'+' if n == 0 && !plus && input[..i].iter().all(|c| *c == b' ') => plus = true,
            b' ' | b'-' | b'.' | b'(' | b')' | b'\t' => {}
            b';' => break,
            _ => return None,
        }
    }
    if n == 0 {
        return None;
    }
    Some((plus, &buf[..n]))
}

fn join<'o>(a: &[u8], b: &[u8], out: &'o mut [u8; 24]) -> &'o [u8] {
    let n = a.len() + b.len();
    if n > out.len() {
        return &[];
    }
    out[..a.len()].copy_from_slice(a);
    out[a.len()..n].copy_from_slice(b);
    &out[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kz(s: &str) -> Option<String> {
        NumberingPlan::kazakhstan()
            .validated()
            .unwrap()
            .normalize(s.as_bytes())
            .map(|n| n.to_string())
    }

    #[test]
    fn kazakhstan_formats_all_normalize_to_one_e164() {
        for s in [
            "8 701 123 45 67",
            "+7(701)123-45-67",
            "87011234567",
            "+77011234567;npdi",
            "+77011234567",
            "77011234567",
            "7011234567",
            "8107011234567",
            "007011234567",
        ] {
            // 810/00 followed by a national number are foreign numbers: only
            // the full international forms must agree.
            let got = kz(s);
            if s.starts_with("810") || s.starts_with("00") {
                assert_eq!(got.as_deref(), Some("+7011234567"), "{s}");
            } else {
                assert_eq!(got.as_deref(), Some("+77011234567"), "{s}");
            }
        }
    }

    #[test]
    fn international_prefixes_reach_foreign_numbers() {
        assert_eq!(kz("810 44 20 7946 0000").as_deref(), Some("+442079460000"));
        assert_eq!(kz("0044 20 7946 0000").as_deref(), Some("+442079460000"));
        assert_eq!(kz("+13035551111").as_deref(), Some("+13035551111"));
    }

    #[test]
    fn typed_numbers_keep_their_digits_whatever_sits_between() {
        let plan = NumberingPlan::kazakhstan();
        let typed = |t: &str| plan.normalize_typed(t).map(|n| n.to_string());
        assert_eq!(typed("8 701 123 45 67").as_deref(), Some("+77011234567"));
        assert_eq!(typed("+7/701/123/45/67").as_deref(), Some("+77011234567"));
        assert_eq!(typed("alice"), None);
    }

    #[test]
    fn short_numbers_and_garbage() {
        assert_eq!(kz("112").as_deref(), Some("112"));
        assert_eq!(kz("102").as_deref(), Some("102"));
        assert_eq!(kz("alice"), None);
        assert_eq!(kz(""), None);
        assert_eq!(kz("+"), None);
        assert_eq!(kz("12345678"), None, "8 digits: neither national nor short");
        assert_eq!(
            kz("442079460000").as_deref(),
            Some("+442079460000"),
            "too long to be national: international without its '+'"
        );
        assert_eq!(kz("+1234567890123456"), None, "16 digits is over E.164");
        assert_eq!(kz("++77011234567"), None);
        assert_eq!(kz("7701+1234567"), None);
    }

    #[test]
    fn packed_numbers_keep_leading_zeros_apart() {
        let a = Number::short(b"012").unwrap();
        let b = Number::short(b"12").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_string(), "012");
        let n = Number::e164(b"77011234567").unwrap();
        assert_eq!(n.leading(4), 7701);
        assert_eq!(n.leading(40), 77011234567);
        assert_eq!(n.len(), 11);
    }

    #[test]
    fn prefixes_normalize() {
        let p = NumberingPlan::kazakhstan().validated().unwrap();
        let want = Some(Prefix {
            value: 7701,
            len: 4,
        });
        assert_eq!(p.normalize_prefix(b"+7701"), want);
        assert_eq!(p.normalize_prefix(b"8701"), want);
        assert_eq!(p.normalize_prefix(b"007701"), want);
        assert_eq!(p.normalize_prefix(b"7701"), want);
        assert_eq!(p.normalize_prefix(b"+"), None);
        assert_eq!(p.normalize_prefix(b"abc"), None);
    }

    #[test]
    fn plan_validation() {
        let mut p = NumberingPlan::kazakhstan();
        p.country_code = "x".into();
        assert!(p.validated().is_err());
        let mut p = NumberingPlan::kazakhstan();
        p.national_number_length = 20;
        assert!(p.validated().is_err());
        let p = NumberingPlan::kazakhstan().validated().unwrap();
        assert_eq!(p.international_prefixes[0], "810");
        assert!(p.is_domestic(p.normalize(b"87011234567").unwrap()));
        assert!(!p.is_domestic(p.normalize(b"+442079460000").unwrap()));
    }
}
