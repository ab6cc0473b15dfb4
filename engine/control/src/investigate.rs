//! The investigators' gRPC API (`kuzet.investigation.v1`), served on the
//! control address and on a Unix socket in the data directory, from a
//! runtime of its own, beside the standard gRPC health service and server
//! reflection.
//!
//! Every request goes through the access gate ([`crate::gate`]), on the
//! server: authenticated, authorized for its operation ([`ops`]) and
//! written to the audit log with who asked, in which role, with which
//! filter and how many rows came back; refusals are counted by the gate,
//! one audit row per token, action and outcome per second. Over TCP a
//! request needs a bearer token; on the Unix socket (`control.sock`, 0600
//! in the 0700 data directory) a request without one is kuzet's own user,
//! checked by the socket's peer credentials, and answers as the
//! investigator `local`: no token is ever written to disk. The store is
//! reached through its `Queries` port, which blocks: it runs on this
//! runtime's bounded blocking pool. Exports are capped in number, per
//! token and in total, and each streams through a small bounded buffer;
//! pages are cut by size, so records with large header sections never
//! make an answer a client cannot take.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use kuzet_api::investigation as pb;
use kuzet_api::investigation::investigation_service_server::{
    InvestigationService, InvestigationServiceServer,
};
use kuzet_api::lists::list_service_server::ListServiceServer;
use kuzet_api::rules::rule_service_server::RuleServiceServer;
use kuzet_dataplane::handler::PublicId;
use kuzet_rules::NumberingPlan;
use kuzet_store::incident::{self, Incident};
use kuzet_store::query::{self, Filter};
use kuzet_store::{Queries, Record};
use prost::Message as _;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::access::Role;
use crate::gate::{ops, AccessGate, Credentials, Op, Principal};
use crate::guard::{ConnGuard, MarkRequests};

/// An export whose client reads nothing for this long is ended.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// Calls an export holds ready for its client, at most (each call a few
/// KiB, up to the largest SIP message).
const EXPORT_BUFFER: usize = 16;
/// An answer's calls stop at about this many encoded bytes (a page's
/// cursor then continues where it stopped): clients take 4 MiB by default.
pub const ANSWER_BYTES: usize = 3 << 20;

/// The Unix socket's file name in the data directory.
pub const SOCKET_FILE: &str = "control.sock";

/// How many exports may run at once.
#[derive(Clone, Copy, Debug)]
pub struct ExportLimits {
    /// In total.
    pub total: usize,
    /// Per token (per caller name).
    pub per_token: usize,
}

impl Default for ExportLimits {
    fn default() -> Self {
        ExportLimits {
            total: 8,
            per_token: 2,
        }
    }
}

/// What the service needs.
#[derive(Clone)]
pub struct Investigation {
    /// The store's reads; `None` when kuzet runs without a store.
    queries: Option<Arc<dyn Queries>>,
    /// Normalizes the numbers investigators type.
    pub plan: NumberingPlan,
    /// Who may ask what; the audit log.
    gate: Arc<AccessGate>,
    /// Exports running: per caller, and in total.
    exports: Arc<Mutex<HashMap<String, usize>>>,
    export_limits: ExportLimits,
}

impl Investigation {
    /// A service over the store's `queries` port (`None`: kuzet runs
    /// without a store), behind `gate`.
    pub fn new(
        queries: Option<Arc<dyn Queries>>,
        plan: NumberingPlan,
        gate: Arc<AccessGate>,
    ) -> Self {
        Investigation {
            queries,
            plan,
            gate,
            exports: Arc::default(),
            export_limits: ExportLimits::default(),
        }
    }

    /// The gate it asks.
    pub fn gate(&self) -> &Arc<AccessGate> {
        &self.gate
    }

    /// Caps concurrent exports.
    pub fn with_export_limits(mut self, l: ExportLimits) -> Self {
        self.export_limits = l;
        self
    }
}

/// The services served beside the investigators' API, each when on.
#[derive(Default)]
pub struct Beside {
    /// The rule authors' publishing services.
    pub publishing: Option<Arc<crate::publishing::Publishing>>,
    /// The Centre's cases (`kuzet.cases.v1`).
    pub cases: Option<Arc<crate::nbfeed::service::CaseService>>,
    /// The cluster's nodes (`kuzet.cluster.v1`).
    pub nodes: Option<Arc<crate::cluster::NodeService>>,
}

