//! A bare TCP relay: the floor of what one more loopback hop costs on this machine, whatever
//! the proxy. Each accepted connection gets a connection of its own to the upstream and two
//! threads, one per direction, each in a blocking `read` then `write_all` of what it read.
//! It parses nothing, has no runtime, no event loop and no timers: a byte that arrives wakes
//! the one thread that forwards it. Any proxy makes at least those wakeups and syscalls per
//! request, so what the relay adds at p99 over going direct is what no proxy can beat here.
//!
//! It runs as its own process, like the backend: the calling binary started again with the
//! arguments `relay --upstream <address>` ([`run`] is that subcommand; [`RelayProcess`]
//! starts it). It binds a free port, prints `listening <address>` and relays until its
//! standard input closes (its parent is gone) or an hour has passed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::backend::ChildServer;

/// Each direction's buffer: larger than any request or response of the benchmark, so one
/// read takes what one write sent.
const BUFFER: usize = 16 * 1024;

/// The `relay` subcommand's arguments.
pub fn parse(args: &[String]) -> Result<SocketAddr> {
    match args {
        [flag, addr] if flag == "--upstream" => addr.parse().with_context(|| {
            format!("--upstream {addr:?}: expected an address such as 127.0.0.1:8080")
        }),
        _ => bail!("relay takes exactly `--upstream <address>`, not {args:?}"),
    }
}

/// The `relay` subcommand: binds, prints its address, relays to `upstream` until the parent
/// is gone.
pub fn run(upstream: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    crate::backend::announce(listener.local_addr()?)?;
    serve(listener, upstream);
    Ok(())
}

/// Relays every connection `listener` accepts to `upstream`, each on threads of its own;
/// returns only if accepting fails for good.
pub fn serve(listener: TcpListener, upstream: SocketAddr) {
    for accepted in listener.incoming() {
        let client = match accepted {
            Ok(c) => c,
            // A connection reset before it was accepted, or out of descriptors for a moment.
            Err(e) if e.kind() != io::ErrorKind::InvalidInput => {
                eprintln!("relay: accepting: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => {
                eprintln!("relay: accepting: {e}; stopping");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                if let Err(e) = relay(client, upstream) {
                    eprintln!("relay: a connection to {upstream}: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("relay: starting a connection's thread: {e}");
        }
    }
}

/// One connection: upstream to client on this thread, client to upstream on another. Each
/// direction, at its end of stream, shuts down writing on the other side, so a half-close
/// passes through and the connection ends when both directions have.
fn relay(client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let server = match TcpStream::connect(upstream) {
        Ok(s) => s,
        Err(e) => {
            let _ = client.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    // As the proxy and nginx do: a small response goes out at once.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_reader, server_writer) = (client.try_clone()?, server.try_clone()?);
    let outbound = std::thread::Builder::new()
        .name("relay-out".into())
        .spawn(move || pump(client_reader, server_writer))?;
    let inbound = pump(server, client);
    let outbound = outbound
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the outbound thread panicked")));
    inbound.and(outbound)
}

/// Copies `from` to `to` until `from` ends, then shuts down writing on `to`. A reset on
/// either side ends the copy; the other direction then meets it too.
fn pump(mut from: TcpStream, mut to: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    let copied = loop {
        match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    match copied {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        // Wake the other direction: its peer is gone.
        Err(_) => {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        }
    }
    // Resets are how load generators end connections; they are not the relay's errors.
    copied.or_else(|e| match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e),
    })
}

/// A relay child process, killed when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    process: ChildServer,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl RelayProcess {
    /// Starts this executable again as `relay --upstream <upstream>` and waits for the
    /// address it listens on.
    pub async fn start(upstream: SocketAddr) -> Result<RelayProcess> {
        let args = ["relay".into(), "--upstream".into(), upstream.to_string()];
        let process = ChildServer::start(&args, "relay").await?;
        Ok(RelayProcess {
            pid: process.pid,
            addr: process.addr,
            process,
        })
    }

    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}
