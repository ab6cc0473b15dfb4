//! A stand-in for the National Bank's Anti-Fraud Centre: it serves the
//! feed (`GET /v1/batches`), the alerts (`GET /v1/alerts`) and takes the
//! operator's reports (`POST /v1/reports`) over real HTTP, exactly as
//! docs/nb-feed.md defines them, so kuzet's puller and reporter are
//! tested against the protocol and not a mock inside kuzet.
//!
//! Batches are signed with ed25519 when they are published (keys derived
//! from a seed, so the same seed gives the same keys and a test can
//! configure kuzet from [`NbFeed::kuzet_config`]). A test, or a human
//! through the `kuzet-sim nb-feed` control API, makes it misbehave as a
//! real Centre or the network between could: change a byte of the next
//! batch after signing, replay an applied batch, skip ahead, stall, rotate
//! keys or sign with a retired one, refuse or fail reports, or die
//! altogether ([`NbFeed::stop`]: the listener and every open connection
//! are shut before it returns). It serves plain HTTP ([`NbFeed::spawn`])
//! or HTTPS with rustls ([`NbFeed::spawn_tls`]), optionally requiring a
//! client certificate signed by a given CA (mTLS), as the real Centre
//! does. Reports are checked (`"v":1`, a known
//! `kind`, the fields the doc lists for it, each of the right type) and
//! deduped by idempotency key: a new key is 201, the same key with the
//! same bytes 200, the same key with other bytes 409.
//!
//! Fields a report must carry, by kind (times RFC 3339 UTC, numbers
//! E.164, counts non-negative integers): `decision`: alert, number,
//! outcome (`confirmed` or `not_confirmed`), decided_at, and bss_ref and
//! note as strings when present; `fraud_number`: number, basis
//! (`asserted` or `listed`), incident, first_seen, last_seen, blocked,
//! flagged, rules (strings); `potential_victim`: number, source, at,
//! incident, category; `feedback`: from, to, hits (objects of number, a
//! number or a `+digits*` range, calls, and case when kuzet still holds
//! the entry). Fields beyond these are
//! let through.

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The header that carries a batch's signature.
pub const SIGNATURE_HEADER: &str = "kuzet-signature";

/// The largest report body taken (a larger one is answered 413).
pub const MAX_REPORT: usize = 1 << 20;

/// The longest idempotency key taken.
pub const MAX_KEY: usize = 256;

/// `k1`'s validity start: 2020-01-01T00:00:00Z.
pub const K1_VALID_FROM: i64 = 1_577_836_800;

/// What a feed entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The number or range enters the layer until `expires_at`.
    Add,
    /// It leaves the layer.
    Withdraw,
}

/// One entry of a feed batch, as published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    /// Add or withdraw.
    pub action: Action,
    /// A number (`+77011234567`) or a range (`+7702555*`): served as
    /// `range` when it ends with `*`, as `number` otherwise.
    pub target: String,
    /// The Centre's category (adds only).
    pub category: String,
    /// 0-100 (adds only).
    pub confidence: u8,
    /// Unix seconds (adds only).
    pub reported_at: i64,
    /// Unix seconds (adds only).
    pub expires_at: i64,
    /// The Centre's case reference.
    pub case: String,
}

/// The JSON shape of a feed entry line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryLine {
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confidence: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reported_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    case: String,
}

/// A case reference made from a target: `AFC-SIM-` and its digits.
fn case_for(target: &str) -> String {
    let digits: String = target.chars().filter(char::is_ascii_digit).collect();
    format!("AFC-SIM-{digits}")
}

impl FeedEntry {
    /// An add of `target` in `category` until `expires_at` (Unix
    /// seconds): confidence 90, reported now (or a day before
    /// `expires_at` when that is not in the future), case `AFC-SIM-` and
    /// the target's digits.
    pub fn add(
        target: impl Into<String>,
        category: impl Into<String>,
        expires_at: i64,
    ) -> FeedEntry {
        let target = target.into();
        let now = now();
        FeedEntry {
            action: Action::Add,
            case: case_for(&target),
            target,
            category: category.into(),
            confidence: 90,
            reported_at: if expires_at > now {
                now
            } else {
                expires_at - 86_400
            },
            expires_at,
        }
    }

    /// A withdrawal of `target`, case `AFC-SIM-` and its digits.
    pub fn withdraw(target: impl Into<String>) -> FeedEntry {
        let target = target.into();
        FeedEntry {
            action: Action::Withdraw,
            case: case_for(&target),
            target,
            category: String::new(),
            confidence: 0,
            reported_at: 0,
            expires_at: 0,
        }
    }

    /// The entry's line in a batch (no newline), fields in the doc's
    /// order; a withdrawal carries only its target and case.
    pub fn to_json_line(&self) -> String {
        let (number, range) = if self.target.ends_with('*') {
            (None, Some(self.target.clone()))
        } else {
            (Some(self.target.clone()), None)
        };
        let add = self.action == Action::Add;
        let line = EntryLine {
            action: if add { "add" } else { "withdraw" }.into(),
            number,
            range,
            category: add.then(|| self.category.clone()),
            confidence: add.then_some(self.confidence),
            reported_at: add.then(|| rfc3339(self.reported_at)),
            expires_at: add.then(|| rfc3339(self.expires_at)),
            case: self.case.clone(),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// Reads an entry line in the feed's format (as [`to_json_line`]
    /// writes it): an action, exactly one of number and range, and for an
    /// add its category, confidence and times.
    ///
    /// [`to_json_line`]: FeedEntry::to_json_line
    pub fn from_json_line(line: &str) -> Result<FeedEntry, String> {
        let l: EntryLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let target = match (l.number, l.range) {
            (Some(t), None) | (None, Some(t)) => t,
            _ => return Err("exactly one of number and range".into()),
        };
        match l.action.as_str() {
            "add" => Ok(FeedEntry {
                action: Action::Add,
                target,
                category: l.category.ok_or("an add needs category")?,
                confidence: l.confidence.ok_or("an add needs confidence")?,
                reported_at: parse_time(&l.reported_at.ok_or("an add needs reported_at")?)?,
                expires_at: parse_time(&l.expires_at.ok_or("an add needs expires_at")?)?,
                case: l.case,
            }),
            "withdraw" => Ok(FeedEntry {
                case: l.case,
                ..FeedEntry::withdraw(target)
            }),
            other => Err(format!("action {other:?} (add or withdraw)")),
        }
    }
}

/// One alert on an operator's own number, as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// The Centre's reference for the alert.
    pub id: String,
    /// The operator's number, E.164.
    pub number: String,
    /// The Centre's category.
    pub category: String,
    /// Unix seconds (RFC 3339 on the wire).
    #[serde(with = "rfc3339_field")]
    pub reported_at: i64,
    /// Free text, at most 512 characters.
    #[serde(default)]
    pub note: String,
}

impl Alert {
    /// An alert reported now, with a short note.
    pub fn new(
        id: impl Into<String>,
        number: impl Into<String>,
        category: impl Into<String>,
    ) -> Alert {
        Alert {
            id: id.into(),
            number: number.into(),
            category: category.into(),
            reported_at: now(),
            note: "raised by kuzet-sim nb-feed".into(),
        }
    }

    /// The alert's line in a batch (no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an alert line (`note` may be left out).
    pub fn from_json_line(line: &str) -> Result<Alert, String> {
        serde_json::from_str(line).map_err(|e| e.to_string())
    }
}

/// An `i64` of Unix seconds as an RFC 3339 string.
mod rfc3339_field {
    pub fn serialize<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        super::parse_time(&s).map_err(serde::de::Error::custom)
    }
}

/// One of the Centre's signing keys, as kuzet configures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// Its id (`k1`, `k2`...), as the signature header names it.
    pub id: String,
    /// The ed25519 public key, 64 lowercase hex digits.
    pub public_hex: String,
    /// Valid from, RFC 3339 UTC.
    pub valid_from_rfc3339: String,
    /// Valid from, Unix seconds.
    pub valid_from: i64,
}

impl PublicKey {
    /// The key as ed25519-dalek's type.
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut b = [0u8; 32];
        for (i, o) in b.iter_mut().enumerate() {
            *o = u8::from_str_radix(&self.public_hex[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        VerifyingKey::from_bytes(&b).expect("a key this stand-in made")
    }
}

/// A report the Centre took.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Its idempotency key.
    pub key: String,
    /// Its `kind`.
    pub kind: String,
    /// The report as sent.
    pub body: Value,
    /// POSTs seen with this key that were taken or answered as taken
    /// (1, then one more for each retry).
    pub deliveries: u32,
}

/// Which signed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The fraud numbers, `/v1/batches`.
    Feed,
    /// The alerts, `/v1/alerts`.
    Alerts,
}

