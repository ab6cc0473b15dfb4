//! The walls between crates, checked the way CI would: the data plane's
//! dependency tree holds no slow crate, the scoring core holds no runtime,
//! the simulator never links the engine, and every crate but `kuzet-net`
//! forbids `unsafe`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The crate names in `cargo tree -e normal -p <package>` (normal
/// dependencies only: what ships, not what tests or builds use).
fn tree(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
            "-p",
            package,
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_none_of(package: &str, forbidden: &[&str]) {
    let names = tree(package);
    assert!(names.iter().any(|n| n == package), "{names:?}");
    let found: Vec<&String> = names
        .iter()
        .filter(|n| forbidden.contains(&n.as_str()))
        .collect();
    assert!(found.is_empty(), "{package} links {found:?}");
}

#[test]
fn the_data_plane_links_no_rpc_database_or_http_crate() {
    assert_none_of(
        "kuzet-dataplane",
        &[
            "tonic", "prost", "rusqlite", "redis", "hyper", "axum", "reqwest",
        ],
    );
}

#[test]
fn the_scoring_core_links_no_runtime_network_or_sip() {
    assert_none_of(
        "kuzet-rules",
        &[
            "tokio",
            "kuzet-sip",
            "kuzet-net",
            "socket2",
            "dashmap",
            "tonic",
            "rusqlite",
        ],
    );
}

#[test]
fn the_simulator_never_links_the_engine() {
    assert_none_of("kuzet-sim", &["kuzet-dataplane", "kuzet-control", "kuzet"]);
}

#[test]
fn every_crate_but_net_forbids_unsafe() {
    let roots = [
        "rules/src/lib.rs",
        "engine/sip/src/lib.rs",
        "engine/dataplane/src/lib.rs",
        "engine/control/src/lib.rs",
        "engine/kuzet/src/lib.rs",
        "engine/kuzet/src/main.rs",
        "sim/src/lib.rs",
        "sim/src/main.rs",
        "benches/src/lib.rs",
    ];
    for r in roots {
        let text = std::fs::read_to_string(workspace().join(r)).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{r} does not forbid unsafe"
        );
    }
    let net = std::fs::read_to_string(workspace().join("engine/net/src/lib.rs")).unwrap();
    assert!(net.contains("#![allow(unsafe_code)]"));
}
