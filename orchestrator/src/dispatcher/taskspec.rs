//! The pure translation from what the cluster stores (a stack's project, one of its services and
//! one of that service's tasks) into what an agent runs: the networks and volumes to ensure, the
//! image to get and the container to create.
//!
//! No I/O and no clock: the same inputs always give the same [`TaskSpec`], so every mapping rule
//! is unit-tested here without an engine. Values the agent cannot express are errors
//! ([`TaskSpecError`]), never silently dropped; sub-attributes that Shoal does not act on are
//! reported up front by `compose::support` (`config --unsupported`, warnings on `up`).
//!
//! [`config_hash`] is the hash a task's container is labelled with and that the reconciler compares
//! to decide whether a running task is out of date; `up` must compute
//! `ServiceDeployment::config_hash` with it too, so that both agree.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest, Sha256};
use shoal_agent::runner::DEFAULT_STOP_GRACE;
use shoal_agent::spec::{
    BindPropagation, BuildSpec, ContainerSpec, DeviceSpec, HealthcheckSpec, ImageSpec, IpamPool, LoggingSpec,
    MountKind, MountSpec, NetworkAttachment, NetworkMode, NetworkSpec, PortRange, PortSpec, Protocol, PullPolicy,
    Resources, RestartPolicy, TaskIdentity, Ulimit, VolumeSpec,
};

use crate::compose::model::{self, MountType, Project, Service};
use crate::compose::units::ByteSize;
use crate::compose::KeyPath;
use crate::store::state::{Task, TaskId};

/// Everything an agent needs to run one task: the networks and volumes to ensure first (in the
/// order the container joins/mounts them), the image, and the container. Defined by the agent,
/// which receives it as JSON inside an assignment.
pub use shoal_agent::spec::TaskSpec;

