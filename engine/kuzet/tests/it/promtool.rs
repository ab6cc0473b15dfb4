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
//!
//! `/metrics` negotiates its format: over real HTTP requests with the
//! `Accept` headers that curl, Prometheus 2 and 3 and people write, the
//! classic text (0.0.4) must pass `promtool check metrics` (its parser and
//! its lint), and OpenMetrics must pass [`check_openmetrics`], a reading
//! of the OpenMetrics rules (`# EOF` last, every family typed before its
//! samples and never split, counters' series `_total`, units as suffixes,
//! histograms cumulative up to `+Inf`), itself shown to refuse each fault.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
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
    "kuzet_answered_events_dropped_total",
    "kuzet_nbank_batches_applied_total",
    "kuzet_nbank_entries_applied_total",
    "kuzet_nbank_entries_expired_total",
    "kuzet_nbank_batches_rejected_signature_total",
    "kuzet_nbank_batches_rejected_key_total",
    "kuzet_nbank_batches_rejected_malformed_total",
    "kuzet_nbank_batches_rejected_replay_total",
    "kuzet_nbank_batches_rejected_gap_total",
    "kuzet_nbank_fetch_errors_total",
    "kuzet_nbank_alert_batches_applied_total",
    "kuzet_nbank_cases_opened_total",
    "kuzet_nbank_reports_queued_total",
    "kuzet_nbank_reports_delivered_total",
    "kuzet_nbank_reports_retries_total",
    "kuzet_nbank_reports_dead_lettered_total",
    // The call journal: served with or without [journal] (0 without).
    "kuzet_journal_dropped_total",
    "kuzet_journal_write_failed_total",
    "kuzet_journal_capped_total",
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
    // The National Bank's Centre: served with or without [nbank] (0 without).
    "kuzet_nbank_feed_configured",
    "kuzet_nbank_feed_staleness_seconds",
    "kuzet_nbank_feed_stale",
    "kuzet_nbank_feed_sequence",
    "kuzet_nbank_cases_open",
    "kuzet_nbank_cases_due_soon",
    "kuzet_nbank_cases_overdue",
    "kuzet_nbank_reports_pending",
    "kuzet_nbank_reports_dead_letters",
    "kuzet_nbank_reports_late",
    "kuzet_nbank_reports_oldest_pending_age_seconds",
    "kuzet_journal_on",
    "kuzet_journal_failing_seconds",
    // The journal's early warnings (0 until the first read).
    "kuzet_trend_findings",
    "kuzet_trend_last_read_timestamp_seconds",
    "kuzet_trend_last_read_duration_seconds",
    // Shared counts: served with or without [cluster] (0 without).
    "kuzet_cluster_configured",
    "kuzet_cluster_redis_up",
    "kuzet_cluster_replication_lag_seconds",
    "kuzet_cluster_deltas_pushed_total",
    "kuzet_cluster_deltas_merged_total",
    "kuzet_cluster_deltas_stale_total",
    "kuzet_cluster_deltas_refused_total",
    "kuzet_cluster_deltas_dropped_total",
    "kuzet_cluster_redis_errors_total",
    "kuzet_cluster_redis_cluster_rebuilds_total",
    // Singleton leases: served with or without [cluster] (0 without), by lease.
    "kuzet_lease_configured",
    "kuzet_lease_held",
    "kuzet_lease_token",
    "kuzet_lease_acquired_total",
    "kuzet_lease_lost_total",
    "kuzet_lease_fenced_total",
    // Shared published versions: served with or without them (0 without).
    "kuzet_versions_shared",
    "kuzet_versions_store_up",
    "kuzet_versions_behind_seconds",
    "kuzet_versions_fetched_total",
    "kuzet_versions_fetch_failures_total",
    "kuzet_versions_cas_lost_total",
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
        "kuzet_nbank_feed_staleness_seconds",
        "kuzet_nbank_batches_rejected_signature_total",
        "kuzet_nbank_cases_overdue",
        "kuzet_nbank_reports_oldest_pending_age_seconds",
        "kuzet_cluster_redis_up",
        "kuzet_cluster_replication_lag_seconds",
        "kuzet_cluster_deltas_dropped_total",
        "kuzet_lease_held",
        "kuzet_lease_fenced_total",
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

/// `GET path` over HTTP/1.1 with `Accept: accept` when given: (status,
/// the header section in lower case, body).
fn http_get_accepting(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin connects");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("a whole answer");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header section");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, head.to_ascii_lowercase(), body.to_string())
}

/// `promtool check metrics` on `text` (its stdin): the classic format's
/// parser and lint; fails with what it says.
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new(promtool_bin())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool cannot run: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the classic scrape ({}):\n{}{}\n--- the scrape:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sample's series name, labels (in order) and value.
type Sample = (String, Vec<(String, String)>, f64);

