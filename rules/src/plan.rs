//! The countries within a country code, and what a number is.
//!
//! Kazakhstan and Russia share country code 7, so "domestic" cannot mean
//! "starts with +7". A [`Countries`] table says, for each country that
//! holds part of a shared code, which national prefixes it holds, how long
//! its national numbers are, and how its ranges are allocated (mobile,
//! geographic, ...). [`Countries::classify`] turns a [`Number`] into a
//! [`Class`]: *home* (the operator's own country), *foreign*, or *invalid*
//! (wrong length, unallocated, or in no country's part of the code). The
//! rules read these facts; none of them decides "domestic" by a prefix of
//! its own.
//!
//! The table is data (`deploy/numbering/kz.toml`, compiled in as the
//! default), parsed here from text; nothing here reads a file.

use std::fmt;

use serde::Deserialize;

use crate::number::{Number, POW10};
use crate::toml_pos::{error_at, line_col};

/// The Kazakhstan table shipped in `deploy/numbering/kz.toml`.
pub const KAZAKHSTAN: &str = include_str!("../../deploy/numbering/kz.toml");

/// What kind of number an allocation holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberKind {
    /// A mobile subscriber.
    Mobile,
    /// A fixed line in a geographic zone.
    Geographic,
    /// VoIP, internet telephony, satellite.
    NonGeographic,
    /// Free to the caller.
    TollFree,
    /// Premium-rate.
    Premium,
    /// A short service code (102, 112).
    Short,
    /// In a country's part of the code, kind not given.
    Unknown,
}

impl NumberKind {
    /// The name used in plan files and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            NumberKind::Mobile => "mobile",
            NumberKind::Geographic => "geographic",
            NumberKind::NonGeographic => "non_geographic",
            NumberKind::TollFree => "toll_free",
            NumberKind::Premium => "premium",
            NumberKind::Short => "short",
            NumberKind::Unknown => "unknown",
        }
    }
}

/// Where a number belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The operator's own country.
    Home,
    /// Any other country, Russia within +7 included.
    Foreign,
    /// Not a number any country holds.
    Invalid,
}

/// Why a number is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidity {
    /// In a country's ranges, with the wrong number of digits.
    Length,
    /// In a strict country's ranges, in none of its allocations.
    Unallocated,
    /// Under a shared code, in no country's ranges.
    Unassigned,
}

impl Invalidity {
    /// How explanations say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalidity::Length => "wrong length",
            Invalidity::Unallocated => "unallocated",
            Invalidity::Unassigned => "unassigned",
        }
    }
}

/// What the plan says about one number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    /// Home, foreign or invalid.
    pub origin: Origin,
    /// Mobile, geographic, ...
    pub kind: NumberKind,
    /// Why it is invalid, when it is.
    pub invalid: Option<Invalidity>,
    /// The country whose ranges it falls in (index into
    /// [`Countries::countries`]), even when it is invalid there.
    pub country: Option<u8>,
}

impl Class {
    /// True for a number in the home country's ranges, valid or not: it
    /// *claims* to be domestic. What spoofing rules look for.
    pub fn looks_home(&self, c: &Countries) -> bool {
        self.country
            .and_then(|i| c.countries.get(usize::from(i)))
            .is_some_and(|k| k.home)
    }
}

/// One country's part of a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Country {
    /// A label: `KZ`, `RU`.
    pub name: String,
    /// The country calling code's digits as a number, and how many there are.
    pub code: (u64, u8),
    /// The operator's own country.
    pub home: bool,
    /// Digits after the country code.
    pub national_length: u8,
    /// Leading national digits the country holds: (value, length).
    pub ranges: Vec<(u64, u8)>,
    /// Numbers outside every allocation are invalid.
    pub strict: bool,
    /// National prefix (value, length) to kind, longest first.
    pub allocations: Vec<(u64, u8, NumberKind)>,
    /// Where the ranges come from.
    pub source: String,
}

/// The countries of the shared codes the plan knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Countries {
    /// In file order.
    pub countries: Vec<Country>,
}

/// A plan file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct CountriesError {
    /// The file's name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    country: Vec<toml::Spanned<CountrySpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountrySpec {
    name: String,
    code: String,
    #[serde(default)]
    home: bool,
    national_length: u8,
    ranges: Vec<String>,
    #[serde(default)]
    strict: bool,
    #[serde(default)]
    source: String,
    #[serde(default)]
    allocation: Vec<AllocationSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocationSpec {
    kind: NumberKind,
    prefixes: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    source: String,
}

