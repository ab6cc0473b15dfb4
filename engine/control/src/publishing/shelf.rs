//! Published versions on disk: one shelf per published list and one for
//! the rules, each a folder of the data directory
//! (`published/lists/blocklist/`, `published/rules/`).
//!
//! A shelf holds its versions' contents, each in a file named by its
//! content digest (`<digest>.list`, `<digest>.toml`: two versions with the
//! same content share one file), and `versions.json`: every version's
//! metadata, which one is in force and which was before it. The index is
//! replaced whole (written beside, synced, renamed over, the folder
//! synced), so a crash leaves the old index or the new one, never half of
//! one; content is synced and renamed into place before the index names
//! it. Every file is made 0600 and opened without following links, like
//! the rest of the data directory.
//!
//! Old versions are pruned by count and age after each new one, never the
//! one in force, the one before it, or the newest.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The index's file name.
const INDEX: &str = "versions.json";

/// The largest index read back (thousands of versions' metadata).
const MAX_INDEX: u64 = 16 << 20;

/// One version's metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Meta {
    /// Its number: `v{id}`.
    pub id: u64,
    /// Hex of the content digest (lists: the publisher's list digest;
    /// rules: SHA-256 of the text), which names its content file.
    pub digest: String,
    /// The token that pushed or staged it.
    pub author: String,
    /// When, µs since the epoch.
    pub created_us: i64,
    /// Lists: exact numbers and ranges.
    pub exact: u64,
    /// Lists: ranges.
    pub ranges: u64,
    /// Lists: lines read, comments included.
    pub lines: u64,
    /// Entries added and removed against `base`.
    pub added: u64,
    /// See `added`.
    pub removed: u64,
    /// The version in force when it was made (`None`: none was).
    pub base: Option<u64>,
    /// The author's note.
    pub note: String,
    /// Rules: the file name the author gave.
    pub name: String,
    /// Who put it in force last, and when (µs).
    pub activated_by: String,
    /// See `activated_by`.
    pub activated_us: i64,
    /// Rules: backtests of this version, newest first (the evidence a
    /// promotion needs).
    pub backtests: Vec<super::backtest::Mark>,
}

impl Meta {
    /// `v7`.
    pub fn name(&self) -> String {
        format!("v{}", self.id)
    }
}

/// What `versions.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Index {
    /// The next version's number.
    pub next: u64,
    /// In force now.
    pub active: Option<u64>,
    /// In force before `active` (what a rollback restores).
    pub previous: Option<u64>,
    /// The publishing sequence of the last activation (see
    /// [`super::source::PublishedSource`]).
    pub activated_seq: u64,
    /// Every version kept, oldest first.
    pub versions: Vec<Meta>,
    /// When versions are shared by a cluster's nodes, the sequence of the
    /// shared index this one is a copy of (0: not shared, or not yet);
    /// this node's alone, never written to the shared index.
    pub shared_seq: u64,
}

impl Index {
    /// The version numbered `id`.
    pub fn get(&self, id: u64) -> Option<&Meta> {
        self.versions.iter().find(|m| m.id == id)
    }

    /// The newest version.
    pub fn newest(&self) -> Option<&Meta> {
        self.versions.last()
    }

    /// The version in force.
    pub fn active_meta(&self) -> Option<&Meta> {
        self.active.and_then(|a| self.get(a))
    }

    /// Every content digest the versions name, once each, oldest first.
    pub fn digests(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.versions.len());
        for m in &self.versions {
            if !out.contains(&m.digest) {
                out.push(m.digest.clone());
            }
        }
        out
    }

    /// Adds a version numbered next, and returns it as recorded.
    pub fn add(&mut self, mut meta: Meta) -> Meta {
        meta.id = self.next.max(1);
        self.versions.push(meta.clone());
        self.next = meta.id + 1;
        meta
    }

    /// Records version `id` in force under publishing sequence `seq`, put
    /// there by `who` at `now_us`; the version in force before becomes the
    /// previous one. Returns the version as recorded and the one replaced.
    pub fn put_in_force(
        &mut self,
        id: u64,
        who: &str,
        seq: u64,
        now_us: i64,
    ) -> Result<(Meta, Option<u64>), String> {
        let m = self
            .versions
            .iter_mut()
            .find(|m| m.id == id)
            .ok_or_else(|| format!("v{id} was pruned meanwhile"))?;
        m.activated_by = who.to_string();
        m.activated_us = now_us;
        let meta = m.clone();
        let replaced = self.active;
        self.previous = replaced;
        self.active = Some(id);
        self.activated_seq = seq;
        Ok((meta, replaced))
    }

    /// Drops versions past `keep` in number or older than `max_age_us`
    /// (never the one in force, the one before it, or the newest).
    /// Returns the versions dropped.
    pub fn prune(&mut self, keep: usize, max_age_us: i64, now_us: i64) -> Vec<u64> {
        let newest = self.newest().map(|m| m.id);
        let pinned =
            |id: u64| Some(id) == self.active || Some(id) == self.previous || Some(id) == newest;
        let mut dropped = Vec::new();
        let mut count = self.versions.len();
        for m in &self.versions {
            if pinned(m.id) {
                continue;
            }
            if count > keep.max(1) || now_us.saturating_sub(m.created_us) > max_age_us {
                dropped.push(m.id);
                count -= 1;
            }
        }
        self.versions.retain(|m| !dropped.contains(&m.id));
        dropped
    }
}

