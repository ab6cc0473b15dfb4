//! Deploy files: checked with the tools that would run them.
//!
//! The systemd unit goes through `systemd-analyze verify` (which must
//! print nothing about it) and its user through `systemd-sysusers` in a
//! scratch root; the unit's system call filter is expanded with
//! `systemd-analyze syscall-filter` and must allow the calls kuzet makes.
//! The Kubernetes manifests are parsed as YAML (by PyYAML through
//! python3, rather than a YAML crate added for this alone) and checked
//! for what running kuzet there needs; the kuzet.toml their ConfigMap
//! carries is loaded the way `kuzet run` loads it, lists and rule file
//! included.
//! The Containerfile cannot be built here: it gets a structural check,
//! tied to the ConfigMap and the manifests. The tools come from
//! `scripts/install-deps.sh`; a missing one fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use crate::common::{read_repo, repo, TempDir};

fn read(rel: &str) -> String {
    read_repo(rel)
}

/// The command line kuzet runs with in every deployment: the config in
/// /etc/kuzet, the store in /var/lib/kuzet.
const RUN_ARGS: [&str; 5] = [
    "run",
    "--config",
    "/etc/kuzet/kuzet.toml",
    "--data",
    "/var/lib/kuzet",
];

/// A tool's output; panics if it cannot be started.
fn tool(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("{what} cannot run ({e}): run scripts/install-deps.sh (Debian package systemd)")
    })
}

/// `KEY=VALUE` lines of one section of a unit file, in order.
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('[') {
            inside = l == format!("[{section}]");
        } else if inside && !l.is_empty() && !l.starts_with('#') {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn unit_value<'a>(keys: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    keys.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The system calls of a traced kuzet run (see below).
const TRACED_SYSCALLS: &str = "accept4 access arch_prctl bind brk clock_nanosleep clone3 close \
     epoll_create1 epoll_ctl epoll_wait eventfd2 execve exit exit_group \
     fcntl flock fsync ftruncate futex getcwd geteuid getpid getrandom \
     getsockname gettid ioctl listen lseek madvise mkdir mmap mprotect \
     mremap munmap newfstatat openat poll prctl pread64 prlimit64 pwrite64 \
     read recvfrom recvmmsg rseq rt_sigaction rt_sigprocmask rt_sigreturn \
     sched_getaffinity sched_setscheduler sendmmsg sendto set_robust_list \
     set_tid_address setpriority setsockopt shutdown sigaltstack socket \
     socketpair statx unlink write writev";

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read("deploy/systemd/kuzet.service");
    let service = unit_section(&unit, "Service");
    let one = |key: &str| -> &str {
        let v = unit_value(&service, key);
        assert_eq!(v.len(), 1, "{key}= set once in [Service]: {v:?}");
        v[0]
    };
    let exec = one("ExecStart");
    assert_eq!(exec, format!("/usr/bin/kuzet {}", RUN_ARGS.join(" ")));
    // The paths on the command line are the directories systemd makes.
    assert_eq!(one("StateDirectory"), "kuzet");
    assert_eq!(one("ConfigurationDirectory"), "kuzet");
    assert!(one("ExecReload").ends_with("kill -HUP $MAINPID"));
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(
        one("RestartPreventExitStatus"),
        "2",
        "a bad config is exit 2"
    );
    for (key, want) in [
        ("User", "kuzet"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictRealtime", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(one(key), want, "{key}=");
    }
    let nofile: u64 = one("LimitNOFILE").parse().unwrap();
    assert!(
        nofile >= 16384,
        "LimitNOFILE={nofile}: room for TCP connections"
    );
    // kuzet names its node after /proc/sys/kernel/hostname.
    assert!(unit_value(&service, "ProcSubset").is_empty());

    // systemd-analyze verify checks that ExecStart's binary exists: point
    // it at the binary this build made, and change nothing else.
    let dir = TempDir::new("unit");
    let bin = env!("CARGO_BIN_EXE_kuzet");
    let text = unit.replace("ExecStart=/usr/bin/kuzet ", &format!("ExecStart={bin} "));
    assert_ne!(text, unit);
    let path = dir.write("kuzet.service", &text);
    let out = tool(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        "systemd-analyze",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_us: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("kuzet.service"))
        .collect();
    assert!(
        out.status.success() && about_us.is_empty(),
        "systemd-analyze verify: {}\n{stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    // The system call filter allows every call kuzet makes: these are
    // the ones a run under `strace -f` made (start with the ConfigMap's
    // config, a blocked INVITE, SIGHUP, SIGTERM), among them setpriority
    // and sched_setscheduler (SCHED_IDLE) for its background threads. Left
    // out: fchown, which SQLite makes only when running as root.
    let groups = syscall_groups();
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for f in unit_value(&service, "SystemCallFilter") {
        let (set, list) = match f.strip_prefix('~') {
            Some(rest) => (&mut denied, rest),
            None => (&mut allowed, f),
        };
        for name in list.split_whitespace() {
            expand(name, &groups, set);
        }
    }
    assert!(allowed.len() > 100, "an allow-list: {allowed:?}");
    for call in TRACED_SYSCALLS.split_whitespace() {
        assert!(
            allowed.contains(call) && !denied.contains(call),
            "the unit's SystemCallFilter= forbids {call}"
        );
    }
}

/// Every group `systemd-analyze syscall-filter` knows, with its members
/// (system calls and nested groups).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = tool(
        Command::new("systemd-analyze").arg("syscall-filter"),
        "systemd-analyze",
    );
    assert!(out.status.success());
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for l in String::from_utf8(out.stdout).unwrap().lines() {
        if l.starts_with('@') {
            current = Some(l.trim().to_string());
            groups.entry(l.trim().to_string()).or_default();
        } else if !l.starts_with(' ') {
            // A blank line, or the closing "# Unlisted system calls".
            current = None;
        } else if let Some(g) = &current {
            let item = l.trim();
            if !item.is_empty() && !item.starts_with('#') {
                groups.get_mut(g).unwrap().push(item.to_string());
            }
        }
    }
    assert!(groups.contains_key("@system-service"), "{groups:?}");
    groups
}

fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, into: &mut BTreeSet<String>) {
    if name.starts_with('@') {
        let members = groups
            .get(name)
            .unwrap_or_else(|| panic!("no system call group {name}"));
        for m in members {
            expand(m, groups, into);
        }
    } else {
        into.insert(name.to_string());
    }
}

#[test]
fn sysusers_creates_the_units_user() {
    let root = TempDir::new("sysusers");
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let conf = repo().join("deploy/systemd/kuzet.sysusers.conf");
    let out = tool(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.path().display()))
            .arg(&conf),
        "systemd-sysusers",
    );
    assert!(
        out.status.success(),
        "systemd-sysusers: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("kuzet:"))
        .expect("a kuzet user")
        .split(':')
        .collect();
    assert_eq!(user[5], "/var/lib/kuzet", "home: the data directory");
    assert!(user[6].ends_with("nologin"), "no login shell: {}", user[6]);
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("kuzet:")), "{group}");
    let unit = unit_section(&read("deploy/systemd/kuzet.service"), "Service");
    assert_eq!(unit_value(&unit, "User"), ["kuzet"]);
    assert_eq!(unit_value(&unit, "Group"), ["kuzet"]);
}

/// A python3 that has PyYAML.
fn python_with_yaml() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", "import yaml"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no python3 with PyYAML: run scripts/install-deps.sh (Debian package python3-yaml)")
}

/// Every document of a YAML file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = Command::new(python_with_yaml())
        .args([
            "-c",
            "import json, sys, yaml\n\
             with open(sys.argv[1]) as f:\n    \
             json.dump([d for d in yaml.safe_load_all(f) if d is not None], sys.stdout)",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} is not YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `v` at a dotted path (keys, or indexes for arrays).
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    cur
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v}"))
}

fn list<'a>(v: &'a Value, path: &str) -> &'a Vec<Value> {
    at(v, path)
        .as_array()
        .unwrap_or_else(|| panic!("{path} is not a list in {v}"))
}

