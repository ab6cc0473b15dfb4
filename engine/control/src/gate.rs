//! The access gate: the one place where a request to a control surface is
//! authenticated, authorized and audited, shared by the gRPC services and
//! the HTTP handlers. A service plugs in by declaring its operations, each
//! an [`Op`] naming the [`Permission`] it needs, and asking the gate, on
//! the server, for every request.
//!
//! Given a request's [`Credentials`] (a bearer token, or on the Unix socket
//! the peer's user), [`AccessGate::admit`] returns the [`Principal`] with
//! its role, or a [`Refused`]. Roles grant permissions in one table
//! ([`Permission::granted_to`]). Every request is written to the audit log
//! through the store's audit port: an answer with [`AccessGate::audit`],
//! before it is given (an answer that cannot be audited is not given);
//! a refusal is counted, not written at once: one row per who, role,
//! action and outcome per second with its count, written by
//! [`flush_refusals`], so a flood of bad tokens neither fills the disk nor
//! waits on it, and no refusal goes uncounted.
//!
//! The adapters: [`Credentials::grpc`] and `From<Refused> for Status` for
//! tonic services; [`Credentials::http`], `IntoResponse for Refused` and
//! [`http`], which runs an HTTP handler behind the gate and audits its
//! answer, for HTTP handlers. The connection caps and deadlines in front
//! of both are [`crate::guard`]'s, a separate layer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kuzet_dataplane::handler::evidence::unix_us;
use kuzet_store::audit::Entry;
use kuzet_store::AuditLog;
use tokio::sync::watch;
use tonic::Status;

use crate::access::{Access, Refusal, Role};

/// What an operation needs. Each role's grants are in
/// [`Permission::granted_to`]: a new permission is a variant and a line
/// there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Who called whom: calls, exports, incidents.
    ReadCalls,
    /// Counts of calls by time, rule and decision (a rule author tunes
    /// rules with them).
    CountCalls,
    /// The audit log.
    ReadAudit,
    /// Published list and rule versions, their diffs, and lookups of a
    /// number: what is in force and why.
    ReadLists,
    /// Push a list version, stage a rule version.
    Publish,
    /// Put a version in force (one that blocks more needs
    /// [`Permission::Approve`] too, checked by the service).
    Activate,
    /// Put in force a version that blocks more.
    Approve,
    /// The National Bank Centre's cases and what kuzet holds on their
    /// numbers.
    ReadCases,
    /// Record the outcome of a case (it goes to the Centre).
    DecideCases,
    /// The cluster's nodes, their versions, lag and health.
    ReadNodes,
}

impl Permission {
    /// Whether `role` holds this permission.
    pub fn granted_to(self, role: Role) -> bool {
        if self == Permission::ReadNodes {
            return true;
        }
        match role {
            Role::Admin => true,
            Role::Investigator => matches!(
                self,
                Permission::ReadCalls
                    | Permission::CountCalls
                    | Permission::ReadLists
                    | Permission::ReadCases
                    | Permission::DecideCases
            ),
            Role::RuleAuthor => matches!(
                self,
                Permission::CountCalls
                    | Permission::ReadLists
                    | Permission::Publish
                    | Permission::Activate
            ),
            Role::Approver => matches!(
                self,
                Permission::ReadLists | Permission::Activate | Permission::Approve
            ),
        }
    }

    /// `investigator or admin`: the roles that hold it, for a refusal.
    pub fn roles(self) -> String {
        [
            Role::Investigator,
            Role::RuleAuthor,
            Role::Approver,
            Role::Admin,
        ]
        .into_iter()
        .filter(|r| self.granted_to(*r))
        .map(Role::as_str)
        .collect::<Vec<_>>()
        .join(" or ")
    }
}

/// One operation a control surface offers: its name in the audit log and
/// the permission it needs. Adding an operation is declaring one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// The action as the audit log names it, e.g. `QueryCalls`.
    pub action: &'static str,
    /// What the caller's role must grant.
    pub needs: Permission,
}

/// The investigators' API's operations (`kuzet.investigation.v1`).
pub mod ops {
    use super::{Op, Permission};