/// Who restarts a task's container when it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestartOwner {
    /// The cluster: the reconciler replaces finished tasks (`restart`, `deploy.restart_policy`),
    /// so the engine must not restart the container behind its back (engine policy `no`).
    #[default]
    ControlPlane,
    /// The engine, from the service's `restart` / `deploy.restart_policy` (embedded mode, where
    /// no manager watches the node).
    Engine,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskSpecOptions {
    pub restart: RestartOwner,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskSpecError {
    #[error("task {task} belongs to service {actual:?}, not {expected:?}")]
    WrongService { task: TaskId, expected: String, actual: String },
    #[error("{path}: network {network:?} is not defined in the project")]
    UndefinedNetwork { path: KeyPath, network: String },
    #[error("{path}: volume {volume:?} is not defined in the project")]
    UndefinedVolume { path: KeyPath, volume: String },
    #[error("{path}: service {dependency:?} has no container yet whose network stack this one could share")]
    UnresolvedService { path: KeyPath, dependency: String },
    #[error("{path}: {message}")]
    Invalid { path: KeyPath, message: String },
    #[error("{path}: {what} is not supported by Shoal yet")]
    Unsupported { path: KeyPath, what: String },
}

type Result<T> = std::result::Result<T, TaskSpecError>;

/// The task spec for `task` of `service`, with the control plane owning restarts (engine restart
/// policy `no`). `resolve` maps a service name to the container name (or id) of that service's
/// first task, for `network_mode: service:x`.
pub fn task_spec(
    project: &Project,
    service_name: &str,
    service: &Service,
    task: &Task,
    node_id: &str,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Result<TaskSpec> {
    task_spec_with(project, service_name, service, task, node_id, resolve, TaskSpecOptions::default())
}

/// [`task_spec`] with explicit options.
pub fn task_spec_with(
    project: &Project,
    service_name: &str,
    service: &Service,
    task: &Task,
    node_id: &str,
    resolve: &dyn Fn(&str) -> Option<String>,
    options: TaskSpecOptions,
) -> Result<TaskSpec> {
    let hash = config_hash(project, service_name, service);
    task_spec_hashed(project, service_name, service, &hash, task, node_id, resolve, options)
}

/// The spec every replica of `task`'s service shares ([`TaskSpec::SHARED_FORMAT`]: the task's
/// id, replica number and node left for the agent to fill in with [`TaskSpec::for_task`]), or
/// `None` when there is none: the spec names another service's container (`network_mode:
/// service:x`, which depends on the node), or it does not build (each task's own build then says
/// why). Global tasks (slot 0) have their node in their container name: never shared.
pub fn shared_task_spec(
    project: &Project,
    service_name: &str,
    service: &Service,
    config_hash: &str,
    task: &Task,
    options: TaskSpecOptions,
) -> Option<TaskSpec> {
    if task.slot == 0 {
        return None;
    }
    let depends_on_node = std::cell::Cell::new(false);
    let resolve = |_: &str| {
        depends_on_node.set(true);
        None
    };
    let any = Task { id: 0, slot: 1, node: None, ..task.clone() };
    let spec = task_spec_hashed(project, service_name, service, config_hash, &any, "", &resolve, options);
    spec.ok().filter(|_| !depends_on_node.get()).map(TaskSpec::shared)
}

/// [`task_spec_with`] given the service's [`config_hash`], which costs a JSON rendering and a
/// SHA-256 of the whole service: the dispatcher computes it once per service version rather
/// than once per task.
#[allow(clippy::too_many_arguments)]
pub fn task_spec_hashed(
    project: &Project,
    service_name: &str,
    service: &Service,
    config_hash: &str,
    task: &Task,
    node_id: &str,
    resolve: &dyn Fn(&str) -> Option<String>,
    options: TaskSpecOptions,
) -> Result<TaskSpec> {
    if task.service.service != service_name {
        return Err(TaskSpecError::WrongService {
            task: task.id,
            expected: service_name.to_string(),
            actual: task.service.service.clone(),
        });
    }
    let t = Translator {
        project,
        // The stack name is what the cluster groups by (and `Task::container_name` uses); the
        // loader makes it the project's name.
        stack: &task.service.stack,
        name: service_name,
        service,
        node_id,
        path: KeyPath::root().key("services").key(service_name),
    };
    let image = t.image()?;
    let (attachments, networks, network_mode) = t.networks(resolve)?;
    let (mounts, volumes) = t.mounts()?;
    let slot = task.slot.max(1);
    let container_number = u32::try_from(slot).map_err(|_| TaskSpecError::Invalid {
        path: t.path.clone(),
        message: format!("task {} has replica number {slot}, more than a container number can hold", task.id),
    })?;
    let identity = TaskIdentity {
        project: t.stack.to_string(),
        service: service_name.to_string(),
        container_number,
        config_hash: config_hash.to_string(),
        node_id: node_id.to_string(),
        task_id: task.id.to_string(),
    };
    let restart = match options.restart {
        RestartOwner::ControlPlane => RestartPolicy::No,
        RestartOwner::Engine => engine_restart_policy(service),
    };
    let container = ContainerSpec {
        identity,
        image: image.reference(),
        // A global task's name carries its node (see `Task::container_name`).
        container_name: service
            .container_name
            .clone()
            .or_else(|| (task.slot == 0).then(|| task.container_name(service))),
        command: service.command.clone(),
        entrypoint: service.entrypoint.clone(),
        env: service.environment.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}"))).collect(),
        ports: t.ports()?,
        mounts,
        networks: attachments,
        network_mode,
        hostname: service.hostname.clone(),
        domainname: service.domainname.clone(),
        user: service.user.clone(),
        working_dir: service.working_dir.clone(),
        labels: service.labels.clone(),
        healthcheck: service.healthcheck.as_ref().map(healthcheck),
        init: service.init,
        stop_signal: service.stop_signal.clone(),
        stop_grace_period: Some(service.stop_grace_period.map_or(DEFAULT_STOP_GRACE, |d| d.0)),
        read_only: service.read_only.unwrap_or(false),
        privileged: service.privileged.unwrap_or(false),
        cap_add: service.cap_add.clone(),
        cap_drop: service.cap_drop.clone(),
        security_opt: service.security_opt.clone(),
        devices: service
            .devices
            .iter()
            .map(|d| DeviceSpec {
                host_path: d.source.clone(),
                container_path: d.target.clone(),
                permissions: d.permissions.clone().unwrap_or_else(|| "rwm".into()),
            })
            .collect(),
        extra_hosts: service
            .extra_hosts
            .iter()
            .flat_map(|(host, ips)| ips.iter().map(move |ip| format!("{host}:{ip}")))
            .collect(),
        dns: service.dns.clone(),
        dns_search: service.dns_search.clone(),
        dns_opt: service.dns_opt.clone(),
        tmpfs: service.tmpfs.clone(),
        ulimits: service
            .ulimits
            .iter()
            .map(|(name, l)| (name.clone(), Ulimit { soft: l.soft, hard: l.hard }))
            .collect(),
        sysctls: service.sysctls.clone(),
        shm_size: service.shm_size.map(|s| s.0),
        logging: service
            .logging
            .as_ref()
            .map(|l| LoggingSpec { driver: l.driver.clone(), options: present(&l.options) }),
        resources: resources(service),
        restart: Some(restart),
        tty: service.tty.unwrap_or(false),
        stdin_open: service.stdin_open.unwrap_or(false),
        platform: service.platform.clone(),
    };
    Ok(TaskSpec { networks, volumes, image, container })
}

/// A stable hash (sha256, hex) of everything that requires a new container when it changes: the
/// service's spec and the definitions of the networks and volumes it uses. Left out: what only
/// changes counts (`deploy.replicas`, `scale`) and what never reaches the container
/// (`depends_on`, `profiles`, `pull_policy`), as compose does. Other services never count.
/// Maps are hashed with sorted keys, so the order they were written in does not matter.
pub fn config_hash(project: &Project, service_name: &str, service: &Service) -> String {
    let mut spec = serde_json::to_value(service).unwrap_or_else(|_| {
        // Only free-form YAML (provider options) with non-string keys gets here.
        Value::String(serde_yaml::to_string(service).unwrap_or_default())
    });
    if let Value::Object(map) = &mut spec {
        for key in ["scale", "depends_on", "profiles", "pull_policy"] {
            map.remove(key);
        }
        if let Some(Value::Object(deploy)) = map.get_mut("deploy") {
            deploy.remove("replicas");
            if deploy.is_empty() {
                map.remove("deploy");
            }
        }
    }
    let networks: BTreeMap<&str, Option<&model::Network>> =
        used_networks(service).map(|key| (key, project.networks.get(key))).collect();
    let volumes: BTreeMap<&str, Option<&model::Volume>> =
        used_volumes(service).map(|key| (key, project.volumes.get(key))).collect();
    let document = serde_json::json!({
        "service": service_name,
        "spec": spec,
        "networks": networks,
        "volumes": volumes,
    });
    let mut hasher = Sha256::new();
    write_canonical(&document, &mut |bytes| hasher.update(bytes));
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys sorted at every level.
fn write_canonical(value: &Value, out: &mut dyn FnMut(&[u8])) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out(b"{");
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out(b",");
                }
                out(Value::String(key.clone()).to_string().as_bytes());
                out(b":");
                write_canonical(value, out);
            }
            out(b"}");
        }
        Value::Array(items) => {
            out(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out(b",");
                }
                write_canonical(item, out);
            }
            out(b"]");
        }
        scalar => out(scalar.to_string().as_bytes()),
    }
}

