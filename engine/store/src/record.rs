//! One intercepted call as the log keeps it: who called whom, as received
//! and normalized, from where, what kuzet decided and answered, every rule
//! that fired with its value and threshold, the list entry that matched,
//! and the request's header section verbatim.

use rusqlite::{params, Row, Statement};
use serde::{Deserialize, Serialize};

/// A rule that fired on a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleHit {
    /// The rule's id.
    pub id: String,
    /// What it measured (calls, numbers, per mille; for a list, 0 for an
    /// exact number or the matched prefix's length).
    pub value: u32,
    /// Its threshold, in the same unit.
    pub threshold: u32,
    /// A shadow rule: reported, not enforced.
    pub shadow: bool,
    /// The explanation, as in the verdict header.
    pub why: String,
}

/// The list entry a call matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListHitRec {
    /// `blocklist`, `flaglist`, `allowlist` or `premium`.
    pub list: String,
    /// The side that matched: `caller`, `callee`, ...
    pub side: String,
    /// The number itself is listed, not a range holding it.
    pub exact: bool,
    /// The list line's reason.
    pub reason: String,
}

/// One recorded call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The store's row id (0 before it is written); cursors count on it.
    #[serde(default)]
    pub id: i64,
    /// The verdict id, as in a blocked call's Reason text.
    pub verdict_id: String,
    /// When it was judged: µs since the Unix epoch, UTC.
    pub ts_us: i64,
    /// The node that judged it (filled in by the store when written).
    #[serde(default)]
    pub node: String,
    /// The call's Call-ID.
    pub call_id: String,
    /// The Request-URI as received (the B-number's source).
    pub ruri: String,
    /// The From header as received.
    pub from_hdr: String,
    /// The P-Asserted-Identity header as received (empty when none).
    pub pai_hdr: String,
    /// The A-number scored, normalized (E.164 with `+`).
    pub a: Option<String>,
    /// The B-number, normalized.
    pub b: Option<String>,
    /// The number in From, normalized.
    pub from_num: Option<String>,
    /// The number in PAI, normalized.
    pub pai_num: Option<String>,
    /// The trunk the source belongs to.
    pub trunk: Option<String>,
    /// Its kind.
    pub trunk_kind: Option<String>,
    /// The source address, `ip:port`.
    pub source: String,
    /// `udp` or `tcp`.
    pub transport: String,
    /// `allow`, `flag`, `redirect` or `block`.
    pub decision: String,
    /// What shadow rules would have made it.
    pub shadow_decision: String,
    /// The SIP answer: the block code, 302, or 0 when proxy mode forwarded.
    pub code: u16,
    /// The score of the enforced rules.
    pub score: u32,
    /// An allowed call kept as a sample.
    pub sampled: bool,
    /// The whole explanation, as in the verdict header.
    pub explanation: String,
    /// Every rule that fired, enforced and shadow.
    pub rules: Vec<RuleHit>,
    /// The list entry that matched, if one did.
    pub list_hit: Option<ListHitRec>,
    /// The version of the lists and rules in force.
    pub lists_version: String,
    /// The request's start line and header section, verbatim (bounded).
    #[serde(with = "lossy")]
    pub headers: Vec<u8>,
    /// The incident the call belongs to, once grouped.
    pub incident: Option<i64>,
    /// How far the network vouches for the A-number: `network` (asserted
    /// in P-Asserted-Identity by a trunk trusted to assert it) or
    /// `claimed`; empty with no A-number (or from before kuzet kept it).
    #[serde(default)]
    pub a_trust: String,
    /// What the call makes of its caller: `source` (an attributable
    /// suspect), `claimed` (a suspect nobody vouches for: its trunk or
    /// address is the incident's source), `impersonated` (a caller-ID
    /// spoof: the presented numbers are victims), `potential_victim` (it
    /// dialled a listed number), or empty (nothing suspect).
    #[serde(default)]
    pub caller_role: String,
    /// The verdict's internal sequence on its node (not kept per row: the
    /// store keeps the highest, so a restarted node goes on after it).
    #[serde(skip)]
    pub id_seq: u64,
}

