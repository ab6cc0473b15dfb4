//! The investigators' gRPC API (`kuzet.investigation.v1`), served on the
//! control address from the control plane's own runtime, beside the
//! standard gRPC health service and server reflection.
//!
//! Every request is authenticated and authorized here, on the server
//! ([`crate::access`]), and every request, allowed or refused, is written
//! to the audit log with who asked, in which role, with which filter and
//! how many rows came back. SQLite work runs on the runtime's blocking
//! threads (at the control plane's lowered priority), each query on a
//! read-only connection of its own, so a long export never blocks the
//! writer or another query.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use kuzet_api::investigation as pb;
use kuzet_api::investigation::investigation_service_server::{
    InvestigationService, InvestigationServiceServer,
};
use kuzet_dataplane::handler::evidence::unix_us;
use kuzet_dataplane::handler::VerdictId;
use kuzet_rules::NumberingPlan;
use kuzet_store::incident::{self, Incident};
use kuzet_store::query::{self, Filter};
use kuzet_store::{audit, Record};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::access::{Access, Refusal, Role};

/// Refusals audited per second, at most.
const REFUSALS_PER_SEC: u32 = 20;
/// The longest filter text an audit entry keeps.
const AUDIT_FILTER_MAX: usize = 1024;
/// An export whose client reads nothing for this long is ended.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// What the service needs.
pub struct Investigation {
    /// The data directory; `None` when kuzet runs without a store.
    pub data_dir: Option<PathBuf>,
    /// Normalizes the numbers investigators type.
    pub plan: NumberingPlan,
    /// The configured tokens.
    pub access: Arc<Access>,
    /// The audit log's connection, opened on first use.
    audit: Arc<Mutex<Option<rusqlite::Connection>>>,
    /// Refusals audited this second: (window start, audited, suppressed).
    refusals: Arc<Mutex<(std::time::Instant, u32, u32)>>,
}

impl Investigation {
    /// A service over the store in `data_dir`.
    pub fn new(data_dir: Option<PathBuf>, plan: NumberingPlan, access: Arc<Access>) -> Self {
        Investigation {
            data_dir,
            plan,
            access,
            audit: Arc::default(),
            refusals: Arc::new(Mutex::new((std::time::Instant::now(), 0, 0))),
        }
    }
}

/// Serves the API, health and reflection on `listener` until `shutdown`.
pub async fn serve(
    listener: std::net::TcpListener,
    svc: Investigation,
    mut shutdown: watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "control listener failed");
            return;
        }
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<InvestigationServiceServer<Investigation>>()
        .await;
    let reflection = match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kuzet_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "gRPC reflection failed to build");
            return;
        }
    };
    tracing::info!(?addr, "control API serving");
    let r = tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(reflection)
        // Requests are filters: 64 KiB is plenty, and bounds what a
        // hostile client can make the server decode (and audit).
        .add_service(InvestigationServiceServer::new(svc).max_decoding_message_size(64 * 1024))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = shutdown.changed().await;
            },
        )
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "control API stopped");
    }
}

/// Who asked, once allowed.
#[derive(Clone)]
struct Caller {
    who: String,
    role: &'static str,
}

type CallStream = Pin<Box<dyn Stream<Item = Result<pb::Call, Status>> + Send + 'static>>;

const QUERY: &[Role] = &[Role::Investigator, Role::Admin];
const COUNT: &[Role] = &[Role::Investigator, Role::RuleAuthor, Role::Admin];
const AUDIT: &[Role] = &[Role::Admin];

