//! A stack over several `shoal` invocations: re-`up` recreates only what changed, `scale`
//! adds and removes the highest-numbered containers, state survives the CLI process, `ls` and
//! `ps --format json` report it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value as Json;
use shoal_tests::stack::{
    docker, inspect, label, run_with_timeout, state_time, wait_for, Stack, COMMAND_TIMEOUT, IMAGE,
};

/// service name → container id, per `ps --format json`, checked against the engine.
fn ids(s: &Stack) -> BTreeMap<String, String> {
    let ps = s.ps_json(false);
    let ids: BTreeMap<String, String> =
        ps.iter().map(|c| (c["Name"].as_str().unwrap().to_string(), c["ID"].as_str().unwrap().to_string())).collect();
    let mut engine = s.container_ids();
    engine.sort();
    let mut reported: Vec<String> = ids.values().cloned().collect();
    reported.sort();
    assert_eq!(reported, engine, "ps and the engine disagree about the containers");
    ids
}

fn two_services(api_env: &str) -> String {
    format!(
        r#"
services:
  db:
    image: {IMAGE}
    init: true
    command: [sleep, "600"]
  api:
    image: {IMAGE}
    init: true
    command: [sleep, "600"]
    environment: {{MODE: "{api_env}"}}
    depends_on: [db]
"#
    )
}

#[test]
fn re_up_recreates_nothing_unchanged_and_only_the_changed_service() {
    let s = Stack::new("reup");
    s.compose(&two_services("one"));
    s.ok(&["up", "-d"]);
    let first = ids(&s);
    assert_eq!(first.len(), 2);
    let db = s.container_name("db", 1);
    let api = s.container_name("api", 1);
    let db_started = state_time(&s.container("db", 1), "StartedAt");
    let api_hash = label(&s.container("api", 1), "com.docker.compose.config-hash").to_string();

    // Unchanged: the same containers, not even restarted.
    let again = s.ok(&["up", "-d"]);
    assert_eq!(ids(&s), first, "re-up of an unchanged file recreated containers:\n{}", again.stderr);
    assert_eq!(state_time(&s.container("db", 1), "StartedAt"), db_started);

    // api changed: only api is replaced.
    s.compose(&two_services("two"));
    s.ok(&["up", "-d"]);
    let after = ids(&s);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[&db], first[&db], "db did not change but was recreated");
    assert_ne!(after[&api], first[&api], "api changed but was not recreated");
    let new_api = s.container("api", 1);
    assert_ne!(label(&new_api, "com.docker.compose.config-hash"), api_hash);
    let env: Vec<&str> = new_api["Config"]["Env"].as_array().unwrap().iter().filter_map(Json::as_str).collect();
    assert!(env.contains(&"MODE=two"), "{env:?}");
    assert_eq!(state_time(&s.container("db", 1), "StartedAt"), db_started, "db was restarted");
    assert_eq!(docker(&["inspect", &first[&api]]).code, 1, "the old api container is still there");
}