/// A sample line, read.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().ok_or("labels not closed")?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("a label value not quoted".into());
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().ok_or("label value not closed")?.1 {
                            '"' => break,
                            '\\' => match chars.next().ok_or("dangling escape")?.1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => return Err(format!("bad escape \\{c}")),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ')
        .next()
        .unwrap_or("");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("value {v:?} is no number"))?,
    };
    Ok((name.to_string(), labels, value))
}

/// Checks `text` against the OpenMetrics 1.0.0 text rules kuzet's
/// exposition must keep; the first fault found, with its line.
fn check_openmetrics(text: &str) -> Result<(), String> {
    let body = text
        .strip_suffix("# EOF\n")
        .or_else(|| text.strip_suffix("# EOF"))
        .ok_or("does not end with # EOF")?;
    // The family being read: name, type, and whether it had samples.
    let mut family: Option<(String, String)> = None;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    // Per histogram series (labels but `le`): last bucket value, and
    // whether `+Inf` closed it; then `_count` must equal it.
    let mut buckets: BTreeMap<String, (f64, bool)> = BTreeMap::new();
    let types = [
        "counter",
        "gauge",
        "histogram",
        "gaugehistogram",
        "summary",
        "info",
        "stateset",
        "unknown",
    ];
    for (n, line) in body.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line}", n + 1);
        if line.is_empty() {
            return Err(at("an empty line".into()));
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (what, name, rest) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            if family.as_ref().map(|f| f.0.as_str()) != Some(name) {
                if !seen.insert(name.to_string()) {
                    return Err(at(format!("family {name} split in two")));
                }
                family = Some((name.to_string(), String::new()));
            }
            let f = family.as_mut().unwrap();
            match what {
                "HELP" => {}
                "TYPE" => {
                    if !types.contains(&rest) {
                        return Err(at(format!("type {rest:?} is not an OpenMetrics type")));
                    }
                    if !f.1.is_empty() {
                        return Err(at("a second TYPE".into()));
                    }
                    if rest == "counter" && name.ends_with("_total") {
                        return Err(at("a counter family named with _total".into()));
                    }
                    f.1 = rest.to_string();
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{rest}")) {
                        return Err(at(format!("unit {rest} is not the name's suffix")));
                    }
                }
                "EOF" => return Err(at("# EOF before the end".into())),
                _ => return Err(at("not HELP, TYPE or UNIT".into())),
            }
            continue;
        }
        let (series, labels, value) = parse_sample(line).map_err(at)?;
        let Some((name, kind)) = family.as_ref().filter(|f| !f.1.is_empty()) else {
            return Err(at("a sample with no TYPE before it".into()));
        };
        let suffix = series
            .strip_prefix(name.as_str())
            .ok_or_else(|| at(format!("a sample outside family {name}")))?;
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("{series} in a {kind} family {name}")));
        }
        if kind == "histogram" {
            let key: Vec<String> = labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let key = key.join(",");
            if suffix == "_bucket" {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or_else(|| at("a bucket without le".into()))?;
                let b = buckets.entry(key).or_insert((0.0, false));
                if b.1 || value < b.0 {
                    return Err(at("buckets not cumulative up to +Inf".into()));
                }
                *b = (value, le.1 == "+Inf");
            } else if suffix == "_count" {
                // prometheus-client writes _count before the buckets: held
                // until the family ends.
                buckets
                    .entry(format!("count:{key}"))
                    .or_insert((value, true));
            }
        }
    }
    for (key, (v, closed)) in &buckets {
        if let Some(series) = key.strip_prefix("count:") {
            match buckets.get(series) {
                Some((inf, true)) if inf == v => {}
                _ => {
                    return Err(format!(
                        "histogram {series}: _count {v} is not its +Inf bucket"
                    ))
                }
            }
        } else if !closed {
            return Err(format!("histogram {key}: no +Inf bucket"));
        }
    }
    Ok(())
}

