#!/usr/bin/env bash
# Quick start: install the daemon, start a local MQTT broker if none runs, and listen.
# With a microphone it listens live (Ctrl-C stops it); without one it plays the bundled
# demo recording (2 claps, then 3 claps, with a door knock in between) through the daemon.
# Every MQTT message the daemon sends is printed by a subscriber beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=.venv/bin

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  echo "quickstart: starting a temporary Mosquitto broker on localhost:1883"
  mosquitto -p 1883 >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
fi
mosquitto_sub -h 127.0.0.1 -p 1883 -v -t 'cmnd/#' -t 'zigbee2mqtt/#' -t 'claudio/#' \
  -F '  mqtt> %t %p' & pids+=($!)

live=1
if [ "${CLAUDIO_DEMO:-}" != 1 ] && "$bin/claudio-daemon" devices >/dev/null 2>&1; then
  echo "quickstart: listening to the default microphone - clap twice for the lamp, three times for the TV (Ctrl-C stops)"
  # Exit status 2: the input device could not be opened after all; fall back to the demo.
  "$bin/claudio-daemon" run --rules rules.yaml || { [ $? -eq 2 ] && live=0; }
else
  live=0
fi
if [ "$live" = 0 ]; then
  echo "quickstart: no microphone found - playing demo/claps-demo.flac through the daemon"
  "$bin/claudio-daemon" run --rules rules.yaml --input demo/claps-demo.flac
  sleep 1
fi
