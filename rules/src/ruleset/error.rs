//! Why a rule file cannot be used: where (file, line, column, rule id) and
//! what, as typed values a caller can match on and print.

use std::fmt;

/// A rule file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The text is not TOML, or not the rule file's shape.
    #[error("{file}:{line}:{col}: {message}")]
    Syntax {
        /// The file's name.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// One rule is wrong.
    #[error("{file}:{line}:{col}: rule {id:?}: {problem}")]
    Rule {
        /// The file's name.
        file: String,
        /// 1-based line of the `[[rule]]`.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The rule's id as written.
        id: String,
        /// What is wrong with it.
        problem: RuleProblem,
    },
    /// The file as a whole is wrong (thresholds, lists, size).
    #[error("{file}: {problem}")]
    File {
        /// The file's name.
        file: String,
        /// What is wrong.
        problem: FileProblem,
    },
}

/// What is wrong with one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleProblem {
    /// The id has characters other than letters, digits, `_` and `-`.
    BadId,
    /// Another rule has the same id.
    DuplicateId,
    /// The id names a built-in list rule but the rule is not that list.
    ReservedId(&'static str),
    /// No such kind.
    UnknownKind(String),
    /// The kind needs this key.
    Needs {
        /// The rule's kind.
        kind: String,
        /// The missing key.
        key: &'static str,
    },
    /// A `list` rule names the allowlist, which exempts rather than scores.
    AllowlistNotScored,
    /// `window_s` is 0.
    ZeroWindow,
    /// `ratio` is outside 0..=1.
    RatioRange,
    /// `run` is below 2.
    RunTooShort,
    /// More velocity rules than the per-number state has windows.
    TooManyVelocity(usize),
    /// A second fan-out rule.
    TooManyFanOut,
    /// A prefix that does not normalize.
    BadPrefix(String),
    /// A scope trunk kind that does not exist.
    BadTrunk(String),
    /// A scope hour range that is not `HH-HH`.
    BadHours(String),
    /// A scope weekday that is not `mon`..`sun`.
    BadWeekday(String),
    /// `side` is not caller, callee or both.
    BadSide(String),
    /// A key that moved to the numbering plan.
    MovedToPlan(&'static str),
    /// A key that this kind does not take.
    NotForKind {
        /// The key.
        key: &'static str,
        /// The rule's kind.
        kind: String,
    },
    /// `escalate` needs `after` of at least 1 and `within_s` above 0.
    BadEscalate,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleProblem::BadId => f.write_str("id must be letters, digits, '_' or '-'"),
            RuleProblem::DuplicateId => f.write_str("id is used twice"),
            RuleProblem::ReservedId(list) => write!(
                f,
                "id {list:?} belongs to the built-in {list} rule; only a `kind = \"list\"` rule with `list = \"{list}\"` may use it"
            ),
            RuleProblem::UnknownKind(k) => write!(f, "unknown kind {k:?}"),
            RuleProblem::Needs { kind, key } => write!(f, "kind {kind} needs {key}"),
            RuleProblem::AllowlistNotScored => f.write_str(
                "the allowlist exempts numbers from the other rules; it has no score to set",
            ),
            RuleProblem::ZeroWindow => f.write_str("window_s must be above 0"),
            RuleProblem::RatioRange => f.write_str("ratio must be between 0 and 1"),
            RuleProblem::RunTooShort => f.write_str("run must be at least 2"),
            RuleProblem::TooManyVelocity(n) => write!(f, "at most {n} velocity rules per file"),
            RuleProblem::TooManyFanOut => f.write_str(
                "at most one fan_out rule per file (one distinct-callee window per number)",
            ),
            RuleProblem::BadPrefix(p) => write!(f, "{p:?} is not a number prefix"),
            RuleProblem::BadTrunk(t) => write!(
                f,
                "scope trunk {t:?} is not international, domestic, mobile or other"
            ),
            RuleProblem::BadHours(h) => {
                write!(f, "scope hours {h:?} must be \"HH-HH\" (0-24, end exclusive)")
            }
            RuleProblem::BadWeekday(d) => write!(f, "scope weekday {d:?} must be mon..sun"),
            RuleProblem::BadSide(s) => write!(f, "side {s:?} must be caller, callee or both"),
            RuleProblem::MovedToPlan(key) => write!(
                f,
                "{key} is no longer a rule key: the numbering plan ([numbering] plan, deploy/numbering/kz.toml) says which numbers are domestic, allocated or invalid"
            ),
            RuleProblem::NotForKind { key, kind } => write!(f, "kind {kind} does not take {key}"),
            RuleProblem::BadEscalate => f.write_str(
                "escalate needs after (at least 1) and within_s (above 0): escalate = { after = 5, within_s = 3600 }",
            ),
        }
    }
}

/// What is wrong with a rule file as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    /// Thresholds out of order.
    ThresholdOrder,
    /// A redirect threshold without a place to redirect to.
    RedirectNeedsUri,
    /// More rules than a verdict can name.
    TooManyRules,
    /// A built-in list rule would not reach its decision under the file's
    /// thresholds, so the list would silently stop doing what the config
    /// says.
    ListUndercut {
        /// The list.
        list: &'static str,
        /// Its score from the config.
        score: u32,
        /// What would happen to a listed number instead.
        consequence: &'static str,
    },
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::ThresholdOrder => {
                f.write_str("[thresholds] must satisfy flag <= redirect <= block")
            }
            FileProblem::RedirectNeedsUri => {
                f.write_str("[thresholds] redirect needs redirect_uri")
            }
            FileProblem::TooManyRules => f.write_str("too many rules"),
            FileProblem::ListUndercut {
                list,
                score,
                consequence,
            } => write!(
                f,
                "the {list} scores {score} (config [verdict]), so under these [thresholds] \
                 {consequence}; change the thresholds, or override the list's score on \
                 purpose with a rule `kind = \"list\"`, `list = \"{list}\"`"
            ),
        }
    }
}
