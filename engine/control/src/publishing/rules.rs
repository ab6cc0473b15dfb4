//! `kuzet.rules.v1`: validate, stage, activate, roll back, list and diff
//! published rule versions (see [`super`] for the model).

use std::sync::Arc;

use kuzet_api::rules as pb;
use kuzet_api::rules::rule_service_server::RuleService;
use kuzet_rules::ruleset::RuleSet;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::shelf::{Meta, Shelf};
use super::source::{lock, Which, MAX_RULES};
use super::{
    blocking, check_expect, diff, expect, hex, maybe_id, now_us, ops, version_id, vname, Filter,
    Publishing,
};
use crate::gate::{Credentials, Op, Principal};
use crate::publish::Layers;

/// The rule service.
#[derive(Clone)]
pub struct Rules(pub Arc<Publishing>);

fn rule_pb(r: &kuzet_rules::ruleset::Rule) -> pb::Rule {
    pb::Rule {
        id: r.id.to_string(),
        kind: diff::kind_name(&r.kind),
        mode: diff::mode_name(r.mode).into(),
        score: r.score,
    }
}

fn thresholds_pb(s: &RuleSet) -> pb::Thresholds {
    pb::Thresholds {
        flag: s.thresholds.flag,
        redirect: s.thresholds.redirect.unwrap_or(0),
        block: s.thresholds.block,
    }
}

fn change_pb(c: diff::Change) -> pb::Change {
    pb::Change {
        what: c.what,
        change: c.change.into(),
        before: c.before,
        after: c.after,
        blocks_more: c.blocks_more,
    }
}

