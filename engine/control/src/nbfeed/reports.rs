//! Delivering kuzet's reports to the Centre from the store's durable
//! outbox (`centre.db`): case decisions today, and whatever else is queued
//! there under its idempotency key.
//!
//! A report is written to the outbox before it is first sent, in the same
//! transaction as the fact behind it, and never changes after, so every
//! try sends the same bytes under the same key. It stays pending until the
//! Centre answers `201` (taken) or `200` (already taken under this key):
//! a SIGKILL between the Centre taking it and kuzet marking it delivered
//! means one more try, which the Centre answers `200`, so the effect is
//! exactly once. `400`, `409`, `413` and `422` are the Centre refusing the report
//! itself: it is dead-lettered (logged, counted, alerted on), never
//! retried. Anything else, or no answer, is tried again after a back-off
//! that doubles from 1 s to 5 min, with jitter.

use std::sync::Arc;
use std::time::Duration;

use kuzet_dataplane::metrics::Metrics;
use kuzet_store::Centre;
use tokio::sync::watch;

use super::pull::Http;
use super::NbankCounters;

/// Reports taken per round.
const PER_ROUND: usize = 32;

/// The reports' bodies, as docs/nb-feed.md "Reports" writes them: one
/// place that writes each kind, for the code that queues them and for
/// the fuzz target that checks the Centre can read them.
pub mod body {
    use serde_json::{json, Value};

    use crate::nbfeed::to_rfc3339;

    /// `decision`: the outcome of the case on `alert`'s `number`.
    pub fn decision(
        alert: &str,
        number: &str,
        confirmed: bool,
        decided_at_s: i64,
        bss_ref: &str,
        note: &str,
    ) -> Value {
        json!({
            "v": 1,
            "kind": "decision",
            "alert": alert,
            "number": number,
            "outcome": if confirmed { "confirmed" } else { "not_confirmed" },
            "decided_at": to_rfc3339(decided_at_s),
            "bss_ref": bss_ref,
            "note": note,
        })
    }

    /// What a `fraud_number` report says of its incident.
    pub struct FraudNumber<'a> {
        /// The number (E.164).
        pub number: &'a str,
        /// `asserted` or `listed`.
        pub basis: &'a str,
        /// `STORE/ID`.
        pub incident: &'a str,
        /// First and last call, Unix seconds.
        pub seen_s: (i64, i64),
        /// Blocked and flagged calls.
        pub blocked: u64,
        /// Flagged calls.
        pub flagged: u64,
        /// The rules that fired.
        pub rules: &'a [String],
    }

    /// `fraud_number`: a number that made fraud-like calls.
    pub fn fraud_number(f: &FraudNumber<'_>) -> Value {
        json!({
            "v": 1,
            "kind": "fraud_number",
            "number": f.number,
            "basis": f.basis,
            "incident": f.incident,
            "first_seen": to_rfc3339(f.seen_s.0),
            "last_seen": to_rfc3339(f.seen_s.1),
            "blocked": f.blocked,
            "flagged": f.flagged,
            "rules": f.rules,
        })
    }

    /// `potential_victim`: `callee` answered `source` at `at_s`.
    pub fn potential_victim(
        callee: &str,
        source: &str,
        at_s: i64,
        incident: &str,
        category: &str,
    ) -> Value {
        json!({
            "v": 1,
            "kind": "potential_victim",
            "number": callee,
            "source": source,
            "at": to_rfc3339(at_s),
            "incident": incident,
            "category": category,
        })
    }

    /// One feedback hit: the entry (a number or a range), its case when
    /// kuzet still holds it, the calls.
    pub fn hit(target: &str, case: Option<&str>, calls: u64) -> Value {
        match case {
            Some(c) => json!({"number": target, "case": c, "calls": calls}),
            None => json!({"number": target, "calls": calls}),
        }
    }

    /// `feedback`: hits on the feed's entries over `[from, to)`.
    pub fn feedback(from_s: i64, to_s: i64, hits: &[Value]) -> Value {
        json!({
            "v": 1,
            "kind": "feedback",
            "from": to_rfc3339(from_s),
            "to": to_rfc3339(to_s),
            "hits": hits,
        })
    }
}

/// What an answer means for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Taken (now or before): done.
    Taken,
    /// Refused as such: dead-lettered.
    Refused,
    /// Not taken: try again.
    Again,
}

/// How kuzet reads the Centre's status `s` (docs/nb-feed.md).
pub fn answer(s: u16) -> Answer {
    match s {
        200 | 201 => Answer::Taken,
        400 | 409 | 413 | 422 => Answer::Refused,
        _ => Answer::Again,
    }
}

/// Delivers the outbox until `shutdown`.
pub async fn run(
    http: Http,
    store: Arc<dyn Centre>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let c = metrics.counter_set::<NbankCounters>();
    let mut seed = kuzet_store::now_us() as u64 | 1;
    let mut last_warn: Option<std::time::Instant> = None;
    loop {
        let st = store.clone();
        let due =
            tokio::task::spawn_blocking(move || st.due_reports(kuzet_store::now_us(), PER_ROUND))
                .await;
        let due = match due {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the Centre's outbox failed; pausing");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let idle = due.is_empty();
        for d in due {
            if *shutdown.borrow() {
                return;
            }
            let st = store.clone();
            let id = d.id;
            if tokio::task::spawn_blocking(move || st.report_tried(id))
                .await
                .map_or(true, |r| r.is_err())
            {
                break;
            }
            let sent = http.post_report(&d.key, &d.body).await;
            let st = store.clone();
            let now = kuzet_store::now_us();
            let verdict = match &sent {
                Ok(s) => answer(*s),
                Err(_) => Answer::Again,
            };
            let error = match &sent {
                Ok(s) => format!("the Centre answered {s}"),
                Err(e) => e.clone(),
            };
            match verdict {
                Answer::Taken => {
                    c.reports_delivered.inc();
                    let _ = tokio::task::spawn_blocking(move || st.report_delivered(id, now)).await;
                }
                Answer::Refused => {
                    c.reports_dead_lettered.inc();
                    tracing::warn!(key = %d.key, kind = %d.kind, error = %error, "the Centre refused a report; it is dead-lettered (`kuzet cases reports --state dead_letter`)");
                    let _ = tokio::task::spawn_blocking(move || st.report_dead_letter(id, &error))
                        .await;
                }
                Answer::Again => {
                    c.reports_retries.inc();
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let wait = crate::report::backoff(d.attempts, seed);
                    if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_warn = Some(std::time::Instant::now());
                        tracing::warn!(key = %d.key, error = %crate::safe::visible(&error), retry_in_ms = wait.as_millis() as u64, "a report to the Centre failed; it stays queued");
                    }
                    let next = now + wait.as_micros() as i64;
                    let _ = tokio::task::spawn_blocking(move || st.report_retry(id, next, &error))
                        .await;
                }
            }
        }
        if idle {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_centres_verdict_on_a_report_dead_letters_it() {
        assert_eq!(answer(201), Answer::Taken);
        assert_eq!(answer(200), Answer::Taken);
        for s in [400, 409, 413, 422] {
            assert_eq!(answer(s), Answer::Refused, "{s}");
        }
        // A proxy's or a server's trouble is tried again.
        for s in [401, 403, 404, 429, 500, 502, 503, 504] {
            assert_eq!(answer(s), Answer::Again, "{s}");
        }
    }
}