#[test]
fn the_openmetrics_checker_refuses_each_fault() {
    let good = "# HELP k_calls Calls.\n# TYPE k_calls counter\nk_calls_total 3\n\
                # HELP k_wait_seconds Wait.\n# TYPE k_wait_seconds histogram\n\
                # UNIT k_wait_seconds seconds\nk_wait_seconds_sum 0.5\nk_wait_seconds_count 2\n\
                k_wait_seconds_bucket{le=\"0.1\"} 1\nk_wait_seconds_bucket{le=\"+Inf\"} 2\n\
                # TYPE k_up gauge\nk_up{a=\"x\\\"y\"} 1\n# EOF\n";
    assert_eq!(check_openmetrics(good), Ok(()));
    let faults = [
        (good.replace("# EOF\n", ""), "# EOF"),
        (
            good.replace("k_calls_total 3", "k_calls 3"),
            "in a counter family",
        ),
        (
            good.replace("# TYPE k_calls counter\n", ""),
            "no TYPE before it",
        ),
        (
            good.replace("k_calls counter", "k_calls_total counter")
                .replace("# HELP k_calls ", "# HELP k_calls_total "),
            "a counter family named with _total",
        ),
        (
            good.replace(
                "# UNIT k_wait_seconds seconds",
                "# UNIT k_wait_seconds bytes",
            ),
            "not the name's suffix",
        ),
        (good.replace("le=\"0.1\"} 1", "le=\"0.1\"} 3"), "cumulative"),
        (
            good.replace("_count 2", "_count 5"),
            "is not its +Inf bucket",
        ),
        (good.replace("k_up{", "k_down{"), "outside family"),
        (
            good.replace("# EOF\n", "# TYPE k_calls gauge\nk_calls 1\n# EOF\n"),
            "split in two",
        ),
        (
            good.replace("k_up gauge", "k_up number"),
            "not an OpenMetrics type",
        ),
        (
            good.replace("\n# TYPE k_up", "\n\n# TYPE k_up"),
            "empty line",
        ),
    ];
    for (text, why) in faults {
        let got = check_openmetrics(&text);
        assert!(
            got.as_ref().is_err_and(|e| e.contains(why)),
            "{why:?} not found, got {got:?} for:\n{text}"
        );
    }
}

/// The series names of an exposition's samples (OpenMetrics `_created`
/// series left out: the classic format has none).
fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
        .filter(|n| !n.ends_with("_created"))
        .collect()
}

#[test]
fn metrics_negotiates_classic_text_and_openmetrics_over_http() {
    let d = TempDir::new("promtool-negotiate");
    d.write("block.txt", "+77011112233,fraud desk report\n");
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![d.path().join("block.txt").into()];
    let eng = start(cfg);
    let admin = eng.admin_addr.expect("the admin address is on by default");
    // One blocked call, so the labelled families have series.
    let c = client();
    let port = c.local_addr().unwrap().port();
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("87011112233", "87015550000", "negotiate", port),
    );
    assert_eq!(status(&r), 603, "{r}");

    const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let cases: &[(Option<&str>, &str)] = &[
        // curl and people.
        (None, CLASSIC),
        (Some("*/*"), CLASSIC),
        (Some("text/plain"), CLASSIC),
        (Some("text/plain;version=0.0.4"), CLASSIC),
        (Some("application/openmetrics-text"), OPENMETRICS),
        (Some("application/openmetrics-text; version=1.0.0"), OPENMETRICS),
        // Weights, not order, decide.
        (
            Some("application/openmetrics-text;q=0.2, text/plain;q=0.9"),
            CLASSIC,
        ),
        (
            Some("text/plain;q=0.3, application/openmetrics-text;q=0.8"),
            OPENMETRICS,
        ),
        (Some("text/plain;q=0, */*"), OPENMETRICS),
        // Prometheus 2.x, and 3.x by default: OpenMetrics first.
        (
            Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            OPENMETRICS,
        ),
        (
            Some("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"),
            OPENMETRICS,
        ),
        // Prometheus 3 with scrape_protocols: [PrometheusText0.0.4].
        (Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), CLASSIC),
    ];
    let mut classic = None;
    let mut openmetrics = None;
    for (accept, want) in cases {
        let (code, head, body) = http_get_accepting(admin, "/metrics", *accept);
        assert_eq!(code, 200, "Accept {accept:?}: {body}");
        assert!(
            head.contains(&format!("\r\ncontent-type: {want}\r\n")),
            "Accept {accept:?} should get {want}:\n{head}"
        );
        assert!(head.contains("\r\nvary: accept"), "{head}");
        if *want == CLASSIC {
            assert!(
                !body.contains("# EOF") && !body.contains("# UNIT"),
                "Accept {accept:?}: OpenMetrics lines in the classic text:\n{body}"
            );
            classic.get_or_insert(body);
        } else {
            check_openmetrics(&body)
                .unwrap_or_else(|e| panic!("Accept {accept:?}: not OpenMetrics: {e}\n{body}"));
            openmetrics.get_or_insert(body);
        }
    }
    let (classic, openmetrics) = (classic.unwrap(), openmetrics.unwrap());
    promtool_check_metrics(&classic);
    // The same series in both, and a counter's metadata on its series in
    // the classic text.
    assert_eq!(series_names(&classic), series_names(&openmetrics));
    assert!(
        classic.contains("# TYPE kuzet_invites_total counter\n"),
        "{classic}"
    );
    assert!(
        openmetrics.contains("# TYPE kuzet_invites counter\n"),
        "{openmetrics}"
    );
    assert!(
        openmetrics.contains("# UNIT kuzet_call_service_seconds seconds\n"),
        "{openmetrics}"
    );
    assert!(classic.contains("kuzet_rule_hits_total{rule=\"blocklist\",mode=\"enforce\"} 1\n"));
    eng.stop();
}