/// A signed batch, stored as served.
struct Signed {
    body: Vec<u8>,
    signature: String,
}

/// One stream's batches and its one-shot faults.
#[derive(Default)]
struct Log {
    batches: Vec<Signed>,
    tamper: bool,
    replay: bool,
    skip: bool,
}

impl Log {
    /// The batch to answer `after` with, the faults applied (each
    /// consumed only when it shapes an answer).
    fn answer(&mut self, after: u64) -> Option<(Vec<u8>, String)> {
        let last = self.batches.len() as u64;
        let seq = if self.replay && after >= 1 && after <= last {
            self.replay = false;
            after
        } else if self.skip && after.checked_add(2).is_some_and(|s| s <= last) {
            self.skip = false;
            after + 2
        } else if after < last {
            after + 1
        } else {
            return None;
        };
        let b = &self.batches[(seq - 1) as usize];
        let mut body = b.body.clone();
        if self.tamper && !body.is_empty() {
            self.tamper = false;
            let i = body.len() / 2;
            body[i] ^= 1;
        }
        Some((body, b.signature.clone()))
    }
}

#[derive(Clone)]
struct Key {
    id: String,
    signing: SigningKey,
    valid_from: i64,
}

struct Taken {
    report: Report,
    bytes: Vec<u8>,
}