/// Serves the API, health and reflection on the TCP `listener` (under
/// `guard`) and, when given, on the Unix socket `uds`, until `shutdown`.
/// Run [`crate::gate::flush_refusals`] beside it for the gate's counted
/// refusals.
pub async fn serve(
    listener: std::net::TcpListener,
    uds: Option<tokio::net::UnixListener>,
    svc: Investigation,
    beside: Beside,
    guard: Arc<ConnGuard>,
    shutdown: watch::Receiver<bool>,
) {
    let Beside {
        publishing,
        cases,
        nodes,
    } = beside;
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
    if publishing.is_some() {
        health
            .set_serving::<ListServiceServer<crate::publishing::lists::Lists>>()
            .await;
        health
            .set_serving::<RuleServiceServer<crate::publishing::rules::Rules>>()
            .await;
    }
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
    let router = || {
        tonic::transport::Server::builder()
            // Every request on a gated connection (health and reflection
            // included) marks it: the first-request deadline is met.
            .layer(MarkRequests)
            // Streams per connection and the header list are bounded, so
            // one client cannot open thousands of requests on a
            // connection the guard admitted.
            .max_concurrent_streams(16)
            .http2_max_header_list_size(16 * 1024)
            .add_service(health_svc.clone())
            .add_service(reflection.clone())
            // Requests are filters: 64 KiB is plenty, and bounds what a
            // hostile client can make the server decode (and audit).
            .add_service(
                InvestigationServiceServer::new(svc.clone()).max_decoding_message_size(64 * 1024),
            )
            // The rule authors' services, when anything is published. A
            // push streams chunks of a list: each at most 4 MiB.
            .add_optional_service(publishing.clone().map(|p| {
                ListServiceServer::new(crate::publishing::lists::Lists(p))
                    .max_decoding_message_size(4 << 20)
            }))
            .add_optional_service(publishing.clone().map(|p| {
                RuleServiceServer::new(crate::publishing::rules::Rules(p))
                    .max_decoding_message_size(2 << 20)
            }))
            // The Centre's cases: requests are an id and a few words.
            .add_optional_service(cases.clone().map(|c| {
                kuzet_api::cases::case_service_server::CaseServiceServer::from_arc(c)
                    .max_decoding_message_size(16 * 1024)
            }))
            .add_optional_service(nodes.clone().map(|n| {
                kuzet_api::cluster::node_service_server::NodeServiceServer::from_arc(n)
                    .max_decoding_message_size(1024)
            }))
    };
    let (conns_tx, conns_rx) =
        tokio::sync::mpsc::channel::<std::io::Result<crate::guard::Guarded>>(16);
    let mut stop = shutdown.clone();
    let accept = tokio::spawn(crate::guard::accept_loop(
        listener,
        guard,
        "control API",
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
        move |c| {
            // A full hand-over queue means the server is not taking
            // connections: this one is closed, like one over a cap.
            let _ = conns_tx.try_send(Ok(c));
        },
    ));
    let tcp = router().serve_with_incoming_shutdown(
        tokio_stream::wrappers::ReceiverStream::new(conns_rx),
        {
            let mut s = shutdown.clone();
            async move {
                let _ = s.wait_for(|s| *s).await;
            }
        },
    );
    let local = async {
        match uds {
            Some(u) => {
                router()
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(u),
                        {
                            let mut s = shutdown.clone();
                            async move {
                                let _ = s.wait_for(|s| *s).await;
                            }
                        },
                    )
                    .await
            }
            None => Ok(()),
        }
    };
    let (a, b) = tokio::join!(tcp, local);
    for r in [a, b] {
        if let Err(e) = r {
            tracing::error!(error = %e, "control API stopped");
        }
    }
    accept.abort();
}

type CallStream = Pin<Box<dyn Stream<Item = Result<pb::Call, Status>> + Send + 'static>>;

impl Investigation {
    /// Admits the request for `op` (a refusal is counted by the gate).
    fn admit<T>(&self, req: &Request<T>, op: &Op, filter: &str) -> Result<Principal, Status> {
        self.gate
            .admit(&Credentials::grpc(req), op, filter)
            .map_err(Status::from)
    }

    /// Audits the answer before it is given; one that cannot be audited
    /// is refused (UNAVAILABLE).
    async fn record(
        &self,
        who: &Principal,
        op: &Op,
        filter: &str,
        rows: u64,
        outcome: &str,
    ) -> Result<(), Status> {
        self.gate
            .audit(who, op, filter, rows, outcome)
            .await
            .map_err(Status::from)
    }

    /// Passes `r` through; a refusal of the request itself (a bad filter
    /// or cursor) is audited with its reason before it is returned.
    async fn checked<T>(
        &self,
        who: &Principal,
        op: &Op,
        desc: &str,
        r: Result<T, Status>,
    ) -> Result<T, Status> {
        if let Err(e) = &r {
            let outcome = format!("invalid: {}", e.message());
            self.record(who, op, desc, 0, &outcome).await?;
        }
        r
    }

