//! (feature `testing`) Free loopback ports for tests that start binaries on fixed ports.
//!
//! A port is found by binding port 0 and closing the listener again, so the kernel may hand
//! the same number to the next caller. Tests often ask for several at once (a sidecar's app,
//! inbound and outbound ports) and a repeated number makes the control plane refuse the
//! node for the wrong reason. This module never returns a port twice in one process. The
//! benchmarks (`switchboard-loadtest`) pick their children's ports with it too.

use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports this process has already handed out.
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// How many bind attempts before giving up (each one takes a fresh ephemeral port).
const ATTEMPTS: usize = 1_000;

/// A loopback port that was free a moment ago and that no earlier call in this process
/// returned (another process could still take it before the caller binds it).
pub fn try_free_port() -> io::Result<u16> {
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..ATTEMPTS {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no loopback port left that this process has not handed out already",
    ))
}

/// [`try_free_port`] for tests: panics if the machine has no free port.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("a free loopback port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|&p| p != 0));
    }
}
