#!/usr/bin/env bash
# Issue 20's swap under load, on a release build: a 10M-number blocklist
# version pushed from the command line to a kuzet serving --rate calls/s.
#
# kuzet (release, its defaults: a worker per core, the embedded rules, the
# store on) with the blocklist published and an admin token; v1 (2,000 of
# the flood's callers) pushed and put in force first. A 10M-number list
# file is generated (every 20th of the flood's 100,000 callers, padded
# with +7780... numbers no call comes from). kuzet-sim's flood then offers
# --rate calls/s open loop (callers +77010000000..+77010099999, latency
# counted from each call's scheduled send time, answers filed by it in
# --bucket-ms buckets) for --secs; after --steady s of it,
#   kuzet lists push FILE --list blocklist --activate
# pushes the file and returns once the version is in force.
#
# Reported, all from the same run:
#   - push start to in force: the CLI's own "took", and this script's
#     clock around the command;
#   - kuzet's peak RSS during the swap: VmHWM reset (/proc/PID/clear_refs)
#     just before the push and read once it returns, against VmRSS before
#     and after;
#   - p99 of the calls offered in each bucket of the --window s before the
#     push, against each bucket the push overlaps (by scheduled send time;
#     "lost" where a bucket lost more than 1% of its calls), and the ratio
#     of the worst bucket during to the worst before. The p99 of all the
#     calls offered while the push ran is at most that worst bucket's.
#     With --bucket-ms 3000 and the default --steady 15 (a multiple of
#     3), one bucket holds the 3 s before the push and the next one the
#     push's first 3 s;
#   - calls lost (sent and never answered), and kuzet's
#     failopen_overload_total (let through unscored) over the run.
#
# Usage: benches/e2e/publish.sh [--kuzet BIN] [--rate 20000] [--secs 45]
#                               [--steady 15] [--window 5] [--bucket-ms 1000]
# Builds release kuzet and kuzet-sim if missing. Stops what it started.
# PUSH_PREFIX runs the CLI under a wrapper (PUSH_PREFIX="chrt -i 0": the
# CLI in the idle class, to tell its share of the cost from kuzet's).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
KUZET=$ROOT/target/release/kuzet; RATE=20000; SECS=45; STEADY=15; WINDOW=5; BUCKET_MS=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --kuzet) KUZET=$(realpath "$2"); shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --steady) STEADY=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --bucket-ms) BUCKET_MS=$2; shift 2 ;;
    *) echo "publish.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$STEADY" -gt "$WINDOW" ] || { echo "publish.sh: --steady must be longer than --window" >&2; exit 2; }
[ -x "$ROOT/target/release/kuzet-sim" ] || cargo build --release -q -p kuzet-sim
[ -x "$KUZET" ] || cargo build --release -q -p kuzet
SIM=$ROOT/target/release/kuzet-sim
W=$(mktemp -d /tmp/kuzet-publish.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
now() { date +%s.%N; }
kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# The lists, before anything runs: v1, and the 10M-number v2.
awk 'BEGIN { for (i = 0; i < 100000; i += 50) printf "+7701%07d,v1\n", i }' > "$W/v1.txt"
awk 'BEGIN {
  for (i = 0; i < 10000000 - 5000; i++) printf "+7780%07d\n", i
  for (i = 0; i < 100000; i += 20) printf "+7701%07d,v2\n", i
}' > "$W/v2.txt"
LINES=$(wc -l < "$W/v2.txt"); BYTES=$(stat -c %s "$W/v2.txt")

TOKEN=kz_publish_bench_token
HASH=$(printf %s "$TOKEN" | "$KUZET" token hash)
cat > "$W/kuzet.toml" <<CONF
[publishing]
lists = ["blocklist"]

[[control.tokens]]
name = "bench"
role = "admin"
sha256 = "$HASH"
CONF
SIP=127.0.0.1:27160; CONTROL=127.0.0.1:27161; ADMIN=127.0.0.1:27162
"$KUZET" run -c "$W/kuzet.toml" --listen "$SIP" --control "$CONTROL" --admin "$ADMIN" \
  --data "$W/data" --log warn > "$W/kuzet.out" 2> "$W/kuzet.log" &
KPID=$!; PIDS+=("$KPID")
"$SIM" ping --target "$SIP" --timeout-s 30 > /dev/null || { cat "$W/kuzet.log" >&2; exit 1; }
push() { # file
  KUZET_TOKEN=$TOKEN ${PUSH_PREFIX:-} "$KUZET" lists push "$1" --list blocklist --activate --control "$CONTROL"
}
push "$W/v1.txt" > "$W/push-v1.out" 2>&1 || { cat "$W/push-v1.out" "$W/kuzet.log" >&2; exit 1; }

