//! The transport under upstream connections, plaintext or TLS: a [`Stream`] for the
//! [`super::h1`] path, the same stream under hyper's client ([`CountedIo`]), which also
//! holds the connection's `max_connections` slot until it closes; and a pool's TLS client
//! ([`TlsSetup`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use switchboard_proxy_xds::config::tls::UpstreamTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use super::state::ConnectionSlot;
use crate::tls::{Secrets, client_config};

/// An upstream connection, plaintext or TLS.
#[derive(Debug)]
pub(super) enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is far larger than a TCP stream.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Forwards to whichever stream `$io` holds.
macro_rules! either {
    ($io:expr, $s:ident => $e:expr) => {
        match $io {
            Stream::Plain($s) => $e,
            Stream::Tls($s) => {
                let $s = &mut **$s;
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
}

/// A connection of hyper's client that frees its `max_connections` slot when closed.
#[derive(Debug)]
pub(super) struct CountedIo {
    pub(super) io: TokioIo<Stream>,
    pub(super) _slot: ConnectionSlot,
}

impl Read for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// A pool's TLS: built on its first connection (reading files and secrets), then shared.
pub(super) struct TlsSetup {
    config: UpstreamTls,
    secrets: Secrets,
    built: OnceCell<Result<(TlsConnector, Option<ServerName<'static>>), String>>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    pub(super) fn new(config: UpstreamTls, secrets: Secrets) -> Self {
        Self {
            config,
            secrets,
            built: OnceCell::new(),
        }
    }

    async fn connector(&self) -> Result<(TlsConnector, Option<ServerName<'static>>), String> {
        self.built
            .get_or_init(|| async {
                client_config(&self.config, &self.secrets)
                    .await
                    .map(|(config, sni)| (TlsConnector::from(config), sni))
                    .map_err(|e| e.to_string())
            })
            .await
            .clone()
    }

    /// The TLS handshake on `tcp` within `timeout`, naming the server by the cluster's SNI
    /// or else by `endpoint`'s IP address (which sends no SNI); and whether it negotiated
    /// `h2` by ALPN.
    pub(super) async fn handshake(
        &self,
        tcp: TcpStream,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<(Stream, bool), String> {
        let (connector, sni) = self
            .connector()
            .await
            .map_err(|e| format!("upstream TLS: {e}"))?;
        let name = match sni {
            Some(name) => name,
            None => match endpoint.parse::<SocketAddr>() {
                Ok(addr) => ServerName::IpAddress(addr.ip().into()),
                Err(e) => return Err(e.to_string()),
            },
        };
        let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| "upstream TLS handshake timed out".to_owned())?
            .map_err(|e| format!("upstream TLS: {e}"))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((Stream::Tls(Box::new(stream)), h2))
    }
}
