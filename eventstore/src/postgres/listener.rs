//! Follows `LISTEN commerce_events` on a connection of its own and moves the head
//! watch forward, so subscribers wake when any process commits. Reconnects forever
//! with a bounded backoff; while it is down, subscribers fall back to polling.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{advance_head, NOTIFY_CHANNEL};

const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) async fn run(config: tokio_postgres::Config, head: Arc<watch::Sender<u64>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&config, &head).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = %e, "event notification listener lost its connection"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    head: &watch::Sender<u64>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    // Whatever committed while this listener was down is picked up now.
    let current: i64 = client
        .query_one("SELECT position FROM log_head", &[])
        .await?
        .get(0);
    advance_head(head, current as u64);
    while let Some(payload) = notifications.recv().await {
        if let Ok(position) = payload.parse::<u64>() {
            advance_head(head, position);
        }
    }
    driver.abort();
    Ok(())
}
