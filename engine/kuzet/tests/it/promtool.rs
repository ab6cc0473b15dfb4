//! The monitoring files under deploy/: the Prometheus alert rules, their
//! unit tests and the example scrape config go through `promtool` (Debian
//! package `prometheus`, installed by `scripts/install-deps.sh`; a
//! missing promtool fails the test): `check rules`, `test rules` (every
//! alert fires on series made for it and stays quiet on a healthy node)
//! and `check config`. The Grafana dashboard is parsed as JSON and must
//! be importable as is (a datasource variable, no fixed datasource uid).
//! Dashboard and rules may use only the metric names of the /metrics
//! spec listed in [`SPEC`], and a running engine must serve every one of
//! them, so a metric renamed in the code breaks here and not silently in
//! a dashboard panel or an alert that never fires.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::operations::http_get;

/// The metric names of the /metrics spec, as exposed (counters with
/// `_total`; histograms by their base name).
const SPEC: &[&str] = &[
    // Counters.
    "kuzet_sip_requests_total",
    "kuzet_sip_responses_total",
    "kuzet_invites_total",
    "kuzet_invite_retransmissions_total",
    "kuzet_transactions_untracked_total",
    "kuzet_verdict_allow_total",
    "kuzet_verdict_flag_total",
    "kuzet_verdict_block_total",
    "kuzet_verdict_redirect_total",
    "kuzet_rules_shadow_differs_total",
    "kuzet_verdict_log_dropped_total",
    "kuzet_verdicts_logged_total",
    "kuzet_store_dropped_total",
    "kuzet_store_records_total",
    "kuzet_store_write_errors_total",
    "kuzet_store_retired_total",
    "kuzet_register_delivered_total",
    "kuzet_register_retries_total",
    "kuzet_register_dead_letters_total",
    "kuzet_outcome_events_total",
    "kuzet_failopen_overload_total",
    "kuzet_failopen_internal_total",
    "kuzet_sip_unparseable_total",
    "kuzet_sip_bad_request_total",
    "kuzet_send_errors_total",
    "kuzet_worker_panics_total",
    "kuzet_list_reloads_total",
    "kuzet_list_reload_failures_total",
    "kuzet_list_reloads_abandoned_total",
    "kuzet_tcp_refused_total",
    "kuzet_tcp_connections_total",
    "kuzet_rule_hits_total",
    // Histograms.
    "kuzet_call_service_seconds",
    "kuzet_stage_seconds",
    // Gauges.
    "kuzet_list_entries",
    "kuzet_lists_generation",
    "kuzet_lists_loaded_timestamp_seconds",
    "kuzet_record_queue_used_bytes",
    "kuzet_record_queue_capacity_bytes",
    "kuzet_record_queue_reserved_bytes",
    "kuzet_store_pressure",
    "kuzet_verdict_ids_withheld_total",
    "kuzet_store_writable",
    "kuzet_outbox_pending",
    "kuzet_outbox_dead_letters",
    "kuzet_tcp_connections_open",
    "kuzet_ready",
    "kuzet_sip_sockets_bound",
    "kuzet_build_info",
];

/// The histograms of [`SPEC`], whose series carry a suffix.
const HISTOGRAMS: &[&str] = &["kuzet_call_service_seconds", "kuzet_stage_seconds"];

fn read(rel: &str) -> String {
    read_repo(rel)
}

fn promtool_bin() -> PathBuf {
    tool("promtool", "prometheus")
}

/// Runs promtool from the repository root; fails with its output unless
/// it succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new(promtool_bin())
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("promtool cannot run: {e}"));
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    promtool(&["check", "rules", "deploy/prometheus/kuzet-alerts.yml"]);
    promtool(&["test", "rules", "deploy/prometheus/kuzet-alerts.test.yml"]);
}

#[test]
fn example_prometheus_config_checks() {
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
}