impl Investigation {
    /// Authenticates and authorizes; a refusal is audited and returned as
    /// UNAUTHENTICATED or PERMISSION_DENIED.
    async fn admit<T>(
        &self,
        req: &Request<T>,
        action: &str,
        allowed: &[Role],
        filter: &str,
    ) -> Result<Caller, Status> {
        let bearer = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match self.access.check(bearer, allowed) {
            Ok(t) => Ok(Caller {
                who: t.name.clone(),
                role: t.role.as_str(),
            }),
            Err(refusal) => {
                let (who, role, outcome, status) = match refusal {
                    Refusal::Unauthenticated => (
                        "-".to_string(),
                        "-",
                        "unauthenticated",
                        Status::unauthenticated("a valid bearer token is required"),
                    ),
                    Refusal::Denied => {
                        let t = self.access.authenticate(bearer);
                        (
                            t.map_or("-".into(), |t| t.name.clone()),
                            t.map_or("-", |t| t.role.as_str()),
                            "denied",
                            Status::permission_denied(format!(
                                "{action} needs the role {}",
                                allowed
                                    .iter()
                                    .map(|r| r.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" or ")
                            )),
                        )
                    }
                };
                // Refusals are audited, up to a rate: a flood of bad tokens
                // must not fill the disk or starve the writer. The answer
                // is a refusal either way.
                if self.refusal_budget() {
                    let _ = self.record(&who, role, action, filter, 0, outcome).await;
                }
                Err(status)
            }
        }
    }

    /// One more refusal may be audited this second (at most
    /// [`REFUSALS_PER_SEC`]); the rest are counted in one log line.
    fn refusal_budget(&self) -> bool {
        let Ok(mut g) = self.refusals.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        if now.duration_since(g.0) >= std::time::Duration::from_secs(1) {
            if g.2 > 0 {
                tracing::warn!(
                    suppressed = g.2,
                    "refused control API requests beyond the audit rate"
                );
            }
            *g = (now, 0, 0);
        }
        if g.1 < REFUSALS_PER_SEC {
            g.1 += 1;
            true
        } else {
            g.2 += 1;
            false
        }
    }

    /// Appends to the audit log (the filter cut at 1 KiB). An answer that
    /// cannot be audited is not given: the caller turns the error into
    /// UNAVAILABLE.
    async fn record(
        &self,
        who: &str,
        role: &str,
        action: &str,
        filter: &str,
        rows: u64,
        outcome: &str,
    ) -> Result<(), Status> {
        let Some(dir) = self.data_dir.clone() else {
            return Ok(());
        };
        let mut filter = filter.to_string();
        if filter.len() > AUDIT_FILTER_MAX {
            let mut cut = AUDIT_FILTER_MAX;
            while !filter.is_char_boundary(cut) {
                cut -= 1;
            }
            filter.truncate(cut);
            filter.push_str("...(cut)");
        }
        let e = audit::Entry {
            id: 0,
            ts_us: unix_us(),
            who: who.into(),
            role: role.into(),
            action: action.into(),
            filter,
            rows,
            outcome: outcome.into(),
        };
        let conn = self.audit.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut guard = conn.lock().map_err(|_| "audit lock poisoned".to_string())?;
            if guard.is_none() {
                *guard = Some(audit::open(&dir).map_err(|e| e.to_string())?);
            }
            let c = guard.as_ref().ok_or("no audit connection")?;
            audit::append(c, &e).map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
        let e = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %e, "writing the audit log failed; the request is refused");
        Err(Status::unavailable(
            "the audit log cannot be written, so nothing is answered; try again later",
        ))
    }

    /// Passes `r` through; a refusal of the request itself (a bad filter
    /// or cursor) is audited with its reason before it is returned.
    async fn checked<T>(
        &self,
        who: &Caller,
        action: &str,
        desc: &str,
        r: Result<T, Status>,
    ) -> Result<T, Status> {
        if let Err(e) = &r {
            let outcome = format!("invalid: {}", e.message());
            self.record(&who.who, who.role, action, desc, 0, &outcome)
                .await?;
        }
        r
    }

    fn store_dir(&self) -> Result<PathBuf, Status> {
        self.data_dir.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this kuzet runs without a store (--no-store): nothing is recorded",
            )
        })
    }

    /// The store's filter from the request's, checked.
    fn filter(&self, f: Option<pb::CallFilter>) -> Result<Filter, Status> {
        let f = f.unwrap_or_default();
        let text = |s: String| (!s.trim().is_empty()).then(|| s.trim().to_string());
        let number = match text(f.number) {
            Some(n) => Some(
                self.plan
                    .normalize(n.as_bytes())
                    .or_else(|| {
                        // Typed with spaces, dashes or brackets.
                        let digits: String = n
                            .chars()
                            .filter(|c| c.is_ascii_digit() || *c == '+')
                            .collect();
                        self.plan.normalize(digits.as_bytes())
                    })
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{n:?} is not a number the numbering plan knows"
                        ))
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let decision = text(f.decision);
        if let Some(d) = &decision {
            if !["allow", "flag", "redirect", "block"].contains(&d.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "decision must be allow, flag, redirect or block, not {d:?}"
                )));
            }
        }
        let verdict_id = match text(f.verdict_id) {
            Some(v) => Some(
                v.parse::<VerdictId>()
                    .map_err(|e| Status::invalid_argument(format!("{v:?}: {e}")))?
                    .to_string(),
            ),
            None => None,
        };
        Ok(Filter {
            number,
            since_us: (f.since_us != 0).then_some(f.since_us),
            until_us: (f.until_us != 0).then_some(f.until_us),
            decision,
            rule: text(f.rule),
            trunk: text(f.trunk),
            incident: (f.incident != 0).then_some(f.incident),
            verdict_id,
        })
    }
}

