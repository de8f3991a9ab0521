//! Requests of the moment answered together: one task takes every request waiting in
//! its queue and answers them with one statement, with a bounded number of statements
//! out at once. While those run, the next requests gather, so under load a statement
//! answers many requests, and alone a request waits for no one.
//!
//! Each batch is taken from the queue after its requests were made, so a statement
//! answering them is sent after every call it answers, as one of its own would be.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

/// Answers the requests of `queue` in batches of at most `batch_max`, at most
/// `in_flight` batches at once, until every sender is gone. `answer` must reply to
/// every request of its batch.
pub(crate) async fn serve<T, F, Fut>(
    mut queue: mpsc::Receiver<T>,
    in_flight: usize,
    batch_max: usize,
    answer: F,
) where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let answered = answer(batch);
        tokio::spawn(async move {
            answered.await;
            drop(permit);
        });
    }
}
