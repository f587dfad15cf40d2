//! End-to-end support: a compose project run by the real `shoal` binary against the real Docker
//! engine, with its own state dir and a unique project name, and a guard that removes every
//! Docker object the project created — pass or fail.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::{repo_root, run, shoal, Run};

/// The image every test stack uses; `scripts/test-image` imports it (nothing can be pulled).
pub const IMAGE: &str = "shoal-test/busybox:latest";
/// The label every test object carries, valued with [`run_id`].
pub const TEST_LABEL: &str = "io.shoal.test";
pub const PROJECT_LABEL: &str = "com.docker.compose.project";

/// This test process's id, the value of [`TEST_LABEL`]: finds leftovers of one run.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        format!("{}-{nanos:x}", std::process::id())
    })
}

/// The longest any single `shoal` command of a test may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the command to completion, or kills it after `timeout` and panics with its output.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Run {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Run { code: status.code().unwrap_or(-1), stdout, stderr },
        None => panic!("{cmd:?} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
    }
}

/// Runs the docker CLI.
pub fn docker(args: &[&str]) -> Run {
    run(Command::new("docker").args(args))
}

/// Runs the docker CLI and returns its stdout; panics (with stderr) if it fails.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert_eq!(out.code, 0, "docker {args:?} failed:\n{}", out.stderr);
    out.stdout
}

