//! Talking to the Centre: one HTTP client (rustls; the Centre's CA, an
//! optional client certificate for mTLS; no proxy, no redirects, a
//! deadline on every request, bodies read up to a bound), and the puller
//! task that keeps the feed and the alerts up to date.
//!
//! Each round the puller asks for the next feed batch after the layer's
//! cursor, and goes on asking while batches come. A batch is checked on
//! a blocking thread, in order: its signature over the raw bytes, then
//! its syntax, then its place in the sequence, then every number against
//! the plan. Only a batch that passes all four is written to the store
//! (with the cursor, in one transaction) and then applied to the layer,
//! and the publisher is woken to swap it in. A refused batch changes
//! nothing; it is counted by reason and logged at WARN (at most once a
//! minute, with how many were refused meanwhile), and the
//! next round asks again from the same cursor: a gap is fetched again
//! from the last good batch. The alerts are pulled the same way into
//! cases ([`super::cases`]).
//!
//! Between rounds it sleeps until the next poll. Expiry is a task of its
//! own ([`Puller::expiry`]), woken at the start of every second, so
//! entries leave on time with no reload even while a request to a stalled
//! Centre waits out its deadline.
//! The feed's staleness (time since its last good answer) is a gauge, a
//! WARN line once a minute past `stale_after_s`, and a `/readyz` warning;
//! nothing of it ever reaches a call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kuzet_dataplane::metrics::{Gauge, Metrics};
use kuzet_store::Centre;
use tokio::sync::watch;

use super::batch::{self, Key, Rejected, MAX_BATCH};
use super::cases::CaseDesk;
use super::layer::FeedLayer;
use super::NbankCounters;
use crate::publishing::Nudge;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Kuzet-Signature";

/// Batches taken in one round before the puller looks at the clock again.
const BATCHES_PER_ROUND: usize = 64;

/// What one request for news gave.
#[derive(Debug)]
pub enum Fetched {
    /// A batch: its bytes and its signature header.
    Batch {
        /// The body, exactly as sent.
        body: Vec<u8>,
        /// The `Kuzet-Signature` header (empty when absent).
        signature: String,
    },
    /// Nothing new (204).
    Nothing,
}

/// The Centre's HTTP client.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

