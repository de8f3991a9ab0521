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
//! the client's socket, so it acknowledges at once instead.
//!
//! [`QuickAckStream`] sends the acknowledgement the kernel holds after a read that
//! leaves a call unfinished, and only then: once the call is complete, the reply
//! carries the acknowledgement (the endpoint replies within milliseconds, well inside
//! the delay), and a bare ACK would be a packet of its own on each end. On a plaintext
//! connection the stream follows the HTTP/2 frame headers it reads ([`FrameCursor`]),
//! far enough to tell whether the bytes so far end with the last frame of a call
//! (`END_STREAM`). Under TLS the bytes are records, so every read that returned bytes
//! is acknowledged.
//!
//! The acknowledgement is sent with `TCP_QUICKACK` set to 2, not 1. Any non-zero value
//! makes Linux send the ACK it holds, but an odd one also leaves the socket in quickack
//! mode, so the rest of the call, which that ACK releases from the client's Nagle and
//! which arrives before `setsockopt` returns, got a bare ACK of its own as well (a
//! capture of the benchmark showed five segments a call, the fourth that ACK). An even
//! value goes back to delaying acknowledgements once the held one is sent
//! (`__tcp_sock_set_quickack` in Linux's `net/ipv4/tcp.c`), and the reply carries the
//! next.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection of the endpoint: `TCP_NODELAY` on, and acknowledgements sent
/// as soon as a call is left unfinished (see the module's documentation for why).
#[derive(Debug)]
pub struct QuickAckStream {
    tcp: TcpStream,
    /// Where the client's HTTP/2 frames stand; `None` under TLS, where every read is
    /// acknowledged.
    frames: Option<FrameCursor>,
}

impl QuickAckStream {
    /// A plaintext HTTP/2 connection; fails only if the socket refuses its options.
    pub fn plaintext(tcp: TcpStream) -> io::Result<Self> {
        Self::with_frames(tcp, Some(FrameCursor::default()))
    }

    /// A connection whose bytes the stream cannot read (TLS records): every read that
    /// returned bytes is acknowledged.
    pub fn opaque(tcp: TcpStream) -> io::Result<Self> {
        Self::with_frames(tcp, None)
    }

    fn with_frames(tcp: TcpStream, frames: Option<FrameCursor>) -> io::Result<Self> {
        // Small replies go out at once: with Nagle's algorithm a reply would wait for
        // the client's delayed acknowledgement of the previous one.
        tcp.set_nodelay(true)?;
        Ok(QuickAckStream { tcp, frames })
    }
}

