#!/usr/bin/env bash
# The servers the suite starts from the distribution's packages: throwaway PostgreSQL clusters (tests/postgres.py),
# HAProxy in front of gateway replicas (tests/balancer.py), and headless Chromium for the console's browser tests
# (tests/browser/), with a CJK font so that its screenshots show Chinese text.  Installs whichever is missing with
# apt-get (as root, or through sudo when it needs no password; the package lists are refreshed only when the install
# cannot find them).  Where neither is possible it says so and those tests skip themselves.  Run by `make test` and
# .ci/run.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
{ command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=zh family)" ]; } || missing+=(fonts-wqy-microhei)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "not installing ${missing[*]} (needs root): their tests will be skipped (apt-get install ${missing[*]})"
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get: ${missing[*]} not installed, their tests will be skipped"
    exit 0
fi
echo "installing ${missing[*]} for the tests"
install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends)
log=$(mktemp)
if ! "${install[@]}" "${missing[@]}" >"$log" 2>&1; then
    "${sudo[@]}" apt-get update -qq >>"$log" 2>&1 && "${install[@]}" "${missing[@]}" >>"$log" 2>&1 \
        || { cat "$log"; rm -f "$log"; exit 1; }
fi
rm -f "$log"
