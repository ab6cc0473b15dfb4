#!/usr/bin/env bash
# Installs what kuzet's tests and benchmarks need that cargo cannot fetch:
# SIPp (Debian package sip-tester) and Kamailio (package kamailio, for the
# side-by-side benchmark and the test that its config matches kuzet's
# policy), ss (iproute2, to read a listening socket's backlog), openssl
# (test certificates for the register and the Centre over TLS),
# redis-server and postgresql (the cluster and PostgreSQL store tests start
# their own on free ports), unshare and prlimit
# (util-linux: the full-disk test's private tmpfs), systemd-analyze and
# systemd-sysusers (package systemd: the deploy test verifies the unit
# files), promtool (package prometheus: the alert rules' test), PyYAML
# (python3-yaml: the deploy test parses the Kubernetes manifests),
# DuckDB (from PyPI, pinned, into the virtual environment .tools/venv that
# this script makes with python3-venv: the journal test reads kuzet's
# Parquet files with it), and with FUZZ=1 afl++ for scripts/fuzz.sh. Safe to run again: it installs
# only what is missing, and leaves no packaged service running.
set -euo pipefail
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || need+=(kamailio)
command -v ss >/dev/null 2>&1 || [ -x /usr/sbin/ss ] || [ -x /bin/ss ] || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
# PostgreSQL's server binaries (Debian keeps them in /usr/lib/postgresql/N/bin):
# the PostgreSQL store's tests start their own server with initdb on a free port.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
python3 -c 'import yaml' >/dev/null 2>&1 || /usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || need+=(python3-yaml)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# AFL++ for scripts/fuzz.sh (FUZZ=1); the suite's fuzz pass needs nothing.
if [ "${FUZZ:-0}" = 1 ]; then command -v afl-fuzz >/dev/null 2>&1 || need+=(afl++); fi
# Every crate the lockfile names, for every target: the architecture
# test reads `cargo metadata --offline`, and a build fetches only what the
# host needs (ed25519's curve crate names a crate for other targets).
(cd "$(dirname "$0")/.." && cargo fetch --locked -q)
root="$(cd "$(dirname "$0")/.." && pwd)"
# DuckDB for the journal test, once the packages are there.
venv() {
  local v="$root/.tools/venv"
  if ! "$v/bin/python" -c 'import duckdb' >/dev/null 2>&1; then
    echo "install-deps: DuckDB into $v" >&2
    python3 -m venv "$v"
    "$v/bin/pip" install -q --disable-pip-version-check "duckdb==$DUCKDB_VERSION"
  fi
}
DUCKDB_VERSION=2.0.1
if [ ${#need[@]} -eq 0 ]; then
  venv
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The kamailio and prometheus packages start their services on install
# (Kamailio on 5060, Prometheus on 9090, PostgreSQL on 5432); the tests start their own
# processes and need neither. Where no policy-rc.d forbids it already,
# one is put in place for the install, so no service starts.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# install-deps.sh: start no service while installing.\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 0755 "$policy"
  trap '$SUDO rm -f "$policy"' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Where systemd runs, stop such a service if it runs anyway (a policy-rc.d
# that allows it, or an earlier install).
if command -v systemctl >/dev/null 2>&1; then
  for svc in kamailio prometheus; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      $SUDO systemctl stop "$svc" || true
    fi
  done
fi
venv