impl Rules {
    fn shelf(&self) -> Result<&std::sync::Mutex<Shelf>, Status> {
        self.0.source.rules.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "the rules are read from [rules] file, not published: set [publishing] rules = true (and unset [rules] file) to publish them",
            )
        })
    }

    fn parse(&self, name: &str, text: &str) -> Result<RuleSet, String> {
        if text.len() as u64 > MAX_RULES {
            return Err(format!("{name}: larger than {} KiB", MAX_RULES >> 10));
        }
        RuleSet::from_toml_str(text, name, &self.0.plan, &self.0.policy).map_err(|e| e.to_string())
    }

    /// A version's rule set (`v0`, or none in force: the built-in rules).
    pub(crate) fn version_rules(&self, s: &Shelf, id: Option<u64>) -> Result<RuleSet, Status> {
        let Some(id) = id.filter(|i| *i > 0) else {
            return Ok(RuleSet::builtin(&self.0.policy, &self.0.plan));
        };
        let m = s.index.get(id).ok_or_else(|| {
            Status::not_found(format!(
                "the rules have no v{id} (see `kuzet rules versions`)"
            ))
        })?;
        let text = s.read(&m.digest, MAX_RULES).map_err(Status::internal)?;
        let text = String::from_utf8(text)
            .map_err(|_| Status::internal(format!("rules {}: not UTF-8", m.name())))?;
        self.parse(&m.name, &text).map_err(Status::internal)
    }

    fn version_pb(&self, s: &Shelf, m: &Meta) -> pb::Version {
        let (rules, thresholds, changes) = match self.version_rules(s, Some(m.id)) {
            Ok(set) => {
                let changes = match self.version_rules(s, m.base) {
                    Ok(base) => diff::rules(&base, &set)
                        .into_iter()
                        .map(change_pb)
                        .collect(),
                    // The base was pruned: no changes to show.
                    Err(_) => Vec::new(),
                };
                (own_rules(&set), Some(thresholds_pb(&set)), changes)
            }
            Err(_) => (Vec::new(), None, Vec::new()),
        };
        pb::Version {
            id: m.name(),
            digest: m.digest.clone(),
            author: m.author.clone(),
            created_us: m.created_us,
            name: m.name.clone(),
            rules,
            thresholds,
            active: s.index.active == Some(m.id),
            previous: s.index.previous == Some(m.id),
            note: m.note.clone(),
            activated_by: m.activated_by.clone(),
            activated_us: m.activated_us,
            changes,
            backtests: m.backtests.iter().map(|b| b.to_pb()).collect(),
        }
    }

    /// Puts a rule version in force; `None` is the one before.
    async fn activate_rules(
        &self,
        p: &Principal,
        target: Option<u64>,
        expected: Option<u64>,
        without_backtest: bool,
        op: &Op,
        f: &Filter,
    ) -> Result<pb::ActivateResponse, Status> {
        self.shelf()?;
        let _turn = self.0.activating.lock().await;
        // First checked (the compare-and-set, the approval), then a
        // "started" row in the audit log, then recorded (checked again
        // under the lock).
        let me = self.clone();
        let who = p.clone();
        let checked = blocking(move || {
            let pb = &me.0;
            pb.catch_up(Which::Rules)?;
            let s = lock(me.shelf()?);
            let id = match target {
                Some(i) => i,
                None => s.index.previous.ok_or_else(|| {
                    Status::failed_precondition(
                        "the rules have no version before the one in force to roll back to",
                    )
                })?,
            };
            let meta = s.index.get(id).cloned().ok_or_else(|| {
                Status::not_found(format!(
                    "the rules have no v{id} (see `kuzet rules versions`)"
                ))
            })?;
            check_expect(expected, s.index.active_meta(), "the rule version in force")?;
            if s.index.active == Some(id) {
                return Ok(Err(me.version_pb(&s, &meta)));
            }
            let set = me.version_rules(&s, Some(id))?;
            let in_force = pb.shared.load().rules.clone();
            let more: Vec<String> = diff::rules(&in_force, &set)
                .iter()
                .filter(|c| c.blocks_more)
                .map(|c| format!("{} {}", c.what, c.change))
                .collect();
            let mut evidence = None;
            if !more.is_empty() {
                pb.approve(
                    &who,
                    &meta.author,
                    &format!("rules {}", meta.name()),
                    &more.join(", "),
                )?;
                // A promotion (not a rollback: that puts back what was in
                // force) needs a backtest, or an admin who goes without.
                if target.is_some() && pb.cfg.backtest_min_hours > 0.0 {
                    let min = pb.cfg.backtest_min_hours;
                    match super::backtest::evidence(&meta, min, now_us()) {
                        Some(b) => evidence = Some(b.clone()),
                        None if without_backtest => {
                            if who.role != crate::access::Role::Admin {
                                return Err(Status::permission_denied(format!(
                                    "rules {} enforces more than the version in force ({}): putting it in force without a backtest takes an admin",
                                    meta.name(),
                                    more.join(", ")
                                )));
                            }
                        }
                        None => {
                            let had = meta
                                .backtests
                                .first()
                                .map(|b| format!(" (its newest backtest replayed {:.1} h)", b.hours()))
                                .unwrap_or_default();
                            return Err(Status::failed_precondition(format!(
                                "rules {} enforces more than the version in force ({}): its promotion needs a backtest over at least {min} h of the last 7 days' calls{had}; run `kuzet rules backtest {} --since {}h` and activate again, or an admin may go without (--without-backtest, audited)",
                                meta.name(),
                                more.join(", "),
                                meta.name(),
                                min.ceil().max(1.0)
                            )));
                        }
                    }
                }
            }
            Ok(Ok((meta, evidence)))
        })
        .await?;
        let (meta, evidence) = match checked {
            Ok(m) => m,
            // Already in force: nothing to record.
            Err(v) => {
                return Ok(pb::ActivateResponse {
                    version: Some(v),
                    replaced: String::new(),
                    snapshot: self.0.shared.load().version.to_string(),
                    backtest: None,
                })
            }
        };
        let went_without = without_backtest && evidence.is_none();
        let shown = evidence.as_ref().map(
            |b| json!({"by": b.by, "at_us": b.at_us, "hours": b.hours(), "summary": b.summary}),
        );
        f.set(json!({"version": meta.name(), "expect": vname(expected), "backtest": shown, "without_backtest": went_without}));
        self.0.starting(p, op, f).await?;
        let me = self.clone();
        let who = p.clone();
        let (version, replaced, seq) = blocking(move || {
            let pb = &me.0;
            let mut s = lock(me.shelf()?);
            check_expect(expected, s.index.active_meta(), "the rule version in force")?;
            let id = meta.id;
            if s.index.get(id).is_none() {
                return Err(Status::not_found(format!("rules v{id} was pruned meanwhile")));
            }
            let seq = pb.next_seq()?;
            let (m, replaced) = pb.commit(Which::Rules, &mut s, |idx| {
                check_expect(expected, idx.active_meta(), "the rule version in force")?;
                if idx.get(id).is_none_or(|m| m.digest != meta.digest) {
                    return Err(Status::not_found(format!("rules v{id} was pruned meanwhile")));
                }
                idx.put_in_force(id, &who.who, seq, now_us())
                    .map_err(|e| Status::internal(format!("recording rules v{id} in force: {e}")))
            })?;
            pb.source.changed_now(seq, Layers::RULES, None);
            tracing::info!(version = %format!("v{id}"), replaced = %vname(replaced), by = %who.who, "rule version put in force");
            Ok((me.version_pb(&s, &m), replaced, seq))
        })
        .await?;
        f.set(
            json!({"version": version.id, "replaced": vname(replaced), "expect": vname(expected), "backtest": shown, "without_backtest": went_without}),
        );
        if went_without {
            tracing::warn!(version = %version.id, by = %p.who, "a rule version that enforces more was put in force without a backtest");
        }
        let snapshot = self
            .0
            .in_force(seq, &format!("rules {}", version.id))
            .await?;
        Ok(pb::ActivateResponse {
            version: Some(version),
            replaced: vname(replaced),
            snapshot,
            backtest: evidence.map(|b| b.to_pb()),
        })
    }
}

