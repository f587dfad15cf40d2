//! A stack's task events for the verbs that wait on them (`up`, `scale`, `down`), surviving the
//! manager that serves them: when it goes away — a failover, or the other `shoal` process that
//! served the state dir exiting — the watch is opened again where [`Connection::recover`] leads.

use futures_util::{FutureExt, StreamExt};
use shoal_proto::v1 as pb;
use tokio::time::Instant;
use tonic::Streaming;

use super::connect::Connection;

/// What [`TaskWatch::next`] saw.
#[derive(Debug)]
pub enum Seen {
    Event(Box<pb::WatchEvent>),
    /// The watch was opened again on another manager: it starts over with a snapshot, so what
    /// was collected so far is to be forgotten.
    Reopened,
    /// The deadline passed.
    TimedOut,
}

/// How many times in a row a watch is opened again without an event in between before the
/// failure is reported: a manager that keeps breaking the stream is not waited on forever.
const MAX_REOPENS: u32 = 5;

pub struct TaskWatch {
    stack: String,
    events: Streaming<pb::WatchEvent>,
    /// Reopens since the last event.
    reopens: u32,
    /// What [`TaskWatch::more_ready`] took off the stream, for the next [`TaskWatch::next`].
    peeked: Option<Option<Result<pb::WatchEvent, tonic::Status>>>,
}

impl TaskWatch {
    pub async fn open(connection: &mut Connection, stack: &str) -> anyhow::Result<TaskWatch> {
        Ok(TaskWatch { stack: stack.to_string(), events: open(connection, stack).await?, reopens: 0, peeked: None })
    }

    /// Whether another event (or the stream's end) is already here. Callers that judge the
    /// whole stack after each event do so once per burst instead: a deploy of 20,000 tasks sends
    /// tens of thousands of events, and judging after each is quadratic.
    pub fn more_ready(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.events.next().now_or_never();
        }
        self.peeked.is_some()
    }

    /// The next event, [`Seen::Reopened`] after the stream broke, or [`Seen::TimedOut`] once
    /// `deadline` has passed. An error when the watch cannot be opened again.
    ///
    /// The server never ends a watch with an error of its own, so a failed stream is the
    /// connection's doing — the manager was killed, or its connection reset while another
    /// manager was killed — and the watch is opened again: on another manager if this one went
    /// away, else on the same one. Opening a watch is a read, safe to repeat.
    pub async fn next(&mut self, connection: &mut Connection, deadline: Option<Instant>) -> anyhow::Result<Seen> {
        let next = match (self.peeked.take(), deadline) {
            (Some(peeked), _) => peeked,
            (None, Some(deadline)) => match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(next) => next,
                Err(_) => return Ok(Seen::TimedOut),
            },
            (None, None) => self.events.next().await,
        };
        let failure = match next {
            Some(Ok(event)) => {
                self.reopens = 0;
                return Ok(Seen::Event(Box::new(event)));
            }
            Some(Err(status)) => anyhow::anyhow!("progress stream: {} ({:?})", status.message(), status.code()),
            // A watch never ends by itself: its manager is stopping.
            None => anyhow::anyhow!("the manager closed the progress stream"),
        };
        tracing::debug!("{failure:#}; opening the watch again");
        self.reopens += 1;
        if self.reopens > MAX_REOPENS {
            return Err(failure.context(format!("the watch broke {MAX_REOPENS} times in a row")));
        }
        connection.recover().await?;
        self.events = open(connection, &self.stack).await.map_err(|e| e.context(failure))?;
        self.peeked = None;
        Ok(Seen::Reopened)
    }
}

async fn open(connection: &mut Connection, stack: &str) -> anyhow::Result<Streaming<pb::WatchEvent>> {
    let request = pb::WatchRequest { stack: stack.to_string() };
    let response = connection
        .with_failover(|mut c| {
            let request = request.clone();
            async move { c.watch(request).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(response.into_inner())
}
