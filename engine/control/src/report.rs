//! Delivering incidents to the pre-trial register (`kuzet.register.v1`)
//! from the store's durable outbox, on the control plane's runtime.
//!
//! At least once: an entry stays pending until the register answers, and
//! survives restarts in the store. Exactly once in effect: every report
//! carries the incident's idempotency key (`node/incident id`) and its
//! sequence, and an entry is marked tried before it is first sent, after
//! which it never changes, so a retry is byte for byte the same report.
//! Failures back off exponentially with jitter (1 s doubling to 5 min); a
//! register that refuses a report as invalid dead-letters it, and the
//! incident shows why. A stalled register holds up only this task: each
//! call has a deadline, and the call path never waits on any of it.
//!
//! The outbox is a port ([`Outbox`]): the reporter claims, acknowledges,
//! retries and dead-letters through it on the runtime's blocking pool, and
//! builds each report from the entry's own wire payload
//! ([`Payload`]), never from the store's rows.

use std::sync::Arc;
use std::time::Duration;

use kuzet_api::register as pb;
use kuzet_api::register::register_service_client::RegisterServiceClient;
use kuzet_dataplane::counter_set;
use kuzet_dataplane::metrics::Metrics;
use kuzet_store::outbox::{Due, Payload};
use kuzet_store::{Outbox, StoreError};

/// The longest case id kuzet keeps from the register.
pub const CASE_ID_MAX: usize = 256;
/// The longest error text kuzet keeps from the register.
pub const ERROR_MAX: usize = 1024;
/// The largest answer kuzet decodes from the register: a case id and a
/// few fields.
const ANSWER_MAX: usize = 16 * 1024;

/// `s` cut to at most `max` bytes (on a character boundary), saying so.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut at = max.saturating_sub(16);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}...(cut, {} bytes)", &s[..at], s.len())
}
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Where and how incidents are reported.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://127.0.0.1:50061` (loopback only) or `https://host:port`.
    pub endpoint: String,
    /// PEM of the CA that signs the register's certificate (https).
    pub ca_pem: Option<Vec<u8>>,
    /// Deadline of each call.
    pub timeout: Duration,
    /// This node's name, reported as the reporting node.
    pub node: String,
    /// The store's random id, the first half of every idempotency key: it
    /// survives a renamed host and differs between stores.
    pub store_id: String,
}

/// The report an outbox entry sends: its payload `p` as it was queued,
/// its key and sequence, every number it names with its role, and the
/// digest of its evidence.
pub fn to_report(node: &str, store_id: &str, d: &Due, p: &Payload) -> pb::IncidentReport {
    let parties = p
        .parties
        .iter()
        .map(|p| pb::Party {
            number: p.number.clone(),
            role: p.role.clone(),
            basis: p.basis.clone(),
        })
        .collect();
    let mut r = pb::IncidentReport {
        idempotency_key: format!("{store_id}/{}", d.incident),
        sequence: d.seq as u64,
        kind: p.kind.clone(),
        key: p.key.clone(),
        reporting_node: node.to_string(),
        first_seen_us: p.first_seen_us,
        last_seen_us: p.last_seen_us,
        blocked: p.blocked,
        flagged: p.flagged,
        other: p.other,
        victims: p.victims.clone(),
        rules: p.rules.clone(),
        trunks: p.trunks.clone(),
        sources: p.sources.clone(),
        sample_verdict_ids: p.samples.clone(),
        evidence_sha256: String::new(),
        parties,
    };
    r.evidence_sha256 = evidence_digest(&r);
    r
}

/// SHA-256 (hex) of the report's protobuf encoding with the key, sequence
/// and digest fields empty: the evidence alone, in a canonical form (prost
/// writes fields in number order).
pub fn evidence_digest(r: &pb::IncidentReport) -> String {
    let mut canon = r.clone();
    canon.idempotency_key.clear();
    canon.sequence = 0;
    canon.evidence_sha256.clear();
    crate::access::hex(&Sha256::digest(canon.encode_to_vec()))
}

