//! The AFL++ harness: `kuzet-fuzz-afl TARGET` runs one fuzz target in
//! AFL's persistent mode. Built by scripts/fuzz.sh with `cargo afl build
//! --features afl`; a panic is the crash AFL records.

#![forbid(unsafe_code)]

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(t) = kuzet_fuzz::target(&name) else {
        let names: Vec<&str> = kuzet_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("usage: kuzet-fuzz-afl TARGET, one of {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        (t.run)(data);
    });
}
