//! Several nodes on one machine: one `shoal server --no-agent` manager (from [`managers`]), or a
//! highly-available group of them ([`Nodes::start_ha`]), and `shoal agent` processes that join
//! it, each with its own state dir and node name, all on the one local Docker engine (each agent
//! manages only the containers labelled with its node id). Agents and CLI runs are given every
//! manager's address.
//! [`Nodes`] starts, kills (`-9`), stops and restarts agents, and — pass or fail — kills every
//! process it started, then removes every container, network and volume labelled with one of
//! its nodes (the containers of agents killed on purpose included).
//!
//! Drop order matters: the agents must be gone before a test's [`Stack`] guard removes the
//! project's objects (a live agent would replace a removed container). Declare the `Stack` first
//! and the `Nodes` after it: locals drop in reverse order.
//!
//! [`managers`]: crate::managers
//! [`Stack`]: crate::stack::Stack

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::managers::{poll, Managers, PROCESS_TIMEOUT};
use crate::stack::{docker, docker_ok, Stack};
use crate::{shoal, Run};

/// The label the agents put on every engine object they create, valued with their node id.
pub const NODE_LABEL: &str = "io.shoal.node";

/// One `shoal agent` process: its name, labels and state dir stay the same across restarts.
pub struct Agent {
    pub name: String,
    pub labels: Vec<String>,
    pub state_dir: PathBuf,
    /// The node id the manager assigned (from the agent's state dir); empty before it joined.
    pub id: String,
    child: Option<Child>,
    logs: Vec<PathBuf>,
}

impl Agent {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// The managers and their agents.
pub struct Nodes {
    pub managers: Managers,
    pub agents: Vec<Agent>,
    token: String,
}

/// Agents sharing one engine may each create a project's network at the same moment; they settle
/// on one when the engine calls the name ambiguous. An engine in swarm mode (docker 20.10) does
/// not: it attaches the container to whichever duplicate and later fails its start with "Could
/// not attach to network ...: NotFound". Say so up front instead of failing obscurely.
fn assert_engine_not_in_swarm() {
    let state = docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert!(
        state.trim() != "active",
        "the Docker engine is in swarm mode (`docker swarm leave --force`, or wait for `scripts/bench up` \
         to finish): agents sharing one engine cannot settle duplicate networks there"
    );
}

impl Nodes {
    /// A new cluster: manager `m1` (no agent of its own) and one agent per `(name, labels)`, each
    /// joined and ready.
    pub fn start(agents: &[(&str, &[&str])]) -> Nodes {
        let mut managers = Managers::new(&[]);
        managers.bootstrap("m1");
        Nodes::with_managers(managers, agents)
    }

    /// A new highly-available cluster: `managers` voting managers `m1`.. (no agents of their
    /// own; see [`Managers::start`]) and one agent per `(name, labels)`, each given every
    /// manager's address, joined and ready.
    pub fn start_ha(managers: usize, agents: &[(&str, &[&str])]) -> Nodes {
        Nodes::with_managers(Managers::start(managers, &[]), agents)
    }

    fn with_managers(managers: Managers, agents: &[(&str, &[&str])]) -> Nodes {
        assert_engine_not_in_swarm();
        let token = managers
            .client()
            .ok(&["-H", &managers.hosts(), "cluster", "join-token", "worker", "-q"])
            .stdout
            .trim()
            .into();
        let mut nodes = Nodes { managers, agents: Vec::new(), token };
        for (name, labels) in agents {
            nodes.add_agent(name, labels);
        }
        nodes
    }

    /// Every manager's address, comma-separated, stopped ones included: what `-H` and the
    /// agents' `--join` get (the CLI fails over between them, agents follow the leader).
    pub fn addr(&self) -> String {
        self.managers.hosts()
    }

    /// Starts a new agent and waits until its node is ready; returns its index.
    pub fn add_agent(&mut self, name: &str, labels: &[&str]) -> usize {
        let state_dir = self.managers.root().join(format!("agent-{name}"));
        self.agents.push(Agent {
            name: name.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            state_dir,
            id: String::new(),
            child: None,
            logs: Vec::new(),
        });
        let i = self.agents.len() - 1;
        self.spawn(i);
        i
    }

