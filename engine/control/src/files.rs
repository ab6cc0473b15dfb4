//! Reading the files an operator hands kuzet (lists, rules, the config,
//! the numbering plan, the outcome secret) without letting a file turn
//! against the process.
//!
//! Every file is opened non-blocking and checked with `fstat` on the open
//! descriptor before a byte is read: a FIFO, socket, device or directory
//! is refused with what it is, so a list replaced by a FIFO cannot hang a
//! reload (and with it shutdown). Whole-file reads are capped in size;
//! line reads are capped in length, so a single 1 GB line costs at most
//! one line buffer and its error shows a short excerpt, not the line. A
//! file that is not UTF-8 is refused with the line that is not.

use std::fs::File;
use std::io::{BufRead, Read};
use std::path::Path;

use kuzet_rules::list::{excerpt, EXCERPT_CHARS};

/// The longest line a list file may hold, in bytes: a number, a reason
/// of at most 200 bytes and a comment fit many times over.
pub const MAX_LIST_LINE: usize = 4096;
/// The largest config file read, in bytes.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;
/// The largest rule or numbering plan file read, in bytes.
pub const MAX_RULE_FILE: u64 = 8 << 20;
/// The largest secret file read, in bytes.
pub const MAX_SECRET_FILE: u64 = 4096;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The OS refused: missing, no permission, an I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A FIFO, socket, device or directory where a file was expected.
    #[error("{path}: is {what}, not a regular file; kuzet reads only regular files")]
    NotRegular {
        /// The file.
        path: String,
        /// What it is instead ("a FIFO", "a directory", ...).
        what: &'static str,
    },
    /// Larger than kuzet reads whole.
    #[error("{path}: {size} bytes is more than the {max} bytes allowed for this file")]
    TooBig {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// A line (or the file) is not UTF-8.
    #[error("{path}:{line}: the line is not valid UTF-8")]
    Utf8 {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
    },
    /// A line longer than the cap; reading stopped there.
    #[error("{path}:{line}: the line is longer than {max} bytes; it starts {excerpt}")]
    LineTooLong {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// The cap.
        max: usize,
        /// The line's start, quoted and cut short.
        excerpt: String,
    },
}

/// What a file that is not regular is, for the error message.
#[cfg(unix)]
fn describe(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn describe(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Opens `path` for reading if, and only if, it is a regular file. The
/// open itself cannot block: it is non-blocking, and opening a FIFO with
/// no writer returns at once.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let shown = || path.display().to_string();
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NONBLOCK);
    let file = opts.open(path).map_err(|source| FileError::Io {
        path: shown(),
        source,
    })?;
    // fstat on the descriptor, not stat on the path: the file checked is
    // the file read, even if the path is swapped in between.
    let meta = file.metadata().map_err(|source| FileError::Io {
        path: shown(),
        source,
    })?;
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: shown(),
            what: describe(meta.file_type()),
        });
    }
    Ok(file)
}

/// Reads a whole regular file of at most `max` bytes.
pub fn read_bytes(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let shown = || path.display().to_string();
    let file = open_regular(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > max {
        return Err(FileError::TooBig {
            path: shown(),
            size,
            max,
        });
    }
    let mut out = Vec::with_capacity(size as usize);
    // `take` also caps a file that grows while it is read.
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|source| FileError::Io {
            path: shown(),
            source,
        })?;
    if out.len() as u64 > max {
        return Err(FileError::TooBig {
            path: shown(),
            size: out.len() as u64,
            max,
        });
    }
    Ok(out)
}

/// Reads a whole regular UTF-8 file of at most `max` bytes; text that is
/// not UTF-8 is refused with the line where it stops being so.
pub fn read_text(path: &Path, max: u64) -> Result<String, FileError> {
    let bytes = read_bytes(path, max)?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        FileError::Utf8 {
            path: path.display().to_string(),
            line: good.iter().filter(|&&b| b == b'\n').count() + 1,
        }
    })
}

/// Reads UTF-8 lines of at most `max` bytes each from a buffered reader,
/// reusing one buffer. A longer line ends the reading with an error that
/// carries its number and an excerpt; no more than `max + 1` bytes of it
/// are ever held.
pub struct Lines<R> {
    reader: R,
    path: String,
    buf: Vec<u8>,
    max: usize,
    line: usize,
}

