#!/usr/bin/env bash
# Builds switchboard-proxy as it ships, optimised with a profile of its own traffic
# (profile-guided optimisation, PGO), and prints the binary's path:
#
#   proxy/pgo-build.sh        # → target/pgo/dist/switchboard-proxy
#
# Why: at 1,000 rps each request finds the CPU's caches cold (other processes ran since the
# last one), and the proxy then runs at about 0.5 instructions per ns. Its hot path crosses
# hyper, tokio, rustls and our crates; laid out by a profile, the code that runs per request
# sits together and its branches fall through, which is what LLVM's PGO does
# (loadtest/proxy-bench-log.md, twelfth session, has the figures with and without).
#
# Steps, each in its own target directory, so that neither RUSTFLAGS touches the ordinary
# `target/dist` build:
# 1. the control plane and proxy-bench (release): the training load needs them;
# 2. the proxy built with `-Cprofile-generate`, in target/pgo-train;
# 3. proxy-bench run with it (PROXY_BENCH_TARGETS: HTTP/1.1 with the access log off and on,
#    h2c, gRPC, and the mesh pair with a plaintext and an mTLS hop; PGO_TRAIN_SECS, 4 s per
#    window), each proxy writing its profile when proxy-bench stops it with SIGTERM;
# 4. the profiles merged by llvm-profdata (rustup's `llvm-tools` component, installed here
#    when missing), into target/pgo-train/proxy.profdata;
# 5. the proxy built with `-Cprofile-use`, in target/pgo.
#
# About 14 minutes on 2 cores with the instrumented build's dependencies cached, 25 from cold
# (the control plane for the training, and two builds with fat LTO). The Containerfile builds
# the proxy image's binary this way.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
train_dir=$target/pgo-train
out_dir=$target/pgo
raw=$train_dir/raw

log() { printf '==> %s\n' "$*" >&2; }

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
    log "rustup component add llvm-tools (for llvm-profdata)"
    rustup component add llvm-tools
fi

log "cargo build --release -p switchboard -p switchboard-loadtest (the training load)"
cargo build --release --locked -p switchboard -p switchboard-loadtest

log "cargo build --profile dist -p switchboard-proxy, instrumented (-Cprofile-generate)"
RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR=$train_dir \
    cargo build --profile dist --locked -p switchboard-proxy

log "training: proxy-bench with the instrumented proxy"
rm -rf "$raw"
mkdir -p "$raw"
# The proxy inherits LLVM_PROFILE_FILE from proxy-bench; %p keeps each process's own file.
env -u SWITCHBOARD_TEST_DATABASE_URL \
    SWITCHBOARD_PROXY_BIN="$train_dir/dist/switchboard-proxy" \
    LLVM_PROFILE_FILE="$raw/proxy-%p-%m.profraw" \
    PROXY_BENCH_TARGETS=direct,proxy,proxy-log,proxy-h2,proxy-grpc,mesh \
    PROXY_BENCH_SECS="${PGO_TRAIN_SECS:-4}" PROXY_BENCH_ROUNDS=1 PROXY_BENCH_WORKERS=1 \
    "$target/release/proxy-bench" >"$train_dir/training.md"
shopt -s nullglob
profiles=("$raw"/*.profraw)
shopt -u nullglob
# The runs that serve traffic, not only `--version`: at least the gateway's and the pair's.
if [ "${#profiles[@]}" -lt 3 ]; then
    echo "pgo-build.sh: the training wrote ${#profiles[@]} profiles; see $train_dir/training.md" >&2
    exit 1
fi
"$profdata" merge -o "$train_dir/proxy.profdata" "${profiles[@]}"

log "cargo build --profile dist -p switchboard-proxy, optimised with the profile (-Cprofile-use)"
# Without a compiler cache: a wrapper such as sccache keys on the flags, which name the
# profile's path and not its contents, so a new profile at the same path could reuse objects
# built with the old one.
RUSTC_WRAPPER='' RUSTFLAGS="-Cprofile-use=$train_dir/proxy.profdata" CARGO_TARGET_DIR=$out_dir \
    cargo build --profile dist --locked -p switchboard-proxy
echo "$out_dir/dist/switchboard-proxy"
