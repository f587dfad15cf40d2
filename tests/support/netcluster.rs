//! A cluster of `shoal server` managers, each in its own container on a private Docker network,
//! so that a test can cut one off (`docker network disconnect`) and heal it again.
//!
//! Nothing can be pulled, so the managers' image is built offline for each cluster: a rootfs of
//! Debian's static busybox (every applet linked), the `shoal` binary this test was built with
//! (stripped) and the shared libraries `ldd` lists for it (with the dynamic loader) at their own
//! paths, plus an idle compose file ([`IDLE_COMPOSE`]: one service with no replicas, so writes
//! need no containers). The managers run with `--no-agent` and advertise their container names,
//! which the network's DNS resolves again after a reconnect, whatever the new address.
//!
//! Every Docker object (image, network, containers) carries [`TEST_LABEL`] with a value unique to
//! the cluster, plus [`OWNER_LABEL`] naming the test process (host and pid); dropping the
//! [`NetCluster`] removes them all, pass or fail (and, when a test fails, first prints each
//! manager's log). Objects of test processes of this host that were killed before they could
//! clean up are removed the next time a cluster starts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::shoal_bin;
use crate::stack::{docker, run_id, run_with_timeout, wait_for, TEST_LABEL};
use crate::Run;

/// The id of the test process that created an object (for removing those of dead processes).
pub const OWNER_LABEL: &str = "io.shoal.test.owner";
/// The compose file baked into the managers' image: one service, `deploy: {replicas: 0}`.
pub const IDLE_COMPOSE: &str = "/etc/shoal-test/idle.yaml";
/// Where the managers serve, in their containers.
pub const PORT: u16 = 4700;
/// The longest a single `docker` or `shoal` command of these tests may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a cluster may take to form (3 voters and an agreed leader).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

const SHOAL: &str = "/usr/local/bin/shoal";
const LOCAL: &str = "127.0.0.1:4700";

/// One manager's answer to `cluster status --format json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub leader: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub answered_by: u64,
    /// Tasks in this manager's copy of the state.
    pub tasks: u64,
    pub managers: Vec<Member>,
}

/// One manager as `cluster status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub address: String,
    pub role: String,
    pub voter: bool,
    pub reachable: bool,
}

