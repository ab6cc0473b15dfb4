//! `[journal]`: where the call journal lives, how long and how much of it
//! is kept, and how quickly its files become readable.

use std::path::PathBuf;

use serde::Deserialize;

/// `[journal]`: every call's scoring facts and every outcome, in hourly
/// Parquet files that DuckDB, Spark or pandas read as they are.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Keep the journal (it needs a data directory: without `[store]`
    /// there is none).
    pub enabled: bool,
    /// Its folder. Unset: `journal` in the data directory; a relative
    /// path is resolved against the config file's folder.
    pub dir: Option<PathBuf>,
    /// Hours of calls kept. 192 (eight days) lets a promotion find the
    /// seven days of evidence `[publishing] backtest_min_hours` looks in.
    pub keep_hours: u32,
    /// The cap on the journal's files, MiB; past it the oldest hour goes
    /// first, and when nothing older is left new entries are dropped and
    /// counted.
    pub max_mb: u64,
    /// A file is closed, and readable, after this many seconds (a crash
    /// loses at most the file still open).
    pub roll_s: u32,
    /// Entries the queue between the call path and the writer holds; a
    /// full queue drops and counts (`journal_dropped_total`).
    pub queue: usize,
    /// The early warnings (`kuzet trends`) are read this often, seconds,
    /// and their counts served as `kuzet_trend_findings{kind}`; 0: never
    /// (the command still answers).
    pub trends_every_s: u32,
    /// Hours of journal each of those reads covers.
    pub trends_since_h: u32,
    /// The last hours of it that are the recent period, compared with the
    /// days before.
    pub trends_recent_h: u32,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: true,
            dir: None,
            keep_hours: 192,
            max_mb: 20_480,
            roll_s: 60,
            queue: 65_536,
            trends_every_s: 21_600,
            trends_since_h: 168,
            trends_recent_h: 24,
        }
    }
}

impl JournalConfig {
    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.keep_hours == 0 {
            return Err("[journal] keep_hours must be at least 1".into());
        }
        if self.max_mb == 0 {
            return Err("[journal] max_mb must be at least 1".into());
        }
        if !(1..=3600).contains(&self.roll_s) {
            return Err("[journal] roll_s must be between 1 and 3600".into());
        }
        if !(1024..=16 << 20).contains(&self.queue) {
            return Err("[journal] queue must be between 1024 and 16777216 entries".into());
        }
        if self.trends_recent_h == 0 || self.trends_recent_h >= self.trends_since_h {
            return Err(format!(
                "[journal] trends_recent_h ({}) must be at least 1 and less than trends_since_h ({})",
                self.trends_recent_h, self.trends_since_h
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_a_recent_period_past_the_window_does_not() {
        assert_eq!(JournalConfig::default().check(), Ok(()));
        let c: JournalConfig =
            serde_json::from_str(r#"{"trends_since_h": 24, "trends_recent_h": 24}"#).unwrap();
        let e = c.check().unwrap_err();
        assert!(
            e.contains("trends_recent_h (24)") && e.contains("trends_since_h (24)"),
            "{e}"
        );
        let off: JournalConfig = serde_json::from_str(r#"{"trends_every_s": 0}"#).unwrap();
        assert_eq!((off.trends_every_s, off.check()), (0, Ok(())));
    }
}