/// The register refused the report itself: retrying cannot help. Only
/// the register's own verdict on the report counts; an authentication or
/// routing answer (a proxy's 401, 403 or 404 during maintenance) is
/// retried, never dead-lettered.
fn permanent(c: Code) -> bool {
    matches!(c, Code::InvalidArgument | Code::FailedPrecondition)
}

/// The delay before try `attempts + 1`: 1 s doubling, at most 5 min, with
/// jitter (between half and all of it) so many nodes do not retry in step.
pub fn backoff(attempts: i64, jitter: u64) -> Duration {
    let base = 1_000u64 << attempts.clamp(0, 9) as u32;
    let capped = base.min(300_000);
    let half = capped / 2;
    Duration::from_millis(half + jitter % (half + 1))
}

fn channel(t: &Target) -> Result<Channel, String> {
    let mut ep = Endpoint::from_shared(t.endpoint.clone())
        .map_err(|e| format!("register endpoint {:?}: {e}", t.endpoint))?
        .connect_timeout(t.timeout)
        .timeout(t.timeout);
    if t.endpoint.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &t.ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| format!("register TLS: {e}"))?;
    }
    Ok(ep.connect_lazy())
}

counter_set! {
    /// The register reporter's counters.
    pub struct RegisterCounters {
        delivered => "register_delivered_total", "Incident submissions and updates the register acknowledged",
        retries => "register_retries_total", "Register deliveries that failed and will be retried",
        dead_letters => "register_dead_letters_total", "Incidents the register refused as invalid",
    }
}

/// Delivers the outbox until `shutdown`.
pub async fn run(
    target: Target,
    outbox: Arc<dyn Outbox>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let counters = metrics.counter_set::<RegisterCounters>();
    let ch = match channel(&target) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "incidents will not be reported");
            return;
        }
    };
    // A register's answer is a case id and a few fields: a huge one is
    // refused by the decoder, not buffered.
    let mut client = RegisterServiceClient::new(ch).max_decoding_message_size(ANSWER_MAX);
    let mut seed = kuzet_store::now_us() as u64 | 1;
    let mut last_error_log: Option<std::time::Instant> = None;
    loop {
        let due = port(&outbox, |o| o.due(kuzet_store::now_us(), 32)).await;
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed; pausing");
                pause(&mut shutdown).await;
                continue;
            }
        };
        if due.is_empty() {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
            }
        }
        for d in due {
            if *shutdown.borrow() {
                return;
            }
            let id = d.id;
            // What is sent is what the entry holds once marked tried: the
            // writer may have folded growth into it since it was read.
            let frozen = match port(&outbox, move |o| o.claim(id)).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: could not mark an entry tried; pausing");
                    pause(&mut shutdown).await;
                    break;
                }
            };
            // A payload that does not decode is never sent (an empty
            // report would accuse nobody, or the wrong number): it is
            // dead-lettered with the reason.
            let frozen = match frozen {
                Ok(i) => i,
                Err(why) => {
                    counters.dead_letters.inc();
                    tracing::error!(incident = d.incident, seq = d.seq, why = ?why, "outbox entry unreadable; dead-lettered");
                    let d = d.clone();
                    if let Err(e) = port(&outbox, move |o| o.dead_letter(&d, &why)).await {
                        tracing::warn!(error = %e, "outbox: could not dead-letter an entry; pausing");
                        pause(&mut shutdown).await;
                        break;
                    }
                    continue;
                }
            };
            let report = to_report(&target.node, &target.store_id, &d, &frozen);
            let sent = if d.kind == "submit" {
                client
                    .submit_incident(pb::SubmitIncidentRequest {
                        report: Some(report),
                    })
                    .await
                    .map(|r| r.into_inner().case_id)
            } else {
                client
                    .update_incident(pb::UpdateIncidentRequest {
                        report: Some(report),
                    })
                    .await
                    .map(|r| r.into_inner().case_id)
            };
            // What the register answers is bounded: a case id longer than
            // CASE_ID_MAX is not a case id (the delivery is retried: the
            // idempotency key makes that safe), and error texts are cut.
            let sent = match sent {
                Ok(case) if case.len() > CASE_ID_MAX || case.chars().any(char::is_control) => {
                    Err(tonic::Status::internal(format!(
                        "the register answered with a case id of {} bytes (at most {CASE_ID_MAX}, no control characters)",
                        case.len()
                    )))
                }
                other => other,
            };
            let outcome = match sent {
                Ok(case) => {
                    counters.delivered.inc();
                    let d = d.clone();
                    port(&outbox, move |o| o.delivered(&d, &case)).await
                }
                Err(s) if permanent(s.code()) => {
                    counters.dead_letters.inc();
                    let why = bounded(
                        &format!("refused by the register: {:?}: {}", s.code(), s.message()),
                        ERROR_MAX,
                    );
                    tracing::error!(incident = d.incident, seq = d.seq, why = ?why, "incident dead-lettered");
                    let d = d.clone();
                    port(&outbox, move |o| o.dead_letter(&d, &why)).await
                }
                Err(s) => {
                    counters.retries.inc();
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let wait = backoff(d.attempts, seed);
                    let why = bounded(&format!("{:?}: {}", s.code(), s.message()), ERROR_MAX);
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(incident = d.incident, seq = d.seq, error = ?why, retry_in_ms = wait.as_millis() as u64, "register delivery failed; will retry");
                        last_error_log = Some(std::time::Instant::now());
                    }
                    let next = kuzet_store::now_us() + wait.as_micros() as i64;
                    let d = d.clone();
                    port(&outbox, move |o| o.retry(&d, next, &why)).await
                }
            };
            if let Err(e) = outcome {
                // The entry stays as it was; pausing keeps a store that
                // cannot be written from turning into a resend loop.
                tracing::warn!(error = %e, "outbox: could not record a delivery outcome; pausing");
                pause(&mut shutdown).await;
                break;
            }
        }
    }
}

