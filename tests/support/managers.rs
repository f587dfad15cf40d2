//! Replicated control planes on loopback: `shoal server --no-agent` managers, each a separate
//! process with its own state dir and port under one temp dir, talking real gRPC. [`Managers`]
//! starts, kills (`-9`), stops (SIGTERM) and restarts them, and kills every one it started when
//! dropped, pass or fail (printing their logs if the test failed). [`Client`] runs the CLI
//! against them — writes are `up -d` of a compose file whose one service has no replicas, so no
//! container (nor Docker) is ever needed. [`poll`] waits for a condition with a deadline.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::stack::run_with_timeout;
use crate::{shoal, Run};

/// The longest one CLI command may take (the CLI itself fails over for about 15 s).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a manager may take to start serving, or to exit after SIGTERM.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// The default deadline of the waits for the cluster to get somewhere (a leader, a catch-up).
pub const SETTLE: Duration = Duration::from_secs(30);

/// The tests of a binary run in parallel. One that loads the machine on purpose (a stress) takes
/// it [`alone`], so that the others' timings do not suffer from it; the others [`share`] it.
static MACHINE: RwLock<()> = RwLock::new(());

pub fn alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(PoisonError::into_inner)
}

pub fn share() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(PoisonError::into_inner)
}

/// Calls `check` every 50 ms until it gives a value, or panics after `timeout` with `what` and
/// the last reason `check` gave.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A loopback port nobody listens on, below the kernel's ephemeral range (32768 and up): a
/// stopped manager restarts on its port, which no outgoing connection may take meanwhile.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Test binaries running at the same time start at different places.
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = u32::from(NEXT.fetch_add(1, Ordering::SeqCst));
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN)
}

/// The compose file every write deploys: one service, no replicas.
const COMPOSE: &str = "services:\n  app:\n    image: busybox\n    deploy: {replicas: 0}\n";

/// Runs the CLI against the managers; cheap to clone and share between threads.
#[derive(Clone)]
pub struct Client {
    dir: PathBuf,
    compose: PathBuf,
}

impl Client {
    /// `shoal ARGS` to completion (killed, failing the test, after [`CLI_TIMEOUT`]).
    pub fn run(&self, args: &[&str]) -> Run {
        run_with_timeout(shoal(&self.dir).args(args), CLI_TIMEOUT)
    }

    /// `shoal ARGS`, which must exit 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let out = self.run(args);
        assert_eq!(
            out.code, 0,
            "shoal {args:?} exited {}:\nstdout:\n{}\nstderr:\n{}",
            out.code, out.stdout, out.stderr
        );
        out
    }

    /// One write: `shoal -H HOSTS -p STACK -f compose.yaml up -d`.
    pub fn up(&self, hosts: &str, stack: &str) -> Run {
        let compose = self.compose.to_string_lossy();
        self.run(&["-H", hosts, "-p", stack, "-f", &compose, "up", "-d"])
    }

    /// A write that must succeed.
    pub fn up_ok(&self, hosts: &str, stack: &str) {
        let out = self.up(hosts, stack);
        assert_eq!(out.code, 0, "up -d of {stack} on {hosts} exited {}:\n{}", out.code, out.stderr);
    }

    /// `cluster status --format json` (with `--stale`: the manager's own view, without a quorum).
    pub fn status(&self, host: &str, stale: bool) -> Result<Json, String> {
        let mut args = vec!["-H", host, "cluster", "status", "--format", "json"];
        if stale {
            args.push("--stale");
        }
        json(&args, self.run(&args))
    }

    /// The stacks and their revisions, per `ls --format json` (`--stale`: as `host` has them).
    pub fn stacks(&self, host: &str, stale: bool) -> Result<BTreeMap<String, u64>, String> {
        let mut args = vec!["-H", host, "ls", "--format", "json"];
        if stale {
            args.push("--stale");
        }
        let list = json(&args, self.run(&args))?;
        let list = list.as_array().ok_or_else(|| format!("ls printed no array: {list}"))?;
        Ok(list
            .iter()
            .map(|s| (s["Name"].as_str().unwrap_or_default().to_string(), s["Revision"].as_u64().unwrap_or(0)))
            .collect())
    }
}

fn json(args: &[&str], out: Run) -> Result<Json, String> {
    if out.code != 0 {
        return Err(format!("shoal {args:?} exited {}: {}", out.code, out.stderr.trim()));
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("shoal {args:?} printed no JSON ({e}): {}", out.stdout))
}

/// One manager: its name, port and state dir stay the same across restarts.
pub struct Manager {
    pub name: String,
    pub port: u16,
    pub state_dir: PathBuf,
    /// Its raft id (from the `serving on` line).
    pub id: u64,
    child: Option<Child>,
    logs: Vec<PathBuf>,
}

