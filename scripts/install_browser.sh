#!/usr/bin/env bash
# Debian's headless Chromium and its WebDriver for the browser tests (marker `browser`),
# installed with apt-get when either is missing.
#   bash scripts/install_browser.sh
# Without apt-get it says so and exits 0: those tests then skip with the same advice.
# UF_SKIP_BROWSER=1 skips the install (the tests skip too if the browser is absent).
set -euo pipefail
if [[ "${UF_SKIP_BROWSER:-0}" == "1" ]]; then exit 0; fi
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[browser] apt-get not available: the tests marked 'browser' will be skipped" \
       "(install chromium and chromedriver to run them)" >&2
  exit 0
fi
SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then SUDO=(sudo -n); fi  # -n: fail instead of waiting for a password
echo "[browser] installing chromium chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
