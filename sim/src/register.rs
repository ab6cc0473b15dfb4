//! A stand-in for the pre-trial investigation register: it serves
//! `kuzet.register.v1` as a real register would, so kuzet's reporting is
//! tested against the protocol and not a mock inside kuzet.
//!
//! It checks each report (a known kind, a key, victims or sources, every
//! named number with a known role, a source only on an attributable basis,
//! and an evidence digest that matches the evidence), dedupes submissions
//! by idempotency key, applies updates only in increasing sequence, and
//! appends everything it accepts to a JSON-lines file that it replays on
//! start, so a restarted register still knows every case. It can be told
//! to refuse every report as invalid, to fail (UNAVAILABLE), to stall
//! before answering, or to misbehave as a hostile peer would: answer with
//! a case id megabytes long, or refuse with an error text full of
//! terminal escape sequences and line breaks.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use kuzet_api::register as pb;
use kuzet_api::register::register_service_server::{RegisterService, RegisterServiceServer};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

/// How the stand-in behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Check and take every report.
    Accept,
    /// Refuse every report as invalid (INVALID_ARGUMENT).
    Refuse,
    /// Fail every call (UNAVAILABLE), as a register that is down behind a
    /// proxy.
    Fail,
    /// Hold every call for the stall time, then answer as `accept`.
    Stall,
    /// Take every report, but answer with a case id of 3.5 MB.
    Oversize,
    /// Refuse every report with an error text made to forge lines and
    /// drive a terminal (escape sequences, CR/LF, a title change).
    Hostile,
}

/// The error text [`Mode::Hostile`] answers with.
pub const HOSTILE_ERROR: &str = "refused\r\nstate     closed (register: delivered, case ERDR-000001)\x1b]0;pwned\x07\x1b[2J\x1b[31mforged";

/// One line of the register's file: something it accepted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// `submit` or `update`.
    pub op: String,
    /// The incident's idempotency key.
    pub key: String,
    /// The report's sequence.
    pub seq: u64,
    /// The case the register opened for the key.
    pub case: String,
    /// A submission of a key already known (answered, not opened again).
    pub duplicate: bool,
    /// Blocked calls, as reported.
    pub blocked: u64,
    /// Flagged calls.
    pub flagged: u64,
    /// Victims, as reported.
    pub victims: Vec<String>,
    /// The evidence digest.
    pub digest: String,
    /// Every number the report named: number, role, basis.
    #[serde(default)]
    pub parties: Vec<(String, String, String)>,
    /// The report's kind and key.
    #[serde(default)]
    pub kind: String,
    /// The report's key (the source, trunk, address, destination or
    /// campaign).
    #[serde(default)]
    pub subject: String,
}

#[derive(Default)]
struct Case {
    case: String,
    applied: u64,
}

struct Inner {
    cases: HashMap<String, Case>,
    file: std::fs::File,
}

/// The register.
pub struct Register {
    mode: Mode,
    stall: Duration,
    inner: Mutex<Inner>,
}

/// Reads the register's file: every entry it accepted, in order.
pub fn read_entries(path: &std::path::Path) -> std::io::Result<Vec<Entry>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), n + 1),
            )
        })?);
    }
    Ok(out)
}

