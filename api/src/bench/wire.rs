//! A load generator's HTTP/1.1 client: it does as little as wrk does, so that the
//! benchmarks' clients take as little as they can of the cores they share with the
//! server and PostgreSQL.

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive HTTP/1.1 client connection with one request in flight: it writes a
/// request's bytes, then reads until the answer's head and its `content-length`
/// of body are in. Anything it does not expect from the server under test (a
/// chunked body, bytes past the answer, a closed connection) is an error, which
/// the caller counts and follows with a new connection.
pub(crate) struct Wire {
    stream: TcpStream,
    read: Vec<u8>,
}

/// An answer in [`Wire`]'s buffer: its status and where its body lies.
pub(crate) struct Answer {
    pub(crate) status: u16,
    body: std::ops::Range<usize>,
}

/// The most header lines an answer may carry.
const MAX_ANSWER_HEADERS: usize = 32;

impl Wire {
    pub(crate) async fn connect(addr: std::net::SocketAddr) -> Result<Wire> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Wire {
            stream,
            read: Vec::with_capacity(4096),
        })
    }

    pub(crate) async fn exchange(&mut self, request: &[u8]) -> Result<Answer> {
        self.stream.write_all(request).await?;
        self.read.clear();
        let (status, body_at, body_len, close) = loop {
            self.fill().await?;
            let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
            let mut head = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(body_at) = head.parse(&self.read)? {
                let status = head.code.context("an answer without a status")?;
                let mut body_len = None;
                let mut close = false;
                for h in head.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        body_len = Some(std::str::from_utf8(h.value)?.trim().parse::<usize>()?);
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        anyhow::bail!("the server sent a chunked answer");
                    }
                }
                let body_len = body_len.context("an answer without content-length")?;
                break (status, body_at, body_len, close);
            }
        };
        while self.read.len() < body_at + body_len {
            self.fill().await?;
        }
        ensure!(
            self.read.len() == body_at + body_len,
            "the server sent bytes past its answer"
        );
        ensure!(!close, "the server closed the connection");
        Ok(Answer {
            status,
            body: body_at..body_at + body_len,
        })
    }

    pub(crate) fn body(&self, answer: &Answer) -> &[u8] {
        &self.read[answer.body.clone()]
    }

    /// Reads what the socket has into the buffer; the peer closing is an error.
    async fn fill(&mut self) -> Result<()> {
        if self.read.capacity() - self.read.len() < 1024 {
            self.read.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.read).await?;
        ensure!(n > 0, "the server closed the connection");
        Ok(())
    }
}