#[test]
fn scale_adds_and_then_removes_the_highest_numbers() {
    let s = Stack::new("scale");
    s.compose(&format!("services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n"));
    s.ok(&["up", "-d"]);
    let one = ids(&s);
    let web1 = s.container_name("web", 1);

    s.ok(&["scale", "web=3"]);
    let three = ids(&s);
    let expected: Vec<String> = (1..=3).map(|n| s.container_name("web", n)).collect();
    assert_eq!(three.keys().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(three[&web1], one[&web1], "scaling up replaced web-1");
    for n in 1..=3 {
        let c = s.container("web", n);
        assert_eq!(c["State"]["Status"], "running");
        assert_eq!(label(&c, "com.docker.compose.container-number"), n.to_string());
    }
    let slots: Vec<u64> = s.ps_json(false).iter().map(|c| c["Slot"].as_u64().unwrap()).collect();
    assert_eq!(slots, [1, 2, 3]);

    // Down to one: web-2 and web-3 go (and are gone when scale returns), web-1 stays.
    s.ok(&["scale", "web=1"]);
    assert_eq!(ids(&s), one);
    assert_eq!(s.container_ids(), [one[&web1].clone()], "the engine still has the scaled-away containers");
    assert!(s.ps_json(true).iter().all(|c| c["Name"] == web1.as_str()), "{:#?}", s.ps_json(true));
}

#[test]
fn state_survives_the_cli_process_and_ls_lists_the_stack() {
    let s = Stack::new("state");
    s.compose(&format!(
        "services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n  job:\n    image: {IMAGE}\n    command: ['true']\n"
    ));
    // --wait: returns once the job has exited 0 (and that is recorded).
    s.ok(&["up", "--wait", "--timeout", "60"]);
    // Every call below is a new process that reopens the state dir.
    let ps = s.ps_json(false);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    let web = &ps[0];
    let engine = s.container("web", 1);
    assert_eq!(web["Name"], s.container_name("web", 1).as_str());
    assert_eq!(web["Service"], "web");
    assert_eq!(web["Project"], s.name.as_str());
    assert_eq!(web["ID"], engine["Id"]);
    assert_eq!(web["Node"], label(&engine, "io.shoal.node"));
    assert_eq!(web["Task"].to_string(), label(&engine, "io.shoal.task"));
    assert_eq!(web["Slot"], 1);
    assert_eq!(web["State"], "running");
    assert_eq!(web["Health"], "");
    assert_eq!(web["Status"], "running");
    assert_eq!(web["ExitCode"], Json::Null);
    let all = s.ps_json(true);
    let job = all.iter().find(|c| c["Service"] == "job").expect("ps -a shows the finished job");
    assert_eq!((job["State"].as_str(), job["ExitCode"].as_i64()), (Some("exited (0)"), Some(0)));

    assert!(s.ls().contains(&s.name), "ls -q does not list {}", s.name);
    let table = s.ok(&["ls"]).stdout;
    let row = table.lines().find(|l| l.split_whitespace().next() == Some(s.name.as_str())).expect(&table);
    assert!(row.contains("running"), "{table}");
    let text = s.ok(&["ps"]).stdout;
    let header: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SERVICE", "NODE", "STATE", "HEALTH", "PORTS", "REASON"]);
    assert!(text.contains(&s.container_name("web", 1)), "{text}");

    // A re-up from yet another process still knows the containers: nothing is recreated.
    s.ok(&["up", "-d"]);
    assert_eq!(s.ps_json(false)[0]["ID"], engine["Id"]);
    s.ok(&["down"]);
    assert!(!s.ls().contains(&s.name));
}

#[test]
fn separate_state_dirs_do_not_touch_each_others_containers() {
    let a = Stack::new("isolation");
    a.compose(&format!("services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n"));
    a.ok(&["up", "-d"]);
    let id = a.container_ids();
    // Another cluster (its own, empty, state dir) on the same engine.
    let other = tempfile::tempdir().expect("temp dir");
    let mut ls = shoal_tests::shoal(other.path());
    ls.env("SHOAL_STATE_DIR", other.path());
    if let Some(host) = std::env::var_os("DOCKER_HOST") {
        ls.env("DOCKER_HOST", host);
    }
    let out = run_with_timeout(ls.arg("ls"), COMMAND_TIMEOUT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(a.container_ids(), id);
    assert_eq!(a.container("web", 1)["State"]["Status"], "running", "another state dir's cluster stopped web");
}

#[test]
fn a_second_process_on_the_same_state_dir_is_quiet() {
    let s = Stack::new("second");
    s.compose(&format!(
        "services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sh, -c, 'echo hi; exec sleep 600']\n"
    ));
    s.ok(&["up", "-d"]);
    let follower = s.shoal().args(["logs", "-f"]).stdout(std::process::Stdio::null()).spawn().expect("logs -f");
    let _follower = Guard(follower);
    // The follower holds the state dir once its manager runs and has written its address.
    let address = s.state_dir().join("manager.addr");
    wait_for("logs -f to run its cluster", Duration::from_secs(20), || address.exists().then_some(()));
    let ps = s.ok(&["ps"]);
    assert!(ps.stdout.contains(&s.container_name("web", 1)), "{}", ps.stdout);
    assert!(!ps.stderr.contains("ERROR"), "{}", ps.stderr);
}

/// A child process killed (and reaped) when the test ends.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ps_in_a_new_process_shows_what_happened_meanwhile() {
    let s = Stack::new("meanwhile");
    s.compose(&format!("services:\n  job:\n    image: {IMAGE}\n    command: [sh, -c, 'sleep 2; exit 0']\n"));
    s.ok(&["up", "-d"]);
    let job = s.container_name("job", 1);
    wait_for("the job to exit", Duration::from_secs(20), || {
        (inspect(&job)["State"]["Status"] == "exited").then_some(())
    });
    let all = s.ps_json(true);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["State"], "exited (0)", "{all:#?}");
}

#[test]
fn a_verb_racing_another_process_on_the_state_dir_succeeds() {
    let s = Stack::new("race");
    s.compose(&format!("services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n"));
    s.ok(&["ls"]); // the state dir exists
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (first, first_done) = std::sync::mpsc::channel();
    let up = std::thread::scope(|scope| {
        // Ends the loop below however this closure ends (a timeout panics).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        // Someone runs `shoal ps` over and over (say, `watch shoal ps`) ...
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                s.run(&["ps"]);
                let _ = first.send(());
            }
        });
        let _stop = Stop(&stop);
        first_done.recv().expect("a first ps");
        // ... while `up` runs.
        run_with_timeout(s.shoal().args(["up", "-d"]), Duration::from_secs(30))
    });
    assert_eq!(up.code, 0, "{}", up.stderr);
    let ps = s.ps_json(false);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0]["State"], "running");
}

#[test]
fn ps_in_a_new_process_shows_a_starting_health() {
    let s = Stack::new("healthstart");
    // The first check runs only after an hour: the engine says `starting` all along.
    s.compose(&format!(
        "services:\n  slow:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    healthcheck: {{test: [CMD, 'true'], interval: 1h}}\n"
    ));
    s.ok(&["up", "-d"]);
    assert_eq!(s.container("slow", 1)["State"]["Health"]["Status"], "starting");
    let ps = s.ps_json(false);
    assert_eq!((ps[0]["State"].as_str(), ps[0]["Health"].as_str()), (Some("running"), Some("starting")), "{ps:#?}");
}
