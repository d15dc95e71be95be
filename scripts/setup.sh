#!/usr/bin/env bash
# Installs Claudio's system packages and a virtual environment in .venv.
#   scripts/setup.sh            daemon only (what a Raspberry Pi needs)
#   scripts/setup.sh --train    plus the training extra (torch, torchaudio) and test tools
set -euo pipefail
cd "$(dirname "$0")/.."
train=0
[ "${1:-}" = "--train" ] && train=1

# The daemon and the quick start's broker; the tests also want a PulseAudio server (a virtual
# microphone) and systemd's tools. On a desktop whose sound is PipeWire, pulseaudio would
# replace pipewire-audio (they conflict) and take GNOME's metapackage with it: never there.
pkgs="python3 python3-venv mosquitto mosquitto-clients libportaudio2 libsndfile1"
if [ "$train" = 1 ]; then
  pkgs="$pkgs systemd"
  if dpkg -s pipewire-audio >/dev/null 2>&1 || dpkg -s pipewire-pulse >/dev/null 2>&1; then
    echo "setup: PipeWire handles sound here: not installing pulseaudio (its tests are skipped)"
  else
    pkgs="$pkgs pulseaudio pulseaudio-utils"
  fi
fi
. scripts/system.sh
# shellcheck disable=SC2086
install_missing $pkgs
ensure_venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$train" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[train,dev]'
else
  .venv/bin/python -m pip install -q -e '.[dev]'
fi
echo "setup: ready (.venv)"
