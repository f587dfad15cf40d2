//! A deterministic in-memory engine for unit tests and for simulating many nodes.
//!
//! Behaviour is configured per image: start latency, start failure, a timed exit, a timed health
//! sequence, OOM, and whether the process ignores its stop signal. All timing goes through tokio's
//! clock, so tests can run with `start_paused = true` and get the same interleaving every run.
//! Per container it costs one map entry and one `watch` channel, plus one timer task only while
//! a timed exit or health step is pending.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::{broadcast, watch};

use crate::engine::{
    ContainerState, ContainerStatus, Engine, EngineError, EngineEvent, EngineInfo, EngineResult, EventFilter,
    EventKind, HealthStatus, ImageReady, ImageSource, LogChunk, LogOptions, LogStream, ProgressSink, RemoveOptions,
    StopOutcome, WaitCondition, WaitOutcome,
};
use crate::labels;
use crate::spec::{ContainerSpec, ImageSpec, NetworkSpec, PullPolicy, VolumeSpec};

/// How containers of one image behave.
#[derive(Debug, Clone, Default)]
pub struct MockBehavior {
    /// How long `start` takes before the container runs.
    pub start_latency: Duration,
    /// `start` fails with this engine message (the container stays created).
    pub start_failure: Option<String>,
    /// This fraction (0 to 1) of starts fail, chosen at random per start (the container stays
    /// created), as `start_failure` does. For simulations.
    pub start_failure_rate: f64,
    /// The process exits by itself this long after starting, with this code.
    pub exit_after: Option<(Duration, i64)>,
    /// The timed exit is an OOM kill (exit code 137, `oom_killed`).
    pub oom: bool,
    /// Health transitions, each delay counted from the previous step (the first from start).
    /// Empty means the container has no healthcheck.
    pub health: Vec<(Duration, HealthStatus)>,
    /// PID 1 ignores the stop signal, so `stop` waits out the grace period and kills.
    pub ignores_stop_signal: bool,
    /// Lines the container "printed" (to stdout).
    pub logs: Vec<String>,
}

#[derive(Clone)]
pub struct MockEngine {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<EngineEvent>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    containers: HashMap<String, MockContainer>,
    names: HashMap<String, String>,
    networks: HashMap<String, String>,
    volumes: HashSet<String>,
    behaviors: HashMap<String, MockBehavior>,
    /// How containers of images without a behaviour of their own behave.
    default_behavior: MockBehavior,
    /// `None`: every image is present. `Some`: only these are, the rest must be built/pulled.
    images: Option<HashSet<String>>,
    pullable: HashSet<String>,
    /// Networks whose removal the engine refuses, with its message (say, another container
    /// still uses them).
    refused_network_removals: HashMap<String, String>,
    /// Wall-clock stand-in for event timestamps; increases by one per event.
    clock: i64,
    info: EngineInfo,
}

struct MockContainer {
    state: watch::Sender<ContainerState>,
    behavior: MockBehavior,
    /// What `ports` shows while the container runs.
    ports: Vec<String>,
    /// Bumped on every start and stop so timers of an earlier run do nothing.
    generation: u64,
}

impl Default for MockEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MockEngine {
    pub fn new() -> Self {
        Self::with_event_capacity(4096)
    }

    /// An engine whose event stream holds `capacity` events for a subscriber that lags (the
    /// runner then resubscribes and re-inspects every container). The buffer is allocated up
    /// front, so a simulation of thousands of engines keeps it small.
    pub fn with_event_capacity(capacity: usize) -> Self {
        let (events, _) = broadcast::channel(capacity.max(1));
        let info = EngineInfo {
            hostname: "mock".into(),
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
            engine_version: "mock".into(),
            ..EngineInfo::default()
        };
        let state = State { info, ..State::default() };
        MockEngine { inner: Arc::new(Inner { state: Mutex::new(state), events }) }
    }

    /// What `info` reports (default: host `mock`, 4 CPUs, 8 GiB, this machine's OS/arch).
    pub fn set_info(&self, info: EngineInfo) -> &Self {
        self.lock().info = info;
        self
    }

    /// Containers created from `image` behave like this (default: start at once, run forever).
    pub fn behave(&self, image: &str, behavior: MockBehavior) -> &Self {
        self.lock().behaviors.insert(image.to_string(), behavior);
        self
    }