impl Manager {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Managers under one temp dir.
pub struct Managers {
    root: tempfile::TempDir,
    pub list: Vec<Manager>,
    /// Given to every manager's every start (e.g. `--snapshot-every 20`).
    server_args: Vec<String>,
    client: Client,
}

impl Managers {
    /// No managers yet.
    pub fn new(server_args: &[&str]) -> Managers {
        let root = tempfile::Builder::new().prefix("shoal-ha-").tempdir().expect("temp dir");
        let compose = root.path().join("compose.yaml");
        std::fs::write(&compose, COMPOSE).expect("write the compose file");
        std::fs::create_dir_all(root.path().join("logs")).expect("logs dir");
        let client = Client { dir: root.path().to_path_buf(), compose };
        Managers { root, list: Vec::new(), server_args: server_args.iter().map(|s| s.to_string()).collect(), client }
    }

    /// A cluster of `count` voting managers `m1`..: `m1` bootstraps it, the others join one at a
    /// time (a manager joins once the previous one votes).
    pub fn start(count: usize, server_args: &[&str]) -> Managers {
        let mut managers = Managers::new(server_args);
        managers.bootstrap("m1");
        for n in 2..=count {
            managers.join(&format!("m{n}"));
        }
        managers
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn addr(&self, i: usize) -> String {
        self.list[i].addr()
    }

    /// Every manager's address, comma-separated (the CLI fails over between them).
    pub fn hosts(&self) -> String {
        self.hosts_of(&(0..self.list.len()).collect::<Vec<_>>())
    }

    pub fn hosts_of(&self, managers: &[usize]) -> String {
        managers.iter().map(|i| self.addr(*i)).collect::<Vec<_>>().join(",")
    }

    /// The managers whose process runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.list.len()).filter(|i| self.list[*i].is_running()).collect()
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.list.iter().position(|m| m.id == id)
    }

    /// Starts a new manager with a fresh state dir and port: `shoal server` plus `extra`.
    /// Returns its index once it serves.
    pub fn add(&mut self, name: &str, extra: &[&str]) -> usize {
        let state_dir = self.root().join(name);
        let manager =
            Manager { name: name.to_string(), port: free_port(), state_dir, id: 0, child: None, logs: Vec::new() };
        self.list.push(manager);
        let i = self.list.len() - 1;
        self.spawn(i, extra);
        i
    }

    /// Starts a new cluster with manager `name`.
    pub fn bootstrap(&mut self, name: &str) -> usize {
        self.add(name, &[])
    }

    /// Adds manager `name` to the cluster, with the manager token from a running manager, and
    /// waits until it votes.
    pub fn join(&mut self, name: &str) -> usize {
        let hosts = self.hosts_of(&self.running());
        let token = self.client.ok(&["-H", &hosts, "cluster", "join-token", "manager", "-q"]).stdout.trim().to_string();
        let i = self.add(name, &["--join", &hosts, "--token", &token]);
        let id = self.list[i].id;
        poll(&format!("{name} to become a voting manager"), SETTLE, || {
            let status = self.leader_status()?;
            match manager_entry(&status, id) {
                Some(m) if m["voter"] == true && m["reachable"] == true => Ok(()),
                other => Err(format!("its entry in the leader's status: {other:?}")),
            }
        });
        i
    }

    /// Starts a stopped manager again from its state dir (same name and port).
    pub fn restart(&mut self, i: usize) {
        self.restart_with(i, &[]);
    }

    /// Starts a stopped manager again with `extra` arguments (e.g. `--force-new-cluster`).
    pub fn restart_with(&mut self, i: usize, extra: &[&str]) {
        assert!(!self.list[i].is_running(), "{} is still running", self.list[i].name);
        self.spawn(i, extra);
    }

    fn spawn(&mut self, i: usize, extra: &[&str]) {
        let log = self.root().join("logs").join(format!("{}.{}.log", self.list[i].name, self.list[i].logs.len()));
        let manager = &self.list[i];
        let mut cmd = shoal(self.root());
        cmd.env("SHOAL_LOG", "info").env("NO_COLOR", "1");
        cmd.arg("--state-dir").arg(&manager.state_dir);
        cmd.args(["server", "--no-agent", "--listen", &manager.addr(), "--name", &manager.name]);
        cmd.args(&self.server_args).args(extra);
        let stderr = File::create(&log).expect("create the manager's log");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let manager = &mut self.list[i];
        manager.child = Some(child);
        manager.logs.push(log.clone());
        let name = manager.name.clone();
        let id = poll(&format!("{name} to serve"), PROCESS_TIMEOUT, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(id) = serving_id(&text) {
                return Ok(id);
            }
            let child = manager.child.as_mut().expect("just started");
            match child.try_wait() {
                Ok(Some(status)) => {
                    manager.child = None;
                    panic!("{name} ({cmd:?}) exited ({status}) before serving:\n{text}")
                }
                _ => Err(format!("its log so far:\n{text}")),
            }
        });
        if manager.id != 0 {
            assert_eq!(manager.id, id, "{name} came back with another raft id");
        }
        manager.id = id;
    }