impl Status {
    fn parse(text: &str) -> Option<Status> {
        let json: Json = serde_json::from_str(text).ok()?;
        let number = |v: &Json| v.as_u64();
        let managers = json["managers"]
            .as_array()?
            .iter()
            .map(|m| {
                Some(Member {
                    id: number(&m["id"])?,
                    name: m["name"].as_str()?.to_string(),
                    address: m["address"].as_str()?.to_string(),
                    role: m["role"].as_str()?.to_string(),
                    voter: m["voter"].as_bool()?,
                    reachable: m["reachable"].as_bool()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Status {
            leader: number(&json["leader"])?,
            term: number(&json["term"])?,
            commit_index: number(&json["commit_index"])?,
            applied_index: number(&json["applied_index"])?,
            last_log_index: number(&json["last_log_index"])?,
            answered_by: number(&json["answered_by"])?,
            tasks: number(&json["counts"]["tasks"])?,
            managers,
        })
    }

    /// The member with this id.
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.managers.iter().find(|m| m.id == id)
    }

    /// The leader's name, if this manager knows a leader and lists it.
    pub fn leader_name(&self) -> Option<&str> {
        self.member(self.leader).map(|m| m.name.as_str())
    }

    /// How many managers are voters.
    pub fn voters(&self) -> usize {
        self.managers.iter().filter(|m| m.voter).count()
    }
}

/// A manager's container.
#[derive(Debug, Clone)]
pub struct Manager {
    /// The manager's name in the cluster (`m1`, `m2`, ...).
    pub name: String,
    /// Its container's name, which is also its address on the network (port [`PORT`]).
    pub container: String,
}

/// Managers in containers on a private network; see the module docs.
pub struct NetCluster {
    /// The value of [`TEST_LABEL`] on every object of this cluster.
    pub label: String,
    pub network: String,
    pub image: String,
    pub managers: Vec<Manager>,
}

impl NetCluster {
    /// Builds the image, creates the network and starts `size` managers (the first bootstraps,
    /// the others join it), then waits until every one of them counts `size` voters, all
    /// reachable, and names the same leader.
    pub fn start(size: usize) -> NetCluster {
        assert!(size >= 1, "a cluster has at least one manager");
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        remove_leftovers_of_dead_processes();
        let label = format!("{}-{}", run_id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let cluster = NetCluster {
            network: format!("shoal-ha-{label}"),
            image: format!("shoal-test/manager:{label}"),
            managers: (1..=size)
                .map(|n| Manager { name: format!("m{n}"), container: format!("shoal-ha-{label}-m{n}") })
                .collect(),
            label,
        };
        // From here on the guard exists: a failure below still removes what was made.
        build_image(&cluster.image, &cluster.labels());
        let mut create = vec!["network", "create", "--driver", "bridge"];
        let labels = cluster.label_flags();
        create.extend(labels.iter().map(String::as_str));
        create.push(&cluster.network);
        docker_must(&create);

        cluster.run_manager(0, None);
        let token = wait_for("the first manager's join token", FORM_TIMEOUT, || {
            let out = cluster.shoal(0, &["cluster", "join-token", "manager", "-q"]);
            let token = out.stdout.trim();
            (out.code == 0 && !token.is_empty()).then(|| token.to_string())
        });
        let first = format!("{}:{PORT}", cluster.managers[0].container);
        for i in 1..size {
            cluster.run_manager(i, Some((&first, &token)));
        }
        cluster.wait_until_formed(size);
        cluster
    }

    fn labels(&self) -> Vec<(String, String)> {
        vec![(TEST_LABEL.to_string(), self.label.clone()), (OWNER_LABEL.to_string(), owner())]
    }

    fn label_flags(&self) -> Vec<String> {
        self.labels().iter().map(|(k, v)| format!("--label={k}={v}")).collect()
    }

    fn run_manager(&self, i: usize, join: Option<(&str, &str)>) {
        let m = &self.managers[i];
        let advertise = format!("{}:{PORT}", m.container);
        let labels = self.label_flags();
        let mut args = vec!["run", "-d", "--name", &m.container, "--network", &self.network];
        args.extend(labels.iter().map(String::as_str));
        args.extend([
            self.image.as_str(),
            SHOAL,
            "--state-dir",
            "/state",
            "server",
            "--no-agent",
            "--listen",
            "0.0.0.0:4700",
            "--advertise-addr",
            &advertise,
            "--name",
            &m.name,
        ]);
        if let Some((address, token)) = join {
            args.extend(["--join", address, "--token", token]);
        }
        docker_must(&args);
    }

    /// Waits until every manager reports (from its own copy) `size` voters, all reachable, and
    /// the same leader in the same term.
    pub fn wait_until_formed(&self, size: usize) -> Status {
        poll(&format!("{size} voters agreeing on a leader"), FORM_TIMEOUT, || {
            let all = self.all_statuses().ok_or("a manager did not answer")?;
            let first = &all[0];
            let formed = |s: &Status| {
                s.leader != 0
                    && s.leader == first.leader
                    && s.term == first.term
                    && s.voters() == size
                    && s.managers.iter().all(|m| m.voter && m.reachable)
            };
            if all.iter().all(formed) {
                Ok(first.clone())
            } else {
                Err(format!("{all:?}"))
            }
        })
    }

    /// Index of the manager with this name.
    pub fn index(&self, name: &str) -> usize {
        self.managers.iter().position(|m| m.name == name).unwrap_or_else(|| panic!("no manager named {name}"))
    }

    /// Runs a command in manager `i`'s container.
    pub fn exec(&self, i: usize, command: &[&str]) -> Run {
        let mut args = vec!["exec", self.managers[i].container.as_str()];
        args.extend(command);
        run_with_timeout(Command::new("docker").args(&args), EXEC_TIMEOUT)
    }

    /// Runs `shoal -H 127.0.0.1:4700 <args>` in manager `i`'s container (it talks to that
    /// manager only, so no failover to another one).
    pub fn shoal(&self, i: usize, args: &[&str]) -> Run {
        let mut command = vec![SHOAL, "-H", LOCAL];
        command.extend(args);
        self.exec(i, &command)
    }

    /// `cluster status`, linearizable or (`stale`) manager `i`'s own copy; None if it fails.
    pub fn status(&self, i: usize, stale: bool) -> Option<Status> {
        let mut args = vec!["cluster", "status", "--format", "json"];
        if stale {
            args.insert(0, "--stale");
        }
        let out = self.shoal(i, &args);
        if out.code != 0 {
            return None;
        }
        Some(Status::parse(&out.stdout).unwrap_or_else(|| panic!("unexpected cluster status JSON:\n{}", out.stdout)))
    }

    /// Every manager's own view (`--stale`), in order; None if one of them does not answer.
    pub fn all_statuses(&self) -> Option<Vec<Status>> {
        (0..self.managers.len()).map(|i| self.status(i, true)).collect()
    }

    /// The stacks in manager `i`'s copy of the state (`--stale ls`), sorted by name, with their
    /// revisions; None if it does not answer.
    pub fn stacks(&self, i: usize) -> Option<Vec<(String, u64)>> {
        let out = self.shoal(i, &["--stale", "ls", "--format", "json"]);
        if out.code != 0 {
            return None;
        }
        let json: Json = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("ls --format json is not JSON ({e}):\n{}", out.stdout));
        let mut stacks: Vec<(String, u64)> = json
            .as_array()
            .unwrap_or_else(|| panic!("ls --format json is not an array:\n{}", out.stdout))
            .iter()
            .map(|s| (s["Name"].as_str().unwrap_or_default().to_string(), s["Revision"].as_u64().unwrap_or_default()))
            .collect();
        stacks.sort();
        Some(stacks)
    }

    /// The stack names in manager `i`'s copy of the state; None if it does not answer.
    pub fn stack_names(&self, i: usize) -> Option<Vec<String>> {
        self.stacks(i).map(|s| s.into_iter().map(|(name, _)| name).collect())
    }

    /// `shoal -p <project> -f IDLE_COMPOSE up -d` through manager `i`: a write of one stack.
    pub fn up(&self, i: usize, project: &str) -> Run {
        self.shoal(i, &["-p", project, "-f", IDLE_COMPOSE, "up", "-d"])
    }

    /// `shoal -p <project> -f IDLE_COMPOSE scale -d idle=<replicas>` through manager `i`: a write
    /// the manager proposes as it is (`up` makes a linearizable read before it deploys).
    pub fn scale(&self, i: usize, project: &str, replicas: u32) -> Run {
        self.shoal(i, &["-p", project, "-f", IDLE_COMPOSE, "scale", "-d", &format!("idle={replicas}")])
    }

    /// Cuts manager `i` off the network: it keeps running and answers on its own loopback only.
    pub fn disconnect(&self, i: usize) {
        docker_must(&["network", "disconnect", &self.network, &self.managers[i].container]);
    }

    /// Puts manager `i` back on the network (possibly with another address; it is known by name).
    pub fn connect(&self, i: usize) {
        docker_must(&["network", "connect", &self.network, &self.managers[i].container]);
    }

    /// The last lines of manager `i`'s log.
    pub fn logs(&self, i: usize) -> String {
        let out = docker(&["logs", "--tail", "60", &self.managers[i].container]);
        format!("{}{}", out.stdout, out.stderr)
    }

    fn cleanup(&self) {
        let filter = format!("label={TEST_LABEL}={}", self.label);
        let containers = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]);
        let ids: Vec<&str> = containers.stdout.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            docker(&args);
        }
        let networks = docker(&["network", "ls", "-q", "--filter", &filter]);
        for id in networks.stdout.split_whitespace() {
            docker(&["network", "rm", id]);
        }
        let images = docker(&["image", "ls", "-q", "--no-trunc", "--filter", &filter]);
        for id in images.stdout.split_whitespace() {
            docker(&["image", "rm", "-f", id]);
        }
        // By name too, in case a label did not make it onto an object.
        docker(&["image", "rm", "-f", &self.image]);
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        // Never panic here: a panic while a failing test unwinds would abort the whole binary.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if std::thread::panicking() {
                for (i, m) in self.managers.iter().enumerate() {
                    eprintln!("--- log of {} ({}) ---\n{}", m.name, m.container, self.logs(i));
                }
            }
            self.cleanup();
        }));
        if result.is_err() {
            eprintln!("warning: cleaning up the Docker objects labelled {TEST_LABEL}={} failed", self.label);
        }
    }
}

