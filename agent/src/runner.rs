//! The task runner: one task is one container. It creates and starts the container, then
//! watches it and reports every observed state change on a channel that the dispatcher client
//! forwards to the manager.
//!
//! Watching is level-triggered: a single engine event subscription for the whole node only
//! *nudges* a task's watcher, which then inspects the container and reports the state it derives,
//! if it changed. A lost, duplicated or replayed event therefore cannot produce a wrong report,
//! and after a reconnect every watcher simply re-inspects.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::engine::{
    ContainerState, ContainerStatus, Engine, EngineError, EngineResult, EventFilter, HealthStatus, RemoveOptions,
    StopOutcome,
};
use crate::labels;
use crate::spec::ContainerSpec;

/// Docker's default when a service sets no `stop_grace_period`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What the agent observed about a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Created,
    Starting,
    Running,
    Healthy,
    Unhealthy,
    Exited { code: i64 },
    Failed { reason: String },
}

impl TaskState {
    pub fn is_terminal(&self) -> bool {
        matches!(self, TaskState::Exited { .. } | TaskState::Failed { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub container_id: Option<String>,
    pub state: TaskState,
    /// One human-readable line, e.g. "exited with code 3".
    pub message: String,
    /// Published ports as bound (`0.0.0.0:8080->80/tcp`), while running.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The container's name when it is not the one its spec asks for: on an engine that several
    /// nodes share, another node's container held that name (see [`renamed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
}

/// The name a task's container gets when another node's container holds the one its spec asks
/// for: `<name>-t<task id>`.
pub fn renamed(name: &str, task_id: &str) -> String {
    format!("{name}-t{task_id}")
}

/// Whether `holder` (the labels of a container of this node) marks the container of an older
/// task of the replica `identity` is for. The manager gives a replica a new task on the node
/// that held the old one only once it has given up on the old one: its container is being
/// removed (it was orphaned while the node was marked down, and the node came back; the
/// removal and the new task arrive together and race for the name). Task ids only grow.
fn is_older_task_of_replica(holder: &BTreeMap<String, String>, identity: &crate::spec::TaskIdentity) -> bool {
    let label = |key: &str| holder.get(key).map(String::as_str);
    let older = match (label(labels::TASK).map(str::parse::<u64>), identity.task_id.parse::<u64>()) {
        (Some(Ok(held)), Ok(new)) => held < new,
        _ => false,
    };
    older
        && label(labels::NODE) == Some(identity.node_id.as_str())
        && label(labels::PROJECT) == Some(identity.project.as_str())
        && label(labels::SERVICE) == Some(identity.service.as_str())
        && label(labels::CONTAINER_NUMBER) == Some(identity.container_number.to_string().as_str())
}

/// Whether `name` is a name [`renamed`] gave the task's container.
fn is_renamed(name: &str, task_id: &str) -> bool {
    name.strip_suffix(task_id).and_then(|n| n.strip_suffix("-t")).is_some_and(|base| !base.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("task {0} is not known to this agent")]
    UnknownTask(String),
    #[error("task {0} has no container yet")]
    NoContainer(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Runs and watches the tasks of one node. Cheap to clone.
pub struct TaskRunner<E: Engine> {
    shared: Arc<Shared<E>>,
}

impl<E: Engine> Clone for TaskRunner<E> {
    fn clone(&self) -> Self {
        TaskRunner { shared: self.shared.clone() }
    }
}

struct Shared<E> {
    engine: Arc<E>,
    node_id: String,
    status_tx: mpsc::Sender<TaskStatus>,
    tasks: Mutex<HashMap<String, TaskEntry>>,
    /// Container id → the watcher to nudge on its events.
    watchers: Mutex<HashMap<String, Arc<Watcher>>>,
}

struct TaskEntry {
    container_id: Option<String>,
    /// The container's name when it is not the spec's (reported with every status).
    renamed: Option<String>,
    stop_grace: Duration,
    /// An adopted container that was created but never started (the agent stopped between
    /// create and start). It starts only once the manager wants its task running
    /// ([`TaskRunner::start_adopted`]): its dependencies may not be ready, or the task may be
    /// on its way out.
    unstarted: bool,
}

struct Watcher {
    nudge: Notify,
    /// Set when the runner itself removes the container, so its disappearance is not a failure.
    retired: AtomicBool,
}

impl<E: Engine> TaskRunner<E> {
    /// Subscribes to this node's container events and starts routing them. Statuses are sent on
    /// `status_tx`.
    pub async fn start(
        engine: Arc<E>,
        node_id: impl Into<String>,
        status_tx: mpsc::Sender<TaskStatus>,
    ) -> EngineResult<Self> {
        let node_id = node_id.into();
        let shared = Arc::new(Shared {
            engine,
            node_id,
            status_tx,
            tasks: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
        });
        let events = shared.engine.events(shared.event_filter(None)).await?;
        tokio::spawn(pump_events(Arc::downgrade(&shared), events));
        Ok(TaskRunner { shared })
    }

    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Takes over the containers this node already runs (labelled `io.shoal.node=<node>`), e.g.
    /// after an agent restart, instead of recreating them. Reports each one's current state and
    /// returns the adopted task ids. Containers that were created but never started stay so until
    /// [`TaskRunner::start_adopted`].
    pub async fn adopt(&self) -> EngineResult<Vec<String>> {
        let node = self.shared.node_id.clone();
        let found = self.shared.engine.list(&[(labels::NODE, &node)]).await?;
        let mut adopted = Vec::new();
        for c in found {
            let Some(task_id) = c.labels.get(labels::TASK).cloned() else {
                continue;
            };
            let fresh = {
                let mut tasks = self.shared.lock_tasks();
                if tasks.contains_key(&task_id) {
                    false
                } else {
                    let unstarted = c.status == ContainerStatus::Created;
                    let renamed = is_renamed(&c.name, &task_id).then(|| c.name.clone());
                    let entry = TaskEntry {
                        container_id: Some(c.id.clone()),
                        renamed,
                        stop_grace: DEFAULT_STOP_GRACE,
                        unstarted,
                    };
                    tasks.insert(task_id.clone(), entry);
                    true
                }
            };
            if fresh {
                let shared = self.shared.clone();
                let tid = task_id.clone();
                tokio::spawn(async move { shared.adopt_one(tid, c, false).await });
                adopted.push(task_id);
            }
        }
        Ok(adopted)
    }

    /// Runs a task: create, start, then watch. Returns once the work is handed to a background
    /// task; progress arrives on the status channel. A task this runner already has (for example
    /// one just adopted) is left alone.
    pub fn run(&self, spec: ContainerSpec) {
        let task_id = spec.identity.task_id.clone();
        {
            let mut tasks = self.shared.lock_tasks();
            if tasks.contains_key(&task_id) {
                return;
            }
            let stop_grace = spec.stop_grace_period.unwrap_or(DEFAULT_STOP_GRACE);
            tasks.insert(task_id, TaskEntry { container_id: None, renamed: None, stop_grace, unstarted: false });
        }
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.run_one(spec).await });
    }

    /// Starts the task's adopted container if it was created but never started; does nothing
    /// for any other task. Call it once the manager wants the task running. Progress arrives on
    /// the status channel, as for [`TaskRunner::run`].
    pub async fn start_adopted(&self, task_id: &str) {
        let container = {
            let mut tasks = self.shared.lock_tasks();
            let Some(entry) = tasks.get_mut(task_id).filter(|e| e.unstarted) else { return };
            entry.unstarted = false;
            entry.container_id.clone()
        };
        if let Some(container) = container {
            self.shared.start_created(task_id, &container).await;
        }
    }

    /// Stops the task's container (its stop signal, the grace period, then a kill). The watcher
    /// reports the resulting exit.
    pub async fn stop(&self, task_id: &str) -> Result<StopOutcome, RunnerError> {
        self.stop_with(task_id, None).await
    }

    /// Like [`TaskRunner::stop`], with a grace period that overrides the one the task started
    /// with (the latest spec's: `down -t`, or an adopted container whose spec arrived later).
    pub async fn stop_with(&self, task_id: &str, grace: Option<Duration>) -> Result<StopOutcome, RunnerError> {
        let (container, started_with) = self.shared.container_of(task_id)?;
        Ok(self.shared.engine.stop(&container, grace.unwrap_or(started_with)).await?)
    }

    /// Removes the task's container (forcefully) and forgets the task.
    pub async fn remove(&self, task_id: &str, volumes: bool) -> Result<(), RunnerError> {
        let container = self.shared.container_of(task_id).map(|(c, _)| c);
        match container {
            Ok(c) => self.shared.remove_container(&c, volumes).await?,
            Err(RunnerError::NoContainer(_)) => {}
            Err(e) => return Err(e),
        }
        self.shared.lock_tasks().remove(task_id);
        Ok(())
    }

    /// Task ids this runner currently manages.
    pub fn tasks(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.shared.lock_tasks().keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn container_id(&self, task_id: &str) -> Option<String> {
        self.shared.lock_tasks().get(task_id).and_then(|t| t.container_id.clone())
    }
}

impl<E: Engine> Shared<E> {
    fn lock_tasks(&self) -> MutexGuard<'_, HashMap<String, TaskEntry>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_watchers(&self) -> MutexGuard<'_, HashMap<String, Arc<Watcher>>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event_filter(&self, since: Option<SystemTime>) -> EventFilter {
        EventFilter {
            labels: BTreeMap::from([(labels::NODE.to_string(), self.node_id.clone())]),
            container: None,
            since,
        }
    }

    fn container_of(&self, task_id: &str) -> Result<(String, Duration), RunnerError> {
        let tasks = self.lock_tasks();
        let entry = tasks.get(task_id).ok_or_else(|| RunnerError::UnknownTask(task_id.to_string()))?;
        let container = entry.container_id.clone().ok_or_else(|| RunnerError::NoContainer(task_id.to_string()))?;
        Ok((container, entry.stop_grace))
    }

    async fn report(&self, task_id: &str, container_id: Option<&str>, state: TaskState) {
        self.report_with_ports(task_id, container_id, state, Vec::new()).await;
    }

    async fn report_with_ports(&self, task_id: &str, container_id: Option<&str>, state: TaskState, ports: Vec<String>) {
        let message = describe(&state);
        let container_id = container_id.map(str::to_string);
        let container_name = self.lock_tasks().get(task_id).and_then(|t| t.renamed.clone());
        let status = TaskStatus { task_id: task_id.to_string(), container_id, state, message, ports, container_name };
        // A closed channel means the agent is shutting down; nothing to tell.
        let _ = self.status_tx.send(status).await;
    }

    fn register(&self, container_id: &str) -> Arc<Watcher> {
        let w = Arc::new(Watcher { nudge: Notify::new(), retired: AtomicBool::new(false) });
        self.lock_watchers().insert(container_id.to_string(), w.clone());
        w
    }

    async fn run_one(self: Arc<Self>, spec: ContainerSpec) {
        let task_id = spec.identity.task_id.clone();
        // A container for this task may already exist (assigned again before `adopt` ran, or
        // after a crash between create and the report): take it over rather than fail on the
        // name conflict.
        let existing = self.engine.list(&[(labels::NODE, &self.node_id), (labels::TASK, &task_id)]).await;
        if let Ok(Some(found)) = existing.map(|v| v.into_iter().next()) {
            if let Some(t) = self.lock_tasks().get_mut(&task_id) {
                t.container_id = Some(found.id.clone());
                t.renamed = is_renamed(&found.name, &task_id).then(|| found.name.clone());
            }
            // The manager asked for this task to run: a container never started starts now.
            self.adopt_one(task_id, found, true).await;
            return;
        }
        let (id, renamed) = match self.create(&spec).await {
            Ok(created) => created,
            Err(e) => {
                let reason = format!("creating the container failed: {e}");
                self.report(&task_id, None, TaskState::Failed { reason }).await;
                return;
            }
        };
        if let Some(t) = self.lock_tasks().get_mut(&task_id) {
            t.container_id = Some(id.clone());
            t.renamed = renamed;
        }
        // Registered before start, so the start's events already reach this watcher.
        let watcher = self.register(&id);
        self.report(&task_id, Some(&id), TaskState::Created).await;
        self.report(&task_id, Some(&id), TaskState::Starting).await;
        if let Err(e) = self.engine.start(&id).await {
            let reason = start_failure(&e);
            self.report(&task_id, Some(&id), TaskState::Failed { reason }).await;
            self.lock_watchers().remove(&id);
            return;
        }
        self.watch(&task_id, &id, watcher, Some(TaskState::Starting)).await;
    }

    /// Removes a container (forcefully; one already gone is no error), retiring its watcher
    /// first: its disappearance is no news to report.
    async fn remove_container(&self, container: &str, volumes: bool) -> EngineResult<()> {
        if let Some(w) = self.lock_watchers().remove(container) {
            w.retired.store(true, Ordering::SeqCst);
            w.nudge.notify_one();
        }
        match self.engine.remove(container, RemoveOptions { force: true, volumes }).await {
            Ok(()) | Err(EngineError::ContainerNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the task's container: its id, and its name if it is not the spec's. Agents that
    /// share one engine share its container names: when another node's container holds the
    /// name (a lost node's, stopped but not removed), this one is created as [`renamed`]. When
    /// this node's container of an older task of the same replica holds it, that container
    /// goes first (see [`is_older_task_of_replica`]). Any other container with the name (a
    /// newer task's, another service's, one that is not Shoal's) is an error as usual.
    async fn create(&self, spec: &ContainerSpec) -> EngineResult<(String, Option<String>)> {
        let name = match self.engine.create(spec).await {
            Ok(id) => return Ok((id, None)),
            Err(EngineError::NameInUse { name }) => name,
            Err(e) => return Err(e),
        };
        let holder = match self.engine.inspect(&name).await {
            Ok(holder) => holder,
            // Removed meanwhile: the name is free again.
            Err(EngineError::ContainerNotFound(_)) => return Ok((self.engine.create(spec).await?, None)),
            Err(e) => return Err(e),
        };
        let foreign = holder.labels.get(labels::NODE).is_some_and(|node| *node != self.node_id);
        if !foreign {
            if !is_older_task_of_replica(&holder.labels, &spec.identity) {
                return Err(EngineError::NameInUse { name });
            }
            tracing::info!(
                task = %spec.identity.task_id,
                holder = %holder.id,
                "the name {name} is held by this node's container of task {}, which this task replaces: removing it",
                holder.labels.get(labels::TASK).map_or("", String::as_str)
            );
            self.remove_container(&holder.id, false).await?;
            return Ok((self.engine.create(spec).await?, None));
        }
        let new_name = renamed(&name, &spec.identity.task_id);
        tracing::info!(
            task = %spec.identity.task_id,
            holder = %holder.id,
            "the name {name} is held by a container of node {}: creating {new_name}",
            holder.labels.get(labels::NODE).map_or("", String::as_str)
        );
        let spec = ContainerSpec { container_name: Some(new_name.clone()), ..spec.clone() };
        Ok((self.engine.create(&spec).await?, Some(new_name)))
    }

    /// Watches an existing container of the task. One that was created but never started (the
    /// agent died between create and start) is started only if `start`: the manager asked for
    /// the task to run. Otherwise it waits for [`TaskRunner::start_adopted`].
    async fn adopt_one(self: Arc<Self>, task_id: String, state: ContainerState, start: bool) {
        let watcher = self.register(&state.id);
        if start && state.status == ContainerStatus::Created && !self.start_created(&task_id, &state.id).await {
            self.lock_watchers().remove(&state.id);
            return;
        }
        self.watch(&task_id, &state.id, watcher, None).await;
    }

    /// Starts a created container; false (reported as the task's failure) when the engine refuses.
    async fn start_created(&self, task_id: &str, container_id: &str) -> bool {
        self.report(task_id, Some(container_id), TaskState::Starting).await;
        match self.engine.start(container_id).await {
            Ok(()) => true,
            Err(e) => {
                let reason = format!("starting the adopted container failed: {e}");
                self.report(task_id, Some(container_id), TaskState::Failed { reason }).await;
                false
            }
        }
    }

    /// Inspect → derive → report-if-changed, once now and again on every nudge, until the
    /// container is removed.
    async fn watch(&self, task_id: &str, container_id: &str, watcher: Arc<Watcher>, mut last: Option<TaskState>) {
        let mut last_ports = Vec::new();
        loop {
            if watcher.retired.load(Ordering::SeqCst) {
                return;
            }
            let mut ports = Vec::new();
            let (observed, gone) = match self.engine.inspect(container_id).await {
                Ok(state) => {
                    ports = state.ports.clone();
                    (derive(&state), false)
                }
                Err(EngineError::ContainerNotFound(_)) => {
                    if watcher.retired.load(Ordering::SeqCst) {
                        return;
                    }
                    let reason = "the container was removed outside Shoal".to_string();
                    (Some(TaskState::Failed { reason }), true)
                }
                Err(e) => {
                    // The engine is unreachable or refusing; the containers keep running, so
                    // report nothing and retry on the next nudge (the event pump nudges everyone
                    // after it reconnects).
                    tracing::warn!(task_id, container_id, error = %e, "inspect failed");
                    (None, false)
                }
            };
            if let Some(state) = observed {
                if last.as_ref() != Some(&state) || ports != last_ports {
                    self.report_with_ports(task_id, Some(container_id), state.clone(), ports.clone()).await;
                    last = Some(state);
                    last_ports = ports;
                }
            }
            if gone {
                self.lock_watchers().remove(container_id);
                return;
            }
            watcher.nudge.notified().await;
        }
    }
}

/// The task state an inspected container shows; `None` while there is nothing new to say
/// (being removed).
fn derive(c: &ContainerState) -> Option<TaskState> {
    Some(match c.status {
        ContainerStatus::Created => match &c.error {
            Some(e) => TaskState::Failed { reason: format!("the container could not start: {e}") },
            None => TaskState::Created,
        },
        ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Restarting => match c.health {
            Some(HealthStatus::Healthy) => TaskState::Healthy,
            Some(HealthStatus::Unhealthy) => TaskState::Unhealthy,
            Some(HealthStatus::Starting) | None => TaskState::Running,
        },
        ContainerStatus::Exited | ContainerStatus::Dead => {
            let code = c.exit_code.unwrap_or_default();
            if c.oom_killed {
                TaskState::Failed {
                    reason: format!(
                        "killed by the kernel OOM killer: the container ran out of memory (exit code {code})"
                    ),
                }
            } else if let Some(e) = &c.error {
                TaskState::Failed { reason: format!("the container failed: {e} (exit code {code})") }
            } else {
                TaskState::Exited { code }
            }
        }
        ContainerStatus::Removing => return None,
    })
}

/// Why a start failed. An error that already says what is wrong and what to do (a taken host
/// port) stands alone; anything else is the engine's answer, so say what was asked of it.
fn start_failure(e: &EngineError) -> String {
    match e {
        EngineError::PortInUse { .. } => e.to_string(),
        _ => format!("starting the container failed: {e}"),
    }
}

fn describe(state: &TaskState) -> String {
    match state {
        TaskState::Created => "container created".into(),
        TaskState::Starting => "starting".into(),
        TaskState::Running => "running".into(),
        TaskState::Healthy => "running, healthy".into(),
        TaskState::Unhealthy => "running, unhealthy: the healthcheck is failing".into(),
        TaskState::Exited { code: 0 } => "exited with code 0".into(),
        TaskState::Exited { code } if *code > 128 => {
            format!("exited with code {code} (killed by signal {})", code - 128)
        }
        TaskState::Exited { code } => format!("exited with code {code}"),
        TaskState::Failed { reason } => reason.clone(),
    }
}

/// Routes node events to watchers; on a broken stream, resubscribes (replaying from the last
/// event seen) with backoff and nudges every watcher so none misses a change. Ends when the
/// runner is dropped.
async fn pump_events<E: Engine>(
    shared: std::sync::Weak<Shared<E>>,
    mut events: futures_util::stream::BoxStream<'static, EngineResult<crate::engine::EngineEvent>>,
) {
    let mut last_seen = SystemTime::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        while let Some(item) = events.next().await {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match item {
                Ok(ev) => {
                    last_seen = SystemTime::now();
                    backoff = Duration::from_millis(100);
                    let w = shared.lock_watchers().get(&ev.container_id).cloned();
                    if let Some(w) = w {
                        w.nudge.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "engine event stream error");
                    break;
                }
            }
        }
        // The stream ended or failed: reconnect.
        loop {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            // Never retry faster than `backoff`; the engine may be restarting.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let since = last_seen - Duration::from_secs(1);
            match shared.engine.events(shared.event_filter(Some(since))).await {
                Ok(s) => {
                    events = s;
                    for w in shared.lock_watchers().values() {
                        w.nudge.notify_one();
                    }
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "resubscribing to engine events failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
