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

pub struct TaskWatch {
    stack: String,
    events: Streaming<pb::WatchEvent>,
    /// What [`TaskWatch::more_ready`] took off the stream, for the next [`TaskWatch::next`].
    peeked: Option<Option<Result<pb::WatchEvent, tonic::Status>>>,
}

impl TaskWatch {
    pub async fn open(connection: &mut Connection, stack: &str) -> anyhow::Result<TaskWatch> {
        Ok(TaskWatch { stack: stack.to_string(), events: open(connection, stack).await?, peeked: None })
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

    /// The next event, [`Seen::Reopened`] after the serving manager went away, or
    /// [`Seen::TimedOut`] once `deadline` has passed. An error when the stream failed or ended
    /// and there is no other manager to go to.
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
            Some(Ok(event)) => return Ok(Seen::Event(Box::new(event))),
            Some(Err(status)) => anyhow::anyhow!("progress stream: {}", status.message()),
            // A watch never ends by itself: its manager is stopping.
            None => anyhow::anyhow!("the manager closed the progress stream"),
        };
        if !connection.recover().await? {
            return Err(failure);
        }
        self.events = open(connection, &self.stack).await?;
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
