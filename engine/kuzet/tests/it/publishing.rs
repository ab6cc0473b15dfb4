//! Rule authors publishing to a running kuzet (`kuzet.lists.v1`,
//! `kuzet.rules.v1`) as they meet it: an engine with a store, gRPC over
//! TCP with each role's token, real calls over UDP to see what is in
//! force, and the `kuzet` binary killed with SIGKILL and started again.

use std::net::SocketAddr;

use kuzet::config::{Config, TokenConfig};
use kuzet_api::investigation as ipb;
use kuzet_api::investigation::investigation_service_client::InvestigationServiceClient;
use kuzet_api::lists as lpb;
use kuzet_api::lists::list_service_client::ListServiceClient;
use kuzet_api::rules as rpb;
use kuzet_api::rules::rule_service_client::RuleServiceClient;
use kuzet_control::access::hash_token;
use kuzet_rules::ListId;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{ask, client, invite, start, status, test_config, TempDir, Watched};

const ROLES: [(&str, &str); 6] = [
    ("ana", "investigator"),
    ("rui", "rule-author"),
    ("ria", "rule-author"),
    ("apo", "approver"),
    ("ada", "approver"),
    ("root", "admin"),
];

pub(crate) fn token_of(name: &str) -> String {
    format!("kz_publish_token_of_{name}")
}

pub(crate) fn tokens() -> Vec<TokenConfig> {
    crate::common::tokens_for(&ROLES, token_of)
}

/// A config publishing the blocklist, the allowlist and the rules, with
/// a store in `dir` and every role's token.
pub(crate) fn config(dir: &TempDir) -> Config {
    let mut c = test_config();
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join("data"));
    c.control.tokens = tokens();
    c.publishing.lists = vec![ListId::Block, ListId::Allow];
    c.publishing.rules = true;
    // These tests are about approval; promotion's evidence is journal.rs's.
    c.publishing.backtest_min_hours = 0.0;
    c
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn req<T>(msg: T, who: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(w) = who {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token_of(w)).parse().unwrap(),
        );
    }
    r
}