/// One listener [`NbFeed::spawn`] or [`NbFeed::spawn_tls`] started.
struct Serving {
    listener: Arc<TcpListener>,
    /// The server and, over TLS, the handshakes' accept loop.
    tasks: Vec<tokio::task::AbortHandle>,
    alive: Arc<AtomicBool>,
}

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`NbFeed::spawn_tls`] serves HTTPS with: the Centre's certificate
/// and, for mTLS, the CA its clients' certificates must be signed by.
#[derive(Clone, Debug)]
pub struct TlsServer {
    /// The Centre's certificate chain (PEM), its own certificate first.
    pub cert_pem: Vec<u8>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
    /// PEM of the CA (one or more) that signs the clients' certificates.
    /// `Some`: every client must present a certificate it signed, or the
    /// handshake fails (mTLS); `None`: no client certificate is asked
    /// for.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl TlsServer {
    /// rustls' server config: the ring provider, TLS 1.2 and 1.3,
    /// HTTP/1.1 by ALPN, client certificates verified against
    /// [`client_ca_pem`](TlsServer::client_ca_pem) when it is given.
    fn config(&self) -> std::io::Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        fn bad(what: &str, why: impl std::fmt::Display) -> std::io::Error {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {why}"))
        }
        let certs = |what: &str, pem: &[u8]| {
            let c: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(what, e))?;
            if c.is_empty() {
                return Err(bad(what, "no CERTIFICATE in the PEM"));
            }
            Ok(c)
        };
        let chain = certs("the certificate", &self.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| bad("the key", e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", e))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs("the client CA", pem)? {
                    roots.add(c).map_err(|e| bad("the client CA", e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad("the client CA", e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| bad("the certificate and key", e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

struct Inner {
    seed: String,
    keys: Vec<Key>,
    signer: Key,
    feed: Log,
    alerts: Log,
    stall: Duration,
    /// How long a report's answer waits after the report was taken.
    answer_delay: Duration,
    fail_reports: Option<u16>,
    reports: Vec<Taken>,
    served: Vec<(String, u64)>,
    posts: Vec<(String, u16)>,
    log: Option<std::fs::File>,
    serving: Vec<Serving>,
    conns: Vec<Weak<TcpStream>>,
    failed_handshakes: u64,
}

impl Inner {
    fn log_mut(&mut self, s: Stream) -> &mut Log {
        match s {
            Stream::Feed => &mut self.feed,
            Stream::Alerts => &mut self.alerts,
        }
    }

    fn sign(&self, body: Vec<u8>) -> Signed {
        let sig = self.signer.signing.sign(&body).to_bytes();
        Signed {
            signature: format!("v1 key={} sig={}", self.signer.id, hex(&sig)),
            body,
        }
    }
}

/// The stand-in Centre. Clones share one state; [`NbFeed::spawn`] serves
/// it on as many addresses as asked.
#[derive(Clone)]
pub struct NbFeed {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for NbFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("NbFeed")
            .field("seed", &g.seed)
            .field("signer", &g.signer.id)
            .field("batches", &g.feed.batches.len())
            .field("alerts", &g.alerts.batches.len())
            .finish_non_exhaustive()
    }
}

/// The key `id` of `seed`: SHA-256 of `kuzet-sim nb-feed SEED ID`.
fn derive(seed: &str, id: &str, valid_from: i64) -> Key {
    let d: [u8; 32] = Sha256::digest(format!("kuzet-sim nb-feed {seed} {id}")).into();
    Key {
        id: id.into(),
        signing: SigningKey::from_bytes(&d),
        valid_from,
    }
}

/// Whether `id` may name a key: 1-64 letters, digits, `-`, `_` or `.`.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl NbFeed {
    /// A Centre with no batches, signing with `k1` (valid from
    /// 2020-01-01), whose keys derive from `seed`.
    pub fn new(seed: &str) -> NbFeed {
        let k1 = derive(seed, "k1", K1_VALID_FROM);
        NbFeed {
            inner: Arc::new(Mutex::new(Inner {
                seed: seed.into(),
                keys: vec![k1.clone()],
                signer: k1,
                feed: Log::default(),
                alerts: Log::default(),
                stall: Duration::ZERO,
                answer_delay: Duration::ZERO,
                fail_reports: None,
                reports: Vec::new(),
                served: Vec::new(),
                posts: Vec::new(),
                log: None,
                serving: Vec::new(),
                conns: Vec::new(),
                failed_handshakes: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `addr` (port 0: any) and serves plain HTTP there in a tokio
    /// task until [`stop`](NbFeed::stop); returns the bound address.
    /// Called again after a stop (on the same address, say), the feed
    /// comes back with everything it held.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        self.serve_on(addr, None).await
    }

    /// As [`spawn`](NbFeed::spawn), over HTTPS: TLS with `tls`'s
    /// certificate and, when it names a client CA, only for clients whose
    /// certificate that CA signed (a client without one, or with another,
    /// fails the handshake and is counted in
    /// [`failed_handshakes`](NbFeed::failed_handshakes)). Fails at once
    /// when the PEM does not make a TLS config.
    pub async fn spawn_tls(&self, addr: SocketAddr, tls: TlsServer) -> std::io::Result<SocketAddr> {
        let acceptor = TlsAcceptor::from(tls.config()?);
        self.serve_on(addr, Some(acceptor)).await
    }

    async fn serve_on(
        &self,
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<SocketAddr> {
        let listener = Arc::new(TcpListener::bind(addr).await?);
        let bound = listener.local_addr()?;
        let alive = Arc::new(AtomicBool::new(true));
        let app = Router::new()
            .route("/v1/batches", get(batches))
            .route("/v1/alerts", get(alerts))
            .route("/v1/reports", post(take_report))
            .layer(DefaultBodyLimit::max(MAX_REPORT))
            .with_state(App {
                feed: self.clone(),
                alive: alive.clone(),
            });
        let accept = Accept {
            listener: listener.clone(),
            feed: self.clone(),
            alive: alive.clone(),
        };
        let tasks = match tls {
            None => vec![tokio::spawn(async move {
                let _ = axum::serve(accept, app).await;
            })
            .abort_handle()],
            Some(acceptor) => {
                let (tx, rx) = mpsc::channel(64);
                let handshakes = tokio::spawn(handshakes(accept, acceptor, tx));
                let tls = AcceptTls { rx, local: bound };
                let server = tokio::spawn(async move {
                    let _ = axum::serve(tls, app).await;
                });
                vec![handshakes.abort_handle(), server.abort_handle()]
            }
        };
        self.lock().serving.push(Serving {
            listener,
            tasks,
            alive,
        });
        Ok(bound)
    }

    /// TLS handshakes that failed (no client certificate where one is
    /// required, one the client CA did not sign, a client that does not
    /// trust the Centre's certificate, not TLS at all, too slow), over
    /// every [`spawn_tls`](NbFeed::spawn_tls).
    pub fn failed_handshakes(&self) -> u64 {
        self.lock().failed_handshakes
    }

    /// The feed dies: every listener is shut (a connect is refused) and
    /// every open connection closed before this returns; a request in
    /// flight gets no answer. [`spawn`](NbFeed::spawn) brings it back.
    pub fn stop(&self) {
        let mut g = self.lock();
        for s in g.serving.drain(..) {
            s.alive.store(false, Ordering::SeqCst);
            let _ = socket2::SockRef::from(&*s.listener).shutdown(std::net::Shutdown::Both);
            for t in s.tasks {
                t.abort();
            }
        }
        for c in g.conns.drain(..) {
            if let Some(c) = c.upgrade() {
                let _ = socket2::SockRef::from(&*c).shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// The keys kuzet should know: `k1` and every key [`rotate`] made, in
    /// order (never a key only [`sign_with`] named).
    ///
    /// [`rotate`]: NbFeed::rotate
    /// [`sign_with`]: NbFeed::sign_with
    pub fn keys(&self) -> Vec<PublicKey> {
        self.lock()
            .keys
            .iter()
            .map(|k| PublicKey {
                id: k.id.clone(),
                public_hex: hex(k.signing.verifying_key().as_bytes()),
                valid_from_rfc3339: rfc3339(k.valid_from),
                valid_from: k.valid_from,
            })
            .collect()
    }

    /// A TOML snippet for kuzet's config: `[nbank] url` and one
    /// `[[nbank.keys]]` (id, public, valid_from) per key of
    /// [`keys`](NbFeed::keys).
    pub fn kuzet_config(&self, base_url: &str) -> String {
        let q = |s: &str| toml::Value::String(s.into()).to_string();
        let mut out = format!(
            "# The National Bank's Anti-Fraud Centre (kuzet-sim nb-feed)\n[nbank]\nurl = {}\n",
            q(base_url)
        );
        for k in self.keys() {
            out.push_str(&format!(
                "\n[[nbank.keys]]\nid = {}\npublic = {}\nvalid_from = {}\n",
                q(&k.id),
                q(&k.public_hex),
                q(&k.valid_from_rfc3339)
            ));
        }
        out
    }

    /// Appends the next feed batch (seq = last + 1), signed now with the
    /// current signer; returns its seq.
    pub fn publish(&self, entries: &[FeedEntry]) -> u64 {
        let lines: Vec<String> = entries.iter().map(FeedEntry::to_json_line).collect();
        self.append(Stream::Feed, "entries", &lines)
    }

    /// Appends the next alerts batch (their own sequence), signed now;
    /// returns its seq.
    pub fn alert(&self, alerts: &[Alert]) -> u64 {
        let lines: Vec<String> = alerts.iter().map(Alert::to_json_line).collect();
        self.append(Stream::Alerts, "alerts", &lines)
    }

    fn append(&self, stream: Stream, count: &str, lines: &[String]) -> u64 {
        let mut g = self.lock();
        let seq = g.log_mut(stream).batches.len() as u64 + 1;
        // Written by hand: serde_json's map would sort the keys, and the
        // header keeps the doc's order.
        let mut body = format!(
            "{{\"v\":1,\"seq\":{seq},\"issued_at\":\"{}\",\"{count}\":{}}}\n",
            rfc3339(now()),
            lines.len()
        );
        for l in lines {
            body.push_str(l);
            body.push('\n');
        }
        let signed = g.sign(body.into_bytes());
        g.log_mut(stream).batches.push(signed);
        seq
    }

    /// The next feed batch answered has one body byte changed after
    /// signing (its signature no longer matches); later answers are
    /// sound.
    pub fn tamper_next(&self) {
        self.tamper_next_on(Stream::Feed);
    }

    /// The next answer to `after=N` with N >= 1 is batch N again, one
    /// already applied.
    pub fn replay_next(&self) {
        self.replay_next_on(Stream::Feed);
    }

    /// The next answer to `after=N` for which batch N + 2 exists is batch
    /// N + 2 (a gap); later answers are normal.
    pub fn skip_next(&self) {
        self.skip_next_on(Stream::Feed);
    }

    /// [`tamper_next`](NbFeed::tamper_next) on either stream.
    pub fn tamper_next_on(&self, stream: Stream) {
        self.lock().log_mut(stream).tamper = true;
    }

    /// [`replay_next`](NbFeed::replay_next) on either stream.
    pub fn replay_next_on(&self, stream: Stream) {
        self.lock().log_mut(stream).replay = true;
    }

    /// [`skip_next`](NbFeed::skip_next) on either stream.
    pub fn skip_next_on(&self, stream: Stream) {
        self.lock().log_mut(stream).skip = true;
    }

    /// Every request waits `d` before it is answered (zero: none).
    pub fn stall(&self, d: Duration) {
        self.lock().stall = d;
    }

    /// A report's answer waits `d` after the report was taken (zero:
    /// none): the Centre has it, the operator does not know yet. A kuzet
    /// killed meanwhile must send it again, and the Centre takes it once.
    pub fn delay_answers(&self, d: Duration) {
        self.lock().answer_delay = d;
    }

    /// A new key (`k2`, `k3`...) valid from now becomes the signer of
    /// what is published next; returns its id. Older keys stay listed.
    pub fn rotate(&self) -> String {
        let mut g = self.lock();
        let id = format!("k{}", g.keys.len() + 1);
        let k = derive(&g.seed, &id, now());
        g.keys.push(k.clone());
        g.signer = k;
        id
    }

    /// Signs what is published from now on with key `id`: a listed one
    /// (an older key, say one the operator retired), or, for an id no
    /// [`rotate`](NbFeed::rotate) made yet, a key derived the same way
    /// but not listed, which kuzet does not know.
    ///
    /// # Panics
    /// When `id` is not 1-64 letters, digits, `-`, `_` or `.`.
    pub fn sign_with(&self, id: &str) {
        assert!(valid_key_id(id), "key id {id:?}: 1-64 of [A-Za-z0-9._-]");
        let mut g = self.lock();
        let k = match g.keys.iter().find(|k| k.id == id) {
            Some(k) => k.clone(),
            None => derive(&g.seed, id, now()),
        };
        g.signer = k;
    }

    /// Answers every `POST /v1/reports` with `status` and takes nothing
    /// (503: the Centre is down; 422: it refuses); `None`: normal.
    pub fn fail_reports(&self, status: Option<u16>) {
        self.lock().fail_reports = status;
    }

    /// The reports taken, in the order their keys were first taken.
    pub fn reports(&self) -> Vec<Report> {
        self.lock()
            .reports
            .iter()
            .map(|t| t.report.clone())
            .collect()
    }

    /// Every `POST /v1/reports` seen, in order: its idempotency key (empty
    /// when none) and the status answered.
    pub fn posts(&self) -> Vec<(String, u16)> {
        self.lock().posts.clone()
    }

    /// The GET requests seen, in order: path (`/v1/batches` or
    /// `/v1/alerts`) and `after`.
    pub fn served(&self) -> Vec<(String, u64)> {
        self.lock().served.clone()
    }

    /// From now on appends one JSON line per `POST /v1/reports` answered
    /// to `path`: time, key, status, and the report when it was taken.
    pub fn log_reports(&self, path: &std::path::Path) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.lock().log = Some(f);
        Ok(())
    }

    /// Registers an accepted connection so [`stop`](NbFeed::stop) can shut
    /// it; one accepted as the feed stops is shut at once.
    fn track(&self, s: &Arc<TcpStream>, alive: &AtomicBool) {
        let mut g = self.lock();
        if !alive.load(Ordering::SeqCst) {
            let _ = socket2::SockRef::from(&**s).shutdown(std::net::Shutdown::Both);
            return;
        }
        g.conns.retain(|w| w.strong_count() > 0);
        g.conns.push(Arc::downgrade(s));
    }
}

// --- HTTP -----------------------------------------------------------------

#[derive(Clone)]
struct App {
    feed: NbFeed,
    alive: Arc<AtomicBool>,
}

/// The value of `name` in a query string (no percent-decoding: the
/// values here are digits and key ids).
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn batches(State(a): State<App>, RawQuery(q): RawQuery) -> Response {
    pull(a, Stream::Feed, "/v1/batches", q).await
}

async fn alerts(State(a): State<App>, RawQuery(q): RawQuery) -> Response {
    pull(a, Stream::Alerts, "/v1/alerts", q).await
}

async fn pull(a: App, stream: Stream, path: &str, q: Option<String>) -> Response {
    let Some(after) = query_param(q.as_deref(), "after").and_then(|v| v.parse::<u64>().ok()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "after=N is required: the cursor, 0 before the first batch\n",
        );
    };
    let stall = {
        let mut g = a.feed.lock();
        g.served.push((path.into(), after));
        g.stall
    };
    if !stall.is_zero() {
        tokio::time::sleep(stall).await;
    }
    let answer = {
        let mut g = a.feed.lock();
        if !a.alive.load(Ordering::SeqCst) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "stopped\n");
        }
        g.log_mut(stream).answer(after)
    };
    match answer {
        None => StatusCode::NO_CONTENT.into_response(),
        Some((body, sig)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE.as_str(), "application/x-ndjson"),
                (SIGNATURE_HEADER, sig.as_str()),
            ],
            body,
        )
            .into_response(),
    }
}

async fn take_report(State(a): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let stall = a.feed.lock().stall;
    if !stall.is_zero() {
        tokio::time::sleep(stall).await;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    let (status, why, delay) = {
        let mut g = a.feed.lock();
        if !a.alive.load(Ordering::SeqCst) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "stopped\n");
        }
        let (status, why, taken) = decide(&mut g, key, &body);
        g.posts.push((key.into(), status.as_u16()));
        if let Some(f) = g.log.as_mut() {
            let line = serde_json::json!({
                "at": rfc3339(now()),
                "key": key,
                "status": status.as_u16(),
                "report": taken,
            });
            let _ = writeln!(f, "{line}");
        }
        (status, why, g.answer_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    text(status, format!("{why}\n"))
}

/// What the Centre answers a report: status, a short reason, and the
/// report when it was taken now.
fn decide(g: &mut Inner, key: &str, body: &[u8]) -> (StatusCode, String, Option<Value>) {
    if let Some(s) = g.fail_reports {
        let s = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (s, format!("told to answer {}", s.as_u16()), None);
    }
    if key.is_empty() || key.len() > MAX_KEY {
        return (
            StatusCode::BAD_REQUEST,
            format!("an Idempotency-Key header of 1-{MAX_KEY} characters is required"),
            None,
        );
    }
    if let Some(t) = g.reports.iter_mut().find(|t| t.report.key == key) {
        if t.bytes == body {
            t.report.deliveries += 1;
            return (StatusCode::OK, "already taken".into(), None);
        }
        return (
            StatusCode::CONFLICT,
            "this key was taken for a different report".into(),
            None,
        );
    }
    match check_report(body) {
        Err(why) => (StatusCode::UNPROCESSABLE_ENTITY, why, None),
        Ok((kind, v)) => {
            g.reports.push(Taken {
                report: Report {
                    key: key.into(),
                    kind,
                    body: v.clone(),
                    deliveries: 1,
                },
                bytes: body.to_vec(),
            });
            (StatusCode::CREATED, "taken".into(), Some(v))
        }
    }
}

/// What a report's field must be.
#[derive(Clone, Copy)]
enum Field {
    /// A non-empty string.
    Text,
    /// A string, when present.
    OptText,
    /// An RFC 3339 UTC time.
    Time,
    /// E.164.
    Number,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A non-negative integer.
    Count,
    /// An array of strings.
    Texts,
    /// An array of `{number, case, calls}`.
    Hits,
}

const DECISION: &[(&str, Field)] = &[
    ("alert", Field::Text),
    ("number", Field::Number),
    ("outcome", Field::OneOf(&["confirmed", "not_confirmed"])),
    ("decided_at", Field::Time),
    ("bss_ref", Field::OptText),
    ("note", Field::OptText),
];
const FRAUD_NUMBER: &[(&str, Field)] = &[
    ("number", Field::Number),
    ("basis", Field::OneOf(&["asserted", "listed"])),
    ("incident", Field::Text),
    ("first_seen", Field::Time),
    ("last_seen", Field::Time),
    ("blocked", Field::Count),
    ("flagged", Field::Count),
    ("rules", Field::Texts),
];
const POTENTIAL_VICTIM: &[(&str, Field)] = &[
    ("number", Field::Number),
    ("source", Field::Number),
    ("at", Field::Time),
    ("incident", Field::Text),
    ("category", Field::Text),
];
const FEEDBACK: &[(&str, Field)] = &[
    ("from", Field::Time),
    ("to", Field::Time),
    ("hits", Field::Hits),
];

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| !d.is_empty() && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_digit()))
}

fn is_range(s: &str) -> bool {
    s.strip_suffix('*').is_some_and(is_e164)
}

fn check_field(v: Option<&Value>, f: Field) -> Result<(), &'static str> {
    let s = v.and_then(Value::as_str);
    let ok = match f {
        Field::OptText => v.is_none() || s.is_some(),
        Field::Text => s.is_some_and(|s| !s.is_empty()),
        Field::Time => s.is_some_and(|s| parse_time(s).is_ok()),
        Field::Number => s.is_some_and(is_e164),
        Field::OneOf(allowed) => s.is_some_and(|s| allowed.contains(&s)),
        Field::Count => v.and_then(Value::as_u64).is_some(),
        Field::Texts => v
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().all(Value::is_string)),
        Field::Hits => v.and_then(Value::as_array).is_some_and(|a| {
            a.iter().all(|h| {
                h.get("number")
                    .and_then(Value::as_str)
                    .is_some_and(|n| is_e164(n) || is_range(n))
                    && h.get("case")
                        .is_none_or(|c| c.as_str().is_some_and(|c| !c.is_empty()))
                    && h.get("calls").and_then(Value::as_u64).is_some()
            })
        }),
    };
    if ok {
        return Ok(());
    }
    Err(match f {
        Field::Text => "a non-empty string",
        Field::OptText => "a string",
        Field::Time => "an RFC 3339 UTC time",
        Field::Number => "an E.164 number",
        Field::OneOf(_) => "one of the values the doc lists",
        Field::Count => "a non-negative integer",
        Field::Texts => "an array of strings",
        Field::Hits => "an array of {number, calls, case (when known)}",
    })
}

/// Checks a report against docs/nb-feed.md: its kind and what it holds.
pub fn check_report(body: &[u8]) -> Result<(String, Value), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("a report is a JSON object".into());
    }
    if v.get("v").and_then(Value::as_u64) != Some(1) {
        return Err("\"v\":1 is required".into());
    }
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    let fields = match kind {
        "decision" => DECISION,
        "fraud_number" => FRAUD_NUMBER,
        "potential_victim" => POTENTIAL_VICTIM,
        "feedback" => FEEDBACK,
        _ => {
            return Err("kind must be decision, fraud_number, potential_victim or feedback".into())
        }
    };
    for (name, f) in fields {
        check_field(v.get(*name), *f).map_err(|want| format!("{kind}: {name} must be {want}"))?;
    }
    Ok((kind.into(), v))
}

