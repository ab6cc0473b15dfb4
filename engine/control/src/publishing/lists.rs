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
use super::source::{lock, Which};
use super::{
    blocking, check_expect, diff, expect, hex, idle, maybe_id, now_us, ops, spawn_idle, unhex,
    version_id, vname, Filter, Publishing,
};
use crate::gate::{Credentials, Principal};
use crate::publish::{feed_lines, list_digest, Layers};

/// The most a push may send: seven times a 10M-number list (about 140
/// MB), which bounds what one push can make kuzet hold in memory while it
/// is checked (about 16 bytes an entry) and write to disk.
pub const MAX_PUSH_BYTES: u64 = 1 << 30;

/// The longest wait for a push's next chunk.
const CHUNK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// `f` names the call in the audit log: a "started" row is written
    /// before anything is recorded.
    #[allow(clippy::too_many_arguments)]
    async fn activate(
        &self,
        p: &Principal,
        l: ListId,
        target: Target,
        expected: Option<u64>,
        built: Option<Arc<NumberList>>,
        f: &Filter,
    ) -> Result<pb::ActivateResponse, Status> {
        let pb = self.0.clone();
        // One activation at a time, to its swap: each judges "blocks
        // more" against what is really in force.
        let _turn = pb.activating.lock().await;
        // What is to go in force, read under the shelf's lock; its list
        // (when not built already) is built outside it, so lookups and
        // listings never wait on a 10M-line parse.
        let (meta, list) = {
            let pb = pb.clone();
            idle("activate", move || {
                pb.catch_up(Which::List(l))?;
                let s = lock(pb.source.lists[l].as_ref().expect("published"));
                let meta = target_meta(&s, l, target)?;
                check_expect(
                    expected,
                    s.index.active_meta(),
                    &format!("the {l} version in force"),
                )?;
                if s.index.active == Some(meta.id) {
                    return Ok((meta, None));
                }
                let list = match built {
                    Some(b) => b,
                    None => {
                        let file = s.open_content(&meta.digest).map_err(Status::internal)?;
                        drop(s);
                        let _turn = pb.heavy_blocking();
                        Arc::new(build_version(&pb, file, l, &meta)?)
                    }
                };
                Ok((meta, Some(list)))
            })
            .await?
        };
        f.set(json!({"list": l.name(), "version": meta.name(), "expect": vname(expected)}));
        let Some(list) = list else {
            // Already in force: nothing to record.
            let shelf = lock(pb.source.lists[l].as_ref().expect("published"));
            return Ok(pb::ActivateResponse {
                version: Some(version_pb(l, &shelf, &meta)),
                replaced: String::new(),
                snapshot: pb.shared.load().version.to_string(),
            });
        };
        let in_force = pb.shared.load().lists[l].clone();
        let rules = pb.shared.load().rules.clone();
        let (added, removed) = {
            let list = list.clone();
            idle("compare", move || {
                Ok(diff::lists(&in_force, &list, |_, _, _| true))
            })
            .await?
        };
        if diff::list_blocks_more(l, &rules, added, removed) {
            pb.approve(
                p,
                &meta.author,
                &format!("{l} {}", meta.name()),
                &format!("+{added} -{removed} entries"),
            )?;
        }
        pb.starting(p, &ops::ACTIVATE_LIST, f).await?;
        let a = {
            let pb = pb.clone();
            let who = p.clone();
            blocking(move || record_in_force(&pb, &who, l, &meta, expected, list, added, removed))
                .await?
        };
        f.set(json!({"list": l.name(), "version": a.meta.name(), "replaced": vname(a.replaced), "expect": vname(expected)}));
        let snapshot = pb
            .in_force(a.seq, &format!("{l} {}", a.meta.name()))
            .await?;
        let shelf = lock(pb.source.lists[l].as_ref().expect("published"));
        Ok(pb::ActivateResponse {
            version: Some(version_pb(l, &shelf, &a.meta)),
            replaced: vname(a.replaced),
            snapshot,
        })
    }
}

