//! `--export-sipp DIR`: the same traffic for SIPp, so a third-party client
//! can replay it and get the same verdicts.
//!
//! SIPp sends from one local address per process, and kuzet knows the
//! trunk from the source address, so the export holds one injection file
//! per trunk (`<trunk>.csv`, field0 = A-number, field1 = B-number, in call
//! order), the client scenario `uac.xml` (INVITE, then 302 or 603, then
//! ACK), and `replay.sh`, which starts one SIPp per trunk from the trunk's
//! address. Labels are not exported: the files carry only what goes on
//! the wire.

use std::fmt::Write as _;
use std::path::Path;

use crate::traffic::Traffic;

/// The redirect client scenario shared with the engine's SIPp tests.
pub const UAC_XML: &str = include_str!("../../deploy/sipp/redirect_uac.xml");

/// `(file name, text)` of every exported file, in a fixed order.
pub fn sipp_files(t: &Traffic) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut script = String::from(
        "#!/usr/bin/env bash\n\
         # Replays the exported traffic with SIPp, one process per trunk.\n\
         # Usage: replay.sh TARGET_HOST:PORT [RATE_PER_TRUNK]\n\
         set -euo pipefail\n\
         cd \"$(dirname \"$0\")\"\n\
         target=${1:?usage: replay.sh HOST:PORT [RATE]}\n\
         rate=${2:-100}\n\
         pids=()\n",
    );
    for (k, (name, ip)) in t.trunks.iter().enumerate() {
        let mut csv = String::from("SEQUENTIAL\n");
        let mut n = 0u64;
        for c in t.calls.iter().filter(|c| c.trunk as usize == k) {
            let _ = writeln!(csv, "{};{}", c.a, c.b);
            n += 1;
        }
        if n == 0 {
            continue;
        }
        let _ = writeln!(
            script,
            "sipp -sf uac.xml -inf {name}.csv -i {ip} -m {n} -r \"$rate\" -buff_size 4194304 \
             -trace_counts -nostdin -timeout 120s \"$target\" >/dev/null 2>{name}.log & pids+=($!)"
        );
        files.push((format!("{name}.csv"), csv));
    }
    script.push_str(
        "status=0\nfor p in \"${pids[@]}\"; do wait \"$p\" || status=1; done\nexit $status\n",
    );
    files.push(("uac.xml".to_string(), UAC_XML.to_string()));
    files.push(("replay.sh".to_string(), script));
    files
}

/// Writes the export into `dir`.
pub fn write_sipp(t: &Traffic, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in sipp_files(t) {
        std::fs::write(dir.join(&name), text)?;
        #[cfg(unix)]
        if name.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(&name), std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kuzet-sim-export-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Every file under `dir`, by relative path.
    fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(
                        p.strip_prefix(dir).unwrap().to_path_buf(),
                        std::fs::read(&p).unwrap(),
                    );
                }
            }
        }
        out
    }

    fn export(sc: &Scenario, tag: &str) -> BTreeMap<PathBuf, Vec<u8>> {
        let t = Traffic::generate(sc).unwrap();
        let dir = scratch(tag);
        t.write_engine_files(&dir.join("engine")).unwrap();
        write_sipp(&t, &dir.join("sipp")).unwrap();
        let tree = read_tree(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        tree
    }

    #[test]
    fn same_seed_gives_byte_identical_exports() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/small.toml");
        let sc = Scenario::from_file(&path).unwrap();
        let (a, b) = (export(&sc, "a"), export(&sc, "b"));
        assert!(a.len() >= 12, "{:?}", a.keys().collect::<Vec<_>>());
        assert_eq!(a, b);
        let mut other = sc.clone();
        other.seed = 8;
        let c = export(&other, "c");
        assert_ne!(
            a[Path::new("sipp/mobile.csv")],
            c[Path::new("sipp/mobile.csv")]
        );
        // Every call is exported exactly once, on its trunk's file.
        let t = Traffic::generate(&sc).unwrap();
        let rows: usize = a
            .iter()
            .filter(|(p, _)| p.starts_with("sipp") && p.extension().is_some_and(|x| x == "csv"))
            .map(|(_, v)| v.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() - 1)
            .sum();
        assert_eq!(rows, t.calls.len());
    }
}
