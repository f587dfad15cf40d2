//! The scale simulation's quick profile (`scripts/sim --quick`): 3 manager processes, 200
//! simulated nodes in two `shoal sim` processes, 5,000 tasks, then 50 nodes lost at once. It
//! checks that the scenario completes — every task runs, the lost nodes are marked down and
//! their tasks run elsewhere — and nothing about speed (docs/benchmarks.md has the numbers of the
//! full profile).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_tests::{repo_root, shoal_bin};

/// The profile takes well under a minute on an idle machine; the limit leaves room for a loaded one.
const LIMIT: Duration = Duration::from_secs(300);

/// Summary lines `key: value` of the script's output.
fn field<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(": ")))
}

/// `scripts/sim --quick` with more arguments and environment: its summary (stdout) and, for
/// failure messages, both outputs. Fails the test if the script fails or overruns [`LIMIT`].
fn quick_sim(args: &[&str], env: &[(&str, &str)]) -> (String, String, tempfile::TempDir) {
    // One at a time: two clusters of three managers and their sims on two cores would slow each
    // other into heartbeat trouble of their own.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(repo_root().join("scripts/sim"))
        .args(["--quick", "--out"])
        .arg(out.path())
        .args(args)
        .envs(env.iter().copied())
        .env("SHOAL_BIN", shoal_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: on a timeout the script, its managers and sims all go.
        .process_group(0)
        .spawn()
        .expect("scripts/sim runs");
    let pipe = |mut p: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = p.read_to_string(&mut text);
            text
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().expect("stdout")));
    let stderr = pipe(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let group = format!("-{}", child.id());
            // TERM first: the script's trap kills the processes it started.
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let grace = Instant::now() + Duration::from_secs(5);
            while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("scripts/sim --quick took over {LIMIT:?}\n{context}"));
    assert!(status.success(), "scripts/sim --quick failed ({status})\n{context}");
    (stdout, context, out)
}

#[test]
fn the_quick_scale_simulation_completes() {
    let (stdout, context, out) = quick_sim(&[], &[]);
    assert_eq!(field(&stdout, "result"), Some("ok"), "{context}");
    assert_eq!(field(&stdout, "nodes"), Some("200"), "{context}");
    let running: u64 = field(&stdout, "running").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(running >= 5000, "every task ran\n{context}");
    assert_eq!(field(&stdout, "services_short_of_replicas"), Some("0"), "{context}");
    let lost: u64 = field(&stdout, "lost_tasks").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(lost > 0, "the lost nodes had tasks\n{context}");
    for key in ["time_to_detect_lost_s", "time_to_lost_tasks_running_s"] {
        let value = field(&stdout, key).unwrap_or("n/a");
        assert!(value.parse::<f64>().is_ok(), "{key}: {value}\n{context}");
    }
    assert!(out.path().join("simA.csv").exists(), "the curves' data is written");
}

/// Three quarters of the nodes lost at once is a mass silence: the managers wait up to
/// `--node-down-hold` before marking them down (an overloaded manager or a network fault silences
/// nodes like that more often than their failing together), then reschedule as usual.
#[test]
fn most_nodes_lost_at_once_are_marked_down_only_after_the_hold() {
    const HOLD_S: f64 = 20.0;
    let (stdout, context, _out) =
        quick_sim(&["--lost", "150"], &[("SIM_SERVER_ARGS", &format!("--node-down-hold {HOLD_S}s"))]);
    assert_eq!(field(&stdout, "result"), Some("ok"), "{context}");
    assert_eq!(field(&stdout, "services_short_of_replicas"), Some("0"), "{context}");
    let detected: f64 = field(&stdout, "time_to_detect_lost_s").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // Counted from each node's last heartbeat, at most one period (2 s) before the kill.
    assert!(detected >= HOLD_S - 2.0, "marked down after {detected} s, before the hold\n{context}");
}