    fn queries(&self) -> Result<Arc<dyn Queries>, Status> {
        self.queries.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this kuzet runs without a store (--no-store): nothing is recorded",
            )
        })
    }

    fn audit_log(&self) -> Result<Arc<dyn kuzet_store::AuditLog>, Status> {
        self.gate.audit_log().ok_or_else(|| {
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
                    .normalize_typed(&n)
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
                v.parse::<PublicId>()
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
        a_trust: r.a_trust,
        caller_role: r.caller_role,
    }
}

/// The calls of an answer, in wire form, cut once they pass
/// [`ANSWER_BYTES`] (at least one is kept); the cursor continues after the
/// last one kept when the page was cut.
fn within_answer(recs: Vec<Record>, next: Option<i64>) -> (Vec<pb::Call>, Option<i64>) {
    let total = recs.len();
    let mut out = Vec::with_capacity(total);
    let mut bytes = 0usize;
    let mut last_id = None;
    for r in recs {
        let id = r.id;
        let c = to_pb(r);
        bytes += c.encoded_len() + 8;
        if bytes > ANSWER_BYTES && !out.is_empty() {
            break;
        }
        out.push(c);
        last_id = Some(id);
    }
    if out.len() < total {
        (out, last_id)
    } else {
        (out, next)
    }
}

impl Investigation {
    /// A place for one more export by `who`, given back when dropped;
    /// `None` over a cap.
    fn export_slot(&self, who: &str) -> Option<ExportSlot> {
        let mut g = self.exports.lock().ok()?;
        let total: usize = g.values().sum();
        let mine = g.get(who).copied().unwrap_or(0);
        if total >= self.export_limits.total || mine >= self.export_limits.per_token {
            return None;
        }
        *g.entry(who.to_string()).or_insert(0) += 1;
        Some(ExportSlot {
            exports: self.exports.clone(),
            who: who.to_string(),
        })
    }
}

/// One running export's place under the caps.
struct ExportSlot {
    exports: Arc<Mutex<HashMap<String, usize>>>,
    who: String,
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.exports.lock() {
            if let Some(n) = g.get_mut(&self.who) {
                *n -= 1;
                if *n == 0 {
                    g.remove(&self.who);
                }
            }
        }
    }
}

