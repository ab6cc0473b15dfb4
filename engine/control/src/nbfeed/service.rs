//! `kuzet.cases.v1` on the control address: the Centre's cases listed,
//! shown with everything kuzet holds on their number, and decided. Every
//! call passes the access gate (`ReadCases` to read, `DecideCases` to
//! decide) and is audited before it is answered; a decision is audited
//! as started before it is made, so an abandoned call still shows.

use std::collections::BTreeMap;
use std::sync::Arc;

use kuzet_api::cases as pb;
use kuzet_store::centre::Case;
use kuzet_store::query::Filter as CallFilter;
use kuzet_store::Queries;
use tonic::{Request, Response, Status};

use super::cases::CaseDesk;
use crate::gate::{ops, AccessGate, Credentials};
use crate::publishing::{blocking, Filter};

/// The service (see the module docs).
pub struct CaseService {
    desk: Option<Arc<CaseDesk>>,
    queries: Option<Arc<dyn Queries>>,
    gate: Arc<AccessGate>,
}

impl CaseService {
    /// The service over `desk` (`None` when `[nbank]` is not set: every
    /// call says so), reading calls through `queries`.
    pub fn new(
        desk: Option<Arc<CaseDesk>>,
        queries: Option<Arc<dyn Queries>>,
        gate: Arc<AccessGate>,
    ) -> CaseService {
        CaseService {
            desk,
            queries,
            gate,
        }
    }

    fn desk(&self) -> Result<Arc<CaseDesk>, Status> {
        self.desk.clone().ok_or_else(|| {
            Status::failed_precondition(
                "the National Bank's Anti-Fraud Centre is not configured ([nbank] url): there are no cases",
            )
        })
    }

    /// Admits, runs `work`, audits its answer (the publishing services'
    /// frame, [`crate::publishing::answer`]).
    async fn answer<T, Fut>(
        &self,
        creds: &Credentials,
        op: &crate::gate::Op,
        filter: &Filter,
        work: impl FnOnce(crate::gate::Principal) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: std::future::Future<Output = Result<(T, u64), Status>>,
    {
        crate::publishing::answer(&self.gate, creds, op, filter, work).await
    }
}

fn store_err(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("store: {e}"))
}

/// The wire form of a case.
pub fn case_pb(c: Case) -> pb::Case {
    pb::Case {
        id: c.id,
        alert_id: c.alert_id,
        number: c.number,
        category: c.category,
        centre_note: c.centre_note,
        reported_at_us: c.reported_at_us,
        opened_at_us: c.opened_at_us,
        due_at_us: c.due_at_us,
        state: c.state,
        decided_at_us: c.decided_at_us.unwrap_or(0),
        decided_by: c.decided_by,
        note: c.note,
        bss_ref: c.bss_ref,
    }
}

#[tonic::async_trait]
impl pb::case_service_server::CaseService for CaseService {
    async fn list_cases(
        &self,
        req: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let creds = Credentials::grpc(&req);
        let r = req.into_inner();
        let filter =
            Filter::new(serde_json::json!({"due": r.due, "state": r.state, "limit": r.limit}));
        self.answer(&creds, &ops::LIST_CASES, &filter, |_| async {
            let desk = self.desk()?;
            let state = match r.state.as_str() {
                "" => None,
                s @ ("open" | "confirmed" | "not_confirmed") => Some(s.to_string()),
                s => {
                    return Err(Status::invalid_argument(format!(
                        "state {:?}: open, confirmed or not_confirmed",
                        crate::safe::visible(s)
                    )))
                }
            };
            let limit = match r.limit {
                0 => 100,
                n => (n as usize).min(1000),
            };
            let now_us = kuzet_store::now_us();
            let warn_us = desk.warn.as_micros() as i64;
            let (state, due_before) = if r.due {
                (Some("open".to_string()), Some(now_us + warn_us))
            } else {
                (state, None)
            };
            let st = desk.store.clone();
            let cases = blocking(move || {
                st.cases(state.as_deref(), due_before, limit)
                    .map_err(store_err)
            })
            .await?;
            let n = cases.len() as u64;
            Ok((
                pb::ListCasesResponse {
                    cases: cases.into_iter().map(case_pb).collect(),
                    now_us,
                    warn_us,
                },
                n,
            ))
        })
        .await
        .map(Response::new)
    }

