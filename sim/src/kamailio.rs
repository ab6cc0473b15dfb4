//! The scenario's lists as Kamailio `db_text` tables, for the side-by-side
//! benchmark.
//!
//! `deploy/kamailio/kamailio.cfg` loads two `htable`s from a `db_text`
//! directory: `kzblock` (blocklist and NB feed) and `kzallow`. Keys are
//! E.164 digits without `+`, which is what the config's normalization
//! turns any accepted number format into. Prefix entries are not written:
//! the scenarios' lists hold exact numbers only, so one hash lookup per
//! side is the same policy kuzet applies.

use std::fmt::Write as _;

use kuzet_rules::NumberingPlan;

use crate::traffic::EngineFiles;

/// `(file name, text)` for every table file, `version` included.
pub fn tables(f: &EngineFiles) -> Vec<(&'static str, String)> {
    let plan = NumberingPlan::kazakhstan();
    let mut block = String::from(HEADER);
    let mut id = 0u64;
    for text in [&f.blocklist, &f.nbfeed] {
        rows(&plan, text, &mut block, &mut id);
    }
    let mut allow = String::from(HEADER);
    rows(&plan, &f.allowlist, &mut allow, &mut id);
    let version = "id(int,auto) table_name(string) table_version(int) \n0:version:1\n1:kzblock:2\n2:kzallow:2\n".to_string();
    vec![("kzblock", block), ("kzallow", allow), ("version", version)]
}

const HEADER: &str =
    "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int) \n";

fn rows(plan: &NumberingPlan, list: &str, out: &mut String, id: &mut u64) {
    for line in list.lines() {
        let entry = line
            .split('#')
            .next()
            .unwrap_or("")
            .split(',')
            .next()
            .unwrap_or("")
            .trim();
        if entry.is_empty() || entry.ends_with('*') {
            continue;
        }
        if let Some(n) = plan.normalize(entry.as_bytes()) {
            let e164 = n.to_string();
            *id += 1;
            let _ = writeln!(out, "{id}:{}:0:0:1:0", e164.trim_start_matches('+'));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_normalized_digits() {
        let f = EngineFiles {
            blocklist: "# c\n8 701 123 45 67,x\n+88216*,pfx\n".into(),
            nbfeed: "7011234568\n".into(),
            allowlist: "+77272500000\n".into(),
            ..Default::default()
        };
        let t = tables(&f);
        assert_eq!(
            t[0].1.lines().skip(1).collect::<Vec<_>>(),
            ["1:77011234567:0:0:1:0", "2:77011234568:0:0:1:0"]
        );
        assert_eq!(t[1].1.lines().nth(1), Some("3:77272500000:0:0:1:0"));
    }
}