    fn spawn(&mut self, i: usize) {
        let agent = &self.agents[i];
        let log = self.managers.root().join("logs").join(format!("{}.{}.log", agent.name, agent.logs.len()));
        let mut cmd = shoal(self.managers.root());
        if let Some(host) = std::env::var_os("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", host);
        }
        cmd.env("SHOAL_LOG", "info").env("NO_COLOR", "1");
        cmd.arg("--state-dir").arg(&agent.state_dir);
        cmd.args(["agent", "--join", &self.addr(), "--token", &self.token, "--name", &agent.name]);
        for label in &agent.labels {
            cmd.args(["--label", label]);
        }
        let stderr = File::create(&log).expect("create the agent's log");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let agent = &mut self.agents[i];
        agent.child = Some(child);
        agent.logs.push(log.clone());
        let (name, id_file) = (agent.name.clone(), agent.state_dir.join("node-id"));
        let id = poll(&format!("agent {name} to join"), PROCESS_TIMEOUT, || {
            if let Some(child) = agent.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    agent.child = None;
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("agent {name} exited ({status}) before it joined:\n{text}");
                }
            }
            let id = std::fs::read_to_string(&id_file).map_err(|e| format!("{}: {e}", id_file.display()))?;
            Ok(id.trim().to_string()).and_then(|id| if id.is_empty() { Err("empty id".into()) } else { Ok(id) })
        });
        if !agent.id.is_empty() {
            assert_eq!(agent.id, id, "{name} came back as another node");
        }
        agent.id = id;
        let id = agent.id.clone();
        self.wait_for_node(&name, "ready", |n| n["Status"] == "ready" && n["ID"] == id.as_str());
    }

    /// Kills agent `i` with SIGKILL (a crash, or the machine lost) and reaps it.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops agent `i` with SIGTERM; it must exit 0 (its containers keep running).
    pub fn stop_agent(&mut self, i: usize) {
        let name = self.agents[i].name.clone();
        let Some(mut child) = self.agents[i].child.take() else { return };
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "cannot send SIGTERM to agent {name}");
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                _ if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("agent {name} did not exit within {PROCESS_TIMEOUT:?} of SIGTERM");
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        assert!(status.success(), "agent {name} exited with {status} after SIGTERM");
    }

    /// Starts a stopped agent again from its state dir (the same node), and waits until ready.
    pub fn restart_agent(&mut self, i: usize) {
        assert!(!self.agents[i].is_running(), "agent {} is still running", self.agents[i].name);
        self.spawn(i);
    }

    /// The index of the agent named `name`.
    pub fn agent(&self, name: &str) -> usize {
        self.agents.iter().position(|a| a.name == name).unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// Node id → agent name, for reading `ps`'s NODE column.
    pub fn names(&self) -> BTreeMap<String, String> {
        self.agents.iter().map(|a| (a.id.clone(), a.name.clone())).collect()
    }

    /// `shoal -H MANAGER ARGS` for the stack (its compose file and project name).
    pub fn run(&self, stack: &Stack, args: &[&str]) -> Run {
        let addr = self.addr();
        let mut all = vec!["-H", addr.as_str()];
        all.extend_from_slice(args);
        stack.run(&all)
    }

    /// A command that must succeed.
    pub fn ok(&self, stack: &Stack, args: &[&str]) -> Run {
        let out = self.run(stack, args);
        assert_eq!(
            out.code, 0,
            "shoal {args:?} exited {}:\nstdout:\n{}\nstderr:\n{}",
            out.code, out.stdout, out.stderr
        );
        out
    }

    /// A command whose output is JSON.
    pub fn json(&self, stack: &Stack, args: &[&str]) -> Json {
        let out = self.ok(stack, args);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("shoal {args:?} printed no JSON ({e}):\n{}", out.stdout))
    }

    /// The stack's containers per `ps --format json`.
    pub fn ps(&self, stack: &Stack) -> Vec<Json> {
        self.json(stack, &["ps", "--format", "json"]).as_array().cloned().unwrap_or_default()
    }

    /// How many of `service`'s containers run on each node (by agent name), per `ps`.
    pub fn placement(&self, stack: &Stack, service: &str) -> BTreeMap<String, usize> {
        let names = self.names();
        let mut counts = BTreeMap::new();
        for c in self.ps(stack).iter().filter(|c| c["Service"] == service && c["State"] == "running") {
            let node = c["Node"].as_str().unwrap_or_default();
            *counts.entry(names.get(node).cloned().unwrap_or_else(|| node.to_string())).or_default() += 1;
        }
        counts
    }

    /// Waits until `service` runs exactly `expected` containers per node (agent names), and no
    /// other container of it is listed; returns the time it took.
    pub fn wait_for_placement(&self, stack: &Stack, service: &str, expected: &[(&str, usize)]) -> Duration {
        let started = Instant::now();
        let expected: BTreeMap<String, usize> = expected.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        poll(&format!("{service} to run {expected:?}"), Duration::from_secs(60), || {
            let ps = self.ps(stack);
            let listed = ps.iter().filter(|c| c["Service"] == service).count();
            let placement = self.placement(stack, service);
            if placement == expected && listed == expected.values().sum::<usize>() {
                Ok(())
            } else {
                Err(format!("running per node: {placement:?}; ps lists {listed}: {}", summary(&ps)))
            }
        });
        started.elapsed()
    }

    /// `node inspect NODE --format json`: the node's entry.
    pub fn inspect(&self, stack: &Stack, node: &str) -> Json {
        let all = self.json(stack, &["node", "inspect", node, "--format", "json"]);
        all.as_array().and_then(|a| a.first()).cloned().unwrap_or_else(|| panic!("node inspect {node}: {all}"))
    }

    /// Waits until `node inspect NAME` satisfies `check`.
    pub fn wait_for_node(&self, name: &str, what: &str, check: impl Fn(&Json) -> bool) -> Json {
        let client = self.managers.client();
        let addr = self.addr();
        poll(&format!("node {name} to be {what}"), Duration::from_secs(60), || {
            let out = client.run(&["-H", &addr, "node", "inspect", name, "--format", "json"]);
            if out.code != 0 {
                return Err(out.stderr);
            }
            let all: Json = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
            let node = all.as_array().and_then(|a| a.first()).cloned().unwrap_or_default();
            if check(&node) {
                Ok(node)
            } else {
                Err(format!("{node}"))
            }
        })
    }

    /// Ids of the engine's containers (any state) labelled with agent `i`'s node id.
    pub fn containers_of(&self, i: usize) -> Vec<String> {
        let filter = format!("label={NODE_LABEL}={}", self.agents[i].id);
        docker_ok(&["ps", "-aq", "--no-trunc", "--filter", &filter]).lines().map(str::to_string).collect()
    }

    /// Everything agent `i` logged, all its runs (to look for a line).
    pub fn log(&self, i: usize) -> String {
        self.agents[i].logs.iter().map(|log| std::fs::read_to_string(log).unwrap_or_default()).collect()
    }

    /// The last `lines` lines of every log of agent `i`.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let mut out = String::new();
        for log in &self.agents[i].logs {
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

    /// Removes every container, network and volume labelled with one of the agents' node ids.
    fn cleanup(&self) {
        for agent in self.agents.iter().filter(|a| !a.id.is_empty()) {
            let filter = format!("label={NODE_LABEL}={}", agent.id);
            let containers = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]).stdout;
            let containers: Vec<&str> = containers.lines().collect();
            if !containers.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(containers);
                docker(&args);
            }
            for kind in ["network", "volume"] {
                let found = docker(&[kind, "ls", "-q", "--filter", &filter]).stdout;
                let found: Vec<&str> = found.lines().collect();
                if !found.is_empty() {
                    let mut args = vec![kind, "rm"];
                    args.extend(found);
                    docker(&args);
                }
            }
        }
    }
}

/// `name@node:state` of each listed container, for failure messages.
fn summary(ps: &[Json]) -> String {
    ps.iter()
        .map(|c| {
            let node = c["Node"].as_str().unwrap_or_default();
            format!("{}@{}:{} {}", c["Name"].as_str().unwrap_or_default(), node, c["State"], c["Reason"])
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
        if std::thread::panicking() {
            for i in 0..self.agents.len() {
                eprintln!("{}", self.log_tail(i, 40));
            }
        }
        // Never panic here: a panic while a failing test unwinds would abort the whole binary.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cleanup()));
        if result.is_err() {
            eprintln!("warning: cleaning up the Docker objects of the test's nodes failed");
        }
        // The manager goes with `self.managers`, after this.
    }
}
