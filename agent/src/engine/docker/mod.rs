//! The Docker engine driver, on bollard. Speaks only API 1.41 features (Debian's Docker 20.10).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bollard::errors::Error as BollardError;
use bollard::models::{NetworkConnectRequest, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectNetworkOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions,
    LogsOptions, RemoveContainerOptions, RemoveVolumeOptions, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::stream::{BoxStream, StreamExt};

use crate::engine::{
    normalize_arch, ContainerState, Engine, EngineError, EngineEvent, EngineInfo, EngineResult, EventFilter,
    ImageReady, LogChunk, LogOptions, LogStream, ProgressSink, RemoveOptions, StopOutcome, WaitCondition, WaitOutcome,
};
use crate::labels;
use crate::spec::{ContainerSpec, ImageSpec, NetworkSpec, VolumeSpec};

mod context;
pub mod convert;
mod events;
mod image;

/// Pauses between the attempts of a create or start the engine refused because a network name
/// matched two networks (see `DockerEngine::settle_network`).
const AMBIGUITY_RETRIES: [Duration; 3] =
    [Duration::from_millis(50), Duration::from_millis(200), Duration::from_millis(500)];

/// Where Docker listens when `DOCKER_HOST` is unset.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// A connection to one Docker engine. Cheap to clone (the client is shared).
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    host: String,
}

impl DockerEngine {
    /// Connects to `DOCKER_HOST`, or the default socket.
    pub async fn connect() -> EngineResult<Self> {
        let host =
            std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| DEFAULT_HOST.to_string());
        Self::connect_to(&host).await
    }

    /// Connects and negotiates the API version, so an unreachable engine is reported here, once,
    /// rather than as an obscure failure of the first real request.
    pub async fn connect_to(host: &str) -> EngineResult<Self> {
        let unreachable = |cause: String| EngineError::Unreachable { host: host.to_string(), cause };
        let docker = Docker::connect_with_host(host).map_err(|e| unreachable(error_chain(&e)))?;
        // bollard defaults to a newer API than Docker 20.10 speaks; negotiation downgrades it.
        let docker = docker.negotiate_version().await.map_err(|e| unreachable(error_chain(&e)))?;
        Ok(DockerEngine { docker, host: host.to_string() })
    }

    /// The underlying client, for callers (and tests) that need an API this trait lacks.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Turns a bollard error into ours; transport failures become `Unreachable`.
    fn err(&self, context: impl Into<String>, e: BollardError) -> EngineError {
        match e {
            BollardError::DockerResponseServerError { status_code, message } => {
                EngineError::Api { context: context.into(), status: Some(status_code), message }
            }
            BollardError::SocketNotFoundError(_)
            | BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::RequestTimeoutError => {
                EngineError::Unreachable { host: self.host.clone(), cause: error_chain(&e) }
            }
            other => EngineError::api(context, error_chain(&other)),
        }
    }

    /// Like `err`, but a 404 means the container is gone.
    fn container_err(&self, id: &str, context: &str, e: BollardError) -> EngineError {
        match status(&e) {
            Some(404) => EngineError::ContainerNotFound(id.to_string()),
            _ => self.err(format!("{context} container {id}"), e),
        }
    }

    async fn wait_not_running(&self, id: &str) -> EngineResult<i64> {
        let opts = WaitContainerOptions { condition: "not-running".into() };
        let mut stream = self.docker.wait_container(id, Some(opts));
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.container_err(id, "waiting for", e)),
            None => Err(EngineError::api(
                format!("waiting for container {id}"),
                "the engine closed the wait request without a result",
            )),
        }
    }

    /// The one network named `name` to use. Engines before API 1.44 accept several networks of
    /// one name, so agents sharing an engine (several nodes on one machine) can each create a
    /// stack's network at once. While two exist, the engine refuses to resolve the name (so no
    /// container can join either by name); every agent settles on the same one — one a container
    /// already uses (joined while it was the only one), else the oldest, then the lowest id — and
    /// the others are removed (containers created but not started join by name when they start).
    /// `None` when there is none.
    async fn settle_network(&self, name: &str) -> EngineResult<Option<String>> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let found = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: Some(filters) }))
            .await
            .map_err(|e| self.err(format!("listing networks named {name}"), e))?;
        // The name filter matches substrings.
        let found: Vec<(String, String)> = found
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((created_key(n.created.as_deref().unwrap_or_default()), n.id?)))
            .collect();
        if found.len() <= 1 {
            return Ok(found.into_iter().next().map(|(_, id)| id));
        }
        let mut same = Vec::new();
        for (created, id) in found {
            // Only running containers hold endpoints; listing does not show them, inspecting does.
            let unused = match self.docker.inspect_network(&id, None::<InspectNetworkOptions>).await {
                Ok(n) => n.containers.is_none_or(|c| c.is_empty()),
                Err(e) if status(&e) == Some(404) => continue,
                Err(_) => true,
            };
            same.push((unused, created, id));
        }
        same.sort();
        let Some((_, _, keep)) = same.first().cloned() else { return Ok(None) };
        for (_, _, extra) in same.iter().skip(1) {
            match self.docker.remove_network(extra).await {
                Ok(()) => tracing::info!(network = name, id = %extra, "removed a duplicate network"),
                Err(e) => tracing::warn!(network = name, id = %extra, error = %e, "a duplicate network stays"),
            }
        }
        Ok(Some(keep))
    }

    /// Retries a request the engine refused because a network name was ambiguous, settling the
    /// container's networks first (another agent's duplicate may also still be on its way out).
    async fn settle_networks_of(&self, networks: &[String]) -> EngineResult<()> {
        for network in networks {
            self.settle_network(network).await?;
        }
        Ok(())
    }

    async fn kill(&self, id: &str, signal: &str) -> EngineResult<bool> {
        let opts = KillContainerOptions { signal: signal.to_string() };
        match self.docker.kill_container(id, Some(opts)).await {
            Ok(()) => Ok(true),
            // 409: not running (any more); the stop has nothing left to do.
            Err(e) if status(&e) == Some(409) => Ok(false),
            Err(e) => Err(self.container_err(id, &format!("sending {signal} to"), e)),
        }
    }
}