    /// A page of calls.
    pub const QUERY_CALLS: Op = Op {
        action: "QueryCalls",
        needs: Permission::ReadCalls,
    };
    /// Every call matching a filter, streamed.
    pub const EXPORT_CALLS: Op = Op {
        action: "ExportCalls",
        needs: Permission::ReadCalls,
    };
    /// Counts per decision and rule.
    pub const COUNT_CALLS: Op = Op {
        action: "CountCalls",
        needs: Permission::CountCalls,
    };
    /// A page of incidents.
    pub const LIST_INCIDENTS: Op = Op {
        action: "ListIncidents",
        needs: Permission::ReadCalls,
    };
    /// One incident and its calls.
    pub const GET_INCIDENT: Op = Op {
        action: "GetIncident",
        needs: Permission::ReadCalls,
    };
    /// A page of the audit log.
    pub const READ_AUDIT: Op = Op {
        action: "ReadAudit",
        needs: Permission::ReadAudit,
    };
    /// The Centre's cases (`kuzet.cases.v1`).
    pub const LIST_CASES: Op = Op {
        action: "ListCases",
        needs: Permission::ReadCases,
    };
    /// One case and what kuzet holds on its number.
    pub const GET_CASE: Op = Op {
        action: "GetCase",
        needs: Permission::ReadCases,
    };
    /// The cluster's nodes (`kuzet.cluster.v1`).
    pub const LIST_NODES: Op = Op {
        action: "ListNodes",
        needs: Permission::ReadNodes,
    };
    /// kuzet's reports to the Centre, as the outbox holds them.
    pub const LIST_REPORTS: Op = Op {
        action: "ListCentreReports",
        needs: Permission::ReadCases,
    };
    /// A case's outcome recorded and queued for the Centre.
    pub const DECIDE_CASE: Op = Op {
        action: "DecideCase",
        needs: Permission::DecideCases,
    };
}

/// What a request presents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The bearer token (`Authorization: Bearer <token>`), if any.
    pub bearer: Option<String>,
    /// On the Unix socket, the peer's user id (from the socket's peer
    /// credentials); `None` over TCP.
    pub local_uid: Option<u32>,
}

/// The token of an `Authorization` value, when it is a bearer token.
fn bearer(v: &str) -> Option<String> {
    v.strip_prefix("Bearer ").map(str::to_string)
}

impl Credentials {
    /// A gRPC request's: its bearer token, and on the Unix socket its
    /// peer's user.
    pub fn grpc<T>(req: &tonic::Request<T>) -> Credentials {
        Credentials {
            bearer: req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(bearer),
            local_uid: req
                .extensions()
                .get::<tonic::transport::server::UdsConnectInfo>()
                .and_then(|u| u.peer_cred)
                .map(|c| c.uid()),
        }
    }

    /// An HTTP request's: its bearer token (kuzet's HTTP surfaces listen on
    /// TCP only).
    pub fn http(headers: &HeaderMap) -> Credentials {
        Credentials {
            bearer: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer),
            local_uid: None,
        }
    }
}

/// Who is asking, once admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, or `local` for kuzet's own user on the Unix
    /// socket.
    pub who: String,
    /// Its role.
    pub role: Role,
}

/// The name of kuzet's own user on the Unix socket.
pub const LOCAL: &str = "local";

/// A request the gate turned away (already counted for the audit log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// No valid credentials, or a role without the permission.
    pub why: Refusal,
    /// What the caller is told.
    pub message: String,
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Status {
        match r.why {
            Refusal::Unauthenticated => Status::unauthenticated(r.message),
            Refusal::Denied => Status::permission_denied(r.message),
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self.why {
            Refusal::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                format!("{}\n", self.message),
            )
                .into_response(),
            Refusal::Denied => {
                (StatusCode::FORBIDDEN, format!("{}\n", self.message)).into_response()
            }
        }
    }
}

/// An answer that could not be audited, and so is not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unaudited;

const UNAUDITED: &str = "the audit log cannot be written, so nothing is answered; try again later";

impl From<Unaudited> for Status {
    fn from(_: Unaudited) -> Status {
        Status::unavailable(UNAUDITED)
    }
}

impl IntoResponse for Unaudited {
    fn into_response(self) -> Response {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{UNAUDITED}\n")).into_response()
    }
}

