#!/usr/bin/env bash
# Installs system pieces the test suite uses where they are missing and can be had
# (Debian's chromium and fonts-noto-cjk for the web UI browser tests and their screenshots,
# libjemalloc2 for training's allocator).
# Never fails the run: tests that need a missing piece skip with a visible reason.
set -u
venv=${1:-.venv}
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fc-list 2>/dev/null | grep -qi "Noto Sans CJK" || missing+=(fonts-noto-cjk)
[ -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] || [ "$(uname -m)" != x86_64 ] || missing+=(libjemalloc2)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || (apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "test-setup: could not install ${missing[*]}; the tests that need them will skip"
fi
exit 0