/// The version an activation names.
fn target_meta(s: &Shelf, l: ListId, target: Target) -> Result<Meta, Status> {
    let id = match target {
        Target::Id(i) => i,
        Target::Previous => s.index.previous.ok_or_else(|| {
            Status::failed_precondition(format!(
                "{l} has no version before the one in force to roll back to"
            ))
        })?,
    };
    s.index.get(id).cloned().ok_or_else(|| {
        Status::not_found(format!(
            "{l} has no v{id} (see `kuzet lists versions --list {l}`)"
        ))
    })
}

/// Records `meta` in force on its shelf (checked again under the lock:
/// the version in force is still the one expected, the version still
/// kept) and offers its list to the publisher.
#[allow(clippy::too_many_arguments)]
fn record_in_force(
    pb: &Publishing,
    p: &Principal,
    l: ListId,
    meta: &Meta,
    expected: Option<u64>,
    list: Arc<NumberList>,
    added: u64,
    removed: u64,
) -> Result<Activated, Status> {
    let mut s = lock(pb.source.lists[l].as_ref().expect("published"));
    check_expect(
        expected,
        s.index.active_meta(),
        &format!("the {l} version in force"),
    )?;
    if s.index.get(meta.id).is_none() {
        return Err(Status::not_found(format!(
            "{l} {} was pruned meanwhile",
            meta.name()
        )));
    }
    let digest = unhex(&meta.digest).ok_or_else(|| {
        Status::internal(format!("{l} {}: a bad digest in its index", meta.name()))
    })?;
    let seq = pb.next_seq()?;
    let (meta, replaced) = pb.commit(Which::List(l), &mut s, |idx| {
        check_expect(
            expected,
            idx.active_meta(),
            &format!("the {l} version in force"),
        )?;
        if idx.get(meta.id).is_none_or(|m| m.digest != meta.digest) {
            return Err(Status::not_found(format!(
                "{l} {} was pruned meanwhile",
                meta.name()
            )));
        }
        idx.put_in_force(meta.id, &p.who, seq, now_us())
            .map_err(|e| Status::internal(format!("recording {l} {} in force: {e}", meta.name())))
    })?;
    pb.source
        .changed_now(seq, Layers::list(l), Some((l, meta.id, list, digest)));
    tracing::info!(list = %l, version = %meta.name(), replaced = %vname(replaced), by = %p.who, added, removed, "list version put in force");
    Ok(Activated {
        meta,
        replaced,
        seq,
    })
}

/// Builds a stored version's list from its (opened) file.
fn build_version(
    pb: &Publishing,
    f: std::fs::File,
    l: ListId,
    m: &Meta,
) -> Result<NumberList, Status> {
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
    let list = b.finish();
    if Some(list_digest(l, &list)) != unhex(&m.digest) {
        return Err(Status::internal(format!(
            "{l} {}: its content does not match its digest {}",
            m.name(),
            m.digest
        )));
    }
    Ok(list)
}

/// A version's list (`None`: the one in force), from the snapshot when it
/// is the one in force there, else built from its file outside the
/// shelf's lock.
pub(crate) fn version_list(
    pb: &Publishing,
    l: ListId,
    id: Option<u64>,
) -> Result<Arc<NumberList>, Status> {
    let (m, file) = {
        let s = lock(pb.source.lists[l].as_ref().expect("published"));
        let Some(id) = id.or(s.index.active).filter(|i| *i > 0) else {
            return Ok(Arc::new(NumberList::default()));
        };
        let m = s
            .index
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("{l} has no v{id}")))?;
        if s.index.active == Some(id) && pb.shared.load().version.seq >= s.index.activated_seq {
            return Ok(pb.shared.load().lists[l].clone());
        }
        let file = s.open_content(&m.digest).map_err(Status::internal)?;
        (m, file)
    };
    Ok(Arc::new(build_version(pb, file, l, &m)?))
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

/// What the receiving side hands the parser of a push.
enum Piece {
    /// The next bytes.
    Data(Vec<u8>),
    /// The client ended the stream: the text is whole.
    End,
    /// The push failed (cut short, too large, too slow).
    Fail(String),
}