pub(crate) async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Pushes `text` to `list` as `who`, in chunks of `chunk` bytes.
async fn push(
    ch: &Channel,
    who: Option<&str>,
    list: &str,
    text: &str,
    expect: &str,
    activate: bool,
) -> Result<lpb::PushResponse, tonic::Status> {
    let mut chunks: Vec<lpb::PushChunk> = text
        .as_bytes()
        .chunks(7)
        .map(|d| lpb::PushChunk {
            data: d.to_vec(),
            ..Default::default()
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(lpb::PushChunk::default());
    }
    chunks[0].list = list.into();
    chunks[0].expect = expect.into();
    chunks[0].activate = activate;
    let mut c = ListServiceClient::new(ch.clone());
    c.push(req(tokio_stream::iter(chunks), who))
        .await
        .map(|r| r.into_inner())
}

/// The SIP status kuzet answers a call from `a`.
fn call_status(addr: SocketAddr, a: &str, n: &mut u32) -> u16 {
    *n += 1;
    let sock = client();
    let port = sock.local_addr().unwrap().port();
    status(&ask(
        &sock,
        addr,
        &invite(a, "+77019990000", &format!("pub-{n}-{a}"), port),
    ))
}

async fn audit(ch: &Channel) -> Vec<ipb::AuditEntry> {
    InvestigationServiceClient::new(ch.clone())
        .read_audit(req(
            ipb::ReadAuditRequest {
                page_size: 1000,
                cursor: String::new(),
            },
            Some("root"),
        ))
        .await
        .unwrap()
        .into_inner()
        .entries
}

/// Every publishing RPC as `who`: the code it gets back (Ok for success).
async fn every_rpc(ch: &Channel, who: Option<&str>) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let mut l = ListServiceClient::new(ch.clone());
    let mut r = RuleServiceClient::new(ch.clone());
    let mut out = Vec::new();
    out.push((
        "PushList",
        code(
            push(ch, who, "blocklist", "+77015550001\n", "", false)
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "ActivateList",
        code(
            l.activate(req(
                lpb::ActivateRequest {
                    list: "blocklist".into(),
                    version: "v1".into(),
                    expect: String::new(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "RollbackList",
        code(
            l.rollback(req(
                lpb::RollbackRequest {
                    list: "blocklist".into(),
                    expect: "v7".into(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "ListVersions",
        code(
            l.list_versions(req(
                lpb::ListVersionsRequest {
                    list: "blocklist".into(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "DiffList",
        code(
            l.diff(req(
                lpb::DiffRequest {
                    list: "blocklist".into(),
                    from: "v0".into(),
                    to: "v1".into(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "Lookup",
        code(
            l.lookup(req(
                lpb::LookupRequest {
                    number: "87015550000".into(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "ValidateRules",
        code(
            r.validate(req(
                rpb::RuleText {
                    name: "r.toml".into(),
                    toml: SHADOW_RULES.into(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "StageRules",
        code(
            r.stage(req(
                rpb::StageRequest {
                    text: Some(rpb::RuleText {
                        name: "r.toml".into(),
                        toml: SHADOW_RULES.into(),
                    }),
                    // Never the newest: a stage that got this far stores
                    // nothing.
                    expect: "v99".into(),
                    note: String::new(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "ActivateRules",
        code(
            r.activate(req(
                rpb::ActivateRequest {
                    without_backtest: false,
                    version: "v1".into(),
                    expect: "v99".into(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "RollbackRules",
        code(
            r.rollback(req(
                rpb::RollbackRequest {
                    expect: "v99".into(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "RuleVersions",
        code(
            r.list_versions(req(rpb::ListVersionsRequest {}, who))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "DiffRules",
        code(
            r.diff(req(
                rpb::DiffRequest {
                    from: "v0".into(),
                    to: "v1".into(),
                },
                who,
            ))
            .await
            .map(|_| ()),
        ),
    ));
    out
}

const SHADOW_RULES: &str = r#"
[thresholds]
flag = 40
block = 100

[[rule]]
id = "velocity_1m"
kind = "velocity"
window_s = 60
max = 3
score = 100
mode = "shadow"
"#;

#[test]
fn publishing_refuses_each_rpc_without_a_token_or_with_the_wrong_role_and_audits_it() {
    let dir = TempDir::new("publish-access");
    let e = start(config(&dir));
    let addr = e.control_addr.unwrap();
    let mut n = 0;
    let audit_rows = rt().block_on(async {
        let ch = channel(addr).await;
        // The admin publishes v1 of the blocklist and of the rules.
        let v1 = push(
            &ch,
            Some("root"),
            "blocklist",
            "+77015550000, fraud\n",
            "v0",
            true,
        )
        .await
        .unwrap();
        assert!(v1.activated, "{v1:?}");
        RuleServiceClient::new(ch.clone())
            .stage(req(
                rpb::StageRequest {
                    text: Some(rpb::RuleText {
                        name: "r.toml".into(),
                        toml: SHADOW_RULES.into(),
                    }),
                    expect: "v0".into(),
                    note: String::new(),
                },
                Some("root"),
            ))
            .await
            .unwrap();
        let before = e.lists.load().version;
        assert_eq!(call_status(e.udp_addr, "+77015550000", &mut n), 603);

        // No token: every RPC is unauthenticated.
        for (rpc, c) in every_rpc(&ch, None).await {
            assert_eq!(c, Code::Unauthenticated, "{rpc} without a token");
        }
        // An investigator reads (versions, diffs, lookups) and changes
        // nothing; an approver cannot push or stage; a rule author
        // cannot roll back a version that is not there (its own role
        // holds the permission: the refusal is the compare-and-set's).
        let ana = every_rpc(&ch, Some("ana")).await;
        for (rpc, c) in &ana {
            let reads = [
                "ListVersions",
                "DiffList",
                "Lookup",
                "RuleVersions",
                "DiffRules",
            ];
            if reads.contains(rpc) {
                assert_eq!(*c, Code::Ok, "{rpc} as an investigator");
            } else {
                assert_eq!(*c, Code::PermissionDenied, "{rpc} as an investigator");
            }
        }
        let apo = every_rpc(&ch, Some("apo")).await;
        for (rpc, c) in &apo {
            if ["PushList", "StageRules"].contains(rpc) {
                assert_eq!(*c, Code::PermissionDenied, "{rpc} as an approver");
            } else {
                assert_ne!(*c, Code::PermissionDenied, "{rpc} as an approver");
                assert_ne!(*c, Code::Unauthenticated, "{rpc} as an approver");
            }
        }
        // The list in force is untouched by all of it.
        assert_eq!(e.lists.load().version, before);
        let versions = ListServiceClient::new(ch.clone())
            .list_versions(req(
                lpb::ListVersionsRequest {
                    list: "blocklist".into(),
                },
                Some("root"),
            ))
            .await
            .unwrap()
            .into_inner()
            .versions;
        assert_eq!(versions.len(), 1, "{versions:?}");
        assert!(versions[0].active);
        // Refusals are written once a second: wait for every one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let rows = audit(&ch).await;
            let unauth: u64 = rows
                .iter()
                .filter(|r| r.who == "-" && r.outcome == "unauthenticated")
                .map(|r| r.count.max(1))
                .sum();
            let denied: u64 = rows
                .iter()
                .filter(|r| r.outcome == "denied")
                .map(|r| r.count.max(1))
                .sum();
            if (unauth >= 12 && denied >= 9) || std::time::Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    assert_eq!(call_status(e.udp_addr, "+77015550000", &mut n), 603);
    let has = |who: &str, action: &str, outcome: &str| {
        audit_rows
            .iter()
            .any(|r| r.who == who && r.action == action && r.outcome.starts_with(outcome))
    };
    for action in [
        "PushList",
        "ActivateList",
        "RollbackList",
        "ListVersions",
        "DiffList",
        "Lookup",
        "ValidateRules",
        "StageRules",
        "ActivateRules",
        "RollbackRules",
        "RuleVersions",
        "DiffRules",
    ] {
        assert!(
            has("-", action, "unauthenticated"),
            "{action}: no audit row for the refusal"
        );
    }
    for action in [
        "PushList",
        "ActivateList",
        "RollbackList",
        "StageRules",
        "ActivateRules",
        "RollbackRules",
        "ValidateRules",
    ] {
        assert!(
            has("ana", action, "denied"),
            "{action}: no audit row for ana's refusal"
        );
    }
    assert!(has("apo", "PushList", "denied"));
    assert!(has("apo", "StageRules", "denied"));
    // Answered calls are audited with their version ids.
    let push_row = audit_rows
        .iter()
        .find(|r| r.who == "root" && r.action == "PushList" && r.outcome == "ok")
        .expect("the admin's push is audited");
    assert!(
        push_row.filter.contains("\"version\":\"v1\""),
        "{}",
        push_row.filter
    );
    assert!(has("ana", "Lookup", "ok"));
    assert!(has("apo", "RollbackList", "FailedPrecondition"));
}

#[test]
fn with_require_approval_an_author_cannot_put_its_own_blocking_version_in_force() {
    let dir = TempDir::new("publish-approval");
    let mut cfg = config(&dir);
    cfg.publishing.require_approval = true;
    let e = start(cfg);
    let addr = e.control_addr.unwrap();
    let mut n = 0;
    rt().block_on(async {
        let ch = channel(addr).await;
        let mut l = ListServiceClient::new(ch.clone());
        let activate = |who: &'static str, v: &str| {
            let mut l = l.clone();
            let r = req(
                lpb::ActivateRequest {
                    list: "blocklist".into(),
                    version: v.into(),
                    expect: String::new(),
                },
                Some(who),
            );
            async move { l.activate(r).await }
        };
        // The rule author's first version adds numbers: it blocks more.
        let v1 = push(
            &ch,
            Some("rui"),
            "blocklist",
            "+77015550001\n+77015550002\n",
            "",
            true,
        )
        .await
        .unwrap();
        assert!(!v1.activated);
        assert!(
            v1.needs_approval.contains("approver"),
            "{}",
            v1.needs_approval
        );
        assert_eq!(call_status(e.udp_addr, "+77015550001", &mut n), 302);
        let own = activate("rui", "v1").await.unwrap_err();
        assert_eq!(own.code(), Code::PermissionDenied, "{own:?}");
        // An approver who is not its author puts it in force.
        let ok = activate("apo", "v1").await.unwrap().into_inner();
        assert_eq!(ok.version.unwrap().activated_by, "apo");
        assert_eq!(call_status(e.udp_addr, "+77015550001", &mut n), 603);
        // An admin (an approver too) cannot put its own blocking version
        // in force either: another approver does.
        push(
            &ch,
            Some("root"),
            "blocklist",
            "+77015550001\n+77015550002\n+77015550003\n",
            "v1",
            false,
        )
        .await
        .unwrap();
        let own = activate("root", "v2").await.unwrap_err();
        assert_eq!(own.code(), Code::PermissionDenied);
        assert!(
            own.message().contains("require_approval"),
            "{}",
            own.message()
        );
        activate("ada", "v2").await.unwrap();
        assert_eq!(call_status(e.udp_addr, "+77015550003", &mut n), 603);
        // A version that only removes needs nobody: its author puts it in
        // force.
        let v3 = push(&ch, Some("rui"), "blocklist", "+77015550001\n", "v2", true)
            .await
            .unwrap();
        assert!(v3.activated, "{v3:?}");
        assert_eq!(call_status(e.udp_addr, "+77015550003", &mut n), 302);
        assert_eq!(call_status(e.udp_addr, "+77015550001", &mut n), 603);
        // Rolling back to v2 adds a number again: an approver's, then.
        let back = l
            .rollback(req(
                lpb::RollbackRequest {
                    list: "blocklist".into(),
                    expect: "v3".into(),
                },
                Some("rui"),
            ))
            .await
            .unwrap_err();
        assert_eq!(back.code(), Code::PermissionDenied);
        let back = l
            .rollback(req(
                lpb::RollbackRequest {
                    list: "blocklist".into(),
                    expect: "v3".into(),
                },
                Some("ada"),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(back.version.unwrap().id, "v2");
        assert_eq!(back.replaced, "v3");
        assert_eq!(call_status(e.udp_addr, "+77015550003", &mut n), 603);

        // Rules: a shadow rule needs no approval; enforcing it does.
        let mut r = RuleServiceClient::new(ch.clone());
        let stager = r.clone();
        let stage = |toml: String, who: &'static str| {
            let mut r = stager.clone();
            async move {
                r.stage(req(
                    rpb::StageRequest {
                        text: Some(rpb::RuleText {
                            name: "r.toml".into(),
                            toml,
                        }),
                        expect: String::new(),
                        note: "test".into(),
                    },
                    Some(who),
                ))
                .await
                .unwrap()
                .into_inner()
                .version
                .unwrap()
            }
        };
        let shadow = stage(SHADOW_RULES.into(), "rui").await;
        r.activate(req(
            rpb::ActivateRequest {
                without_backtest: false,
                version: shadow.id.clone(),
                expect: String::new(),
            },
            Some("rui"),
        ))
        .await
        .unwrap();
        let enforce = stage(SHADOW_RULES.replace("\"shadow\"", "\"enforce\""), "rui").await;
        assert!(
            enforce
                .changes
                .iter()
                .any(|c| c.change == "mode" && c.blocks_more),
            "{:?}",
            enforce.changes
        );
        let own = r
            .activate(req(
                rpb::ActivateRequest {
                    without_backtest: false,
                    version: enforce.id.clone(),
                    expect: shadow.id.clone(),
                },
                Some("rui"),
            ))
            .await
            .unwrap_err();
        assert_eq!(own.code(), Code::PermissionDenied);
        r.activate(req(
            rpb::ActivateRequest {
                without_backtest: false,
                version: enforce.id.clone(),
                expect: shadow.id.clone(),
            },
            Some("apo"),
        ))
        .await
        .unwrap();
        // Enforced: the fourth call in a minute from one caller is blocked.
        let codes: Vec<u16> = (0..5)
            .map(|_| call_status(e.udp_addr, "+77015559999", &mut n))
            .collect();
        assert_eq!(codes.last(), Some(&603), "{codes:?}");
    });
}

#[test]
fn of_two_racing_pushes_the_second_fails_and_names_the_version_that_won() {
    let dir = TempDir::new("publish-cas");
    let e = start(config(&dir));
    let addr = e.control_addr.unwrap();
    rt().block_on(async {
        let ch = channel(addr).await;
        push(&ch, Some("root"), "blocklist", "+77015550001\n", "v0", true)
            .await
            .unwrap();
        // Both expect v1 to be the newest; they race.
        let a: String = (0..20_000).map(|i| format!("+7701600{i:04}\n")).collect();
        let b: String = (0..20_000).map(|i| format!("+7701700{i:04}\n")).collect();
        let (ra, rb) = tokio::join!(
            push(&ch, Some("rui"), "blocklist", &a, "v1", false),
            push(&ch, Some("ria"), "blocklist", &b, "v1", false),
        );
        let (won, lost) = match (ra, rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("exactly one push must win: {other:?}"),
        };
        let won = won.version.unwrap();
        assert_eq!(won.id, "v2");
        assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
        assert!(
            lost.message().contains("v2") && lost.message().contains(&won.author),
            "{}",
            lost.message()
        );
        // An activation that expects the wrong version in force loses too.
        let l = ListServiceClient::new(ch.clone())
            .activate(req(
                lpb::ActivateRequest {
                    list: "blocklist".into(),
                    version: "v2".into(),
                    expect: "v0".into(),
                },
                Some("root"),
            ))
            .await
            .unwrap_err();
        assert_eq!(l.code(), Code::Aborted);
        assert!(l.message().contains("v1"), "{}", l.message());
        // Nothing of the loser was kept: v1 and v2 only, v1 in force.
        let versions = ListServiceClient::new(ch.clone())
            .list_versions(req(
                lpb::ListVersionsRequest {
                    list: "blocklist".into(),
                },
                Some("ana"),
            ))
            .await
            .unwrap()
            .into_inner()
            .versions;
        let ids: Vec<(&str, bool)> = versions.iter().map(|v| (v.id.as_str(), v.active)).collect();
        assert_eq!(ids, [("v2", false), ("v1", true)]);
        let dir = dir.path().join("data/published/lists/blocklist");
        let files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files.iter().filter(|f| f.ends_with(".list")).count(),
            2,
            "{files:?}"
        );
        assert!(!files.iter().any(|f| f.ends_with(".incoming")), "{files:?}");
    });
}

#[test]
fn lookup_explains_a_range_hit_an_exact_hit_an_allowlisted_number_and_an_unlisted_one() {
    let dir = TempDir::new("publish-lookup");
    let e = start(config(&dir));
    let addr = e.control_addr.unwrap();
    rt().block_on(async {
        let ch = channel(addr).await;
        push(
            &ch,
            Some("root"),
            "blocklist",
            "+77015550001, reported by the bank\n+7702*, a range of SIM boxes\n",
            "",
            true,
        )
        .await
        .unwrap();
        push(
            &ch,
            Some("root"),
            "allowlist",
            "+77023334455, the bank's own line\n",
            "",
            true,
        )
        .await
        .unwrap();
        let mut l = ListServiceClient::new(ch.clone());
        let look = |n: &str| {
            let r = req(lpb::LookupRequest { number: n.into() }, Some("ana"));
            let mut l = l.clone();
            async move { l.lookup(r).await.unwrap().into_inner() }
        };
        // Exact, written nationally with spaces.
        let x = look("8 701 555 00 01").await;
        assert_eq!(x.normalized, "+77015550001");
        assert_eq!(x.hits.len(), 1, "{x:?}");
        let h = &x.hits[0];
        assert_eq!(
            (
                h.list.as_str(),
                h.source.as_str(),
                h.version.as_str(),
                h.r#match.as_str(),
                h.entry.as_str(),
                h.reason.as_str()
            ),
            (
                "blocklist",
                "published",
                "v1",
                "exact",
                "+77015550001",
                "reported by the bank"
            )
        );
        assert_eq!(x.as_caller.as_ref().unwrap().decision, "block");
        assert!(x.as_caller.unwrap().explanation.contains("blocklist"));
        // A range, written as a tel: URI.
        let r = look("tel:+77029990000").await;
        assert_eq!(r.hits.len(), 1, "{r:?}");
        assert_eq!(
            (r.hits[0].r#match.as_str(), r.hits[0].entry.as_str()),
            ("range", "+7702*")
        );
        assert_eq!(r.hits[0].reason, "a range of SIM boxes");
        assert_eq!(r.as_caller.unwrap().decision, "block");
        // In the range and on the allowlist: both hits, and let through.
        let a = look("+7 (702) 333-44-55").await;
        let lists: Vec<&str> = a.hits.iter().map(|h| h.list.as_str()).collect();
        assert_eq!(lists, ["blocklist", "allowlist"], "{a:?}");
        let caller = a.as_caller.unwrap();
        assert!(caller.allowlisted, "{caller:?}");
        assert_eq!(caller.decision, "allow");
        // On no list.
        let u = look("87071234567").await;
        assert!(u.hits.is_empty());
        assert_eq!(u.as_caller.unwrap().decision, "allow");
        assert_eq!(u.as_callee.unwrap().decision, "allow");
        assert_eq!(u.snapshot, e.lists.load().version.to_string());
        // Not a number at all: a clear error.
        let bad = l
            .lookup(req(
                lpb::LookupRequest {
                    number: "hello".into(),
                },
                Some("ana"),
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
    });
}

/// `control_addr=Some(127.0.0.1:PORT)` from the "kuzet serving" line.
fn control_of(w: &Watched) -> SocketAddr {
    let line = w
        .log
        .iter()
        .rev()
        .find(|l| l.contains("kuzet serving"))
        .expect("serving line");
    line.split("control_addr=Some(")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no control address in {line:?}"))
}

#[test]
fn after_sigkill_kuzet_comes_back_with_the_active_versions() {
    let dir = TempDir::new("publish-restart");
    let root = hash_token(&token_of("root"));
    let toml = format!(
        r#"
[server]
udp_workers = 1
[rules]
max_tracked_numbers = 10000
[store]
dir = "data"
[publishing]
lists = ["blocklist"]
rules = true
[[control.tokens]]
name = "root"
role = "admin"
sha256 = "{root}"
"#
    );
    let cfg = dir.write("kuzet.toml", &toml);
    let cfg = cfg.to_str().unwrap().to_string();
    let w = Watched::start(&["--config", &cfg], dir.path());
    let addr = control_of(&w);
    let snapshot = rt().block_on(async {
        let ch = channel(addr).await;
        push(&ch, Some("root"), "blocklist", "+77015550001\n", "", true)
            .await
            .unwrap();
        let v2 = push(&ch, Some("root"), "blocklist", "+77015550002\n", "v1", true)
            .await
            .unwrap();
        assert!(v2.activated);
        let mut r = RuleServiceClient::new(ch.clone());
        let staged = r
            .stage(req(
                rpb::StageRequest {
                    text: Some(rpb::RuleText {
                        name: "r.toml".into(),
                        toml: SHADOW_RULES.into(),
                    }),
                    expect: String::new(),
                    note: String::new(),
                },
                Some("root"),
            ))
            .await
            .unwrap()
            .into_inner();
        let a = r
            .activate(req(
                rpb::ActivateRequest {
                    without_backtest: false,
                    version: staged.version.unwrap().id,
                    expect: String::new(),
                },
                Some("root"),
            ))
            .await
            .unwrap()
            .into_inner();
        a.snapshot
    });
    let mut n = 0;
    assert_eq!(call_status(w.addr, "+77015550002", &mut n), 603);
    assert_eq!(call_status(w.addr, "+77015550001", &mut n), 302);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &w.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = w.wait_exit();
    let w = Watched::start(&["--config", &cfg], dir.path());
    let line = w
        .log
        .iter()
        .find(|l| l.contains("lists loaded"))
        .expect("a lists loaded line")
        .clone();
    // The same versions in force: the same content digest.
    let digest = snapshot.split('.').nth(1).unwrap();
    assert!(line.contains(digest), "{line} / {snapshot}");
    assert_eq!(call_status(w.addr, "+77015550002", &mut n), 603);
    assert_eq!(call_status(w.addr, "+77015550001", &mut n), 302);
    let addr = control_of(&w);
    rt().block_on(async {
        let ch = channel(addr).await;
        let v = ListServiceClient::new(ch.clone())
            .list_versions(req(
                lpb::ListVersionsRequest {
                    list: "blocklist".into(),
                },
                Some("root"),
            ))
            .await
            .unwrap()
            .into_inner()
            .versions;
        let flags: Vec<(&str, bool, bool)> = v
            .iter()
            .map(|v| (v.id.as_str(), v.active, v.previous))
            .collect();
        assert_eq!(flags, [("v2", true, false), ("v1", false, true)]);
    });
}

/// Runs the `kuzet` binary with `args` and the admin's token; returns its
/// exit code, stdout and stderr.
fn cli(addr: SocketAddr, who: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(args)
        .args(["--control", &addr.to_string()])
        .env("KUZET_TOKEN", token_of(who))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_pushes_diffs_looks_up_and_stages_what_calls_then_meet() {
    let dir = TempDir::new("publish-cli");
    let e = start(config(&dir));
    let addr = e.control_addr.unwrap();
    let mut n = 0;
    let file = dir.write("block.txt", "# v1\n+77015550001, bank report\n+7705*\n");
    let (code, out, err) = cli(
        addr,
        "root",
        &[
            "lists",
            "push",
            file.to_str().unwrap(),
            "--list",
            "blocklist",
            "--activate",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("v1"), "{out}");
    assert_eq!(call_status(e.udp_addr, "+77015550001", &mut n), 603);
    assert_eq!(call_status(e.udp_addr, "+77051234567", &mut n), 603);
    // A bad third line: exit 2, the file and line named, nothing changed.
    let bad = dir.write("bad.txt", "+77015550002\n+77015550003\nseven\n");
    let (code, out, err) = cli(
        addr,
        "root",
        &[
            "lists",
            "push",
            bad.to_str().unwrap(),
            "--list",
            "blocklist",
            "--activate",
        ],
    );
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains(":3:") && err.contains("seven"), "{err}");
    let v2 = dir.write("block2.txt", "+77015550001, bank report\n+77015550009\n");
    let (code, out, err) = cli(
        addr,
        "rui",
        &[
            "lists",
            "push",
            v2.to_str().unwrap(),
            "--list",
            "blocklist",
            "--expect",
            "v1",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = cli(
        addr,
        "ana",
        &["lists", "diff", "--list", "blocklist", "v1", "v2"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("+77015550009") && out.contains("+7705*"),
        "{out}"
    );
    let (code, out, err) = cli(addr, "ana", &["lists", "versions", "--list", "blocklist"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("v1") && out.contains("v2") && out.contains("root"),
        "{out}"
    );
    let (code, out, err) = cli(addr, "ana", &["lists", "lookup", "8 705 123 45 67"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("+7705*") && out.contains("block"), "{out}");
    // v2 adds a number, so it blocks more: the rule author cannot put it
    // in force, and the CLI says an approver must.
    let (code, _, err) = cli(
        addr,
        "rui",
        &["lists", "activate", "--list", "blocklist", "v2"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("approver"), "{err}");
    assert_eq!(call_status(e.udp_addr, "+77015550009", &mut n), 302);
    let (code, out, err) = cli(
        addr,
        "apo",
        &["lists", "activate", "--list", "blocklist", "v2"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(call_status(e.udp_addr, "+77015550009", &mut n), 603);
    let (code, out, err) = cli(addr, "root", &["lists", "rollback", "--list", "blocklist"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(call_status(e.udp_addr, "+77015550009", &mut n), 302);
    // Rules: validated by the running kuzet, staged, put in force.
    let rules = dir.write("rules.toml", SHADOW_RULES);
    let (code, out, err) = cli(addr, "rui", &["rules", "validate", rules.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("velocity_1m"), "{out}");
    let broken = dir.write("broken.toml", "[[rule]]\nid = 3\n");
    let (code, _, err) = cli(
        addr,
        "rui",
        &["rules", "validate", broken.to_str().unwrap()],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken.toml"), "{err}");
    let (code, out, err) = cli(addr, "rui", &["rules", "stage", rules.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = cli(addr, "rui", &["rules", "activate", "v1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = cli(addr, "ana", &["rules", "versions"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("v1"), "{out}");
    // v2 enforces the shadow rule: the diff says it blocks more, the rule
    // author cannot put it in force, an approver can, and the author
    // rolls back to v1 (which blocks less) alone.
    let enforce = dir.write(
        "enforce.toml",
        &SHADOW_RULES.replace("\"shadow\"", "\"enforce\""),
    );
    let (code, out, err) = cli(
        addr,
        "rui",
        &[
            "rules",
            "stage",
            enforce.to_str().unwrap(),
            "--expect",
            "v1",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = cli(addr, "ana", &["rules", "diff", "v1", "v2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("velocity_1m") && out.contains("blocks more"),
        "{out}"
    );
    let (code, _, err) = cli(addr, "rui", &["rules", "activate", "v2"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("approver"), "{err}");
    let (code, out, err) = cli(addr, "apo", &["rules", "activate", "v2", "--expect", "v1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let codes: Vec<u16> = (0..5)
        .map(|_| call_status(e.udp_addr, "+77015558888", &mut n))
        .collect();
    assert_eq!(codes.last(), Some(&603), "{codes:?}");
    let (code, out, err) = cli(addr, "rui", &["rules", "rollback"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let codes: Vec<u16> = (0..5)
        .map(|_| call_status(e.udp_addr, "+77015557777", &mut n))
        .collect();
    assert!(codes.iter().all(|c| *c == 302), "{codes:?}");
}

#[test]
fn a_file_fed_list_refuses_pushes_and_a_config_feeding_one_list_both_ways_is_refused() {
    let dir = TempDir::new("publish-files");
    let mut cfg = test_config();
    cfg.control.tokens = tokens();
    let e = start(cfg);
    rt().block_on(async {
        let ch = channel(e.control_addr.unwrap()).await;
        let r = push(&ch, Some("root"), "blocklist", "+77015550001\n", "", true)
            .await
            .unwrap_err();
        assert_eq!(r.code(), Code::FailedPrecondition, "{r:?}");
        assert!(
            r.message().contains("fed by files") && r.message().contains("[publishing] lists"),
            "{}",
            r.message()
        );
        let r = RuleServiceClient::new(ch.clone())
            .list_versions(req(rpb::ListVersionsRequest {}, Some("root")))
            .await
            .unwrap_err();
        assert_eq!(r.code(), Code::FailedPrecondition, "{r:?}");
    });
    let mut both = config(&dir);
    both.lists.files[ListId::Block] = vec![dir.write("b.txt", "+77015550001\n").into()];
    let err = both.check("kuzet.toml").unwrap_err().to_string();
    assert!(
        err.contains("blocklist") && err.contains("never both"),
        "{err}"
    );
    let mut both = config(&dir);
    both.rules.file = Some("rules.toml".into());
    let err = both.check("kuzet.toml").unwrap_err().to_string();
    assert!(err.contains("[rules] file"), "{err}");
}

#[test]
fn a_broken_file_fed_list_does_not_keep_a_published_version_out_of_force() {
    let dir = TempDir::new("publish-broken-file");
    let mut cfg = config(&dir);
    let flag = dir.write("flag.txt", "+77015550100\n");
    cfg.lists.files[ListId::Flag] = vec![flag.clone().into()];
    let e = start(cfg);
    // The operator's flaglist file breaks, and stays broken.
    let tmp = dir.write("flag.tmp", "+77015550100\nnot a number\n");
    std::fs::rename(&tmp, &flag).unwrap();
    crate::common::wait("the broken file refused", || {
        (e.metrics.value("list_reload_failures_total") >= Some(1)).then_some(())
    });
    let mut n = 0;
    rt().block_on(async {
        let ch = channel(e.control_addr.unwrap()).await;
        let v1 = push(&ch, Some("root"), "blocklist", "+77015550001\n", "", true)
            .await
            .unwrap();
        assert!(v1.activated, "{v1:?}");
    });
    assert_eq!(call_status(e.udp_addr, "+77015550001", &mut n), 603);
}
