#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for tests/test_ui_browser.py (Playwright drives it
# with executable_path; `playwright install` is never used). Idempotent and quiet: does nothing when
# Chromium is there, installs it with apt-get when running as root, and otherwise only says why the
# browser test will be skipped. Never fails the caller: the test skips with a clear reason instead.
set -u

CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: $CHROMIUM missing and cannot install it here (needs root and apt-get);" \
       "tests/test_ui_browser.py will be skipped. Install it with: sudo apt-get install -y chromium" >&2
  exit 0
fi

echo "ensure_chromium: installing chromium with apt-get (one time)" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# the package lists may be stale or absent on a fresh machine: update once, then retry
if ! apt-get install -y -qq chromium >"$log" 2>&1; then
  apt-get update -qq >>"$log" 2>&1
  apt-get install -y -qq chromium >>"$log" 2>&1
fi
if [ -x "$CHROMIUM" ]; then
  rm -f "$log"
else
  echo "ensure_chromium: apt-get could not install chromium (log: $log);" \
       "tests/test_ui_browser.py will be skipped" >&2
fi
exit 0
