#!/usr/bin/env bash
# How long kuzet keeps every verdict id findable under a flood of blocked
# calls at its maximum rate: the record queue's room, in seconds.
#
# kuzet (release) runs with a store and a blocklist that blocks every
# caller of the flood. The store is held locked from outside (a writer
# that never lets go, as a dead disk would), so nothing leaves the record
# queue; kuzet-sim floods blocked calls well past what kuzet can score.
# /metrics is read every 250 ms: the queue's fill, blocks, and the blocks
# answered without a verdict id (the queue had no room). Reported: the
# rate kuzet blocked at, the bytes a record takes, the seconds until the
# first id was withheld (the whole queue: blocks may use all of it), and
# the seconds the reserve alone holds (what is left for blocks once flags
# and samples are refused).
#
# With --drain the store is left working: the queue then fills only by
# what the flood outruns the store's writer.
#
# Usage: benches/e2e/queue_room.sh [--kuzet BIN] [--queue-mb 64]
#                                  [--rate 300000] [--secs 30] [--drain]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
KUZET=$ROOT/target/release/kuzet; QUEUE_MB=64; RATE=300000; SECS=30; DRAIN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kuzet) KUZET=$(realpath "$2"); shift 2 ;;
    --queue-mb) QUEUE_MB=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --drain) DRAIN=1; shift ;;
    *) echo "queue_room.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p kuzet-sim
[ -x "$KUZET" ] || cargo build --release -q -p kuzet
SIM=$ROOT/target/release/kuzet-sim
W=$(mktemp -d /tmp/kuzet-room.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
echo "+7701*,the flood's callers" > "$W/block.txt"
printf '[store]\nqueue_mb = %s\n' "$QUEUE_MB" > "$W/kuzet.toml"
SIP=127.0.0.1:25960; ADMIN=127.0.0.1:25961
"$KUZET" run -c "$W/kuzet.toml" --listen "$SIP" --admin "$ADMIN" --no-control \
  --blocklist "$W/block.txt" --data "$W/data" --log warn 2> "$W/kuzet.log" &
PIDS+=($!)
"$SIM" ping --target "$SIP" --timeout-s 30 > /dev/null
# The store's write lock, held by another connection until killed.
if [ "$DRAIN" = 0 ]; then
python3 - "$W/data/kuzet.db" <<'PY' &
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN IMMEDIATE")
time.sleep(3600)
PY
PIDS+=($!)
fi
sleep 1
python3 - "$ADMIN" "$SECS" > "$W/samples.txt" <<'PY' &
import sys, time, urllib.request
addr, secs = sys.argv[1], float(sys.argv[2])
want = ("kuzet_record_queue_used_bytes", "kuzet_record_queue_capacity_bytes",
        "kuzet_record_queue_reserved_bytes", "kuzet_verdict_block_total",
        "kuzet_verdict_ids_withheld_total")
t0 = time.time()
while time.time() - t0 < secs + 3:
    v = {}
    for line in urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode().splitlines():
        k, _, x = line.partition(" ")
        if k in want:
            v[k] = float(x)
    print(time.time() - t0, *(v.get(k, 0) for k in want), flush=True)
    time.sleep(0.25)
PY
SAMPLER=$!
"$SIM" flood --target "$SIP" --phase "$RATE:$SECS" > "$W/flood.txt" 2>&1 || true
wait "$SAMPLER" || true
python3 - "$W/samples.txt" <<'PY'
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
# t, used, cap, reserved, blocks, withheld
start = next(r for r in rows if r[4] > 0)
full = next((r for r in rows if r[5] > 0), None)
last = rows[-1]
if full is None:
    print("the queue never filled: flood longer or with a smaller --queue-mb")
    sys.exit(1)
span = full[0] - start[0]
given = full[4] - full[5]
rate = (full[4] - start[4]) / span
per_record = full[1] / given if given else 0
cap, reserved = full[2], full[3]
print(f"blocked at {rate:,.0f} calls/s (kuzet's maximum under this flood)")
print(f"a record takes {per_record:,.0f} bytes of the queue ({given:,.0f} records in {full[1]/2**20:.1f} MiB)")
print(f"queue {cap/2**20:.0f} MiB: every verdict id findable for {span:.1f} s of the flood "
      f"(computed: {cap/per_record/rate:.1f} s)")
print(f"its reserve alone ({reserved/2**20:.0f} MiB, blocks and redirects only): "
      f"{reserved/per_record/rate:.1f} s")
print(f"after {last[0]-start[0]:.0f} s: {last[4]:,.0f} blocked, {last[5]:,.0f} answered without a verdict id")
PY
