//! Every snapshot version in force while the journal was written, kept
//! beside it, so a replay judges each call under its own version however
//! the lists and rules changed since: `versions/SEQ.DIGEST.json` names a
//! version's layers by content, and `layers/HEX.list` (a list's canonical
//! form, [`kuzet_rules::NumberList::write_canonical`]) and
//! `layers/HEX.rules` (a rule file's text) hold them once however many
//! versions share them. A version is kept while calls of the journal's
//! window name it: its manifest's modification time is renewed whenever a
//! calls file naming it is closed, and manifests older than `keep_hours`
//! go with their calls, then the layers no manifest names.
//!
//! The rules are built again from their text against the numbering plan
//! and `[verdict]` policy of the config the replay runs with; the digest
//! each version carries tells when those changed since.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kuzet_rules::ruleset::RuleSet;
use kuzet_rules::snapshot::Version;
use kuzet_rules::{ByList, ListId, ListPolicy, ListSet, NumberList, NumberingPlan};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A version's manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// `SEQ.DIGEST`.
    pub version: String,
    /// Each list's content file (hex digest), by list name.
    pub lists: BTreeMap<String, String>,
    /// The rule file's content file (none: the built-in rules).
    pub rules: Option<String>,
    /// The rule file's name.
    pub rules_name: String,
}

