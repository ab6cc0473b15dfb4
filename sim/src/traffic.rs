//! Labelled traffic from a scenario, and the files the engine needs to
//! meet it.
//!
//! Every source draws from its own generator, seeded from the scenario
//! seed and the source's position, so one source's calls do not change
//! when another is added, and the same seed always gives the same calls
//! in the same order. Number ranges are disjoint by construction:
//! subscribers live in `[subscribers]`, each source's callers in
//! `+7 777 SS NNNNN` (an allocated Kazakh mobile range) where `SS` is the
//! source's position, list padding in `+7 780...`. So a call's label is known without asking any engine.
//!
//! Labels ([`Call::source`], hence the kind and campaign) stay here: the
//! SIP the driver sends carries only numbers, as a real network's would.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::population::{format_kz, Rng};
use crate::scenario::{Identity, Kind, Scenario, Source};

/// Callers of source `s` are `+7 777 SS NNNNN`: at most this many per source.
pub const MAX_CALLERS: u64 = 100_000;
/// At most this many sources, so the caller ranges stay apart.
pub const MAX_SOURCES: usize = 80;
const CALLER_BASE: u64 = 7_770_000_000;
const PADDING_BASE: u64 = 7_800_000_000;
const DEFAULT_FOREIGN: [&str; 4] = ["+4420794", "+4930901", "+3361234", "+9719876"];
const DEFAULT_WANGIRI: [&str; 3] = ["+88216", "+2392", "+6760"];

/// What the caller does after the verdict lets the call through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// The callee answers after `after_ms` of ringing; talk lasts `talk_ms`.
    Answer {
        /// Ringing time before the callee answers, milliseconds.
        after_ms: u32,
        /// Talk time once answered, milliseconds.
        talk_ms: u32,
    },
    /// The caller hangs up (CANCEL) after `after_ms` of ringing.
    Cancel {
        /// Ringing time before the caller hangs up, milliseconds.
        after_ms: u32,
    },
    /// Nobody answers; it rings out.
    NoAnswer,
}

/// One call as it goes on the wire, with its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// Offset from the start of traffic, microseconds.
    pub at_us: u64,
    /// Index into [`Traffic::sources`]: the ground-truth label.
    pub source: u16,
    /// Index into [`Traffic::trunks`].
    pub trunk: u8,
    /// A-number as written in P-Asserted-Identity (and in From, unless
    /// `from` says otherwise): the number kuzet scores.
    pub a: String,
    /// The From user when it differs from the A-number (a PBX's direct
    /// number, a spoofed identity).
    pub from: Option<String>,
    /// A display name for From (a spoofed number's digits, say).
    pub display: Option<String>,
    /// B-number as written in the Request-URI and To.
    pub b: String,
    /// What the caller does once the call is let through.
    pub behaviour: Behaviour,
}

/// A source as the report needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// The source's unique name in the scenario; campaigns are reported by it.
    pub name: String,
    /// What the source does, and so whether its calls are fraud.
    pub kind: Kind,
    /// Index into [`Traffic::trunks`] of the trunk its calls arrive on.
    pub trunk: u8,
}

/// The whole traffic of a scenario.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Every call with its label, in send order.
    pub calls: Vec<Call>,
    /// Every source of the scenario, indexed by [`Call::source`].
    pub sources: Vec<SourceInfo>,
    /// Trunk name and the source address its calls come from.
    pub trunks: Vec<(String, Ipv4Addr)>,
    /// The list files this traffic assumes.
    pub files: EngineFiles,
    /// Length of the traffic, microseconds.
    pub duration_us: u64,
}

/// Text of every file the engine (and Kamailio) should be started with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineFiles {
    /// Blocklist campaign callers plus padding.
    pub blocklist: String,
    /// National Bank feed numbers, as an operator exports them today.
    pub nbfeed: String,
    /// Allowlisted high-volume callers.
    pub allowlist: String,
    /// Protected (do-not-originate) numbers.
    pub protected: String,
    /// Premium-rate and IRSF destination prefixes.
    pub premium: String,
    /// The operator's subscribers roaming abroad.
    pub roamers: String,
}

