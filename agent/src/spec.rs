//! The agent's own input types.
//!
//! The agent does not depend on the compose loader: the control plane turns a compose service into
//! a [`ContainerSpec`] (with everything already resolved: `env_file` merged into `env`,
//! `service:x` network modes turned into container references, byte sizes and durations parsed)
//! and ships it to the node. Every type here is plain data and serde-serializable so it can travel
//! inside an assignment unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// For `skip_serializing_if`: a field at its default is left out of the JSON.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Who a container belongs to. The engine driver derives every Shoal/compose label and the
/// default container name from this, so callers cannot forget one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskIdentity {
    pub project: String,
    pub service: String,
    /// 1-based replica number, as in `<project>-<service>-<n>`.
    pub container_number: u32,
    /// Hash of the service configuration; lets the control plane see that a running container is
    /// out of date without comparing whole specs.
    pub config_hash: String,
    pub node_id: String,
    pub task_id: String,
}

/// Everything needed to create one container for one task. Fields at their defaults are left
/// out of the JSON (an assignment per task, thousands per deploy: a plain spec is a third of the
/// size) and read back as their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub identity: TaskIdentity,
    /// Image reference; must already be present (see [`crate::Engine::ensure_image`]).
    pub image: String,
    /// Overrides `<project>-<service>-<n>`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub container_name: Option<String>,
    /// `None` keeps the image's default, `Some(vec![])` clears it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub command: Option<Vec<String>>,
    /// `None` keeps the image's default, `Some(vec![])` clears it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries (env files already merged by the caller).
    #[serde(default, skip_serializing_if = "is_default")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub mounts: Vec<MountSpec>,
    /// Networks to join, in priority order (the first is joined at create time).
    #[serde(default, skip_serializing_if = "is_default")]
    pub networks: Vec<NetworkAttachment>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub network_mode: Option<NetworkMode>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub domainname: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub working_dir: Option<String>,
    /// User labels; the identity labels are added on top and win.
    #[serde(default, skip_serializing_if = "is_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub healthcheck: Option<HealthcheckSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub init: Option<bool>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub stop_grace_period: Option<Duration>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub security_opt: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub devices: Vec<DeviceSpec>,
    /// `host:ip` entries.
    #[serde(default, skip_serializing_if = "is_default")]
    pub extra_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub dns_opt: Vec<String>,
    /// Short-syntax tmpfs mounts: `/path` or `/path:opts` (e.g. `/run:size=1m,mode=755`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub tmpfs: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub ulimits: BTreeMap<String, Ulimit>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub sysctls: BTreeMap<String, String>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub shm_size: Option<u64>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub logging: Option<LoggingSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Used only in embedded mode, where no manager restarts failed tasks.
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub stdin_open: bool,
    /// `os/arch[/variant]`, e.g. `linux/amd64`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub platform: Option<String>,
}