    async fn get_case(
        &self,
        req: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::GetCaseResponse>, Status> {
        let creds = Credentials::grpc(&req);
        let r = req.into_inner();
        let filter = Filter::new(serde_json::json!({"id": r.id, "max_calls": r.max_calls}));
        self.answer(&creds, &ops::GET_CASE, &filter, |_| async {
            let desk = self.desk()?;
            let limit = match r.max_calls {
                0 => 20,
                n => (n as usize).min(200),
            };
            let (st, q, id) = (desk.store.clone(), self.queries.clone(), r.id);
            let found = blocking(move || {
                let Some(case) = st.case(id).map_err(store_err)? else {
                    return Ok::<_, Status>(None);
                };
                let mut calls = Vec::new();
                let mut rules: BTreeMap<String, u64> = BTreeMap::new();
                let mut incidents = Vec::new();
                if let Some(q) = q {
                    let f = CallFilter {
                        number: Some(case.number.clone()),
                        ..CallFilter::default()
                    };
                    let page = q.calls(&f, None, limit).map_err(store_err)?;
                    let mut seen = std::collections::BTreeSet::new();
                    for c in page.calls {
                        let fired: Vec<String> = c.rules.iter().map(|h| h.id.clone()).collect();
                        for id in &fired {
                            *rules.entry(id.clone()).or_default() += 1;
                        }
                        if let Some(i) = c.incident {
                            seen.insert(i);
                        }
                        calls.push(pb::CallLine {
                            ts_us: c.ts_us,
                            verdict_id: c.verdict_id,
                            decision: c.decision,
                            caller: c.a.unwrap_or_default(),
                            callee: c.b.unwrap_or_default(),
                            rules: fired,
                        });
                    }
                    for i in seen {
                        if let Some(v) = q.incident(i).map_err(store_err)? {
                            let inc = v.incident;
                            incidents.push(pb::IncidentLine {
                                id: inc.id,
                                kind: inc.kind,
                                key: inc.key,
                                state: inc.state,
                                blocked: inc.blocked,
                                flagged: inc.flagged,
                            });
                        }
                    }
                }
                Ok(Some(pb::GetCaseResponse {
                    case: Some(case_pb(case)),
                    calls,
                    rules_fired: rules.into_iter().collect(),
                    incidents,
                }))
            })
            .await?;
            let Some(found) = found else {
                return Err(Status::not_found(format!("no case {}", r.id)));
            };
            let n = 1 + found.calls.len() as u64;
            Ok((found, n))
        })
        .await
        .map(Response::new)
    }

    async fn list_reports(
        &self,
        req: Request<pb::ListReportsRequest>,
    ) -> Result<Response<pb::ListReportsResponse>, Status> {
        let creds = Credentials::grpc(&req);
        let r = req.into_inner();
        let filter = Filter::new(serde_json::json!({"state": r.state, "limit": r.limit}));
        self.answer(&creds, &ops::LIST_REPORTS, &filter, |_| async {
            let desk = self.desk()?;
            let state = match r.state.as_str() {
                "" => None,
                s @ ("pending" | "delivered" | "dead_letter") => Some(s.to_string()),
                s => {
                    return Err(Status::invalid_argument(format!(
                        "state {:?}: pending, delivered or dead_letter",
                        crate::safe::visible(s)
                    )))
                }
            };
            let limit = match r.limit {
                0 => 100,
                n => (n as usize).min(1000),
            };
            let st = desk.store.clone();
            let rows =
                blocking(move || st.reports(state.as_deref(), limit).map_err(store_err)).await?;
            let n = rows.len() as u64;
            let reports = rows
                .into_iter()
                .map(|r| pb::ReportLine {
                    id: r.id,
                    key: r.key,
                    kind: r.kind,
                    state: r.state,
                    attempts: r.attempts,
                    queued_at_us: r.queued_at_us,
                    delivered_at_us: r.delivered_at_us.unwrap_or(0),
                    last_error: r.last_error,
                })
                .collect();
            Ok((pb::ListReportsResponse { reports }, n))
        })
        .await
        .map(Response::new)
    }

    async fn decide_case(
        &self,
        req: Request<pb::DecideCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let creds = Credentials::grpc(&req);
        let r = req.into_inner();
        let filter = Filter::new(serde_json::json!({
            "id": r.id,
            "outcome": if r.confirmed { "confirmed" } else { "not_confirmed" },
            "bss_ref": r.bss_ref,
        }));
        let started = filter.get();
        self.answer(&creds, &ops::DECIDE_CASE, &filter, |p| async move {
            let desk = self.desk()?;
            self.gate
                .audit(&p, &ops::DECIDE_CASE, &started, 0, "started")
                .await?;
            let by = p.who.clone();
            let out = blocking(move || {
                desk.decide(r.id, r.confirmed, &r.note, &r.bss_ref, &by)
                    .map_err(store_err)
            })
            .await?;
            match out {
                Ok(c) => Ok((case_pb(c), 1)),
                Err(why) if why.starts_with("no case") => Err(Status::not_found(why)),
                Err(why) => Err(Status::failed_precondition(why)),
            }
        })
        .await
        .map(Response::new)
    }
}
