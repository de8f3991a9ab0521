//! The endpoint's TCP connections: replies leave at once, and so do acknowledgements.
//!
//! The official clients' connections keep Nagle's algorithm on (hyper's connector does
//! not set `TCP_NODELAY`), and a client writes one call in several small writes: the
//! call's headers first, then its messages and the end of the stream. Nagle holds each
//! later write until the server acknowledges the first, and Linux delays that
//! acknowledgement, hoping to carry it on a reply, by up to 40 ms; but the reply needs
//! the rest of the call, so every call waited out the whole delay (a packet capture of
//! `commerce bench esdb-append` shows the client's second write leaving within 0.1 ms
//! of the server's ACK, itself 42 ms after the first write). The server cannot change
//! the client's socket, so it acknowledges at once instead: `TCP_QUICKACK` on every
//! connection. Linux clears quickack mode by itself as soon as the connection looks
//! interactive (the server writes shortly after reading, that is on every reply), so
//! [`QuickAckStream`] sets it again after each read that returned bytes; set at that
//! moment, it also sends an acknowledgement the kernel is still holding.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection of the endpoint: `TCP_NODELAY` on, and acknowledgements sent
/// as soon as data arrives (see the module's documentation for why).
#[derive(Debug)]
pub struct QuickAckStream {
    tcp: TcpStream,
}

impl QuickAckStream {
    /// Sets the connection's options; fails only if the socket refuses them.
    pub fn new(tcp: TcpStream) -> io::Result<Self> {
        // Small replies go out at once: with Nagle's algorithm a reply would wait for
        // the client's delayed acknowledgement of the previous one.
        tcp.set_nodelay(true)?;
        quick_ack(&tcp)?;
        Ok(QuickAckStream { tcp })
    }
}

#[cfg(target_os = "linux")]
fn quick_ack(tcp: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(tcp).set_tcp_quickack(true)
}

/// Other systems have no quickack mode to leave; their delayed acknowledgements stay.
#[cfg(not(target_os = "linux"))]
fn quick_ack(_tcp: &TcpStream) -> io::Result<()> {
    Ok(())
}

impl AsyncRead for QuickAckStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Not `TcpStream::poll_read`: after a read that did not fill the buffer it takes
        // the socket for drained and waits for the next readiness event. But setting
        // quickack below sends the acknowledgement the client's Nagle was waiting for,
        // and on loopback the rest of the call is in the socket before `setsockopt`
        // returns; `try_read_buf` keeps the readiness until a read finds nothing, so the
        // next read takes that rest at once instead of after another trip through the
        // runtime's I/O driver (milliseconds on a busy runtime).
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read_buf(buf) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {
                    // A socket that refuses the option now (the peer reset it) says so
                    // on its next read or write; the bytes read here are good.
                    if let Err(error) = quick_ack(&self.tcp) {
                        tracing::trace!(%error, "TCP_QUICKACK not set again");
                    }
                    return Poll::Ready(Ok(()));
                }
                // `try_read_buf` cleared the readiness: the next `poll_read_ready` waits.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for QuickAckStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const ROUND_TRIPS: usize = 64;

    /// A client like the official ones: Nagle's algorithm on, each request written in
    /// two small writes, the reply sent once the whole request is in. A delayed
    /// acknowledgement of the first write holds the second for 40 ms.
    #[tokio::test]
    async fn a_request_in_two_writes_is_not_held_by_a_delayed_acknowledgement() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut connection = QuickAckStream::new(tcp).unwrap();
            let mut request = [0u8; 2];
            for _ in 0..ROUND_TRIPS {
                connection.read_exact(&mut request).await.unwrap();
                connection.write_all(b"r").await.unwrap();
            }
        });
        let mut client = TcpStream::connect(address).await.unwrap();
        assert!(
            !client.nodelay().unwrap(),
            "the client keeps Nagle's algorithm"
        );
        let mut round_trips = Vec::with_capacity(ROUND_TRIPS);
        let mut reply = [0u8; 1];
        for _ in 0..ROUND_TRIPS {
            let sent = Instant::now();
            client.write_all(b"a").await.unwrap();
            client.write_all(b"b").await.unwrap();
            client.read_exact(&mut reply).await.unwrap();
            round_trips.push(sent.elapsed());
        }
        server.await.unwrap();
        round_trips.sort();
        let median = round_trips[ROUND_TRIPS / 2];
        assert!(
            median < Duration::from_millis(20),
            "median round trip {median:?}: the second write waited for a delayed ACK"
        );
    }
}