impl ContainerSpec {
    /// A spec with only an identity and an image; everything else takes the engine's default.
    pub fn new(identity: TaskIdentity, image: impl Into<String>) -> Self {
        ContainerSpec { identity, image: image.into(), ..ContainerSpec::default() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// An inclusive range of host ports; `start == end` for a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange { start: port, end: port }
    }
}

/// One published (or only exposed) container port. Target ranges are expanded by the caller into
/// one `PortSpec` per target port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub target: u16,
    /// `None` lets the engine pick an ephemeral host port.
    pub published: Option<PortRange>,
    pub host_ip: Option<String>,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub target: String,
    pub read_only: bool,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MountKind {
    Bind {
        /// Absolute host path.
        source: String,
        propagation: Option<BindPropagation>,
        /// Compose's short syntax creates a missing host directory; the long syntax may not.
        create_host_path: bool,
    },
    /// A named volume; `source` is the engine-level name (`<project>_<key>` or an external name).
    Volume { source: String, nocopy: bool },
    /// A fresh volume owned by the container, removed with it when asked.
    Anonymous { nocopy: bool },
    Tmpfs {
        /// Bytes.
        size: Option<u64>,
        /// Octal file mode, e.g. `0o1777`.
        mode: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindPropagation {
    Private,
    Rprivate,
    Shared,
    Rshared,
    Slave,
    Rslave,
}

impl BindPropagation {
    pub fn as_str(self) -> &'static str {
        match self {
            BindPropagation::Private => "private",
            BindPropagation::Rprivate => "rprivate",
            BindPropagation::Shared => "shared",
            BindPropagation::Rshared => "rshared",
            BindPropagation::Slave => "slave",
            BindPropagation::Rslave => "rslave",
        }
    }
}

/// Membership of one network. The driver always adds the service name as an alias, as compose
/// does, so `aliases` only needs the custom ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// Engine-level network name (`<project>_<key>` or an external name).
    pub name: String,
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    Bridge,
    Host,
    None,
    /// `container:<id-or-name>`; compose's `service:x` is resolved to this by the caller.
    Container(String),
    /// Any other engine network mode string, passed through.
    Other(String),
}

impl NetworkMode {
    pub fn to_engine_string(&self) -> String {
        match self {
            NetworkMode::Bridge => "bridge".into(),
            NetworkMode::Host => "host".into(),
            NetworkMode::None => "none".into(),
            NetworkMode::Container(c) => format!("container:{c}"),
            NetworkMode::Other(s) => s.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthcheckSpec {
    /// Starts with `NONE`, `CMD` or `CMD-SHELL`; empty inherits the image's test.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
    /// Needs engine API 1.44; older engines ignore it.
    pub start_interval: Option<Duration>,
    /// `disable: true` turns off the image's healthcheck too.
    pub disable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub host_path: String,
    pub container_path: String,
    /// cgroup permissions, e.g. `rwm`.
    pub permissions: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggingSpec {
    pub driver: Option<String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs in units of 10^-9 (compose `cpus: 0.5` is 500_000_000).
    pub nano_cpus: Option<i64>,
    /// Bytes.
    pub memory: Option<i64>,
    /// Bytes.
    pub memory_reservation: Option<i64>,
    pub pids_limit: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure { max_retries: Option<u32> },
}

/// A network as the engine should have it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Engine-level name (`<project>_<key>` or the external name).
    pub name: String,
    pub project: String,
    /// The compose key, for the `com.docker.compose.network` label.
    pub key: String,
    pub node_id: String,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Must already exist; never created or removed by Shoal.
    pub external: bool,
    pub internal: bool,
    pub attachable: bool,
    pub enable_ipv6: bool,
    pub ipam: Vec<IpamPool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPool {
    pub subnet: String,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
}

/// A named volume as the engine should have it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub project: String,
    /// The compose key, for the `com.docker.compose.volume` label.
    pub key: String,
    pub node_id: String,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub external: bool,
}

/// Which image a service runs and how to get it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Compose `image:`; when absent a built image is tagged `<project>-<service>`.
    pub image: Option<String>,
    pub project: String,
    pub service: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub build: Option<BuildSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub pull_policy: PullPolicy,
}

impl ImageSpec {
    /// The reference the image is looked up, built or pulled as.
    pub fn reference(&self) -> String {
        match &self.image {
            Some(image) => image.clone(),
            None => format!("{}-{}", self.project, self.service),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// Directory sent to the engine as the build context.
    pub context: std::path::PathBuf,
    /// Relative to `context` unless absolute; default `Dockerfile`.
    pub dockerfile: Option<String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    Always,
    /// Use a local image; build (if there is a build section) or pull only when it is absent.
    #[default]
    Missing,
    Never,
    /// Always build, even when the image exists.
    Build,
}

/// Everything an agent needs to run one task: the networks and volumes to ensure, the image to
/// make available, and the container to create. The manager sends it inside an assignment as JSON
/// ([`TaskSpec::FORMAT`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    #[serde(default, skip_serializing_if = "is_default")]
    pub networks: Vec<NetworkSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub volumes: Vec<VolumeSpec>,
    pub image: ImageSpec,
    pub container: ContainerSpec,
}

impl TaskSpec {
    /// `Assignment.spec_format` of a JSON-encoded `TaskSpec`.
    pub const FORMAT: &'static str = "shoal.taskspec.v1+json";

    /// `Assignment.spec_format` of a spec shared by every task of a service version: the same
    /// JSON with what is the task's own left empty (its id, its replica number, the node it runs
    /// on), which the agent fills in from the assignment and itself ([`TaskSpec::for_task`]).
    /// The manager then keeps and sends one spec per service instead of one per task.
    pub const SHARED_FORMAT: &'static str = "shoal.taskspec-shared.v1+json";

    /// A shared spec ([`TaskSpec::SHARED_FORMAT`]) made this task's: task `task`, replica `slot`
    /// (1-based), on node `node_id`. Fails on a replica number too large for a container number.
    pub fn for_task(self, task: u64, slot: u64, node_id: &str) -> Result<TaskSpec, String> {
        let number = u32::try_from(slot.max(1))
            .map_err(|_| format!("task {task} has replica number {slot}, more than a container number can hold"))?;
        Ok(self.with_task_fields(task.to_string(), number, node_id))
    }

    /// The shared form of a task's spec: what [`TaskSpec::for_task`] fills in, emptied.
    pub fn shared(self) -> TaskSpec {
        self.with_task_fields(String::new(), 0, "")
    }

    /// Every field that is the task's own rather than its service's, set.
    fn with_task_fields(mut self, task_id: String, container_number: u32, node_id: &str) -> TaskSpec {
        let identity = &mut self.container.identity;
        identity.task_id = task_id;
        identity.container_number = container_number;
        identity.node_id = node_id.to_string();
        for network in &mut self.networks {
            network.node_id = node_id.to_string();
        }
        for volume in &mut self.volumes {
            volume.node_id = node_id.to_string();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_spec_leaves_its_defaults_out_and_reads_back_the_same() {
        let identity = TaskIdentity {
            project: "p".into(),
            service: "web".into(),
            container_number: 1,
            config_hash: "h".into(),
            node_id: "n".into(),
            task_id: "1".into(),
        };
        let plain = TaskSpec {
            image: ImageSpec {
                image: Some("x".into()),
                project: "p".into(),
                service: "web".into(),
                ..Default::default()
            },
            container: ContainerSpec::new(identity.clone(), "x"),
            ..TaskSpec::default()
        };
        let json = serde_json::to_string(&plain).expect("encodes");
        for absent in ["networks", "volumes", "command", "read_only", "ulimits", "resources", "pull_policy"] {
            assert!(!json.contains(absent), "{absent} in {json}");
        }
        assert_eq!(serde_json::from_str::<TaskSpec>(&json).expect("decodes"), plain);

        let mut full = plain.clone();
        full.container.read_only = true;
        full.container.env = vec!["A=1".into()];
        full.container.resources.memory = Some(1 << 20);
        full.container.stop_grace_period = Some(Duration::from_secs(3));
        full.image.pull_policy = PullPolicy::Never;
        let json = serde_json::to_string(&full).expect("encodes");
        assert_eq!(serde_json::from_str::<TaskSpec>(&json).expect("decodes"), full);
    }
}