/// The caller roles a record can carry.
pub mod role {
    /// An attributable suspect: asserted by a trusted trunk, or listed.
    pub const SOURCE: &str = "source";
    /// A suspect whose number nobody vouches for.
    pub const CLAIMED: &str = "claimed";
    /// The presented numbers were spoofed: their holders are victims.
    pub const IMPERSONATED: &str = "impersonated";
    /// The caller dialled a listed number: a potential victim.
    pub const POTENTIAL_VICTIM: &str = "potential_victim";
}

pub(crate) const INSERT_CALL: &str = "INSERT INTO calls (
    verdict_id, ts_us, node, call_id, ruri, from_hdr, pai_hdr, a, b, from_num, pai_num,
    trunk, trunk_kind, source, transport, decision, shadow_decision, code, score, sampled,
    explanation, rules, list_hit, lists_version, headers, incident, a_trust, caller_role)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
    ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)";

/// The columns [`Record::from_row`] reads, in order.
pub const COLUMNS: &str = "id, verdict_id, ts_us, node, call_id, ruri, from_hdr, pai_hdr, a, b,
    from_num, pai_num, trunk, trunk_kind, source, transport, decision, shadow_decision, code,
    score, sampled, explanation, rules, list_hit, lists_version, headers, incident, a_trust,
    caller_role";

impl Record {
    /// Writes the record as `node`'s; returns its row id.
    pub(crate) fn insert(
        &self,
        st: &mut Statement<'_>,
        node: &str,
        incident: Option<i64>,
    ) -> rusqlite::Result<i64> {
        let rules = serde_json::to_string(&self.rules).unwrap_or_else(|_| "[]".into());
        let list = self
            .list_hit
            .as_ref()
            .and_then(|l| serde_json::to_string(l).ok());
        st.insert(params![
            self.verdict_id,
            self.ts_us,
            node,
            self.call_id,
            self.ruri,
            self.from_hdr,
            self.pai_hdr,
            self.a,
            self.b,
            self.from_num,
            self.pai_num,
            self.trunk,
            self.trunk_kind,
            self.source,
            self.transport,
            self.decision,
            self.shadow_decision,
            self.code,
            self.score,
            self.sampled,
            self.explanation,
            rules,
            list,
            self.lists_version,
            self.headers,
            incident,
            self.a_trust,
            self.caller_role,
        ])
    }

    /// Reads a row selected with [`COLUMNS`].
    pub fn from_row(r: &Row<'_>) -> rusqlite::Result<Record> {
        let rules: String = r.get(22)?;
        let list: Option<String> = r.get(23)?;
        Ok(Record {
            id: r.get(0)?,
            verdict_id: r.get(1)?,
            ts_us: r.get(2)?,
            node: r.get(3)?,
            call_id: r.get(4)?,
            ruri: r.get(5)?,
            from_hdr: r.get(6)?,
            pai_hdr: r.get(7)?,
            a: r.get(8)?,
            b: r.get(9)?,
            from_num: r.get(10)?,
            pai_num: r.get(11)?,
            trunk: r.get(12)?,
            trunk_kind: r.get(13)?,
            source: r.get(14)?,
            transport: r.get(15)?,
            decision: r.get(16)?,
            shadow_decision: r.get(17)?,
            code: r.get(18)?,
            score: r.get(19)?,
            sampled: r.get(20)?,
            explanation: r.get(21)?,
            rules: serde_json::from_str(&rules).unwrap_or_default(),
            list_hit: list.and_then(|l| serde_json::from_str(&l).ok()),
            lists_version: r.get(24)?,
            headers: r.get(25)?,
            incident: r.get(26)?,
            a_trust: r.get(27)?,
            caller_role: r.get(28)?,
            id_seq: 0,
        })
    }
}

/// Headers travel in JSON as text (invalid UTF-8 replaced); the store keeps
/// the bytes.
mod lossy {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d).map(String::into_bytes)
    }
}
