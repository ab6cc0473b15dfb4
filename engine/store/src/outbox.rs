//! The outbox's payload: a report to the pre-trial register as it was
//! queued, frozen once it is first tried and sent the same on every try.
//!
//! It is a wire type of its own, with its version first, apart from the
//! store's rows ([`Incident`]): a row may gain or lose fields while a
//! payload an older kuzet queued still waits to be sent, so the outbox
//! holds exactly what the report needs and nothing of the row.
//!
//! - Version 3 (this build's) holds the report: kind, key, first and last
//!   call, counts, the evidence lists, and every number it names with its
//!   role and basis, worked out when it was queued.
//! - Versions 0 (no version written) and 2 held the whole incident row as
//!   JSON. They are still read, through a frozen copy of that row's shape,
//!   and make the same report they always would have, so an upgrade never
//!   changes a report already tried.
//! - Any other version is refused with the reason, and the entry is then
//!   dead-lettered, never sent: a report read wrong would accuse nobody,
//!   or the wrong number.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::incident::{self, Evidence, Incident};

/// The payload version this build writes.
pub const PAYLOAD_VERSION: u32 = 3;

/// The older versions this build still reads: the incident row as JSON.
const ROW_VERSIONS: [u64; 2] = [0, 2];

/// One report as queued in the outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Its format: [`PAYLOAD_VERSION`] when written by this build.
    pub version: u32,
    /// The incident's kind: `source`, `trunk`, `address`, `destination`
    /// or `campaign`.
    pub kind: String,
    /// Its key: the number, trunk, address or `rule@trunk`.
    pub key: String,
    /// First call, µs since the epoch.
    pub first_seen_us: i64,
    /// Last call.
    pub last_seen_us: i64,
    /// Blocked calls.
    pub blocked: u64,
    /// Flagged calls.
    pub flagged: u64,
    /// Other intercepted calls (redirected).
    pub other: u64,
    /// Numbers called (at most [`incident::MAX_LISTED`]), sorted.
    pub victims: Vec<String>,
    /// Rules that fired (enforced), sorted.
    pub rules: Vec<String>,
    /// Trunks the calls came through, sorted.
    pub trunks: Vec<String>,
    /// Source addresses, sorted.
    pub sources: Vec<String>,
    /// Sample verdict ids, the first ones, in order.
    pub samples: Vec<String>,
    /// Every number the incident names, with its role and the basis.
    pub parties: Vec<Party>,
}

/// One number an incident names: the number, its role and the basis for
/// it (see the register protocol's `Party`; docs/evidence.md says what an
/// investigator may conclude of each).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// The number (E.164).
    pub number: String,
    /// `source`, `victim`, `potential_victim`, `impersonated`,
    /// `claimed_caller` or `caller`.
    pub role: String,
    /// `asserted`, `listed`, `dialled`, `presented` or `attributable`.
    pub basis: String,
}

impl Payload {
    /// The report `inc` makes now, in this build's version.
    pub fn of(inc: &Incident) -> Payload {
        let e = &inc.evidence;
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
        Payload {
            version: PAYLOAD_VERSION,
            kind: inc.kind.clone(),
            key: inc.key.clone(),
            first_seen_us: inc.first_seen_us,
            last_seen_us: inc.last_seen_us,
            blocked: inc.blocked,
            flagged: inc.flagged,
            other: inc.other,
            victims: list(&e.victims),
            rules: list(&e.rules),
            trunks: list(&e.trunks),
            sources: list(&e.sources),
            samples: e.samples.clone(),
            parties: incident::parties(inc),
        }
    }

