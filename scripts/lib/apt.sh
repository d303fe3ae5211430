# shellcheck shell=bash
# Debian packages the scripts need and a fresh machine may lack. Source this file, then call
# `apt_install PACKAGE…`: as root it installs them; as anyone else it names them and exits.

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "missing $* and this user cannot install it: apt-get install $*" >&2
    exit 1
  fi
  printf '==> installing %s from Debian'"'"'s packages\n' "$*" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
