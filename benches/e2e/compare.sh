#!/usr/bin/env bash
# Side-by-side end-to-end benchmark, one machine, one run:
#   kuzet (release build, redirect mode, 2 UDP workers)
#   Kamailio 5.6 from Debian (deploy/kamailio/kamailio.cfg: the same list
#     policy with htable, 2 workers)
#   kuzet-sim null (canned 302, 2 threads): the physical reference
# all loaded with the lists of sim/scenarios/bench.toml (100k blocklist).
#
# All three run at once (idle servers cost nothing); then:
#   1. kuzet-sim --max (window 1000), --rounds rounds interleaved across the
#      systems: the median round's saturating rate, and its timeouts;
#   2. kuzet-sim open loop at 50% of that rate: p50/p99/p99.9 latency,
#      measured from each call's scheduled send time;
#   3. kuzet-sim open loop at the same offered load for every system
#      (--cpu-rate, default 20000/s): server CPU per call, from
#      /proc/<pid>/stat of every process of the server;
#   4. SIPp (the exported traffic, uac.xml) at stepped rates: the highest
#      step with no failed call and under 0.1% retransmissions;
#   5. resident memory of the server's processes: RSS summed, and PSS
#      (shared pages split between processes; fair for Kamailio's forks).
# The max rate reported is the saturating rate when it had under 0.1%
# timeouts, else the best SIPp step.
#
# Usage: benches/e2e/compare.sh [--calls N] [--cpu-rate R] [--steps "10000 20000 30000"]
#                               [--systems "null kuzet kamailio"] [--rounds 3]
# (the ratios need all three systems)
# Installs SIPp, Kamailio and python3 when missing; stops every process it
# started, on success or failure. Takes 4-5 minutes on 2 cores after the
# release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CALLS=300000
ROUNDS=3
CPU_RATE=20000
STEPS="10000 20000 30000 40000"
STEP_SECS=5
SYSTEMS="null kuzet kamailio"
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=$2; shift 2 ;;
    --cpu-rate) CPU_RATE=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash scripts/install-deps.sh
command -v python3 >/dev/null || { sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_=sudo; $sudo_ apt-get install -y -qq python3 >/dev/null; }
KAMAILIO=$(command -v kamailio || echo /usr/sbin/kamailio)

echo "== building release binaries" >&2
cargo build --release -q -p kuzet -p kuzet-sim
KUZET=$ROOT/target/release/kuzet
SIM=$ROOT/target/release/kuzet-sim
SCENARIO=$ROOT/sim/scenarios/bench.toml

W=$(mktemp -d /tmp/kuzet-compare.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

"$SIM" gen "$SCENARIO" --out "$W/files" --export-sipp "$W/sipp" 2>/dev/null

jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$1" "$2"; }

# All processes of a server: the pid and its descendants.
tree() {
  local all=$1 kids
  kids=$(pgrep -P "$1" || true)
  for k in $kids; do all="$all $(tree "$k")"; done
  echo "$all"
}
# Sums an awk expression over /proc/<pid>/<file> for every process of a server.
proc_sum() {
  local t=0 p
  for p in $(tree "$1"); do
    [ -r "/proc/$p/$2" ] || continue
    t=$((t + $(awk "$3" "/proc/$p/$2")))
  done
  echo $t
}
cpu_ticks() { proc_sum "$1" stat '{print $14 + $15}'; }
pss_kib() { proc_sum "$1" smaps_rollup '/^Pss:/ {print $2}'; }
rss_kib() { proc_sum "$1" status '/^VmRSS:/ {print $2}'; }
HZ=$(getconf CLK_TCK)

start_system() {
  local name=$1 port=$2
  case "$name" in
    kuzet)
      "$KUZET" run --config "$W/files/kuzet.toml" --listen "127.0.0.1:$port" --control 127.0.0.1:0 --admin 127.0.0.1:0 \
        --data "$W/data" --log warn >"$W/$name.log" 2>&1 & ;;
    kamailio)
      "$KAMAILIO" -f "$ROOT/deploy/kamailio/kamailio.cfg" -DD -E -n 2 -m 256 -M 16 \
        -l "udp:127.0.0.1:$port" -A "KZ_DBURL=\"text://$W/files/kamailio\"" >"$W/$name.log" 2>&1 & ;;
    null)
      "$SIM" null --listen "127.0.0.1:$port" --threads 2 >"$W/$name.log" 2>&1 & ;;
  esac
  PID=$!
  PIDS+=("$PID")
  "$SIM" ping --target "127.0.0.1:$port" --timeout-s 60 || { cat "$W/$name.log" >&2; exit 1; }
}