/// The longest filter text an audit entry keeps.
const FILTER_MAX: usize = 1024;

/// Refusals written while the audit log cannot be written pile up to
/// this many rows; past it, new rows merge into their key's last row
/// (the count is kept, the second is not).
const PENDING_MAX: usize = 100_000;

/// Authenticates, authorizes and audits every request to the control
/// surfaces (see the module docs).
pub struct AccessGate {
    access: Access,
    audit: Option<Arc<dyn AuditLog>>,
    /// This process's user: who may use the Unix socket without a token.
    own_uid: Option<u32>,
    refusals: Mutex<Refusals>,
}

impl AccessGate {
    /// A gate over the configured tokens, writing to `audit` (`None`
    /// without a store: nothing is written, and the services have nothing
    /// to answer either).
    pub fn new(access: Access, audit: Option<Arc<dyn AuditLog>>) -> AccessGate {
        AccessGate {
            access,
            audit,
            own_uid: kuzet_store::private::process_uid(),
            refusals: Mutex::default(),
        }
    }

    /// The audit log the gate writes, for a service that reads it back.
    pub fn audit_log(&self) -> Option<Arc<dyn AuditLog>> {
        self.audit.clone()
    }

    /// Admits a request for `op`, or refuses it (counted for the audit log
    /// with `filter`). A request without a token on the Unix socket, from
    /// kuzet's own user (or root), is the investigator [`LOCAL`].
    pub fn admit(&self, c: &Credentials, op: &Op, filter: &str) -> Result<Principal, Refused> {
        let local = c.bearer.is_none()
            && c.local_uid.is_some()
            && (c.local_uid == self.own_uid || c.local_uid == Some(0));
        if local {
            let p = Principal {
                who: LOCAL.into(),
                role: Role::Investigator,
            };
            if op.needs.granted_to(p.role) {
                return Ok(p);
            }
            self.count(LOCAL, p.role.as_str(), op.action, "denied", filter);
            return Err(Refused {
                why: Refusal::Denied,
                message: format!(
                    "{} needs the role {}: the local socket answers as an investigator; pass an admin token",
                    op.action,
                    op.needs.roles()
                ),
            });
        }
        match self.access.authenticate(c.bearer.as_deref()) {
            None => {
                self.count("-", "-", op.action, "unauthenticated", filter);
                Err(Refused {
                    why: Refusal::Unauthenticated,
                    message: "a valid bearer token is required".into(),
                })
            }
            Some(t) if !op.needs.granted_to(t.role) => {
                self.count(&t.name, t.role.as_str(), op.action, "denied", filter);
                Err(Refused {
                    why: Refusal::Denied,
                    message: format!("{} needs the role {}", op.action, op.needs.roles()),
                })
            }
            Some(t) => Ok(Principal {
                who: t.name.clone(),
                role: t.role,
            }),
        }
    }

    /// Counts a refusal of an admitted request (what it asked is not for
    /// its role, a cap is reached): written like the gate's own.
    pub fn refuse(&self, p: &Principal, op: &Op, outcome: &'static str, filter: &str) {
        self.count(&p.who, p.role.as_str(), op.action, outcome, filter);
    }

    /// Counts one refusal: nothing here waits on the disk.
    fn count(
        &self,
        who: &str,
        role: &'static str,
        action: &'static str,
        outcome: &'static str,
        filter: &str,
    ) {
        match self.refusals.lock() {
            Ok(mut r) => r.note((who.to_string(), role, action, outcome), filter),
            Err(_) => tracing::error!(who, action, outcome, "refusal not counted: lock poisoned"),
        }
    }

