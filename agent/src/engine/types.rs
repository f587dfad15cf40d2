//! Engine-neutral views of containers, events and logs, so the runner never sees bollard types
//! and the mock engine can produce exactly the same values.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "starting" => Some(HealthStatus::Starting),
            "healthy" => Some(HealthStatus::Healthy),
            "unhealthy" => Some(HealthStatus::Unhealthy),
            _ => None,
        }
    }
}

/// What `inspect` and `list` report about one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub status: ContainerStatus,
    /// Meaningful once the container has exited at least once.
    pub exit_code: Option<i64>,
    /// `None` when the container has no healthcheck.
    pub health: Option<HealthStatus>,
    pub oom_killed: bool,
    /// The engine's error for the last start attempt (e.g. executable not found).
    pub error: Option<String>,
    /// Published ports as bound while running, `host_ip:published->target/protocol`, sorted.
    #[serde(default)]
    pub ports: Vec<String>,
}

impl ContainerState {
    pub fn is_running(&self) -> bool {
        matches!(self.status, ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Restarting)
    }
}

/// The container events the runner reacts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Start,
    Die { exit_code: Option<i64> },
    Oom,
    Health(HealthStatus),
    Destroy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineEvent {
    pub container_id: String,
    pub kind: EventKind,
    pub labels: BTreeMap<String, String>,
    /// Engine time of the event, nanoseconds since the Unix epoch.
    pub time_nanos: i64,
}

/// Which events to receive. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Containers that carry all of these labels.
    pub labels: BTreeMap<String, String>,
    pub container: Option<String>,
    /// Replay events from this time on (the engine keeps a short history), so that a subscription
    /// made just after an action does not miss the action's events.
    pub since: Option<SystemTime>,
}

/// What `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    /// The container is no longer running.
    Exit,
    /// The healthcheck settled (healthy or unhealthy), or the container stopped first.
    Health,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    Exited { code: i64, oom_killed: bool },
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running.
    AlreadyStopped,
    /// It exited on the stop signal within the grace period.
    Exited,
    /// It outlived the grace period and was killed.
    Killed,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveOptions {
    /// Remove even if running.
    pub force: bool,
    /// Also remove the container's anonymous volumes.
    pub volumes: bool,
}

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u64>,
    pub timestamps: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// A TTY container's combined output.
    Console,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: LogStream,
    pub data: Bytes,
}

/// Result of `ensure_image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReady {
    pub reference: String,
    pub how: ImageSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    Present,
    Built,
    Pulled,
}

/// Facts about the engine's host, reported when the node registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine host's name.
    pub hostname: String,
    /// CPUs in units of 10^-9 (4 CPUs is 4_000_000_000).
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    /// `linux`, `windows`.
    pub os: String,
    /// Go-style architecture names, as image platforms use them: `amd64`, `arm64`, ...
    pub arch: String,
    pub engine_version: String,
}

impl Default for EngineInfo {
    fn default() -> Self {
        EngineInfo {
            hostname: "localhost".into(),
            nano_cpus: 1_000_000_000,
            memory_bytes: 1 << 30,
            os: std::env::consts::OS.into(),
            arch: normalize_arch(std::env::consts::ARCH),
            engine_version: String::new(),
        }
    }
}

/// `x86_64` → `amd64`, `aarch64` → `arm64`, ...: the names `platform:` and placement
/// constraints use (the engine and Rust report the kernel's names).
pub fn normalize_arch(arch: &str) -> String {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" | "x86" => "386",
        "armv7l" | "armv7" | "armv6l" | "arm" => "arm",
        "powerpc64le" | "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" | "riscv64gc" => "riscv64",
        other => other,
    }
    .to_string()
}
