//! `kuzet.lists.v1`: push, activate, roll back, list, diff and look up
//! published list versions (see [`super`] for the model).

use std::io::{BufReader, Read, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use kuzet_api::lists as pb;
use kuzet_api::lists::list_service_server::ListService;
use kuzet_rules::ruleset::CallInput;
use kuzet_rules::state::State;
use kuzet_rules::{ListBuilder, ListId, MatchKind, NumberList};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::shelf::{Meta, Shelf};
use super::source::lock;
use super::{
    blocking, check_expect, diff, expect, hex, maybe_id, now_us, ops, unhex16, version_id, vname,
    Done, Publishing,
};
use crate::gate::{Credentials, Principal};
use crate::publish::{feed_lines, list_digest, Layers};

/// The most a push may send: beyond any list kuzet is sized for (10M
/// numbers are about 140 MB), and short of filling the disk.
pub const MAX_PUSH_BYTES: u64 = 4 << 30;

/// Diff entries per streamed chunk.
const DIFF_CHUNK: usize = 2_000;

/// The list service.
#[derive(Clone)]
pub struct Lists(pub Arc<Publishing>);

/// Which version an activation puts in force.
#[derive(Clone, Copy, Debug)]
enum Target {
    Id(u64),
    Previous,
}

/// What an activation did.
struct Activated {
    meta: Meta,
    replaced: Option<u64>,
    /// The publishing sequence to wait for (0: nothing changed).
    seq: u64,
}

impl Lists {
    fn list(&self, name: &str) -> Result<ListId, Status> {
        let l = ListId::from_name(name.trim()).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{name:?} is not a list; the lists are {}",
                ListId::names()
            ))
        })?;
        if !self.0.source.publishes(l) {
            return Err(Status::failed_precondition(format!(
                "{l} is fed by files, not published: declare it in kuzet.toml's [publishing] lists (and take its files out of [lists]) to publish it; published here: {}",
                self.0.published_lists()
            )));
        }
        Ok(l)
    }

    /// Puts a version of `l` in force (see [`super`]); waits for the swap.
    async fn activate(
        &self,
        p: &Principal,
        l: ListId,
        target: Target,
        expected: Option<u64>,
        built: Option<Arc<NumberList>>,
    ) -> Result<pb::ActivateResponse, Status> {
        let pb = self.0.clone();
        // One activation at a time, to its swap: each judges "blocks
        // more" against what is really in force.
        let _turn = pb.activating.lock().await;
        let who = p.clone();
        let a = {
            let pb = pb.clone();
            blocking(move || activate_now(&pb, &who, l, target, expected, built)).await?
        };
        let snapshot = if a.seq == 0 {
            pb.shared.load().version.to_string()
        } else {
            pb.in_force(a.seq, &format!("{l} {}", a.meta.name()))
                .await?
        };
        let shelf = lock(pb.source.lists[l].as_ref().expect("published"));
        Ok(pb::ActivateResponse {
            version: Some(version_pb(l, &shelf, &a.meta)),
            replaced: vname(a.replaced),
            snapshot,
        })
    }
}

/// The blocking part of an activation: under the shelf's lock, checks,
/// records and offers the version.
fn activate_now(
    pb: &Publishing,
    p: &Principal,
    l: ListId,
    target: Target,
    expected: Option<u64>,
    built: Option<Arc<NumberList>>,
) -> Result<Activated, Status> {
    let shelf = pb.source.lists[l].as_ref().expect("checked as published");
    let mut s = lock(shelf);
    let id = match target {
        Target::Id(i) => i,
        Target::Previous => s.index.previous.ok_or_else(|| {
            Status::failed_precondition(format!(
                "{l} has no version before the one in force to roll back to"
            ))
        })?,
    };
    let meta = s.index.get(id).cloned().ok_or_else(|| {
        Status::not_found(format!(
            "{l} has no v{id} (see `kuzet lists versions --list {l}`)"
        ))
    })?;
    check_expect(
        expected,
        s.index.active_meta(),
        &format!("the {l} version in force"),
    )?;
    if s.index.active == Some(id) {
        return Ok(Activated {
            meta,
            replaced: None,
            seq: 0,
        });
    }
    let list = match built {
        Some(b) => b,
        None => Arc::new(build_version(pb, &s, l, &meta)?),
    };
    let in_force = pb.shared.load().lists[l].clone();
    let (added, removed) = diff::lists(&in_force, &list, |_, _, _| true);
    if diff::list_blocks_more(l, added, removed) {
        pb.approve(
            p,
            &meta.author,
            &format!("{l} {}", meta.name()),
            &format!("+{added} -{removed} entries"),
        )?;
    }
    let digest = unhex16(&meta.digest).ok_or_else(|| {
        Status::internal(format!("{l} {}: a bad digest in its index", meta.name()))
    })?;
    let seq = pb.source.next_seq();
    let mut idx = s.index.clone();
    let replaced = idx.active;
    idx.previous = replaced;
    idx.active = Some(id);
    idx.activated_seq = seq;
    let now = now_us();
    let mut meta = meta;
    if let Some(m) = idx.versions.iter_mut().find(|m| m.id == id) {
        m.activated_by = p.who.clone();
        m.activated_us = now;
        meta = m.clone();
    }
    s.save(idx)
        .map_err(|e| Status::internal(format!("recording {l} {} in force: {e}", meta.name())))?;
    pb.source
        .changed_now(Layers::list(l), Some((l, id, list, digest)));
    tracing::info!(list = %l, version = %meta.name(), replaced = %vname(replaced), by = %p.who, added, removed, "list version put in force");
    Ok(Activated {
        meta,
        replaced,
        seq,
    })
}

