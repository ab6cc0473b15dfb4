//! The sections of `kuzet.toml` the scoring core owns: `[numbering]` (the
//! plan numbers are normalized by) and `[rules]` (the rule file and the
//! behaviour state behind it).
//!
//! Each is a plain serde struct with its defaults; the binary composes them
//! into its `Config`, reads the files they name and checks what spans
//! sections. Nothing here reads a file: a path is only a path until the
//! binary opens it.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{Countries, NumberingPlan, PlanError};

/// `[numbering]`: the numbering plan, as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumberingConfig {
    /// Country calling code (7 for Kazakhstan).
    pub country_code: String,
    /// Dialled before a national number (8).
    pub trunk_prefix: String,
    /// International access prefixes (810, 00).
    pub international_prefixes: Vec<String>,
    /// Digits in a national significant number.
    pub national_number_length: usize,
    /// Numbers this short that are nothing else are service numbers.
    pub max_short_number_length: usize,
    /// The countries within the shared country codes and the home
    /// country's allocations (what is domestic, foreign or invalid); unset:
    /// `deploy/numbering/kz.toml`, compiled in. Read at start-up.
    pub plan: Option<PathBuf>,
    /// The table `plan` names (or the compiled-in one), once loaded.
    #[serde(skip)]
    pub countries: Countries,
}

impl Default for NumberingConfig {
    fn default() -> Self {
        let p = NumberingPlan::kazakhstan();
        NumberingConfig {
            country_code: p.country_code,
            trunk_prefix: p.trunk_prefix,
            international_prefixes: p.international_prefixes,
            national_number_length: p.national_number_length,
            max_short_number_length: p.max_short_number_length,
            plan: None,
            countries: p.countries,
        }
    }
}

impl NumberingConfig {
    /// The numbering plan, validated.
    pub fn plan(&self) -> Result<NumberingPlan, PlanError> {
        NumberingPlan {
            country_code: self.country_code.clone(),
            trunk_prefix: self.trunk_prefix.clone(),
            international_prefixes: self.international_prefixes.clone(),
            national_number_length: self.national_number_length,
            max_short_number_length: self.max_short_number_length,
            countries: self.countries.clone(),
        }
        .validated()
    }
}

/// Behaviour rules: the rule file and the per-number state behind it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Rule file (see deploy/rules/default.toml). None: lists alone decide.
    pub file: Option<PathBuf>,
    /// At most this many A-numbers (and as many destinations) are tracked.
    pub max_tracked_numbers: usize,
    /// A number not seen for this long is forgotten.
    pub idle_ttl_secs: u32,
    /// Local time for rule scopes (hours, weekdays): minutes east of UTC.
    pub utc_offset_minutes: i32,
    /// The longest call: a call counted in progress for longer (a lost BYE,
    /// a `started` never `ended`) is stale and stops counting.
    pub max_call_secs: u32,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            file: None,
            max_tracked_numbers: 1_000_000,
            idle_ttl_secs: 86_400,
            utc_offset_minutes: 300,
            max_call_secs: 14_400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_defaults_are_the_kazakhstan_plan() {
        let plan = NumberingConfig::default().plan().unwrap();
        assert_eq!(plan, NumberingPlan::kazakhstan().validated().unwrap());
    }

    #[test]
    fn a_numbering_section_that_makes_no_plan_says_why() {
        let s: NumberingConfig = toml::from_str("country_code = \"\"\n").unwrap();
        assert!(s.plan().is_err());
        let e = toml::from_str::<RulesConfig>("fiel = \"r.toml\"\n").unwrap_err();
        assert!(e.message().contains("unknown field `fiel`"), "{e}");
    }
}
