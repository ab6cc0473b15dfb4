#!/usr/bin/env bash
# Shared counts' cost on one node (issue 22): the same release kuzet with
# [cluster] off (A) and on (B, pushing to and reading from a redis-server
# of this script's own), side by side with ab.sh (saturating rate rounds,
# then CPU per call and p50/p99 at --cpu-rate calls/s), then Redis's side:
# the commands and bytes one node sends at that rate for 10 s
# (INFO commandstats and stats before and after).
#
# Usage: benches/e2e/cluster.sh [--rounds 2] [--cpu-rate 20000]
# Builds release kuzet and kuzet-sim if missing. Stops what it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=2; CPU_RATE=20000
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --cpu-rate) CPU_RATE=$2; shift 2 ;;
    *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p kuzet -p kuzet-sim
KUZET=$ROOT/target/release/kuzet
SIM=$ROOT/target/release/kuzet-sim
W=$(mktemp -d /tmp/kuzet-cluster.XXXXXX)
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >"$W/redis.log" 2>&1 &
RPID=$!
KPID=""
cleanup() {
  [ -n "$KPID" ] && kill -TERM "$KPID" 2>/dev/null || true
  kill -TERM "$RPID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
# B: kuzet with [cluster] appended to whatever config it is given.
cat >"$W/kuzet-clustered" <<WRAP
#!/usr/bin/env bash
args=(); prev=""
for a in "\$@"; do
  if [ "\$prev" = --config ]; then cp "\$a" "\$a.cluster"; printf '\n[cluster]\nredis_url = "redis://127.0.0.1:$RPORT/"\n' >>"\$a.cluster"; a="\$a.cluster"; fi
  args+=("\$a"); prev=\$a
done
exec "$KUZET" "\${args[@]}"
WRAP
chmod +x "$W/kuzet-clustered"
echo "== [cluster] off (A) and on (B), one node, ab.sh side by side" >&2
benches/e2e/ab.sh "$KUZET" "$W/kuzet-clustered" --rounds "$ROUNDS" --cpu-rate "$CPU_RATE"
echo "== Redis's side: one clustered node at $CPU_RATE calls/s for 10 s" >&2
"$SIM" gen sim/scenarios/bench.toml --out "$W/files" 2>/dev/null
printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s/"\n' "$RPORT" >>"$W/files/kuzet.toml"
"$KUZET" run --config "$W/files/kuzet.toml" --listen 127.0.0.1:26160 --control 127.0.0.1:0 --admin 127.0.0.1:0 --data "$W/data" >"$W/k.log" 2>&1 &
KPID=$!
"$SIM" ping --target 127.0.0.1:26160 --timeout-s 60 >/dev/null
stats() { redis-cli -p "$RPORT" info commandstats | awk -F'[=:,]' '/^cmdstat_/ {n += $3} END {print n}'; }
inbytes() { redis-cli -p "$RPORT" info stats | awk -F: '/^total_net_input_bytes/ {print $2+0}'; }
c0=$(stats); b0=$(inbytes); t0=$(date +%s.%N)
"$SIM" run sim/scenarios/bench.toml --target 127.0.0.1:26160 --rate "$CPU_RATE" --calls $((CPU_RATE * 10)) --timeout-ms 5000 -q --json "$W/r.json" >/dev/null
c1=$(stats); b1=$(inbytes); t1=$(date +%s.%N)
python3 - "$c0" "$c1" "$b0" "$b1" "$t0" "$t1" <<'PY'
import sys
c0, c1, b0, b1, t0, t1 = map(float, sys.argv[1:])
secs = t1 - t0
print(f"Redis: {(c1 - c0) / secs:.1f} commands/s and {(b1 - b0) / secs / 1024:.1f} KiB/s from one node (over {secs:.1f} s, the redis-cli INFO calls included)")
PY
