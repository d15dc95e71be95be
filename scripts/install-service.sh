#!/usr/bin/env bash
# Installs Claudio as a systemd system service (Debian, Raspberry Pi OS). Run as root:
#   sudo scripts/install-service.sh [--prefix DIR] [--rules-example FILE] [--no-start]
#
# Safe to run again (upgrade): the package and unit are replaced; rules.yaml, claudio.env
# and the credential file are never overwritten once they exist.
#
#   user      claudio (system user, member of audio), via systemd-sysusers when available
#   code      /opt/claudio/.venv (pip install of this checkout), the model in
#             /opt/claudio/models, the command linked as /usr/local/bin/claudio-daemon
#   config    /etc/claudio/rules.yaml (from the example), /etc/claudio/claudio.env (0600)
#   secret    /etc/claudio/credentials/mqtt-password (0600, empty until you fill it in)
#   unit      /etc/systemd/system/claudio-daemon.service, enabled and (re)started
set -euo pipefail
# The venv and models must be readable by the service user, whatever root's umask is.
umask 022

src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/claudio
confdir=/etc/claudio
unit_name=claudio-daemon.service
rules_example=""
start=1

usage() { sed -n '2,13s/^# \{0,1\}//p' "$0"; }
die() { echo "install-service: $*" >&2; exit 1; }
say() { echo "install-service: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift 2 ;;
    --rules-example) [ $# -ge 2 ] || die "--rules-example needs a file"; rules_example="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
case "$prefix" in /*) ;; *) die "--prefix must be an absolute path, got '$prefix'" ;; esac
# The unit's ProtectHome=yes hides /home, /root and /run/user from the service.
case "$prefix/" in
  /home/* | /root/* | /run/user/*) die "--prefix $prefix: the service cannot see home folders (ProtectHome=yes); pick a folder such as /opt/claudio" ;;
esac

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo $0)"
command -v systemctl >/dev/null || die "systemctl not found: this script needs systemd"
# The userland decides, not the kernel: 32-bit Raspberry Pi OS boots a 64-bit kernel on a Pi 4.
arch=$( (dpkg --print-architecture 2>/dev/null || uname -m) | head -1)
case "$arch" in
  armhf | armel | armv6l | armv7l) die "a 32-bit system ($arch): onnxruntime, the sound model's runtime, has no build for it; use a 64-bit OS (Raspberry Pi OS 64-bit)" ;;
esac
# What the daemon needs from the system: PortAudio for the microphone (sounddevice does not
# bundle it on Linux), libsndfile for recordings, and a Python that can make a venv.
. "$src/scripts/system.sh"
if command -v apt-get >/dev/null; then
  install_missing python3 python3-venv libportaudio2 libsndfile1
fi
command -v python3 >/dev/null || die "python3 not found (apt-get install python3 python3-venv)"

# --- system user -----------------------------------------------------------------------
if command -v systemd-sysusers >/dev/null; then
  install -D -m 0644 "$src/systemd/claudio.sysusers.conf" /usr/lib/sysusers.d/claudio.conf
  systemd-sysusers /usr/lib/sysusers.d/claudio.conf
elif ! id claudio >/dev/null 2>&1; then
  getent group audio >/dev/null || groupadd --system audio
  useradd --system --user-group --groups audio --home-dir /var/lib/claudio \
    --no-create-home --shell /usr/sbin/nologin --comment "Claudio sound automation" claudio
else
  usermod -a -G audio claudio
fi
say "user claudio: $(id claudio)"

# --- code ------------------------------------------------------------------------------
install -d -m 0755 "$prefix"
ensure_venv "$prefix/.venv"
# Build from a clean copy so root never leaves build/ or *.egg-info in the user's checkout.
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
tar -C "$src" --exclude='__pycache__' --exclude='*.egg-info' -cf - \
  pyproject.toml claudio_daemon training $(cd "$src" && ls README.md LICENSE 2>/dev/null) \
  | tar -C "$build" -xf -
[ -f "$build/README.md" ] || echo "# Claudio" > "$build/README.md"
"$prefix/.venv/bin/python" -m pip install -q --upgrade pip
"$prefix/.venv/bin/python" -m pip install -q --upgrade "$build"
install -m 0644 "$src/README.md" "$prefix/README.md"
# The shipped sound model: the daemon looks for it next to its virtual environment.
install -d -m 0755 "$prefix/models"
for m in "$src"/models/*.onnx; do [ -f "$m" ] && install -m 0644 "$m" "$prefix/models/"; done
say "installed $("$prefix/.venv/bin/python" -m pip show claudio | sed -n 's/^Version: /claudio /p') in $prefix/.venv"
# On root's PATH (sudo's secure_path has /usr/local/bin): `sudo claudio-daemon calibrate`,
# `sudo claudio-daemon away on`. A command of that name from elsewhere is left alone.
link=/usr/local/bin/claudio-daemon
linked=$(readlink "$link" 2>/dev/null || true)
if { [ ! -e "$link" ] && [ ! -L "$link" ]; } || [[ $linked == */.venv/bin/claudio-daemon ]]; then
  ln -sfn "$prefix/.venv/bin/claudio-daemon" "$link"
  say "linked $link"
else
  say "WARNING: $link exists and is not ours; run $prefix/.venv/bin/claudio-daemon"
fi

# --- configuration ---------------------------------------------------------------------
# Readable by the service's group, writable by root only: the daemon never edits its config.
install -d -m 0750 -o root -g claudio "$confdir"
if [ ! -e "$confdir/rules.yaml" ]; then
  if [ -z "$rules_example" ]; then
    # The annotated rules.yaml at the top of the checkout is the example.
    for cand in rules.yaml rules.example.yaml examples/rules.yaml; do
      [ -f "$src/$cand" ] && { rules_example="$src/$cand"; break; }
    done
  fi
  if [ -n "$rules_example" ] && [ -f "$rules_example" ]; then
    install -m 0640 -o root -g claudio "$rules_example" "$confdir/rules.yaml"
    say "created $confdir/rules.yaml from $rules_example - edit it for your lamps and TV"
  else
    say "WARNING: no example rules found; write $confdir/rules.yaml before starting"
    start=0
  fi
else
  say "kept existing $confdir/rules.yaml"
  let_service_read "$confdir/rules.yaml" claudio
fi
if [ ! -e "$confdir/claudio.env" ]; then
  install -m 0600 -o root -g root "$src/systemd/claudio-daemon.env.example" "$confdir/claudio.env"
fi
# systemd refuses to start a unit whose LoadCredential= file is missing: create it empty.
install -d -m 0700 -o root -g root "$confdir/credentials"
if [ ! -e "$confdir/credentials/mqtt-password" ]; then
  install -m 0600 -o root -g root /dev/null "$confdir/credentials/mqtt-password"
fi

# --- unit ------------------------------------------------------------------------------
unit_tmp="$build/$unit_name"
sed -e "s#/opt/claudio/#$prefix/#g" "$src/systemd/$unit_name" > "$unit_tmp"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify --man=no "$unit_tmp" || die "systemd-analyze rejected the unit"
fi
install -m 0644 "$unit_tmp" "/etc/systemd/system/$unit_name"
systemctl daemon-reload
systemctl enable "$unit_name" >/dev/null
say "enabled $unit_name"
if [ "$start" = 1 ]; then
  systemctl restart "$unit_name"
  say "started: systemctl status claudio-daemon; journalctl -u claudio-daemon -f"
else
  say "not started; when ready: sudo systemctl start claudio-daemon"
fi
