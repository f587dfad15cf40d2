//! Bad input and a hostile environment: each fails with one clear error naming the thing, and
//! a malformed file changes nothing.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use shoal_tests::stack::{error_lines, run_id, run_with_timeout, Stack, COMMAND_TIMEOUT, IMAGE};

fn sleeper() -> String {
    format!("services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n")
}

#[test]
fn a_malformed_file_changes_nothing() {
    let s = Stack::new("malformed");
    // Line 5, column 13: the bad port.
    let broken =
        format!("services:\n  web:\n    image: {IMAGE}\n    command: [sleep, '600']\n    ports: [\"80:http\"]\n");
    s.compose_raw(&broken);
    let up = s.run(&["up", "-d"]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    let expected =
        format!("error: {}:5:13: services.web.ports[0]: invalid port \"80:http\"", s.compose_file().display());
    assert!(up.stderr.starts_with(&expected), "stderr:\n{}", up.stderr);
    assert_eq!(s.container_ids(), Vec::<String>::new());
    assert_eq!(s.networks(), Vec::<String>::new());
    assert!(!s.ls().contains(&s.name), "a failed up registered the stack");

    // Over a running stack: the containers stay as they are.
    s.compose(&sleeper());
    s.ok(&["up", "-d"]);
    let before = s.container_ids();
    let changed = broken.replace("sleep, '600'", "sleep, '700'");
    s.compose_raw(&changed);
    let up = s.run(&["up", "-d"]);
    assert_eq!(up.code, 1);
    assert!(up.stderr.starts_with(&expected), "stderr:\n{}", up.stderr);
    assert_eq!(s.container_ids(), before);
    assert_eq!(s.container("web", 1)["State"]["Status"], "running");
    let cmd = s.container("web", 1)["Config"]["Cmd"].clone();
    assert_eq!(cmd, serde_json::json!(["sleep", "600"]));

    // A file that parses but does not validate (unknown dependency) is rejected the same way.
    s.compose_raw(&format!("services:\n  web:\n    image: {IMAGE}\n    depends_on: [nosuch]\n"));
    let up = s.run(&["up", "-d"]);
    assert_eq!(up.code, 1);
    assert!(up.stderr.contains("nosuch"), "{}", up.stderr);
    assert!(up.stderr.contains(&format!("{}:4:", s.compose_file().display())), "{}", up.stderr);
    assert_eq!(s.container_ids(), before);
}

#[test]
fn wait_fails_with_the_reason_when_a_service_turns_unhealthy() {
    let s = Stack::new("unhealthy");
    s.compose(&format!(
        r#"
services:
  sick:
    image: {IMAGE}
    init: true
    command: [sleep, "600"]
    healthcheck: {{test: [CMD, "false"], interval: 500ms, retries: 2}}
  fine:
    image: {IMAGE}
    init: true
    command: [sleep, "600"]
"#
    ));
    let started = Instant::now();
    let up = s.run(&["up", "--wait", "--timeout", "60"]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    assert!(started.elapsed() < Duration::from_secs(45), "--wait did not notice the unhealthy service");
    let errors = error_lines(&up.stderr);
    let sick = s.container_name("sick", 1);
    assert!(
        errors.iter().any(|l| l.contains("service sick") && l.contains(&sick) && l.contains("unhealthy")),
        "{}",
        up.stderr
    );
    assert!(!errors.iter().any(|l| l.contains("service fine")), "a healthy service named as a failure:\n{}", up.stderr);
}

#[test]
fn wait_gives_up_after_the_timeout_naming_what_it_waited_for() {
    let s = Stack::new("waittimeout");
    // The first check runs only after an hour: the service stays `starting`.
    s.compose(&format!(
        r#"
services:
  slow:
    image: {IMAGE}
    init: true
    command: [sleep, "600"]
    healthcheck: {{test: [CMD, "true"], interval: 1h}}
  fine:
    image: {IMAGE}
    init: true
    command: [sleep, "600"]
"#
    ));
    let up = s.run(&["up", "--wait", "--timeout", "5"]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    let errors = error_lines(&up.stderr);
    assert!(errors.iter().any(|l| l.contains("gave up after 5s")), "{}", up.stderr);
    assert!(
        errors
            .iter()
            .any(|l| l.contains("service slow") && l.contains(&s.container_name("slow", 1)) && l.contains("starting")),
        "{}",
        up.stderr
    );
    assert!(!errors.iter().any(|l| l.contains("service fine")), "a converged service named as waiting:\n{}", up.stderr);
    assert!(!errors.iter().any(|l| l.contains("service -")), "{}", up.stderr);
}

#[test]
fn a_missing_image_is_one_error_naming_it() {
    let s = Stack::new("noimage");
    let image = format!("shoal-test/no-such-image-{}:1.0", run_id());
    s.compose(&format!("services:\n  web:\n    image: {image}\n    command: [sleep, '600']\n"));
    let up = s.run(&["up", "-d"]);
    assert_ne!(up.code, 0);
    let errors = error_lines(&up.stderr);
    assert_eq!(errors.len(), 1, "{}", up.stderr);
    assert!(errors[0].contains(&image), "{}", up.stderr);
    assert!(errors[0].contains("service web"), "{}", up.stderr);
    assert_eq!(s.container_ids(), Vec::<String>::new());
    // `ps -a`: the task never had a container, so it has no exit code to show either.
    let ps = s.ps_json(true);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0]["State"], "rejected", "{ps:?}");
    assert!(ps[0]["Reason"].as_str().is_some_and(|r| r.contains(&image)), "{ps:?}");
    let table = s.ok(&["ps", "-a"]).stdout;
    assert!(!table.contains("exited"), "{table}");
    s.ok(&["down"]);
}

#[test]
fn a_port_in_use_is_one_error_naming_it() {
    let s = Stack::new("portbusy");
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    s.compose(&format!(
        "services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    ports: ['{port}:80']\n"
    ));
    let up = s.run(&["up", "-d"]);
    assert_ne!(up.code, 0);
    let errors = error_lines(&up.stderr);
    assert_eq!(errors.len(), 1, "{}", up.stderr);
    let said = format!("host port {port} is already in use (another container or process holds it); choose another");
    assert!(errors[0].contains(&said), "{}", up.stderr);
    assert!(errors[0].contains("service web"), "{}", up.stderr);
    // One sentence: not the engine's text about endpoints and ids.
    for raw in ["driver failed", "userland proxy", "endpoint", "starting container "] {
        assert!(!errors[0].contains(raw), "{raw:?} in {}", up.stderr);
    }
    // `ps -a` gives the same reason, and does not call a container that never ran "exited".
    let ps = s.ps_json(true);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0]["State"], "failed", "{ps:?}");
    assert!(ps[0]["Reason"].as_str().is_some_and(|r| r.contains(&said)), "{ps:?}");
    drop(listener);
    s.ok(&["down"]);
    assert_eq!(s.container_ids(), Vec::<String>::new());
}

#[test]
fn an_unreachable_engine_is_one_error_naming_it() {
    let s = Stack::new("noengine");
    s.compose(&sleeper());
    for verb in [&["up", "-d"][..], &["ps"], &["down"], &["ls"]] {
        let out =
            run_with_timeout(s.shoal().env("DOCKER_HOST", "unix:///nonexistent.sock").args(verb), COMMAND_TIMEOUT);
        assert_eq!(out.code, 1, "{verb:?}: {}", out.stderr);
        let errors = error_lines(&out.stderr);
        assert_eq!(errors.len(), 1, "{verb:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{verb:?}: {}", out.stderr);
        assert!(errors[0].contains("Docker engine") && errors[0].contains("/nonexistent.sock"), "{}", out.stderr);
        assert_eq!(errors[0].matches("cannot reach").count(), 1, "the message repeats itself: {}", errors[0]);
    }
    assert_eq!(s.container_ids(), Vec::<String>::new());
}