// --- the accept loop ------------------------------------------------------

/// The feed's listener: every connection it accepts is tracked so that
/// [`NbFeed::stop`] can shut it.
struct Accept {
    listener: Arc<TcpListener>,
    feed: NbFeed,
    alive: Arc<AtomicBool>,
}

impl axum::serve::Listener for Accept {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    let s = Arc::new(s);
                    self.feed.track(&s, &self.alive);
                    return (Conn(s), peer);
                }
                // A shut listener fails every accept until the task is
                // aborted; other errors (out of descriptors) pass.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Takes every connection `accept` admits through the TLS handshake,
/// each in a task of its own (a slow client holds up no other), and hands
/// those that complete it to [`AcceptTls`]. A failed handshake is counted
/// and its connection dropped. A stop aborts this loop and shuts the TCP
/// streams under handshakes still running.
async fn handshakes(
    mut accept: Accept,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<Conn>, SocketAddr)>,
) {
    use axum::serve::Listener;
    loop {
        let (conn, peer) = accept.accept().await;
        let (acceptor, tx, feed) = (acceptor.clone(), tx.clone(), accept.feed.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                Ok(Ok(s)) => {
                    let _ = tx.send((s, peer)).await;
                }
                _ => feed.lock().failed_handshakes += 1,
            }
        });
    }
}