/// Builds a stored version's list from its file.
fn build_version(pb: &Publishing, s: &Shelf, l: ListId, m: &Meta) -> Result<NumberList, Status> {
    let f = s.open_content(&m.digest).map_err(Status::internal)?;
    let mut b = ListBuilder::new(&pb.plan);
    b.reserve(m.exact as usize);
    feed_lines(
        BufReader::with_capacity(1 << 20, f),
        &format!("{l} {}", m.name()),
        &mut b,
        &AtomicBool::new(false),
        Instant::now(),
    )
    .map_err(|e| Status::internal(e.to_string()))?;
    Ok(b.finish())
}

/// A version's list, from the snapshot when it is the one in force.
fn version_list(
    pb: &Publishing,
    l: ListId,
    id: Option<u64>,
) -> Result<(Arc<NumberList>, String), Status> {
    let shelf = pb.source.lists[l].as_ref().expect("published");
    let s = lock(shelf);
    let id = match id {
        Some(i) => i,
        None => match s.index.active {
            Some(a) => a,
            None => return Ok((Arc::new(NumberList::default()), "none".into())),
        },
    };
    if id == 0 {
        return Ok((Arc::new(NumberList::default()), "v0".into()));
    }
    let m = s
        .index
        .get(id)
        .cloned()
        .ok_or_else(|| Status::not_found(format!("{l} has no v{id}")))?;
    if s.index.active == Some(id) && pb.shared.load().version.seq >= s.index.activated_seq {
        return Ok((pb.shared.load().lists[l].clone(), m.name()));
    }
    Ok((Arc::new(build_version(pb, &s, l, &m)?), m.name()))
}

/// A version as the API shows it.
fn version_pb(l: ListId, s: &Shelf, m: &Meta) -> pb::Version {
    pb::Version {
        list: l.name().into(),
        id: m.name(),
        digest: m.digest.clone(),
        exact: m.exact,
        ranges: m.ranges,
        author: m.author.clone(),
        created_us: m.created_us,
        added: m.added,
        removed: m.removed,
        base: vname(m.base),
        active: s.index.active == Some(m.id),
        previous: s.index.previous == Some(m.id),
        note: m.note.clone(),
        activated_by: m.activated_by.clone(),
        activated_us: m.activated_us,
        lines: m.lines,
    }
}

/// A reader over the pushed chunks that writes what it reads to the
/// upload file as it goes.
struct Chunks {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    at: usize,
    out: std::io::BufWriter<std::fs::File>,
}