    /// Appends an answered (or failed) request to the audit log, the
    /// filter cut at 1 KiB. Call it before the answer is given: when it
    /// cannot be written, the answer is not given ([`Unaudited`]).
    pub async fn audit(
        &self,
        p: &Principal,
        op: &Op,
        filter: &str,
        rows: u64,
        outcome: &str,
    ) -> Result<(), Unaudited> {
        let Some(log) = self.audit.clone() else {
            return Ok(());
        };
        let e = Entry {
            id: 0,
            ts_us: unix_us(),
            who: p.who.clone(),
            role: p.role.as_str().into(),
            action: op.action.into(),
            filter: cut(filter),
            rows,
            outcome: outcome.into(),
            count: 1,
        };
        let r = tokio::task::spawn_blocking(move || {
            log.append(std::slice::from_ref(&e))
                .map_err(|e| e.to_string())
        })
        .await;
        let e = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %e, "writing the audit log failed; the request is refused");
        Err(Unaudited)
    }

    /// Writes the refusals of finished seconds (with `all`, the current
    /// one too); rows that cannot be written are kept for the next try.
    pub async fn write_refusals(&self, all: bool) {
        let rows = {
            let Ok(mut r) = self.refusals.lock() else {
                return;
            };
            let sec = unix_us().div_euclid(1_000_000);
            r.roll(if all { sec + 1 } else { sec });
            std::mem::take(&mut r.pending)
        };
        if rows.is_empty() {
            return;
        }
        let Some(log) = self.audit.clone() else {
            return;
        };
        let res = tokio::task::spawn_blocking(move || {
            log.append(&rows).map_err(|e| (e.to_string(), rows))
        })
        .await;
        if let Ok(Err((e, rows))) = res {
            tracing::error!(error = %e, rows = rows.len(), "writing refusals to the audit log failed; they are kept and written later");
            if let Ok(mut r) = self.refusals.lock() {
                let mut rows = rows;
                rows.append(&mut r.pending);
                r.pending = rows;
            }
        }
    }
}

/// Writes the gate's counted refusals to the audit log every second, and
/// the last ones when `shutdown` turns true (run it beside the services).
pub async fn flush_refusals(gate: Arc<AccessGate>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = every.tick() => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        gate.write_refusals(last).await;
        if last {
            return;
        }
    }
}

/// The HTTP adapter: runs `handler` behind the gate for `op`. A request
/// the gate refuses gets 401 (with `WWW-Authenticate: Bearer`) or 403 and
/// is counted; an admitted one is answered by `handler`, which returns its
/// response, the rows it holds and the outcome, and that answer is
/// audited before it is sent (503 if it cannot be).
pub async fn http<F, Fut>(
    gate: &AccessGate,
    headers: &HeaderMap,
    op: &Op,
    filter: &str,
    handler: F,
) -> Response
where
    F: FnOnce(Principal) -> Fut,
    Fut: Future<Output = (Response, u64, String)>,
{
    let p = match gate.admit(&Credentials::http(headers), op, filter) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (answer, rows, outcome) = handler(p.clone()).await;
    match gate.audit(&p, op, filter, rows, &outcome).await {
        Ok(()) => answer,
        Err(u) => u.into_response(),
    }
}

/// Refusals of the current second and those not yet written, by who,
/// role, action and outcome: a flood costs one row per key per second.
#[derive(Default)]
struct Refusals {
    second: i64,
    now: HashMap<RefusalKey, (u64, String)>,
    pending: Vec<Entry>,
}

