//! `kuzet-fuzz`: the fuzz targets by hand. `pass` runs the deterministic
//! pass the test suite runs (longer if asked), `seeds` writes a target's
//! seed corpus into a folder (scripts/fuzz.sh hands it to AFL++), and
//! `run` replays files through a target (a crash AFL found, say).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  kuzet-fuzz pass [TARGET] [--seconds N] [--seed N]\n  \
         kuzet-fuzz seeds TARGET DIR\n  kuzet-fuzz run TARGET FILE...\n\ntargets:"
    );
    for t in kuzet_fuzz::TARGETS {
        eprintln!("  {:<18} {}", t.name, t.about);
    }
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    let find = |name: &str| {
        kuzet_fuzz::target(name).ok_or_else(|| {
            eprintln!("kuzet-fuzz: no target {name:?}");
            usage()
        })
    };
    match cmd.as_str() {
        "pass" => {
            let mut secs = 5.0;
            let mut seed = 1;
            let mut only = None;
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--seconds" => secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(secs),
                    "--seed" => seed = it.next().and_then(|v| v.parse().ok()).unwrap_or(seed),
                    name => only = Some(name.to_string()),
                }
            }
            let targets: Vec<_> = match &only {
                Some(n) => match find(n) {
                    Ok(t) => vec![t],
                    Err(code) => return code,
                },
                None => kuzet_fuzz::TARGETS.to_vec(),
            };
            for t in targets {
                match kuzet_fuzz::pass(&t, seed, u64::MAX, Duration::from_secs_f64(secs)) {
                    Ok(s) => println!(
                        "{:<18} {} seeds, {} mutations, no failure",
                        t.name, s.seeds, s.mutations
                    ),
                    Err(f) => {
                        eprintln!("{f}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        "seeds" if args.len() == 3 => {
            let t = match find(&args[1]) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let dir = PathBuf::from(&args[2]);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("kuzet-fuzz: {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            let seeds = kuzet_fuzz::seeds(t.name);
            for (i, (_, bytes)) in seeds.iter().enumerate() {
                let p = dir.join(format!("seed{i:04}"));
                if let Err(e) = std::fs::write(&p, bytes) {
                    eprintln!("kuzet-fuzz: {}: {e}", p.display());
                    return ExitCode::FAILURE;
                }
            }
            println!("{} seeds for {} in {}", seeds.len(), t.name, dir.display());
            ExitCode::SUCCESS
        }
        "run" if args.len() >= 3 => {
            let t = match find(&args[1]) {
                Ok(t) => t,
                Err(code) => return code,
            };
            for f in &args[2..] {
                let bytes = match std::fs::read(f) {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("kuzet-fuzz: {f}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                // A panic prints its message and fails the run.
                (t.run)(&bytes);
                println!("{f}: ok");
            }
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