/// The network keys a service joins (none when it has a `network_mode`).
fn used_networks(service: &Service) -> impl Iterator<Item = &str> {
    service.networks.keys().filter(|_| service.network_mode.is_none()).map(String::as_str)
}

/// The volume keys a service mounts.
fn used_volumes(service: &Service) -> impl Iterator<Item = &str> {
    service.volumes.iter().filter(|v| v.kind == MountType::Volume).filter_map(|v| v.source.as_deref())
}

struct Translator<'a> {
    project: &'a Project,
    stack: &'a str,
    name: &'a str,
    service: &'a Service,
    node_id: &'a str,
    /// `services.<name>`, for errors.
    path: KeyPath,
}

impl Translator<'_> {
    fn invalid(&self, path: KeyPath, message: impl Into<String>) -> TaskSpecError {
        TaskSpecError::Invalid { path, message: message.into() }
    }

    fn unsupported(&self, path: KeyPath, what: impl Into<String>) -> TaskSpecError {
        TaskSpecError::Unsupported { path, what: what.into() }
    }

    fn image(&self) -> Result<ImageSpec> {
        let service = self.service;
        if service.image.is_none() && service.build.is_none() {
            return Err(self.invalid(self.path.clone(), "a service needs `image` or `build`"));
        }
        let build = match &service.build {
            Some(b) => Some(self.build(b)?),
            None => None,
        };
        let path = self.path.key("pull_policy");
        let pull_policy = match service.pull_policy.as_deref() {
            None | Some("missing") | Some("if_not_present") => PullPolicy::Missing,
            Some("always") => PullPolicy::Always,
            Some("never") => PullPolicy::Never,
            Some("build") => PullPolicy::Build,
            Some(other) => {
                return Err(
                    self.unsupported(path, format!("pull policy {other:?} (use always, missing, never or build)"))
                )
            }
        };
        Ok(ImageSpec {
            image: service.image.clone(),
            project: self.stack.to_string(),
            service: self.name.to_string(),
            build,
            pull_policy,
        })
    }

    fn build(&self, b: &model::Build) -> Result<BuildSpec> {
        let path = self.path.key("build");
        if b.dockerfile_inline.is_some() {
            return Err(self.unsupported(path.key("dockerfile_inline"), "an inline Dockerfile"));
        }
        let context = b.context.as_deref().unwrap_or(".");
        if context.contains("://") || context.starts_with("git@") {
            return Err(self.unsupported(path.key("context"), format!("the remote build context {context:?}")));
        }
        Ok(BuildSpec {
            context: PathBuf::from(context),
            dockerfile: b.dockerfile.clone(),
            args: present(&b.args),
            target: b.target.clone(),
            labels: b.labels.clone(),
        })
    }

    fn ports(&self) -> Result<Vec<PortSpec>> {
        let mut ports = Vec::with_capacity(self.service.ports.len());
        for (i, p) in self.service.ports.iter().enumerate() {
            let path = self.path.key("ports").index(i);
            let protocol = match p.protocol.as_deref().unwrap_or("tcp") {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                other => {
                    return Err(self
                        .invalid(path.key("protocol"), format!("unknown protocol {other:?} (use tcp, udp or sctp)")))
                }
            };
            let published = match p.published.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => {
                    let range = port_range(text).ok_or_else(|| {
                        self.invalid(path.key("published"), format!("{text:?} is not a port or a port range"))
                    })?;
                    // Port 0 asks the engine for an ephemeral port, as an absent one does.
                    (range != PortRange::single(0)).then_some(range)
                }
            };
            let host_ip = p.host_ip.clone().filter(|ip| !ip.is_empty());
            ports.push(PortSpec { target: p.target, published, host_ip, protocol });
        }
        Ok(ports)
    }

    fn mounts(&self) -> Result<(Vec<MountSpec>, Vec<VolumeSpec>)> {
        let mut mounts = Vec::with_capacity(self.service.volumes.len());
        let mut volumes: Vec<VolumeSpec> = Vec::new();
        for (i, v) in self.service.volumes.iter().enumerate() {
            let path = self.path.key("volumes").index(i);
            let kind = match v.kind {
                MountType::Bind => {
                    let source = v.source.clone().unwrap_or_default();
                    if !source.starts_with('/') {
                        return Err(self.invalid(
                            path.key("source"),
                            format!("a bind mount needs an absolute host path, not {source:?}"),
                        ));
                    }
                    let bind = v.bind.clone().unwrap_or_default();
                    let propagation = match bind.propagation.as_deref() {
                        None => None,
                        Some(p) => Some(propagation(p).ok_or_else(|| {
                            self.invalid(
                                path.key("bind").key("propagation"),
                                format!("unknown propagation {p:?} (use private, rprivate, shared, rshared, slave or rslave)"),
                            )
                        })?),
                    };
                    MountKind::Bind { source, propagation, create_host_path: bind.create_host_path.unwrap_or(false) }
                }
                MountType::Volume => {
                    let options = v.volume.clone().unwrap_or_default();
                    if options.subpath.is_some() {
                        return Err(self.unsupported(path.key("volume").key("subpath"), "mounting a volume's subpath"));
                    }
                    let nocopy = options.nocopy.unwrap_or(false);
                    match &v.source {
                        None => MountKind::Anonymous { nocopy },
                        Some(key) => {
                            let spec = self.volume(key, path.key("source"))?;
                            let source = spec.name.clone();
                            if !volumes.iter().any(|known| known.key == spec.key) {
                                volumes.push(spec);
                            }
                            MountKind::Volume { source, nocopy }
                        }
                    }
                }
                MountType::Tmpfs => {
                    let options = v.tmpfs.clone().unwrap_or_default();
                    MountKind::Tmpfs { size: options.size.map(|s| s.0), mode: options.mode.map(|m| m.0) }
                }
                other => {
                    let name = serde_json::to_value(other).ok().and_then(|v| v.as_str().map(str::to_string));
                    return Err(self.unsupported(
                        path.key("type"),
                        format!("a mount of type {}", name.unwrap_or_else(|| format!("{other:?}"))),
                    ));
                }
            };
            mounts.push(MountSpec { target: v.target.clone(), read_only: v.read_only, kind });
        }
        Ok((mounts, volumes))
    }

    fn volume(&self, key: &str, path: KeyPath) -> Result<VolumeSpec> {
        let def = self
            .project
            .volumes
            .get(key)
            .ok_or_else(|| TaskSpecError::UndefinedVolume { path, volume: key.to_string() })?;
        let external = def.external.unwrap_or(false);
        Ok(VolumeSpec {
            name: engine_name(def.name.as_deref(), external, self.stack, key),
            project: self.stack.to_string(),
            key: key.to_string(),
            node_id: self.node_id.to_string(),
            driver: def.driver.clone(),
            driver_opts: def.driver_opts.clone(),
            labels: def.labels.clone(),
            external,
        })
    }

    /// The attachments in join order, the networks they need, and the network mode.
    fn networks(
        &self,
        resolve: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<NetworkAttachment>, Vec<NetworkSpec>, Option<NetworkMode>)> {
        if let Some(mode) = &self.service.network_mode {
            let path = self.path.key("network_mode");
            if !self.service.networks.is_empty() {
                return Err(self.invalid(path, "network_mode and networks cannot both be set"));
            }
            let mode = match mode.as_str() {
                "bridge" => NetworkMode::Bridge,
                "host" => NetworkMode::Host,
                "none" => NetworkMode::None,
                other => match (other.strip_prefix("container:"), other.strip_prefix("service:")) {
                    (Some(container), _) if !container.is_empty() => NetworkMode::Container(container.to_string()),
                    (_, Some(dependency)) if !dependency.is_empty() => {
                        let container = resolve(dependency).ok_or_else(|| TaskSpecError::UnresolvedService {
                            path,
                            dependency: dependency.to_string(),
                        })?;
                        NetworkMode::Container(container)
                    }
                    (Some(_), _) | (_, Some(_)) => {
                        return Err(self.invalid(path, format!("{other:?} names no container or service")))
                    }
                    _ => NetworkMode::Other(other.to_string()),
                },
            };
            return Ok((Vec::new(), Vec::new(), Some(mode)));
        }

        // Compose's order: highest priority first, then by key.
        let mut keys: Vec<(&String, &Option<model::ServiceNetwork>)> = self.service.networks.iter().collect();
        keys.sort_by_key(|(key, cfg)| (std::cmp::Reverse(cfg.as_ref().and_then(|c| c.priority).unwrap_or(0)), *key));
        let mut attachments = Vec::with_capacity(keys.len());
        let mut specs = Vec::with_capacity(keys.len());
        for (key, cfg) in keys {
            let spec = self.network(key)?;
            let mut aliases = vec![self.name.to_string()];
            for alias in cfg.iter().flat_map(|c| &c.aliases) {
                if !aliases.contains(alias) {
                    aliases.push(alias.clone());
                }
            }
            attachments.push(NetworkAttachment {
                name: spec.name.clone(),
                aliases,
                ipv4_address: cfg.as_ref().and_then(|c| c.ipv4_address.clone()),
                ipv6_address: cfg.as_ref().and_then(|c| c.ipv6_address.clone()),
            });
            specs.push(spec);
        }
        Ok((attachments, specs, None))
    }

    fn network(&self, key: &str) -> Result<NetworkSpec> {
        let def = self.project.networks.get(key).ok_or_else(|| TaskSpecError::UndefinedNetwork {
            path: self.path.key("networks").key(key),
            network: key.to_string(),
        })?;
        let path = KeyPath::root().key("networks").key(key);
        let external = def.external.unwrap_or(false);
        let mut ipam = Vec::new();
        // An external network is never created, so how it would be created does not matter.
        if let (Some(def_ipam), false) = (&def.ipam, external) {
            let ipam_path = path.key("ipam");
            if def_ipam.driver.as_deref().is_some_and(|d| d != "default") {
                return Err(self.unsupported(ipam_path.key("driver"), "an IPAM driver other than `default`"));
            }
            if !def_ipam.options.is_empty() {
                return Err(self.unsupported(ipam_path.key("options"), "IPAM driver options"));
            }
            for (i, pool) in def_ipam.config.iter().enumerate() {
                let pool_path = ipam_path.key("config").index(i);
                if !pool.aux_addresses.is_empty() {
                    return Err(self.unsupported(pool_path.key("aux_addresses"), "auxiliary IPAM addresses"));
                }
                let subnet = pool
                    .subnet
                    .clone()
                    .ok_or_else(|| self.invalid(pool_path.key("subnet"), "an IPAM pool needs a subnet"))?;
                ipam.push(IpamPool { subnet, gateway: pool.gateway.clone(), ip_range: pool.ip_range.clone() });
            }
        }
        if !external && def.enable_ipv4 == Some(false) {
            return Err(self.unsupported(path.key("enable_ipv4"), "an IPv6-only network (enable_ipv4: false)"));
        }
        Ok(NetworkSpec {
            name: engine_name(def.name.as_deref(), external, self.stack, key),
            project: self.stack.to_string(),
            key: key.to_string(),
            node_id: self.node_id.to_string(),
            driver: def.driver.clone(),
            driver_opts: def.driver_opts.clone(),
            labels: def.labels.clone(),
            external,
            internal: def.internal.unwrap_or(false),
            attachable: def.attachable.unwrap_or(false),
            enable_ipv6: def.enable_ipv6.unwrap_or(false),
            ipam,
        })
    }
}