type RefusalKey = (String, &'static str, &'static str, &'static str);

impl Refusals {
    /// Counts one refusal now.
    fn note(&mut self, key: RefusalKey, filter: &str) {
        let sec = unix_us().div_euclid(1_000_000);
        self.roll(sec);
        let e = self.now.entry(key).or_insert_with(|| (0, cut(filter)));
        e.0 += 1;
    }

    /// Moves the counts of a finished second to the rows to write.
    fn roll(&mut self, sec: i64) {
        if sec == self.second {
            return;
        }
        let old = std::mem::take(&mut self.now);
        for ((who, role, action, outcome), (count, filter)) in old {
            let row = Entry {
                id: 0,
                ts_us: self.second * 1_000_000,
                who,
                role: role.into(),
                action: action.into(),
                filter,
                rows: 0,
                outcome: outcome.into(),
                count,
            };
            if self.pending.len() >= PENDING_MAX {
                if let Some(last) = self.pending.iter_mut().rev().find(|p| {
                    p.who == row.who && p.action == row.action && p.outcome == row.outcome
                }) {
                    last.count += row.count;
                    continue;
                }
            }
            self.pending.push(row);
        }
        self.second = sec;
    }
}

/// The filter text an audit entry keeps: cut at 1 KiB.
fn cut(filter: &str) -> String {
    let mut filter = filter.to_string();
    if filter.len() > FILTER_MAX {
        let mut at = FILTER_MAX;
        while !filter.is_char_boundary(at) {
            at -= 1;
        }
        filter.truncate(at);
        filter.push_str("...(cut)");
    }
    filter
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use kuzet_api::investigation as pb;
    use kuzet_api::investigation::investigation_service_client::InvestigationServiceClient;
    use kuzet_api::investigation::investigation_service_server::InvestigationServiceServer;
    use kuzet_store::StoreError;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::access::{hash_token, parse_sha256, Token};

    /// An audit log in memory, which can be told to fail.
    #[derive(Default)]
    struct MemAudit {
        rows: Mutex<Vec<Entry>>,
        failing: AtomicBool,
    }

    impl AuditLog for MemAudit {
        fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(StoreError::internal("memory", "a test's dead disk"));
            }
            let mut g = self.rows.lock().unwrap();
            for e in entries {
                let mut e = e.clone();
                e.id = g.len() as i64 + 1;
                g.push(e);
            }
            Ok(())
        }

        fn read(&self, before: Option<i64>, limit: usize) -> Result<Vec<Entry>, StoreError> {
            let g = self.rows.lock().unwrap();
            Ok(g.iter()
                .rev()
                .filter(|e| e.id < before.unwrap_or(i64::MAX))
                .take(limit)
                .cloned()
                .collect())
        }
    }

    fn access() -> Access {
        let token = |name: &str, role| Token {
            name: name.into(),
            role,
            sha256: parse_sha256(&hash_token(&format!("{name}-secret"))).unwrap(),
        };
        Access::new(vec![
            token("ana", Role::Investigator),
            token("rui", Role::RuleAuthor),
            token("root", Role::Admin),
        ])
    }

    #[test]
    fn roles_grant_permissions_and_the_local_socket_is_an_investigator() {
        let gate = AccessGate::new(access(), None);
        let bearer = |t: &str| Credentials {
            bearer: Some(t.into()),
            local_uid: None,
        };
        let who = |r: Result<Principal, Refused>| r.map(|p| (p.who, p.role)).map_err(|r| r.why);
        assert_eq!(
            who(gate.admit(&bearer("rui-secret"), &ops::COUNT_CALLS, "")),
            Ok(("rui".into(), Role::RuleAuthor))
        );
        assert_eq!(
            who(gate.admit(&bearer("rui-secret"), &ops::QUERY_CALLS, "")),
            Err(Refusal::Denied)
        );
        assert_eq!(
            who(gate.admit(&bearer("ana-secret"), &ops::READ_AUDIT, "")),
            Err(Refusal::Denied)
        );
        assert_eq!(
            who(gate.admit(&bearer("nobody"), &ops::QUERY_CALLS, "")),
            Err(Refusal::Unauthenticated)
        );
        // kuzet's own user on the Unix socket, without a token.
        let local = Credentials {
            bearer: None,
            local_uid: kuzet_store::private::process_uid(),
        };
        assert_eq!(
            who(gate.admit(&local, &ops::QUERY_CALLS, "")),
            Ok((LOCAL.into(), Role::Investigator))
        );
        let r = gate.admit(&local, &ops::READ_AUDIT, "").unwrap_err();
        assert_eq!(r.why, Refusal::Denied);
        assert!(
            r.message.contains("needs the role admin: the local socket"),
            "{}",
            r.message
        );
        // Another user on the socket is nobody.
        let stranger = Credentials {
            bearer: None,
            local_uid: Some(kuzet_store::private::process_uid().unwrap_or(0) ^ 0x5a5a),
        };
        assert_eq!(
            who(gate.admit(&stranger, &ops::QUERY_CALLS, "")),
            Err(Refusal::Unauthenticated)
        );
        let r = gate
            .admit(&bearer("rui-secret"), &ops::LIST_INCIDENTS, "")
            .unwrap_err();
        assert_eq!(
            r.message,
            "ListIncidents needs the role investigator or admin"
        );
    }

    /// One HTTP/1.1 request on a fresh connection: the status and the
    /// response as text.
    async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: kuzet\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    /// A read-only HTTP route behind the gate, as the console's will be:
    /// the newest audit entries, one a line.
    async fn serve_http(gate: Arc<AccessGate>) -> std::net::SocketAddr {
        let route = move |headers: HeaderMap| {
            let gate = gate.clone();
            async move {
                let log = gate.audit_log();
                http(&gate, &headers, &ops::READ_AUDIT, "{}", |_who| async move {
                    let rows = log.map(|l| l.read(None, 10).unwrap()).unwrap_or_default();
                    let body: String = rows
                        .iter()
                        .map(|e| format!("{} {} {}\n", e.who, e.action, e.outcome))
                        .collect();
                    (body.into_response(), rows.len() as u64, "ok".to_string())
                })
                .await
            }
        };
        let app = axum::Router::new().route("/audit/recent", axum::routing::get(route));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((io, _)) = l.accept().await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc),
                );
            }
        });
        addr
    }

    /// The investigators' API on its own, without a store's queries.
    async fn serve_grpc(gate: Arc<AccessGate>) -> std::net::SocketAddr {
        let plan = kuzet_rules::NumberingPlan::kazakhstan()
            .validated()
            .unwrap();
        let svc = crate::investigate::Investigation::new(None, plan, gate);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(InvestigationServiceServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        addr
    }

    fn read_audit(token: Option<&str>) -> tonic::Request<pb::ReadAuditRequest> {
        let mut r = tonic::Request::new(pb::ReadAuditRequest {
            page_size: 10,
            cursor: String::new(),
        });
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_gate_refuses_and_audits_a_grpc_call_and_an_http_request_alike() {
        let log = Arc::new(MemAudit::default());
        let gate = Arc::new(AccessGate::new(access(), Some(log.clone())));
        let grpc = serve_grpc(gate.clone()).await;
        let web = serve_http(gate.clone()).await;
        let mut c = InvestigationServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let code = |r: Result<tonic::Response<pb::ReadAuditResponse>, Status>| {
            r.map_or_else(|s| s.code(), |_| tonic::Code::Ok)
        };

        // No token, and a role without the permission: refused on both.
        assert_eq!(
            code(c.read_audit(read_audit(None)).await),
            tonic::Code::Unauthenticated
        );
        let (status, text) = get(web, "/audit/recent", None).await;
        assert_eq!(status, 401, "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{text}"
        );
        assert_eq!(
            code(c.read_audit(read_audit(Some("ana-secret"))).await),
            tonic::Code::PermissionDenied
        );
        let (status, text) = get(web, "/audit/recent", Some("ana-secret")).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("ReadAudit needs the role admin"), "{text}");
        // Nothing refused is written at once: the gate counts it.
        assert!(log.rows.lock().unwrap().is_empty());

        // An admin is answered on both, and each answer is audited.
        assert_eq!(
            code(c.read_audit(read_audit(Some("root-secret"))).await),
            tonic::Code::Ok
        );
        let (status, text) = get(web, "/audit/recent", Some("root-secret")).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.ends_with("root ReadAudit ok\n"), "{text}");

        // The refusals of both surfaces, counted together.
        gate.write_refusals(true).await;
        let rows = log.rows.lock().unwrap().clone();
        let count = |who: &str, outcome: &str| {
            rows.iter()
                .filter(|e| e.who == who && e.action == "ReadAudit" && e.outcome == outcome)
                .map(|e| e.count)
                .sum::<u64>()
        };
        assert_eq!(count("-", "unauthenticated"), 2, "{rows:?}");
        assert_eq!(count("ana", "denied"), 2, "{rows:?}");
        assert_eq!(count("root", "ok"), 2, "{rows:?}");
        assert!(rows
            .iter()
            .filter(|e| e.outcome == "ok")
            .all(|e| e.role == "admin" && e.count == 1));

        // An answer that cannot be audited is not given, on either.
        log.failing.store(true, Ordering::Relaxed);
        assert_eq!(
            code(c.read_audit(read_audit(Some("root-secret"))).await),
            tonic::Code::Unavailable
        );
        let (status, text) = get(web, "/audit/recent", Some("root-secret")).await;
        assert_eq!(status, 503, "{text}");
        assert!(!text.contains("root ReadAudit ok"), "{text}");
    }
}