/// The digest kuzet must send: SHA-256 of the report's encoding with the
/// key, sequence and digest fields empty.
pub fn digest(r: &pb::IncidentReport) -> String {
    let mut c = r.clone();
    c.idempotency_key.clear();
    c.sequence = 0;
    c.evidence_sha256.clear();
    Sha256::digest(c.encode_to_vec())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Register {
    /// A register keeping its cases in `file` (replayed if it exists).
    pub fn open(file: PathBuf, mode: Mode, stall: Duration) -> std::io::Result<Register> {
        let mut cases: HashMap<String, Case> = HashMap::new();
        for e in read_entries(&file)? {
            let c = cases.entry(e.key.clone()).or_default();
            c.case = e.case;
            c.applied = c.applied.max(e.seq);
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)?;
        Ok(Register {
            mode,
            stall,
            inner: Mutex::new(Inner { cases, file: f }),
        })
    }

    async fn gate(&self) -> Result<(), Status> {
        match self.mode {
            Mode::Accept => Ok(()),
            Mode::Refuse => Err(Status::invalid_argument(
                "refused: this register was told to refuse every report",
            )),
            Mode::Fail => Err(Status::unavailable("the register is unavailable")),
            Mode::Stall => {
                tokio::time::sleep(self.stall).await;
                Ok(())
            }
            Mode::Oversize => Ok(()),
            Mode::Hostile => Err(Status::invalid_argument(HOSTILE_ERROR)),
        }
    }

    /// The case id to answer with (the real one, or a hostile one).
    fn case_id(&self, case: String) -> String {
        match self.mode {
            Mode::Oversize => format!("{case}-{}", "X".repeat(3_500_000)),
            _ => case,
        }
    }

    fn check(r: Option<pb::IncidentReport>) -> Result<pb::IncidentReport, Status> {
        let r = r.ok_or_else(|| Status::invalid_argument("no report"))?;
        if r.idempotency_key.is_empty() || r.sequence == 0 {
            return Err(Status::invalid_argument(
                "a report needs a key and a sequence",
            ));
        }
        if !matches!(
            r.kind.as_str(),
            "source" | "campaign" | "trunk" | "address" | "destination"
        ) || r.key.is_empty()
        {
            return Err(Status::invalid_argument(
                "kind must be source, campaign, trunk, address or destination, with a key",
            ));
        }
        for p in &r.parties {
            let known = matches!(
                p.role.as_str(),
                "source"
                    | "victim"
                    | "potential_victim"
                    | "impersonated"
                    | "claimed_caller"
                    | "caller"
            );
            if !known || p.number.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "party {:?}: unknown role {:?}",
                    p.number, p.role
                )));
            }
            // A register accuses only on an attributable basis.
            if p.role == "source" && !matches!(p.basis.as_str(), "asserted" | "listed") {
                return Err(Status::invalid_argument(format!(
                    "party {:?} is named a source on the basis {:?}: only an asserted or listed number may be",
                    p.number, p.basis
                )));
            }
        }
        if r.victims.is_empty() && r.sources.is_empty() {
            return Err(Status::invalid_argument(
                "a report names victims or sources",
            ));
        }
        if digest(&r) != r.evidence_sha256 {
            return Err(Status::invalid_argument(
                "the evidence digest does not match the evidence",
            ));
        }
        Ok(r)
    }

    fn write(inner: &mut Inner, e: &Entry) -> Result<(), Status> {
        let line = serde_json::to_string(e).map_err(|e| Status::internal(e.to_string()))?;
        writeln!(inner.file, "{line}")
            .and_then(|()| inner.file.sync_data())
            .map_err(|e| Status::internal(format!("register file: {e}")))
    }

    fn entry(op: &str, r: &pb::IncidentReport, case: &str, duplicate: bool) -> Entry {
        Entry {
            op: op.into(),
            key: r.idempotency_key.clone(),
            seq: r.sequence,
            case: case.into(),
            duplicate,
            blocked: r.blocked,
            flagged: r.flagged,
            victims: r.victims.clone(),
            digest: r.evidence_sha256.clone(),
            parties: r
                .parties
                .iter()
                .map(|p| (p.number.clone(), p.role.clone(), p.basis.clone()))
                .collect(),
            kind: r.kind.clone(),
            subject: r.key.clone(),
        }
    }
}

#[tonic::async_trait]
impl RegisterService for Register {
    async fn submit_incident(
        &self,
        req: Request<pb::SubmitIncidentRequest>,
    ) -> Result<Response<pb::SubmitIncidentResponse>, Status> {
        self.gate().await?;
        let r = Self::check(req.into_inner().report)?;
        let mut g = self.inner.lock().map_err(|_| Status::internal("lock"))?;
        let n = g.cases.len() + 1;
        if let Some(c) = g.cases.get(&r.idempotency_key) {
            let case = c.case.clone();
            Self::write(&mut g, &Self::entry("submit", &r, &case, true))?;
            return Ok(Response::new(pb::SubmitIncidentResponse {
                case_id: self.case_id(case),
                duplicate: true,
            }));
        }
        let case = format!("ERDR-{n:06}");
        Self::write(&mut g, &Self::entry("submit", &r, &case, false))?;
        g.cases.insert(
            r.idempotency_key.clone(),
            Case {
                case: case.clone(),
                applied: r.sequence,
            },
        );
        Ok(Response::new(pb::SubmitIncidentResponse {
            case_id: self.case_id(case),
            duplicate: false,
        }))
    }

    async fn update_incident(
        &self,
        req: Request<pb::UpdateIncidentRequest>,
    ) -> Result<Response<pb::UpdateIncidentResponse>, Status> {
        self.gate().await?;
        let r = Self::check(req.into_inner().report)?;
        let mut g = self.inner.lock().map_err(|_| Status::internal("lock"))?;
        let Some(c) = g.cases.get(&r.idempotency_key) else {
            return Err(Status::not_found("no case for this key: submit it first"));
        };
        let (case, applied) = (c.case.clone(), c.applied);
        if r.sequence <= applied {
            return Ok(Response::new(pb::UpdateIncidentResponse {
                case_id: self.case_id(case),
                applied_sequence: applied,
            }));
        }
        Self::write(&mut g, &Self::entry("update", &r, &case, false))?;
        if let Some(c) = g.cases.get_mut(&r.idempotency_key) {
            c.applied = r.sequence;
        }
        Ok(Response::new(pb::UpdateIncidentResponse {
            case_id: self.case_id(case),
            applied_sequence: r.sequence,
        }))
    }
}

/// Serves the register on `listen` until the process ends, over TLS when
/// `tls` holds a certificate chain and key (PEM); prints `register
/// listening on ADDR` once bound.
pub async fn serve(
    listen: SocketAddr,
    reg: Register,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    println!("register listening on {}", l.local_addr()?);
    let _ = std::io::stdout().flush();
    let mut b = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        b = b
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .map_err(std::io::Error::other)?;
    }
    // A hostile register's huge answers must reach the client to test it.
    b.add_service(RegisterServiceServer::new(reg).max_encoding_message_size(8 << 20))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
        .await
        .map_err(std::io::Error::other)
}