/// The objects `kubectl apply -k deploy/k8s` would send, by kind.
fn k8s_objects() -> BTreeMap<String, Value> {
    let dir = repo().join("deploy/k8s");
    let kust = yaml_docs(&dir.join("kustomization.yaml"));
    assert_eq!(kust.len(), 1);
    let listed: BTreeSet<String> = list(&kust[0], "resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");
    assert!(
        at(&kust[0], "namespace").is_null(),
        "namespace-agnostic: kubectl -n picks it"
    );
    let mut objects = BTreeMap::new();
    for file in &listed {
        for doc in yaml_docs(&dir.join(file)) {
            let kind = text(&doc, "kind").to_string();
            assert!(at(&doc, "apiVersion").is_string(), "{file}: apiVersion");
            assert!(at(&doc, "metadata.name").is_string(), "{file}: a name");
            assert!(
                at(&doc, "metadata.namespace").is_null(),
                "{file}: no namespace of its own"
            );
            assert!(
                objects.insert(kind.clone(), doc).is_none(),
                "one {kind} only"
            );
        }
    }
    objects
}

/// The container port a probe or Service names (by name or number), as
/// (number, protocol).
fn container_port(container: &Value, port: &Value, protocol: &str) -> u64 {
    let ports = list(container, "ports");
    let found = ports.iter().find(|p| {
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        proto == protocol
            && match port {
                Value::String(name) => p["name"].as_str() == Some(name),
                Value::Number(n) => p["containerPort"].as_u64() == n.as_u64(),
                _ => false,
            }
    });
    found.unwrap_or_else(|| panic!("no {protocol} container port {port} in {ports:?}"))
        ["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn kubernetes_manifests_run_kuzet_as_required() {
    let objects = k8s_objects();
    let sts = objects.get("StatefulSet").expect("a StatefulSet");
    let svc = objects.get("Service").expect("a Service");
    let cm = objects.get("ConfigMap").expect("a ConfigMap");

    // One pod, one single-writer store.
    assert_eq!(at(sts, "spec.replicas"), 1);
    assert_eq!(text(sts, "spec.serviceName"), text(svc, "metadata.name"));
    let pod = at(sts, "spec.template");
    let labels = at(pod, "metadata.labels").as_object().unwrap();
    for (k, v) in at(sts, "spec.selector.matchLabels").as_object().unwrap() {
        assert_eq!(labels.get(k), Some(v), "the selector picks the pod");
    }
    let spec = at(pod, "spec");
    let containers = list(spec, "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: Vec<&str> = list(c, "args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // The same command, but the data in a directory kuzet makes inside the
    // claim (the claim's root is group-writable under fsGroup).
    assert_eq!(args[..4], RUN_ARGS[..4]);
    assert_eq!(args[4], "/var/lib/kuzet/data");

    // The Service carries SIP over UDP and TCP on 5060, and the admin port.
    for (k, v) in at(svc, "spec.selector").as_object().unwrap() {
        assert_eq!(labels.get(k), Some(v), "the Service selects the pod");
    }
    let mut served = BTreeSet::new();
    for p in list(svc, "spec.ports") {
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        let target = if p["targetPort"].is_null() {
            &p["port"]
        } else {
            &p["targetPort"]
        };
        let to = container_port(c, target, proto);
        assert_eq!(Some(to), p["port"].as_u64(), "{p}: same port inside");
        served.insert((to, proto.to_string()));
    }
    for want in [(5060, "UDP"), (5060, "TCP"), (9860, "TCP")] {
        assert!(
            served.contains(&(want.0, want.1.to_string())),
            "the Service serves {want:?}: {served:?}"
        );
    }

    // Probes on the admin address.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = at(c, &format!("{probe}.httpGet"));
        assert_eq!(text(get, "path"), path, "{probe}");
        assert_eq!(container_port(c, &get["port"], "TCP"), 9860, "{probe}");
    }
    let ann = at(pod, "metadata.annotations");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9860");
    assert_eq!(ann["prometheus.io/path"], "/metrics");

    // Volumes: the claim at the data directory, the ConfigMap at the
    // config's folder, a writable /tmp under a read-only root.
    let mounts: BTreeMap<&str, &str> = list(c, "volumeMounts")
        .iter()
        .map(|m| (text(m, "mountPath"), text(m, "name")))
        .collect();
    let claims = list(sts, "spec.volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    assert_eq!(
        mounts.get("/var/lib/kuzet"),
        Some(&text(&claims[0], "metadata.name"))
    );
    assert_eq!(list(&claims[0], "spec.accessModes")[0], "ReadWriteOnce");
    let volume = |name: &str| -> &Value {
        list(spec, "volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let config = volume(mounts["/etc/kuzet"]);
    assert_eq!(text(config, "configMap.name"), text(cm, "metadata.name"));
    assert!(volume(mounts["/tmp"])["emptyDir"].is_object());

    // Security: non-root, read-only root, only NET_BIND_SERVICE, the
    // runtime's seccomp profile, and a way to bind 5060 unprivileged.
    let psc = at(spec, "securityContext");
    let csc = at(c, "securityContext");
    let either = |key: &str| {
        if csc[key].is_null() {
            &psc[key]
        } else {
            &csc[key]
        }
    };
    assert_eq!(either("runAsNonRoot"), true);
    assert_eq!(either("seccompProfile")["type"], "RuntimeDefault");
    let uid = either("runAsUser").as_u64().expect("a numeric runAsUser");
    assert_eq!(uid, containerfile_uid(), "the image's user");
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_eq!(at(csc, "capabilities.drop"), &serde_json::json!(["ALL"]));
    assert_eq!(
        at(csc, "capabilities.add"),
        &serde_json::json!(["NET_BIND_SERVICE"])
    );
    let port_start = list(psc, "sysctls")
        .iter()
        .find(|s| s["name"] == "net.ipv4.ip_unprivileged_port_start")
        .expect("net.ipv4.ip_unprivileged_port_start: a non-root kuzet binds 5060");
    assert!(text(port_start, "value").parse::<u16>().unwrap() <= 5060);
    assert!(psc["fsGroup"].is_u64(), "the claim is writable by the user");
    // The claim's root is group-writable under fsGroup: kuzet keeps its
    // data in a directory of its own inside it.
    let args: Vec<&str> = list(c, "args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let data = args
        .iter()
        .position(|a| *a == "--data")
        .map(|i| args[i + 1])
        .expect("--data");
    assert!(
        data.starts_with("/var/lib/kuzet/") && data.len() > "/var/lib/kuzet/".len(),
        "{data}"
    );

    assert_eq!(text(c, "resources.requests.memory"), "512Mi");
    assert_eq!(text(c, "resources.limits.memory"), "1Gi");
}

/// The files of the ConfigMap (kuzet's /etc/kuzet in Kubernetes and in
/// the image), each a copy of a file in the repository.
const CONFIG_FILES: [(&str, &str); 5] = [
    ("kuzet.toml", "deploy/container/kuzet.toml"),
    ("blocklist.txt", "deploy/lists/blocklist.txt"),
    ("allowlist.txt", "deploy/lists/allowlist.txt"),
    ("flaglist.txt", "deploy/lists/flaglist.txt"),
    ("rules.toml", "deploy/rules/default.toml"),
];

/// Set to 1 to rewrite deploy/k8s/configmap.yaml from [`CONFIG_FILES`].
const UPDATE_VAR: &str = "KUZET_UPDATE_DEPLOY";

/// deploy/k8s/configmap.yaml as it should be: its own text up to `data:`,
/// then each of [`CONFIG_FILES`] as a literal block.
fn configmap_yaml_from_sources(current: &str) -> String {
    let at = current
        .find("\ndata:\n")
        .expect("configmap.yaml ends with its data: section");
    let mut out = current[..at + "\ndata:\n".len()].to_string();
    for (key, source) in CONFIG_FILES {
        let body = read(source);
        assert!(
            body.ends_with('\n') && !body.ends_with("\n\n") && !body.starts_with([' ', '\n']),
            "{source}: a literal block keeps it only with one final newline and no leading blank"
        );
        out += &format!("  {key}: |\n");
        for line in body.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out += &format!("    {line}\n");
            }
        }
    }
    out
}

/// The ConfigMap's files, as kuzet would see them in /etc/kuzet.
fn configmap_files() -> BTreeMap<String, String> {
    let objects = k8s_objects();
    let cm = objects.get("ConfigMap").expect("a ConfigMap");
    at(cm, "data")
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn configmap_config_loads_with_its_lists_and_rules() {
    // The ConfigMap carries copies of the container's config and the
    // repository's lists and rules; a change to one of those must reach it.
    let path = repo().join("deploy/k8s/configmap.yaml");
    let current = std::fs::read_to_string(&path).unwrap();
    let fresh = configmap_yaml_from_sources(&current);
    if fresh != current {
        if std::env::var(UPDATE_VAR).as_deref() == Ok("1") {
            std::fs::write(&path, &fresh).unwrap();
        } else {
            let files = configmap_files();
            let stale: Vec<&str> = CONFIG_FILES
                .iter()
                .filter(|(key, source)| {
                    files.get(*key).map(String::as_str) != Some(read(source).as_str())
                })
                .map(|(_, source)| *source)
                .collect();
            panic!(
                "deploy/k8s/configmap.yaml is out of date (with {stale:?}): rerun with \
                 {UPDATE_VAR}=1 to rewrite it from the files it copies"
            );
        }
    }
    // And what a YAML parser reads from it is those files, byte for byte.
    let files = configmap_files();
    let keys: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(keys, CONFIG_FILES.iter().map(|(k, _)| *k).collect());
    for (key, source) in CONFIG_FILES {
        assert!(
            files[key] == read(source),
            "the ConfigMap's {key} is not {source}"
        );
    }

    let dir = TempDir::new("configmap");
    for (name, body) in &files {
        dir.write(name, body);
    }
    let path = dir.path().join("kuzet.toml");
    let cfg = kuzet::config::Config::from_file(&path)
        .unwrap_or_else(|e| panic!("kuzet refuses the ConfigMap's kuzet.toml: {e}"));
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:5060");
    assert_eq!(cfg.admin.listen.to_string(), "0.0.0.0:9860");
    assert!(cfg.admin.enabled);
    assert_eq!(cfg.control.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(cfg.data_dir(), Path::new("/var/lib/kuzet"));

    // What `kuzet run` loads at start: every list file and the rule file,
    // from the ConfigMap, none compiled in.
    let sources = cfg.sources();
    assert!(sources.embedded.is_empty());
    assert_eq!(sources.rule_file, Some(dir.path().join("rules.toml")));
    let plan = cfg.plan().unwrap();
    let (set, stats) = kuzet_control::lists::load(&sources, &plan, &AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("the ConfigMap's lists or rules do not load: {e}"));
    for name in ["blocklist.txt", "allowlist.txt", "flaglist.txt"] {
        let want = dir.path().join(name).display().to_string();
        let entries = stats
            .per_file
            .iter()
            .find(|(f, _)| *f == want)
            .unwrap_or_else(|| panic!("{name} is not loaded: {:?}", stats.per_file));
        assert!(entries.1 > 0, "{name} has entries");
    }
    assert!(
        set.rules.rules.iter().any(|r| !r.builtin),
        "rules.toml's rules"
    );

    // And the binary in the image says the same offline.
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["rules", "check"])
        .arg(dir.path().join("rules.toml"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kuzet rules check --config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Containerfile's instructions (continuation lines joined), without
/// comments: (INSTRUCTION, arguments).
fn containerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for l in read("deploy/Containerfile").lines() {
        let t = l.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(t);
                let (i, rest) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((i.to_ascii_uppercase(), rest.trim().to_string()));
                pending.clear();
            }
        }
    }
    out
}

fn containerfile_uid() -> u64 {
    let users: Vec<String> = containerfile()
        .into_iter()
        .filter(|(i, _)| i == "USER")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(users.len(), 1, "{users:?}");
    let uid: u64 = users[0]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "not root");
    uid
}

#[test]
fn containerfile_builds_in_two_stages_and_runs_like_the_manifests() {
    let ins = containerfile();
    let all = |name: &str| -> Vec<&str> {
        ins.iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let from = all("FROM");
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    let (build_image, stage) = from[0].split_once(" AS ").expect("a named build stage");
    assert!(build_image.contains("rust:"), "{build_image}");
    // The same Debian release, so the binary's glibc is there at run time.
    let release = |image: &str| -> String {
        let tag = image.rsplit(':').next().unwrap();
        tag.split('-')
            .find(|p| p.bytes().all(|b| b.is_ascii_lowercase()) && *p != "slim")
            .unwrap_or_else(|| panic!("no Debian release in {image}"))
            .to_string()
    };
    assert!(from[1].contains("debian:"), "{}", from[1]);
    assert_eq!(release(build_image), release(from[1]));
    assert!(all("RUN")
        .iter()
        .any(|r| r.contains("cargo build --release --locked -p kuzet")));
    let copy_from = format!("--from={}", stage.trim());
    assert!(
        all("COPY")
            .iter()
            .any(|c| c.starts_with(&copy_from)
                && c.ends_with("/target/release/kuzet /usr/bin/kuzet")),
        "the binary comes from the build stage"
    );

    // /etc/kuzet in the image holds what the ConfigMap holds, from the
    // same files.
    let mut image = BTreeMap::new();
    for c in all("COPY").iter().filter(|c| !c.starts_with("--")) {
        let parts: Vec<&str> = c.split_whitespace().collect();
        let (dest, sources) = parts.split_last().unwrap();
        for s in sources {
            let target = if dest.ends_with('/') {
                format!("{dest}{}", s.rsplit('/').next().unwrap())
            } else {
                dest.to_string()
            };
            if let Some(name) = target.strip_prefix("/etc/kuzet/") {
                image.insert(name.to_string(), s.to_string());
            }
        }
    }
    let want: BTreeMap<String, String> = CONFIG_FILES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(image, want, "/etc/kuzet in the image and in the ConfigMap");

    containerfile_uid();
    let exposed: BTreeSet<&str> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    for p in ["5060/udp", "5060/tcp", "9860/tcp", "50051/tcp"] {
        assert!(exposed.contains(p), "EXPOSE {p}: {exposed:?}");
    }
    assert_eq!(all("VOLUME"), ["/var/lib/kuzet"]);
    assert_eq!(all("ENTRYPOINT"), [r#"["kuzet"]"#]);
    let cmd: Vec<String> = serde_json::from_str(all("CMD")[0]).expect("CMD in exec form");
    assert_eq!(cmd, RUN_ARGS);

    // The build context keeps the workspace and leaves out build output.
    let ignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        ignored.contains("target") && ignored.contains(".git"),
        "{ignored:?}"
    );
    for kept in [
        "engine",
        "rules",
        "sim",
        "benches",
        "fuzz",
        "deploy",
        "Cargo.lock",
    ] {
        assert!(!ignored.contains(kept), "{kept} is needed to build");
    }
}

/// `systemd-analyze verify` on `text` written as `name` (with ExecStart's
/// kuzet pointed at this build's binary): passes and says nothing of it.
fn verify_unit(name: &str, text: &str) {
    let dir = TempDir::new("unit");
    let bin = env!("CARGO_BIN_EXE_kuzet");
    let text = text.replace("ExecStart=/usr/bin/kuzet ", &format!("ExecStart={bin} "));
    let path = dir.write(name, &text);
    let out = tool(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        "systemd-analyze",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_us: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
    assert!(
        out.status.success() && about_us.is_empty(),
        "systemd-analyze verify {name}: {}\n{stderr}",
        out.status
    );
}

#[test]
fn cluster_units_verify_and_a_node_keeps_the_single_units_hardening() {
    let single = unit_section(&read("deploy/systemd/kuzet.service"), "Service");
    let template_text = read("deploy/cluster/kuzet@.service");
    let template = unit_section(&template_text, "Service");
    let but_where = |v: &[(String, String)]| -> Vec<(String, String)> {
        v.iter()
            .filter(|(k, _)| k != "ExecStart" && k != "StateDirectory")
            .cloned()
            .collect()
    };
    assert_eq!(
        but_where(&template),
        but_where(&single),
        "kuzet@.service's [Service] is kuzet.service's but for ExecStart and StateDirectory"
    );
    // Instance 2 is kuzet-2, with addresses and data of its own.
    let exec = unit_value(&template, "ExecStart");
    assert_eq!(
        exec[0].replace("%i", "2"),
        "/usr/bin/kuzet run --config /etc/kuzet/cluster.toml --node kuzet-2 \
         --listen 127.0.0.1:5072 --control 127.0.0.1:50052 --admin 127.0.0.1:9862 \
         --data /var/lib/kuzet/2"
    );
    assert_eq!(unit_value(&template, "StateDirectory"), ["kuzet/%i"]);
    // The dispatcher list names the template's three nodes.
    let list: Vec<String> = read("deploy/cluster/kuzet.list")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let want: Vec<String> = (1..=3)
        .map(|i| format!("1 sip:127.0.0.1:507{i} 0 0"))
        .collect();
    assert_eq!(list, want);
    verify_unit("kuzet@1.service", &template_text);
    // The router runs Debian's Kamailio with kuzet's router.cfg and list.
    let router_text = read("deploy/cluster/kuzet-router.service");
    let router = unit_section(&router_text, "Service");
    let exec = unit_value(&router, "ExecStart");
    assert!(
        exec[0].starts_with("/usr/sbin/kamailio -DD -E -f /etc/kuzet/router.cfg ")
            && exec[0].ends_with("KZ_DSLIST=\"/etc/kuzet/kuzet.list\""),
        "{exec:?}"
    );
    verify_unit("kuzet-router.service", &router_text);
}

#[test]
fn cluster_compose_runs_three_named_nodes_behind_the_router() {
    let docs = yaml_docs(&repo().join("deploy/cluster/compose.yaml"));
    let c = &docs[0];
    let services = at(c, "services").as_object().expect("services is a map");
    for want in [
        "redis", "postgres", "router", "kuzet-1", "kuzet-2", "kuzet-3",
    ] {
        assert!(services.contains_key(want), "compose has no {want}");
    }
    let dispatcher = text(c, "configs.dispatcher.content");
    for i in 1..=3 {
        let name = format!("kuzet-{i}");
        let cmd: Vec<&str> = list(c, &format!("services.{name}.command"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let node = cmd.iter().position(|a| *a == "--node").expect("--node");
        assert_eq!(cmd[node + 1], name, "{name}'s --node");
        assert_eq!(cmd[..3], ["run", "--config", "/etc/kuzet/cluster.toml"]);
        assert!(
            dispatcher.contains(&format!("1 sip:{name}:5060 0 0")),
            "the dispatcher list names {name}"
        );
        assert_eq!(
            text(c, &format!("services.{name}.build.dockerfile")),
            "deploy/Containerfile"
        );
    }
    // The router carries kuzet's router.cfg and listens where callers call.
    assert_eq!(text(c, "configs.router.file"), "../kamailio/router.cfg");
    assert_eq!(list(c, "services.router.ports")[0], "5060:5060/udp");
    // Debian's packages, nothing else, for the servers.
    let build = text(c, "services.redis.build.dockerfile_inline");
    assert!(
        build.starts_with("FROM debian:") && build.contains("redis-server postgresql kamailio")
    );
    // The nodes' config is deploy/cluster/kuzet.toml, naming the shared
    // servers by their service names.
    let cluster = text(c, "configs.cluster.content");
    let shipped = read("deploy/cluster/kuzet.toml")
        .replace(
            "postgres://kuzet@127.0.0.1:5432/kuzet",
            "postgres://kuzet@postgres:5432/postgres",
        )
        .replace("redis://127.0.0.1:6379/", "redis://redis:6379/");
    assert_eq!(cluster.trim_end(), shipped.trim_end());
    assert!(cluster.contains("redis://redis:6379/") && cluster.contains("@postgres:5432/"));
}