/// `docker inspect` of one object (container by id or name, network, volume).
pub fn inspect(what: &str) -> Json {
    let out = docker_ok(&["inspect", what]);
    let mut all: Vec<Json> = serde_json::from_str(&out).expect("docker inspect prints JSON");
    all.pop().expect("one object")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// `GET path` on 127.0.0.1:port; the body if the answer is 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

/// Docker's RFC 3339 timestamps (`2024-05-01T10:00:01.5Z`) as comparable nanoseconds since
/// the epoch (Go trims trailing zeros, so the strings themselves do not sort).
pub fn docker_time(text: &str) -> u128 {
    let parse = |s: &str| s.parse::<u128>().unwrap_or_else(|_| panic!("not a docker timestamp: {text}"));
    let (date, time) = text.trim_end_matches('Z').split_once('T').expect("a docker timestamp");
    let mut ymd = date.split('-').map(parse);
    let (y, m, d) = (ymd.next().unwrap(), ymd.next().unwrap(), ymd.next().unwrap());
    // Days since the epoch (civil-from-days inverse, proleptic Gregorian).
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d - 719_469;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(parse);
    let seconds = days * 86_400 + parts.next().unwrap() * 3600 + parts.next().unwrap() * 60 + parts.next().unwrap();
    let nanos = parse(&format!("{frac:0<9}")[..9]);
    seconds * 1_000_000_000 + nanos
}

/// A compose project under test: a scratch directory holding its compose file and the state
/// dir of its embedded cluster, and a unique project name. Dropping it removes every
/// container, network and volume labelled with the project, and the directory.
pub struct Stack {
    pub name: String,
    dir: tempfile::TempDir,
    env: Vec<(String, OsString)>,
}

impl Stack {
    /// A new project named `e2e-<what>-<unique>`.
    pub fn new(what: &str) -> Stack {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        static IMAGE_PRESENT: OnceLock<bool> = OnceLock::new();
        let present = *IMAGE_PRESENT.get_or_init(|| docker(&["image", "inspect", IMAGE]).code == 0);
        assert!(present, "the test image {IMAGE} is missing (is Docker running?): run scripts/test-image");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("e2e-{what}-{}{n}{:x}", std::process::id(), nanos & 0xfff);
        let dir = tempfile::Builder::new().prefix("shoal-e2e-").tempdir().expect("temp dir");
        let stack = Stack { name, dir, env: Vec::new() };
        stack.cleanup(); // in case an earlier run with the same name left something behind
        stack
    }

    /// The scratch directory (the project directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    pub fn compose_file(&self) -> PathBuf {
        self.dir().join("compose.yaml")
    }

    /// Sets a variable for every later `shoal` run (interpolation in the compose file).
    pub fn env(&mut self, key: &str, value: impl Into<OsString>) {
        self.env.push((key.to_string(), value.into()));
    }

    /// Writes the compose file, with the test label added to every service, network and volume
    /// and `name:` dropped (the project is named by `-p`).
    pub fn compose(&self, text: &str) {
        let mut doc: Yaml = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("test compose file: {e}\n{text}"));
        doc.apply_merge().expect("merge keys");
        let Yaml::Mapping(top) = &mut doc else { panic!("a compose file is a mapping") };
        top.remove("name");
        for section in ["services", "networks", "volumes"] {
            let Some(Yaml::Mapping(entries)) = top.get_mut(section) else { continue };
            for (_, entry) in entries.iter_mut() {
                if entry.is_null() {
                    *entry = Yaml::Mapping(Default::default());
                }
                let Yaml::Mapping(entry) = entry else { continue };
                match entry.entry("labels".into()).or_insert_with(|| Yaml::Mapping(Default::default())) {
                    Yaml::Mapping(labels) => {
                        labels.insert(TEST_LABEL.into(), run_id().into());
                    }
                    Yaml::Sequence(labels) => labels.push(format!("{TEST_LABEL}={}", run_id()).into()),
                    other => panic!("labels of a test compose file: {other:?}"),
                }
            }
        }
        let text = serde_yaml::to_string(&doc).expect("YAML");
        std::fs::write(self.compose_file(), text).expect("write compose file");
    }

    /// Writes an example's compose file (`examples/<name>/compose.yaml`) as [`Stack::compose`] does.
    pub fn example(&self, name: &str) {
        let path = repo_root().join("examples").join(name).join("compose.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.compose(&text);
    }

    /// Writes the compose file exactly as given (for malformed files).
    pub fn compose_raw(&self, text: &str) {
        std::fs::write(self.compose_file(), text).expect("write compose file");
    }

    /// `shoal -f compose.yaml -p <name>` with this stack's state dir; add the verb and its flags.
    pub fn shoal(&self) -> Command {
        let mut cmd = shoal(self.dir());
        cmd.env("SHOAL_STATE_DIR", self.state_dir());
        if let Some(host) = std::env::var_os("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", host);
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd.arg("-f").arg(self.compose_file()).args(["-p", &self.name]);
        cmd
    }

    /// Runs a verb to completion; a run that takes longer than [`COMMAND_TIMEOUT`] is killed
    /// and fails the test (rather than hanging the suite).
    pub fn run(&self, args: &[&str]) -> Run {
        run_with_timeout(self.shoal().args(args), COMMAND_TIMEOUT)
    }

    /// Runs a verb that must succeed.
    pub fn ok(&self, args: &[&str]) -> Run {
        let out = self.run(args);
        assert_eq!(
            out.code, 0,
            "shoal {args:?} exited {}:\nstdout:\n{}\nstderr:\n{}",
            out.code, out.stdout, out.stderr
        );
        out
    }

    /// `shoal ps --format json` (with `-a` if `all`), as an array of containers.
    pub fn ps_json(&self, all: bool) -> Vec<Json> {
        let mut args = vec!["ps", "--format", "json"];
        if all {
            args.push("-a");
        }
        let out = self.ok(&args);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("ps --format json is not JSON ({e}):\n{}", out.stdout))
    }

    /// The stacks `shoal ls -q` lists.
    pub fn ls(&self) -> Vec<String> {
        self.ok(&["ls", "-q"]).stdout.lines().map(str::to_string).collect()
    }

    fn filter(&self) -> String {
        format!("label={PROJECT_LABEL}={}", self.name)
    }

    /// Ids of the project's containers (any state), per the engine.
    pub fn container_ids(&self) -> Vec<String> {
        docker_ok(&["ps", "-aq", "--no-trunc", "--filter", &self.filter()]).lines().map(str::to_string).collect()
    }

    /// The project's containers (any state) by name, inspected.
    pub fn containers(&self) -> Vec<Json> {
        let mut all: Vec<Json> = self.container_ids().iter().map(|id| inspect(id)).collect();
        all.sort_by_key(|c| c["Name"].as_str().unwrap_or_default().to_string());
        all
    }

    /// `<project>-<service>-<n>`, inspected.
    pub fn container(&self, service: &str, number: u32) -> Json {
        inspect(&self.container_name(service, number))
    }

    pub fn container_name(&self, service: &str, number: u32) -> String {
        format!("{}-{service}-{number}", self.name)
    }

    /// Names of the project's networks, per the engine (by label, or by the `<project>_` prefix).
    pub fn networks(&self) -> Vec<String> {
        self.named_objects("network")
    }

    /// Names of the project's volumes, per the engine (by label, or by the `<project>_` prefix).
    pub fn volumes(&self) -> Vec<String> {
        self.named_objects("volume")
    }

    fn named_objects(&self, kind: &str) -> Vec<String> {
        let labelled = docker_ok(&[kind, "ls", "-q", "--filter", &self.filter()]);
        let all = docker_ok(&[kind, "ls", "--format", "{{.Name}}"]);
        let prefix = format!("{}_", self.name);
        let mut names: Vec<String> = all.lines().filter(|n| n.starts_with(&prefix)).map(str::to_string).collect();
        for id in labelled.lines() {
            let name = inspect(id)["Name"].as_str().unwrap_or(id).to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.sort();
        names
    }

    /// Removes every container, network and volume of the project (by label or name prefix).
    fn cleanup(&self) {
        let mut containers = self.container_ids();
        let prefix = format!("{}-", self.name);
        let by_name = docker(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]);
        for line in by_name.stdout.lines() {
            if let Some((id, name)) = line.split_once(' ') {
                if name.starts_with(&prefix) && !containers.iter().any(|c| c == id) {
                    containers.push(id.to_string());
                }
            }
        }
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            docker(&args);
        }
        let networks = self.networks();
        if !networks.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(networks.iter().map(String::as_str));
            docker(&args);
        }
        let volumes = self.volumes();
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            docker(&args);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Never panic here: a panic while a failing test unwinds would abort the whole binary.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cleanup()));
        if result.is_err() {
            eprintln!("warning: cleaning up the Docker objects of {} failed", self.name);
        }
    }
}

/// A container's label.
pub fn label<'a>(container: &'a Json, key: &str) -> &'a str {
    container["Config"]["Labels"][key].as_str().unwrap_or_default()
}

/// A container's `State.<key>` timestamp.
pub fn state_time(container: &Json, key: &str) -> u128 {
    docker_time(container["State"][key].as_str().unwrap_or_else(|| panic!("State.{key} in {container}")))
}

/// Lines of `text` that start with `error:`.
pub fn error_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("error:")).collect()
}