/// A reader over the pushed chunks that writes what it reads to the
/// upload file as it goes. Only an explicit [`Piece::End`] ends the text:
/// a sender dropped before it (the call abandoned) is an error, so no
/// part of a push is ever taken for all of it.
struct Chunks {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    buf: Vec<u8>,
    at: usize,
    ended: bool,
    out: std::io::BufWriter<std::fs::File>,
}

impl Read for Chunks {
    fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(b)) => {
                    self.out.write_all(&b)?;
                    self.buf = b;
                    self.at = 0;
                }
                Some(Piece::End) => self.ended = true,
                Some(Piece::Fail(e)) => return Err(std::io::Error::other(e)),
                None => return Err(std::io::Error::other("the push was abandoned")),
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
    digest: [u8; 16],
    lines: usize,
    upload: std::path::PathBuf,
}

impl Lists {
    async fn push_inner(
        &self,
        p: &Principal,
        first: pb::PushChunk,
        mut stream: Streaming<pb::PushChunk>,
        f: &Filter,
    ) -> Result<(pb::PushResponse, u64), Status> {
        let pb = self.0.clone();
        let l = self.list(&first.list)?;
        let expected = expect(&first.expect)?;
        // A push holds up to a whole list in memory while it is checked:
        // one push or diff is built at a time.
        let heavy = self.0.heavy().await?;
        // Fail early on a compare-and-set already lost.
        let (file, upload) = {
            let pb = pb.clone();
            blocking(move || {
                pb.catch_up(Which::List(l))?;
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
        let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(16);
        let name = format!("{l} (pushed)");
        let plan = pb.plan.clone();
        let parser = spawn_idle("push", move || {
            let mut chunks = Chunks {
                rx,
                buf: Vec::new(),
                at: 0,
                ended: false,
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
            let list = b.finish();
            // The digest too, here: 10M entries take a tenth of a second.
            let digest = list_digest(l, &list);
            Ok(Parsed {
                list,
                digest,
                lines,
                upload,
            })
        })?;
        let mut sent = first.data.len() as u64;
        let mut failed = None;
        if tx.send(Piece::Data(first.data)).await.is_ok() {
            loop {
                let next = tokio::time::timeout(CHUNK_WAIT, stream.message()).await;
                let (piece, fail) = match next {
                    Ok(Ok(Some(c))) => {
                        sent += c.data.len() as u64;
                        if sent > MAX_PUSH_BYTES {
                            (
                                Piece::Fail("too large".into()),
                                Some(Status::invalid_argument(format!(
                                    "the push is larger than {} MiB; nothing changed",
                                    MAX_PUSH_BYTES >> 20
                                ))),
                            )
                        } else {
                            (Piece::Data(c.data), None)
                        }
                    }
                    Ok(Ok(None)) => (Piece::End, None),
                    // A push cut short is not a shorter list.
                    Ok(Err(e)) => (
                        Piece::Fail(format!("the push was cut short: {}", e.message())),
                        Some(Status::cancelled(format!(
                            "the push was cut short ({}); nothing changed",
                            e.message()
                        ))),
                    ),
                    Err(_) => (
                        Piece::Fail("no data".into()),
                        Some(Status::deadline_exceeded(format!(
                            "no data for {} s in the middle of the push; nothing changed",
                            CHUNK_WAIT.as_secs()
                        ))),
                    ),
                };
                let last = !matches!(piece, Piece::Data(_));
                // The parser stops at a bad line: what is left is not read.
                if tx.send(piece).await.is_err() || last {
                    failed = fail;
                    break;
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
        let digest = parsed.digest;
        let list = Arc::new(parsed.list);
        let who = p.clone();
        let note = first.note.clone();
        let lines = parsed.lines as u64;
        let upload = parsed.upload;
        f.set(json!({"list": l.name(), "expect": first.expect, "activate": first.activate, "digest": hex(&digest)}));
        if let Err(e) = pb.starting(p, &ops::PUSH_LIST, f).await {
            let _ = std::fs::remove_file(&upload);
            return Err(e);
        }
        // Against the list in force, outside the shelf's lock.
        let (added, removed) = {
            let in_force = pb.shared.load().lists[l].clone();
            let list = list.clone();
            idle("compare", move || {
                Ok(diff::lists(&in_force, &list, |_, _, _| true))
            })
            .await?
        };
        let (meta, unchanged, base) = {
            let pb = pb.clone();
            let list = list.clone();
            blocking(move || {
                let shelf = pb.source.lists[l].as_ref().expect("published");
                let w = Which::List(l);
                let s = lock(shelf);
                if let Err(e) = check_expect(expected, s.index.newest(), &format!("the newest {l} version")) {
                    let _ = std::fs::remove_file(&upload);
                    return Err(e);
                }
                let hexd = hex(&digest);
                if let Some(n) = s.index.newest().filter(|n| n.digest == hexd) {
                    let _ = std::fs::remove_file(&upload);
                    return Ok((n.clone(), true, s.index.active));
                }
                s.keep(&upload, &hexd).map_err(Status::internal)?;
                // Into the shared store (when versions are shared) outside
                // the shelf's lock: a content no index names yet is left
                // alone by everyone.
                let file = s.open_content(&hexd).map_err(Status::internal)?;
                drop(s);
                let uploaded = pb.upload(w, file, &hexd);
                let mut s = lock(shelf);
                let made = uploaded.and_then(|()| {
                    pb.commit(w, &mut s, |idx| {
                        check_expect(expected, idx.newest(), &format!("the newest {l} version"))?;
                        if let Some(n) = idx.newest().filter(|n| n.digest == hexd) {
                            return Ok((n.clone(), true, idx.active));
                        }
                        let base = idx.active;
                        let meta = idx.add(Meta {
                            digest: hexd.clone(),
                            author: who.who.clone(),
                            created_us: now_us(),
                            exact: list.exact_count() as u64,
                            ranges: list.prefix_count() as u64,
                            lines,
                            added,
                            removed,
                            base,
                            note: note.clone(),
                            ..Meta::default()
                        });
                        pb.prune(idx, l.name());
                        Ok((meta, false, base))
                    })
                });
                // A push that did not make a version leaves no content.
                if !s.index.digests().contains(&hexd) {
                    let _ = std::fs::remove_file(s.content_path(&hexd));
                }
                let (meta, unchanged, base) = made?;
                if !unchanged {
                    tracing::info!(list = %l, version = %meta.name(), by = %who.who, exact = meta.exact, ranges = meta.ranges, added, removed, "list version pushed");
                }
                Ok((meta, unchanged, base))
            })
            .await?
        };
        drop(heavy);
        let named = json!({"list": l.name(), "expect": first.expect, "activate": first.activate, "version": meta.name()});
        f.set(named.clone());
        let mut resp = pb::PushResponse {
            version: None,
            activated: false,
            snapshot: pb.shared.load().version.to_string(),
            unchanged,
            needs_approval: String::new(),
        };
        if first.activate {
            match self
                // Against the version in force when it was stored: another
                // activation meanwhile wins, and this one says so.
                .activate(
                    p,
                    l,
                    Target::Id(meta.id),
                    Some(base.unwrap_or(0)),
                    Some(list),
                    f,
                )
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
        f.set(named);
        Ok((resp, lines))
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
        // Admitted before a byte of the push is read.
        let f = &Filter::new(json!({"push": "admitted"}));
        let out = self
            .0
            .answer(&creds, &ops::PUSH_LIST, f, |p| async move {
                let first = match tokio::time::timeout(CHUNK_WAIT, stream.message()).await {
                    Ok(m) => m?.unwrap_or_default(),
                    Err(_) => {
                        return Err(Status::deadline_exceeded(
                            "no data at the start of the push; nothing changed",
                        ))
                    }
                };
                f.set(
                    json!({"list": first.list, "expect": first.expect, "activate": first.activate}),
                );
                self.push_inner(&p, first, stream, f).await
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn activate(
        &self,
        req: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let r = req.get_ref().clone();
        let f = &Filter::new(json!({"list": r.list, "version": r.version, "expect": r.expect}));
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::ACTIVATE_LIST,
                f,
                |p| async move {
                    let l = self.list(&r.list)?;
                    let id = version_id(&r.version)?;
                    let e = expect(&r.expect)?;
                    let a = Lists::activate(self, &p, l, Target::Id(id), e, None, f).await?;
                    Ok((a, 1))
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
        let f = &Filter::new(json!({"list": r.list, "expect": r.expect}));
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::ROLLBACK_LIST,
                f,
                |p| async move {
                    let l = self.list(&r.list)?;
                    let e = expect(&r.expect)?;
                    let a = Lists::activate(self, &p, l, Target::Previous, e, None, f).await?;
                    Ok((a, 1))
                },
            )
            .await?;
        Ok(Response::new(out))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let r = req.get_ref().clone();
        let f = &Filter::new(json!({"list": r.list}));
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::LIST_VERSIONS,
                f,
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
                    Ok((pb::ListVersionsResponse { versions }, n))
                },
            )
            .await?;
        Ok(Response::new(out))
    }

    type DiffStream = DiffStream;

    async fn diff(&self, req: Request<pb::DiffRequest>) -> Result<Response<DiffStream>, Status> {
        let r = req.get_ref().clone();
        let f = &Filter::new(json!({"list": r.list, "from": r.from, "to": r.to}));
        let (a, b) = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::DIFF_LIST,
                f,
                |_| async move {
                    let l = self.list(&r.list)?;
                    let from = maybe_id(&r.from, "from")?;
                    let to = maybe_id(&r.to, "to")?.ok_or_else(|| {
                        Status::invalid_argument("to: name the version to compare with")
                    })?;
                    // Two lists of up to 10M entries: one diff or push is
                    // built at a time.
                    let _turn = self.0.heavy().await?;
                    let pb = self.0.clone();
                    let lists = idle("diff", move || {
                        let a = version_list(&pb, l, from)?;
                        let b = version_list(&pb, l, Some(to))?;
                        Ok((a, b))
                    })
                    .await?;
                    Ok((lists, 0))
                },
            )
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let rt = tokio::runtime::Handle::current();
        spawn_idle("diff", move || {
            // A client that stops reading is given up on, so it cannot
            // hold this thread and both lists for ever.
            let send = |c: pb::DiffChunk| {
                rt.block_on(tokio::time::timeout(CHUNK_WAIT, tx.send(Ok(c))))
                    .is_ok_and(|r| r.is_ok())
            };
            let mut chunk = Vec::with_capacity(DIFF_CHUNK);
            let mut open = true;
            let (added, removed) = diff::lists(&a, &b, |add, e, r| {
                chunk.push(pb::DiffEntry {
                    added: add,
                    entry: e.to_string(),
                    reason: r.to_string(),
                });
                if chunk.len() == DIFF_CHUNK {
                    open = send(pb::DiffChunk {
                        entries: std::mem::take(&mut chunk),
                        added: 0,
                        removed: 0,
                    });
                }
                open
            });
            if open {
                send(pb::DiffChunk {
                    entries: chunk,
                    added,
                    removed,
                });
            }
        })?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let r = req.get_ref().clone();
        let f = &Filter::new(json!({"number": r.number}));
        let out = self
            .0
            .answer(&Credentials::grpc(&req), &ops::LOOKUP, f, |_| async move {
                let l = self.lookup_now(&r.number)?;
                let n = l.hits.len() as u64;
                Ok((l, n))
            })
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
                // The Centre's feed (a file may add to it): the batch the
                // layer reflects.
                None if l == ListId::NbFeed => (
                    "nbfeed",
                    pb.feed
                        .get()
                        .map_or(String::new(), |f| format!("batch {}", f.cursor())),
                ),
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
    plan.normalize_typed(t.split(['@', ';']).next().unwrap_or(""))
}