impl Traffic {
    /// Generates the traffic of `sc`.
    pub fn generate(sc: &Scenario) -> Result<Traffic, String> {
        let sources: Vec<&Source> = sc.sources().collect();
        if sources.len() > MAX_SOURCES {
            return Err(format!("at most {MAX_SOURCES} sources"));
        }
        let trunks: Vec<(String, Ipv4Addr)> =
            sc.trunks.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let duration_us = (sc.duration_s * 1e6) as u64;
        let mut calls = Vec::new();
        let mut infos = Vec::new();
        let mut files = EngineFiles::default();
        files
            .blocklist
            .push_str("# blocklist written by kuzet-sim\n");
        files
            .nbfeed
            .push_str("# National Bank feed export written by kuzet-sim\n");
        files
            .allowlist
            .push_str("# allowlist written by kuzet-sim\n");
        files
            .protected
            .push_str("# protected (do-not-originate) numbers written by kuzet-sim\n");
        files
            .premium
            .push_str("# premium-rate destination prefixes written by kuzet-sim\n");
        files
            .roamers
            .push_str("# subscribers roaming abroad (an HLR export) written by kuzet-sim\n");
        for (si, s) in sources.iter().enumerate() {
            if s.callers > MAX_CALLERS {
                return Err(format!(
                    "source {:?}: at most {MAX_CALLERS} callers",
                    s.name
                ));
            }
            let trunk = trunks.iter().position(|(n, _)| n == s.trunk()).unwrap_or(0) as u8;
            infos.push(SourceInfo {
                name: s.name.clone(),
                kind: s.kind,
                trunk,
            });
            write_lists(sc, si, s, &mut files);
            let mobile = trunks
                .iter()
                .position(|(n, _)| n == "mobile")
                .unwrap_or(trunk as usize) as u8;
            generate_source(sc, si, s, (trunk, mobile), duration_us, &mut calls);
        }
        let mut rng = Rng::new(sc.seed ^ 0xB10C);
        for i in 0..sc.lists.extra_blocklist {
            let _ = writeln!(
                files.blocklist,
                "{},padding",
                format_kz(PADDING_BASE + i, rng.below(3), false)
            );
        }
        calls.sort_by_key(|c| (c.at_us, c.source));
        Ok(Traffic {
            calls,
            sources: infos,
            trunks,
            files,
            duration_us,
        })
    }

    /// Writes the list files, `kuzet.toml` and the Kamailio tables into
    /// `dir`; returns the paths written.
    pub fn write_engine_files(&self, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let f = &self.files;
        let mut written = Vec::new();
        let mut put = |name: &str, text: &str| -> std::io::Result<()> {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            written.push(p);
            Ok(())
        };
        put("blocklist.txt", &f.blocklist)?;
        put("nbfeed.txt", &f.nbfeed)?;
        put("allowlist.txt", &f.allowlist)?;
        put("protected.txt", &f.protected)?;
        put("premium.txt", &f.premium)?;
        put("roamers.txt", &f.roamers)?;
        put("kuzet.toml", &self.kuzet_toml())?;
        let kam = dir.join("kamailio");
        std::fs::create_dir_all(&kam)?;
        for (name, text) in crate::kamailio::tables(f) {
            let p = kam.join(name);
            std::fs::write(&p, text)?;
            written.push(p);
        }
        Ok(written)
    }

