//! A TCP fault proxy: it sits between the engine and a peer (PostgreSQL, the payment
//! provider), forwards bytes both ways, and on command misbehaves the way networks
//! and middleboxes do, until it is healed.
//!
//! The modes act on the connections that are open and on new ones alike:
//! - [`Fault::Delay`]: every chunk reaches the other side that much later, in order.
//! - [`Fault::Drop`]: every connection is closed (an orderly FIN, as a load balancer
//!   that drops its connections), and new ones are closed as soon as they arrive.
//! - [`Fault::Reset`]: every connection is reset (RST), and new ones too.
//! - [`Fault::Blackhole`]: nothing passes and nothing is answered; connections stay
//!   open and new ones are accepted but get no reply. When the path heals, what was
//!   held flows on, as TCP's retransmissions deliver it after a partition.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes read from one side before they are passed on.
const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks held per direction while they wait out a delay.
const DELAYED_CHUNKS_MAX: usize = 1_024;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass untouched.
    Heal,
    Delay(Duration),
    Drop,
    Reset,
    Blackhole,
}

impl Fault {
    /// The mode's name in reports: `delay`, `drop`, `reset`, `blackhole`.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Heal => "none",
            Fault::Delay(_) => "delay",
            Fault::Drop => "drop",
            Fault::Reset => "reset",
            Fault::Blackhole => "blackhole",
        }
    }
}

