# Sourced by scripts/setup.sh and scripts/install-service.sh: what both need from the system.

# install_missing PACKAGE...: the Debian packages not installed yet (apt's output shown;
# sudo when not root).
install_missing() {
  local p missing="" sudo=""
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -n "$missing" ] || return 0
  echo "$(basename "$0" .sh): installing Debian packages:$missing"
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
}

# ensure_venv DIR: a working virtual environment at DIR. One without pip (made before
# python3-venv was installed, or by `uv venv`, which leaves pip out) gets pip added, so the
# packages already in it stay; one from another Python (a Debian release upgrade: its
# packages belong to the old version and are not found) is made again.
ensure_venv() {
  local venv=$1 want have
  want=$(python3 -c 'import sys; print(sys.version_info[:2])')
  have=$("$venv/bin/python" -c 'import sys; print(sys.version_info[:2])' 2>/dev/null || true)
  if [ "$have" = "$want" ]; then
    "$venv/bin/python" -m pip --version >/dev/null 2>&1 && return 0
    if "$venv/bin/python" -m ensurepip --upgrade >/dev/null 2>&1 \
      && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
      echo "$(basename "$0"): added pip to $venv"
      return 0
    fi
    echo "$(basename "$0"): making $venv again (no pip in it, and ensurepip could not add one)"
  elif [ -e "$venv" ]; then
    echo "$(basename "$0"): making $venv again (Python ${have:-missing} -> $want)"
  fi
  python3 -m venv --clear "$venv"
}

# let_service_read FILE USER: a config file the service user cannot read (made 0600 by
# root's umask before the install, say) stops the daemon at every start. Its group becomes
# USER's group with read access; the owner and the rest of the mode are kept.
let_service_read() {
  local file=$1 user=$2 group
  command -v runuser >/dev/null || return 0
  runuser -u "$user" -- test -r "$file" && return 0
  group=$(id -gn "$user")
  chgrp "$group" "$file"
  chmod g+r "$file"
  if runuser -u "$user" -- test -r "$file"; then
    echo "$(basename "$0"): $file was not readable by $user: now group $group, g+r"
  else
    echo "$(basename "$0"): WARNING: $user cannot read $file (check the folders above it)"
  fi
}
