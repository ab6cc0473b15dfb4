//! One batch of the National Bank feed, as docs/nb-feed.md defines it:
//! its signature checked over the raw bytes before anything is parsed,
//! then its header and entries read strictly, then its place in the
//! sequence. Everything here is pure (no I/O, the time passed in), so it
//! is fuzzed and tested as it runs.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::Deserialize;

/// The largest batch body read: a first batch of a million entries
/// (about 190 bytes each) fits.
pub const MAX_BATCH: usize = 256 << 20;

/// One configured signing key of the Centre.
#[derive(Clone, Debug)]
pub struct Key {
    /// Its id, as the signature header names it.
    pub id: String,
    /// The public key.
    pub public: VerifyingKey,
    /// Valid from (Unix seconds).
    pub valid_from: i64,
    /// Valid until (Unix seconds), once retired.
    pub valid_until: Option<i64>,
}

/// Why a batch was refused; the layer in force stays.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// No signature header, or one that does not parse.
    #[error("no usable Kuzet-Signature header: {0}")]
    NoSignature(String),
    /// A key no configuration names.
    #[error("signed by an unknown key {0:?}")]
    UnknownKey(String),
    /// A key outside its validity period (retired, or not yet valid).
    #[error("signed by key {0:?} outside its validity period")]
    KeyNotValid(String),
    /// The signature does not match the bytes.
    #[error("the signature does not match the batch (tampered or corrupted)")]
    BadSignature,
    /// Larger than [`MAX_BATCH`].
    #[error("the batch is larger than {} MiB", MAX_BATCH >> 20)]
    TooLarge,
    /// Signed, but not a batch: the line (1 is the header) and why.
    #[error("line {line}: {why}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A sequence at or below the cursor: already applied.
    #[error("batch {seq} replays one already applied (cursor {cursor})")]
    Replay {
        /// The batch's.
        seq: u64,
        /// The last applied.
        cursor: u64,
    },
    /// A sequence beyond the next: batches are missing.
    #[error("batch {seq} skips ahead of {expected}: fetching again from the last good cursor")]
    Gap {
        /// The batch's.
        seq: u64,
        /// The one expected.
        expected: u64,
    },
}

/// Checks `body`'s signature header (`v1 key=ID sig=HEX`) against the
/// configured keys at `now` (Unix seconds); returns the key's id. Nothing
/// of the body is read as anything before this passes.
pub fn verify<'k>(
    body: &[u8],
    header: &str,
    keys: &'k [Key],
    now: i64,
) -> Result<&'k str, Rejected> {
    if body.len() > MAX_BATCH {
        return Err(Rejected::TooLarge);
    }
    let mut parts = header.split_ascii_whitespace();
    if parts.next() != Some("v1") {
        return Err(Rejected::NoSignature("it must start with v1".into()));
    }
    let (mut id, mut sig) = (None, None);
    for p in parts {
        match p.split_once('=') {
            Some(("key", v)) if id.is_none() => id = Some(v),
            Some(("sig", v)) if sig.is_none() => sig = Some(v),
            _ => return Err(Rejected::NoSignature("expected key=ID sig=HEX".into())),
        }
    }
    let (Some(id), Some(sig)) = (id, sig) else {
        return Err(Rejected::NoSignature("expected key=ID sig=HEX".into()));
    };
    let sig = crate::access::unhex::<64>(sig)
        .ok_or_else(|| Rejected::NoSignature("sig is not 128 hex digits".into()))?;
    let key = keys
        .iter()
        .find(|k| k.id == id)
        .ok_or_else(|| Rejected::UnknownKey(crate::safe::visible(id).to_string()))?;
    if now < key.valid_from || key.valid_until.is_some_and(|u| now >= u) {
        return Err(Rejected::KeyNotValid(key.id.clone()));
    }
    key.public
        .verify(body, &Signature::from_bytes(&sig))
        .map_err(|_| Rejected::BadSignature)?;
    Ok(&key.id)
}

