# shellcheck shell=bash source-path=SCRIPTDIR
# Real xDS clients and gRPC backends for the proxyless end-to-end tests
# (server/tests/proxyless.rs), and a real xDS server for the proxy's interop test
# (proxy/tests/go_control_plane.rs). Source this file, then call what the tests about to run
# need (scripts/test decides from the packages it tests):
#   install_client_peers, for server/tests/proxyless.rs:
#   - a Python virtual environment at target/test-env/venv with
#     server/tests/peers/requirements.txt (grpcio and its built-in xDS client);
#   - server/tests/peers/package.json and package-lock.json installed with `npm ci` into
#     target/test-env/node (@grpc/grpc-js and @grpc/grpc-js-xds);
#   - each is redone only when its pinned list changed (a stamp holds the list's checksum), so
#     a second run takes well under a second;
#   - installs python3, python3-venv, nodejs and npm from Debian's packages when missing (as
#     root only);
#   - exports SWITCHBOARD_TEST_PYTHON (the venv's python) and SWITCHBOARD_TEST_NODE_MODULES
#     (the node_modules directory).
#   install_go_xds_server, for proxy/tests/go_control_plane.rs:
#   - proxy/tests/go-control-plane (a small program on go-control-plane's cache and server)
#     built with the machine's Go into target/test-env/gocp/gocp; rebuilt only when main.go,
#     go.mod or go.sum is newer;
#   - exports SWITCHBOARD_GO_XDS_SERVER (the Go program).
# The caller sets SWITCHBOARD_REQUIRE_PEERS=1 so that those tests fail, rather than skip,
# without them. Expects `set -euo pipefail` in the caller and to be run from the repository
# root.

# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_peers_log() { printf '==> %s\n' "$*" >&2; }

_peers_sum() { cat "$@" | sha256sum | cut -d' ' -f1; }

install_client_peers() {
  local root=$PWD
  local peers=$root/server/tests/peers
  local envdir=$root/target/test-env
  mkdir -p "$envdir"

  # --- Python: grpcio ---------------------------------------------------------------------
  command -v python3 >/dev/null || apt_install python3 python3-venv
  local venv=$envdir/venv
  local want
  want="$(_peers_sum "$peers/requirements.txt") $(python3 -c 'import sys; print(sys.version.split()[0])')"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.peers-stamp" 2>/dev/null)" != "$want" ]; then
    _peers_log "installing the Python test peers into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$peers/requirements.txt"
    printf '%s\n' "$want" >"$venv/.peers-stamp"
  fi

  # --- Node: @grpc/grpc-js and @grpc/grpc-js-xds ------------------------------------------
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  local node=$envdir/node
  want="$(_peers_sum "$peers/package.json" "$peers/package-lock.json") $(node --version)"
  if [ ! -d "$node/node_modules" ] || [ "$(cat "$node/.peers-stamp" 2>/dev/null)" != "$want" ]; then
    _peers_log "installing the Node test peers into $node"
    rm -rf "$node"
    mkdir -p "$node"
    cp "$peers/package.json" "$peers/package-lock.json" "$node/"
    (cd "$node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    printf '%s\n' "$want" >"$node/.peers-stamp"
  fi

  export SWITCHBOARD_TEST_PYTHON=$venv/bin/python
  export SWITCHBOARD_TEST_NODE_MODULES=$node/node_modules
  return 0
}

# go-control-plane's xDS server for proxy/tests/go_control_plane.rs: builds
# proxy/tests/go-control-plane into target/test-env/gocp/gocp (modules from the Go module
# proxy, checked against go.sum) and exports SWITCHBOARD_GO_XDS_SERVER. Needs Go 1.26 or newer
# (go.mod's go line; GOTOOLCHAIN=local, so no toolchain is downloaded behind the caller's back);
# no Debian package is that new, so a missing Go is an error, not an install.
install_go_xds_server() {
  local root=$PWD
  local src=$root/proxy/tests/go-control-plane
  local out=$root/target/test-env/gocp
  local bin=$out/gocp
  local go
  go=$(command -v go || true)
  [ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go
  if [ -z "$go" ]; then
    echo "missing Go (go.mod's version, $(sed -n 's/^go //p' "$src/go.mod") or newer), needed to build $src" \
      "for the proxy's interop test: install it from https://go.dev/dl into /usr/local/go (see README.md)" >&2
    exit 1
  fi
  if [ ! -x "$bin" ] || [ "$src/main.go" -nt "$bin" ] || [ "$src/go.mod" -nt "$bin" ] \
    || [ "$src/go.sum" -nt "$bin" ]; then
    _peers_log "building go-control-plane's xDS server into $bin ($("$go" version))"
    mkdir -p "$out"
    # -modcacherw keeps the module cache removable by `rm -rf target` as any user.
    (cd "$src" && GOPATH=$out/gopath GOMODCACHE=$out/gopath/pkg/mod GOCACHE=$out/gocache \
      GOTOOLCHAIN=local GOFLAGS="-mod=mod -modcacherw -buildvcs=false" \
      "$go" build -o "$bin.tmp" ./)
    mv "$bin.tmp" "$bin"
    # The module and build caches (about 400 MB) are needed only to build: free the disk.
    rm -rf "$out/gocache" "$out/gopath"
  fi
  export SWITCHBOARD_GO_XDS_SERVER=$bin
  return 0
}