/// A second's pause after a store error (or until shutdown).
async fn pause(shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = shutdown.changed() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

/// Runs `f` on the outbox port, on a blocking thread (the port blocks).
async fn port<T: Send + 'static>(
    outbox: &Arc<dyn Outbox>,
    f: impl FnOnce(&dyn Outbox) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || f(outbox.as_ref()).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes_with_jitter() {
        for (attempts, lo, hi) in [
            (0, 500, 1000),
            (1, 1000, 2000),
            (3, 4000, 8000),
            (20, 150_000, 300_000),
        ] {
            for j in [0u64, 1, 77, u64::MAX] {
                let d = backoff(attempts, j).as_millis() as u64;
                assert!((lo..=hi).contains(&d), "{attempts} {j}: {d}");
            }
        }
    }

    #[test]
    fn the_digest_covers_the_evidence_not_the_key_or_sequence() {
        let inc = Payload::of(&kuzet_store::incident::Incident {
            kind: "source".into(),
            key: "+77011234567".into(),
            blocked: 3,
            ..Default::default()
        });
        let d = Due {
            id: 1,
            incident: 7,
            seq: 1,
            kind: "submit".into(),
            report: Ok(inc.clone()),
            attempts: 0,
        };
        let a = to_report("kz-1", "5eed", &d, &inc);
        assert_eq!(a.idempotency_key, "5eed/7");
        assert_eq!(a.reporting_node, "kz-1");
        let mut later = d.clone();
        later.seq = 2;
        assert_eq!(
            to_report("kz-1", "5eed", &later, &inc).evidence_sha256,
            a.evidence_sha256
        );
        let mut grown = inc.clone();
        grown.blocked = 4;
        assert_ne!(
            to_report("kz-1", "5eed", &later, &grown).evidence_sha256,
            a.evidence_sha256
        );
        assert_eq!(a.parties.len(), 1);
        assert_eq!(
            (a.parties[0].role.as_str(), a.parties[0].basis.as_str()),
            ("source", "listed")
        );
        assert_eq!(a.evidence_sha256.len(), 64);
    }
}