stop_system() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

sipp_step() {
  # prints: rate successful failed retransmissions
  local port=$1 rate=$2 dir=$W/sipp-run
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && timeout 120 sipp -sf "$W/sipp/uac.xml" -inf "$W/sipp/mobile.csv" -i 127.0.0.1 \
     -m $((rate * STEP_SECS)) -r "$rate" -rp 1000 -buff_size 4194304 -nostdin -timeout 60s \
     -trace_stat -stf stat.csv -fd 1 "127.0.0.1:$port" >/dev/null 2>&1 || true)
  python3 - "$dir/stat.csv" "$rate" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=';'))
h, last = rows[0], rows[-1]
col = lambda n: int(last[h.index(n)])
print(sys.argv[2], col("SuccessfulCall(C)"), col("FailedCall(C)"), col("Retransmissions(C)"))
PY
}

declare -A MAX CPU P50 P99 P999 PSS RSS SIPP TMO HRTX PORT PIDOF ROUNDS_OUT
for s_ in null kuzet kamailio; do MAX[$s_]=0; CPU[$s_]=0; P50[$s_]=0; P99[$s_]=0; P999[$s_]=0; PSS[$s_]=0; RSS[$s_]=0; SIPP[$s_]=0; TMO[$s_]=0; HRTX[$s_]=0; ROUNDS_OUT[$s_]=""; done

# All systems start at once and stay up: an idle server sleeps in recv and
# costs nothing, and the saturation runs can then be interleaved.
port=25060
for sys in $SYSTEMS; do
  port=$((port + 10))
  echo "== starting $sys on 127.0.0.1:$port" >&2
  start_system "$sys" "$port"
  PORT[$sys]=$port
  PIDOF[$sys]=$PID
done

# 1. Saturation, interleaved rounds; the median round counts.
for round in $(seq "$ROUNDS"); do
  for sys in $SYSTEMS; do
    "$SIM" run "$SCENARIO" --target "127.0.0.1:${PORT[$sys]}" --max --calls "$CALLS" --t1-ms 500 --timeout-ms 5000 -q \
      --json "$W/$sys.max$round.json" >/dev/null
    cps=$(jget "$W/$sys.max$round.json" 'round(d["cps"])')
    tmo=$(jget "$W/$sys.max$round.json" 'd["timeouts"] / d["sent"]')
    ROUNDS_OUT[$sys]="${ROUNDS_OUT[$sys]} $cps:$tmo"
    echo "   round $round $sys: $cps calls/s, timeouts $tmo" >&2
  done
