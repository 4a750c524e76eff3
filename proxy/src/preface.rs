//! The first phase of an accepted connection, before hyper knows its protocol: hyper-util's
//! auto builder reads until it has either the 24-byte HTTP/2 preface or a byte that is not
//! part of it, and waits for that without any timeout, so a client that sends nothing (or
//! half a preface) held its descriptor forever. [`Guarded`] bounds that phase by the
//! header-read deadline; once the protocol is known it gets out of the way (HTTP/1.1 then has
//! hyper's own header-read timeout).

use crate::deadline::CoarseSleep;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted connection whose reads fail with `TimedOut` if its protocol is not known by
/// the deadline.
pub struct Guarded<S = TcpStream> {
    stream: S,
    /// Until the protocol is known: the deadline, and how much of the preface has been seen.
    phase: Option<(CoarseSleep, usize)>,
}

impl<S> Guarded<S> {
    /// Guard `stream` until `deadline`.
    pub fn new(stream: S, deadline: Instant) -> Guarded<S> {
        Guarded {
            stream,
            phase: Some((CoarseSleep::until(deadline), 0)),
        }
    }
}

/// Whether `read` (after `matched` preface bytes) decides the protocol; else the new count.
fn observe(matched: usize, read: &[u8]) -> Option<usize> {
    let rest = &H2_PREFACE[matched.min(H2_PREFACE.len())..];
    let n = read.len().min(rest.len());
    if read.is_empty() || read[..n] != rest[..n] || matched + read.len() >= H2_PREFACE.len() {
        return None; // end of stream, not HTTP/2, or the whole preface
    }
    Some(matched + read.len())
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some((_, matched)) = &mut this.phase {
                    match observe(*matched, &buf.filled()[before..]) {
                        Some(m) => *matched = m,
                        None => this.phase = None,
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = match &mut this.phase {
                    Some((sleep, _)) => Pin::new(sleep).poll(cx).is_ready(),
                    None => false,
                };
                if !expired {
                    return Poll::Pending;
                }
                this.phase = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header-read timeout",
                )))
            }
            other => other,
        }
    }
}

/// `impl AsyncWrite for $ty<S>` by passing every call to its `$field` (a read-side wrapper
/// of a stream: [`Guarded`], `crate::h1server::Prefixed`).
macro_rules! forward_async_write {
    ($ty:ident, $field:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use forward_async_write;

forward_async_write!(Guarded, stream);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_known_at_the_first_foreign_byte_or_the_whole_preface() {
        assert_eq!(observe(0, b""), None);
        assert_eq!(observe(0, b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(observe(0, b"PRI * "), Some(6));
        assert_eq!(observe(6, b"HTTP/2.0\r\n"), Some(16));
        assert_eq!(observe(16, b"\r\nSM\r\n\r\n"), None);
        assert_eq!(observe(16, b"\r\nXX"), None);
        assert_eq!(observe(0, H2_PREFACE), None);
        assert_eq!(observe(0, b"P"), Some(1));
        assert_eq!(observe(1, b"X"), None);
    }
}
