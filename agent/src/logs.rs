//! The agent's gRPC `Agent` service: what managers ask of a node directly. Today that is the
//! output of the containers of some tasks (`shoal logs`), streamed from the engine.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use shoal_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, EngineError, LogOptions, LogStream};
use crate::labels;
use crate::session::RegisteredId;

pub type LogChunkStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send + 'static>>;

/// Serves `Agent.Logs` from the engine: the containers labelled with the task and with this
/// node. Task ids are unique only within a cluster, and an engine may hold containers of other
/// nodes, of other clusters, or left by an earlier one (task ids start again at 1): by its task
/// label alone, another cluster's task 1 was served for this one's (seen in the tests, where
/// clusters share the engine).
pub struct AgentService<E: Engine> {
    engine: Arc<E>,
    /// This node's id; until it is known (before the first registration), nothing is served.
    node_id: RegisteredId,
}

impl<E: Engine> AgentService<E> {
    pub fn new(engine: Arc<E>) -> Self {
        AgentService { engine, node_id: RegisteredId::default() }
    }

    /// Serve only containers of the node the agent's session registers (see
    /// [`AgentConfig::registered_id`](crate::session::AgentConfig::registered_id)).
    pub fn for_registered(mut self, node_id: RegisteredId) -> Self {
        self.node_id = node_id;
        self
    }

    pub fn into_server(self) -> pb::agent_server::AgentServer<Self> {
        pb::agent_server::AgentServer::new(self)
    }
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Unreachable { .. } => Status::unavailable(e.to_string()),
        EngineError::ContainerNotFound(_) => Status::not_found(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl<E: Engine> pb::agent_server::Agent for AgentService<E> {
    type LogsStream = LogChunkStream;

    async fn logs(&self, request: Request<pb::AgentLogsRequest>) -> Result<Response<LogChunkStream>, Status> {
        let request = request.into_inner();
        let Some(node) = self.node_id.get() else {
            return Err(Status::unavailable("this agent has not registered with a manager yet"));
        };
        let options = LogOptions { follow: request.follow, tail: request.tail, timestamps: request.timestamps };
        let mut streams = Vec::new();
        let mut missing = Vec::new();
        for task in request.tasks {
            let key = task.to_string();
            let filter = [(labels::TASK, key.as_str()), (labels::NODE, node.as_str())];
            let found = self.engine.list(&filter).await.map_err(engine_status)?;
            let Some(container) = found.into_iter().next() else {
                missing.push(task);
                continue;
            };
            let service = container.labels.get(labels::SERVICE).cloned().unwrap_or_default();
            let label = Label { task, container_name: container.name.clone(), service };
            let timestamps = options.timestamps;
            let chunks = self.engine.logs(&container.id, options.clone()).flat_map(move |item| {
                let out: Vec<Result<pb::LogChunk, Status>> = match item {
                    Ok(chunk) => label.chunks(chunk.stream, chunk.data, timestamps).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(engine_status(e))],
                };
                stream::iter(out)
            });
            streams.push(chunks.boxed());
        }
        if streams.is_empty() && !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(u64::to_string).collect();
            return Err(Status::not_found(format!("no container on this node for task {}", list.join(", "))));
        }
        Ok(Response::new(stream::select_all(streams).boxed()))
    }
}

/// What every chunk of one container carries.
struct Label {
    task: u64,
    container_name: String,
    service: String,
}

impl Label {
    /// One protocol chunk per engine chunk; with timestamps, one per line, the engine's
    /// `<RFC 3339> ` line prefix moved into the `timestamp` field.
    fn chunks(&self, stream: LogStream, data: Bytes, timestamps: bool) -> Vec<pb::LogChunk> {
        let chunk = |data: Bytes, timestamp: String| pb::LogChunk {
            task: self.task,
            container_name: self.container_name.clone(),
            service: self.service.clone(),
            stderr: stream == LogStream::Stderr,
            data: data.to_vec(),
            timestamp,
        };
        if !timestamps {
            return vec![chunk(data, String::new())];
        }
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let end = rest.iter().position(|b| *b == b'\n').map_or(rest.len(), |i| i + 1);
            let line = rest.split_to(end);
            match split_timestamp(&line) {
                Some((timestamp, at)) => out.push(chunk(line.slice(at..), timestamp)),
                None => out.push(chunk(line, String::new())),
            }
        }
        out
    }
}

