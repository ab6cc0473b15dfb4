#!/usr/bin/env bash
# The store's end-to-end figures, side by side in one run on this machine:
#
#   1. call p99 with recording on (every call recorded: record_allowed_every
#      = 1) versus off (--no-store): two kuzets, open loop at --rate calls/s
#      for 10 s, rounds interleaved ON, OFF, ON, OFF...; the median p99 of
#      each, and store_dropped_total;
#   2. call p99 while a full export of a big store runs: a kuzet on --data
#      DIR (fill it first: store_bench fill DIR 10000000), rounds without
#      and with `kuzet calls --all --format jsonl > /dev/null` running.
#
# Usage: benches/e2e/store.sh [--rate 20000] [--rounds 3] [--big DIR]
#                             [--every N]   (record 1 allowed call in N; 1: all)
# Builds release kuzet, kuzet-sim and store_bench if missing. Stops what
# it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RATE=20000; ROUNDS=3; BIG=""; EVERY=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --big) BIG=$(realpath "$2"); shift 2 ;;
    --every) EVERY=$2; shift 2 ;;
    *) echo "store.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p kuzet -p kuzet-sim
KUZET=$ROOT/target/release/kuzet; SIM=$ROOT/target/release/kuzet-sim
W=$(mktemp -d /tmp/kuzet-store.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$1" "$2"; }
median() { python3 -c 'import sys; r=sorted(map(float,sys.argv[1:])); print(r[len(r)//2])' "$@"; }
SCENARIO=$ROOT/sim/scenarios/bench.toml
"$SIM" gen "$SCENARIO" --out "$W/files" 2>/dev/null
TOKEN=kz_store_bench_token
HASH=$(printf %s "$TOKEN" | "$KUZET" token hash)
cat >> "$W/files/kuzet.toml" <<CONF

[store]
record_allowed_every = $EVERY

[[control.tokens]]
name = "bench"
role = "admin"
sha256 = "$HASH"
CONF

start() { # name port data extra...
  local name=$1 port=$2 data=$3; shift 3
  "$KUZET" run --config "$W/files/kuzet.toml" --listen "127.0.0.1:$port" --log warn \
    --data "$data" "$@" >"$W/$name.out" 2>"$W/$name.log" &
  PIDS+=($!); eval "PID_$name=$!"
  "$SIM" ping --target "127.0.0.1:$port" --timeout-s 60 || { cat "$W/$name.log" >&2; exit 1; }
}
p99() { # port tag
  "$SIM" run "$SCENARIO" --target "127.0.0.1:$1" --rate "$RATE" --calls $((RATE * 10)) \
    --timeout-ms 5000 -q --json "$W/$2.json" >/dev/null
  jget "$W/$2.json" 'd["latency_us"]["p99"]'
}

start on 27060 "$W/data-on" --control 127.0.0.1:27051 --admin 127.0.0.1:0
start off 27070 "$W/data-off" --control 127.0.0.1:27052 --admin 127.0.0.1:0 --no-store
ON=(); OFF=()
for r in $(seq "$ROUNDS"); do
  ON+=("$(p99 27060 on$r)"); OFF+=("$(p99 27070 off$r)")
  echo "round $r: recording on p99 ${ON[-1]} us, off ${OFF[-1]} us" >&2
done
kill -TERM "$PID_on" "$PID_off"; wait "$PID_on" "$PID_off" 2>/dev/null || true
dropped=$(grep -o 'store_dropped_total=[0-9]*' "$W/on.out" || echo "store_dropped_total=0")
recorded=$(grep -o 'store_records_total=[0-9]*' "$W/on.out" || echo "store_records_total=0")
echo "recording (1 allowed call in $EVERY) at $RATE calls/s: median p99 on $(median "${ON[@]}") us, off $(median "${OFF[@]}") us; $recorded, $dropped"

if [ -n "$BIG" ]; then
  start big 27080 "$BIG" --control 127.0.0.1:27053 --admin 127.0.0.1:0
  QUIET=(); BUSY=()
  for r in $(seq "$ROUNDS"); do
    QUIET+=("$(p99 27080 quiet$r)")
    KUZET_TOKEN=$TOKEN "$KUZET" calls --control 127.0.0.1:27053 --all --format jsonl >/dev/null &
    EXP=$!
    BUSY+=("$(p99 27080 busy$r)")
    still=no; kill -0 "$EXP" 2>/dev/null && still=yes
    kill "$EXP" 2>/dev/null || true; wait "$EXP" 2>/dev/null || true
    echo "round $r: p99 ${QUIET[-1]} us quiet, ${BUSY[-1]} us during the export (export still running at the end: $still)" >&2
  done
  echo "full export of $BIG: median p99 quiet $(median "${QUIET[@]}") us, during the export $(median "${BUSY[@]}") us"
fi