/// PEM files for TLS, already read.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// The Centre's CA.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl Http {
    /// A client for base URL `base` (checked by [`super::NbankConfig::check`]).
    pub fn new(base: &str, timeout: Duration, tls: &TlsFiles) -> Result<Http, String> {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("kuzet/", env!("CARGO_PKG_VERSION")))
            .https_only(!base.starts_with("http://"));
        if let Some(ca) = &tls.ca_pem {
            for c in reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| format!("nbank.ca_file: {e}"))?
            {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = &tls.identity_pem {
            let mut pem = cert.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("nbank.client_cert_file / client_key_file: {e}"))?;
            b = b.identity(id);
        }
        let client = b
            .build()
            .map_err(|e| format!("the Centre's HTTP client: {e}"))?;
        Ok(Http {
            client,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Asks `stream` (`batches` or `alerts`) for what follows `after`.
    pub async fn fetch(&self, stream: &str, after: u64) -> Result<Fetched, String> {
        let url = format!("{}/v1/{stream}?after={after}", self.base);
        let mut resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        match resp.status().as_u16() {
            204 => return Ok(Fetched::Nothing),
            200 => {}
            s => return Err(format!("GET {url}: the Centre answered {s}")),
        }
        if resp.content_length().is_some_and(|n| n > MAX_BATCH as u64) {
            return Err(format!(
                "GET {url}: a batch larger than {} MiB",
                MAX_BATCH >> 20
            ));
        }
        let signature = resp
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: reading the body: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BATCH {
                return Err(format!(
                    "GET {url}: a batch larger than {} MiB",
                    MAX_BATCH >> 20
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched::Batch { body, signature })
    }

    /// Posts one report; returns the status (or why there is none).
    pub async fn post_report(&self, key: &str, body: &str) -> Result<u16, String> {
        let url = format!("{}/v1/reports", self.base);
        let resp = self
            .client
            .post(&url)
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", error_chain(&e)))?;
        Ok(resp.status().as_u16())
    }
}

/// Counts a refused batch (of the feed or of the alerts) by its reason.
pub fn count_refusal(c: &NbankCounters, r: &Rejected) {
    match r {
        Rejected::Replay { .. } => c.rejected_replay.inc(),
        Rejected::Gap { .. } => c.rejected_gap.inc(),
        Rejected::NoSignature(_) | Rejected::BadSignature => c.rejected_signature.inc(),
        Rejected::UnknownKey(_) | Rejected::KeyNotValid(_) => c.rejected_key.inc(),
        Rejected::Malformed { .. } | Rejected::TooLarge => c.rejected_malformed.inc(),
    }
}

/// An error with its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A WARN line at most once a minute per kind, saying how many were held
/// back meanwhile.
#[derive(Debug, Default)]
pub struct Quiet {
    last: Option<Instant>,
    held: u64,
}

impl Quiet {
    /// Whether to log now, and how many were held back since the last.
    pub fn pass(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// What the puller needs.
pub struct Puller {
    /// The Centre's client.
    pub http: Http,
    /// The Centre's keys.
    pub keys: Arc<[Key]>,
    /// The feed's layer.
    pub layer: Arc<FeedLayer>,
    /// Where applied batches and cases are kept.
    pub store: Arc<dyn Centre>,
    /// Opens cases from alerts.
    pub cases: Arc<CaseDesk>,
    /// Wakes the publisher.
    pub nudge: Nudge,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// How often to ask.
    pub poll: Duration,
    /// Staler than this is stale.
    pub stale_after: Duration,
}

/// What checking one fetched feed batch came to.
enum Checked {
    /// Applied: the store and the layer hold it.
    Applied { seq: u64, entries: usize },
    /// Refused: the reason.
    Refused(Rejected),
    /// The store could not keep it: not applied, asked again next round.
    NotKept(String),
    /// The store holds a later batch than the layer (another node kept
    /// it, with a store every node shares): the layer is brought to the
    /// store's batch and the feed asked again from there.
    Behind(String),
}

impl Puller {
    /// The same puller writing through `store` (and its case desk too):
    /// the feed's leader's, through a port fenced by its lease.
    pub fn with_store(&self, store: Arc<dyn Centre>) -> Puller {
        Puller {
            http: self.http.clone(),
            keys: self.keys.clone(),
            layer: self.layer.clone(),
            store: store.clone(),
            cases: Arc::new(self.cases.with_store(store)),
            nudge: self.nudge.clone(),
            metrics: self.metrics.clone(),
            poll: self.poll,
            stale_after: self.stale_after,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let c = self.metrics.counter_set::<NbankCounters>();
        self.metrics.set(Gauge::NbankOn, 1);
        self.metrics
            .set(Gauge::NbankSeq, self.layer.cursor() as i64);
        let started = Instant::now();
        let mut last_ok: Option<Instant> = None;
        let mut quiet_fetch = Quiet::default();
        let mut quiet_refused = Quiet::default();
        let mut quiet_stale = Quiet::default();
        loop {
            // The feed: batches while they come.
            let mut feed_ok = false;
            for _ in 0..BATCHES_PER_ROUND {
                let cursor = self.layer.cursor();
                let fetched = match self.http.fetch("batches", cursor).await {
                    Ok(f) => f,
                    Err(e) => {
                        c.fetch_errors.inc();
                        if let Some(held) = quiet_fetch.pass() {
                            tracing::warn!(error = %crate::safe::visible(&e), held_back = held, "the National Bank feed did not answer; the last good layer stays in force");
                        }
                        break;
                    }
                };
                let Fetched::Batch { body, signature } = fetched else {
                    feed_ok = true;
                    break;
                };
                let me = self.clone();
                let checked = tokio::task::spawn_blocking(move || me.take_batch(body, &signature))
                    .await
                    .unwrap_or_else(|e| Checked::NotKept(format!("the check crashed: {e}")));
                match checked {
                    Checked::Applied { seq, entries } => {
                        c.batches_applied.inc();
                        c.entries_applied.add(entries as u64);
                        self.metrics.set(Gauge::NbankSeq, seq as i64);
                        self.nudge.notify_one();
                        feed_ok = true;
                        tracing::info!(
                            seq,
                            entries,
                            in_force = self.layer.len(),
                            "National Bank feed batch applied"
                        );
                    }
                    Checked::Refused(r) => {
                        count_refusal(&c, &r);
                        if let Some(held) = quiet_refused.pass() {
                            tracing::warn!(cursor, reason = %r, held_back = held, "National Bank feed batch refused; the layer in force stays");
                        }
                        break;
                    }
                    Checked::NotKept(e) => {
                        tracing::warn!(error = %e, "a National Bank feed batch could not be kept; asking again next round");
                        break;
                    }
                    Checked::Behind(e) => {
                        tracing::info!(reason = %e, "the store holds later National Bank feed batches than this node's layer; catching up");
                        if let Err(e) = super::follow::catch_up(&self).await {
                            tracing::warn!(error = %e, "catching up with the store's feed failed; asking again next round");
                            break;
                        }
                    }
                }
            }
            if feed_ok {
                last_ok = Some(Instant::now());
                self.metrics
                    .set(Gauge::NbankLastOkUnix, kuzet_store::now_us() / 1_000_000);
            }
            // The alerts.
            self.cases.pull(&self.http, &self.keys).await;
            // How stale.
            let since = last_ok.map_or(started.elapsed(), |t| t.elapsed());
            let stale = since > self.stale_after;
            self.metrics.set(Gauge::NbankStale, i64::from(stale));
            if stale {
                if let Some(_held) = quiet_stale.pass() {
                    tracing::warn!(stale_s = since.as_secs(), last_good_batch = self.layer.cursor(), "the National Bank feed is stale; the last good layer stays in force and its entries still expire");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Takes entries out of the layer when their time comes, until
    /// `shutdown`: a task of its own, so a feed that stalls a request
    /// never holds an expiry back. It sleeps to the next expiry (at most a
    /// second, so an entry added meanwhile is seen), and wakes the
    /// publisher when something left.
    pub async fn expiry(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let c = self.metrics.counter_set::<NbankCounters>();
        loop {
            if self
                .layer
                .next_expiry()
                .is_some_and(|t| t <= self.layer.now())
            {
                let l = self.layer.clone();
                let gone = tokio::task::spawn_blocking(move || l.expire())
                    .await
                    .unwrap_or(0);
                if gone > 0 {
                    c.entries_expired.add(gone as u64);
                    self.nudge.notify_one();
                    tracing::info!(
                        gone,
                        in_force = self.layer.len(),
                        "National Bank feed entries expired"
                    );
                }
            }
            // Whole seconds: entries expire on the second. Wake at the
            // start of the next one, or of the one the next entry leaves.
            let now_ms = kuzet_store::now_us() / 1_000;
            let next_second = Duration::from_millis((1_000 - now_ms.rem_euclid(1_000)) as u64);
            tokio::select! {
                _ = tokio::time::sleep(next_second) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Checks one fetched batch and, when it passes, keeps it (store,
    /// then layer). Runs on a blocking thread.
    fn take_batch(&self, body: Vec<u8>, signature: &str) -> Checked {
        let now = self.layer.now();
        if let Err(r) = batch::verify(&body, signature, &self.keys, now) {
            return Checked::Refused(r);
        }
        let b = match batch::parse(&body) {
            Ok(b) => b,
            Err(r) => return Checked::Refused(r),
        };
        // The bytes are done with: a first batch's 190 MB are not held
        // while the store and the layer take it.
        drop(body);
        if let Err(r) = batch::follows(b.seq, self.layer.cursor()) {
            return Checked::Refused(r);
        }
        if let Err((line, why)) = self.layer.check(&b.entries) {
            return Checked::Refused(Rejected::Malformed { line, why });
        }
        let (seq, entries) = (b.seq, b.entries.len());
        let changes = FeedLayer::changes(b.entries);
        match self.store.feed_apply(seq, &changes) {
            Ok(()) => {}
            Err(e @ kuzet_store::StoreError::Conflict { .. }) => {
                return Checked::Behind(e.to_string())
            }
            Err(e) => return Checked::NotKept(e.to_string()),
        }
        self.layer.apply(seq, &changes);
        Checked::Applied { seq, entries }
    }
}
