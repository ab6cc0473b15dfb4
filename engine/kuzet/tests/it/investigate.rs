//! The investigators' API as its users meet it: a running engine with a
//! store, real calls over UDP, then gRPC over TCP with each role's token,
//! and the `kuzet` command line against the binary.

use std::process::Command;

use kuzet::config::{ListEntry, TokenConfig};
use kuzet_api::investigation as pb;
use kuzet_api::investigation::investigation_service_client::InvestigationServiceClient;
use tonic::Code;

use crate::common::{ask, client, header, invite, start, status, test_config, TempDir, Watched};

const ROLES: [(&str, &str); 3] = [
    ("ana", "investigator"),
    ("rui", "rule-author"),
    ("root", "admin"),
];

fn token_of(name: &str) -> String {
    format!("kz_test_token_of_{name}")
}

fn tokens() -> Vec<TokenConfig> {
    crate::common::tokens_for(&ROLES, token_of)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

type Client = InvestigationServiceClient<tonic::transport::Channel>;

async fn connect(addr: std::net::SocketAddr) -> Client {
    InvestigationServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// Every RPC's status for one token: Ok or the refusal's code.
async fn try_all(c: &mut Client, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let mut out = Vec::new();
    let q = c
        .query_calls(with_token(pb::QueryCallsRequest::default(), token))
        .await
        .map(|_| ());
    out.push(("QueryCalls", code(q)));
    let e = match c
        .export_calls(with_token(pb::ExportCallsRequest::default(), token))
        .await
    {
        Ok(s) => {
            let mut s = s.into_inner();
            let mut r = Ok(());
            loop {
                match s.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            r
        }
        Err(e) => Err(e),
    };
    out.push(("ExportCalls", code(e)));
    let n = c
        .count_calls(with_token(pb::CountCallsRequest::default(), token))
        .await
        .map(|_| ());
    out.push(("CountCalls", code(n)));
    let l = c
        .list_incidents(with_token(pb::ListIncidentsRequest::default(), token))
        .await
        .map(|_| ());
    out.push(("ListIncidents", code(l)));
    let g = c
        .get_incident(with_token(
            pb::GetIncidentRequest {
                id: 1,
                max_calls: 10,
            },
            token,
        ))
        .await
        .map(|_| ());
    out.push(("GetIncident", code(g)));
    let a = c
        .read_audit(with_token(pb::ReadAuditRequest::default(), token))
        .await
        .map(|_| ());
    out.push(("ReadAudit", code(a)));
    out
}

#[test]
fn every_rpc_against_every_role_gets_the_expected_status_and_is_audited() {
    let dir = TempDir::new("access-matrix");
    let block = dir.write("block.txt", "+77011234567,bank fraud desk\n");
    let mut c = test_config();
    c.lists.files[kuzet_rules::ListId::Block] = vec![ListEntry::path(block)];
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join("data"));
    c.control.tokens = tokens();
    let k = start(c);
    let s = client();
    let port = s.local_addr().unwrap().port();
    let r = ask(
        &s,
        k.udp_addr,
        &invite("+77011234567", "+77020000001", "m-1", port),
    );
    assert_eq!(status(&r), 603);
    let addr = k.control_addr.expect("the control API is on");
    let rt = rt();
    // The recorder commits within a few milliseconds; wait for the call
    // to be queryable rather than sleeping.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    rt.block_on(async {
        let mut c = connect(addr).await;
        loop {
            let page = c
                .query_calls(with_token(
                    pb::QueryCallsRequest::default(),
                    Some(&token_of("ana")),
                ))
                .await
                .unwrap()
                .into_inner();
            if !page.calls.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the call was never recorded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });

    use Code::*;
    // GetIncident asks for incident 1: the blocked call's source.
    let expected: [(Option<String>, [Code; 6]); 5] = [
        (None, [Unauthenticated; 6]),
        (Some("kz_not_a_token".into()), [Unauthenticated; 6]),
        (
            Some(token_of("ana")),
            [Ok, Ok, Ok, Ok, Ok, PermissionDenied],
        ),
        (
            Some(token_of("rui")),
            [
                PermissionDenied,
                PermissionDenied,
                Ok,
                PermissionDenied,
                PermissionDenied,
                PermissionDenied,
            ],
        ),
        (Some(token_of("root")), [Ok; 6]),
    ];
    let audit = rt.block_on(async {
        let mut c = connect(addr).await;
        for (token, want) in &expected {
            let got = try_all(&mut c, token.as_deref()).await;
            let codes: Vec<Code> = got.iter().map(|(_, c)| *c).collect();
            assert_eq!(codes, want.to_vec(), "token {token:?}: {got:?}");
        }
        // A query refused for its content is audited with the reason.
        let bad = c
            .query_calls(with_token(
                pb::QueryCallsRequest {
                    filter: Some(pb::CallFilter {
                        number: "not a number".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Some(&token_of("ana")),
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), InvalidArgument);
        // A wrong form of bearer is no token at all.
        let mut r = tonic::Request::new(pb::QueryCallsRequest::default());
        r.metadata_mut()
            .insert("authorization", token_of("root").parse().unwrap());
        assert_eq!(c.query_calls(r).await.unwrap_err().code(), Unauthenticated);
        // An export's closing entry is written as its stream ends; wait
        // for both exports' to be there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let entries = c
                .read_audit(with_token(
                    pb::ReadAuditRequest {
                        page_size: 1000,
                        cursor: String::new(),
                    },
                    Some(&token_of("root")),
                ))
                .await
                .unwrap()
                .into_inner()
                .entries;
            let closed = entries
                .iter()
                .filter(|e| e.action == "ExportCalls" && e.outcome == "ok")
                .count();
            // Refusals are counted and written once a second.
            let refused: u64 = entries
                .iter()
                .filter(|e| e.who == "-" && e.action == "QueryCalls")
                .map(|e| e.count)
                .sum();
            if (closed == 2 && refused == 3) || std::time::Instant::now() > deadline {
                break entries;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    // Every request above is in the audit log with who, role and outcome;
    // the admin's final ReadAudit is written after it answered.
    let count = |who: &str, action: &str, outcome: &str| {
        audit
            .iter()
            .filter(|e| e.who == who && e.action == action && e.outcome == outcome)
            .map(|e| e.count.max(1) as usize)
            .sum::<usize>()
    };
    assert!(count("ana", "QueryCalls", "ok") >= 2);
    assert_eq!(count("ana", "ExportCalls", "ok"), 1);
    assert_eq!(count("ana", "ReadAudit", "denied"), 1);
    assert_eq!(count("rui", "CountCalls", "ok"), 1);
    assert_eq!(count("rui", "QueryCalls", "denied"), 1);
    assert_eq!(count("-", "QueryCalls", "unauthenticated"), 3);
    // The admin polled the log above: each read is audited too.
    assert!(count("root", "ReadAudit", "ok") >= 1);
    let invalid = audit
        .iter()
        .find(|e| e.who == "ana" && e.outcome.starts_with("invalid:"))
        .expect("the refused query is audited");
    assert!(
        invalid.filter.contains("not a number"),
        "{}",
        invalid.filter
    );
    assert_eq!(count("ana", "GetIncident", "ok"), 1);
    assert_eq!(count("ana", "ListIncidents", "ok"), 1);
    let export = audit
        .iter()
        .find(|e| e.who == "root" && e.action == "ExportCalls" && e.outcome == "ok")
        .unwrap();
    assert_eq!((export.role.as_str(), export.rows), ("admin", 1));
    // Each export was audited before its first row left.
    assert_eq!(count("root", "ExportCalls", "started"), 1);
    // A rule author counts by rule and time, never by number.
    let (_, denied) = rt.block_on(async {
        let mut c = connect(addr).await;
        let r = c
            .count_calls(with_token(
                pb::CountCallsRequest {
                    filter: Some(pb::CallFilter {
                        number: "+77011234567".into(),
                        ..Default::default()
                    }),
                    bucket_secs: 60,
                },
                Some(&token_of("rui")),
            ))
            .await;
        ((), r.unwrap_err().code())
    });
    assert_eq!(denied, PermissionDenied);
    let q = audit
        .iter()
        .find(|e| e.who == "ana" && e.action == "QueryCalls" && e.outcome == "ok")
        .unwrap();
    assert_eq!(q.role, "investigator");
    assert!(q.filter.contains("\"number\":\"\""), "{}", q.filter);
    assert!(audit.iter().all(|e| e.time_us > 0));
    k.stop();
}

fn kuzet_cli(args: &[&str], token: Option<&str>) -> (Option<i32>, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kuzet"));
    c.args(args).env_remove("KUZET_TOKEN");
    if let Some(t) = token {
        c.env("KUZET_TOKEN", t);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_finds_calls_by_number_in_any_form_and_one_call_by_its_verdict_id() {
    let dir = TempDir::new("cli-calls");
    dir.write("block.txt", "+77011234567,bank fraud desk\n");
    let mut toml = String::from("[lists]\nblocklist = [\"block.txt\"]\n");
    for t in tokens() {
        toml += &format!(
            "[[control.tokens]]\nname = {:?}\nrole = {:?}\nsha256 = {:?}\n",
            t.name, t.role, t.sha256
        );
    }
    dir.write("kuzet.toml", &toml);
    let w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    let control = w
        .log
        .iter()
        .find(|l| l.contains("kuzet serving"))
        .and_then(|l| l.split("control_addr=Some(").nth(1))
        .and_then(|r| r.split(')').next())
        .expect("the control address in the serving line")
        .to_string();
    let s = client();
    let port = s.local_addr().unwrap().port();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = ask(
            &s,
            w.addr,
            &invite(
                "87011234567",
                &format!("+7702000000{i}"),
                &format!("cli-{i}"),
                port,
            ),
        );
        assert_eq!(status(&r), 603);
        let reason = header(&r, "Reason").unwrap();
        let at = reason.find("verdict ").unwrap() + 8;
        ids.push(reason[at..at + 24].to_string());
    }
    let other = ask(
        &s,
        w.addr,
        &invite("+77015550000", "+77020000009", "cli-other", port),
    );
    assert_eq!(status(&other), 302);
    let ana = token_of("ana");
    // Recorded within milliseconds; poll the CLI itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let csv = loop {
        let (code, out, err) = kuzet_cli(
            &[
                "calls",
                "--control",
                &control,
                "--number",
                "8 701 123 45 67",
                "--since",
                "1h",
                "--format",
                "csv",
            ],
            Some(&ana),
        );
        assert_eq!(code, Some(0), "{err}");
        if out.lines().count() == 4 || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("time,verdict_id,"), "{csv}");
    for (line, id) in lines[1..].iter().zip(ids.iter().rev()) {
        assert!(
            // A cell that starts with + is written '+ (no formula).
            line.contains(id) && line.contains(",block,603,100,'+77011234567,"),
            "{line}"
        );
    }

    let (code, out, err) = kuzet_cli(
        &["calls", "--control", &control, "--verdict-id", &ids[1]],
        Some(&ana),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("verdict   {}", ids[1])), "{out}");
    assert!(
        out.contains("blocklist: caller listed (bank fraud desk)"),
        "{out}"
    );
    assert!(out.contains("Call-ID: cli-1"), "{out}");

    let (code, out, err) = kuzet_cli(
        &[
            "calls",
            "--control",
            &control,
            "--decision",
            "block",
            "--format",
            "jsonl",
            "--all",
        ],
        Some(&token_of("root")),
    );
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["rules"][0]["id"] == "blocklist"));

    // No token: the CLI asks kuzet as its own user over the data
    // directory's socket, or, with no kuzet there, says how to reach one.
    let (code, _, err) = kuzet_cli(
        &["calls", "--control", &control, "--data", "/nonexistent"],
        None,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--token"), "{err}");
    let data = dir.path().join("data");
    let (code, out, err) = kuzet_cli(
        &[
            "calls",
            "--data",
            data.to_str().unwrap(),
            "--verdict-id",
            &ids[0],
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("verdict   {}", ids[0])), "{out}");
    // With a wrong token over TCP: refused.
    let (code, _, err) = kuzet_cli(&["calls", "--control", &control], Some("kz_wrong"));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("KUZET_TOKEN"), "{err}");
    let (code, _, err) = kuzet_cli(&["audit", "--control", &control], Some(&ana));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("needs the role admin"), "{err}");
    let (code, _, err) = kuzet_cli(
        &["calls", "--control", &control, "--number", "not a number"],
        Some(&ana),
    );
    assert_eq!(code, Some(2), "{err}");
    // Three blocked calls of one source: an incident, with its calls.
    let (code, out, err) = kuzet_cli(&["incidents", "list", "--control", &control], Some(&ana));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("source") && out.contains("+77011234567") && out.contains("blocked 3"),
        "{out}"
    );
    let id = out.split_whitespace().next().unwrap().to_string();
    let (code, out, err) = kuzet_cli(
        &["incidents", "show", &id, "--control", &control],
        Some(&ana),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("victims   +77020000000, +77020000001, +77020000002"),
        "{out}"
    );
    assert_eq!(
        out.matches(",block,").count() + out.matches(" block ").count(),
        3,
        "{out}"
    );
    // Refusals reach the audit log within a second (counted per second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, out, err) =
            kuzet_cli(&["audit", "--control", &control], Some(&token_of("root")));
        assert_eq!(code, Some(0), "{err}");
        if out
            .lines()
            .any(|l| l.contains("ana") && l.contains("ReadAudit") && l.contains("denied"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, _, _) = w.stop();
    assert_eq!(code, Some(0));
}