/// A Docker timestamp that sorts as text: the fraction of a second padded to nanoseconds (Go
/// trims its trailing zeros). Timestamps of one engine share its time zone.
fn created_key(text: &str) -> String {
    let Some(t) = text.find('T') else { return text.to_string() };
    let (date, rest) = text.split_at(t);
    let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    let (whole, fraction) = time.split_once('.').unwrap_or((time, ""));
    format!("{date}{whole}.{fraction:0<9}{zone}")
}

/// Whether the engine refused because a network name matches several networks.
fn ambiguous_network(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { message, .. } if message.contains("ambiguous"))
}

fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The error and its sources on one line: hyper's top-level messages alone ("client error
/// (Connect)") do not say what went wrong.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl Engine for DockerEngine {
    async fn ensure_network(&self, spec: &NetworkSpec) -> EngineResult<String> {
        let name = spec.name.as_str();
        match self.docker.inspect_network(name, None::<InspectNetworkOptions>).await {
            Ok(n) => return Ok(n.id.unwrap_or_else(|| name.to_string())),
            Err(e) if status(&e) == Some(404) => {
                if spec.external {
                    return Err(EngineError::ExternalNetworkMissing { name: name.into() });
                }
            }
            Err(e) if ambiguous_network(&e) => {
                if let Some(id) = self.settle_network(name).await? {
                    return Ok(id);
                }
            }
            Err(e) => return Err(self.err(format!("inspecting network {name}"), e)),
        }
        let ipam = (!spec.ipam.is_empty()).then(|| bollard::models::Ipam {
            config: Some(
                spec.ipam
                    .iter()
                    .map(|p| bollard::models::IpamConfig {
                        subnet: Some(p.subnet.clone()),
                        gateway: p.gateway.clone(),
                        ip_range: p.ip_range.clone(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: spec.driver.clone(),
            internal: spec.internal.then_some(true),
            attachable: spec.attachable.then_some(true),
            enable_ipv6: spec.enable_ipv6.then_some(true),
            ipam,
            options: (!spec.driver_opts.is_empty()).then(|| spec.driver_opts.clone().into_iter().collect()),
            labels: Some(labels::network_labels(spec)),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            // Another agent on this engine may have created one of the same name meanwhile.
            Ok(r) => Ok(self.settle_network(name).await?.unwrap_or(r.id)),
            // Another agent task created it meanwhile: that is the idempotent outcome.
            Err(e) if status(&e) == Some(409) => self
                .docker
                .inspect_network(name, None::<InspectNetworkOptions>)
                .await
                .map(|n| n.id.unwrap_or_else(|| name.to_string()))
                .map_err(|e| self.err(format!("inspecting network {name}"), e)),
            Err(e) => Err(self.err(format!("creating network {name}"), e)),
        }
    }

    async fn remove_network(&self, name: &str) -> EngineResult<()> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.err(format!("removing network {name}"), e)),
        }
    }

    async fn ensure_volume(&self, spec: &VolumeSpec) -> EngineResult<String> {
        let name = spec.name.as_str();
        match self.docker.inspect_volume(name).await {
            Ok(v) => return Ok(v.name),
            Err(e) if status(&e) == Some(404) => {
                if spec.external {
                    return Err(EngineError::ExternalVolumeMissing { name: name.into() });
                }
            }
            Err(e) => return Err(self.err(format!("inspecting volume {name}"), e)),
        }
        // Volume create is idempotent in Docker: an existing volume of that name is returned.
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: spec.driver.clone(),
            driver_opts: (!spec.driver_opts.is_empty()).then(|| spec.driver_opts.clone().into_iter().collect()),
            labels: Some(labels::volume_labels(spec)),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(|v| v.name)
            .map_err(|e| self.err(format!("creating volume {name}"), e))
    }

    async fn remove_volume(&self, name: &str) -> EngineResult<()> {
        match self.docker.remove_volume(name, None::<RemoveVolumeOptions>).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.err(format!("removing volume {name}"), e)),
        }
    }

    async fn ensure_image(&self, spec: &ImageSpec, progress: Option<ProgressSink>) -> EngineResult<ImageReady> {
        image::ensure(self, spec, progress).await
    }

    async fn create(&self, spec: &ContainerSpec) -> EngineResult<String> {
        let plan = convert::create_plan(spec)?;
        let options = CreateContainerOptions {
            name: Some(plan.name.clone()),
            platform: plan.platform.clone().unwrap_or_default(),
        };
        let mut attempt = self.docker.create_container(Some(options.clone()), plan.body.clone()).await;
        for pause in AMBIGUITY_RETRIES {
            if !attempt.as_ref().is_err_and(ambiguous_network) {
                break;
            }
            // Another agent on this engine created a network of the same name just now: settle on
            // one (as `ensure_network` does), then try again.
            let first = plan.body.host_config.as_ref().and_then(|h| h.network_mode.clone());
            let networks: Vec<String> =
                first.into_iter().chain(plan.extra_networks.iter().map(|(n, _)| n.clone())).collect();
            self.settle_networks_of(&networks).await?;
            tokio::time::sleep(pause).await;
            attempt = self.docker.create_container(Some(options.clone()), plan.body.clone()).await;
        }
        let created = match attempt {
            Ok(c) => c,
            Err(e) if status(&e) == Some(404) => {
                return Err(EngineError::ImageUnavailable {
                    image: spec.image.clone(),
                    reason: format!("it was not built or pulled before create ({})", error_chain(&e)),
                })
            }
            Err(e) if status(&e) == Some(409) => return Err(EngineError::NameInUse { name: plan.name.clone() }),
            Err(e) => return Err(self.err(format!("creating container {}", plan.name), e)),
        };
        for (network, endpoint) in plan.extra_networks {
            let request = NetworkConnectRequest { container: created.id.clone(), endpoint_config: Some(endpoint) };
            if let Err(e) = self.docker.connect_network(&network, request).await {
                let err = self.err(format!("connecting container {} to network {network}", plan.name), e);
                // A half-wired container would be adopted later as if it were fine.
                let _ = self.remove(&created.id, RemoveOptions { force: true, volumes: true }).await;
                return Err(err);
            }
        }
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> EngineResult<()> {
        let mut attempt = self.docker.start_container(id, None::<StartContainerOptions>).await;
        for pause in AMBIGUITY_RETRIES {
            if !attempt.as_ref().is_err_and(ambiguous_network) {
                break;
            }
            // A network of the container's was created twice by agents sharing this engine, and
            // the duplicate not removed yet: settle on one (see `settle_network`), then retry.
            let inspected = self.docker.inspect_container(id, None).await;
            let networks = inspected.ok().and_then(|c| c.network_settings).and_then(|n| n.networks).unwrap_or_default();
            self.settle_networks_of(&networks.into_keys().collect::<Vec<_>>()).await?;
            tokio::time::sleep(pause).await;
            attempt = self.docker.start_container(id, None::<StartContainerOptions>).await;
        }
        attempt.map_err(|e| match &e {
            // The engine's own text names the endpoint and its id, not what to do about it.
            BollardError::DockerResponseServerError { message, .. } => {
                convert::port_in_use(message).unwrap_or_else(|| self.container_err(id, "starting", e))
            }
            _ => self.container_err(id, "starting", e),
        })
    }

    async fn wait(&self, id: &str, until: WaitCondition) -> EngineResult<WaitOutcome> {
        match until {
            WaitCondition::Exit => {
                let code = self.wait_not_running(id).await?;
                let state = self.inspect(id).await?;
                Ok(WaitOutcome::Exited { code, oom_killed: state.oom_killed })
            }
            WaitCondition::Health => events::wait_for_health(self, id).await,
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> EngineResult<StopOutcome> {
        let inspect =
            self.docker.inspect_container(id, None).await.map_err(|e| self.container_err(id, "inspecting", e))?;
        let running = inspect.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            return Ok(StopOutcome::AlreadyStopped);
        }
        // Sending the container's own stop signal (not a hard-coded SIGTERM) also tells the
        // engine this exit is intended, so a restart policy does not bring it back.
        let signal = inspect
            .config
            .and_then(|c| c.stop_signal)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "SIGTERM".to_string());
        if !self.kill(id, &signal).await? {
            return Ok(StopOutcome::AlreadyStopped);
        }
        if tokio::time::timeout(grace, self.wait_not_running(id)).await.is_ok() {
            return Ok(StopOutcome::Exited);
        }
        if !self.kill(id, "SIGKILL").await? {
            return Ok(StopOutcome::Exited);
        }
        self.wait_not_running(id).await?;
        Ok(StopOutcome::Killed)
    }

    async fn remove(&self, id: &str, opts: RemoveOptions) -> EngineResult<()> {
        let options = RemoveContainerOptions { force: opts.force, v: opts.volumes, link: false };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            // 409 "removal already in progress": someone else is doing our job.
            Err(e) if status(&e) == Some(409) && e.to_string().contains("in progress") => Ok(()),
            Err(e) => Err(self.container_err(id, "removing", e)),
        }
    }

    fn logs(&self, id: &str, opts: LogOptions) -> BoxStream<'static, EngineResult<LogChunk>> {
        let options = LogsOptions {
            follow: opts.follow,
            stdout: true,
            stderr: true,
            since: 0,
            until: 0,
            timestamps: opts.timestamps,
            tail: opts.tail.map(|n| n.to_string()).unwrap_or_else(|| "all".into()),
        };
        let this = self.clone();
        let id = id.to_string();
        self.docker
            .logs(&id, Some(options))
            .map(move |item| match item {
                Ok(out) => {
                    use bollard::container::LogOutput;
                    Ok(match out {
                        LogOutput::StdOut { message } | LogOutput::StdIn { message } => {
                            LogChunk { stream: LogStream::Stdout, data: message }
                        }
                        LogOutput::StdErr { message } => LogChunk { stream: LogStream::Stderr, data: message },
                        LogOutput::Console { message } => LogChunk { stream: LogStream::Console, data: message },
                    })
                }
                Err(e) => Err(this.container_err(&id, "reading logs of", e)),
            })
            .boxed()
    }

    async fn events(&self, filter: EventFilter) -> EngineResult<BoxStream<'static, EngineResult<EngineEvent>>> {
        Ok(events::subscribe(self, filter))
    }

    async fn inspect(&self, id: &str) -> EngineResult<ContainerState> {
        self.docker
            .inspect_container(id, None)
            .await
            .map(convert::container_state)
            .map_err(|e| self.container_err(id, "inspecting", e))
    }

    async fn list(&self, labels: &[(&str, &str)]) -> EngineResult<Vec<ContainerState>> {
        let filters = HashMap::from([("label".to_string(), labels.iter().map(|(k, v)| format!("{k}={v}")).collect())]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let summaries =
            self.docker.list_containers(Some(options)).await.map_err(|e| self.err("listing containers", e))?;
        // The list API has no exit code or health on API 1.41, so inspect each one.
        let mut out = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            match self.inspect(&id).await {
                Ok(state) => out.push(state),
                // Removed between list and inspect.
                Err(EngineError::ContainerNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn info(&self) -> EngineResult<EngineInfo> {
        let info = self.docker.info().await.map_err(|e| self.err("reading the engine's system info", e))?;
        let fallback = EngineInfo::default();
        Ok(EngineInfo {
            hostname: info.name.filter(|n| !n.is_empty()).unwrap_or(fallback.hostname),
            nano_cpus: info.ncpu.and_then(|n| u64::try_from(n).ok()).map_or(fallback.nano_cpus, |n| n * 1_000_000_000),
            memory_bytes: info.mem_total.and_then(|m| u64::try_from(m).ok()).unwrap_or(fallback.memory_bytes),
            os: info.os_type.filter(|o| !o.is_empty()).unwrap_or(fallback.os),
            arch: info.architecture.filter(|a| !a.is_empty()).map_or(fallback.arch, |a| normalize_arch(&a)),
            engine_version: info.server_version.unwrap_or_default(),
        })
    }
}

/// Seconds since the epoch with nanoseconds, the format the events API takes for `since`.
fn engine_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::created_key;

    #[test]
    fn docker_timestamps_sort_as_text_once_padded() {
        assert_eq!(created_key("2024-05-01T10:00:01.5Z"), "2024-05-01T10:00:01.500000000Z");
        assert_eq!(created_key("2024-05-01T10:00:01Z"), "2024-05-01T10:00:01.000000000Z");
        assert_eq!(created_key("2024-05-01T10:00:01.25+02:00"), "2024-05-01T10:00:01.250000000+02:00");
        let mut keys = ["2024-05-01T10:00:01.5Z", "2024-05-01T10:00:01.25Z", "2024-05-01T10:00:01Z"].map(created_key);
        keys.sort();
        assert!(keys[0].contains("01.000") && keys[2].contains("01.500"), "{keys:?}");
    }
}