    /// Containers of images without a behaviour of their own behave like this.
    pub fn behave_by_default(&self, behavior: MockBehavior) -> &Self {
        self.lock().default_behavior = behavior;
        self
    }

    /// Only the given images are present locally; others must be built or be pullable.
    pub fn only_images<I: IntoIterator<Item = S>, S: Into<String>>(&self, images: I) -> &Self {
        self.lock().images = Some(images.into_iter().map(Into::into).collect());
        self
    }

    /// `image` can be pulled from the (pretend) registry.
    pub fn pullable(&self, image: &str) -> &Self {
        self.lock().pullable.insert(image.to_string());
        self
    }

    /// `remove_network(name)` fails with this engine message (until called again with `None`).
    pub fn refuse_network_removal(&self, name: &str, message: Option<&str>) -> &Self {
        let mut st = self.lock();
        match message {
            Some(m) => st.refused_network_removals.insert(name.to_string(), m.to_string()),
            None => st.refused_network_removals.remove(name),
        };
        self
    }

    pub fn container_count(&self) -> usize {
        self.lock().containers.len()
    }

    pub fn network_exists(&self, name: &str) -> bool {
        self.lock().networks.contains_key(name)
    }

    pub fn volume_exists(&self, name: &str) -> bool {
        self.lock().volumes.contains(name)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn watch(&self, id: &str) -> EngineResult<watch::Receiver<ContainerState>> {
        let st = self.lock();
        let c = st
            .containers
            .get(id)
            .or_else(|| st.names.get(id).and_then(|i| st.containers.get(i)))
            .ok_or_else(|| EngineError::ContainerNotFound(id.to_string()))?;
        Ok(c.state.subscribe())
    }

    fn resolve(st: &State, id: &str) -> EngineResult<String> {
        if st.containers.contains_key(id) {
            return Ok(id.to_string());
        }
        st.names.get(id).cloned().ok_or_else(|| EngineError::ContainerNotFound(id.to_string()))
    }

    /// Applies `f` to the container if its run is still `generation`, then emits `event`.
    fn transition(
        &self,
        id: &str,
        generation: Option<u64>,
        event: Option<EventKind>,
        f: impl FnOnce(&mut ContainerState),
    ) -> bool {
        let mut st = self.lock();
        st.clock += 1;
        let clock = st.clock;
        let Some(c) = st.containers.get_mut(id) else {
            return false;
        };
        if generation.is_some_and(|g| g != c.generation) {
            return false;
        }
        c.state.send_modify(f);
        let labels = c.state.borrow().labels.clone();
        if let Some(kind) = event {
            // No receivers is fine: nobody is watching.
            let _ =
                self.inner.events.send(EngineEvent { container_id: id.to_string(), kind, labels, time_nanos: clock });
        }
        true
    }

    fn exit(&self, id: &str, generation: Option<u64>, code: i64, oom: bool) -> bool {
        if oom {
            self.transition(id, generation, Some(EventKind::Oom), |_| {});
        }
        self.transition(id, generation, Some(EventKind::Die { exit_code: Some(code) }), |s| {
            s.status = ContainerStatus::Exited;
            s.exit_code = Some(code);
            s.oom_killed = oom;
            s.ports.clear();
        })
    }

    /// Plays the behaviour's timed health steps and exit for one run of the container.
    fn spawn_timeline(&self, id: String, generation: u64, behavior: &MockBehavior) {
        let mut steps: Vec<(Duration, Option<HealthStatus>)> = Vec::new();
        let mut at = Duration::ZERO;
        for (delay, h) in &behavior.health {
            at += *delay;
            steps.push((at, Some(*h)));
        }
        if let Some((after, _)) = behavior.exit_after {
            steps.push((after, None));
        }
        if steps.is_empty() {
            return;
        }
        steps.sort_by_key(|(t, _)| *t);
        let exit = behavior.exit_after.map(|(_, code)| code);
        let oom = behavior.oom;
        let engine = self.clone();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            for (at, step) in steps {
                tokio::time::sleep_until(started + at).await;
                let alive = match step {
                    Some(h) => {
                        engine.transition(&id, Some(generation), Some(EventKind::Health(h)), |s| s.health = Some(h))
                    }
                    None => engine.exit(&id, Some(generation), exit.unwrap_or(0), oom),
                };
                if !alive {
                    return;
                }
            }
        });
    }
}

