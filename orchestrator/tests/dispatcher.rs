//! The Dispatcher protocol end to end over loopback gRPC: a single-node Raft store with the
//! orchestration loop and the dispatcher, and agents on mock engines (no Docker needed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::engine::mock::MockEngine;
use shoal_agent::engine::Engine;
use shoal_agent::labels;
use shoal_agent::session::{run_agent, AgentConfig, AgentError};
use shoal_agent::TaskSpec;
use shoal_orchestrator::compose::loader::{load_in_memory, LoadOptions};
use shoal_orchestrator::compose::model::Project;
use shoal_orchestrator::dispatcher::pieces::PIECE_BYTES;
use shoal_orchestrator::dispatcher::server::{DispatcherConfig, DispatcherService, SHARED_SPEC_FORMAT};
use shoal_orchestrator::dispatcher::taskspec::config_hash;
use shoal_orchestrator::manager::cluster::now;
use shoal_orchestrator::manager::machine::ClusterMachine;
use shoal_orchestrator::manager::{orchestrate, Cluster};
use shoal_orchestrator::store::command::{Command, RecreatePolicy, ServiceDeployment};
use shoal_orchestrator::store::raft::{self, NoopTransport, RaftConfig};
use shoal_orchestrator::store::state::{ClusterState, DesiredState, NodeStatus, ServiceId, ServiceMode, TaskState};
use shoal_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TOKEN: &str = "test-join-token";
const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` until it gives a value, failing the test after `timeout`.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Manager {
    cluster: Cluster,
    dispatcher: DispatcherService,
    address: String,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    dir: Option<tempfile::TempDir>,
}

impl Manager {
    async fn start(config: DispatcherConfig) -> Manager {
        Manager::start_at(config, tempfile::tempdir().expect("temp dir"), "127.0.0.1:0").await
    }

    /// A manager on `dir`'s raft state, listening on `listen`.
    async fn start_at(config: DispatcherConfig, dir: tempfile::TempDir, listen: &str) -> Manager {
        let (machine, changes) = ClusterMachine::new();
        let node = raft::start(RaftConfig::new(1, dir.path()), machine, Arc::new(NoopTransport)).await.expect("raft");
        node.handle.wait_for(WAIT, |s| s.is_leader()).await.expect("leader");
        let cluster = Cluster::new(node.handle.clone(), node.state.clone(), changes);
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(orchestrate::run(cluster.clone(), shutdown_rx.clone()));
        let (dispatcher, _tasks) =
            DispatcherService::start(cluster.clone(), config, shutdown_rx.clone()).expect("dispatcher config");
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder().add_service(dispatcher.clone().into_server());
        let mut stop = shutdown_rx;
        let server = tokio::spawn(server.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        Manager { cluster, dispatcher, address, shutdown, server, dir: Some(dir) }
    }

    /// Stops everything (open sessions end) and gives back the state dir.
    async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.send_replace(true);
        let server = std::mem::replace(&mut self.server, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(WAIT, server).await.expect("the server stops").expect("server task").expect("server");
        self.cluster.raft().clone().shutdown().await;
        self.dir.take().expect("state dir")
    }

    fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.cluster.read(f)
    }

    async fn deploy(&self, yaml: &str) {
        self.deploy_as("shop", yaml).await;
    }

    async fn deploy_as(&self, name: &str, yaml: &str) {
        let project = load(name, yaml);
        let services = project
            .services
            .iter()
            .map(|(name, spec)| ServiceDeployment {
                name: name.clone(),
                spec: spec.clone(),
                config_hash: config_hash(&project, name, spec),
                mode: ServiceMode::Replicated,
                replicas: spec.replicas(),
            })
            .collect();
        let command = Command::DeployStack {
            stack: project.name.clone(),
            project: Box::new(project),
            services,
            remove_orphans: false,
            only: Vec::new(),
            recreate: RecreatePolicy::Changed,
            at: now(),
            request_id: String::new(),
        };
        self.cluster.propose(command).await.expect("deploy");
    }

    async fn scale(&self, service: &str, replicas: u64) {
        self.scale_in("shop", service, replicas).await;
    }

    async fn scale_in(&self, stack: &str, service: &str, replicas: u64) {
        let command = Command::ScaleService { service: ServiceId::new(stack, service), replicas, at: now() };
        self.cluster.propose(command).await.expect("scale");
    }

    /// Running tasks meant to run, per node.
    fn running(&self, service: &str) -> BTreeMap<String, usize> {
        self.read(|s| {
            let mut out = BTreeMap::new();
            for t in s.tasks.values().filter(|t| {
                t.service.service == service && t.desired == DesiredState::Running && t.state == TaskState::Running
            }) {
                *out.entry(t.node.clone().unwrap_or_default()).or_insert(0) += 1;
            }
            out
        })
    }

    fn node_status(&self, node: &str) -> Option<(NodeStatus, String)> {
        self.read(|s| s.nodes.get(node).map(|n| (n.status, n.status_message.clone())))
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

fn load(name: &str, yaml: &str) -> Project {
    let file = PathBuf::from("/proj/compose.yaml");
    let options = LoadOptions {
        files: vec![file.clone()],
        working_dir: PathBuf::from("/proj"),
        project_name: Some(name.into()),
        ..LoadOptions::default()
    };
    load_in_memory(&options, BTreeMap::from([(file, yaml.to_string())])).expect("the test project loads").project
}

struct Agent {
    engine: MockEngine,
    node: String,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Agent {
    fn start(manager: &Manager, node: &str, engine: MockEngine) -> Agent {
        Agent::start_with(vec![manager.address.clone()], TOKEN, node, engine)
    }

    fn start_with(managers: Vec<String>, token: &str, node: &str, engine: MockEngine) -> Agent {
        let mut config = AgentConfig::new(managers, token);
        config.node_id = Some(node.to_string());
        config.labels = BTreeMap::from([("test".to_string(), "yes".to_string())]);
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(500);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run_agent(config, Arc::new(engine.clone()), shutdown_rx));
        Agent { engine, node: node.to_string(), shutdown, task }
    }

    /// Stops the agent process (its containers keep running) and gives back its engine.
    async fn stop(self) -> MockEngine {
        self.shutdown.send_replace(true);
        let result = tokio::time::timeout(WAIT, self.task).await.expect("the agent stops").expect("agent task");
        result.expect("the agent stopped cleanly");
        self.engine
    }

    /// Ids of this node's running containers.
    async fn running_containers(&self) -> BTreeSet<String> {
        let list = self.engine.list(&[(labels::NODE, self.node.as_str())]).await.expect("list");
        list.into_iter().filter(|c| c.is_running()).map(|c| c.id).collect()
    }
}

fn fast() -> DispatcherConfig {
    // Down after 4 missed periods: short enough for tests, loose enough for a busy 2-core box.
    DispatcherConfig::new(TOKEN).with_heartbeat(Duration::from_millis(250), 4)
}

const SHOP: &str = r#"
services:
  web:
    image: shoal-test/web
    deploy:
      replicas: 3
  worker:
    image: shoal-test/worker
    ports: ["9000:90"]
    volumes: ["data:/data"]
volumes:
  data: {}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_on_agents_and_follow_scaling() {
    let manager = Manager::start(fast()).await;
    let a = Agent::start(&manager, "node-a", MockEngine::new());
    let b = Agent::start(&manager, "node-b", MockEngine::new());
    eventually("both nodes ready", WAIT, || {
        let ready = |n: &str| manager.node_status(n).is_some_and(|(s, _)| s == NodeStatus::Ready);
        (ready("node-a") && ready("node-b")).then_some(())
    })
    .await;
    let facts = manager.read(|s| s.nodes["node-a"].clone());
    assert_eq!((facts.hostname.as_str(), facts.nano_cpus, facts.memory_bytes), ("mock", 4_000_000_000, 8 << 30));
    assert_eq!(facts.labels.get("test").map(String::as_str), Some("yes"));

    manager.deploy(SHOP).await;
    eventually("3 web and 1 worker running", WAIT, || {
        let web: usize = manager.running("web").values().sum();
        let worker: usize = manager.running("worker").values().sum();
        (web == 3 && worker == 1).then_some(())
    })
    .await;
    // The state and the engines agree: every running task has its container on its node.
    let on = |node: &str| {
        manager.read(|s| {
            s.node_tasks(node)
                .filter(|t| t.state == TaskState::Running)
                .filter_map(|t| t.container_id.clone())
                .collect::<BTreeSet<_>>()
        })
    };
    assert_eq!(on("node-a"), a.running_containers().await);
    assert_eq!(on("node-b"), b.running_containers().await);
    assert_eq!(a.engine.container_count() + b.engine.container_count(), 4);
    assert!(a.engine.network_exists("shop_default") || b.engine.network_exists("shop_default"));
    let worker_ports =
        manager.read(|s| s.tasks.values().find(|t| t.service.service == "worker").map(|t| t.ports.clone()));
    assert_eq!(worker_ports, Some(vec!["0.0.0.0:9000->90/tcp".to_string()]));

    manager.scale("web", 5).await;
    eventually("5 web running across both nodes", WAIT, || {
        let web = manager.running("web");
        (web.values().sum::<usize>() == 5 && web.len() == 2).then_some(())
    })
    .await;
    eventually("6 containers", WAIT, || (a.engine.container_count() + b.engine.container_count() == 6).then_some(()))
        .await;

    manager.scale("web", 1).await;
    eventually("web scaled down to 1, its extra containers removed and forgotten", WAIT, || {
        let web: usize = manager.running("web").values().sum();
        let containers = a.engine.container_count() + b.engine.container_count();
        let web_tasks = manager.read(|s| s.tasks.values().filter(|t| t.service.service == "web").count());
        (web == 1 && containers == 2 && web_tasks == 1).then_some(())
    })
    .await;

    // `down -v`: containers, the network and the named volume go; the stack is forgotten.
    let worker_node =
        manager.read(|s| s.tasks.values().find(|t| t.service.service == "worker").and_then(|t| t.node.clone()));
    let worker_engine = if worker_node.as_deref() == Some("node-a") { &a.engine } else { &b.engine };
    assert!(worker_engine.volume_exists("shop_data"));
    let command = Command::RemoveStack { stack: "shop".into(), remove_volumes: true, stop_timeout: None, at: now() };
    manager.cluster.propose(command).await.expect("remove stack");
    eventually("the stack removed everywhere", WAIT, || {
        let gone = manager.read(|s| s.stacks.is_empty() && s.tasks.is_empty());
        let engines_clean = [&a.engine, &b.engine]
            .iter()
            .all(|e| e.container_count() == 0 && !e.network_exists("shop_default") && !e.volume_exists("shop_data"));
        (gone && engines_clean).then_some(())
    })
    .await;

    let stats = manager.dispatcher.stats();
    assert!(
        stats.status_updates > stats.status_proposals,
        "status updates should be batched: {} updates in {} proposals",
        stats.status_updates,
        stats.status_proposals
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_join_token_is_refused() {
    let manager = Manager::start(fast()).await;
    let agent = Agent::start_with(vec![manager.address.clone()], "not-the-token", "intruder", MockEngine::new());
    let result = tokio::time::timeout(WAIT, agent.task).await.expect("the agent gives up").expect("agent task");
    match result {
        Err(AgentError::Refused { message, .. }) => assert_eq!(message, "invalid join token"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(manager.node_status("intruder").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_down_its_tasks_move_and_its_stale_containers_go_when_it_returns() {
    let config = DispatcherConfig::new(TOKEN).with_heartbeat(Duration::from_millis(200), 4);
    let (period, down_after) = (config.heartbeat_period, config.down_after);
    let manager = Manager::start(config).await;
    let a = Agent::start(&manager, "node-a", MockEngine::new());
    let b = Agent::start(&manager, "node-b", MockEngine::new());
    eventually("both nodes ready", WAIT, || {
        let ready = |n: &str| manager.node_status(n).is_some_and(|(s, _)| s == NodeStatus::Ready);
        (ready("node-a") && ready("node-b")).then_some(())
    })
    .await;
    manager.deploy("services:\n  web:\n    image: shoal-test/web\n    deploy:\n      replicas: 4\n").await;
    eventually("web spread 2/2", WAIT, || {
        let web = manager.running("web");
        (web.get("node-a") == Some(&2) && web.get("node-b") == Some(&2)).then_some(())
    })
    .await;

    // The agent process dies; its containers keep running (a partition, as the manager sees it).
    let stopped = tokio::time::Instant::now();
    let engine_a = a.stop().await;
    assert_eq!(engine_a.container_count(), 2);
    let (_, message) = eventually("node-a down", Duration::from_secs(10), || {
        manager.node_status("node-a").filter(|(s, _)| *s == NodeStatus::Down)
    })
    .await;
    let detected = stopped.elapsed();
    assert!(message.starts_with("no heartbeat for "), "{message}");
    // Counted from the last heartbeat, which came up to one period before the agent stopped.
    assert!(detected + period >= down_after, "marked down after {detected:?}, before {down_after:?}");
    assert!(detected < down_after + Duration::from_secs(3), "marked down only after {detected:?}");
    eventually("all 4 web tasks running on node-b", WAIT, || {
        (manager.running("web").get("node-b") == Some(&4)).then_some(())
    })
    .await;
    assert_eq!(b.engine.container_count(), 4);

    // The node comes back: it is Ready again and its stale containers are stopped and removed.
    let a = Agent::start(&manager, "node-a", engine_a);
    eventually("node-a ready again", WAIT, || {
        manager.node_status("node-a").is_some_and(|(s, _)| s == NodeStatus::Ready).then_some(())
    })
    .await;
    eventually("node-a's stale containers removed", WAIT, || (a.engine.container_count() == 0).then_some(())).await;
    assert_eq!(manager.running("web").get("node-b"), Some(&4));
    a.stop().await;
    b.stop().await;
}

/// Waits until the (single) agent has opened its `restarts + 1`th session, so `wait_synced` is
/// not answered by the session of the agent that was just stopped.
async fn new_session(manager: &Manager, restarts: u64) {
    eventually("a new session", WAIT, || (manager.dispatcher.stats().sessions_opened > restarts).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_containers() {
    // A long down window: the restart must not look like a node loss.
    let manager = Manager::start(DispatcherConfig::new(TOKEN).with_heartbeat(Duration::from_millis(250), 20)).await;
    let a = Agent::start(&manager, "node-a", MockEngine::new());
    manager.deploy("services:\n  web:\n    image: shoal-test/web\n    deploy:\n      replicas: 2\n").await;
    eventually("2 web running", WAIT, || (manager.running("web").get("node-a") == Some(&2)).then_some(())).await;
    let before = a.running_containers().await;
    assert_eq!(before.len(), 2);
    let task_containers =
        |m: &Manager| m.read(|s| s.tasks.values().map(|t| (t.id, t.container_id.clone())).collect::<BTreeMap<_, _>>());
    let tasks_before = task_containers(&manager);
    assert!(manager.dispatcher.wait_synced("node-a", WAIT).await);

    let engine = a.stop().await;
    let a = Agent::start(&manager, "node-a", engine);
    // Once synced, the state already reflects the adopted containers: nothing was recreated.
    new_session(&manager, 1).await;
    assert!(manager.dispatcher.wait_synced("node-a", WAIT).await, "the restarted agent syncs");
    assert_eq!(a.running_containers().await, before, "the same containers, none recreated");
    assert_eq!(a.engine.container_count(), 2);
    assert_eq!(task_containers(&manager), tasks_before);
    assert_eq!(manager.running("web").get("node-a"), Some(&2));

    // A container that exits while no agent runs: the first report of the next session says so.
    let engine = a.stop().await;
    let (task, container) =
        tasks_before.iter().next().map(|(t, c)| (*t, c.clone().expect("container"))).expect("a task");
    engine.stop(&container, Duration::from_secs(1)).await.expect("stop");
    let a = Agent::start(&manager, "node-a", engine);
    new_session(&manager, 2).await;
    assert!(manager.dispatcher.wait_synced("node-a", WAIT).await);
    let state = manager.read(|s| s.tasks.get(&task).map(|t| (t.state, t.exit_code)));
    assert!(state.is_none_or(|(state, _)| state.is_terminal()), "not yet reported as exited: {state:?}");
    a.stop().await;
}

type RawClient = pb::dispatcher_client::DispatcherClient<tonic::transport::Channel>;

/// A client that speaks the protocol itself, registered as a node (2 CPUs, 1 GiB); its node id.
async fn register_raw(manager: &Manager) -> (RawClient, String) {
    let mut client = pb::dispatcher_client::DispatcherClient::connect(manager.address.clone()).await.expect("connect");
    let node = pb::Node {
        hostname: "raw".into(),
        nano_cpus: 2_000_000_000,
        memory_bytes: 1 << 30,
        os: "linux".into(),
        arch: "amd64".into(),
        ..Default::default()
    };
    let registered = client
        .register(pb::RegisterRequest { token: TOKEN.into(), node: Some(node) })
        .await
        .expect("register")
        .into_inner();
    assert!(!registered.node_id.is_empty(), "the manager assigns an id");
    assert_eq!(registered.heartbeat_period_ms, 250);
    (client, registered.node_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_starts_with_the_complete_set_then_sends_numbered_diffs() {
    // This raw client never heartbeats: keep its node up for the whole test.
    let manager = Manager::start(DispatcherConfig::new(TOKEN).with_heartbeat(Duration::from_millis(250), 80)).await;
    let (mut client, node_id) = register_raw(&manager).await;

    let mut stream = client
        .session(pb::SessionRequest { node_id: node_id.clone(), accepts_pieces: true })
        .await
        .expect("session")
        .into_inner();
    let first = stream.message().await.expect("first message").expect("stream open");
    assert!(first.complete);
    assert_eq!(first.sequence, 1);
    assert!(first.changed.is_empty());

    manager.deploy("services:\n  web:\n    image: shoal-test/web\n").await;
    let next = tokio::time::timeout(WAIT, stream.message()).await.expect("a diff").expect("diff").expect("open");
    assert!(!next.complete);
    assert_eq!(next.sequence, 2);
    assert_eq!(next.changed.len(), 1);
    let assignment = &next.changed[0];
    assert_eq!(assignment.desired, pb::DesiredState::Running as i32);
    // A replica's spec is its service's, shared; the agent makes it the task's own.
    assert_eq!(assignment.spec_format, SHARED_SPEC_FORMAT);
    let spec: TaskSpec = serde_json::from_slice(&assignment.spec).expect("the spec decodes as the agent's TaskSpec");
    let spec = spec.for_task(assignment.task, assignment.slot, &node_id).expect("a replica number that fits");
    assert_eq!(spec.container.identity.task_id, assignment.task.to_string());
    assert_eq!(spec.container.identity.node_id, node_id);
    assert_eq!(spec.image.reference(), "shoal-test/web");

    // A status report reaches the store; a late one, numbered before it, does not undo it.
    let report = |state: pb::TaskState, sequence: u64| pb::UpdateTaskStatusRequest {
        node_id: node_id.clone(),
        updates: vec![pb::TaskStatus {
            task: assignment.task,
            state: state as i32,
            container_id: "c0ffee".into(),
            sequence,
            ..Default::default()
        }],
    };
    client.update_task_status(report(pb::TaskState::Running, 20)).await.expect("status update");
    let task = manager.read(|s| s.tasks[&assignment.task].clone());
    assert_eq!((task.state, task.container_id.as_deref()), (TaskState::Running, Some("c0ffee")));
    client.update_task_status(report(pb::TaskState::Preparing, 19)).await.expect("a late status update");
    assert_eq!(manager.read(|s| s.tasks[&assignment.task].state), TaskState::Running, "the late report is ignored");

    // Scaling to 0 asks the node to remove the task: a diff with the next sequence number.
    manager.scale("web", 0).await;
    let next = tokio::time::timeout(WAIT, stream.message()).await.expect("a diff").expect("diff").expect("open");
    assert_eq!(next.sequence, 3);
    assert_eq!(next.changed.len(), 1);
    assert_eq!(next.changed[0].desired, pb::DesiredState::Remove as i32);

    // Unknown nodes must register first; a heartbeat says so.
    let err = client.heartbeat(pb::HeartbeatRequest { node_id: "nobody".into() }).await.expect_err("unknown node");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_complete_set_comes_in_pieces_to_an_agent_that_reassembles_them() {
    let manager = Manager::start(DispatcherConfig::new(TOKEN).with_heartbeat(Duration::from_millis(250), 80)).await;
    let (mut client, node_id) = register_raw(&manager).await;
    manager.deploy("services:\n  web:\n    image: shoal-test/web\n    deploy: {replicas: 24}\n").await;
    let placed = || manager.read(|s| s.tasks.values().filter(|t| t.node.as_deref() == Some(node_id.as_str())).count());
    eventually("24 tasks placed on the node", WAIT, || (placed() == 24).then_some(())).await;

    // Pieces: numbered in order, `more` up to the last, each within the size, together the set.
    let request = |accepts_pieces| pb::SessionRequest { node_id: node_id.clone(), accepts_pieces };
    let mut stream = client.session(request(true)).await.expect("session").into_inner();
    let mut pieces = Vec::new();
    loop {
        let piece = tokio::time::timeout(WAIT, stream.message()).await.expect("a piece").expect("piece").expect("open");
        let more = piece.more;
        pieces.push(piece);
        if !more {
            break;
        }
    }
    assert!(pieces.len() > 1, "24 assignments are more than one piece");
    for (i, piece) in pieces.iter().enumerate() {
        assert_eq!(piece.sequence, i as u64 + 1);
        assert!(piece.complete);
        let bytes: usize = piece.changed.iter().map(prost::Message::encoded_len).sum();
        assert!(bytes <= PIECE_BYTES || piece.changed.len() == 1, "piece {i} holds {bytes} bytes");
    }
    let tasks: BTreeSet<u64> = pieces.iter().flat_map(|p| p.changed.iter().map(|a| a.task)).collect();
    assert_eq!(tasks.len(), 24);
    drop(stream);

    // An agent that does not say it reassembles gets the set in one message.
    let mut stream = client.session(request(false)).await.expect("session").into_inner();
    let whole = tokio::time::timeout(WAIT, stream.message()).await.expect("the set").expect("set").expect("open");
    assert!(whole.complete && !whole.more);
    assert_eq!(whole.changed.iter().map(|a| a.task).collect::<BTreeSet<_>>(), tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_status_reports_share_store_writes() {
    let manager = Manager::start(fast()).await;
    let channel = tonic::transport::Endpoint::from_shared(manager.address.clone())
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let client = pb::dispatcher_client::DispatcherClient::new(channel);
    let calls = (0..40u64).map(|i| {
        let mut client = client.clone();
        async move {
            let update = pb::TaskStatus { task: 1000 + i, state: pb::TaskState::Running as i32, ..Default::default() };
            client.update_task_status(pb::UpdateTaskStatusRequest { node_id: "n".into(), updates: vec![update] }).await
        }
    });
    for result in futures_util::future::join_all(calls).await {
        result.expect("every call is answered once its batch is applied");
    }
    let stats = manager.dispatcher.stats();
    assert_eq!(stats.status_updates, 40);
    // Group commit: the first report is written alone, at once; the others arrive while that
    // write is in flight and share the next few.
    assert!(stats.status_proposals <= 10, "40 concurrent reports took {} store writes", stats.status_proposals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ride_out_a_manager_restart_and_fail_over_in_order() {
    let config = DispatcherConfig::new(TOKEN).with_heartbeat(Duration::from_millis(250), 8);
    let manager = Manager::start(config.clone()).await;
    let address = manager.address.clone();
    // The first address has nobody listening: the agent moves on to the next one.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let a = Agent::start_with(vec![closed, address.clone()], TOKEN, "node-a", MockEngine::new());
    manager.deploy("services:\n  web:\n    image: shoal-test/web\n    deploy:\n      replicas: 2\n").await;
    eventually("2 web running", WAIT, || (manager.running("web").get("node-a") == Some(&2)).then_some(())).await;
    let before = a.running_containers().await;

    // No manager for a while: the containers keep running.
    let dir = manager.stop().await;
    let listen = address.trim_start_matches("http://").to_string();
    assert_eq!(a.running_containers().await, before);
    let manager = Manager::start_at(config, dir, &listen).await;
    eventually("the agent back in session", WAIT, || (manager.dispatcher.stats().sessions_opened >= 1).then_some(()))
        .await;
    eventually("its tasks still running, in the same containers", WAIT, || {
        let containers: BTreeSet<String> = manager.read(|s| {
            s.node_tasks("node-a")
                .filter(|t| t.state == TaskState::Running && t.desired == DesiredState::Running)
                .filter_map(|t| t.container_id.clone())
                .collect()
        });
        (containers == before).then_some(())
    })
    .await;
    assert_eq!(a.running_containers().await, before);
    assert_eq!(a.engine.container_count(), 2);
    a.stop().await;
}

/// Removes every Docker object a test run created, even when the test fails.
struct DockerCleanup {
    node: String,
    project: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let docker = |args: &[&str]| std::process::Command::new("docker").args(args).output().ok();
        let filter = format!("label=io.shoal.node={}", self.node);
        if let Some(out) = docker(&["ps", "-aq", "--filter", &filter]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                docker(&["rm", "-f", "-v", id]);
            }
        }
        docker(&["network", "rm", &format!("{}_default", self.project)]);
    }
}

/// The same protocol against the real engine, with the offline test image (skipped, saying so,
/// where there is no Docker engine or no `shoal-test/busybox:latest`; `scripts/test-image`
/// imports it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_agent_runs_scales_and_removes_real_containers() {
    use shoal_agent::engine::docker::DockerEngine;
    let Ok(engine) = DockerEngine::connect().await else {
        eprintln!("skipped: no Docker engine");
        return;
    };
    let image = shoal_agent::ImageSpec {
        image: Some("shoal-test/busybox:latest".into()),
        pull_policy: shoal_agent::PullPolicy::Never,
        ..Default::default()
    };
    if let Err(e) = engine.ensure_image(&image, None).await {
        eprintln!("skipped: {e} (run scripts/test-image)");
        return;
    }
    let run = format!("{}{}", std::process::id(), now() % 100_000);
    let cleanup = DockerCleanup { node: format!("dispatch-test-{run}"), project: format!("shoaldispatch{run}") };
    let manager = Manager::start(fast()).await;
    let mut config = AgentConfig::new(vec![manager.address.clone()], TOKEN);
    config.node_id = Some(cleanup.node.clone());
    let (stop, stop_rx) = watch::channel(false);
    let engine = Arc::new(engine);
    let agent = tokio::spawn(run_agent(config, engine.clone(), stop_rx));

    let yaml = format!(
        "services:\n  web:\n    image: shoal-test/busybox:latest\n    command: [sleep, '300']\n    init: true\n    \
         labels:\n      io.shoal.test: '{run}'\n    deploy:\n      replicas: 2\n"
    );
    manager.deploy_as(&cleanup.project, &yaml).await;
    let running = |m: &Manager| {
        m.read(|s| {
            s.tasks.values().filter(|t| t.state == TaskState::Running && t.desired == DesiredState::Running).count()
        })
    };
    eventually("2 real containers running", Duration::from_secs(60), || (running(&manager) == 2).then_some(())).await;
    let listed = engine.list(&[(labels::NODE, cleanup.node.as_str())]).await.expect("list");
    let mut names: Vec<String> = listed.iter().filter(|c| c.is_running()).map(|c| c.name.clone()).collect();
    names.sort();
    assert_eq!(names, vec![format!("{}-web-1", cleanup.project), format!("{}-web-2", cleanup.project)]);

    manager.scale_in(&cleanup.project, "web", 1).await;
    // The scaled-away task is forgotten once its agent reported the container removed.
    eventually("scaled down to 1", Duration::from_secs(60), || {
        (running(&manager) == 1 && manager.read(|s| s.tasks.len()) == 1).then_some(())
    })
    .await;
    assert_eq!(engine.list(&[(labels::NODE, cleanup.node.as_str())]).await.expect("list").len(), 1);

    let command =
        Command::RemoveStack { stack: cleanup.project.clone(), remove_volumes: false, stop_timeout: None, at: now() };
    manager.cluster.propose(command).await.expect("remove stack");
    eventually("the stack gone from the state", Duration::from_secs(60), || {
        manager.read(|s| s.stacks.is_empty()).then_some(())
    })
    .await;
    assert!(engine.list(&[(labels::NODE, cleanup.node.as_str())]).await.expect("list").is_empty());
    stop.send_replace(true);
    agent.await.expect("agent task").expect("agent");
}
