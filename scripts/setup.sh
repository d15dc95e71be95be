#!/usr/bin/env bash
# Installs Claudio's system packages and a virtual environment in .venv.
#   scripts/setup.sh            daemon only (what a Raspberry Pi needs)
#   scripts/setup.sh --train    plus the training extra (torch, torchaudio) and test tools
set -euo pipefail
cd "$(dirname "$0")/.."
train=0
[ "${1:-}" = "--train" ] && train=1

pkgs="mosquitto mosquitto-clients pulseaudio pulseaudio-utils libportaudio2 libsndfile1 systemd"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$train" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[train,dev]'
else
  .venv/bin/python -m pip install -q -e '.[dev]'
fi
echo "setup: ready (.venv)"