fn digits(s: &str) -> Option<(u64, u8)> {
    if s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        s.bytes().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')),
        s.len() as u8,
    ))
}

impl Countries {
    /// The Kazakhstan table shipped with kuzet.
    pub fn kazakhstan() -> Countries {
        // Checked by a unit test; an empty table only loses the split.
        Countries::from_toml_str(KAZAKHSTAN, "embedded:deploy/numbering/kz.toml")
            .unwrap_or_default()
    }

    /// Parses a plan file; `name` labels errors.
    pub fn from_toml_str(text: &str, name: &str) -> Result<Countries, CountriesError> {
        let err = |(line, col): (usize, usize), message: String| CountriesError {
            file: name.to_string(),
            line,
            col,
            message,
        };
        let spec: FileSpec =
            toml::from_str(text).map_err(|e| err(error_at(text, &e), e.message().to_string()))?;
        let mut countries = Vec::new();
        let mut homes = 0;
        for sp in spec.country {
            let at = line_col(text, sp.span().start);
            let c = sp.into_inner();
            let code = digits(&c.code)
                .filter(|(_, l)| (1..=3).contains(l))
                .ok_or_else(|| {
                    err(
                        at,
                        format!("country {}: code must be 1 to 3 digits", c.name),
                    )
                })?;
            if c.national_length == 0 || usize::from(code.1 + c.national_length) > 15 {
                return Err(err(
                    at,
                    format!("country {}: national_length does not fit E.164", c.name),
                ));
            }
            let mut ranges = Vec::new();
            for r in &c.ranges {
                ranges.push(
                    digits(r)
                        .filter(|(_, l)| *l < c.national_length)
                        .ok_or_else(|| {
                            err(
                                at,
                                format!("country {}: range {r:?} is not a national prefix", c.name),
                            )
                        })?,
                );
            }
            if ranges.is_empty() {
                return Err(err(
                    at,
                    format!("country {}: ranges may not be empty", c.name),
                ));
            }
            let mut allocations = Vec::new();
            for a in &c.allocation {
                for p in &a.prefixes {
                    let (v, l) = digits(p)
                        .filter(|(_, l)| *l >= 1 && *l <= c.national_length)
                        .ok_or_else(|| {
                            err(
                                at,
                                format!(
                                    "country {}: allocation {p:?} is not a national prefix",
                                    c.name
                                ),
                            )
                        })?;
                    if !ranges
                        .iter()
                        .any(|&(rv, rl)| rl <= l && v / POW10[usize::from(l - rl)] == rv)
                    {
                        return Err(err(
                            at,
                            format!(
                                "country {}: allocation {p:?} lies outside its ranges",
                                c.name
                            ),
                        ));
                    }
                    allocations.push((v, l, a.kind));
                }
            }
            allocations.sort_by_key(|&(v, l, _)| (std::cmp::Reverse(l), v));
            homes += usize::from(c.home);
            countries.push(Country {
                name: c.name,
                code,
                home: c.home,
                national_length: c.national_length,
                ranges,
                strict: c.strict,
                allocations,
                source: c.source,
            });
        }
        if homes > 1 {
            return Err(err((1, 1), "at most one country may be home".into()));
        }
        if countries.len() > usize::from(u8::MAX) {
            return Err(err((1, 1), "too many countries".into()));
        }
        Ok(Countries { countries })
    }

    /// The home country, if the table names one.
    pub fn home(&self) -> Option<&Country> {
        self.countries.iter().find(|c| c.home)
    }