/// The TLS feed's listener for axum: the connections [`handshakes`] has
/// taken through the handshake.
struct AcceptTls {
    rx: mpsc::Receiver<(TlsStream<Conn>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for AcceptTls {
    type Io = TlsStream<Conn>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsStream<Conn>, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The handshakes' loop is gone: the feed stopped, and this
            // task is aborted next.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// An accepted connection, shared with the registry [`NbFeed::stop`]
/// shuts (a `TcpStream` reads and writes through `&self`); over TLS, the
/// stream under the TLS session, so a stop shuts that too.
struct Conn(Arc<TcpStream>);

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match r {
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

// --- the control API (`kuzet-sim nb-feed`) ---------------------------------

/// Reads JSON lines with `read`, blank lines skipped; an error names its
/// line (`line N: why`).
pub fn parse_lines<T>(
    text: &str,
    read: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| read(l).map_err(|why| format!("line {}: {why}", i + 1)))
        .collect()
}

#[derive(Clone)]
struct Control {
    feed: NbFeed,
    addr: SocketAddr,
    tls: Option<TlsServer>,
}

/// Serves the control API on `listener` for `feed`, which serves (and
/// comes back, after a stop) on `feed_addr`: `POST /control/publish`,
/// `/control/alert`, `/control/tamper-next`, `/control/replay-next`,
/// `/control/skip-next` (these three take `?stream=alerts`),
/// `/control/stall?ms=N`, `/control/rotate`, `/control/sign-with?key=ID`,
/// `/control/fail-reports[?status=N]`, `/control/stop`, `/control/start`;
/// `GET /control/reports`, `/control/served`, `/control/config`. With
/// `tls`, a start serves HTTPS with it, as
/// [`NbFeed::spawn_tls`] does, and the config names an `https://` URL. It
/// answers anyone who reaches it: bind it to a loopback address.
pub async fn serve_control(
    listener: TcpListener,
    feed: NbFeed,
    feed_addr: SocketAddr,
    tls: Option<TlsServer>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/control/publish", post(c_publish))
        .route("/control/alert", post(c_alert))
        .route("/control/tamper-next", post(c_tamper))
        .route("/control/replay-next", post(c_replay))
        .route("/control/skip-next", post(c_skip))
        .route("/control/stall", post(c_stall))
        .route("/control/rotate", post(c_rotate))
        .route("/control/sign-with", post(c_sign_with))
        .route("/control/fail-reports", post(c_fail_reports))
        .route("/control/stop", post(c_stop))
        .route("/control/start", post(c_start))
        .route("/control/reports", get(c_reports))
        .route("/control/served", get(c_served))
        .route("/control/config", get(c_config))
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(Control {
            feed,
            addr: feed_addr,
            tls,
        });
    axum::serve(listener, app).await
}

fn ok() -> Response {
    text(StatusCode::OK, "ok\n")
}

fn bad(why: impl std::fmt::Display) -> Response {
    text(StatusCode::BAD_REQUEST, format!("{why}\n"))
}

fn json(v: &impl Serialize) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    )
        .into_response()
}

/// Applies `fault` to the stream `?stream=` names (the feed when none).
fn on_stream(q: Option<String>, fault: impl FnOnce(Stream)) -> Response {
    match query_param(q.as_deref(), "stream") {
        None | Some("feed") => fault(Stream::Feed),
        Some("alerts") => fault(Stream::Alerts),
        Some(_) => return bad("stream is feed or alerts"),
    }
    ok()
}

/// The body's JSON lines, each read with `read`.
fn lines_of<T>(body: &Bytes, read: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    parse_lines(text, read)
}

async fn c_publish(State(c): State<Control>, body: Bytes) -> Response {
    match lines_of(&body, FeedEntry::from_json_line) {
        Ok(e) => text(StatusCode::OK, format!("{}\n", c.feed.publish(&e))),
        Err(why) => bad(why),
    }
}

async fn c_alert(State(c): State<Control>, body: Bytes) -> Response {
    match lines_of(&body, Alert::from_json_line) {
        Ok(a) => text(StatusCode::OK, format!("{}\n", c.feed.alert(&a))),
        Err(why) => bad(why),
    }
}

async fn c_tamper(State(c): State<Control>, RawQuery(q): RawQuery) -> Response {
    on_stream(q, |s| c.feed.tamper_next_on(s))
}

async fn c_replay(State(c): State<Control>, RawQuery(q): RawQuery) -> Response {
    on_stream(q, |s| c.feed.replay_next_on(s))
}

async fn c_skip(State(c): State<Control>, RawQuery(q): RawQuery) -> Response {
    on_stream(q, |s| c.feed.skip_next_on(s))
}

async fn c_stall(State(c): State<Control>, RawQuery(q): RawQuery) -> Response {
    match query_param(q.as_deref(), "ms").and_then(|v| v.parse::<u64>().ok()) {
        Some(ms) => {
            c.feed.stall(Duration::from_millis(ms));
            ok()
        }
        None => bad("ms=N is required (0: no stall)"),
    }
}

async fn c_rotate(State(c): State<Control>) -> Response {
    text(StatusCode::OK, format!("{}\n", c.feed.rotate()))
}

async fn c_sign_with(State(c): State<Control>, RawQuery(q): RawQuery) -> Response {
    match query_param(q.as_deref(), "key") {
        Some(id) if valid_key_id(id) => {
            c.feed.sign_with(id);
            ok()
        }
        _ => bad("key=ID is required: 1-64 letters, digits, -, _ or ."),
    }
}

async fn c_fail_reports(State(c): State<Control>, RawQuery(q): RawQuery) -> Response {
    match query_param(q.as_deref(), "status") {
        None => {
            c.feed.fail_reports(None);
            ok()
        }
        Some(v) => match v.parse::<u16>().ok().filter(|s| (100..=599).contains(s)) {
            Some(s) => {
                c.feed.fail_reports(Some(s));
                ok()
            }
            None => bad("status is an HTTP status, 100-599 (leave it out: normal)"),
        },
    }
}

async fn c_stop(State(c): State<Control>) -> Response {
    c.feed.stop();
    ok()
}

async fn c_start(State(c): State<Control>) -> Response {
    let started = match c.tls {
        None => c.feed.spawn(c.addr).await,
        Some(tls) => c.feed.spawn_tls(c.addr, tls).await,
    };
    match started {
        Ok(a) => text(StatusCode::OK, format!("listening on {a}\n")),
        Err(e) => text(StatusCode::CONFLICT, format!("{}: {e}\n", c.addr)),
    }
}

async fn c_reports(State(c): State<Control>) -> Response {
    json(&c.feed.reports())
}

async fn c_served(State(c): State<Control>) -> Response {
    let v: Vec<Value> = c
        .feed
        .served()
        .into_iter()
        .map(|(path, after)| serde_json::json!({"path": path, "after": after}))
        .collect();
    json(&v)
}

async fn c_config(State(c): State<Control>) -> Response {
    text(
        StatusCode::OK,
        c.feed.kuzet_config(&base_url(c.addr, c.tls.is_some())),
    )
}

/// The feed's base URL on `addr`: `https://` over TLS, `http://`
/// otherwise.
pub fn base_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

// --- time and hex ---------------------------------------------------------

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as RFC 3339 UTC with `Z` (before 1970 reads as 1970).
pub fn rfc3339(t: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 3339 UTC (`...Z`) as Unix seconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339(s).map_err(|e| format!("{s:?}: {e}"))?;
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .map_err(|_| format!("{s:?} is before 1970"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1.1 answer: status, headers (lowercase names), body.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// One request on its own connection (`Connection: close`).
    async fn http(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        let s = TcpStream::connect(addr).await?;
        exchange(s, addr, method, path, headers, body).await
    }

    /// One request on `s`, which the answer closes (`Connection: close`).
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        parse_answer(&raw)
    }

    fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
        let bad = |w: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, w.to_string());
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[end + 4..].to_vec();
        if let Some(n) = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
        {
            body.truncate(n);
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn get(addr: SocketAddr, path: &str) -> Answer {
        http(addr, "GET", path, &[], b"").await.unwrap()
    }

    async fn report(addr: SocketAddr, key: Option<&str>, body: &str) -> u16 {
        let h: Vec<(&str, &str)> = key
            .map(|k| vec![("Idempotency-Key", k), ("Content-Type", "application/json")])
            .unwrap_or_default();
        http(addr, "POST", "/v1/reports", &h, body.as_bytes())
            .await
            .unwrap()
            .status
    }

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        assert_eq!(s.len(), 2 * N, "{s}");
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// Verifies an answer's signature against `keys` as kuzet would; the
    /// signing key's id.
    fn verify(a: &Answer, keys: &[PublicKey]) -> Result<String, String> {
        let h = a.header(SIGNATURE_HEADER).ok_or("no signature header")?;
        let rest = h.strip_prefix("v1 key=").ok_or("not v1 key=")?;
        let (id, sig) = rest.split_once(" sig=").ok_or("no sig=")?;
        let key = keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(format!("unknown key {id}"))?;
        let public = VerifyingKey::from_bytes(&unhex::<32>(&key.public_hex)).unwrap();
        public
            .verify(&a.body, &Signature::from_bytes(&unhex::<64>(sig)))
            .map_err(|_| "bad signature".to_string())?;
        Ok(id.to_string())
    }

    /// The header line and the others, each as JSON.
    fn lines(a: &Answer) -> (Value, Vec<Value>) {
        let text = std::str::from_utf8(&a.body).unwrap();
        assert!(text.ends_with('\n'));
        let mut it = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap());
        let head = it.next().unwrap();
        (head, it.collect())
    }

    fn seq(a: &Answer) -> u64 {
        assert_eq!(a.status, 200);
        lines(a).0["seq"].as_u64().unwrap()
    }

    async fn started(seed: &str) -> (NbFeed, SocketAddr) {
        let f = NbFeed::new(seed);
        let addr = f.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        (f, addr)
    }

    const EXPIRES: i64 = 1_796_464_680; // 2026-12-05T09:58:00Z

    /// A CA, a certificate for 127.0.0.1 (`server`) and a client
    /// certificate (`client`) it signed ([`crate::pki`]), in a folder of
    /// their own (removed on drop).
    struct Pki {
        dir: std::path::PathBuf,
        ca: crate::pki::Pki,
        server: crate::pki::Issued,
        client: crate::pki::Issued,
    }

    impl Pki {
        fn new(tag: &str) -> Pki {
            let dir = std::env::temp_dir().join(format!(
                "kuzet-sim-{tag}-{}-{}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let ca = crate::pki::Pki::new(&dir, tag);
            let (server, client) = (ca.server("server"), ca.client("client"));
            Pki {
                dir,
                ca,
                server,
                client,
            }
        }

        fn read(&self, name: &str) -> Vec<u8> {
            match name {
                "ca.pem" => std::fs::read(self.ca.ca()).unwrap(),
                "server.pem" => self.server.cert_pem(),
                "server.key" => self.server.key_pem(),
                "client.pem" => self.client.cert_pem(),
                "client.key" => self.client.key_pem(),
                other => std::fs::read(self.dir.join(other)).unwrap(),
            }
        }

        /// The Centre's side: the server certificate, client certificates
        /// required from this CA.
        fn server(&self) -> TlsServer {
            TlsServer {
                cert_pem: self.read("server.pem"),
                key_pem: self.read("server.key"),
                client_ca_pem: Some(self.read("ca.pem")),
            }
        }

        /// A client trusting this CA, presenting the client certificate
        /// of `cert_of` (this PKI or another) or none.
        fn client(&self, cert_of: Option<&Pki>) -> Arc<rustls::ClientConfig> {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&self.read("ca.pem")) {
                roots.add(c.unwrap()).unwrap();
            }
            let b = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
            Arc::new(match cert_of {
                Some(p) => {
                    let chain = CertificateDer::pem_slice_iter(&p.read("client.pem"))
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap();
                    let key = PrivateKeyDer::from_pem_slice(&p.read("client.key")).unwrap();
                    b.with_client_auth_cert(chain, key).unwrap()
                }
                None => b.with_no_client_auth(),
            })
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A TLS session to the feed at `addr` (a 127.0.0.1 name) as `client`.
    async fn tls_connect(
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
    }

    /// `GET path` over HTTPS as `client`.
    async fn https_get(
        addr: SocketAddr,
        path: &str,
        client: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Answer> {
        let s = tls_connect(addr, client).await?;
        exchange(s, addr, "GET", path, &[], b"").await
    }

    #[tokio::test]
    async fn over_tls_the_feed_answers_a_client_with_its_certificate_and_no_one_else() {
        let pki = Pki::new("tls");
        let f = NbFeed::new("tls");
        let addr = f
            .spawn_tls("127.0.0.1:0".parse().unwrap(), pki.server())
            .await
            .unwrap();
        f.publish(&[FeedEntry::add("+77011234567", "x", EXPIRES)]);
        let a = https_get(addr, "/v1/batches?after=0", pki.client(Some(&pki)))
            .await
            .unwrap();
        assert_eq!(seq(&a), 1);
        assert_eq!(verify(&a, &f.keys()), Ok("k1".to_string()));
        assert_eq!(f.failed_handshakes(), 0);

        // No client certificate, one another CA signed, plain HTTP: each
        // refused at the handshake, none reaches the feed.
        let other = Pki::new("tls-other");
        for (what, client) in [
            ("no certificate", pki.client(None)),
            ("another CA's certificate", pki.client(Some(&other))),
        ] {
            let r = https_get(addr, "/v1/batches?after=0", client).await;
            assert!(r.is_err(), "{what}: answered {:?}", r.map(|a| a.status));
        }
        assert!(http(addr, "GET", "/v1/batches?after=0", &[], b"")
            .await
            .is_err());
        let t = std::time::Instant::now();
        while f.failed_handshakes() < 3 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{}",
                f.failed_handshakes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.failed_handshakes(), 3);
        assert_eq!(f.served().len(), 1, "{:?}", f.served());

        // A stop closes a TLS connection kept open, and the feed comes
        // back over TLS on the same address.
        let mut kept = tls_connect(addr, pki.client(Some(&pki))).await.unwrap();
        let req = format!("GET /v1/batches?after=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        kept.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        f.stop();
        let _ = kept.write_all(req.as_bytes()).await;
        let mut rest = Vec::new();
        let closed = kept.read_to_end(&mut rest).await;
        assert!(
            closed.is_err() || rest.is_empty(),
            "an answer after the stop: {}",
            String::from_utf8_lossy(&rest)
        );
        assert_eq!(f.spawn_tls(addr, pki.server()).await.unwrap(), addr);
        let a = https_get(addr, "/v1/batches?after=0", pki.client(Some(&pki)))
            .await
            .unwrap();
        assert_eq!(seq(&a), 1);
        f.stop();
    }

    #[test]
    fn a_tls_config_that_does_not_make_sense_is_refused_at_once() {
        let pki = Pki::new("tls-bad");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let f = NbFeed::new("tls-bad");
        for (what, tls, why) in [
            (
                "a key for another certificate",
                TlsServer {
                    key_pem: pki.read("client.key"),
                    ..pki.server()
                },
                "the certificate and key: ",
            ),
            (
                "no client CA",
                TlsServer {
                    client_ca_pem: Some(b"not a PEM".to_vec()),
                    ..pki.server()
                },
                "the client CA: no CERTIFICATE",
            ),
            (
                "no certificate",
                TlsServer {
                    cert_pem: pki.read("server.key"),
                    ..pki.server()
                },
                "the certificate: no CERTIFICATE",
            ),
        ] {
            let e = rt.block_on(f.spawn_tls(lo, tls)).unwrap_err();
            assert!(e.to_string().starts_with(why), "{what}: {e}");
        }
    }

    #[tokio::test]
    async fn a_published_batch_is_signed_over_its_bytes_and_reads_as_the_doc_shows() {
        let (f, addr) = started("round-trip").await;
        assert_eq!(get(addr, "/v1/batches?after=0").await.status, 204);
        let mut add = FeedEntry::add("+77011234567", "bank-impersonation", EXPIRES);
        add.reported_at = EXPIRES - 7 * 86_400;
        add.case = "AFC-2026-118734".into();
        assert_eq!(f.publish(&[add, FeedEntry::withdraw("+7702555*")]), 1);

        let a = get(addr, "/v1/batches?after=0").await;
        assert_eq!(a.status, 200);
        assert_eq!(verify(&a, &f.keys()), Ok("k1".to_string()));
        let sig = a.header(SIGNATURE_HEADER).unwrap();
        assert_eq!(sig.len(), "v1 key=k1 sig=".len() + 128, "{sig}");
        let (head, entries) = lines(&a);
        assert_eq!(head["v"], 1);
        assert_eq!(head["seq"], 1);
        assert_eq!(head["entries"], 2);
        let issued = head["issued_at"].as_str().unwrap();
        assert!(
            issued.ends_with('Z') && parse_time(issued).is_ok(),
            "{issued}"
        );
        let text = std::str::from_utf8(&a.body).unwrap();
        assert!(
            text.starts_with(r#"{"v":1,"seq":1,"issued_at":""#),
            "the doc's key order: {text}"
        );
        assert_eq!(
            text.lines().nth(1).unwrap(),
            r#"{"action":"add","number":"+77011234567","category":"bank-impersonation","confidence":90,"reported_at":"2026-11-28T09:58:00Z","expires_at":"2026-12-05T09:58:00Z","case":"AFC-2026-118734"}"#
        );
        assert_eq!(
            entries[1],
            serde_json::json!({"action":"withdraw","range":"+7702555*","case":"AFC-SIM-7702555"})
        );
        // Every line reads back as the entry it was.
        let back = FeedEntry::from_json_line(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(back.target, "+77011234567");
        assert_eq!(back.expires_at, EXPIRES);
        assert_eq!(get(addr, "/v1/batches?after=1").await.status, 204);

        // Alerts: their own sequence, the same keys.
        assert_eq!(get(addr, "/v1/alerts?after=0").await.status, 204);
        let mut al = Alert::new("AFC-A-2026-0042", "+77011234567", "gsm-gateway");
        al.reported_at = EXPIRES;
        assert_eq!(f.alert(&[al]), 1);
        let a = get(addr, "/v1/alerts?after=0").await;
        assert_eq!(verify(&a, &f.keys()), Ok("k1".to_string()));
        let (head, alerts) = lines(&a);
        assert_eq!(head["alerts"], 1);
        assert_eq!(alerts[0]["id"], "AFC-A-2026-0042");
        assert_eq!(alerts[0]["reported_at"], "2026-12-05T09:58:00Z");
        assert_eq!(get(addr, "/v1/batches?after=0").await.status, 200);
        assert_eq!(get(addr, "/v1/batches").await.status, 400);
        assert_eq!(
            f.served(),
            [
                ("/v1/batches".to_string(), 0),
                ("/v1/batches".to_string(), 0),
                ("/v1/batches".to_string(), 1),
                ("/v1/alerts".to_string(), 0),
                ("/v1/alerts".to_string(), 0),
                ("/v1/batches".to_string(), 0),
            ]
        );
        f.stop();
    }

    #[tokio::test]
    async fn the_same_seed_gives_the_same_keys_and_a_config_kuzet_can_read() {
        let a = NbFeed::new("demo");
        assert_eq!(a.keys(), NbFeed::new("demo").keys());
        assert_ne!(a.keys(), NbFeed::new("other").keys());
        let k = &a.keys()[0];
        let want = SigningKey::from_bytes(&Sha256::digest("kuzet-sim nb-feed demo k1").into());
        assert_eq!(k.verifying_key(), want.verifying_key());
        assert_eq!(k.valid_from_rfc3339, "2020-01-01T00:00:00Z");
        a.rotate();
        let cfg: toml::Value = toml::from_str(&a.kuzet_config("http://127.0.0.1:8470")).unwrap();
        assert_eq!(cfg["nbank"]["url"].as_str(), Some("http://127.0.0.1:8470"));
        let keys = cfg["nbank"]["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["id"].as_str(), Some("k1"));
        assert_eq!(keys[0]["public"].as_str(), Some(k.public_hex.as_str()));
        assert_eq!(keys[0]["valid_from"].as_str(), Some("2020-01-01T00:00:00Z"));
        assert_eq!(keys[1]["id"].as_str(), Some("k2"));
    }

    #[tokio::test]
    async fn tamper_breaks_one_answer_and_keys_rotate() {
        let (f, addr) = started("tamper").await;
        f.publish(&[FeedEntry::add("+77011234567", "x", EXPIRES)]);
        f.tamper_next();
        let a = get(addr, "/v1/batches?after=0").await;
        assert_eq!(verify(&a, &f.keys()), Err("bad signature".to_string()));
        let a = get(addr, "/v1/batches?after=0").await;
        assert_eq!(verify(&a, &f.keys()), Ok("k1".to_string()));

        // A tamper waits for a batch: a 204 does not use it up.
        f.tamper_next_on(Stream::Alerts);
        assert_eq!(get(addr, "/v1/alerts?after=0").await.status, 204);
        f.alert(&[Alert::new("A-1", "+77011234567", "gsm-gateway")]);
        let a = get(addr, "/v1/alerts?after=0").await;
        assert_eq!(verify(&a, &f.keys()), Err("bad signature".to_string()));

        assert_eq!(f.rotate(), "k2");
        f.publish(&[]);
        let a = get(addr, "/v1/batches?after=1").await;
        assert_eq!(lines(&a).0["entries"], 0);
        assert_eq!(verify(&a, &f.keys()), Ok("k2".to_string()));
        // Batches keep the signature they were published with.
        let a = get(addr, "/v1/batches?after=0").await;
        assert_eq!(verify(&a, &f.keys()), Ok("k1".to_string()));
        f.sign_with("k1");
        f.publish(&[]);
        let a = get(addr, "/v1/batches?after=2").await;
        assert_eq!(verify(&a, &f.keys()), Ok("k1".to_string()));
        // A key no rotation made is one kuzet does not know.
        f.sign_with("k9");
        f.publish(&[]);
        let a = get(addr, "/v1/batches?after=3").await;
        assert_eq!(verify(&a, &f.keys()), Err("unknown key k9".to_string()));
        assert_eq!(f.keys().len(), 2);
        f.stop();
    }

    #[tokio::test]
    async fn replay_and_skip_answer_the_seq_they_promise_once() {
        let (f, addr) = started("sequence").await;
        for _ in 0..4 {
            f.publish(&[]);
        }
        // A replay waits for a cursor of 1 or more.
        f.replay_next();
        assert_eq!(seq(&get(addr, "/v1/batches?after=0").await), 1);
        assert_eq!(seq(&get(addr, "/v1/batches?after=1").await), 1);
        assert_eq!(seq(&get(addr, "/v1/batches?after=1").await), 2);
        // A skip waits for a cursor with a batch two ahead of it.
        f.skip_next();
        assert_eq!(get(addr, "/v1/batches?after=4").await.status, 204);
        assert_eq!(seq(&get(addr, "/v1/batches?after=3").await), 4);
        assert_eq!(seq(&get(addr, "/v1/batches?after=1").await), 3);
        assert_eq!(seq(&get(addr, "/v1/batches?after=1").await), 2);
        // Alerts have their own faults.
        f.alert(&[]);
        f.alert(&[]);
        f.replay_next_on(Stream::Alerts);
        assert_eq!(seq(&get(addr, "/v1/batches?after=1").await), 2);
        assert_eq!(seq(&get(addr, "/v1/alerts?after=1").await), 1);
        f.skip_next_on(Stream::Alerts);
        assert_eq!(seq(&get(addr, "/v1/alerts?after=0").await), 2);
        let after: Vec<u64> = f.served().iter().map(|(_, a)| *a).collect();
        assert_eq!(after, [0, 1, 1, 4, 3, 1, 1, 1, 1, 0]);
        f.stop();
    }

    const DECISION_REPORT: &str = r#"{"v":1,"kind":"decision","alert":"AFC-A-2026-0042","number":"+77011234567","outcome":"confirmed","decided_at":"2026-12-07T11:20:00Z","bss_ref":"BSS-889123","note":"SIM box"}"#;

    #[tokio::test]
    async fn reports_are_taken_once_per_key() {
        let (f, addr) = started("reports").await;
        assert_eq!(
            report(addr, Some("s/decision/A-1"), DECISION_REPORT).await,
            201
        );
        assert_eq!(
            report(addr, Some("s/decision/A-1"), DECISION_REPORT).await,
            200
        );
        let other = DECISION_REPORT.replace("confirmed", "not_confirmed");
        assert_eq!(report(addr, Some("s/decision/A-1"), &other).await, 409);
        assert_eq!(report(addr, None, DECISION_REPORT).await, 400);
        let r = f.reports();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].key, "s/decision/A-1");
        assert_eq!(r[0].kind, "decision");
        assert_eq!(r[0].deliveries, 2);
        assert_eq!(r[0].body["bss_ref"], "BSS-889123");

        for (bad, why) in [
            ("not json", "not JSON"),
            (r#"{"v":2,"kind":"decision"}"#, "\"v\":1"),
            (r#"{"v":1,"kind":"verdict"}"#, "kind must be"),
            (
                &DECISION_REPORT.replace(r#""outcome":"confirmed","#, ""),
                "outcome",
            ),
            (
                &DECISION_REPORT.replace("+77011234567", "87011234567"),
                "number",
            ),
            (
                &DECISION_REPORT.replace("2026-12-07T11:20:00Z", "yesterday"),
                "decided_at",
            ),
            (
                r#"{"v":1,"kind":"fraud_number","number":"+77015550101","basis":"claimed","incident":"i/1","first_seen":"2026-12-05T10:00:00Z","last_seen":"2026-12-05T10:00:00Z","blocked":1,"flagged":0,"rules":[]}"#,
                "basis",
            ),
        ] {
            let a = http(
                addr,
                "POST",
                "/v1/reports",
                &[("Idempotency-Key", "s/bad")],
                bad.as_bytes(),
            )
            .await
            .unwrap();
            let text = String::from_utf8_lossy(&a.body);
            assert_eq!(a.status, 422, "{bad}: {text}");
            assert!(text.contains(why), "{bad}: {text}");
        }
        for good in [
            r#"{"v":1,"kind":"fraud_number","number":"+77015550101","basis":"asserted","incident":"3f2a/17","first_seen":"2026-12-05T10:00:00Z","last_seen":"2026-12-05T10:05:00Z","blocked":12,"flagged":3,"rules":["velocity_1m"]}"#,
            r#"{"v":1,"kind":"potential_victim","number":"+77029990001","source":"+77015550101","at":"2026-12-05T10:01:12Z","incident":"3f2a/17","category":"velocity_1m"}"#,
            r#"{"v":1,"kind":"feedback","from":"2026-12-05T10:00:00Z","to":"2026-12-05T10:05:00Z","hits":[{"number":"+77011234567","case":"AFC-2026-118734","calls":4},{"number":"+7702555*","case":"AFC-2026-118001","calls":1}]}"#,
        ] {
            let kind = serde_json::from_str::<Value>(good).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(
                report(addr, Some(&format!("s/{kind}")), good).await,
                201,
                "{good}"
            );
        }
        let big = format!(r#"{{"v":1,"pad":"{}"}}"#, "x".repeat(MAX_REPORT));
        assert_eq!(report(addr, Some("s/big"), &big).await, 413);

        // Down, then refusing: nothing is taken, every POST is seen.
        f.fail_reports(Some(503));
        assert_eq!(
            report(addr, Some("s/decision/A-2"), DECISION_REPORT).await,
            503
        );
        f.fail_reports(Some(422));
        assert_eq!(
            report(addr, Some("s/decision/A-2"), DECISION_REPORT).await,
            422
        );
        f.fail_reports(None);
        assert_eq!(
            report(addr, Some("s/decision/A-2"), DECISION_REPORT).await,
            201
        );
        assert_eq!(f.reports().len(), 5);
        let posts = f.posts();
        assert_eq!(
            posts[posts.len() - 3..],
            [
                ("s/decision/A-2".to_string(), 503),
                ("s/decision/A-2".to_string(), 422),
                ("s/decision/A-2".to_string(), 201),
            ]
        );
        f.stop();
    }

    #[tokio::test]
    async fn a_stopped_feed_refuses_and_closes_and_comes_back() {
        let (f, addr) = started("stop").await;
        f.publish(&[]);
        // A connection opened before the stop, kept alive.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /v1/batches?after=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        kept.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        f.stop();
        let e = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        let _ = kept.write_all(req.as_bytes()).await;
        let mut rest = Vec::new();
        let closed = kept.read_to_end(&mut rest).await;
        assert!(
            closed.is_err() || rest.is_empty(),
            "an answer after the stop: {}",
            String::from_utf8_lossy(&rest)
        );

        // The feed comes back on the same address with what it held.
        assert_eq!(f.spawn(addr).await.unwrap(), addr);
        assert_eq!(seq(&get(addr, "/v1/batches?after=0").await), 1);

        // A request stalled across a stop gets no answer.
        f.stall(Duration::from_millis(300));
        let t = std::time::Instant::now();
        let stalled = tokio::spawn(http(addr, "GET", "/v1/batches?after=0", &[], b""));
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.stop();
        assert!(stalled.await.unwrap().is_err());
        f.stall(Duration::ZERO);
        f.spawn(addr).await.unwrap();
        f.stall(Duration::from_millis(200));
        let t2 = std::time::Instant::now();
        assert_eq!(get(addr, "/v1/batches?after=1").await.status, 204);
        assert!(t2.elapsed() >= Duration::from_millis(200));
        assert!(t.elapsed() >= Duration::from_millis(300));
        f.stop();
    }

    /// A control API call: status and body.
    async fn control(ctl: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let a = http(ctl, method, path, &[], body.as_bytes()).await.unwrap();
        (a.status, String::from_utf8(a.body).unwrap())
    }

    #[tokio::test]
    async fn the_control_api_drives_the_feed() {
        let (f, addr) = started("control").await;
        let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ctl = cl.local_addr().unwrap();
        tokio::spawn(serve_control(cl, f.clone(), addr, None));
        let add = r#"{"action":"add","number":"+77011234567","category":"bank-impersonation","confidence":90,"reported_at":"2026-12-05T09:58:00Z","expires_at":"2026-12-12T09:58:00Z","case":"AFC-2026-118734"}"#;
        let entries = format!("{add}\n\n{add}\n");
        assert_eq!(
            control(ctl, "POST", "/control/publish", &entries).await,
            (200, "1\n".into())
        );
        let a = get(addr, "/v1/batches?after=0").await;
        assert_eq!(lines(&a).0["entries"], 2);
        let (status, why) =
            control(ctl, "POST", "/control/publish", "{\"action\":\"add\"}\n").await;
        assert_eq!(status, 400);
        assert!(why.starts_with("line 1: "), "{why}");

        let alert = r#"{"id":"A-1","number":"+77011234567","category":"gsm-gateway","reported_at":"2026-12-05T09:30:00Z"}"#;
        assert_eq!(
            control(ctl, "POST", "/control/alert", alert).await,
            (200, "1\n".into())
        );
        assert_eq!(
            control(ctl, "POST", "/control/tamper-next?stream=alerts", "")
                .await
                .0,
            200
        );
        let a = get(addr, "/v1/alerts?after=0").await;
        assert_eq!(verify(&a, &f.keys()), Err("bad signature".to_string()));
        assert_eq!(
            control(ctl, "POST", "/control/skip-next?stream=both", "")
                .await
                .0,
            400
        );

        assert_eq!(
            control(ctl, "POST", "/control/rotate", "").await,
            (200, "k2\n".into())
        );
        assert!(control(ctl, "GET", "/control/config", "")
            .await
            .1
            .contains("id = \"k2\""));
        assert_eq!(
            control(ctl, "POST", "/control/sign-with?key=k1", "")
                .await
                .0,
            200
        );
        assert_eq!(
            control(ctl, "POST", "/control/sign-with?key=k%201", "")
                .await
                .0,
            400
        );
        assert_eq!(control(ctl, "POST", "/control/stall?ms=0", "").await.0, 200);

        assert_eq!(
            control(ctl, "POST", "/control/fail-reports?status=503", "")
                .await
                .0,
            200
        );
        assert_eq!(report(addr, Some("s/d/1"), DECISION_REPORT).await, 503);
        assert_eq!(
            control(ctl, "POST", "/control/fail-reports", "").await.0,
            200
        );
        assert_eq!(report(addr, Some("s/d/1"), DECISION_REPORT).await, 201);
        let (status, reports) = control(ctl, "GET", "/control/reports", "").await;
        assert_eq!(status, 200);
        let reports: Value = serde_json::from_str(&reports).unwrap();
        assert_eq!(reports[0]["key"], "s/d/1");
        assert_eq!(reports[0]["deliveries"], 1);
        let (_, served) = control(ctl, "GET", "/control/served", "").await;
        let served: Value = serde_json::from_str(&served).unwrap();
        assert_eq!(
            served[0],
            serde_json::json!({"path": "/v1/batches", "after": 0})
        );

        assert_eq!(control(ctl, "POST", "/control/stop", "").await.0, 200);
        assert!(TcpStream::connect(addr).await.is_err());
        assert_eq!(control(ctl, "POST", "/control/start", "").await.0, 200);
        assert_eq!(get(addr, "/v1/batches?after=1").await.status, 204);
        assert_eq!(control(ctl, "POST", "/control/start", "").await.0, 409);
        f.stop();
    }

    #[test]
    fn entry_and_alert_lines_read_back() {
        let e = FeedEntry::add("+7702555*", "sim-box", EXPIRES);
        let line = e.to_json_line();
        assert!(line.contains(r#""range":"+7702555*""#), "{line}");
        assert_eq!(FeedEntry::from_json_line(&line), Ok(e));
        let w = FeedEntry::withdraw("+77011234567");
        assert_eq!(FeedEntry::from_json_line(&w.to_json_line()), Ok(w));
        let a = Alert::new("A-1", "+77011234567", "gsm-gateway");
        assert_eq!(Alert::from_json_line(&a.to_json_line()), Ok(a));
        for bad in [
            r#"{"action":"add","number":"+7701","case":"c"}"#,
            r#"{"action":"withdraw","case":"c"}"#,
            r#"{"action":"drop","number":"+7701","case":"c"}"#,
            r#"{"action":"withdraw","number":"+7701","case":"c","scope":"all"}"#,
        ] {
            assert!(FeedEntry::from_json_line(bad).is_err(), "{bad}");
        }
    }
}