/// Polls `check` every 100 ms until it returns `Ok`, or panics after `timeout` naming `what`
/// and the last reason `check` gave for not being done.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) => {
                assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last: {why}")
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn docker_must(args: &[&str]) -> String {
    let out = run_with_timeout(Command::new("docker").args(args), EXEC_TIMEOUT);
    assert_eq!(out.code, 0, "docker {args:?} failed:\n{}{}", out.stdout, out.stderr);
    out.stdout
}

/// The value of [`OWNER_LABEL`]: `<host name>/<pid>` of this test process.
fn owner() -> String {
    format!("{}/{}", host_name(), std::process::id())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Removes containers, networks and images carrying an [`OWNER_LABEL`] of a process of this host
/// that no longer runs (a test run killed before its guards could clean up). Objects of other
/// hosts (containers sharing the engine) are left alone.
fn remove_leftovers_of_dead_processes() {
    let host = host_name();
    let dead = |owner: &str| {
        owner.rsplit_once('/').is_some_and(|(h, pid)| {
            h == host && pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
    };
    let filter = format!("label={OWNER_LABEL}");
    // `<id> <owner>` lines of `docker <kind> inspect` for the objects `docker <list...> -q` names.
    let owned_by_dead = |kind: &str, list: &[&str], labels: &str| -> Vec<String> {
        let mut args = list.to_vec();
        args.extend(["-q", "--filter", &filter]);
        let ids = docker(&args).stdout;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let format = format!("{{{{.Id}}}} {{{{index {labels} \"{OWNER_LABEL}\"}}}}");
        let mut args = vec![kind, "inspect", "--format", &format];
        args.extend(ids);
        docker(&args)
            .stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, owner)| dead(owner))
            .map(|(id, _)| id.to_string())
            .collect()
    };
    let containers = owned_by_dead("container", &["ps", "-a"], ".Config.Labels");
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        docker(&args);
    }
    for network in owned_by_dead("network", &["network", "ls"], ".Labels") {
        docker(&["network", "rm", &network]);
    }
    for image in owned_by_dead("image", &["image", "ls"], ".Config.Labels") {
        docker(&["image", "rm", "-f", &image]);
    }
}

