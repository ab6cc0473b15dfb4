#!/usr/bin/env bash
# Installs what kuzet's tests and benchmarks need that cargo cannot fetch:
# SIPp (Debian package sip-tester) and Kamailio (package kamailio, for the
# side-by-side benchmark and the test that its config matches kuzet's
# policy), ss (iproute2, to read a listening socket's backlog), openssl
# (test certificates for the register over TLS), unshare and prlimit
# (util-linux: the full-disk test's private tmpfs), and with FUZZ=1 afl++
# for scripts/fuzz.sh. Safe to run again: it installs only
# what is missing.
set -euo pipefail
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || need+=(kamailio)
command -v ss >/dev/null 2>&1 || [ -x /usr/sbin/ss ] || [ -x /bin/ss ] || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
# AFL++ for scripts/fuzz.sh (FUZZ=1); the suite's fuzz pass needs nothing.
if [ "${FUZZ:-0}" = 1 ]; then command -v afl-fuzz >/dev/null 2>&1 || need+=(afl++); fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian package starts a system Kamailio on 5060 where systemd runs;
# kuzet's tests and benchmarks start their own, so stop that one.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet kamailio 2>/dev/null; then
  $SUDO systemctl stop kamailio || true
fi