    /// Its stored form (JSON).
    pub fn encode(&self) -> String {
        // Strings, numbers and lists of them: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads a stored payload: this build's version, or an incident row of a
/// version it still reads (made into the report it always made), or why
/// not.
pub fn decode(text: &str) -> Result<Payload, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the outbox payload is not JSON: {e}"))?;
    let version = v
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let p = if version == u64::from(PAYLOAD_VERSION) {
        serde_json::from_value::<Payload>(v)
            .map_err(|e| format!("the outbox payload does not decode: {e}"))?
    } else if ROW_VERSIONS.contains(&version) {
        let row = serde_json::from_value::<RowV2>(v)
            .map_err(|e| format!("the outbox payload (version {version}) does not decode: {e}"))?;
        Payload::of(&row.into_incident())
    } else {
        return Err(format!(
            "the outbox payload is version {version}; this kuzet reads versions 0, 2 and {PAYLOAD_VERSION}"
        ));
    };
    if p.kind.is_empty() || p.key.is_empty() {
        return Err("the outbox payload names no incident kind or key".into());
    }
    Ok(p)
}

/// The incident row as versions 0 and 2 wrote it (only what a report
/// reads; the row's other fields are ignored). Frozen: it describes
/// payloads already written, whatever [`Incident`] becomes.
#[derive(Deserialize)]
struct RowV2 {
    kind: String,
    key: String,
    first_seen_us: i64,
    last_seen_us: i64,
    blocked: u64,
    flagged: u64,
    other: u64,
    evidence: EvidenceV2,
}

/// The evidence as versions 0 and 2 wrote it.
#[derive(Deserialize)]
struct EvidenceV2 {
    victims: BTreeSet<String>,
    rules: BTreeSet<String>,
    trunks: BTreeSet<String>,
    sources: BTreeSet<String>,
    callers: BTreeSet<String>,
    callers_seen: u64,
    samples: Vec<String>,
    #[serde(default)]
    impersonated: BTreeSet<String>,
    #[serde(default)]
    claimed: BTreeSet<String>,
    #[serde(default)]
    potential_victims: BTreeSet<String>,
    #[serde(default)]
    basis: String,
}

impl RowV2 {
    fn into_incident(self) -> Incident {
        let e = self.evidence;
        Incident {
            kind: self.kind,
            key: self.key,
            first_seen_us: self.first_seen_us,
            last_seen_us: self.last_seen_us,
            blocked: self.blocked,
            flagged: self.flagged,
            other: self.other,
            evidence: Evidence {
                victims: e.victims,
                rules: e.rules,
                trunks: e.trunks,
                sources: e.sources,
                callers: e.callers,
                callers_seen: e.callers_seen,
                samples: e.samples,
                impersonated: e.impersonated,
                claimed: e.claimed,
                potential_victims: e.potential_victims,
                basis: e.basis,
            },
            ..Incident::default()
        }
    }
}

/// One outbox entry due for delivery.
#[derive(Clone, Debug)]
pub struct Due {
    /// Its id in the outbox.
    pub id: i64,
    /// The incident.
    pub incident: i64,
    /// Its sequence (1 = the submission).
    pub seq: i64,
    /// `submit` or `update`.
    pub kind: String,
    /// The report as it stands, or why its payload cannot be read (it is
    /// then dead-lettered, never sent).
    pub report: Result<Payload, String>,
    /// Tries so far.
    pub attempts: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source incident as a version 2 build wrote it into the outbox
    /// (the whole row, byte for byte as `serde_json` wrote it).
    const V2: &str = r#"{"version":2,"id":7,"kind":"source","key":"+77011234567","state":"open","first_seen_us":1700000000000000,"last_seen_us":1700000060000000,"blocked":3,"flagged":1,"other":0,"evidence":{"victims":["+77020000001","+77020000002"],"rules":["blocklist"],"trunks":["intl-1"],"sources":["192.0.2.1"],"callers":[],"callers_seen":0,"samples":["a1","a2","a3"],"impersonated":[],"claimed":[],"potential_victims":[],"basis":"asserted"},"reportable":true,"register_state":"pending","register_case":"","register_error":""}"#;

    fn incident() -> Incident {
        let mut inc = Incident {
            id: 7,
            kind: "source".into(),
            key: "+77011234567".into(),
            state: "open".into(),
            first_seen_us: 1_700_000_000_000_000,
            last_seen_us: 1_700_000_060_000_000,
            blocked: 3,
            flagged: 1,
            reportable: true,
            register_state: "pending".into(),
            ..Incident::default()
        };
        let e = &mut inc.evidence;
        e.victims = ["+77020000001", "+77020000002"].map(String::from).into();
        e.rules = ["blocklist".to_string()].into();
        e.trunks = ["intl-1".to_string()].into();
        e.sources = ["192.0.2.1".to_string()].into();
        e.samples = vec!["a1".into(), "a2".into(), "a3".into()];
        e.basis = "asserted".into();
        inc
    }

    #[test]
    fn a_payload_round_trips_in_this_version() {
        let p = Payload::of(&incident());
        assert_eq!(p.version, PAYLOAD_VERSION);
        assert_eq!(p.parties[0].role, "source");
        assert_eq!(p.parties[0].basis, "asserted");
        assert_eq!(decode(&p.encode()), Ok(p));
    }

    #[test]
    fn an_old_version_payload_is_read_into_the_same_report() {
        // Queued and tried by a version 2 build, sent after the upgrade:
        // the report is the one the old build would have sent.
        let old = decode(V2).unwrap();
        assert_eq!(old, Payload::of(&incident()));
        // A payload from before versions were written reads the same.
        let unversioned = V2.replacen(r#""version":2,"#, "", 1);
        assert_eq!(decode(&unversioned), Ok(old));
    }

    #[test]
    fn an_unknown_or_damaged_payload_is_refused_with_the_reason() {
        let e = decode(r#"{"version": 99, "kind": "source"}"#).unwrap_err();
        assert!(
            e.contains("version 99") && e.contains("reads versions"),
            "{e}"
        );
        let e = decode(&V2.replacen(r#""version":2"#, r#""version":1"#, 1)).unwrap_err();
        assert!(e.contains("version 1;"), "{e}");
        let e = decode("{not json").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        // An old row without its counts is not guessed at.
        let e = decode(&V2.replacen(r#""blocked":3,"#, "", 1)).unwrap_err();
        assert!(e.contains("version 2") && e.contains("blocked"), "{e}");
        let mut empty = Payload::of(&incident());
        empty.key.clear();
        let e = decode(&empty.encode()).unwrap_err();
        assert!(e.contains("no incident kind or key"), "{e}");
    }
}