impl Read for Chunks {
    fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                Some(Ok(b)) => {
                    self.out.write_all(&b)?;
                    self.buf = b;
                    self.at = 0;
                }
            }
        }
        let n = into.len().min(self.buf.len() - self.at);
        into[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What the parser of a push made of it.
struct Parsed {
    list: NumberList,
    lines: usize,
    upload: std::path::PathBuf,
}

impl Lists {
    async fn push_inner(
        &self,
        p: &Principal,
        first: pb::PushChunk,
        mut stream: Streaming<pb::PushChunk>,
    ) -> Result<Done<pb::PushResponse>, Status> {
        let pb = self.0.clone();
        let l = self.list(&first.list)?;
        let expected = expect(&first.expect)?;
        // Fail early on a compare-and-set already lost.
        let (file, upload) = {
            let pb = pb.clone();
            blocking(move || {
                let s = lock(pb.source.lists[l].as_ref().expect("published"));
                check_expect(
                    expected,
                    s.index.newest(),
                    &format!("the newest {l} version"),
                )?;
                s.incoming().map_err(Status::internal)
            })
            .await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(16);
        let name = format!("{l} (pushed)");
        let plan = pb.plan.clone();
        let parser = tokio::task::spawn_blocking(move || {
            let mut chunks = Chunks {
                rx,
                buf: Vec::new(),
                at: 0,
                out: std::io::BufWriter::with_capacity(1 << 20, file),
            };
            let mut b = ListBuilder::new(&plan);
            let r = feed_lines(
                BufReader::with_capacity(1 << 20, &mut chunks),
                &name,
                &mut b,
                &AtomicBool::new(false),
                Instant::now(),
            );
            let lines = match r {
                Ok(n) => n,
                Err(e) => {
                    let _ = std::fs::remove_file(&upload);
                    return Err(e.to_string());
                }
            };
            let out = chunks.out.into_inner().map_err(|e| e.to_string());
            if let Err(e) = out.and_then(|f| f.sync_all().map_err(|e| e.to_string())) {
                let _ = std::fs::remove_file(&upload);
                return Err(format!("writing the upload: {e}"));
            }
            Ok(Parsed {
                list: b.finish(),
                lines,
                upload,
            })
        });
        let mut sent = first.data.len() as u64;
        let mut failed = None;
        if tx.send(Ok(first.data)).await.is_ok() {
            loop {
                match stream.message().await {
                    Ok(Some(c)) => {
                        sent += c.data.len() as u64;
                        if sent > MAX_PUSH_BYTES {
                            failed = Some(Status::invalid_argument(format!(
                                "the push is larger than {} GiB; nothing changed",
                                MAX_PUSH_BYTES >> 30
                            )));
                            let _ = tx.send(Err("too large".into())).await;
                            break;
                        }
                        if tx.send(Ok(c.data)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // A push cut short is not a shorter list.
                        let _ = tx
                            .send(Err(format!("the push was cut short: {}", e.message())))
                            .await;
                        failed = Some(Status::cancelled(format!(
                            "the push was cut short ({}); nothing changed",
                            e.message()
                        )));
                        break;
                    }
                }
            }
        }
        drop(tx);
        let parsed = parser
            .await
            .map_err(|e| Status::internal(format!("the push's parser failed: {e}")))?;
        if let Some(f) = failed {
            if let Ok(p) = &parsed {
                let _ = std::fs::remove_file(&p.upload);
            }
            return Err(f);
        }
        let parsed =
            parsed.map_err(|e| Status::invalid_argument(format!("{e}; nothing changed")))?;
        if parsed.list.is_empty() && !first.allow_empty {
            let _ = std::fs::remove_file(&parsed.upload);
            return Err(Status::invalid_argument(format!(
                "the pushed {l} has no entries; refusing it, since a truncated upload would silently empty the list (push with allow_empty to mean it); nothing changed"
            )));
        }
        let digest = list_digest(l, &parsed.list);
        let list = Arc::new(parsed.list);
        let who = p.clone();
        let note = first.note.clone();
        let lines = parsed.lines as u64;
        let upload = parsed.upload;
        let (meta, unchanged) = {
            let pb = pb.clone();
            let list = list.clone();
            blocking(move || {
                let shelf = pb.source.lists[l].as_ref().expect("published");
                let mut s = lock(shelf);
                if let Err(e) = check_expect(expected, s.index.newest(), &format!("the newest {l} version")) {
                    let _ = std::fs::remove_file(&upload);
                    return Err(e);
                }
                let hexd = hex(&digest);
                if let Some(n) = s.index.newest().filter(|n| n.digest == hexd) {
                    let _ = std::fs::remove_file(&upload);
                    return Ok((n.clone(), true));
                }
                s.keep(&upload, &hexd).map_err(Status::internal)?;
                let base = s.index.active;
                let in_force = pb.shared.load().lists[l].clone();
                let (added, removed) = diff::lists(&in_force, &list, |_, _, _| true);
                let mut idx = s.index.clone();
                let id = idx.next.max(1);
                let meta = Meta {
                    id,
                    digest: hexd,
                    author: who.who.clone(),
                    created_us: now_us(),
                    exact: list.exact_count() as u64,
                    ranges: list.prefix_count() as u64,
                    lines,
                    added,
                    removed,
                    base,
                    note,
                    ..Meta::default()
                };
                idx.versions.push(meta.clone());
                idx.next = id + 1;
                s.save(idx).map_err(|e| Status::internal(format!("recording {l} v{id}: {e}")))?;
                let keep_us = i64::from(pb.cfg.keep_days) * 86_400_000_000;
                match s.prune(pb.cfg.keep_versions, keep_us, now_us()) {
                    Ok(d) if !d.is_empty() => tracing::info!(list = %l, dropped = ?d, "old list versions pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(list = %l, error = %e, "pruning old list versions failed"),
                }
                tracing::info!(list = %l, version = %meta.name(), by = %who.who, exact = meta.exact, ranges = meta.ranges, added, removed, "list version pushed");
                Ok((meta, false))
            })
            .await?
        };
        let named = json!({"list": l.name(), "expect": first.expect, "activate": first.activate, "version": meta.name()}).to_string();
        let mut resp = pb::PushResponse {
            version: None,
            activated: false,
            snapshot: pb.shared.load().version.to_string(),
            unchanged,
            needs_approval: String::new(),
        };
        if first.activate {
            match self
                .activate(p, l, Target::Id(meta.id), None, Some(list))
                .await
            {
                Ok(a) => {
                    resp.activated = true;
                    resp.snapshot = a.snapshot;
                    resp.version = a.version;
                }
                Err(s) if s.code() == tonic::Code::PermissionDenied => {
                    resp.needs_approval = s.message().to_string();
                }
                Err(s) => return Err(s),
            }
        }
        if resp.version.is_none() {
            let s = lock(pb.source.lists[l].as_ref().expect("published"));
            let m = s.index.get(meta.id).cloned().unwrap_or(meta);
            resp.version = Some(version_pb(l, &s, &m));
        }
        Ok(Done::rows(resp, lines).naming(named))
    }
}

type DiffStream = ReceiverStream<Result<pb::DiffChunk, Status>>;

#[tonic::async_trait]
impl ListService for Lists {
    async fn push(
        &self,
        req: Request<Streaming<pb::PushChunk>>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let creds = Credentials::grpc(&req);
        let mut stream = req.into_inner();
        // The first chunk names the list (at most 4 MiB is read before
        // the gate).
        let first = stream.message().await?.unwrap_or_default();
        let filter =
            json!({"list": first.list, "expect": first.expect, "activate": first.activate})
                .to_string();
        let out = self
            .0
            .answer(&creds, &ops::PUSH_LIST, filter, |p| async move {
                self.push_inner(&p, first, stream).await
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn activate(
        &self,
        req: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let r = req.get_ref().clone();
        let filter = json!({"list": r.list, "version": r.version, "expect": r.expect}).to_string();
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::ACTIVATE_LIST,
                filter,
                |p| async move {
                    let l = self.list(&r.list)?;
                    let id = version_id(&r.version)?;
                    let e = expect(&r.expect)?;
                    let a = Lists::activate(self, &p, l, Target::Id(id), e, None).await?;
                    Ok(Done::rows(a, 1))
                },
            )
            .await?;
        Ok(Response::new(out))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let r = req.get_ref().clone();
        let filter = json!({"list": r.list, "expect": r.expect}).to_string();
        let out = self
            .0
            .answer(&Credentials::grpc(&req), &ops::ROLLBACK_LIST, filter, |p| async move {
                let l = self.list(&r.list)?;
                let e = expect(&r.expect)?;
                let a = Lists::activate(self, &p, l, Target::Previous, e, None).await?;
                let named = json!({"list": r.list, "expect": r.expect, "version": a.version.as_ref().map(|v| v.id.clone()), "replaced": a.replaced}).to_string();
                Ok(Done::rows(a, 1).naming(named))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let r = req.get_ref().clone();
        let filter = json!({"list": r.list}).to_string();
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::LIST_VERSIONS,
                filter,
                |_| async move {
                    let l = self.list(&r.list)?;
                    let pb = self.0.clone();
                    let versions = blocking(move || {
                        let s = lock(pb.source.lists[l].as_ref().expect("published"));
                        Ok(s.index
                            .versions
                            .iter()
                            .rev()
                            .map(|m| version_pb(l, &s, m))
                            .collect::<Vec<_>>())
                    })
                    .await?;
                    let n = versions.len() as u64;
                    Ok(Done::rows(pb::ListVersionsResponse { versions }, n))
                },
            )
            .await?;
        Ok(Response::new(out))
    }

    type DiffStream = DiffStream;

    async fn diff(&self, req: Request<pb::DiffRequest>) -> Result<Response<DiffStream>, Status> {
        let r = req.get_ref().clone();
        let filter = json!({"list": r.list, "from": r.from, "to": r.to}).to_string();
        let (a, b) = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::DIFF_LIST,
                filter,
                |_| async move {
                    let l = self.list(&r.list)?;
                    let from = maybe_id(&r.from, "from")?;
                    let to = maybe_id(&r.to, "to")?.ok_or_else(|| {
                        Status::invalid_argument("to: name the version to compare with")
                    })?;
                    let pb = self.0.clone();
                    let lists = blocking(move || {
                        let a = version_list(&pb, l, from)?;
                        let b = version_list(&pb, l, Some(to))?;
                        Ok((a.0, b.0))
                    })
                    .await?;
                    Ok(Done::rows(lists, 0))
                },
            )
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(DIFF_CHUNK);
            let (added, removed) = diff::lists(&a, &b, |add, e, r| {
                chunk.push(pb::DiffEntry {
                    added: add,
                    entry: e.to_string(),
                    reason: r.to_string(),
                });
                if chunk.len() == DIFF_CHUNK {
                    let c = pb::DiffChunk {
                        entries: std::mem::take(&mut chunk),
                        added: 0,
                        removed: 0,
                    };
                    return tx.blocking_send(Ok(c)).is_ok();
                }
                true
            });
            let _ = tx.blocking_send(Ok(pb::DiffChunk {
                entries: chunk,
                added,
                removed,
            }));
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let r = req.get_ref().clone();
        let filter = json!({"number": r.number}).to_string();
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::LOOKUP,
                filter,
                |_| async move {
                    let l = self.lookup_now(&r.number)?;
                    let n = l.hits.len() as u64;
                    Ok(Done::rows(l, n))
                },
            )
            .await?;
        Ok(Response::new(out))
    }
}

impl Lists {
    fn lookup_now(&self, number: &str) -> Result<pb::LookupResponse, Status> {
        let pb = &self.0;
        let n = normalize(&pb.plan, number).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{:?} is not a number the numbering plan knows",
                crate::safe::visible(number)
            ))
        })?;
        let set = pb.shared.load();
        let mut hits = Vec::new();
        for l in ListId::ALL {
            let Some(m) = set.lists[l].lookup(n) else {
                continue;
            };
            let (source, version) = match &pb.source.lists[l] {
                Some(s) => ("published", vname(lock(s).index.active)),
                None => ("files", String::new()),
            };
            let (kind, entry) = match m.kind {
                MatchKind::Exact => ("exact", n.to_string()),
                MatchKind::Prefix(len) => (
                    "range",
                    kuzet_rules::Prefix {
                        value: n.leading(usize::from(len)),
                        len,
                    }
                    .to_string(),
                ),
            };
            hits.push(pb::ListHit {
                list: l.name().into(),
                source: source.into(),
                version,
                r#match: kind.into(),
                entry,
                reason: m.reason.to_string(),
            });
        }
        let state = State::new(16, 3600);
        let answer = |call: CallInput| {
            let s = set.score(&call, &state);
            let mut explanation = String::new();
            let _ = set.explain(&s, &mut explanation);
            let rules = s
                .fired()
                .iter()
                .filter_map(|f| {
                    let r = set.rules.rules.get(usize::from(f.rule))?;
                    Some(if f.shadow {
                        format!("{} (shadow)", r.id)
                    } else {
                        r.id.to_string()
                    })
                })
                .collect();
            pb::Answer {
                decision: s.decision.as_str().into(),
                score: s.score,
                allowlisted: s.allowlisted,
                rules,
                explanation,
            }
        };
        let as_caller = answer(CallInput {
            a: Some(n),
            from: Some(n),
            a_present: true,
            ..CallInput::default()
        });
        let as_callee = answer(CallInput {
            b: Some(n),
            ..CallInput::default()
        });
        Ok(pb::LookupResponse {
            normalized: n.to_string(),
            hits,
            as_caller: Some(as_caller),
            as_callee: Some(as_callee),
            snapshot: set.version.to_string(),
        })
    }
}

/// A number as people write it: `8 701 123 45 67`, `+7 (701) 123-45-67`,
/// `tel:+77011234567`, `sip:+77011234567@gw`.
pub fn normalize(plan: &kuzet_rules::NumberingPlan, text: &str) -> Option<kuzet_rules::Number> {
    let t = text.trim();
    let t = match t.find(':') {
        Some(i) if t[..i].chars().all(|c| c.is_ascii_alphabetic()) => &t[i + 1..],
        _ => t,
    };
    let t = t.split(['@', ';']).next().unwrap_or("");
    plan.normalize(t.as_bytes()).or_else(|| {
        let digits: String = t
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '+')
            .collect();
        plan.normalize(digits.as_bytes())
    })
}