T0=$(now)
"$SIM" flood --target "$SIP" --phase "$RATE:$SECS" --bucket-ms "$BUCKET_MS" > "$W/flood.out" 2>&1 &
FPID=$!; PIDS+=("$FPID")
sleep "$STEADY"
RSS_BEFORE=$(kib "$KPID" VmRSS); HWM_RUN=$(kib "$KPID" VmHWM)
RESET=no
if echo 5 > "/proc/$KPID/clear_refs" 2>/dev/null; then RESET=yes; fi
HWM_BEFORE=$(kib "$KPID" VmHWM)
P0=$(now)
push "$W/v2.txt" > "$W/push-v2.out" 2> "$W/push-v2.err" || { cat "$W/push-v2.out" "$W/push-v2.err" "$W/kuzet.log" >&2; exit 1; }
P1=$(now)
HWM_AFTER=$(kib "$KPID" VmHWM); RSS_AFTER=$(kib "$KPID" VmRSS)
wait "$FPID" || { cat "$W/flood.out" >&2; exit 1; }
kill -TERM "$KPID"; wait "$KPID" 2>/dev/null || true

TOOK=$(grep -o 'took [0-9.]* s' "$W/push-v2.out" || echo "took ? s")
grep -q '^in force now' "$W/push-v2.out" || { echo "publish.sh: the version was not put in force:" >&2; cat "$W/push-v2.out" >&2; exit 1; }
FAILOPEN=$(grep -o 'failopen_overload_total=[0-9]*' "$W/kuzet.out" || echo "failopen_overload_total=0")
echo "10M-number list ($LINES lines, $((BYTES >> 20)) MiB) pushed with --activate at $RATE calls/s:"
echo "  push start to in force: CLI $TOOK; $(python3 -c "print(f'{$P1 - $P0:.2f}')") s on this script's clock"
echo "  kuzet RSS: $((RSS_BEFORE >> 10)) MiB before the push, $((RSS_AFTER >> 10)) MiB after; peak during the swap $((HWM_AFTER >> 10)) MiB (VmHWM reset before it: $RESET; peak of the run before it $((HWM_RUN >> 10)) MiB, $((HWM_BEFORE >> 10)) MiB after the reset)"
python3 - "$W/flood.out" "$(python3 -c "print($P0 - $T0)")" "$(python3 -c "print($P1 - $T0)")" "$WINDOW" "$FAILOPEN" "$BUCKET_MS" <<'PY'
import math, re, sys
out, p0, p1, window, failopen = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
b = float(sys.argv[6]) / 1000
rows, tail = [], ""
for line in open(out):
    f = line.split()
    if len(f) == 5 and re.fullmatch(r"[0-9.]+", f[0]):
        rows.append((float(f[0]), float(f[1]), float(f[2]), f[3], f[4]))
    elif line.startswith("sent "):
        tail = line.strip()
# The whole buckets in the last `window` s before the push began (T0 is
# taken just before the flood starts its clock: a few ms early), and
# every bucket the push overlaps.
before = [r for r in rows if r[0] >= math.floor(p0 / b) * b - window - 1e-6 and r[0] + b <= p0]
during = [r for r in rows if r[0] < p1 and r[0] + b > p0]
def show(name, rs):
    print(f"  p99 by {b:g} s bucket {name}: " + ", ".join(f"{r[0]:g}s {r[4]}" for r in rs) + " (us)")
def worst(rs):
    v = [r[4] for r in rs]
    return None if "lost" in v else max(int(x) for x in v)
show(f"in the {window:.0f} s before the push", before)
show(f"during it ({p0:.1f}-{p1:.1f} s after the flood began)", during)
wb, wd = worst(before), worst(during)
if wb and wd:
    print(f"  worst bucket: {wb} us before, {wd} us during ({wd / wb:.2f}x)")
else:
    print("  a bucket lost more than 1% of its calls: no p99 for it")
m = re.search(r"sent (\d+)\s+answered (\d+)\s+codes (\{.*\})", tail)
if m:
    print(f"  flood: {m.group(1)} calls sent, {int(m.group(1)) - int(m.group(2))} never answered; answers {m.group(3)}; kuzet {failopen}")
else:
    print(f"  flood: {tail}; kuzet {failopen}")
PY