impl<R: BufRead> Lines<R> {
    /// Lines of `reader`, named `path` in errors.
    pub fn new(reader: R, path: String, max: usize) -> Self {
        Lines {
            reader,
            path,
            buf: Vec::with_capacity(256),
            max,
            line: 0,
        }
    }

    /// The next line (its 1-based number and text, line end included), or
    /// `None` at the end of the file.
    pub fn next_line(&mut self) -> Result<Option<(usize, &str)>, FileError> {
        self.buf.clear();
        let got = (&mut self.reader)
            .take(self.max as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| FileError::Io {
                path: self.path.clone(),
                source,
            })?;
        if got == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.len() > self.max && self.buf.last() != Some(&b'\n') {
            let head = &self.buf[..self.buf.len().min(EXCERPT_CHARS * 4)];
            return Err(FileError::LineTooLong {
                path: self.path.clone(),
                line: self.line,
                max: self.max,
                excerpt: excerpt(&String::from_utf8_lossy(head), EXCERPT_CHARS),
            });
        }
        match std::str::from_utf8(&self.buf) {
            Ok(text) => Ok(Some((self.line, text))),
            Err(_) => Err(FileError::Utf8 {
                path: self.path.clone(),
                line: self.line,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kuzet-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lines_are_capped_and_errors_quote_a_short_excerpt() {
        let mut text = b"+77011234567\n".to_vec();
        text.extend(std::iter::repeat_n(b'9', 10_000));
        text.extend(b"\n+77011234568\n");
        let mut l = Lines::new(Cursor::new(text), "big.txt".into(), 100);
        assert_eq!(l.next_line().unwrap(), Some((1, "+77011234567\n")));
        let e = l.next_line().unwrap_err().to_string();
        assert!(
            e.starts_with("big.txt:2: the line is longer than 100 bytes"),
            "{e}"
        );
        assert!(e.len() < 200, "the excerpt is short: {e}");
        assert!(e.ends_with("…"), "{e}");
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_fine_and_the_last_line_needs_no_newline() {
        let text = format!("{}\n{}", "1".repeat(100), "2".repeat(100));
        let mut l = Lines::new(Cursor::new(text.into_bytes()), "x".into(), 100);
        assert_eq!(l.next_line().unwrap().unwrap().0, 1);
        assert_eq!(l.next_line().unwrap().unwrap().1, "2".repeat(100));
        assert!(l.next_line().unwrap().is_none());
        let mut l = Lines::new(Cursor::new(b"1\n\xff\xfe\n".to_vec()), "x".into(), 100);
        l.next_line().unwrap();
        assert_eq!(
            l.next_line().unwrap_err().to_string(),
            "x:2: the line is not valid UTF-8"
        );
    }

    #[test]
    fn special_files_are_refused_with_what_they_are() {
        let d = temp("special");
        let e = open_regular(&d).unwrap_err().to_string();
        assert!(e.contains("is a directory, not a regular file"), "{e}");
        #[cfg(unix)]
        {
            let fifo = d.join("fifo");
            let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
            if ok.is_ok_and(|s| s.success()) {
                // With no writer a blocking open would hang here.
                let e = read_text(&fifo, 100).unwrap_err().to_string();
                assert!(e.contains("is a FIFO"), "{e}");
            }
            let e = read_text(Path::new("/dev/zero"), 100)
                .unwrap_err()
                .to_string();
            assert!(e.contains("is a character device"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn whole_reads_are_capped_and_name_the_non_utf8_line() {
        let d = temp("whole");
        let p = d.join("k.toml");
        std::fs::write(&p, b"[server]\nlisten = \"a\"\n# caf\xe9\n").unwrap();
        let e = read_text(&p, 1000).unwrap_err().to_string();
        assert!(e.ends_with("k.toml:3: the line is not valid UTF-8"), "{e}");
        let e = read_text(&p, 10).unwrap_err().to_string();
        assert!(e.contains("more than the 10 bytes allowed"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