/// The wire form of an incident.
pub fn incident_pb(i: Incident, sequence: u64) -> pb::Incident {
    let parties = incident::parties(&i)
        .into_iter()
        .map(|p| pb::Party {
            number: p.number,
            role: p.role,
        })
        .collect();
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
        register_case: i.register_case,
        parties,
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
        let who = self.admit(&req, &ops::QUERY_CALLS, &desc)?;
        let filter = self
            .checked(&who, &ops::QUERY_CALLS, &desc, self.filter(r.filter))
            .await?;
        let before = self
            .checked(&who, &ops::QUERY_CALLS, &desc, cursor(&r.cursor))
            .await?;
        let q = self.queries()?;
        let limit = match r.page_size {
            0 => 100,
            n => n as usize,
        };
        let page =
            tokio::task::spawn_blocking(move || q.calls(&filter, before, limit).map_err(store_err))
                .await
                .map_err(store_err)??;
        let (calls, next) = within_answer(page.calls, page.next);
        self.record(&who, &ops::QUERY_CALLS, &desc, calls.len() as u64, "ok")
            .await?;
        Ok(Response::new(pb::QueryCallsResponse {
            calls,
            next_cursor: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    type ExportCallsStream = CallStream;

    async fn export_calls(
        &self,
        req: Request<pb::ExportCallsRequest>,
    ) -> Result<Response<CallStream>, Status> {
        let r = req.get_ref().clone();
        let desc = format!("{{\"filter\":{}}}", filter_json(&r.filter));
        let who = self.admit(&req, &ops::EXPORT_CALLS, &desc)?;
        let filter = self
            .checked(&who, &ops::EXPORT_CALLS, &desc, self.filter(r.filter))
            .await?;
        let q = self.queries()?;
        // Capped per caller and in total: each export holds a read
        // snapshot and a blocking thread until its client has read it all.
        let Some(slot) = self.export_slot(&who.who) else {
            self.gate
                .refuse(&who, &ops::EXPORT_CALLS, "exhausted", &desc);
            return Err(Status::resource_exhausted(format!(
                "too many exports running (at most {} per token, {} in all): wait for one to end",
                self.export_limits.per_token, self.export_limits.total
            )));
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::Call, Status>>(EXPORT_BUFFER);
        // The export is audited before the first row leaves; if that
        // cannot be written, nothing is sent.
        self.record(&who, &ops::EXPORT_CALLS, &desc, 0, "started")
            .await?;
        let audit = self.clone();
        let task = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let _slot = slot;
            let mut sent = 0u64;
            let mut stalled = false;
            q.export(&filter, &mut |rec| {
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
                            std::thread::sleep(std::time::Duration::from_millis(10));
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
                .record(&who, &ops::EXPORT_CALLS, &desc, rows, &outcome)
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
        let who = self.admit(&req, &ops::COUNT_CALLS, &desc)?;
        // A rule author tunes rules: counts by time, rule and decision,
        // never who called whom.
        if who.role == Role::RuleAuthor {
            let f = r.filter.clone().unwrap_or_default();
            if !f.number.is_empty()
                || !f.verdict_id.is_empty()
                || f.incident != 0
                || !f.trunk.is_empty()
            {
                let e = Status::permission_denied(
                    "a rule author counts by time, rule and decision only",
                );
                self.gate.refuse(&who, &ops::COUNT_CALLS, "denied", &desc);
                return Err(e);
            }
        }
        let filter = self
            .checked(&who, &ops::COUNT_CALLS, &desc, self.filter(r.filter))
            .await?;
        let q = self.queries()?;
        let bucket = i64::from(if r.bucket_secs == 0 {
            3600
        } else {
            r.bucket_secs
        }) * 1_000_000;
        let (per_decision, per_rule) =
            tokio::task::spawn_blocking(move || q.counts(&filter, bucket).map_err(store_err))
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
        self.record(&who, &ops::COUNT_CALLS, &desc, rows, "ok")
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
        let who = self.admit(&req, &ops::LIST_INCIDENTS, &desc)?;
        let state = (!r.state.is_empty()).then(|| r.state.clone());
        if let Some(s) = &state {
            if !["open", "reported", "updated", "closed", "dead_letter"].contains(&s.as_str()) {
                let e = Status::invalid_argument(format!(
                    "state must be open, reported, updated, closed or dead_letter, not {s:?}"
                ));
                return self
                    .checked(&who, &ops::LIST_INCIDENTS, &desc, Err(e))
                    .await;
            }
        }
        let before = self
            .checked(&who, &ops::LIST_INCIDENTS, &desc, cursor(&r.cursor))
            .await?;
        let q = self.queries()?;
        let limit = match r.page_size {
            0 => 100,
            n => (n as usize).min(1000),
        };
        let list = tokio::task::spawn_blocking(move || {
            let list = q
                .incidents(state.as_deref(), before, limit)
                .map_err(store_err)?;
            Ok::<_, Status>(
                list.into_iter()
                    .map(|v| incident_pb(v.incident, v.delivered_seq))
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .map_err(store_err)??;
        self.record(&who, &ops::LIST_INCIDENTS, &desc, list.len() as u64, "ok")
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
        let who = self.admit(&req, &ops::GET_INCIDENT, &desc)?;
        let q = self.queries()?;
        let limit = match r.max_calls {
            0 => 100,
            n => n as usize,
        };
        let id = r.id;
        let found = tokio::task::spawn_blocking(move || {
            let Some(v) = q.incident(id).map_err(store_err)? else {
                return Ok(None);
            };
            let f = Filter {
                incident: Some(id),
                ..Filter::default()
            };
            let calls = q.calls(&f, None, limit).map_err(store_err)?;
            let (calls, _) = within_answer(calls.calls, None);
            Ok::<_, Status>(Some((incident_pb(v.incident, v.delivered_seq), calls)))
        })
        .await
        .map_err(store_err)??;
        let Some((inc, calls)) = found else {
            self.record(&who, &ops::GET_INCIDENT, &desc, 0, "not found")
                .await?;
            return Err(Status::not_found(format!("no incident {id}")));
        };
        self.record(
            &who,
            &ops::GET_INCIDENT,
            &desc,
            calls.len() as u64 + 1,
            "ok",
        )
        .await?;
        Ok(Response::new(pb::GetIncidentResponse {
            incident: Some(inc),
            calls,
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
        let who = self.admit(&req, &ops::READ_AUDIT, &desc)?;
        let before = self
            .checked(&who, &ops::READ_AUDIT, &desc, cursor(&r.cursor))
            .await?;
        let log = self.audit_log()?;
        let limit = match r.page_size {
            0 => 100,
            n => n as usize,
        };
        let entries =
            tokio::task::spawn_blocking(move || log.read(before, limit).map_err(store_err))
                .await
                .map_err(store_err)??;
        self.record(&who, &ops::READ_AUDIT, &desc, entries.len() as u64, "ok")
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
                    count: e.count,
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
