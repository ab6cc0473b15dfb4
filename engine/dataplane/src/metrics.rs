//! Counters and the service-time histogram.
//!
//! Counters are plain relaxed atomics named `*_total`; no label ever holds a
//! phone number or Call-ID. Service time goes into an HDR histogram: each
//! worker records into its own and merges it into the shared one now and
//! then, so the call path never waits on a lock held by the reporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

macro_rules! counters {
    ($($name:ident => $text:literal,)*) => {
        /// Every counter kuzet keeps; each variant's name in metrics and
        /// logs is the string beside it below.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types, missing_docs)]
        pub enum Counter { $($name,)* }

        const NAMES: &[&str] = &[$($text,)*];
    };
}

counters! {
    Requests => "sip_requests_total",
    Responses => "sip_responses_total",
    Invites => "invites_total",
    InviteRetransmissions => "invite_retransmissions_total",
    TransactionsUntracked => "transactions_untracked_total",
    Allowed => "verdict_allow_total",
    Flagged => "verdict_flag_total",
    Blocked => "verdict_block_total",
    Redirected => "verdict_redirect_total",
    ShadowDiffers => "rules_shadow_differs_total",
    VerdictLogDropped => "verdict_log_dropped_total",
    VerdictsLogged => "verdicts_logged_total",
    StoreDropped => "store_dropped_total",
    StoreRecorded => "store_records_total",
    StoreErrors => "store_write_errors_total",
    StoreRetired => "store_retired_total",
    RegisterDelivered => "register_delivered_total",
    RegisterRetries => "register_retries_total",
    RegisterDeadLetters => "register_dead_letters_total",
    Outcomes => "outcome_events_total",
    OutcomesRefused => "outcome_events_refused_total",
    OutcomesIgnored => "outcome_events_unknown_caller_total",
    FailOpenOverload => "failopen_overload_total",
    FailOpenInternal => "failopen_internal_total",
    Unparseable => "sip_unparseable_total",
    BadRequests => "sip_bad_request_total",
    Forwarded => "proxy_forwarded_total",
    ForgedHeadersRemoved => "proxy_foreign_kuzet_headers_removed_total",
    ResponsesRouted => "proxy_responses_routed_total",
    ResponsesDropped => "sip_responses_dropped_total",
    AcksAbsorbed => "acks_absorbed_total",
    UnknownSource => "unknown_source_total",
    SendErrors => "send_errors_total",
    RepliesTooBig => "replies_too_big_total",
    TcpConnections => "tcp_connections_total",
    TcpRefused => "tcp_refused_total",
    TcpClosedBadInput => "tcp_closed_bad_input_total",
    TcpRefusedPerSource => "tcp_refused_per_source_total",
    TcpClosedSlowMessage => "tcp_closed_slow_message_total",
    TcpClosedNotReading => "tcp_closed_not_reading_total",
    WorkerPanics => "worker_panics_total",
    CallsExpired => "proxy_calls_expired_total",
    ListReloads => "list_reloads_total",
    ListReloadFailures => "list_reload_failures_total",
    ListReloadsAbandoned => "list_reloads_abandoned_total",
}

/// Shared counters and the merged latency histogram.
pub struct Metrics {
    counters: Vec<AtomicU64>,
    latency: Mutex<Histogram<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counters: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            latency: Mutex::new(new_histogram()),
        }
    }
}

/// A histogram of microseconds from 1 µs to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

impl Metrics {
    /// Adds one.
    #[inline]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        if let Some(a) = self.counters.get(c as usize) {
            a.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Current value.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters
            .get(c as usize)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Every counter with its name, for logs and reports.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        NAMES
            .iter()
            .zip(&self.counters)
            .map(|(n, a)| (*n, a.load(Ordering::Relaxed)))
            .collect()
    }

    /// Folds a worker's local histogram into the shared one and clears it.
    /// Uses `try_lock`: if the reporter holds the lock, try again later.
    pub fn merge_latency(&self, local: &mut Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        if let Ok(mut h) = self.latency.try_lock() {
            let _ = h.add(&*local);
            local.reset();
        }
    }

    /// A copy of the merged histogram.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_histogram())
    }

    /// One line summarizing service time.
    pub fn latency_line(&self) -> String {
        let h = self.latency();
        if h.is_empty() {
            return "service time: no requests yet".into();
        }
        format!(
            "service time (µs) over {} requests: p50={} p90={} p99={} p99.9={} max={}",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        )
    }

    /// The non-zero counters on one line.
    pub fn counters_line(&self) -> String {
        let parts: Vec<String> = self
            .snapshot()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        if parts.is_empty() {
            "counters: all zero".into()
        } else {
            format!("counters: {}", parts.join(" "))
        }
    }
}

/// Records `count` requests that each took `d`, in microseconds, clamped
/// into the histogram's range.
#[inline]
pub fn record(h: &mut Histogram<u64>, d: Duration, count: u64) {
    let us = (d.as_micros() as u64).clamp(1, 60_000_000);
    let _ = h.record_n(us, count);
}