/// Parses `v7` (or `7`); `v0` is 0, "no version".
pub fn parse_id(s: &str) -> Option<u64> {
    let s = s.trim();
    s.strip_prefix('v').unwrap_or(s).parse().ok()
}

/// One shelf (see the module docs).
#[derive(Debug)]
pub struct Shelf {
    dir: PathBuf,
    ext: &'static str,
    /// The index as on disk.
    pub index: Index,
}

impl Shelf {
    /// Opens (creating, 0700) the shelf in `dir`, whose contents end in
    /// `.ext`; reads its index, and removes uploads a crash left half
    /// written. An index that cannot be read is an error: versions in
    /// force are never silently forgotten.
    pub fn open(dir: &Path, ext: &'static str) -> Result<Shelf, String> {
        if let Some(parent) = dir.parent() {
            make_dirs(parent)?;
        }
        kuzet_store::private::prepare_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(INDEX);
        let index = match read_private(&path, MAX_INDEX) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a versions index: {e}", path.display()))?,
            Ok(None) => Index {
                next: 1,
                ..Index::default()
            },
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let shelf = Shelf {
            dir: dir.to_path_buf(),
            ext,
            index,
        };
        if let Some(m) = shelf.index.active_meta() {
            let p = shelf.content_path(&m.digest);
            if !p.exists() {
                return Err(format!(
                    "{}: the content of {} (in force) is missing; restore it from a backup or remove {INDEX} to start the shelf empty",
                    p.display(),
                    m.name()
                ));
            }
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".incoming") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(shelf)
    }