/// The archive's folders and what is in them.
pub struct Archive {
    versions: PathBuf,
    layers: PathBuf,
    known: HashSet<String>,
    /// Lists already kept, by the address of their shared `Arc` (a layer
    /// no change touched is the same `Arc` in the next snapshot).
    by_ptr: HashMap<usize, (Arc<NumberList>, String)>,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` (0600, never through a link) by a hidden
/// file renamed into place.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn private_dir(p: &Path) -> io::Result<()> {
    kuzet_store::private::prepare_dir(p).map_err(io::Error::other)
}

impl Archive {
    /// The archive under the journal's `root`.
    pub fn new(root: &Path) -> io::Result<Archive> {
        let versions = root.join("versions");
        let layers = root.join("layers");
        private_dir(&versions)?;
        private_dir(&layers)?;
        let mut known = HashSet::new();
        for e in std::fs::read_dir(&versions)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_suffix(".json") {
                known.insert(v.to_string());
            }
        }
        Ok(Archive {
            versions,
            layers,
            known,
            by_ptr: HashMap::new(),
        })
    }

    /// Keeps `set`'s version if it is not kept yet; true when it was new.
    pub fn keep(&mut self, set: &ListSet) -> io::Result<bool> {
        let name = set.version.to_string();
        if self.known.contains(&name) {
            return Ok(false);
        }
        let mut m = Manifest {
            version: name.clone(),
            rules_name: set.rules.source.to_string(),
            ..Manifest::default()
        };
        let mut seen = HashSet::new();
        for (l, list) in set.lists.iter() {
            let ptr = Arc::as_ptr(list) as usize;
            seen.insert(ptr);
            let digest = match self.by_ptr.get(&ptr) {
                Some((_, d)) => d.clone(),
                None => {
                    let mut bytes = Vec::new();
                    list.write_canonical(|c| bytes.extend_from_slice(c));
                    let d = hex(&Sha256::digest(&bytes)[..16]);
                    let path = self.layers.join(format!("{d}.list"));
                    if !path.exists() {
                        write_new(&path, &bytes)?;
                    }
                    self.by_ptr.insert(ptr, (list.clone(), d.clone()));
                    d
                }
            };
            m.lists.insert(l.name().to_string(), digest);
        }
        // Only the layers of the newest snapshot are worth remembering.
        self.by_ptr.retain(|p, _| seen.contains(p));
        if let Some(text) = &set.rules.text {
            let d = hex(&Sha256::digest(text.as_bytes())[..16]);
            let path = self.layers.join(format!("{d}.rules"));
            if !path.exists() {
                write_new(&path, text.as_bytes())?;
            }
            m.rules = Some(d);
        }
        let json = serde_json::to_vec_pretty(&m).map_err(io::Error::other)?;
        write_new(&self.versions.join(format!("{name}.json")), &json)?;
        self.known.insert(name);
        Ok(true)
    }

    /// Renews a kept version: calls naming it were just written.
    pub fn touch(&self, version: &str) {
        let path = self.versions.join(format!("{version}.json"));
        if let Ok(f) = std::fs::OpenOptions::new().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Removes the versions no call of the last `keep` names, then the
    /// layers no version left names.
    pub fn prune(&mut self, keep: Duration) {
        let now = SystemTime::now();
        let mut wanted = HashSet::new();
        let Ok(dir) = std::fs::read_dir(&self.versions) else {
            return;
        };
        for e in dir.flatten() {
            let path = e.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            let Some(v) = name.strip_suffix(".json") else {
                continue;
            };
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if age > keep {
                if std::fs::remove_file(&path).is_ok() {
                    self.known.remove(v);
                }
                continue;
            }
            if let Some(m) = read_manifest(&path) {
                wanted.extend(m.lists.into_values());
                wanted.extend(m.rules);
            }
        }
        for (_, (_, d)) in self.by_ptr.iter() {
            wanted.insert(d.clone());
        }
        let Ok(dir) = std::fs::read_dir(&self.layers) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or("");
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|a| a < Duration::from_secs(3600));
            if !wanted.contains(stem) && !young {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn read_manifest(path: &Path) -> Option<Manifest> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `SEQ.DIGEST` read back.
pub fn parse_version(s: &str) -> Option<Version> {
    let (seq, d) = s.split_once('.')?;
    if d.len() != 32 {
        return None;
    }
    let mut digest = [0u8; 16];
    for (i, b) in digest.iter_mut().enumerate() {
        *b = u8::from_str_radix(d.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Version {
        seq: seq.parse().ok()?,
        digest,
    })
}

/// What a replay reads kept versions with.
pub struct Loader {
    root: PathBuf,
    plan: NumberingPlan,
    policy: ListPolicy,
    lists: HashMap<String, Arc<NumberList>>,
    sets: HashMap<String, Option<Arc<ListSet>>>,
}

impl Loader {
    /// Reads the versions kept under the journal's `root`, building rules
    /// with `plan` and `policy`.
    pub fn new(root: &Path, plan: NumberingPlan, policy: ListPolicy) -> Loader {
        Loader {
            root: root.to_path_buf(),
            plan,
            policy,
            lists: HashMap::new(),
            sets: HashMap::new(),
        }
    }

    /// The plan rules are built with.
    pub fn plan(&self) -> &NumberingPlan {
        &self.plan
    }

    /// The policy rules are built with.
    pub fn policy(&self) -> &ListPolicy {
        &self.policy
    }

    /// The snapshot of `version`, built once; `None` when it was not kept
    /// (or cannot be read: said at WARN once).
    pub fn get(&mut self, version: &str) -> Option<Arc<ListSet>> {
        if let Some(s) = self.sets.get(version) {
            return s.clone();
        }
        let got = match self.build(version) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::warn!(version, error = %e, "a version the journal names cannot be built again: its calls are not replayed");
                None
            }
        };
        self.sets.insert(version.to_string(), got.clone());
        got
    }

    fn list(&mut self, digest: &str) -> Result<Arc<NumberList>, String> {
        if let Some(l) = self.lists.get(digest) {
            return Ok(l.clone());
        }
        if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{digest} is not a layer's name"));
        }
        let path = self.root.join("layers").join(format!("{digest}.list"));
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let l = Arc::new(
            NumberList::from_canonical(&bytes, &self.plan)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        );
        self.lists.insert(digest.to_string(), l.clone());
        Ok(l)
    }

    fn build(&mut self, version: &str) -> Result<ListSet, String> {
        let v = parse_version(version).ok_or("not a version (SEQ.DIGEST)")?;
        let path = self.root.join("versions").join(format!("{version}.json"));
        let m = read_manifest(&path)
            .ok_or_else(|| format!("{} is missing or unreadable", path.display()))?;
        let rules = match &m.rules {
            Some(d) => {
                if d.len() != 32 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{d} is not a layer's name"));
                }
                let p = self.root.join("layers").join(format!("{d}.rules"));
                let text =
                    std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                RuleSet::from_toml_str(&text, &m.rules_name, &self.plan, &self.policy)
                    .map_err(|e| e.to_string())?
            }
            None => RuleSet::builtin(&self.policy, &self.plan),
        };
        let mut set = ListSet::new(ByList::default(), rules);
        for l in ListId::ALL {
            if let Some(d) = m.lists.get(l.name()) {
                set.lists[l] = self.list(d)?;
            }
        }
        set.version = v;
        Ok(set)
    }
}

/// The lists of `set` with `l` replaced: a candidate's list versions.
pub fn with_lists(
    set: &ListSet,
    lists: &[(ListId, Arc<NumberList>)],
    rules: Option<&Arc<RuleSet>>,
) -> ListSet {
    let mut out = set.clone();
    for (l, list) in lists {
        out.lists[*l] = list.clone();
    }
    if let Some(r) = rules {
        out.rules = r.clone();
    }
    out
}
