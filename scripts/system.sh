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

# ensure_venv DIR: a working virtual environment at DIR, made again when it is not one
# (python3-venv was missing when it was first made, so pip is not in it) or when the
# system's Python moved on (a Debian release upgrade: the venv's packages belong to the old
# version and are not found).
ensure_venv() {
  local venv=$1 want have
  want=$(python3 -c 'import sys; print(sys.version_info[:2])')
  have=$("$venv/bin/python" -c 'import sys; print(sys.version_info[:2])' 2>/dev/null || true)
  if [ "$have" = "$want" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    return 0
  fi
  [ -e "$venv" ] && echo "$(basename "$0"): making $venv again (Python ${have:-missing} -> $want)"
  python3 -m venv --clear "$venv"
}