/// A number in [0, 1), different on every call (std's randomly keyed hasher over a counter).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn matches_labels(labels: &BTreeMap<String, String>, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
}

impl Engine for MockEngine {
    async fn ensure_network(&self, spec: &NetworkSpec) -> EngineResult<String> {
        let mut st = self.lock();
        if let Some(id) = st.networks.get(&spec.name) {
            return Ok(id.clone());
        }
        if spec.external {
            return Err(EngineError::ExternalNetworkMissing { name: spec.name.clone() });
        }
        st.next_id += 1;
        let id = format!("net{}", st.next_id);
        st.networks.insert(spec.name.clone(), id.clone());
        Ok(id)
    }

    async fn remove_network(&self, name: &str) -> EngineResult<()> {
        let mut st = self.lock();
        if let Some(message) = st.refused_network_removals.get(name) {
            return Err(EngineError::api(format!("removing network {name}"), message.clone()));
        }
        st.networks.remove(name);
        Ok(())
    }

    async fn ensure_volume(&self, spec: &VolumeSpec) -> EngineResult<String> {
        let mut st = self.lock();
        if !st.volumes.contains(&spec.name) {
            if spec.external {
                return Err(EngineError::ExternalVolumeMissing { name: spec.name.clone() });
            }
            st.volumes.insert(spec.name.clone());
        }
        Ok(spec.name.clone())
    }

    async fn remove_volume(&self, name: &str) -> EngineResult<()> {
        self.lock().volumes.remove(name);
        Ok(())
    }

    async fn ensure_image(&self, spec: &ImageSpec, progress: Option<ProgressSink>) -> EngineResult<ImageReady> {
        let reference = spec.reference();
        let mut st = self.lock();
        let present = st.images.as_ref().is_none_or(|i| i.contains(&reference));
        let how = match (spec.pull_policy, spec.build.is_some(), present) {
            (PullPolicy::Build, false, _) => return Err(EngineError::NothingToBuild { image: reference }),
            (PullPolicy::Build, true, _) | (PullPolicy::Missing, true, false) => ImageSource::Built,
            (PullPolicy::Missing | PullPolicy::Never, _, true) => ImageSource::Present,
            (PullPolicy::Never, _, false) => return Err(EngineError::ImageMissingNoPull { image: reference }),
            (PullPolicy::Always, _, _) | (PullPolicy::Missing, false, false) => {
                if !st.pullable.contains(&reference) {
                    return Err(EngineError::ImageUnavailable {
                        image: reference,
                        reason: "the mock registry does not have it".into(),
                    });
                }
                ImageSource::Pulled
            }
        };
        if let Some(images) = st.images.as_mut() {
            images.insert(reference.clone());
        }
        if let Some(sink) = progress {
            let _ = sink.send(format!("{reference}: {how:?}"));
        }
        Ok(ImageReady { reference, how })
    }