    /// The engine configuration this traffic assumes: its list files and
    /// one trunk per source address.
    pub fn kuzet_toml(&self) -> String {
        let mut s = String::from(
            "# kuzet configuration written by kuzet-sim for this scenario.\n\
             # The NB feed export is loaded as a blocklist, as operators do\n\
             # with the feed today. A list this scenario leaves empty is\n\
             # marked allow_empty (kuzet refuses an empty list otherwise).\n\n[lists]\n",
        );
        let f = &self.files;
        let entry = |name: &str, text: &str| {
            let empty = text.lines().all(|l| {
                let l = l.split('#').next().unwrap_or("").trim();
                l.is_empty()
            });
            if empty {
                format!("{{ path = \"{name}\", allow_empty = true }}")
            } else {
                format!("\"{name}\"")
            }
        };
        let _ = write!(
            s,
            "blocklist = [{}, {}]\nallowlist = [{}]\nprotected = [{}]\npremium = [{}]\nroamers = [{}]\n\n",
            entry("blocklist.txt", &f.blocklist),
            entry("nbfeed.txt", &f.nbfeed),
            entry("allowlist.txt", &f.allowlist),
            entry("protected.txt", &f.protected),
            entry("premium.txt", &f.premium),
            entry("roamers.txt", &f.roamers),
        );
        // The driver plays the switch: it reports outcomes from the trunks.
        let names: Vec<String> = self.trunks.iter().map(|(n, _)| format!("{n:?}")).collect();
        let _ = write!(s, "[outcomes]\nreporters = [{}]\n\n", names.join(", "));
        for (name, ip) in &self.trunks {
            // A trunk named after a kind is that kind; any other is "other".
            let kind = kuzet_rules::TrunkKind::from_name(name)
                .unwrap_or(kuzet_rules::TrunkKind::Other)
                .as_str();
            let _ = write!(
                s,
                "[[trunks]]\nname = \"{name}\"\nkind = \"{kind}\"\ncidrs = [\"{ip}/32\"]\n\n"
            );
        }
        s
    }
}