/// Sends the acknowledgement the kernel holds for `tcp`, and goes on delaying later
/// ones (the value 2; see the module's documentation).
#[cfg(target_os = "linux")]
fn acknowledge_now(tcp: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    // Not `socket2`'s `set_tcp_quickack`: it takes a bool and sets 1, which leaves the
    // socket in quickack mode.
    let value: libc::c_int = 2;
    // SAFETY: the descriptor is `tcp`'s open socket, borrowed for the call, and the
    // option's value is a `c_int` of the length passed.
    let result = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Other systems have no quickack mode; their delayed acknowledgements stay.
#[cfg(not(target_os = "linux"))]
fn acknowledge_now(_tcp: &TcpStream) -> io::Result<()> {
    Ok(())
}

/// The client connection preface (RFC 9113, section 3.4) that comes before any frame.
const PREFACE_LEN: usize = 24;
/// A frame header: payload length (24 bits), type, flags, stream id (RFC 9113, 4.1).
const FRAME_HEADER_LEN: usize = 9;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// Follows the frame boundaries of the bytes a client sends, to tell whether what was
/// read so far ends a call. It reads frame headers only, and trusts nothing in them
/// beyond the length it skips; the HTTP/2 server reads the same bytes and answers
/// anything malformed.
#[derive(Debug)]
struct FrameCursor {
    /// Bytes of the connection preface still to come.
    preface_left: usize,
    /// The frame header being read, and how much of it has come.
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Bytes of the current frame's payload still to come.
    payload_left: usize,
    /// Whether the last frame whose header was read ends its stream's request.
    last_ends_call: bool,
}

impl Default for FrameCursor {
    fn default() -> Self {
        FrameCursor {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            last_ends_call: false,
        }
    }
}

impl FrameCursor {
    /// Moves past `bytes`; true when they end exactly after a frame that ends a call (a
    /// DATA frame, or a HEADERS frame with its whole header block, carrying
    /// `END_STREAM`). Anything else (a partial frame, the preface, a call still open,
    /// SETTINGS, PING, WINDOW_UPDATE) may be waiting on an acknowledgement.
    fn ends_call(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let skipped = if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                n
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                n
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                if self.header_len == FRAME_HEADER_LEN {
                    self.header_read();
                }
                n
            };
            bytes = &bytes[skipped..];
        }
        self.preface_left == 0
            && self.header_len == 0
            && self.payload_left == 0
            && self.last_ends_call
    }

    fn header_read(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.header_len = 0;
        let end_stream = flags & FLAG_END_STREAM != 0;
        self.last_ends_call = match kind {
            FRAME_DATA => end_stream,
            FRAME_HEADERS => end_stream && flags & FLAG_END_HEADERS != 0,
            _ => false,
        };
    }
}

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Not `TcpStream::poll_read`: after a read that did not fill the buffer it takes
        // the socket for drained and waits for the next readiness event. But the
        // acknowledgement below releases the rest of the call from the client's Nagle,
        // and on loopback it is in the socket before `setsockopt` returns;
        // `try_read_buf` keeps the readiness until a read finds nothing, so the next
        // read takes that rest at once instead of after another trip through the
        // runtime's I/O driver (milliseconds on a busy runtime).
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            let filled = buf.filled().len();
            match self.tcp.try_read_buf(buf) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {
                    let this = &mut *self;
                    let read = &buf.filled()[filled..];
                    let complete = this.frames.as_mut().is_some_and(|f| f.ends_call(read));
                    // A socket that refuses the option now (the peer reset it) says so
                    // on its next read or write; the bytes read here are good.
                    if !complete {
                        if let Err(error) = acknowledge_now(&this.tcp) {
                            tracing::trace!(%error, "the held acknowledgement was not sent");
                        }
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
    use tokio::sync::mpsc;

    use super::*;

    const ROUND_TRIPS: usize = 64;
    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut bytes = len.to_be_bytes()[1..].to_vec();
        bytes.extend([kind, flags]);
        bytes.extend(stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// A call as the official clients write it: the headers (and the first message)
    /// first, then the rest of the messages and the end of the stream.
    fn call(stream: u32) -> (Vec<u8>, Vec<u8>) {
        let mut first = frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &[0x83; 40]);
        first.extend(frame(FRAME_DATA, 0, stream, &[0; 20]));
        let rest = frame(FRAME_DATA, FLAG_END_STREAM, stream, &[1; 150]);
        (first, rest)
    }

    #[test]
    fn the_cursor_tells_a_finished_call_from_an_unfinished_one() {
        let mut cursor = FrameCursor::default();
        assert!(!cursor.ends_call(PREFACE), "the preface alone");
        assert!(!cursor.ends_call(&frame(0x4, 0, 0, &[0; 12])), "SETTINGS");
        let (first, rest) = call(1);
        assert!(
            !cursor.ends_call(&first),
            "headers and a message, stream open"
        );
        assert!(
            cursor.ends_call(&rest),
            "the last DATA frame ends the stream"
        );
        // Headers that end the stream but not their block: a CONTINUATION follows.
        let open_block = frame(FRAME_HEADERS, FLAG_END_STREAM, 3, &[0x83; 8]);
        assert!(!cursor.ends_call(&open_block));
        assert!(!cursor.ends_call(&frame(0x9, FLAG_END_HEADERS, 3, &[0x83; 8])));
        let whole = frame(
            FRAME_HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            5,
            &[0x83; 8],
        );
        assert!(cursor.ends_call(&whole), "a call that is all headers");
        assert!(
            cursor.ends_call(&frame(FRAME_DATA, FLAG_END_STREAM, 7, &[])),
            "an empty last DATA frame"
        );
        assert!(
            !cursor.ends_call(&frame(0x8, 0, 0, &[0, 0, 1, 0])),
            "WINDOW_UPDATE"
        );
    }

    #[test]
    fn the_cursor_finds_the_end_of_a_call_however_the_bytes_are_split() {
        let (first, rest) = call(1);
        let bytes = [PREFACE.as_slice(), &first, &rest].concat();
        for chunk in [1, 2, 7, 9, 10, 64] {
            let mut cursor = FrameCursor::default();
            let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
            let (last, before) = pieces.split_last().unwrap();
            for piece in before {
                assert!(!cursor.ends_call(piece), "{chunk}-byte pieces");
            }
            assert!(cursor.ends_call(last), "{chunk}-byte pieces");
        }
    }

    /// Median round trip of a client like the official ones: Nagle's algorithm on, each
    /// request written in two small writes, the reply sent once the whole request is in.
    async fn median_round_trip(plaintext: bool) -> Duration {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (first, rest) = call(1);
        let request_len = first.len() + rest.len();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut connection = if plaintext {
                QuickAckStream::plaintext(tcp).unwrap()
            } else {
                QuickAckStream::opaque(tcp).unwrap()
            };
            let mut preface = [0u8; PREFACE_LEN];
            connection.read_exact(&mut preface).await.unwrap();
            let mut request = vec![0u8; request_len];
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
        client.write_all(PREFACE).await.unwrap();
        let mut round_trips = Vec::with_capacity(ROUND_TRIPS);
        let mut reply = [0u8; 1];
        for _ in 0..ROUND_TRIPS {
            let sent = Instant::now();
            client.write_all(&first).await.unwrap();
            client.write_all(&rest).await.unwrap();
            client.read_exact(&mut reply).await.unwrap();
            round_trips.push(sent.elapsed());
        }
        server.await.unwrap();
        round_trips.sort();
        round_trips[ROUND_TRIPS / 2]
    }

    #[tokio::test]
    async fn a_call_in_two_writes_is_not_held_by_a_delayed_acknowledgement() {
        for plaintext in [true, false] {
            let median = median_round_trip(plaintext).await;
            assert!(
                median < Duration::from_millis(20),
                "median round trip {median:?} (plaintext {plaintext}): the second write \
                 waited for a delayed ACK"
            );
        }
    }

    /// Segments the peer has not acknowledged yet, from the client's side.
    #[cfg(target_os = "linux")]
    fn unacknowledged(tcp: &TcpStream) -> u32 {
        use std::os::fd::AsRawFd;

        // SAFETY: `info` is a `tcp_info` the kernel fills up to the length passed, and
        // the descriptor is `tcp`'s open socket.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let result = libc::getsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                std::ptr::from_mut(&mut info).cast(),
                &mut len,
            );
            assert_eq!(result, 0, "TCP_INFO: {}", io::Error::last_os_error());
            info.tcpi_unacked
        }
    }

    /// Shortest wait before the client looks at its unacknowledged segments, and the
    /// longest that still counts: Linux's smallest delayed acknowledgement is 40 ms.
    #[cfg(target_os = "linux")]
    const LOOK_AFTER: Duration = Duration::from_millis(5);
    #[cfg(target_os = "linux")]
    const LOOK_BEFORE: Duration = Duration::from_millis(30);

    /// Once a call is finished, no bare ACK acknowledges it: the reply carries the
    /// acknowledgement. That holds for a call that arrives whole, and for the rest of a
    /// call written in two, which arrives right after the acknowledgement of its first
    /// part. The server reads each call and holds its reply until the client has
    /// looked at what is unacknowledged.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_finished_call_is_acknowledged_by_its_reply() {
        const WARM_UP: usize = 4;
        const ROUNDS: usize = 24;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (first, rest) = call(1);
        let request_len = first.len() + rest.len();
        let (read_tx, mut read_rx) = mpsc::channel::<()>(1);
        let (reply_tx, mut reply_rx) = mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut connection = QuickAckStream::plaintext(tcp).unwrap();
            let mut preface = [0u8; PREFACE_LEN];
            connection.read_exact(&mut preface).await.unwrap();
            let mut request = vec![0u8; request_len];
            for _ in 0..WARM_UP + ROUNDS {
                connection.read_exact(&mut request).await.unwrap();
                read_tx.send(()).await.unwrap();
                reply_rx.recv().await.unwrap();
                connection.write_all(b"r").await.unwrap();
            }
        });
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(PREFACE).await.unwrap();
        let mut reply = [0u8; 1];
        let (mut looked, mut held) = (0, 0);
        for round in 0..WARM_UP + ROUNDS {
            let sent = Instant::now();
            if round % 2 == 0 {
                client
                    .write_all(&[first.as_slice(), &rest].concat())
                    .await
                    .unwrap();
            } else {
                client.write_all(&first).await.unwrap();
                client.write_all(&rest).await.unwrap();
            }
            read_rx.recv().await.unwrap();
            tokio::time::sleep(LOOK_AFTER).await;
            let unacked = unacknowledged(&client);
            if round >= WARM_UP && sent.elapsed() < LOOK_BEFORE {
                looked += 1;
                held += usize::from(unacked > 0);
            }
            reply_tx.send(()).await.unwrap();
            client.read_exact(&mut reply).await.unwrap();
        }
        server.await.unwrap();
        assert!(
            looked >= ROUNDS / 2,
            "only {looked} rounds were looked at in time"
        );
        assert_eq!(
            held,
            looked,
            "{} of {looked} finished calls got a bare acknowledgement",
            looked - held
        );
    }
}