#[tonic::async_trait]
impl RuleService for Rules {
    async fn validate(
        &self,
        req: Request<pb::RuleText>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let r = req.get_ref().clone();
        let f = &Filter::new(json!({"name": r.name, "bytes": r.toml.len()}));
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::VALIDATE_RULES,
                f,
                |_| async move {
                    let out = match self.parse(&file_name(&r.name), &r.toml) {
                        Ok(set) => pb::ValidateResponse {
                            ok: true,
                            error: String::new(),
                            rules: own_rules(&set),
                            thresholds: Some(thresholds_pb(&set)),
                        },
                        Err(e) => pb::ValidateResponse {
                            ok: false,
                            error: e,
                            rules: Vec::new(),
                            thresholds: None,
                        },
                    };
                    let n = out.rules.len() as u64;
                    Ok((out, n))
                },
            )
            .await?;
        Ok(Response::new(out))
    }

    async fn stage(
        &self,
        req: Request<pb::StageRequest>,
    ) -> Result<Response<pb::StageResponse>, Status> {
        let r = req.get_ref().clone();
        let text = r.text.clone().unwrap_or_default();
        let f =
            &Filter::new(json!({"name": text.name, "expect": r.expect, "bytes": text.toml.len()}));
        let out = self
            .0
            .answer(&Credentials::grpc(&req), &ops::STAGE_RULES, f, |p| async move {
                self.shelf()?;
                let expected = expect(&r.expect)?;
                let name = file_name(&text.name);
                self.parse(&name, &text.toml)
                    .map_err(|e| Status::invalid_argument(format!("{e}; nothing was staged")))?;
                self.0.starting(&p, &ops::STAGE_RULES, f).await?;
                let me = self.clone();
                let note = r.note.clone();
                let out = blocking(move || me.stage_now(&p, &name, &text.toml, expected, note)).await?;
                f.set(json!({"name": r.text.as_ref().map(|t| t.name.clone()), "expect": r.expect, "version": out.version.as_ref().map(|v| v.id.clone())}));
                Ok((out, 1))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn activate(
        &self,
        req: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let r = req.get_ref().clone();
        let f = &Filter::new(
            json!({"version": r.version, "expect": r.expect, "without_backtest": r.without_backtest}),
        );
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::ACTIVATE_RULES,
                f,
                |p| async move {
                    let id = version_id(&r.version)?;
                    let e = expect(&r.expect)?;
                    Ok((
                        self.activate_rules(
                            &p,
                            Some(id),
                            e,
                            r.without_backtest,
                            &ops::ACTIVATE_RULES,
                            f,
                        )
                        .await?,
                        1,
                    ))
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
        let f = &Filter::new(json!({"expect": r.expect}));
        let out = self
            .0
            .answer(&Credentials::grpc(&req), &ops::ROLLBACK_RULES, f, |p| async move {
                let e = expect(&r.expect)?;
                let a = self.activate_rules(&p, None, e, false, &ops::ROLLBACK_RULES, f).await?;
                f.set(json!({"expect": r.expect, "version": a.version.as_ref().map(|v| v.id.clone()), "replaced": a.replaced}));
                Ok((a, 1))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::RULE_VERSIONS,
                &Filter::new(json!({})),
                |_| async move {
                    self.shelf()?;
                    let me = self.clone();
                    blocking(move || {
                        let s = lock(me.shelf()?);
                        let v: Vec<pb::Version> = s
                            .index
                            .versions
                            .iter()
                            .rev()
                            .map(|m| me.version_pb(&s, m))
                            .collect();
                        let n = v.len() as u64;
                        Ok((pb::ListVersionsResponse { versions: v }, n))
                    })
                    .await
                },
            )
            .await?;
        Ok(Response::new(out))
    }

    type BacktestStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::BacktestProgress, Status>>;

    async fn backtest(
        &self,
        req: Request<pb::BacktestRequest>,
    ) -> Result<Response<Self::BacktestStream>, Status> {
        let r = req.get_ref().clone();
        let creds = Credentials::grpc(&req);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let me = self.0.clone();
        tokio::spawn(async move {
            let what = match &r.rules {
                Some(pb::backtest_request::Rules::Version(v)) => v.clone(),
                Some(pb::backtest_request::Rules::Text(t)) => t.name.clone(),
                None => "in force".into(),
            };
            let f = Filter::new(json!({"rules": what, "lists": r.lists, "since_s": r.since_s}));
            let progress = tx.clone();
            let out = me
                .answer(&creds, &ops::BACKTEST_RULES, &f, |p| {
                    let me = me.clone();
                    let f = &f;
                    async move { me.run_backtest(&p, r, progress, f).await }
                })
                .await;
            let _ = tx.send(out).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn trends(
        &self,
        req: Request<pb::TrendsRequest>,
    ) -> Result<Response<pb::TrendsResponse>, Status> {
        let r = *req.get_ref();
        let f = &Filter::new(json!({"since_s": r.since_s, "recent_s": r.recent_s}));
        let me = self.0.clone();
        let out = self
            .0
            .answer(&Credentials::grpc(&req), &ops::TRENDS, f, |_| async move {
                me.run_trends(r).await
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn diff(
        &self,
        req: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let r = req.get_ref().clone();
        let f = &Filter::new(json!({"from": r.from, "to": r.to}));
        let out = self
            .0
            .answer(
                &Credentials::grpc(&req),
                &ops::DIFF_RULES,
                f,
                |_| async move {
                    self.shelf()?;
                    let from = maybe_id(&r.from, "from")?;
                    let to = maybe_id(&r.to, "to")?.ok_or_else(|| {
                        Status::invalid_argument("to: name the version to compare with")
                    })?;
                    let me = self.clone();
                    blocking(move || {
                        let s = lock(me.shelf()?);
                        let a = me.version_rules(&s, from.or(s.index.active))?;
                        let b = me.version_rules(&s, Some(to))?;
                        let changes: Vec<pb::Change> =
                            diff::rules(&a, &b).into_iter().map(change_pb).collect();
                        let more = changes.iter().any(|c| c.blocks_more);
                        let n = changes.len() as u64;
                        Ok((
                            pb::DiffResponse {
                                changes,
                                blocks_more: more,
                            },
                            n,
                        ))
                    })
                    .await
                },
            )
            .await?;
        Ok(Response::new(out))
    }
}

/// The name errors give a rule text: the author's, or `rules.toml`.
fn file_name(name: &str) -> String {
    if name.trim().is_empty() {
        "rules.toml".into()
    } else {
        name.to_string()
    }
}

/// A rule set's own rules (not the built-in list rules every set has).
fn own_rules(set: &RuleSet) -> Vec<pb::Rule> {
    set.rules
        .iter()
        .filter(|r| !r.builtin)
        .map(rule_pb)
        .collect()
}

impl Rules {
    /// Stores a checked rule text as a new version (or names the newest
    /// when it is the same text), under the shelf's lock.
    fn stage_now(
        &self,
        who: &Principal,
        name: &str,
        toml: &str,
        expected: Option<u64>,
        note: String,
    ) -> Result<pb::StageResponse, Status> {
        let pb = &self.0;
        pb.catch_up(Which::Rules)?;
        let mut s = lock(self.shelf()?);
        check_expect(expected, s.index.newest(), "the newest rule version")?;
        let d = Sha256::digest(toml.as_bytes());
        let digest = hex(&d[..16]);
        if let Some(n) = s.index.newest().filter(|n| n.digest == digest) {
            return Ok(pb::StageResponse {
                version: Some(self.version_pb(&s, n)),
                unchanged: true,
            });
        }
        s.keep_text(toml.as_bytes(), &digest)
            .map_err(Status::internal)?;
        let made = pb.commit(Which::Rules, &mut s, |idx| {
            check_expect(expected, idx.newest(), "the newest rule version")?;
            if let Some(n) = idx.newest().filter(|n| n.digest == digest) {
                return Ok((n.clone(), true));
            }
            let base = idx.active;
            let meta = idx.add(Meta {
                digest: digest.clone(),
                author: who.who.clone(),
                created_us: now_us(),
                base,
                note: note.clone(),
                name: name.to_string(),
                ..Meta::default()
            });
            pb.prune(idx, "rules");
            Ok((meta, false))
        });
        // A staging that did not make a version leaves no content.
        if !s.index.digests().contains(&digest) {
            let _ = std::fs::remove_file(s.content_path(&digest));
        }
        let (meta, unchanged) = made?;
        if !unchanged {
            tracing::info!(version = %meta.name(), by = %who.who, "rule version staged");
        }
        Ok(pb::StageResponse {
            version: Some(self.version_pb(&s, &meta)),
            unchanged,
        })
    }
}