    /// Kills the manager with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.list[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the manager with SIGTERM; it must exit 0 within [`PROCESS_TIMEOUT`].
    pub fn stop(&mut self, i: usize) {
        let name = self.list[i].name.clone();
        let Some(mut child) = self.list[i].child.take() else { return };
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "cannot send SIGTERM to {name}");
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                _ if Instant::now() >= deadline => break None,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not exit within {PROCESS_TIMEOUT:?} of SIGTERM");
        };
        assert!(status.success(), "{name} exited with {status} after SIGTERM:\n{}", self.log_tail(i, 30));
    }

    /// `cluster status --format json` from manager `i`.
    pub fn status(&self, i: usize, stale: bool) -> Result<Json, String> {
        self.client.status(&self.addr(i), stale)
    }

    /// Manager `i`'s own copy of the stacks (`--stale ls`).
    pub fn stacks(&self, i: usize) -> Result<BTreeMap<String, u64>, String> {
        self.client.stacks(&self.addr(i), true)
    }

    /// The leader's own `--stale` status, from whichever running manager leads now.
    pub fn leader_status(&self) -> Result<Json, String> {
        let mut seen = Vec::new();
        for i in self.running() {
            match self.status(i, true) {
                Ok(s) if s["leader"].as_u64().is_some_and(|l| l != 0 && Some(l) == s["answered_by"].as_u64()) => {
                    return Ok(s)
                }
                Ok(s) => seen.push(format!("{} sees leader {}", self.list[i].name, s["leader"])),
                Err(e) => seen.push(e),
            }
        }
        Err(format!("no running manager leads: {seen:?}"))
    }

    /// Waits until every manager in `among` names the same leader, one of `among`; its index.
    pub fn wait_for_leader(&self, among: &[usize]) -> usize {
        let names: Vec<&str> = among.iter().map(|i| self.list[*i].name.as_str()).collect();
        poll(&format!("a leader among {names:?}"), SETTLE, || {
            let mut leaders = Vec::new();
            for i in among {
                leaders.push(self.status(*i, true)?["leader"].as_u64().unwrap_or(0));
            }
            let leader = leaders[0];
            match self.index_of(leader) {
                Some(l) if leaders.iter().all(|x| *x == leader) && among.contains(&l) => Ok(l),
                _ => Err(format!("they name the leaders {leaders:?}")),
            }
        })
    }

    /// Waits until manager `i`'s own copy of the stacks is exactly `expected`.
    pub fn wait_for_stacks(&self, i: usize, expected: &BTreeMap<String, u64>) {
        let name = &self.list[i].name;
        poll(&format!("{name} to hold the expected {} stacks", expected.len()), SETTLE, || {
            let stacks = self.stacks(i)?;
            if &stacks == expected {
                return Ok(());
            }
            let missing: Vec<_> = expected.iter().filter(|(k, v)| stacks.get(*k) != Some(v)).collect();
            let extra: Vec<_> = stacks.iter().filter(|(k, _)| !expected.contains_key(*k)).collect();
            Err(format!("differs; expected but not held: {missing:?}; held but not expected: {extra:?}"))
        });
    }

    /// The last `lines` lines of every log of manager `i`.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let mut out = String::new();
        for log in &self.list[i].logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", log.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// The manager `id`'s entry in a status.
pub fn manager_entry(status: &Json, id: u64) -> Option<&Json> {
    status["managers"].as_array()?.iter().find(|m| m["id"].as_u64() == Some(id))
}

/// The id in a `shoal server: manager NAME (id ID) serving on ADDR` line.
fn serving_id(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(" serving on "))?;
    let (_, rest) = line.split_once("(id ")?;
    rest.split_once(')')?.0.parse().ok()
}

impl Drop for Managers {
    fn drop(&mut self) {
        // The test failed: what each manager thought of the cluster, then what it logged.
        if std::thread::panicking() {
            for i in self.running() {
                let status = self.status(i, true).map(|s| s.to_string()).unwrap_or_else(|e| e);
                eprintln!("--- {} (--stale cluster status): {status}", self.list[i].name);
            }
        }
        for i in 0..self.list.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 0..self.list.len() {
                eprintln!("{}", self.log_tail(i, 60));
            }
        }
    }
}