/// What an entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the layer until `expires_at`.
    Add,
    /// Leave it.
    Withdraw,
}

/// One entry of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Add or withdraw.
    pub action: Action,
    /// `+77011234567`, or a range as `+7702555*`.
    pub target: String,
    /// The Centre's category (adds).
    pub category: String,
    /// 0-100 (adds).
    pub confidence: u8,
    /// Unix seconds (adds).
    pub reported_at: i64,
    /// Unix seconds (adds): the entry leaves the layer then.
    pub expires_at: i64,
    /// The Centre's case reference.
    pub case: String,
}

/// A verified, well-formed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Its sequence number.
    pub seq: u64,
    /// When the Centre issued it (Unix seconds).
    pub issued_at: i64,
    /// Its entries, in order.
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    v: u32,
    seq: u64,
    issued_at: String,
    entries: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    action: String,
    number: Option<String>,
    range: Option<String>,
    category: Option<String>,
    confidence: Option<u8>,
    reported_at: Option<String>,
    expires_at: Option<String>,
    case: String,
}

/// The longest category and case reference.
const MAX_LABEL: usize = 64;

/// Reads a batch whose signature [`verify`] accepted.
pub fn parse(body: &[u8]) -> Result<Batch, Rejected> {
    let bad = |line: usize, why: String| Rejected::Malformed { line, why };
    let text = utf8(body)?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (_, head) = lines.next().ok_or_else(|| bad(1, "empty".into()))?;
    let h: Header = serde_json::from_str(head).map_err(|e| bad(1, e.to_string()))?;
    if h.v != 1 {
        return Err(bad(1, format!("version {} (kuzet reads version 1)", h.v)));
    }
    if h.seq == 0 {
        return Err(bad(1, "seq starts at 1".into()));
    }
    let issued_at = time(&h.issued_at).map_err(|w| bad(1, format!("issued_at: {w}")))?;
    let mut entries = Vec::with_capacity(h.entries.min(1 << 20));
    for (n, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let e: Line = serde_json::from_str(l).map_err(|e| bad(n, e.to_string()))?;
        entries.push(entry(e).map_err(|w| bad(n, w))?);
    }
    if entries.len() != h.entries {
        return Err(bad(
            text.lines().count().max(1),
            format!(
                "the header promises {} entries and the batch holds {} (truncated?)",
                h.entries,
                entries.len()
            ),
        ));
    }
    Ok(Batch {
        seq: h.seq,
        issued_at,
        entries,
    })
}

fn time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339(s).map_err(|e| format!("{s:?}: {e}"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .map_err(|_| format!("{s:?} is before 1970"))
}

fn label(what: &str, s: &str, category: bool) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.chars().all(|c| {
            if category {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
            } else {
                c.is_ascii_graphic()
            }
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{what} {:?} is not a valid label",
            crate::safe::visible(s)
        ))
    }
}

fn target(number: Option<String>, range: Option<String>) -> Result<String, String> {
    let digits = |d: &str| !d.is_empty() && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_digit());
    match (number, range) {
        (Some(n), None) if n.strip_prefix('+').is_some_and(digits) => Ok(n),
        (None, Some(r))
            if r.strip_prefix('+')
                .and_then(|r| r.strip_suffix('*'))
                .is_some_and(digits) =>
        {
            Ok(r)
        }
        (Some(_), Some(_)) | (None, None) => Err("exactly one of number and range".into()),
        (Some(n), None) => Err(format!(
            "number {:?} is not E.164 (+ and digits)",
            crate::safe::visible(&n)
        )),
        (None, Some(r)) => Err(format!(
            "range {:?} is not + digits *",
            crate::safe::visible(&r)
        )),
    }
}