done
for sys in $SYSTEMS; do
  read -r MAX[$sys] TMO[$sys] < <(python3 -c '
import sys
r = sorted((int(c), float(t)) for c, t in (x.split(":") for x in sys.argv[1:]))
print(*r[len(r) // 2])' ${ROUNDS_OUT[$sys]})
done

for sys in $SYSTEMS; do
  port=${PORT[$sys]}; pid=${PIDOF[$sys]}
  echo "== $sys" >&2
  # 2. Latency at half the saturating rate, open loop.
  half=$(( ${MAX[$sys]} / 2 ))
  "$SIM" run "$SCENARIO" --target "127.0.0.1:$port" --rate "$half" --calls $((half * 8)) --timeout-ms 5000 -q \
    --json "$W/$sys.half.json" >/dev/null
  P50[$sys]=$(jget "$W/$sys.half.json" 'd["latency_us"]["p50"]')
  P99[$sys]=$(jget "$W/$sys.half.json" 'd["latency_us"]["p99"]')
  P999[$sys]=$(jget "$W/$sys.half.json" 'd["latency_us"]["p999"]')
  HRTX[$sys]=$(jget "$W/$sys.half.json" 'd["retransmissions"] + d["timeouts"]')
  echo "   at $half/s: p50/p99/p999 ${P50[$sys]}/${P99[$sys]}/${P999[$sys]} us, retransmissions+timeouts ${HRTX[$sys]}" >&2
  # 3. CPU per call at one offered load for all.
  c0=$(cpu_ticks "$pid")
  "$SIM" run "$SCENARIO" --target "127.0.0.1:$port" --rate "$CPU_RATE" --calls $((CPU_RATE * 10)) --timeout-ms 5000 -q \
    --json "$W/$sys.cpu.json" >/dev/null
  c1=$(cpu_ticks "$pid")
  answered=$(jget "$W/$sys.cpu.json" 'd["answered"]')
  CPU[$sys]=$(python3 -c "print(round(($c1 - $c0) / $HZ * 1e6 / max($answered, 1), 2))")
  echo "   at $CPU_RATE/s: ${CPU[$sys]} us of CPU a call" >&2
  # 4. SIPp at stepped rates.
  best=0
  for r in $STEPS; do
    read -r rate ok failed retrans < <(sipp_step "$port" "$r")
    echo "   sipp $rate/s: ok $ok failed $failed retransmissions $retrans" >&2
    if [ "$failed" -eq 0 ] && [ "$ok" -gt 0 ] && [ $((retrans * 1000)) -lt "$ok" ]; then best=$rate; fi
  done
  SIPP[$sys]=$best
  # 5. Memory, after all of the above.
  PSS[$sys]=$(( $(pss_kib "$pid") / 1024 ))
  RSS[$sys]=$(( $(rss_kib "$pid") / 1024 ))
done
for sys in $SYSTEMS; do stop_system "${PIDOF[$sys]}"; done

python3 - <<PY
sys_ = ["kuzet", "kamailio", "null"]
mx = {"kuzet": ${MAX[kuzet]}, "kamailio": ${MAX[kamailio]}, "null": ${MAX[null]}}
tmo = {"kuzet": ${TMO[kuzet]}, "kamailio": ${TMO[kamailio]}, "null": ${TMO[null]}}
sipp = {"kuzet": ${SIPP[kuzet]}, "kamailio": ${SIPP[kamailio]}, "null": ${SIPP[null]}}
cpu = {"kuzet": ${CPU[kuzet]}, "kamailio": ${CPU[kamailio]}, "null": ${CPU[null]}}
p50 = {"kuzet": ${P50[kuzet]}, "kamailio": ${P50[kamailio]}, "null": ${P50[null]}}
p99 = {"kuzet": ${P99[kuzet]}, "kamailio": ${P99[kamailio]}, "null": ${P99[null]}}
p999 = {"kuzet": ${P999[kuzet]}, "kamailio": ${P999[kamailio]}, "null": ${P999[null]}}
pss = {"kuzet": ${PSS[kuzet]}, "kamailio": ${PSS[kamailio]}, "null": ${PSS[null]}}
rss = {"kuzet": ${RSS[kuzet]}, "kamailio": ${RSS[kamailio]}, "null": ${RSS[null]}}
hrtx = {"kuzet": ${HRTX[kuzet]}, "kamailio": ${HRTX[kamailio]}, "null": ${HRTX[null]}}
best = {s: (mx[s] if tmo[s] < 0.001 else sipp[s]) for s in sys_}
print()
print(f"{'system':<10} {'max cps':>9} {'(t/o %)':>8} {'sipp max':>9} {'p50 us':>8} {'p99 us':>8} {'p999 us':>8} {'rtx':>6} {'cpu us/call':>12} {'RSS MiB':>8} {'PSS MiB':>8}")
print(f"{'':<10} {'sim --max':>9} {'':>8} {'<0.1% rtx':>9} {'at 50% of max':>33} {'at ${CPU_RATE}/s':>12}")
for s in sys_:
    print(f"{s:<10} {best[s]:>9} {tmo[s]*100:>7.3f}% {sipp[s]:>9} {p50[s]:>8} {p99[s]:>8} {p999[s]:>8} {hrtx[s]:>6} {cpu[s]:>12} {rss[s]:>8} {pss[s]:>8}")
r = lambda a, b: f"{a / b:.2f}" if b else "-"
print()
print(f"kuzet/kamailio max cps: {r(best['kuzet'], best['kamailio'])}   kuzet/null max cps: {r(best['kuzet'], best['null'])}")
print(f"kamailio/kuzet CPU per call at ${CPU_RATE}/s: {r(cpu['kamailio'], cpu['kuzet'])}")
print(f"driver against null: {mx['null']} cps = {r(mx['null'], best['kamailio'])} x kamailio's max")
PY
