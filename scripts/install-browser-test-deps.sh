#!/usr/bin/env bash
# Test set-up for the browser test (test/browser): Debian's chromium (driven by playwright-core) and a
# font for its screenshots.
# Called by .ci/run; not part of a user's set-up. Idempotent: does nothing where chromium is installed.
# Run as root, or as a user with sudo.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium is installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-browser-test-deps.sh: run it as root (apt-get install chromium needs root; there is no sudo)" >&2; exit 1; }
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
/usr/bin/chromium --version