fn entry(l: Line) -> Result<Entry, String> {
    let target = target(l.number, l.range)?;
    let case = label("case", &l.case, false)?;
    match l.action.as_str() {
        "add" => {
            let category = label("category", l.category.as_deref().unwrap_or(""), true)?;
            let confidence = l.confidence.ok_or("an add needs confidence")?;
            if confidence > 100 {
                return Err(format!("confidence {confidence} is above 100"));
            }
            let reported_at = time(l.reported_at.as_deref().ok_or("an add needs reported_at")?)?;
            let expires_at = time(l.expires_at.as_deref().ok_or("an add needs expires_at")?)?;
            if expires_at <= reported_at {
                return Err("expires_at must be after reported_at".into());
            }
            Ok(Entry {
                action: Action::Add,
                target,
                category,
                confidence,
                reported_at,
                expires_at,
                case,
            })
        }
        "withdraw" => Ok(Entry {
            action: Action::Withdraw,
            target,
            category: String::new(),
            confidence: 0,
            reported_at: 0,
            expires_at: 0,
            case,
        }),
        other => Err(format!(
            "action {:?} (add or withdraw)",
            crate::safe::visible(other)
        )),
    }
}

/// One alert of the Centre on one of the operator's own numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// The Centre's reference for it.
    pub id: String,
    /// The number (E.164).
    pub number: String,
    /// The Centre's category.
    pub category: String,
    /// When the Centre took the information (Unix seconds): the deadline
    /// counts from it.
    pub reported_at: i64,
    /// The Centre's note (may be empty).
    pub note: String,
}

/// A verified, well-formed batch of alerts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertBatch {
    /// Its sequence number (the alerts' own).
    pub seq: u64,
    /// When the Centre issued it.
    pub issued_at: i64,
    /// Its alerts, in order.
    pub alerts: Vec<Alert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertHeader {
    v: u32,
    seq: u64,
    issued_at: String,
    alerts: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertLine {
    id: String,
    number: String,
    category: String,
    reported_at: String,
    #[serde(default)]
    note: String,
}

/// The longest note of an alert.
const MAX_NOTE: usize = 512;

/// Reads a batch of alerts whose signature [`verify`] accepted.
pub fn parse_alerts(body: &[u8]) -> Result<AlertBatch, Rejected> {
    let bad = |line: usize, why: String| Rejected::Malformed { line, why };
    let text = utf8(body)?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (_, head) = lines.next().ok_or_else(|| bad(1, "empty".into()))?;
    let h: AlertHeader = serde_json::from_str(head).map_err(|e| bad(1, e.to_string()))?;
    if h.v != 1 {
        return Err(bad(1, format!("version {} (kuzet reads version 1)", h.v)));
    }
    if h.seq == 0 {
        return Err(bad(1, "seq starts at 1".into()));
    }
    let issued_at = time(&h.issued_at).map_err(|w| bad(1, format!("issued_at: {w}")))?;
    let mut alerts = Vec::with_capacity(h.alerts.min(1 << 16));
    for (n, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let a: AlertLine = serde_json::from_str(l).map_err(|e| bad(n, e.to_string()))?;
        let one = || -> Result<Alert, String> {
            let number = target(Some(a.number.clone()), None)?;
            // A note is the Centre's free text: kept as sent (a refused
            // batch would hold back every alert after it) and escaped
            // wherever it is shown.
            if a.note.chars().count() > MAX_NOTE {
                return Err(format!("note: at most {MAX_NOTE} characters"));
            }
            Ok(Alert {
                id: label("id", &a.id, false)?,
                number,
                category: label("category", &a.category, true)?,
                reported_at: time(&a.reported_at)?,
                note: a.note.clone(),
            })
        };
        alerts.push(one().map_err(|w| bad(n, w))?);
    }
    if alerts.len() != h.alerts {
        return Err(bad(
            text.lines().count().max(1),
            format!(
                "the header promises {} alerts and the batch holds {} (truncated?)",
                h.alerts,
                alerts.len()
            ),
        ));
    }
    Ok(AlertBatch {
        seq: h.seq,
        issued_at,
        alerts,
    })
}

/// The body as UTF-8, or the line where it stops being so.
fn utf8(body: &[u8]) -> Result<&str, Rejected> {
    std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        Rejected::Malformed {
            line,
            why: "not UTF-8".into(),
        }
    })
}