/// A network's or volume's engine name: as the loader set it, else `<project>_<key>` (the key
/// itself for an external one).
fn engine_name(name: Option<&str>, external: bool, stack: &str, key: &str) -> String {
    match name {
        Some(name) => name.to_string(),
        None if external => key.to_string(),
        None => format!("{stack}_{key}"),
    }
}

/// `8080` or `8000-8010`.
fn port_range(text: &str) -> Option<PortRange> {
    let port = |s: &str| s.trim().parse::<u16>().ok();
    let range = match text.split_once('-') {
        Some((start, end)) => PortRange { start: port(start)?, end: port(end)? },
        None => PortRange::single(port(text)?),
    };
    (range.start <= range.end).then_some(range)
}

fn propagation(text: &str) -> Option<BindPropagation> {
    Some(match text {
        "private" => BindPropagation::Private,
        "rprivate" => BindPropagation::Rprivate,
        "shared" => BindPropagation::Shared,
        "rshared" => BindPropagation::Rshared,
        "slave" => BindPropagation::Slave,
        "rslave" => BindPropagation::Rslave,
        _ => return None,
    })
}

/// Entries with a value; a `None` value was unset in the shell, so the entry is left out.
fn present(map: &model::OptionalStringMap) -> BTreeMap<String, String> {
    map.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone()))).collect()
}