/// The filter as the investigator sent it, for the audit log.
fn filter_json(f: &Option<pb::CallFilter>) -> String {
    let f = f.clone().unwrap_or_default();
    serde_json::json!({
        "number": f.number,
        "since_us": f.since_us,
        "until_us": f.until_us,
        "decision": f.decision,
        "rule": f.rule,
        "trunk": f.trunk,
        "incident": f.incident,
        "verdict_id": f.verdict_id,
    })
    .to_string()
}

fn cursor(s: &str) -> Result<Option<i64>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| Status::invalid_argument("a cursor is the next_cursor of a previous page"))
}

fn store_err(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("store: {e}"))
}

/// The wire form of a recorded call.
pub fn to_pb(r: Record) -> pb::Call {
    pb::Call {
        verdict_id: r.verdict_id,
        time_us: r.ts_us,
        node: r.node,
        call_id: r.call_id,
        request_uri: r.ruri,
        from_header: r.from_hdr,
        pai_header: r.pai_hdr,
        a_number: r.a.unwrap_or_default(),
        b_number: r.b.unwrap_or_default(),
        from_number: r.from_num.unwrap_or_default(),
        pai_number: r.pai_num.unwrap_or_default(),
        trunk: r.trunk.unwrap_or_default(),
        trunk_kind: r.trunk_kind.unwrap_or_default(),
        source: r.source,
        transport: r.transport,
        decision: r.decision,
        shadow_decision: r.shadow_decision,
        sip_code: u32::from(r.code),
        score: r.score,
        sampled: r.sampled,
        explanation: r.explanation,
        rules: r
            .rules
            .into_iter()
            .map(|h| pb::RuleHit {
                id: h.id,
                value: h.value,
                threshold: h.threshold,
                shadow: h.shadow,
                why: h.why,
            })
            .collect(),
        list_hit: r.list_hit.map(|l| pb::ListHit {
            list: l.list,
            side: l.side,
            exact: l.exact,
            reason: l.reason,
        }),
        lists_version: r.lists_version,
        headers: r.headers,
        incident: r.incident.unwrap_or(0),
    }
}

