#!/usr/bin/env bash
# End to end, as at home: a recording is played into a virtual microphone and the daemon,
# listening to that microphone like any other, must switch the lamp and the TV over MQTT.
#
#   scripts/e2e-pulse.sh [FILE]     FILE: two claps, then three claps (default demo/claps-demo.flac)
#
# Everything runs privately and is removed on exit: a PulseAudio server in a temp directory
# (its own socket; your desktop's sound is untouched) with a null sink whose monitor is the
# "microphone", a Mosquitto broker on a free loopback port, the daemon (`--device pulse`,
# through PortAudio and ALSA's pulse plugin), and an MQTT subscriber. The recording is
# played with paplay; then the script prints what the lamp and the TV received and PASS
# (exit 0) when each got exactly one TOGGLE, FAIL (exit 1) otherwise, 2 when a tool is missing.
# The daemon uses the shipped model when there is one (or $CLAUDIO_MODEL), else claps only.
set -euo pipefail
cd "$(dirname "$0")/.."

file=${1:-demo/claps-demo.flac}
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
LAMP=cmnd/lamp/POWER
TV=zigbee2mqtt/living_room_tv/set
SINK=claudio_e2e_mic

say() { echo "e2e-pulse: $*"; }
die() { say "$*" >&2; exit 2; }

[ -f "$file" ] || die "$file: recording not found (give one: scripts/e2e-pulse.sh FILE)"
for tool in pulseaudio pactl paplay mosquitto; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/setup.sh installs it)"
done
"$py" -c 'import claudio_daemon, sounddevice' 2>/dev/null \
  || die "$py cannot import claudio_daemon and sounddevice (run scripts/setup.sh)"

work=$(mktemp -d "${TMPDIR:-/tmp}/claudio-e2e.XXXXXX")
pids=()
cleanup() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until SECONDS COMMAND...: poll a condition instead of sleeping a fixed time.
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
has_line() { grep -qF -- "$2" "$1" 2>/dev/null; }
alive() { kill -0 "$1" 2>/dev/null; }

# --- 1. a private PulseAudio with a null sink as the microphone ---------------------------
pulse=$work/pulse
mkdir -m 700 "$pulse"
env -u PULSE_SERVER HOME="$pulse" XDG_RUNTIME_DIR="$pulse" PULSE_RUNTIME_PATH="$pulse" \
  PULSE_STATE_PATH="$pulse" \
  pulseaudio --daemonize=no --exit-idle-time=-1 --disallow-exit --use-pid-file=no \
  --disable-shm=yes -n \
  "--load=module-native-protocol-unix socket=$pulse/native auth-anonymous=1" \
  "--load=module-null-sink sink_name=$SINK rate=48000 channels=1" \
  --log-target=stderr >"$work/pulseaudio.log" 2>&1 &
pids+=($!)
# From here on every client (pactl, paplay, the daemon's ALSA pulse plugin) uses this server.
export PULSE_SERVER=unix:$pulse/native PULSE_SOURCE=$SINK.monitor
unset PULSE_SINK
pactl_ok() { pactl info >/dev/null 2>&1; }
if ! wait_until 10 pactl_ok; then
  tail -n 20 "$work/pulseaudio.log" >&2
  die "PulseAudio could not start (log above)"
fi
pactl set-default-source "$SINK.monitor"
say "PulseAudio at $PULSE_SERVER, microphone = monitor of null sink $SINK"

# --- 2. a private Mosquitto on a free port ------------------------------------------------
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
EOF
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
wait_until 10 listening || { cat "$work/mosquitto.log" >&2; die "Mosquitto did not start"; }
say "Mosquitto on 127.0.0.1:$port"

# --- 3. a subscriber: one "topic payload" line per message --------------------------------
topics=("$LAMP" "$TV" claudio/available)
mqtt_log=$work/mqtt.log
if command -v mosquitto_sub >/dev/null; then
  args=(); for t in "${topics[@]}"; do args+=(-t "$t"); done
  mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -v "${args[@]}" >"$mqtt_log" 2>&1 &