fn healthcheck(h: &model::Healthcheck) -> HealthcheckSpec {
    HealthcheckSpec {
        test: h.test.clone().unwrap_or_default(),
        interval: h.interval.map(|d| d.0),
        timeout: h.timeout.map(|d| d.0),
        retries: h.retries.map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
        start_period: h.start_period.map(|d| d.0),
        start_interval: h.start_interval.map(|d| d.0),
        disable: h.disable.unwrap_or(false),
    }
}

/// Service-level limits, overridden by `deploy.resources` (as compose does).
fn resources(service: &Service) -> Resources {
    let bytes = |b: ByteSize| i64::try_from(b.0).unwrap_or(i64::MAX);
    let nano_cpus = |cpus: f64| (cpus > 0.0).then(|| (cpus * 1e9).round() as i64);
    let deploy = service.deploy.as_ref().and_then(|d| d.resources.as_ref());
    let limits = deploy.and_then(|r| r.limits.as_ref());
    let reservations = deploy.and_then(|r| r.reservations.as_ref());
    Resources {
        nano_cpus: limits.and_then(|l| l.cpus).and_then(nano_cpus).or_else(|| service.cpus.and_then(nano_cpus)),
        memory: limits.and_then(|l| l.memory).or(service.mem_limit).map(bytes),
        memory_reservation: reservations.and_then(|r| r.memory).or(service.mem_reservation).map(bytes),
        pids_limit: limits.and_then(|l| l.pids).filter(|p| *p > 0).or(service.pids_limit.filter(|p| *p != 0)),
    }
}

/// The engine's restart policy from `deploy.restart_policy` (which wins, with Swarm's default
/// condition `any`), else `restart`, else `no`.
fn engine_restart_policy(service: &Service) -> RestartPolicy {
    if let Some(policy) = service.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()) {
        let max_retries = policy.max_attempts.filter(|n| *n > 0).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        return match policy.condition.as_deref() {
            Some("none" | "no") => RestartPolicy::No,
            Some("on-failure") => RestartPolicy::OnFailure { max_retries },
            Some("unless-stopped") => RestartPolicy::UnlessStopped,
            _ => RestartPolicy::Always,
        };
    }
    let restart = service.restart.as_deref().unwrap_or("no");
    let (name, count) = restart.split_once(':').unwrap_or((restart, ""));
    match name {
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure { max_retries: count.parse().ok().filter(|n| *n > 0) },
        _ => RestartPolicy::No,
    }
}

#[cfg(test)]
mod tests;