/// Whether batch `seq` may be applied after `cursor` (the last applied).
pub fn follows(seq: u64, cursor: u64) -> Result<(), Rejected> {
    if seq <= cursor {
        return Err(Rejected::Replay { seq, cursor });
    }
    if seq > cursor + 1 {
        return Err(Rejected::Gap {
            seq,
            expected: cursor + 1,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signer(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn key(id: &str, s: &SigningKey, from: i64, until: Option<i64>) -> Key {
        Key {
            id: id.into(),
            public: s.verifying_key(),
            valid_from: from,
            valid_until: until,
        }
    }

    fn header(id: &str, s: &SigningKey, body: &[u8]) -> String {
        let sig = s.sign(body).to_bytes();
        format!("v1 key={id} sig={}", crate::access::hex(&sig))
    }

    const BODY: &str = concat!(
        r#"{"v":1,"seq":7,"issued_at":"2026-12-05T10:00:00Z","entries":2}"#,
        "\n",
        r#"{"action":"add","number":"+77011234567","category":"bank-impersonation","confidence":90,"reported_at":"2026-12-05T09:58:00Z","expires_at":"2026-12-12T09:58:00Z","case":"AFC-2026-118734"}"#,
        "\n",
        r#"{"action":"withdraw","range":"+7702555*","case":"AFC-2026-118001"}"#,
        "\n"
    );

    #[test]
    fn an_alerts_batch_is_read_strictly() {
        let body = concat!(
            r#"{"v":1,"seq":3,"issued_at":"2026-12-05T10:00:00Z","alerts":1}"#,
            "\n",
            r#"{"id":"AFC-A-1","number":"+77011234567","category":"gsm-gateway","reported_at":"2026-12-04T09:30:00Z","note":"three customers"}"#,
            "\n"
        );
        let a = parse_alerts(body.as_bytes()).unwrap();
        assert_eq!((a.seq, a.alerts.len()), (3, 1));
        assert_eq!(a.alerts[0].number, "+77011234567");
        // A note is kept as sent, terminal escapes and all (shown escaped).
        let forged = body.replace("three customers", "line\\u001b[2Jbreak");
        let a = parse_alerts(forged.as_bytes()).unwrap();
        assert_eq!(a.alerts[0].note, "line\u{1b}[2Jbreak");
        let long = body.replace("three customers", &"x".repeat(MAX_NOTE + 1));
        let e = parse_alerts(long.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, Rejected::Malformed { line: 2, why } if why.contains("at most")),
            "{e}"
        );
        let bad_number = body.replace("+77011234567", "+7701x");
        assert!(parse_alerts(bad_number.as_bytes()).is_err());
        let short = body.replace(r#""alerts":1"#, r#""alerts":2"#);
        assert!(parse_alerts(short.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn a_signed_batch_is_verified_and_read() {
        let s = signer(1);
        let keys = [key("k1", &s, 0, None)];
        let h = header("k1", &s, BODY.as_bytes());
        assert_eq!(verify(BODY.as_bytes(), &h, &keys, 100), Ok("k1"));
        let b = parse(BODY.as_bytes()).unwrap();
        assert_eq!(b.seq, 7);
        assert_eq!(b.entries.len(), 2);
        assert_eq!(b.entries[0].target, "+77011234567");
        assert_eq!(
            b.entries[0].expires_at - b.entries[0].reported_at,
            7 * 86_400
        );
        assert_eq!(b.entries[1].action, Action::Withdraw);
        assert_eq!(b.entries[1].target, "+7702555*");
    }

    #[test]
    fn a_tampered_batch_or_a_wrong_key_is_refused_before_it_is_read() {
        let s = signer(1);
        let other = signer(2);
        let keys = [key("k1", &s, 0, None)];
        let h = header("k1", &s, BODY.as_bytes());
        let tampered = BODY.replace("+77011234567", "+77011234568");
        assert_eq!(
            verify(tampered.as_bytes(), &h, &keys, 100),
            Err(Rejected::BadSignature)
        );
        let forged = header("k1", &other, BODY.as_bytes());
        assert_eq!(
            verify(BODY.as_bytes(), &forged, &keys, 100),
            Err(Rejected::BadSignature)
        );
        let unknown = header("k9", &s, BODY.as_bytes());
        assert!(matches!(
            verify(BODY.as_bytes(), &unknown, &keys, 100),
            Err(Rejected::UnknownKey(_))
        ));
        for bad in [
            "",
            "v2 key=k1 sig=00",
            "v1 key=k1",
            "v1 key=k1 sig=zz",
            "v1 key=k1 sig=00 sig=11",
        ] {
            assert!(
                matches!(
                    verify(BODY.as_bytes(), bad, &keys, 100),
                    Err(Rejected::NoSignature(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_rotate_and_a_retired_key_is_refused() {
        let old = signer(1);
        let new = signer(2);
        // The old key retires at 1,000; the new one is valid from 900.
        let keys = [
            key("old", &old, 0, Some(1_000)),
            key("new", &new, 900, None),
        ];
        let by_old = header("old", &old, BODY.as_bytes());
        let by_new = header("new", &new, BODY.as_bytes());
        assert_eq!(verify(BODY.as_bytes(), &by_old, &keys, 950), Ok("old"));
        assert_eq!(verify(BODY.as_bytes(), &by_new, &keys, 950), Ok("new"));
        assert_eq!(
            verify(BODY.as_bytes(), &by_old, &keys, 1_000),
            Err(Rejected::KeyNotValid("old".into()))
        );
        assert_eq!(
            verify(BODY.as_bytes(), &by_new, &keys, 899),
            Err(Rejected::KeyNotValid("new".into()))
        );
    }

    #[test]
    fn malformed_and_truncated_batches_name_their_line() {
        let line = |body: &str| match parse(body.as_bytes()) {
            Err(Rejected::Malformed { line, why }) => (line, why),
            other => panic!("{other:?}"),
        };
        // Truncated: the header promises two entries.
        let cut: String = BODY.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(line(&cut).1.contains("truncated"));
        // An unknown field changes meaning: refused.
        let extra = BODY.replace(
            r#""case":"AFC-2026-118001""#,
            r#""case":"AFC-2026-118001","scope":"all""#,
        );
        assert_eq!(line(&extra).0, 3);
        for (bad, at) in [
            (BODY.replace("+77011234567", "77011234567"), 2),
            (BODY.replace(r#""confidence":90"#, r#""confidence":101"#), 2),
            (
                BODY.replace("2026-12-12T09:58:00Z", "2026-12-01T09:58:00Z"),
                2,
            ),
            (BODY.replace("bank-impersonation", "Bank\u{1b}[31m"), 2),
            (
                BODY.replace(r#""action":"withdraw""#, r#""action":"delete""#),
                3,
            ),
            (
                BODY.replace(
                    r#""range":"+7702555*""#,
                    r#""range":"+7702555*","number":"+77020000000""#,
                ),
                3,
            ),
            (BODY.replace(r#""v":1"#, r#""v":2"#), 1),
            (BODY.replace(r#""seq":7"#, r#""seq":0"#), 1),
        ] {
            assert_eq!(line(&bad).0, at, "{bad}");
        }
        assert_eq!(line("\u{0}\u{ff}").0, 1);
    }

    #[test]
    fn replays_are_ignored_and_gaps_fetch_again() {
        assert_eq!(follows(8, 7), Ok(()));
        assert_eq!(follows(7, 7), Err(Rejected::Replay { seq: 7, cursor: 7 }));
        assert_eq!(follows(3, 7), Err(Rejected::Replay { seq: 3, cursor: 7 }));
        assert_eq!(
            follows(9, 7),
            Err(Rejected::Gap {
                seq: 9,
                expected: 8
            })
        );
        assert_eq!(follows(1, 0), Ok(()));
    }
}