else  # mosquitto-clients not installed: the same with paho, which the daemon needs anyway
  "$py" -u - "$port" "${topics[@]}" >"$mqtt_log" 2>&1 <<'EOF' &
import sys
import paho.mqtt.client as mqtt

port, topics = int(sys.argv[1]), sys.argv[2:]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.on_connect = lambda cl, *_: cl.subscribe([(t, 1) for t in topics])
c.on_message = lambda cl, u, m: print(m.topic, m.payload.decode(errors="replace"), flush=True)
c.connect("127.0.0.1", port)
c.loop_forever()
EOF
fi
sub_pid=$!
pids+=("$sub_pid")

# --- 4. the daemon, listening to the "microphone" -----------------------------------------
cat >"$work/rules.yaml" <<EOF
mqtt:
  host: 127.0.0.1
  port: $port
  client_id: claudio-e2e
  topic_prefix: claudio
appliances:
  lamp: {preset: tasmota, topic: lamp}
  tv: {preset: zigbee2mqtt, topic: living_room_tv}
triggers:
  - claps: 2
    actions: [lamp: toggle]
  - claps: 3
    actions: [tv: toggle]
EOF
daemon_log=$work/daemon.log
PYTHONUNBUFFERED=1 "$py" -m claudio_daemon run --rules "$work/rules.yaml" --device pulse \
  >"$daemon_log" 2>&1 &
daemon_pid=$!
pids+=("$daemon_pid")
# Listening means: the audio stream is open (the daemon logs "listening on [N] 'pulse'")
# and it has told the broker it is online (which also proves the subscriber is in).
deadline=$((SECONDS + 60))
until has_line "$daemon_log" "listening on [" && has_line "$mqtt_log" "claudio/available online"
do
  if ! alive "$daemon_pid" || [ "$SECONDS" -ge "$deadline" ]; then
    cat "$daemon_log" >&2
    say "FAIL: the daemon did not start listening (log above)"
    exit 1
  fi
  sleep 0.1
done
say "daemon listening; playing $file"

# --- 5. play the recording into the microphone --------------------------------------------
paplay --device="$SINK" "$file" || die "paplay could not play $file"
count() { grep -c "^$1 " "$mqtt_log" || true; }
both_switched() { [ "$(count "$LAMP")" -ge 1 ] && [ "$(count "$TV")" -ge 1 ]; }
# The last pattern is decided about a second after its last clap; give it a few more.
wait_until 8 both_switched || true

# --- 6. stop the daemon as systemd does, and check ----------------------------------------
kill -TERM "$daemon_pid"
stopped() { ! alive "$daemon_pid"; }
if ! wait_until 20 stopped; then
  say "the daemon ignored SIGTERM for 20 s; killing it"
  kill -KILL "$daemon_pid" 2>/dev/null || true
fi
wait "$daemon_pid" && code=0 || code=$?
offline() { [ "$(grep "^claudio/available " "$mqtt_log" | tail -n 1)" = "claudio/available offline" ]; }
wait_until 5 offline || true

echo
echo "daemon said:"
grep -iE "claps at|toggle|on \(|off \(|error|warning" "$daemon_log" | sed 's/^/  /' || true
echo "MQTT received:"
sed 's/^/  /' "$mqtt_log"
lamp=$(grep "^$LAMP " "$mqtt_log" | cut -d' ' -f2- || true)
tv=$(grep "^$TV " "$mqtt_log" | cut -d' ' -f2- || true)
echo "lamp ($LAMP): ${lamp:-nothing}"
echo "tv   ($TV): ${tv:-nothing}"

ok=1
[ "$lamp" = "TOGGLE" ] || { ok=0; say "lamp should get exactly one TOGGLE"; }
[ "$tv" = '{"state": "TOGGLE"}' ] || { ok=0; say 'TV should get exactly one {"state": "TOGGLE"}'; }
[ "$code" -eq 0 ] || { ok=0; say "daemon exited with status $code"; }
offline || { ok=0; say "daemon did not announce claudio/available offline"; }
if [ "$ok" = 1 ]; then
  echo "PASS"
else
  echo "FAIL"
  exit 1
fi
