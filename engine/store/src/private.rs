//! The data directory is kuzet's alone: created 0700, refused when another
//! user owns it or others can write it, its files created 0600, and none
//! of them opened through a symbolic link.
//!
//! Another local user must not be able to hand kuzet a directory (and a
//! store in it) of their making, point one of its files somewhere else,
//! unlink the evidence while kuzet runs, or read it. Every check is made on
//! what is there (`lstat`, never following a link), before anything in the
//! directory is opened; files kuzet opens itself are opened with
//! `O_NOFOLLOW`, and SQLite is told not to follow links either.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The user this process runs as (its effective user id).
pub fn process_uid() -> Option<u32> {
    Some(kuzet_net::effective_uid())
}

/// Creates the data directory 0700 if it is missing (its parents as
/// usual), or checks the one that is there: a real directory (not a
/// link), owned by this process's user, that neither group nor others can
/// write. Returns why not, for the operator.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create its parent: {e}"))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Made meanwhile by someone else: checked below like any.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create it: {e}")),
            }
            // The umask may have taken bits off; make sure of 0700.
            check_dir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot make it private: {e}"))
        }
        Err(e) => Err(format!("cannot read it: {e}")),
        Ok(_) => check_dir(dir),
    }
}

fn check_dir(dir: &Path) -> Result<(), String> {
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
    if m.file_type().is_symlink() {
        return Err(
            "is a symbolic link; kuzet keeps evidence only in a real directory it owns".into(),
        );
    }
    if !m.is_dir() {
        return Err("exists and is not a directory".into());
    }
    let me = process_uid().ok_or("cannot tell which user kuzet runs as")?;
    if m.uid() != me {
        return Err(format!(
            "is owned by uid {}, not by kuzet's user (uid {me}): another user could read, plant or remove the evidence; use a directory kuzet's user created",
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "can be written by group or others (mode {:o}): they could plant or remove files in it; run chmod 700 on it",
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Checks a file in the data directory, if there is one: a regular file
/// (not a link), owned by kuzet's user. One group or others can read (a
/// store made by an older kuzet under a loose umask) is made 0600.
pub fn check_file(path: &Path) -> Result<(), String> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: cannot read it: {e}", path.display())),
    };
    if m.file_type().is_symlink() {
        return Err(format!(
            "{} is a symbolic link; kuzet opens no file of its data directory through a link",
            path.display()
        ));
    }
    if !m.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let me = process_uid().ok_or("cannot tell which user kuzet runs as")?;
    if m.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not by kuzet's user (uid {me}): refusing a file another user made",
            path.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: cannot make it private: {e}", path.display()))?;
        tracing::warn!(path = %path.display(), mode = format!("{:o}", m.mode() & 0o777), "a data file others could read was made 0600");
    }
    Ok(())
}

/// Opens (creating 0600 if missing) a file of the data directory for
/// reading and writing, never through a link.
pub fn open_private(path: &Path) -> io::Result<File> {
    check_file(path).map_err(io::Error::other)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc_nofollow())
        .open(path)
}

/// Creates `path` empty with mode 0600 if it does not exist (so SQLite,
/// which makes its files 0644 less the umask, finds it made private, and
/// makes its WAL and shared-memory files with the same mode).
pub fn precreate(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_nofollow())
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// `O_NOFOLLOW`: a link in the last component fails the open.
fn libc_nofollow() -> i32 {
    libc::O_NOFOLLOW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_private_and_a_loose_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("data");
        prepare_dir(&d).unwrap();
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        prepare_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_dir(&d).unwrap_err();
        assert!(e.contains("group or others"), "{e}");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = prepare_dir(&link).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn files_are_made_0600_and_links_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("f");
        precreate(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        let target = root.path().join("victim");
        std::fs::write(&target, "secret").unwrap();
        let l = root.path().join("l");
        std::os::unix::fs::symlink(&target, &l).unwrap();
        assert!(open_private(&l).is_err());
        assert!(precreate(&l).is_ok(), "exists: left alone");
        assert!(check_file(&l).unwrap_err().contains("symbolic link"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        check_file(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    }
}
