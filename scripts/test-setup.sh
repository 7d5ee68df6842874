#!/usr/bin/env bash
# Installs system pieces the test suite uses where they are missing and can be had
# (Debian's chromium for the web UI browser tests). Never fails the run: tests that
# need a missing piece skip with a visible reason.
set -u
venv=${1:-.venv}
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "test-setup: could not install chromium; browser tests will skip"
fi
exit 0