    async fn create(&self, spec: &ContainerSpec) -> EngineResult<String> {
        let name = labels::container_name(spec);
        let mut st = self.lock();
        if st.images.as_ref().is_some_and(|i| !i.contains(&spec.image)) {
            return Err(EngineError::ImageUnavailable {
                image: spec.image.clone(),
                reason: "it was not built or pulled before create".into(),
            });
        }
        if st.names.contains_key(&name) {
            return Err(EngineError::NameInUse { name });
        }
        for n in &spec.networks {
            if !st.networks.contains_key(&n.name) {
                return Err(EngineError::api(
                    format!("creating container {name}"),
                    format!("network {} not found", n.name),
                ));
            }
        }
        st.next_id += 1;
        let id = format!("{:064x}", st.next_id);
        let behavior = st.behaviors.get(&spec.image).unwrap_or(&st.default_behavior).clone();
        let state = ContainerState {
            id: id.clone(),
            name: name.clone(),
            image: spec.image.clone(),
            labels: labels::container_labels(spec).into_iter().collect(),
            status: ContainerStatus::Created,
            exit_code: None,
            health: None,
            oom_killed: false,
            error: None,
            ports: Vec::new(),
        };
        // Published ports bind the range's first port; unpublished ones an "ephemeral" port.
        let mut ports: Vec<String> = spec
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let host = p.published.map_or(32768 + (st.next_id as usize * 8 + i) % 28000, |r| r.start as usize);
                let ip = p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into());
                format!("{ip}:{host}->{}/{}", p.target, p.protocol.as_str())
            })
            .collect();
        ports.sort();
        let (tx, _) = watch::channel(state);
        st.containers.insert(id.clone(), MockContainer { state: tx, behavior, ports, generation: 0 });
        st.names.insert(name, id.clone());
        Ok(id)
    }

    async fn start(&self, id: &str) -> EngineResult<()> {
        let (id, behavior, ports) = {
            let st = self.lock();
            let id = Self::resolve(&st, id)?;
            let c = &st.containers[&id];
            (id.clone(), c.behavior.clone(), c.ports.clone())
        };
        if !behavior.start_latency.is_zero() {
            tokio::time::sleep(behavior.start_latency).await;
        }
        let message = behavior.start_failure.clone().or_else(|| {
            (behavior.start_failure_rate > 0.0 && random_unit() < behavior.start_failure_rate)
                .then(|| "simulated start failure".to_string())
        });
        if let Some(message) = message {
            self.transition(&id, None, None, |s| s.error = Some(message.clone()));
            return Err(EngineError::api(format!("starting container {id}"), message));
        }
        let generation = {
            let mut st = self.lock();
            let c = st.containers.get_mut(&id).ok_or_else(|| EngineError::ContainerNotFound(id.clone()))?;
            if c.state.borrow().is_running() {
                return Ok(());
            }
            c.generation += 1;
            c.generation
        };
        let has_health = !behavior.health.is_empty();
        self.transition(&id, Some(generation), Some(EventKind::Start), |s| {
            s.status = ContainerStatus::Running;
            s.exit_code = None;
            s.oom_killed = false;
            s.error = None;
            s.health = has_health.then_some(HealthStatus::Starting);
            s.ports = ports;
        });
        self.spawn_timeline(id, generation, &behavior);
        Ok(())
    }

    async fn wait(&self, id: &str, until: WaitCondition) -> EngineResult<WaitOutcome> {
        let mut rx = self.watch(id)?;
        let settled = |s: &ContainerState| {
            !s.is_running() && s.status != ContainerStatus::Created
                || until == WaitCondition::Health
                    && s.is_running()
                    && matches!(s.health, Some(HealthStatus::Healthy | HealthStatus::Unhealthy) | None)
        };
        let state = rx
            .wait_for(settled)
            .await
            // The sender is dropped when the container is removed.
            .map_err(|_| EngineError::ContainerNotFound(id.to_string()))?
            .clone();
        Ok(match (state.status, state.health) {
            (ContainerStatus::Running, Some(HealthStatus::Healthy)) => WaitOutcome::Healthy,
            (ContainerStatus::Running, Some(HealthStatus::Unhealthy)) => WaitOutcome::Unhealthy,
            (ContainerStatus::Running, _) => return Err(EngineError::NoHealthcheck(id.into())),
            _ => WaitOutcome::Exited { code: state.exit_code.unwrap_or_default(), oom_killed: state.oom_killed },
        })
    }

    async fn stop(&self, id: &str, grace: Duration) -> EngineResult<StopOutcome> {
        let (id, behavior, running) = {
            let st = self.lock();
            let id = Self::resolve(&st, id)?;
            let c = &st.containers[&id];
            let running = c.state.borrow().is_running();
            (id, c.behavior.clone(), running)
        };
        if !running {
            return Ok(StopOutcome::AlreadyStopped);
        }
        let generation = self.lock().containers.get(&id).map(|c| c.generation);
        if !behavior.ignores_stop_signal {
            // 128 + SIGTERM, what a process killed by its stop signal reports.
            self.exit(&id, generation, 143, false);
            return Ok(StopOutcome::Exited);
        }
        tokio::time::sleep(grace).await;
        if self.exit(&id, generation, 137, false) {
            Ok(StopOutcome::Killed)
        } else {
            // It exited by itself during the grace period.
            Ok(StopOutcome::Exited)
        }
    }

    async fn remove(&self, id: &str, opts: RemoveOptions) -> EngineResult<()> {
        let mut st = self.lock();
        let Ok(id) = Self::resolve(&st, id) else {
            return Ok(());
        };
        if st.containers[&id].state.borrow().is_running() && !opts.force {
            return Err(EngineError::api(
                format!("removing container {id}"),
                "You cannot remove a running container. Stop the container before attempting removal or force remove",
            ));
        }
        if let Some(c) = st.containers.remove(&id) {
            let state = c.state.borrow().clone();
            st.names.remove(&state.name);
            st.clock += 1;
            let _ = self.inner.events.send(EngineEvent {
                container_id: id,
                kind: EventKind::Destroy,
                labels: state.labels,
                time_nanos: st.clock,
            });
        }
        Ok(())
    }

    /// The behaviour's lines (the last `tail` of them); with `timestamps`, each prefixed like
    /// Docker's (`<RFC 3339 time> `); with `follow`, the stream stays open until the container
    /// stops or is removed.
    fn logs(&self, id: &str, opts: LogOptions) -> BoxStream<'static, EngineResult<LogChunk>> {
        let found = {
            let st = self.lock();
            Self::resolve(&st, id).map(|id| {
                let c = &st.containers[&id];
                (c.behavior.logs.clone(), c.state.subscribe())
            })
        };
        let (lines, mut state) = match found {
            Ok(found) => found,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let skip = opts.tail.map_or(0, |n| lines.len().saturating_sub(n as usize));
        let chunks: Vec<EngineResult<LogChunk>> = lines
            .into_iter()
            .enumerate()
            .skip(skip)
            .map(|(i, l)| {
                let text = if opts.timestamps {
                    format!("2024-01-01T00:00:{:02}.000000000Z {l}\n", i % 60)
                } else {
                    format!("{l}\n")
                };
                Ok(LogChunk { stream: LogStream::Stdout, data: Bytes::from(text) })
            })
            .collect();
        let printed = stream::iter(chunks);
        if !opts.follow {
            return printed.boxed();
        }
        let until_stopped = stream::once(async move {
            // Ends when the container stops, or when it is removed (the sender is dropped).
            let _ = state.wait_for(|s| !s.is_running() && s.status != ContainerStatus::Created).await;
        })
        .filter_map(|()| std::future::ready(None));
        printed.chain(until_stopped).boxed()
    }

    async fn events(&self, filter: EventFilter) -> EngineResult<BoxStream<'static, EngineResult<EngineEvent>>> {
        // Subscribing is synchronous here, so nothing can slip between call and subscription;
        // `since` needs no replay.
        let rx = self.inner.events.subscribe();
        let stream = stream::unfold(rx, |mut rx| async move {
            let item = match rx.recv().await {
                Ok(ev) => Ok(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Err(EngineError::api("reading mock events", format!("subscriber lagged; {n} events were dropped")))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((item, rx))
        })
        .filter(move |item| {
            let keep = match item {
                Err(_) => true,
                Ok(ev) => {
                    filter.container.as_ref().is_none_or(|c| *c == ev.container_id)
                        && filter.labels.iter().all(|(k, v)| ev.labels.get(k) == Some(v))
                }
            };
            std::future::ready(keep)
        });
        Ok(stream.boxed())
    }

    async fn inspect(&self, id: &str) -> EngineResult<ContainerState> {
        let st = self.lock();
        let id = Self::resolve(&st, id)?;
        let state = st.containers[&id].state.borrow().clone();
        Ok(state)
    }

    async fn info(&self) -> EngineResult<EngineInfo> {
        Ok(self.lock().info.clone())
    }

    async fn list(&self, labels: &[(&str, &str)]) -> EngineResult<Vec<ContainerState>> {
        let st = self.lock();
        let mut out: Vec<ContainerState> = st
            .containers
            .values()
            .map(|c| c.state.borrow().clone())
            .filter(|s| matches_labels(&s.labels, labels))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TaskIdentity;

    fn spec(image: &str, n: u32) -> ContainerSpec {
        ContainerSpec::new(
            TaskIdentity {
                project: "p".into(),
                service: "s".into(),
                container_number: n,
                node_id: "node".into(),
                task_id: format!("t{n}"),
                ..Default::default()
            },
            image,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn health_sequence_plays_in_order_and_wait_sees_it() {
        let engine = MockEngine::new();
        engine.behave(
            "web",
            MockBehavior {
                health: vec![
                    (Duration::from_secs(1), HealthStatus::Healthy),
                    (Duration::from_secs(5), HealthStatus::Unhealthy),
                ],
                ..Default::default()
            },
        );
        let id = engine.create(&spec("web", 1)).await.unwrap();
        engine.start(&id).await.unwrap();
        assert_eq!(engine.inspect(&id).await.unwrap().health, Some(HealthStatus::Starting));
        let t0 = tokio::time::Instant::now();
        assert_eq!(engine.wait(&id, WaitCondition::Health).await.unwrap(), WaitOutcome::Healthy);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(engine.wait(&id, WaitCondition::Health).await.unwrap(), WaitOutcome::Unhealthy);
    }

    #[tokio::test(start_paused = true)]
    async fn timed_exit_and_stop_that_waits_out_the_grace_period() {
        let engine = MockEngine::new();
        engine.behave("job", MockBehavior { exit_after: Some((Duration::from_secs(2), 3)), ..Default::default() });
        engine.behave("stubborn", MockBehavior { ignores_stop_signal: true, ..Default::default() });
        let job = engine.create(&spec("job", 1)).await.unwrap();
        engine.start(&job).await.unwrap();
        assert_eq!(
            engine.wait(&job, WaitCondition::Exit).await.unwrap(),
            WaitOutcome::Exited { code: 3, oom_killed: false }
        );

        let s = engine.create(&spec("stubborn", 2)).await.unwrap();
        engine.start(&s).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let outcome = engine.stop(&s, Duration::from_secs(7)).await.unwrap();
        assert_eq!(outcome, StopOutcome::Killed);
        assert_eq!(t0.elapsed(), Duration::from_secs(7));
        assert_eq!(engine.inspect(&s).await.unwrap().exit_code, Some(137));
    }

    #[tokio::test]
    async fn a_default_behaviour_with_a_failure_rate_fails_that_share_of_starts() {
        let engine = MockEngine::with_event_capacity(8);
        engine.behave_by_default(MockBehavior { start_failure_rate: 1.0, ..Default::default() });
        engine.behave("fine", MockBehavior::default());
        let failing = engine.create(&spec("any", 1)).await.unwrap();
        assert!(engine.start(&failing).await.is_err());
        assert_eq!(engine.inspect(&failing).await.unwrap().status, ContainerStatus::Created);
        let fine = engine.create(&spec("fine", 2)).await.unwrap();
        engine.start(&fine).await.unwrap();

        engine.behave_by_default(MockBehavior { start_failure_rate: 0.5, ..Default::default() });
        let mut failed = 0;
        for n in 10..410 {
            let id = engine.create(&spec("any", n)).await.unwrap();
            failed += usize::from(engine.start(&id).await.is_err());
        }
        // 400 draws at one half: far outside 120..280 only by a broken generator.
        assert!((120..280).contains(&failed), "{failed} of 400 failed");
    }

    #[tokio::test]
    async fn missing_image_and_name_conflicts_are_errors() {
        let engine = MockEngine::new();
        engine.only_images(["present"]);
        let err = engine.create(&spec("absent", 1)).await.unwrap_err();
        assert!(matches!(err, EngineError::ImageUnavailable { .. }));
        engine.create(&spec("present", 1)).await.unwrap();
        let err = engine.create(&spec("present", 1)).await.unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
        let img = ImageSpec { image: Some("absent".into()), ..Default::default() };
        let err = engine.ensure_image(&img, None).await.unwrap_err();
        assert!(err.to_string().starts_with("image absent not found locally and could not be pulled"));
    }

    #[tokio::test]
    async fn list_filters_by_label_and_remove_emits_destroy() {
        let engine = MockEngine::new();
        let a = engine.create(&spec("x", 1)).await.unwrap();
        let mut other = spec("x", 2);
        other.identity.node_id = "elsewhere".into();
        engine.create(&other).await.unwrap();
        let mine = engine.list(&[(labels::NODE, "node")]).await.unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].id, a);
        let mut events = engine.events(EventFilter::default()).await.unwrap();
        engine.remove(&a, RemoveOptions::default()).await.unwrap();
        let ev = events.next().await.unwrap().unwrap();
        assert_eq!(ev.kind, EventKind::Destroy);
        assert_eq!(engine.container_count(), 1);
    }
}