    /// The shelf's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the content with this digest lives.
    pub fn content_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.{}", self.ext))
    }

    /// A new upload's file (0600, created new, never through a link),
    /// with its path: moved into place by [`Shelf::keep`].
    pub fn incoming(&self) -> Result<(File, PathBuf), String> {
        for i in 0..16u32 {
            let p = self.dir.join(format!(
                "{}-{}-{i}.incoming",
                std::process::id(),
                kuzet_dataplane::handler::evidence::unix_us()
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
            {
                Ok(f) => return Ok((f, p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
        Err(format!("{}: no name for an upload", self.dir.display()))
    }

    /// Moves a synced upload into place as the content with `digest`
    /// (dropping it when that content is already kept).
    pub fn keep(&self, upload: &Path, digest: &str) -> Result<(), String> {
        let to = self.content_path(digest);
        if to.exists() {
            let _ = std::fs::remove_file(upload);
            return Ok(());
        }
        std::fs::rename(upload, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        sync_dir(&self.dir)
    }

    /// Writes `text` as the content with `digest`.
    pub fn keep_text(&self, text: &[u8], digest: &str) -> Result<(), String> {
        let (mut f, p) = self.incoming()?;
        f.write_all(text)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        self.keep(&p, digest)
    }

    /// Reads a content file whole (rules: at most `max` bytes).
    pub fn read(&self, digest: &str, max: u64) -> Result<Vec<u8>, String> {
        let p = self.content_path(digest);
        match read_private(&p, max) {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(format!("{}: missing", p.display())),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    /// Opens a content file for reading (never through a link).
    pub fn open_content(&self, digest: &str) -> Result<File, String> {
        let p = self.content_path(digest);
        kuzet_store::private::check_file(&p)?;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Replaces the index on disk with `new`, atomically; on success it is
    /// the shelf's index.
    pub fn save(&mut self, new: Index) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(&new).map_err(|e| e.to_string())?;
        let tmp = self.dir.join(format!("{INDEX}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let to = self.dir.join(INDEX);
        std::fs::rename(&tmp, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        // Renamed: the new index is the one a restart reads, so it is the
        // one in effect now, even if the folder's sync fails (then a power
        // cut may bring the old one back, which the log says).
        self.index = new;
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(error = %e, "the versions index was replaced but its folder could not be synced: a power cut now may bring the previous index back");
        }
        Ok(())
    }

    /// Adds a version whose content is kept already, numbered next, and
    /// returns it as recorded.
    pub fn add(&mut self, meta: Meta) -> Result<Meta, String> {
        let mut idx = self.index.clone();
        let meta = idx.add(meta);
        self.save(idx)?;
        Ok(meta)
    }

    /// Records version `id` in force (see [`Index::put_in_force`]).
    pub fn put_in_force(
        &mut self,
        id: u64,
        who: &str,
        seq: u64,
        now_us: i64,
    ) -> Result<(Meta, Option<u64>), String> {
        let mut idx = self.index.clone();
        let out = idx.put_in_force(id, who, seq, now_us)?;
        self.save(idx)?;
        Ok(out)
    }

    /// Drops old versions (see [`Index::prune`]) and the content no
    /// version names any more. Returns the versions dropped.
    pub fn prune(&mut self, keep: usize, max_age_us: i64, now_us: i64) -> Result<Vec<u64>, String> {
        let mut idx = self.index.clone();
        let dropped = idx.prune(keep, max_age_us, now_us);
        if dropped.is_empty() {
            return Ok(dropped);
        }
        self.replace(idx)?;
        Ok(dropped)
    }

    /// Replaces the index with `new` (see [`Shelf::save`]), then removes
    /// the content files the old index named and the new one does not.
    pub fn replace(&mut self, new: Index) -> Result<(), String> {
        let before = self.index.digests();
        self.save(new)?;
        let now = self.index.digests();
        for d in before {
            if !now.contains(&d) {
                let _ = std::fs::remove_file(self.content_path(&d));
            }
        }
        Ok(())
    }

    /// Whether the content with this digest is kept.
    pub fn holds(&self, digest: &str) -> bool {
        std::fs::symlink_metadata(self.content_path(digest)).is_ok_and(|m| m.is_file())
    }
}

/// Creates the folders above a shelf that are missing, each 0700; one
/// that is there must not be a link (the data directory itself was
/// checked when the store opened it).
fn make_dirs(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(format!(
            "{} is a symbolic link; kuzet keeps published versions only in real directories",
            dir.display()
        )),
        Ok(_) => Ok(()),
        Err(_) => {
            if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                make_dirs(p)?;
            }
            kuzet_store::private::prepare_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))
        }
    }
}

/// Reads a file of the data directory whole (at most `max` bytes), after
/// the data directory's checks; `None` when it does not exist.
fn read_private(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
        Ok(_) => {}
    }
    kuzet_store::private::check_file(path)?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(Some(buf))
}

/// Syncs a folder, so a rename in it survives a power cut.
fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, digest: &str, created_us: i64) -> Meta {
        Meta {
            id,
            digest: digest.into(),
            created_us,
            ..Meta::default()
        }
    }

    #[test]
    fn an_index_survives_reopening_and_pruning_keeps_what_is_in_force() {
        let t = std::env::temp_dir().join(format!("kuzet-shelf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let dir = t.join("published").join("lists").join("blocklist");
        let mut s = Shelf::open(&dir, "list").unwrap();
        assert_eq!(s.index.next, 1);
        for (i, d) in ["aa", "bb", "cc", "dd", "ee"].iter().enumerate() {
            s.keep_text(d.as_bytes(), d).unwrap();
            let mut idx = s.index.clone();
            idx.versions
                .push(meta(i as u64 + 1, d, 1_000 * (i as i64 + 1)));
            idx.next = i as u64 + 2;
            s.save(idx).unwrap();
        }
        let mut idx = s.index.clone();
        idx.active = Some(1);
        idx.previous = Some(2);
        s.save(idx).unwrap();
        // Keep 2: 3 and 4 go; 1 (in force), 2 (before it) and 5 (newest)
        // stay, whatever the count.
        let dropped = s.prune(2, i64::MAX, 10_000).unwrap();
        assert_eq!(dropped, vec![3, 4]);
        assert!(!s.content_path("cc").exists());
        assert!(s.content_path("aa").exists());
        let again = Shelf::open(&dir, "list").unwrap();
        let ids: Vec<u64> = again.index.versions.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 2, 5]);
        assert_eq!(again.index.active, Some(1));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(INDEX))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Age: everything older than 2,500 µs that is not pinned goes.
        let mut s = again;
        let mut idx = s.index.clone();
        idx.versions.insert(2, meta(6, "ff", 2_000));
        idx.versions.sort_by_key(|m| m.id);
        s.save(idx).unwrap();
        assert!(s.prune(100, 2_500, 5_000).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn a_missing_active_content_is_an_error_not_an_empty_list() {
        let t = std::env::temp_dir().join(format!("kuzet-shelf-miss-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let dir = t.join("rules");
        std::fs::create_dir_all(&t).unwrap();
        let mut s = Shelf::open(&dir, "toml").unwrap();
        let mut idx = s.index.clone();
        idx.versions.push(meta(1, "abc", 1));
        idx.active = Some(1);
        s.save(idx).unwrap();
        let e = Shelf::open(&dir, "toml").unwrap_err();
        assert!(e.contains("abc.toml") && e.contains("v1"), "{e}");
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn version_names_parse() {
        assert_eq!(parse_id("v7"), Some(7));
        assert_eq!(parse_id(" 12 "), Some(12));
        assert_eq!(parse_id("v0"), Some(0));
        assert_eq!(parse_id("seven"), None);
    }
}