fn source_rng(seed: u64, si: usize) -> Rng {
    Rng::new(seed ^ (si as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A uniform float in [0, 1).
fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn caller_nsn(si: usize, j: u64) -> u64 {
    CALLER_BASE + si as u64 * MAX_CALLERS + j
}

/// A foreign number: `prefix` then digits from `j` up to 12 digits in all.
fn foreign(prefix: &str, j: u64) -> String {
    let digits = prefix.len() - 1;
    let rest = 12usize.saturating_sub(digits).max(4);
    let modulo = 10u64.pow(rest as u32);
    format!("{prefix}{:0rest$}", j.wrapping_mul(2_654_435_761) % modulo)
}

fn list_numbers(s: &Source, defaults: &[&str]) -> Vec<String> {
    if s.numbers.is_empty() {
        defaults.iter().map(|x| x.to_string()).collect()
    } else {
        s.numbers.clone()
    }
}

fn write_lists(sc: &Scenario, si: usize, s: &Source, f: &mut EngineFiles) {
    let _ = (sc, si);
    match s.kind {
        Kind::Blocklist => {
            for j in 0..s.callers {
                let _ = writeln!(
                    f.blocklist,
                    "{},{}",
                    format_kz(caller_nsn(si, j), j, false),
                    s.name
                );
            }
        }
        Kind::NbFeed => {
            for j in 0..s.callers {
                let _ = writeln!(
                    f.nbfeed,
                    "{},nb-report-{j}",
                    format_kz(caller_nsn(si, j), j + 1, false)
                );
            }
        }
        Kind::HighVolume if s.allowlisted => {
            for j in 0..s.callers {
                let _ = writeln!(
                    f.allowlist,
                    "{},{}",
                    format_kz(caller_nsn(si, j), 0, false),
                    s.name
                );
            }
        }
        Kind::ProtectedSpoof => {
            for n in &s.numbers {
                let _ = writeln!(f.protected, "{n},{}", s.name);
            }
        }
        // The trusted numbers are the bank's own: on the allowlist.
        Kind::AllowlistSpoof => {
            for n in &s.numbers {
                let _ = writeln!(f.allowlist, "{n},bank (spoofed by {})", s.name);
            }
        }
        Kind::OutboundRoamers => {
            for j in 0..s.callers {
                let _ = writeln!(f.roamers, "{}", format_kz(caller_nsn(si, j), j, false));
            }
        }
        Kind::Irsf | Kind::Wangiri => {
            for n in list_numbers(s, &DEFAULT_WANGIRI) {
                let _ = writeln!(f.premium, "{n}*,{}", s.name);
            }
        }
        _ => {}
    }
}

fn generate_source(
    sc: &Scenario,
    si: usize,
    s: &Source,
    (trunk, mobile): (u8, u8),
    duration_us: u64,
    out: &mut Vec<Call>,
) {
    let mut rng = source_rng(sc.seed, si);
    let start = (s.start_s.max(0.0) * 1e6) as u64;
    let end = s
        .end_s
        .map_or(duration_us, |e| ((e * 1e6) as u64).min(duration_us));
    if s.cps <= 0.0 || start >= end {
        return;
    }
    let subs = &sc.subscribers;
    let foreign_prefixes = list_numbers(s, &DEFAULT_FOREIGN);
    let premium = list_numbers(s, &DEFAULT_WANGIRI);
    // Sequential diallers: each caller walks its own run of B-numbers.
    let mut next_b: Vec<u64> = Vec::new();
    let mut t = start as f64;
    loop {
        t += -(1.0 - unit(&mut rng)).ln() / s.cps * 1e6;
        if t >= end as f64 {
            break;
        }
        let j = rng.below(s.callers);
        let style = rng.below(4);
        let subscriber =
            |rng: &mut Rng| format_kz(subs.first + rng.below(subs.count), rng.below(4), true);
        let (mut from, mut display) = (None, None);
        let (a, b) = match s.kind {
            Kind::Subscribers => (subscriber(&mut rng), subscriber(&mut rng)),
            Kind::InboundInternational => {
                let p = &foreign_prefixes[(j % foreign_prefixes.len() as u64) as usize];
                (plus(foreign(p, j), s.no_plus), subscriber(&mut rng))
            }
            Kind::RussianCallers => (plus(russian(j), s.no_plus), subscriber(&mut rng)),
            Kind::Wangiri => {
                let p = &premium[(j % premium.len() as u64) as usize];
                (foreign(p, j), subscriber(&mut rng))
            }
            Kind::ProtectedSpoof | Kind::AllowlistSpoof => {
                let spoofed = s.numbers[(j % s.numbers.len() as u64) as usize].clone();
                match s.identity {
                    Identity::Pai => (spoofed, subscriber(&mut rng)),
                    Identity::From => {
                        from = Some(spoofed);
                        (format_kz(caller_nsn(si, j), 0, true), subscriber(&mut rng))
                    }
                    Identity::Display => {
                        display = Some(spoofed);
                        (format_kz(caller_nsn(si, j), 0, true), subscriber(&mut rng))
                    }
                }
            }
            Kind::CliSpoof if s.identity == Identity::From => {
                // A domestic number in From, a foreign one in PAI.
                from = Some(format_kz(caller_nsn(si, j), style, true));
                (
                    foreign(DEFAULT_FOREIGN[(j % 4) as usize], j),
                    subscriber(&mut rng),
                )
            }
            Kind::Pbx => {
                // PAI: the PBX's main number; From: an extension's DID.
                from = Some(format_kz(
                    caller_nsn(si, j * 10 + 1 + rng.below(9)),
                    0,
                    true,
                ));
                (
                    format_kz(caller_nsn(si, j * 10), 0, true),
                    subscriber(&mut rng),
                )
            }
            Kind::Business => {
                let line = format_kz(caller_nsn(si, j), 0, true);
                let callee = subscriber(&mut rng);
                // Some customers call the line back a while later.
                if unit(&mut rng) < s.callback_ratio {
                    let at = t + -(1.0 - unit(&mut rng)).ln() * s.callback_mean_s * 1e6;
                    if at < end as f64 {
                        out.push(Call {
                            at_us: at as u64,
                            source: si as u16,
                            trunk: mobile,
                            a: callee.clone(),
                            from: None,
                            display: None,
                            b: line.clone(),
                            behaviour: Behaviour::Answer {
                                after_ms: 2_000 + rng.below(6_000) as u32,
                                talk_ms: 60_000,
                            },
                        });
                    }
                }
                (line, callee)
            }
            Kind::Sequential => {
                if next_b.is_empty() {
                    next_b = (0..s.callers.min(10_000))
                        .map(|_| subs.first + rng.below(subs.count.saturating_sub(100_000).max(1)))
                        .collect();
                }
                let k = (j % next_b.len() as u64) as usize;
                let b = next_b[k];
                next_b[k] += 1;
                (
                    format_kz(caller_nsn(si, j), style, true),
                    format_kz(b, 0, true),
                )
            }
            Kind::Irsf => {
                let p = &premium[rng.below(premium.len() as u64) as usize];
                (
                    format_kz(caller_nsn(si, j), style, true),
                    foreign(p, rng.next_u64()),
                )
            }
            _ => (
                format_kz(caller_nsn(si, j), style, true),
                subscriber(&mut rng),
            ),
        };
        let first = behaviour(s, &mut rng);
        // Nobody answered: some callers try again, 30-120 s apart.
        if first == Behaviour::NoAnswer && unit(&mut rng) < s.redial_ratio {
            let mut at = t;
            for _ in 0..1 + rng.below(3) {
                at += (30.0 + 90.0 * unit(&mut rng)) * 1e6;
                if at >= end as f64 {
                    break;
                }
                out.push(Call {
                    at_us: at as u64,
                    source: si as u16,
                    trunk,
                    a: a.clone(),
                    from: from.clone(),
                    display: display.clone(),
                    b: b.clone(),
                    behaviour: behaviour(s, &mut rng),
                });
            }
        }
        out.push(Call {
            at_us: t as u64,
            source: si as u16,
            trunk,
            a,
            from,
            display,
            b,
            behaviour: first,
        });
    }
}

/// A Russian mobile number, +7 9xx xxx xx xx.
fn russian(j: u64) -> String {
    let x = j.wrapping_mul(2_654_435_761);
    format!("+79{:02}{:07}", x % 100, (x / 100) % 10_000_000)
}

/// `n` with or without its leading '+'.
fn plus(n: String, no_plus: bool) -> String {
    match (no_plus, n.strip_prefix('+')) {
        (true, Some(rest)) => rest.to_string(),
        _ => n,
    }
}

fn behaviour(s: &Source, rng: &mut Rng) -> Behaviour {
    if s.kind == Kind::Wangiri {
        // One ring, then hang up inside 3 s.
        return Behaviour::Cancel {
            after_ms: 500 + rng.below(2_400) as u32,
        };
    }
    let u = unit(rng);
    if u < s.answer_ratio {
        let talk = -(1.0 - unit(rng)).ln() * s.mean_duration_s * 1000.0;
        Behaviour::Answer {
            after_ms: 2_000 + rng.below(8_000) as u32,
            talk_ms: talk.min(4.0 * 3600.0 * 1000.0) as u32,
        }
    } else if u < s.answer_ratio + s.cancel_ratio {
        Behaviour::Cancel {
            after_ms: 3_000 + rng.below(17_000) as u32,
        }
    } else {
        Behaviour::NoAnswer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Scenario {
        Scenario::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/small.toml"))
            .unwrap()
    }

    #[test]
    fn same_seed_same_traffic() {
        let sc = small();
        let (a, b) = (
            Traffic::generate(&sc).unwrap(),
            Traffic::generate(&sc).unwrap(),
        );
        assert_eq!(a.calls, b.calls);
        assert_eq!(a.files, b.files);
        let mut other = sc.clone();
        other.seed += 1;
        assert_ne!(Traffic::generate(&other).unwrap().calls, a.calls);
    }

    #[test]
    fn rates_and_kinds_follow_the_scenario() {
        let sc = small();
        let t = Traffic::generate(&sc).unwrap();
        for (si, s) in sc.sources().enumerate() {
            let n = t.calls.iter().filter(|c| c.source as usize == si).count() as f64;
            let span = s.end_s.unwrap_or(sc.duration_s) - s.start_s;
            let expect = s.cps * span;
            // Poisson: within 5 standard deviations.
            assert!(
                (n - expect).abs() <= 5.0 * expect.sqrt() + 1.0,
                "{}: {n} vs {expect}",
                s.name
            );
        }
        assert!(t.calls.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        for c in &t.calls {
            let k = t.sources[c.source as usize].kind;
            if k == Kind::Wangiri {
                assert!(matches!(c.behaviour, Behaviour::Cancel { after_ms } if after_ms < 3000));
            }
        }
    }

    #[test]
    fn sequential_callers_walk_numbers_in_order() {
        let t = Traffic::generate(&small()).unwrap();
        let si = t
            .sources
            .iter()
            .position(|s| s.kind == Kind::Sequential)
            .unwrap();
        let mut last: std::collections::HashMap<String, u64> = Default::default();
        let mut steps = 0;
        for c in t.calls.iter().filter(|c| c.source as usize == si) {
            let b: u64 = c.b.trim_start_matches('+').parse().unwrap();
            let digits: String = c.a.chars().filter(char::is_ascii_digit).collect();
            if let Some(prev) = last.insert(digits[digits.len() - 6..].to_string(), b) {
                assert_eq!(b, prev + 1);
                steps += 1;
            }
        }
        assert!(steps > 5);
    }

    #[test]
    fn realistic_legitimate_kinds_and_identity_variants_look_as_described() {
        let t = Traffic::generate(&small()).unwrap();
        let of = |name: &str| -> Vec<&Call> {
            let si = t.sources.iter().position(|s| s.name == name).unwrap();
            t.calls.iter().filter(|c| c.source as usize == si).collect()
        };
        // PBXs: From carries another number than PAI.
        let pbx = of("offices");
        assert!(
            !pbx.is_empty()
                && pbx
                    .iter()
                    .all(|c| c.from.as_ref().is_some_and(|f| f != &c.a))
        );
        // Russian callers: +7 9xx, eleven digits; without '+' when asked.
        for c in of("russia") {
            assert!(c.a.starts_with("+79") && c.a.len() == 12, "{}", c.a);
        }
        for c in of("russian_roamers") {
            assert!(c.a.starts_with("79") && c.a.len() == 11, "{}", c.a);
        }
        assert!(of("abroad_no_plus").iter().all(|c| !c.a.starts_with('+')));
        // Roamers: every caller is in the roamers file.
        let plan = kuzet_rules::NumberingPlan::kazakhstan();
        let listed: std::collections::HashSet<_> = t
            .files
            .roamers
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| plan.normalize(l.as_bytes()))
            .collect();
        for c in of("roamers_home") {
            assert!(
                listed.contains(&plan.normalize(c.a.as_bytes()).unwrap()),
                "{}",
                c.a
            );
        }
        // Business lines: some callees call back, after the call out.
        let biz = of("courier_dispatch");
        let back: Vec<&&Call> = biz.iter().filter(|c| c.trunk != biz[0].trunk).collect();
        assert!(!back.is_empty());
        for cb in back {
            assert!(biz
                .iter()
                .any(|o| o.b == cb.a && o.a == cb.b && o.at_us < cb.at_us));
        }
        // Spoofs in From and in a display name; a trusted number from abroad.
        assert!(of("fake_bank_in_from")
            .iter()
            .all(|c| c.from.as_deref() == Some("+77272595555")));
        assert!(of("fake_bank_in_display")
            .iter()
            .all(|c| c.display.as_deref() == Some("+77272595555")));
        assert!(t.files.allowlist.contains("+77272500000"));
        assert!(of("fake_domestic_in_from")
            .iter()
            .all(|c| !c.a.starts_with("+7") && c.from.is_some()));
    }
}