/// `2024-05-01T12:00:00.123456789Z text` → the timestamp and where the text starts.
fn split_timestamp(line: &[u8]) -> Option<(String, usize)> {
    let space = line.iter().take(40).position(|b| *b == b' ')?;
    let prefix = std::str::from_utf8(&line[..space]).ok()?;
    let looks_like_time = prefix.len() >= 20
        && prefix.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && prefix.as_bytes()[4] == b'-'
        && prefix.contains('T');
    looks_like_time.then(|| (prefix.to_string(), space + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mock::{MockBehavior, MockEngine};
    use crate::spec::{ContainerSpec, TaskIdentity};
    use pb::agent_server::Agent as _;

    #[tokio::test]
    async fn streams_a_tasks_logs_labelled_with_task_container_and_service() {
        let engine = MockEngine::new();
        let lines = vec!["one".to_string(), "two".to_string(), "three".to_string()];
        engine.behave("img", MockBehavior { logs: lines, ..Default::default() });
        let identity = TaskIdentity {
            project: "shop".into(),
            service: "web".into(),
            container_number: 1,
            node_id: "n1".into(),
            task_id: "17".into(),
            ..Default::default()
        };
        let id = engine.create(&ContainerSpec::new(identity, "img")).await.unwrap();
        engine.start(&id).await.unwrap();
        let node = RegisteredId::default();
        node.set("n1");
        let service = AgentService::new(Arc::new(engine.clone())).for_registered(node);

        let request = pb::AgentLogsRequest { tasks: vec![17], follow: false, tail: Some(2), timestamps: true };
        let chunks: Vec<pb::LogChunk> =
            service.logs(Request::new(request)).await.unwrap().into_inner().map(|c| c.unwrap()).collect().await;
        let text: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
        assert_eq!(text, vec![&b"two\n"[..], &b"three\n"[..]]);
        assert!(chunks.iter().all(|c| c.task == 17 && c.container_name == "shop-web-1" && c.service == "web"));
        assert!(chunks.iter().all(|c| c.timestamp.starts_with("2024-01-01T")));

        // Following ends when the container stops.
        let request = pb::AgentLogsRequest { tasks: vec![17], follow: true, tail: None, timestamps: false };
        let mut stream = service.logs(Request::new(request)).await.unwrap().into_inner();
        for _ in 0..3 {
            stream.next().await.unwrap().unwrap();
        }
        engine.stop(&id, std::time::Duration::from_secs(1)).await.unwrap();
        assert!(stream.next().await.is_none());

        let request = pb::AgentLogsRequest { tasks: vec![99], ..Default::default() };
        let err = service.logs(Request::new(request)).await.err().unwrap();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn only_this_nodes_container_of_a_task_is_served_and_only_once_the_node_is_known() {
        // Two clusters on one engine, each with a task 1: another node's must not be served.
        let engine = MockEngine::new();
        engine.behave("theirs", MockBehavior { logs: vec!["not ours".into()], ..Default::default() });
        engine.behave("ours", MockBehavior { logs: vec!["ours".into()], ..Default::default() });
        for (project, node, image) in [("theirs", "other", "theirs"), ("ours", "n1", "ours")] {
            let identity = TaskIdentity {
                project: project.into(),
                service: "web".into(),
                node_id: node.into(),
                task_id: "1".into(),
                ..Default::default()
            };
            let id = engine.create(&ContainerSpec::new(identity, image)).await.unwrap();
            engine.start(&id).await.unwrap();
        }
        let registered = RegisteredId::default();
        let service = AgentService::new(Arc::new(engine.clone())).for_registered(registered.clone());
        let request = || Request::new(pb::AgentLogsRequest { tasks: vec![1], ..Default::default() });
        let err = service.logs(request()).await.err().unwrap();
        assert_eq!(err.code(), tonic::Code::Unavailable, "no node id yet: {err}");

        registered.set("n1");
        let chunks: Vec<pb::LogChunk> =
            service.logs(request()).await.unwrap().into_inner().map(|c| c.unwrap()).collect().await;
        let text: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
        assert_eq!(text, vec![&b"ours\n"[..]]);
    }

    #[test]
    fn timestamps_move_into_their_field_one_chunk_per_line() {
        let label = Label { task: 3, container_name: "p-web-1".into(), service: "web".into() };
        let data = Bytes::from_static(b"2024-05-01T12:00:00.123456789Z hello\n2024-05-01T12:00:01.000000000Z world\n");
        let chunks = label.chunks(LogStream::Stdout, data, true);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].timestamp, "2024-05-01T12:00:00.123456789Z");
        assert_eq!(chunks[0].data, b"hello\n");
        assert_eq!(chunks[1].data, b"world\n");
        assert_eq!((chunks[1].task, chunks[1].service.as_str()), (3, "web"));
        let plain = label.chunks(LogStream::Stderr, Bytes::from_static(b"no time here\n"), true);
        assert_eq!((plain[0].timestamp.as_str(), plain[0].stderr), ("", true));
    }
}