/// The highest report sequence the register has taken (0: none yet).
fn delivered_seq(c: &rusqlite::Connection, id: i64) -> rusqlite::Result<u64> {
    c.query_row(
        "SELECT coalesce(max(seq), 0) FROM outbox WHERE incident = ?1 AND state = 'done'",
        [id],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

/// The wire form of an incident.
pub fn incident_pb(i: Incident, sequence: u64) -> pb::Incident {
    pb::Incident {
        id: i.id,
        kind: i.kind,
        key: i.key,
        state: i.state,
        first_seen_us: i.first_seen_us,
        last_seen_us: i.last_seen_us,
        blocked: i.blocked,
        flagged: i.flagged,
        other: i.other,
        victims: i.evidence.victims.into_iter().collect(),
        rules: i.evidence.rules.into_iter().collect(),
        trunks: i.evidence.trunks.into_iter().collect(),
        sources: i.evidence.sources.into_iter().collect(),
        sample_verdict_ids: i.evidence.samples,
        sequence,
        register_state: i.register_state,
        register_error: i.register_error,
    }
}

#[tonic::async_trait]
impl InvestigationService for Investigation {
    async fn query_calls(
        &self,
        req: Request<pb::QueryCallsRequest>,
    ) -> Result<Response<pb::QueryCallsResponse>, Status> {
        let r = req.get_ref().clone();
        let desc = format!(
            "{{\"filter\":{},\"cursor\":{:?},\"page_size\":{}}}",
            filter_json(&r.filter),
            r.cursor,
            r.page_size
        );
        let who = self.admit(&req, "QueryCalls", QUERY, &desc).await?;
        let filter = self
            .checked(&who, "QueryCalls", &desc, self.filter(r.filter))
            .await?;
        let before = self
            .checked(&who, "QueryCalls", &desc, cursor(&r.cursor))
            .await?;
        let dir = self.store_dir()?;
        let limit = match r.page_size {
            0 => 100,
            n => n as usize,
        };
        let page = tokio::task::spawn_blocking(move || {
            let c = kuzet_store::open_reader(&dir).map_err(store_err)?;
            query::calls(&c, &filter, before, limit).map_err(store_err)
        })
        .await
        .map_err(store_err)??;
        self.record(
            &who.who,
            who.role,
            "QueryCalls",
            &desc,
            page.calls.len() as u64,
            "ok",
        )
        .await?;
        Ok(Response::new(pb::QueryCallsResponse {
            calls: page.calls.into_iter().map(to_pb).collect(),
            next_cursor: page.next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    type ExportCallsStream = CallStream;

    async fn export_calls(
        &self,
        req: Request<pb::ExportCallsRequest>,
    ) -> Result<Response<CallStream>, Status> {
        let r = req.get_ref().clone();
        let desc = format!("{{\"filter\":{}}}", filter_json(&r.filter));
        let who = self.admit(&req, "ExportCalls", QUERY, &desc).await?;
        let filter = self
            .checked(&who, "ExportCalls", &desc, self.filter(r.filter))
            .await?;
        let dir = self.store_dir()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::Call, Status>>(256);
        // The export is audited before the first row leaves; if that
        // cannot be written, nothing is sent.
        self.record(&who.who, who.role, "ExportCalls", &desc, 0, "started")
            .await?;
        let audit = Investigation {
            data_dir: self.data_dir.clone(),
            plan: self.plan.clone(),
            access: self.access.clone(),
            audit: self.audit.clone(),
            refusals: self.refusals.clone(),
        };
        let task = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let c = kuzet_store::open_reader(&dir).map_err(|e| e.to_string())?;
            let mut sent = 0u64;
            let mut stalled = false;
            query::export(&c, &filter, |rec| {
                // A client that went away, or reads nothing for a minute,
                // ends the export (and its read snapshot, which holds the
                // WAL back).
                let mut item = Ok(to_pb(rec));
                let since = std::time::Instant::now();
                loop {
                    match tx.try_send(item) {
                        Ok(()) => {
                            sent += 1;
                            return true;
                        }
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
                        Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                            if since.elapsed() > EXPORT_STALL {
                                stalled = true;
                                return false;
                            }
                            item = back;
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
            if stalled {
                return Err(format!(
                    "the client read nothing for {} s",
                    EXPORT_STALL.as_secs()
                ));
            }
            Ok(sent)
        });
        // The audit entry is written when the export ends, with the rows
        // actually sent.
        tokio::spawn(async move {
            let (rows, outcome) = match task.await {
                Ok(Ok(n)) => (n, "ok".to_string()),
                Ok(Err(e)) => (0, format!("error: {e}")),
                Err(e) => (0, format!("error: {e}")),
            };
            let _ = audit
                .record(&who.who, who.role, "ExportCalls", &desc, rows, &outcome)
                .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn count_calls(
        &self,
        req: Request<pb::CountCallsRequest>,
    ) -> Result<Response<pb::CountCallsResponse>, Status> {
        let r = req.get_ref().clone();
        let desc = format!(
            "{{\"filter\":{},\"bucket_secs\":{}}}",
            filter_json(&r.filter),
            r.bucket_secs
        );
        let who = self.admit(&req, "CountCalls", COUNT, &desc).await?;
        // A rule author tunes rules: counts by time, rule and decision,
        // never who called whom.
        if who.role == Role::RuleAuthor.as_str() {
            let f = r.filter.clone().unwrap_or_default();
            if !f.number.is_empty()
                || !f.verdict_id.is_empty()
                || f.incident != 0
                || !f.trunk.is_empty()
            {
                let e = Status::permission_denied(
                    "a rule author counts by time, rule and decision only",
                );
                if self.refusal_budget() {
                    self.record(&who.who, who.role, "CountCalls", &desc, 0, "denied")
                        .await?;
                }
                return Err(e);
            }
        }
        let filter = self
            .checked(&who, "CountCalls", &desc, self.filter(r.filter))
            .await?;
        let dir = self.store_dir()?;
        let bucket = i64::from(if r.bucket_secs == 0 {
            3600
        } else {
            r.bucket_secs
        }) * 1_000_000;
        let (per_decision, per_rule) = tokio::task::spawn_blocking(move || {
            let c = kuzet_store::open_reader(&dir).map_err(store_err)?;
            query::counts(&c, &filter, bucket).map_err(store_err)
        })
        .await
        .map_err(store_err)??;
        let conv = |v: Vec<query::Count>| {
            v.into_iter()
                .map(|c| pb::Count {
                    bucket_us: c.bucket_us,
                    key: c.key,
                    calls: c.calls,
                })
                .collect::<Vec<_>>()
        };
        let rows = (per_decision.len() + per_rule.len()) as u64;
        self.record(&who.who, who.role, "CountCalls", &desc, rows, "ok")
            .await?;
        Ok(Response::new(pb::CountCallsResponse {
            per_decision: conv(per_decision),
            per_rule: conv(per_rule),
        }))
    }

    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let r = req.get_ref().clone();
        let desc = format!(
            "{{\"state\":{:?},\"cursor\":{:?},\"page_size\":{}}}",
            r.state, r.cursor, r.page_size
        );
        let who = self.admit(&req, "ListIncidents", QUERY, &desc).await?;
        let state = (!r.state.is_empty()).then(|| r.state.clone());
        if let Some(s) = &state {
            if !["open", "reported", "updated", "closed", "dead_letter"].contains(&s.as_str()) {
                let e = Status::invalid_argument(format!(
                    "state must be open, reported, updated, closed or dead_letter, not {s:?}"
                ));
                return self.checked(&who, "ListIncidents", &desc, Err(e)).await;
            }
        }
        let before = self
            .checked(&who, "ListIncidents", &desc, cursor(&r.cursor))
            .await?;
        let dir = self.store_dir()?;
        let limit = match r.page_size {
            0 => 100,
            n => (n as usize).min(1000),
        };
        let list = tokio::task::spawn_blocking(move || {
            let c = kuzet_store::open_reader(&dir).map_err(store_err)?;
            let list = incident::list(&c, state.as_deref(), before, limit).map_err(store_err)?;
            list.into_iter()
                .map(|i| {
                    let seq = delivered_seq(&c, i.id).map_err(store_err)?;
                    Ok(incident_pb(i, seq))
                })
                .collect::<Result<Vec<_>, Status>>()
        })
        .await
        .map_err(store_err)??;
        self.record(
            &who.who,
            who.role,
            "ListIncidents",
            &desc,
            list.len() as u64,
            "ok",
        )
        .await?;
        let next = (list.len() == limit)
            .then(|| list.last().map(|i| i.id.to_string()))
            .flatten()
            .unwrap_or_default();
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: list,
            next_cursor: next,
        }))
    }

    async fn get_incident(
        &self,
        req: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        let r = *req.get_ref();
        let desc = format!("{{\"id\":{},\"max_calls\":{}}}", r.id, r.max_calls);
        let who = self.admit(&req, "GetIncident", QUERY, &desc).await?;
        let dir = self.store_dir()?;
        let limit = match r.max_calls {
            0 => 100,
            n => n as usize,
        };
        let id = r.id;
        let found = tokio::task::spawn_blocking(move || {
            let c = kuzet_store::open_reader(&dir).map_err(store_err)?;
            let Some(i) = incident::get(&c, id).map_err(store_err)? else {
                return Ok(None);
            };
            let seq = delivered_seq(&c, i.id).map_err(store_err)?;
            let f = Filter {
                incident: Some(id),
                ..Filter::default()
            };
            let calls = query::calls(&c, &f, None, limit).map_err(store_err)?;
            Ok::<_, Status>(Some((incident_pb(i, seq), calls.calls)))
        })
        .await
        .map_err(store_err)??;
        let Some((inc, calls)) = found else {
            self.record(&who.who, who.role, "GetIncident", &desc, 0, "not found")
                .await?;
            return Err(Status::not_found(format!("no incident {id}")));
        };
        self.record(
            &who.who,
            who.role,
            "GetIncident",
            &desc,
            calls.len() as u64 + 1,
            "ok",
        )
        .await?;
        Ok(Response::new(pb::GetIncidentResponse {
            incident: Some(inc),
            calls: calls.into_iter().map(to_pb).collect(),
        }))
    }

    async fn read_audit(
        &self,
        req: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<pb::ReadAuditResponse>, Status> {
        let r = req.get_ref().clone();
        let desc = format!(
            "{{\"cursor\":{:?},\"page_size\":{}}}",
            r.cursor, r.page_size
        );
        let who = self.admit(&req, "ReadAudit", AUDIT, &desc).await?;
        let before = self
            .checked(&who, "ReadAudit", &desc, cursor(&r.cursor))
            .await?;
        let dir = self.store_dir()?;
        let limit = match r.page_size {
            0 => 100,
            n => n as usize,
        };
        let entries = tokio::task::spawn_blocking(move || {
            let c = audit::open(&dir).map_err(store_err)?;
            audit::read(&c, before, limit).map_err(store_err)
        })
        .await
        .map_err(store_err)??;
        self.record(
            &who.who,
            who.role,
            "ReadAudit",
            &desc,
            entries.len() as u64,
            "ok",
        )
        .await?;
        let next = (entries.len() == limit.clamp(1, 1000))
            .then(|| entries.last().map(|e| e.id.to_string()))
            .flatten()
            .unwrap_or_default();
        Ok(Response::new(pb::ReadAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    time_us: e.ts_us,
                    who: e.who,
                    role: e.role,
                    action: e.action,
                    filter: e.filter,
                    rows: e.rows,
                    outcome: e.outcome,
                })
                .collect(),
            next_cursor: next,
        }))
    }
}

/// Binds the control address (before serving starts, so a port in use is
/// a start-up error).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
}
