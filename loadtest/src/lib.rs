//! Load tests for Switchboard: binaries that start the real `switchboard` binary as a child
//! process on free loopback ports, drive it over its sockets and print figures. They assert
//! nothing about speed; they fail only when the control plane misbehaves (an error response,
//! a stream ending, no convergence within a bound).
//!
//! - `xds-convergence`: many proxyless ADS clients; how long a route change takes to reach
//!   (and be ACKed by) all of them, and the control plane's memory.
//! - `proxy-bench`: requests per second, latency, memory and CPU of `switchboard-proxy` as a
//!   gateway configured by the control plane, against the backend directly and against nginx;
//!   and as a pair of sidecars, the hop between them plaintext or mutual TLS, with the TLS
//!   handshake rate at a sidecar's inbound port.
//! - `sds-issue`: workload certificates issued per second by the control plane to many
//!   sidecar streams subscribing to SDS at once.
//!
//! This library holds what every load test needs: [`ControlPlane`] (the child process, its
//! database and its memory figures; killed and restarted for the restart storm), [`gocp`]
//! (go-control-plane's server, the reference xds-convergence compares with), [`Rest`] (an admin REST client) and [`Summary`]
//! (percentiles); and what the proxy benchmark needs: [`load`] (a load generator, open and
//! closed loop, over HTTP/1.1, h2c and gRPC; its HTTP/2 half in `h2load`), [`grpc`] (the
//! benchmark's proto-free gRPC method), [`procfs`] (memory and CPU time of processes), [`backend`] (the
//! backend server and its process), [`proxy`] (the gateway's configuration and the
//! `switchboard-proxy` process), [`nginx`] (nginx as a reverse proxy), [`relay`] (a bare TCP
//! relay, the floor of a hop's cost) and [`turns`] (targets measured in turns); for the mesh:
//! [`mesh`] (the sidecar pair), [`handshake`] (a closed loop of new, optionally TLS,
//! connections), [`tls`] (a mesh workload's rustls client identity) and [`sds`] (workload
//! certificates over ADS, as a sidecar gets them).

pub mod backend;
mod control_plane;
pub mod gocp;
pub mod grpc;
mod h2load;
pub mod handshake;
pub mod load;
pub mod mesh;
pub mod nginx;
pub mod procfs;
pub mod proxy;
pub mod relay;
mod rest;
pub mod sds;
mod stats;
mod target;
pub mod tls;
pub mod turns;

pub use control_plane::{ControlPlane, Memory, Options};
pub use rest::Rest;
pub use stats::{Summary, mib, ms};

/// Raises this process's soft limit of open files to its hard limit (a load generator with
/// thousands of connections needs more than the usual 1,024); returns the limit now in force
/// (`u64::MAX` for unlimited). The control plane needs one descriptor per connection, not
/// per stream: streams share HTTP/2 connections.
pub fn raise_open_files() -> std::io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(limit.maximum.unwrap_or(u64::MAX))
}

/// Reads a whole number above 0 from `var`, or `default` when it is unset.
pub fn count_from_env(var: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("{var}={v:?}: expected a whole number above 0"),
        },
        Err(e) => anyhow::bail!("{var}: {e}"),
    }
}