/// A running proxy; dropping it stops accepting and ends its connections.
pub struct FaultProxy {
    address: SocketAddr,
    fault: watch::Sender<Fault>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let (fault, watching) = watch::channel(Fault::Heal);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(client, upstream, watching.clone()));
            }
        });
        Ok(FaultProxy {
            address,
            fault,
            accepted,
            task,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn heal(&self) {
        self.set(Fault::Heal);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client's connection: waits out a black hole before dialling the upstream,
/// then moves bytes both ways until either side ends or a fault ends them.
async fn connection(client: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Fault>) {
    let _ = client.set_nodelay(true);
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Drop => return,
            Fault::Reset => return reset(&client),
            Fault::Blackhole => {
                if fault.changed().await.is_err() {
                    return;
                }
            }
            Fault::Heal | Fault::Delay(_) => break,
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(&client);
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = Direction::default();
    let mut down = Direction::default();
    let mut up_buffer = vec![0u8; CHUNK_BYTES];
    let mut down_buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let current = *fault.borrow_and_update();
        let delay = match current {
            Fault::Drop => return,
            Fault::Reset => {
                reset(client_read.as_ref());
                reset(server_read.as_ref());
                // A write half sends a FIN when dropped; forgotten, the sockets close
                // with the read halves, as the reset.
                client_write.forget();
                server_write.forget();
                return;
            }
            Fault::Blackhole => {
                // Nothing is read or written, so nothing is lost: the peers' bytes
                // wait in the socket buffers until the path heals.
                if fault.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Delay(delay) => delay,
            Fault::Heal => Duration::ZERO,
        };
        let far_future = tokio::time::Instant::now() + Duration::from_secs(86_400);
        let up_due = up.due().unwrap_or(far_future);
        let down_due = down.due().unwrap_or(far_future);
        tokio::select! {
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = client_read.read(&mut up_buffer), if !up.closed && up.has_room() => {
                match read {
                    Ok(0) | Err(_) => up.closed = true,
                    Ok(n) => up.push(delay, &up_buffer[..n]),
                }
            }
            read = server_read.read(&mut down_buffer), if !down.closed && down.has_room() => {
                match read {
                    Ok(0) | Err(_) => down.closed = true,
                    Ok(n) => down.push(delay, &down_buffer[..n]),
                }
            }
            _ = tokio::time::sleep_until(up_due), if up.due().is_some() => {
                if !up.write_due(&mut server_write).await {
                    return;
                }
            }
            _ = tokio::time::sleep_until(down_due), if down.due().is_some() => {
                if !down.write_due(&mut client_write).await {
                    return;
                }
            }
        }
        // A side that ended is passed on once everything it sent has been delivered.
        if (up.closed && up.chunks.is_empty()) || (down.closed && down.chunks.is_empty()) {
            let _ = server_write.shutdown().await;
            let _ = client_write.shutdown().await;
            return;
        }
    }
}

/// The bytes of one direction that wait out a delay.
#[derive(Default)]
struct Direction {
    chunks: VecDeque<(tokio::time::Instant, Vec<u8>)>,
    closed: bool,
}

impl Direction {
    fn due(&self) -> Option<tokio::time::Instant> {
        self.chunks.front().map(|(due, _)| *due)
    }

    fn has_room(&self) -> bool {
        self.chunks.len() < DELAYED_CHUNKS_MAX
    }

    fn push(&mut self, delay: Duration, bytes: &[u8]) {
        let due = tokio::time::Instant::now() + delay;
        self.chunks.push_back((due, bytes.to_vec()));
    }

    /// Writes every chunk that is due; false once the other side cannot take it.
    async fn write_due(&mut self, to: &mut tokio::net::tcp::OwnedWriteHalf) -> bool {
        let now = tokio::time::Instant::now();
        while let Some((due, _)) = self.chunks.front() {
            if *due > now {
                break;
            }
            let Some((_, chunk)) = self.chunks.pop_front() else {
                break;
            };
            if to.write_all(&chunk).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Makes the close of `stream` a TCP reset: a zero linger turns it into an RST.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An upstream that echoes what it reads.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut answer = vec![0u8; message.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_healthy_proxy_passes_bytes_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await.unwrap(), b"hello");
        assert_eq!(proxy.connections_accepted(), 1);
    }

    #[tokio::test]
    async fn a_delay_holds_each_direction_and_keeps_the_order() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut stream, b"warm").await.unwrap();
        proxy.set(Fault::Delay(Duration::from_millis(150)));
        let began = Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await.unwrap(), b"slow");
        assert!(
            began.elapsed() >= Duration::from_millis(300),
            "{:?}",
            began.elapsed()
        );
        proxy.heal();
        let began = Instant::now();
        assert_eq!(round_trip(&mut stream, b"fast").await.unwrap(), b"fast");
        assert!(
            began.elapsed() < Duration::from_millis(150),
            "{:?}",
            began.elapsed()
        );
    }

    #[tokio::test]
    async fn a_drop_closes_open_and_new_connections() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut open, b"before").await.unwrap();
        proxy.set(Fault::Drop);
        let mut buffer = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buffer))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0)), "{read:?}");
        let mut new = TcpStream::connect(proxy.address()).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), new.read(&mut buffer))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0)), "{read:?}");
    }

    #[tokio::test]
    async fn a_reset_resets_open_and_new_connections() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut open, b"before").await.unwrap();
        proxy.set(Fault::Reset);
        let mut buffer = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buffer))
            .await
            .unwrap();
        assert_eq!(
            read.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        let mut new = TcpStream::connect(proxy.address()).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), new.read(&mut buffer))
            .await
            .unwrap();
        assert_eq!(
            read.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
    }

    #[tokio::test]
    async fn a_blackhole_answers_nothing_until_healed_then_delivers() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.address()).await.unwrap();
        round_trip(&mut open, b"before").await.unwrap();
        proxy.set(Fault::Blackhole);
        // Let the connection's task see the fault before the bytes arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        open.write_all(b"held").await.unwrap();
        let mut new = TcpStream::connect(proxy.address()).await.unwrap();
        new.write_all(b"new").await.unwrap();
        let mut buffer = [0u8; 4];
        let waited = tokio::time::timeout(Duration::from_millis(500), open.read(&mut buffer)).await;
        assert!(waited.is_err(), "an answer came through the black hole");
        let waited = tokio::time::timeout(Duration::from_millis(200), new.read(&mut buffer)).await;
        assert!(waited.is_err(), "a new connection was answered");
        proxy.heal();
        let mut answer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"held");
        let mut answer = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), new.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"new");
    }
}
