#!/usr/bin/env bash
# A/B end-to-end: two kuzet binaries (say, before and after a change) on
# one machine in one run, under the same driver and traffic
# (sim/scenarios/bench.toml, 100k blocklist, or --scenario).
#
#   1. kuzet-sim --max (window 1000), --rounds rounds interleaved A, B, A,
#      B...: the median round's saturating rate for each, and each round;
#   2. kuzet-sim open loop at --cpu-rate calls/s (default 20000) for each:
#      server CPU per call (/proc/<pid>/stat), and p50/p99 latency.
#
# Usage: benches/e2e/ab.sh A_KUZET B_KUZET [--rounds 3] [--calls 300000]
#                          [--cpu-rate 20000] [--scenario FILE] [--args "..."]
#                          [--sed-a EXPR]
# --args adds arguments to both `kuzet run` command lines; --sed-a edits
# A's copy of the generated config with sed (an older build may not know
# a newer key: --sed-a '/^roamers/d'). The driver is
# this checkout's release kuzet-sim (built if missing). Stops everything it
# started. About 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
[ $# -ge 2 ] || { sed -n '2,19p' "$0"; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2"); shift 2
ROUNDS=3; CALLS=300000; CPU_RATE=20000; SCENARIO=$ROOT/sim/scenarios/bench.toml; EXTRA=""; SED_A=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --calls) CALLS=$2; shift 2 ;;
    --cpu-rate) CPU_RATE=$2; shift 2 ;;
    --scenario) SCENARIO=$(realpath "$2"); shift 2 ;;
    --args) EXTRA=$2; shift 2 ;;
    --sed-a) SED_A=$2; shift 2 ;;
    *) echo "ab.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p kuzet-sim
SIM=$ROOT/target/release/kuzet-sim
W=$(mktemp -d /tmp/kuzet-ab.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
"$SIM" gen "$SCENARIO" --out "$W/files" 2>/dev/null
cp "$W/files/kuzet.toml" "$W/files/kuzet-a.toml"
[ -n "$SED_A" ] && sed -i "$SED_A" "$W/files/kuzet-a.toml"
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$1" "$2"; }
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A PORT PID RUNS
port=26060
for side in A B; do
  port=$((port + 10)); PORT[$side]=$port
  bin=$A; conf=$W/files/kuzet-a.toml
  [ "$side" = B ] && { bin=$B; conf=$W/files/kuzet.toml; }
  # Builds with a store and a control API get their own of each, so the
  # two sides never share a data directory or port 50051.
  own=""
  if "$bin" run --help | grep -q -- '--control'; then own="--control 127.0.0.1:0 --data $W/data-$side"; if "$bin" run --help | grep -q -- "--admin"; then own="$own --admin 127.0.0.1:0"; fi; fi
  # shellcheck disable=SC2086
  "$bin" run --config "$conf" --listen "127.0.0.1:$port" $own $EXTRA >"$W/$side.log" 2>&1 &
  PID[$side]=$!; PIDS+=("${PID[$side]}")
  "$SIM" ping --target "127.0.0.1:$port" --timeout-s 60 || { cat "$W/$side.log" >&2; exit 1; }
  RUNS[$side]=""
done
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    "$SIM" run "$SCENARIO" --target "127.0.0.1:${PORT[$side]}" --max --calls "$CALLS" --t1-ms 500 --timeout-ms 5000 -q \
      --json "$W/$side.$round.json" >/dev/null
    cps=$(jget "$W/$side.$round.json" 'round(d["cps"])')
    RUNS[$side]="${RUNS[$side]} $cps"
    echo "round $round $side: $cps calls/s, timeouts $(jget "$W/$side.$round.json" 'd["timeouts"]')" >&2
  done
done
for side in A B; do
  c0=$(cpu_ticks "${PID[$side]}")
  "$SIM" run "$SCENARIO" --target "127.0.0.1:${PORT[$side]}" --rate "$CPU_RATE" --calls $((CPU_RATE * 10)) --timeout-ms 5000 -q \
    --json "$W/$side.cpu.json" >/dev/null
  c1=$(cpu_ticks "${PID[$side]}")
  ans=$(jget "$W/$side.cpu.json" 'd["answered"]')
  cpu=$(python3 -c "print(round(($c1 - $c0) / $HZ * 1e6 / max($ans, 1), 2))")
  echo "$side: max rounds${RUNS[$side]}; median $(python3 -c 'import sys; r=sorted(map(int,sys.argv[1:])); print(r[len(r)//2])' ${RUNS[$side]}) calls/s; at $CPU_RATE/s: $cpu us CPU/call, p50 $(jget "$W/$side.cpu.json" 'd["latency_us"]["p50"]') us, p99 $(jget "$W/$side.cpu.json" 'd["latency_us"]["p99"]') us"
done