/// Every `kuzet_…` name in `text`, histogram series reduced to the
/// histogram's name. kuzet's names have no `:` (that is for recording
/// rules), so a colon after a name in prose ends it.
fn kuzet_metrics(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("kuzet_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_name) {
            let name = &tail[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| HISTOGRAMS.contains(b))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        rest = &tail[len..];
    }
    out
}

fn not_in_spec(used: &BTreeSet<String>) -> Vec<&String> {
    used.iter()
        .filter(|m| !SPEC.contains(&m.as_str()))
        .collect()
}

/// Panels, with those inside collapsed rows.
fn all_panels(panels: &[Value], into: &mut Vec<Value>) {
    for p in panels {
        into.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            all_panels(inner, into);
        }
    }
}

#[test]
fn grafana_dashboard_is_importable_and_uses_only_spec_metrics() {
    let d: Value = serde_json::from_str(&read("deploy/grafana/kuzet.json"))
        .expect("deploy/grafana/kuzet.json is JSON");
    assert!(
        d["title"].as_str().is_some_and(|t| !t.is_empty()),
        "a title"
    );
    assert_eq!(d["uid"], "kuzet");
    let top = d["panels"].as_array().expect("panels");
    assert!(!top.is_empty(), "no panels");

    // Importable as is: the Prometheus datasource is a variable, and the
    // node variable lists the instances that serve kuzet_build_info.
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(
        instance["definition"],
        "label_values(kuzet_build_info, instance)"
    );
    assert_eq!(instance["datasource"]["uid"], "${datasource}");

    let mut panels = Vec::new();
    all_panels(top, &mut panels);
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut queries = 0;
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("a numeric panel id")),
            "panel id of {title} repeated"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for t in targets {
            let expr = t["expr"].as_str().expect("an expr");
            let names = kuzet_metrics(expr);
            assert!(
                !names.is_empty(),
                "panel {title}: {expr} uses no kuzet metric"
            );
            assert!(
                not_in_spec(&names).is_empty(),
                "panel {title}: {expr} uses {:?}, not in the spec",
                not_in_spec(&names)
            );
            used.extend(names);
            queries += 1;
        }
    }
    assert!(queries > 20, "only {queries} queries");
    for key in [
        "kuzet_invites_total",
        "kuzet_call_service_seconds",
        "kuzet_store_dropped_total",
        "kuzet_outbox_pending",
        "kuzet_ready",
    ] {
        assert!(used.contains(key), "no panel shows {key}");
    }
}

#[test]
fn alert_rules_use_only_spec_metrics() {
    let rules = read("deploy/prometheus/kuzet-alerts.yml");
    let used = kuzet_metrics(&rules);
    assert!(used.len() > 10, "{used:?}");
    assert!(
        not_in_spec(&used).is_empty(),
        "kuzet-alerts.yml names {:?}, not in the spec",
        not_in_spec(&used)
    );
}

/// The metric of each sample line of an exposition, `_total`, `_bucket`
/// and the like included.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_running_engine_serves_every_spec_metric() {
    let d = TempDir::new("promtool-spec");
    d.write("block.txt", "+77011112233,fraud desk report\n");
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![d.path().join("block.txt").into()];
    let eng = start(cfg);
    let admin = eng.admin_addr.expect("the admin address is on by default");
    // One blocked call, so the rule-hit family has a series.
    let c = client();
    let port = c.local_addr().unwrap().port();
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("87011112233", "87015550000", "callid-promtool-spec", port),
    );
    assert_eq!(status(&r), 603, "{r}");
    // The rule hit and the histograms are folded in shortly after the
    // call: poll until every name is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, text) = http_get(admin, "/metrics");
        assert_eq!(code, 200, "{text}");
        let have = exposed(&text);
        let missing: Vec<&str> = SPEC
            .iter()
            .copied()
            .filter(|m| {
                if HISTOGRAMS.contains(m) {
                    !have.contains(&format!("{m}_bucket"))
                } else {
                    !have.contains(*m)
                }
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics lacks {missing:?} of the spec:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eng.stop();
}
