#!/usr/bin/env bash
# Fuzz one of kuzet's targets with AFL++ for as long as asked.
#
#   scripts/fuzz.sh TARGET [SECONDS]      (default 600)
#   scripts/fuzz.sh targets               the targets
#   scripts/fuzz.sh all SECONDS           each target in turn, SECONDS each
#
# Installs what it needs on first use: Debian's afl++ (through
# scripts/install-deps.sh) and cargo-afl (cargo install). Seeds come from
# `kuzet-fuzz seeds TARGET` (RFC 4475, the shipped samples, fuzz/corpus,
# fuzz/regressions); findings go to fuzz/out/TARGET (not in git). Each
# crash is replayed through `kuzet-fuzz run` and listed; keep one as a
# regression by copying it to fuzz/regressions/TARGET/ under a name that
# says what it guards, and add a test named the same way where the bug
# was fixed. At the end: executions, speed, paths and crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGETS="sip handler_redirect handler_proxy tcp list rules config numbers nbfeed nbalerts nbreport delta"
[ $# -ge 1 ] || { sed -n '2,16p' "$0"; exit 2; }
# ("list" is a target, the list loader; "targets" names them all.)
if [ "$1" = targets ]; then echo "$TARGETS" | tr ' ' '\n'; exit 0; fi
if [ "$1" = all ]; then
  for t in $TARGETS; do "$0" "$t" "${2:-600}"; done
  exit 0
fi
TARGET=$1; SECS=${2:-600}
case " $TARGETS " in *" $TARGET "*) ;; *) echo "fuzz.sh: no target $TARGET (try: $TARGETS)" >&2; exit 2 ;; esac

command -v afl-fuzz >/dev/null 2>&1 || FUZZ=1 scripts/install-deps.sh
if ! command -v cargo-afl >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-afl" >&2
  cargo install --locked cargo-afl --version 0.18.2
fi
# Builds AFL++'s runtime for this rustc once; says so when it already has.
cargo afl config --build >/dev/null 2>&1 || true

cargo build --release -q -p kuzet-fuzz --bin kuzet-fuzz
cargo afl build --release -q -p kuzet-fuzz --features afl --bin kuzet-fuzz-afl
OUT=$ROOT/fuzz/out/$TARGET
mkdir -p "$OUT"
rm -rf "$OUT/seeds"
"$ROOT/target/release/kuzet-fuzz" seeds "$TARGET" "$OUT/seeds"
# A run resumes where the last one stopped when its state is there.
IN="$OUT/seeds"
[ -d "$OUT/default/queue" ] && IN=-
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_AUTORESUME=1 AFL_SKIP_CRASHES=1
echo "fuzz.sh: $TARGET for $SECS s (findings in $OUT)" >&2
cargo afl fuzz -V "$SECS" -m none -t 2000 -i "$IN" -o "$OUT" \
  "$ROOT/target/release/kuzet-fuzz-afl" "$TARGET" > "$OUT/afl.log" 2>&1 || {
  echo "fuzz.sh: afl-fuzz failed; the end of its log:" >&2; tail -20 "$OUT/afl.log" >&2; exit 1; }
STATS=$OUT/default/fuzzer_stats
get() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$STATS"; }
CRASHES=$(find "$OUT/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
echo "$TARGET: $(get execs_done) executions in $(get run_time) s ($(get execs_per_sec)/s), $(get corpus_count) paths, $CRASHES crashes"
if [ "$CRASHES" -gt 0 ]; then
  for c in "$OUT"/default/crashes/id:*; do
    echo "--- $c"
    "$ROOT/target/release/kuzet-fuzz" run "$TARGET" "$c" 2>&1 | tail -3 || true
  done
  exit 1
fi
