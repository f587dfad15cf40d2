//! Shared support for the integration tests against the real Docker engine.
//!
//! Every object a test creates carries `io.shoal.test=<run id>`; the [`TestRun`] guard removes
//! all of them when it is dropped, which happens whether the test passes or panics.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use bollard::models::ContainerInspectResponse;
use shoal_agent::engine::docker::DockerEngine;
use shoal_agent::{ContainerSpec, TaskIdentity};

pub const TEST_IMAGE: &str = "shoal-test/busybox:latest";
pub const TEST_LABEL: &str = "io.shoal.test";

/// Imports the offline busybox image when missing (see `scripts/test-image`), once per process.
pub fn ensure_test_image() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test-image");
        let out = Command::new("bash").arg(script).output().map_err(|e| format!("running {script}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{script} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

pub async fn engine() -> DockerEngine {
    ensure_test_image();
    match DockerEngine::connect().await {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

/// One test's namespace and cleanup guard.
pub struct TestRun {
    pub id: String,
}

impl TestRun {
    /// `name` only makes names readable; uniqueness comes from the pid, a counter and the clock.
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let short: String =
            name.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect::<String>().to_lowercase();
        TestRun { id: format!("{short}{}x{n}x{:x}", std::process::id(), nanos % 0xfffff) }
    }

    pub fn label(&self) -> (String, String) {
        (TEST_LABEL.to_string(), self.id.clone())
    }

    pub fn project(&self) -> String {
        format!("t{}", self.id)
    }

    pub fn identity(&self, service: &str, n: u32) -> TaskIdentity {
        TaskIdentity {
            project: self.project(),
            service: service.to_string(),
            container_number: n,
            config_hash: format!("hash-{service}-{n}"),
            node_id: format!("node-{}", self.id),
            task_id: format!("task-{service}-{n}"),
        }
    }

    /// A labelled busybox container that sleeps (with an init, so it stops promptly).
    pub fn spec(&self, service: &str) -> ContainerSpec {
        let mut spec = ContainerSpec::new(self.identity(service, 1), TEST_IMAGE);
        spec.labels.insert(TEST_LABEL.into(), self.id.clone());
        spec.command = Some(vec!["sleep".into(), "300".into()]);
        spec.init = Some(true);
        spec
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        let filter = format!("label={TEST_LABEL}={}", self.id);
        let list = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let remove = |cmd: &[&str], ids: Vec<String>| {
            if !ids.is_empty() {
                let _ = Command::new("docker").args(cmd).args(&ids).output();
            }
        };
        // Containers first: networks and volumes in use cannot be removed.
        remove(&["rm", "-fv"], list(&["ps", "-aq", "--filter", &filter]));
        remove(&["network", "rm"], list(&["network", "ls", "-q", "--filter", &filter]));
        remove(&["volume", "rm", "-f"], list(&["volume", "ls", "-q", "--filter", &filter]));
        remove(&["rmi", "-f"], list(&["image", "ls", "-q", "--filter", &filter]));
    }
}

pub async fn inspect(engine: &DockerEngine, id: &str) -> ContainerInspectResponse {
    match engine.client().inspect_container(id, None).await {
        Ok(r) => r,
        Err(e) => panic!("inspect {id}: {e}"),
    }
}

/// Polls `check` until it returns `Some`, or panics after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// A free TCP port on 127.0.0.1 right now (the kernel picks it).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A /24 in 10.231.0.0/16 unlikely to collide with parallel tests.
pub fn test_subnet(run: &TestRun) -> (String, String) {
    let mut h: u32 = 2166136261;
    for b in run.id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    let third = h % 250 + 1;
    (format!("10.231.{third}.0/24"), format!("10.231.{third}"))
}