/// Builds the managers' rootfs and imports it as `tag` with these labels.
fn build_image(tag: &str, labels: &[(String, String)]) {
    let started = Instant::now();
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.exists(), "/bin/busybox is missing: install Debian's busybox-static (scripts/setup does)");
    let scratch = tempfile::Builder::new().prefix("shoal-ha-rootfs-").tempdir().expect("temp dir");
    let root = scratch.path();
    for dir in ["bin", "etc/shoal-test", "tmp", "root", "proc", "sys", "dev", "var/run", "usr/local/bin", "state"] {
        std::fs::create_dir_all(root.join(dir)).expect("rootfs dir");
    }
    set_mode(&root.join("tmp"), 0o1777);
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    let applets = Command::new(busybox).arg("--list").output().expect("busybox --list");
    assert!(applets.status.success(), "/bin/busybox does not run (is it Debian's static build?)");
    for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet symlink");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    std::fs::write(
        root.join(IDLE_COMPOSE.trim_start_matches('/')),
        "services:\n  idle:\n    image: shoal-test/busybox:latest\n    deploy:\n      replicas: 0\n",
    )
    .expect("idle compose file");

    // The binary, stripped (a debug build is ~250 MB, mostly debug info), or as it is.
    let bin = shoal_bin();
    let target = root.join(SHOAL.trim_start_matches('/'));
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&target)
        .arg(&bin)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&bin, &target).expect("copy the shoal binary");
    }
    // Its shared libraries and the loader, at the paths ldd names (none for a static binary).
    let ldd = Command::new("ldd").arg(&bin).output().expect("run ldd");
    for library in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(library.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("a library lives in a directory")).expect("library dir");
        std::fs::copy(library, &to).unwrap_or_else(|e| panic!("copy {library}: {e}"));
    }

    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let mut import = Command::new("docker");
    import.args(["import", "--change", "ENV PATH=/bin:/usr/local/bin", "--change", "CMD [\"/bin/sh\"]"]);
    for (key, value) in labels {
        import.args(["--change", &format!("LABEL {key}={value}")]);
    }
    import.args(["-", tag]).stdin(Stdio::from(tar.stdout.take().expect("tar's stdout")));
    let out = Run::from(import.output().expect("run docker import"));
    let tar_status = tar.wait().expect("wait for tar");
    assert!(tar_status.success(), "tar of the manager rootfs failed");
    assert_eq!(out.code, 0, "docker import of {tag} failed:\n{}", out.stderr);
    eprintln!("netcluster: built {tag} in {:.1?}", started.elapsed());
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