    /// What the plan says about `n`. A short code is home; a number under a
    /// code no country here holds is foreign.
    pub fn classify(&self, n: Number) -> Class {
        let class = |origin, kind, invalid, country| Class {
            origin,
            kind,
            invalid,
            country,
        };
        if !n.is_e164() {
            return class(Origin::Home, NumberKind::Short, None, None);
        }
        let len = n.len() as u8;
        let mut code_known = false;
        for (i, c) in self.countries.iter().enumerate() {
            let (code, cl) = c.code;
            if len <= cl || n.leading(usize::from(cl)) != code {
                continue;
            }
            code_known = true;
            // The national digits after the code, as many as the number has.
            let nat_len = len - cl;
            let nat = n.value() % POW10[usize::from(nat_len)];
            let lead = |l: u8| {
                if l > nat_len {
                    None
                } else {
                    Some(nat / POW10[usize::from(nat_len - l)])
                }
            };
            if !c.ranges.iter().any(|&(v, l)| lead(l) == Some(v)) {
                continue;
            }
            let idx = Some(i as u8);
            let origin = if c.home {
                Origin::Home
            } else {
                Origin::Foreign
            };
            if nat_len != c.national_length {
                return class(
                    Origin::Invalid,
                    NumberKind::Unknown,
                    Some(Invalidity::Length),
                    idx,
                );
            }
            let kind = c
                .allocations
                .iter()
                .find(|&&(v, l, _)| lead(l) == Some(v))
                .map(|&(_, _, k)| k);
            return match kind {
                Some(k) => class(origin, k, None, idx),
                None if c.strict => class(
                    Origin::Invalid,
                    NumberKind::Unknown,
                    Some(Invalidity::Unallocated),
                    idx,
                ),
                None => class(origin, NumberKind::Unknown, None, idx),
            };
        }
        if code_known {
            class(
                Origin::Invalid,
                NumberKind::Unknown,
                Some(Invalidity::Unassigned),
                None,
            )
        } else {
            class(Origin::Foreign, NumberKind::Unknown, None, None)
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.origin, self.invalid) {
            (Origin::Invalid, Some(why)) => write!(f, "invalid ({})", why.as_str()),
            (Origin::Invalid, None) => f.write_str("invalid"),
            (Origin::Home, _) => write!(f, "domestic {}", self.kind.as_str()),
            (Origin::Foreign, _) => write!(f, "foreign {}", self.kind.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: &str) -> Class {
        let p = crate::NumberingPlan::kazakhstan().validated().unwrap();
        p.countries.classify(p.normalize(n.as_bytes()).unwrap())
    }

    #[test]
    fn the_shipped_table_parses_with_kazakhstan_at_home() {
        let t = Countries::from_toml_str(KAZAKHSTAN, "kz.toml").unwrap();
        assert_eq!(t.home().unwrap().name, "KZ");
        assert_eq!(t.countries.len(), 2);
    }

    #[test]
    fn kazakhstan_and_russia_split_code_7() {
        let kz = c("+77011234567");
        assert_eq!((kz.origin, kz.kind), (Origin::Home, NumberKind::Mobile));
        assert_eq!(c("87272595555").kind, NumberKind::Geographic);
        assert_eq!(c("+77501234567").kind, NumberKind::NonGeographic);
        // Russia: 3xx, 4xx, 8xx, 9xx are foreign, not invalid.
        for ru in [
            "+79161234567",
            "+74951234567",
            "+73832123456",
            "+78121234567",
        ] {
            assert_eq!(c(ru).origin, Origin::Foreign, "{ru}");
        }
        assert_eq!(c("+79161234567").kind, NumberKind::Mobile);
        assert_eq!(c("+78001234567").kind, NumberKind::TollFree);
        // Other codes are foreign.
        assert_eq!(c("+442079460000").origin, Origin::Foreign);
        // Short codes are home.
        assert_eq!(c("112").kind, NumberKind::Short);
    }

    #[test]
    fn wrong_lengths_and_unallocated_ranges_are_invalid() {
        let short = c("+7701123456");
        assert_eq!(
            (short.origin, short.invalid),
            (Origin::Invalid, Some(Invalidity::Length))
        );
        assert!(short.looks_home(&crate::NumberingPlan::kazakhstan().countries));
        let long = c("+770112345678");
        assert_eq!(long.invalid, Some(Invalidity::Length));
        // 799 is Kazakhstan's but allocated to nobody.
        assert_eq!(c("+77991234567").invalid, Some(Invalidity::Unallocated));
        // 0xx and 6xx are Kazakhstan's, not allocated yet.
        assert_eq!(c("+76001234567").invalid, Some(Invalidity::Unallocated));
        // +7 5xx belongs to no country.
        assert_eq!(c("+75001234567").invalid, Some(Invalidity::Unassigned));
        // A Russian number of the wrong length is invalid too.
        assert_eq!(c("+7916123456").invalid, Some(Invalidity::Length));
        assert_eq!(c("+7916123456").to_string(), "invalid (wrong length)");
    }

    #[test]
    fn bad_tables_name_the_line_and_reason() {
        let e = Countries::from_toml_str(
            "[[country]]\nname = \"X\"\ncode = \"7\"\nnational_length = 10\nranges = [\"7\"]\n[[country.allocation]]\nkind = \"mobile\"\nprefixes = [\"90\"]\n",
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.toml:1:1: country X: allocation \"90\" lies outside its ranges"
        );
        let e = Countries::from_toml_str("[[country]]\nname = 1\n", "p.toml").unwrap_err();
        assert_eq!((e.line, e.col), (2, 8));
    }
}
