//! `shoal up` / `down` / `logs` end to end: the real binary, its embedded cluster and the real
//! Docker engine. Containers, labels, the project network, name resolution, depends_on order
//! and health gating, one-shot jobs, attached mode, and what `down` leaves behind.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value as Json;
use shoal_tests::stack::{
    docker, docker_ok, error_lines, free_port, http_get, inspect, label, run_id, state_time, wait_for, Stack, IMAGE,
};

const SECOND: u128 = 1_000_000_000;

fn names(ps: &[Json]) -> Vec<&str> {
    ps.iter().map(|c| c["Name"].as_str().unwrap_or_default()).collect()
}

fn find<'a>(ps: &'a [Json], service: &str) -> &'a Json {
    ps.iter().find(|c| c["Service"] == service).unwrap_or_else(|| panic!("no {service} in {ps:#?}"))
}

/// Lines of `shoal logs` output for one container, without the prefix.
fn log_lines<'a>(output: &'a str, container: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix(container))
        .filter_map(|rest| rest.trim_start().strip_prefix('|'))
        .map(str::trim)
        .collect()
}

#[test]
fn webapp_example_runs_labelled_connected_and_in_dependency_order() {
    let mut s = Stack::new("webapp");
    let port = free_port();
    s.env("WEB_PORT", port.to_string());
    s.example("webapp");

    let up = s.ok(&["up", "-d"]);
    // The progress shows the gating as it happens.
    assert!(up.stderr.contains("waiting for db to be healthy"), "{}", up.stderr);
    assert!(up.stderr.contains("waiting for api to be healthy"), "{}", up.stderr);

    let ps = s.ps_json(false);
    let expected: Vec<String> = ["api", "db", "web"].iter().map(|svc| s.container_name(svc, 1)).collect();
    assert_eq!(names(&ps), expected);

    // Compose's labels (and the file's own), Shoal's, on every container.
    for entry in &ps {
        let service = entry["Service"].as_str().unwrap();
        let c = s.container(service, 1);
        assert_eq!(c["Id"], entry["ID"], "ps reports the engine's container id");
        assert_eq!(label(&c, "com.docker.compose.project"), s.name);
        assert_eq!(label(&c, "com.docker.compose.service"), service);
        assert_eq!(label(&c, "com.docker.compose.container-number"), "1");
        assert_eq!(label(&c, "com.docker.compose.oneoff"), "False");
        let hash = label(&c, "com.docker.compose.config-hash");
        assert!(hash.len() == 64 && hash.chars().all(|ch| ch.is_ascii_hexdigit()), "config-hash {hash:?}");
        assert_eq!(label(&c, "io.shoal.node"), entry["Node"].as_str().unwrap());
        assert_eq!(label(&c, "io.shoal.task"), entry["Task"].to_string());
        assert_eq!(label(&c, "io.shoal.test"), run_id());
        assert_eq!(label(&c, "com.example.stack"), "webapp");
        assert_eq!(entry["Project"], s.name.as_str());
        assert_eq!(entry["State"], "running");
        // On the project network, reachable by the service's name.
        let network = &c["NetworkSettings"]["Networks"][format!("{}_default", s.name)];
        let aliases: Vec<&str> =
            network["Aliases"].as_array().expect("aliases").iter().filter_map(Json::as_str).collect();
        assert!(aliases.contains(&service), "{service} aliases {aliases:?}");
    }
    let network = inspect(&format!("{}_default", s.name));
    assert_eq!(network["Labels"]["com.docker.compose.project"], s.name.as_str());
    assert_eq!(network["Labels"]["com.docker.compose.network"], "default");

    // Services reach each other by name.
    let web = s.container_name("web", 1);
    let api = s.container_name("api", 1);
    let status = docker_ok(&["exec", &web, "wget", "-q", "-O", "-", "http://api:8080/api/status"]);
    assert_eq!(status.trim(), r#"{"status":"ok"}"#);
    docker_ok(&["exec", &api, "wget", "-q", "-O", "/dev/null", "http://db:5432/ready"]);
    // The published port.
    let page = wait_for("the published port to answer", Duration::from_secs(15), || http_get(port, "/"));
    assert!(page.contains("hello from shoal"), "{page}");

    // db → api → web: each started only once the one below was healthy, which takes db at
    // least a second (it sleeps before it is ready) and api at least one 2s health interval.
    let started = |svc: &str| state_time(&s.container(svc, 1), "StartedAt");
    let (db, api, web) = (started("db"), started("api"), started("web"));
    assert!(api >= db + SECOND, "api started {}ms after db", (api as i128 - db as i128) / 1_000_000);
    assert!(web >= api + SECOND, "web started {}ms after api", (web as i128 - api as i128) / 1_000_000);

    s.ok(&["down"]);
    assert_eq!(s.container_ids(), Vec::<String>::new(), "down leaves no containers");
    assert_eq!(s.networks(), Vec::<String>::new(), "down leaves no networks");
    assert_eq!(s.volumes(), [format!("{}_dbdata", s.name)], "down keeps named volumes");
    assert!(s.ps_json(true).is_empty());
    assert!(!s.ls().contains(&s.name), "down forgets the stack");
}

#[test]
fn down_leaves_only_named_volumes_and_down_v_removes_them() {
    let s = Stack::new("downvol");
    s.compose(&format!(
        "services:\n  app:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    volumes: ['data:/data']\nvolumes:\n  data:\n"
    ));
    s.ok(&["up", "-d"]);
    let volume = format!("{}_data", s.name);
    assert_eq!(s.networks(), [format!("{}_default", s.name)]);
    assert_eq!(s.volumes(), std::slice::from_ref(&volume));
    assert_eq!(inspect(&volume)["Labels"]["com.docker.compose.project"], s.name.as_str());

    s.ok(&["down"]);
    assert_eq!(s.container_ids(), Vec::<String>::new());
    assert_eq!(s.networks(), Vec::<String>::new(), "down removes the project network");
    assert_eq!(s.volumes(), [volume], "down keeps named volumes");

    s.ok(&["up", "-d"]);
    s.ok(&["down", "-v"]);
    assert_eq!(s.container_ids(), Vec::<String>::new());
    assert_eq!(s.networks(), Vec::<String>::new());
    assert_eq!(s.volumes(), Vec::<String>::new(), "down -v removes named volumes");
}

#[test]
fn down_reports_a_network_the_engine_keeps_and_removes_everything_else() {
    let s = Stack::new("netbusy");
    s.compose(&format!(
        "services:\n  app:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    networks: [default, back]\nnetworks:\n  back:\n"
    ));
    s.ok(&["up", "-d"]);
    let (default, back) = (format!("{}_default", s.name), format!("{}_back", s.name));
    assert_eq!(s.networks(), [back.clone(), default.clone()]);
    // A container Shoal does not manage uses the default network, so the engine refuses to
    // remove it. (Named after the project: the stack's cleanup removes it.)
    let squatter = format!("{}-squatter", s.name);
    let label = format!("{}={}", shoal_tests::stack::TEST_LABEL, run_id());
    let squat = ["run", "-d", "--name", &squatter, "--label", &label, "--network", &default, IMAGE, "sleep", "600"];
    docker_ok(&squat);

    let down = s.run(&["down"]);
    assert_eq!(down.code, 1, "down hid the engine's refusal:\n{}", down.stderr);
    let errors = error_lines(&down.stderr);
    assert!(
        errors.iter().any(|l| l.contains(&default) && l.contains("active endpoints")),
        "no error naming {default} and the engine's reason:\n{}",
        down.stderr
    );
    // Everything else is gone: the stack's container, its other network, the stack itself.
    assert_eq!(docker(&["inspect", &s.container_name("app", 1)]).code, 1, "the app container is still there");
    assert_eq!(s.networks(), [default], "only the network in use stays");
    assert!(!s.ls().contains(&s.name), "down did not forget the stack");
}

#[test]
fn dependents_start_only_once_the_dependency_is_healthy() {
    let s = Stack::new("gating");
    // db becomes healthy 2s after it starts; api (service_healthy) records at start whether db
    // was ready.
    s.compose(&format!(
        r#"
services:
  db:
    image: {IMAGE}
    init: true
    command: [sh, -c, "sleep 2; touch /shared/ready; exec sleep 600"]
    volumes: ["shared:/shared"]
    healthcheck: {{test: [CMD, test, -f, /shared/ready], interval: 500ms, retries: 60}}
  api:
    image: {IMAGE}
    init: true
    command: [sh, -c, "if [ -f /shared/ready ]; then echo db-was-ready; else echo db-NOT-ready; fi; exec sleep 600"]
    volumes: ["shared:/shared"]
    depends_on: {{db: {{condition: service_healthy}}}}
volumes:
  shared:
"#
    ));
    s.ok(&["up", "-d"]);
    let db = s.container("db", 1);
    let api = s.container("api", 1);
    assert_eq!(db["State"]["Health"]["Status"], "healthy");
    let (db_start, api_start) = (state_time(&db, "StartedAt"), state_time(&api, "StartedAt"));
    assert!(api_start >= db_start + 2 * SECOND, "api started {}ms after db", (api_start - db_start) / 1_000_000);

    // `logs` shows the service's output, prefixed with its container name.
    let logs = s.ok(&["logs", "api"]);
    let container = s.container_name("api", 1);
    assert_eq!(log_lines(&logs.stdout, &container), ["db-was-ready"], "logs:\n{}", logs.stdout);
    assert!(logs.stdout.lines().all(|l| l.starts_with(&container)), "only api's output:\n{}", logs.stdout);
}

#[test]
fn service_started_waits_for_the_dependency_container_to_start() {
    // Timing-dependent: the dependents win the race against db's `docker start` mostly on a
    // loaded machine (seen in a full suite run with builds in parallel).
    let s = Stack::new("started");
    // db mounts a volume (a slower start than its dependents').
    let mut file = format!(
        "volumes:\n  data:\nservices:\n  db:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    volumes: ['data:/data']\n"
    );
    for n in 1..=4 {
        file.push_str(&format!(
            "  worker{n}:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    depends_on: {{db: {{condition: service_started}}}}\n"
        ));
    }
    s.compose(&file);
    s.ok(&["up", "-d"]);
    let db = state_time(&s.container("db", 1), "StartedAt");
    for n in 1..=4 {
        let worker = state_time(&s.container(&format!("worker{n}"), 1), "StartedAt");
        assert!(worker >= db, "worker{n} started {}ms before db", (db - worker) / 1_000_000);
    }
}

#[test]
fn migration_example_runs_the_job_before_the_app() {
    let s = Stack::new("migration");
    s.example("migration");
    s.ok(&["up", "-d"]);

    let db = s.container("db", 1);
    let migrate = s.container("migrate", 1);
    let app = s.container("app", 1);
    assert_eq!(migrate["State"]["Status"], "exited");
    assert_eq!(migrate["State"]["ExitCode"], 0);
    assert_eq!(app["State"]["Status"], "running");
    assert!(state_time(&migrate, "StartedAt") > state_time(&db, "StartedAt"));
    assert!(
        state_time(&app, "StartedAt") >= state_time(&migrate, "FinishedAt"),
        "app started before the migration finished"
    );

    // ps hides the finished job; ps -a shows how it ended.
    let ps = s.ps_json(false);
    assert_eq!(names(&ps), [s.container_name("app", 1), s.container_name("db", 1)]);
    let all = s.ps_json(true);
    assert_eq!(find(&all, "migrate")["State"], "exited (0)");
    assert_eq!(find(&all, "migrate")["ExitCode"], 0);

    let logs = s.ok(&["logs"]);
    assert_eq!(log_lines(&logs.stdout, &s.container_name("migrate", 1)), ["applying migrations", "done"]);
    assert_eq!(log_lines(&logs.stdout, &s.container_name("app", 1)), ["schema version 3"]);
    let app_only = s.ok(&["logs", "app"]);
    assert_eq!(app_only.stdout.lines().count(), 1, "{}", app_only.stdout);
}

#[test]
fn a_failed_job_keeps_its_dependents_from_starting() {
    let s = Stack::new("failedjob");
    s.compose(&format!(
        r#"
services:
  migrate:
    image: {IMAGE}
    command: [sh, -c, "echo cannot migrate; exit 3"]
  app:
    image: {IMAGE}
    init: true
    command: [sleep, "600"]
    depends_on: {{migrate: {{condition: service_completed_successfully}}}}
"#
    ));
    let up = s.run(&["up", "-d"]);
    assert_ne!(up.code, 0, "up succeeded although the job failed:\n{}", up.stderr);
    let errors = error_lines(&up.stderr);
    assert!(errors.iter().any(|l| l.contains("migrate") && l.contains('3')), "{}", up.stderr);
    assert_eq!(docker(&["inspect", &s.container_name("app", 1)]).code, 1, "the app container was created");
    let ps = s.ps_json(true);
    let app = find(&ps, "app");
    assert_eq!(app["State"], "pending");
    assert!(app["Reason"].as_str().unwrap().contains("migrate"), "{app}");
}

#[test]
fn ps_shows_published_ports() {
    let s = Stack::new("ports");
    let port = free_port();
    s.compose(&format!(
        "services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [httpd, -f, -p, '80']\n    ports: ['{port}:80']\n"
    ));
    s.ok(&["up", "-d"]);
    let ps = s.ps_json(false);
    let publishers = ps[0]["Publishers"].as_array().expect("Publishers");
    assert!(publishers.iter().any(|p| p.as_str().unwrap_or_default().contains(&format!(":{port}->80/tcp"))), "{ps:#?}");
    let table = s.ok(&["ps"]);
    assert!(table.stdout.contains(&format!(":{port}->80/tcp")), "{}", table.stdout);
}

#[test]
fn attached_up_follows_the_logs_and_ctrl_c_stops_the_stack() {
    let s = Stack::new("attached");
    s.compose(&format!(
        "services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sh, -c, 'echo hello-attached; exec sleep 600']\n"
    ));
    let mut child = s.shoal().arg("up").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn shoal up");
    let stdout = lines(child.stdout.take().expect("piped stdout"));
    let stderr = lines(child.stderr.take().expect("piped stderr"));
    let mut child = KillOnDrop(Some(child));
    // The container runs (per the engine; no other shoal process may start before `up` has
    // taken the state dir, see `a_verb_racing_another_process_on_the_state_dir_succeeds`) ...
    let name = s.container_name("web", 1);
    wait_for("web to run", Duration::from_secs(60), || {
        let out = docker(&["inspect", "--format", "{{.State.Running}}", &name]);
        (out.stdout.trim() == "true").then_some(())
    });
    // ... and a second process on the same state dir talks to the first one's cluster, which
    // learns of it a moment later.
    let web = wait_for("ps to show web running", Duration::from_secs(30), || {
        let ps = s.ps_json(false);
        ps.into_iter().find(|c| c["State"] == "running")
    });
    assert_eq!(web["Name"], name.as_str());
    assert!(s.ls().contains(&s.name));
    // `up` follows the logs, prefixed.
    let mut out = Vec::new();
    wait_for("up to print web's output", Duration::from_secs(30), || {
        out.extend(stdout.try_iter());
        out.iter().any(|l| l.contains("hello-attached")).then_some(())
    });

    let pid = child.0.as_ref().map(|c| c.id().to_string()).unwrap_or_default();
    assert_eq!(std::process::Command::new("kill").args(["-INT", &pid]).status().map(|s| s.success()).ok(), Some(true));
    let status = wait_for("shoal up to exit after Ctrl-C", Duration::from_secs(30), || {
        child.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    });
    out.extend(stdout.iter());
    let stdout = out.join("\n");
    let stderr: Vec<String> = stderr.iter().collect();
    let stderr = stderr.join("\n");
    assert!(status.success(), "shoal up exited {status}:\n{stderr}");
    assert_eq!(log_lines(&stdout, &name), ["hello-attached"], "stdout:\n{stdout}");
    assert!(stderr.contains("Gracefully stopping"), "{stderr}");
    assert_eq!(s.container_ids(), Vec::<String>::new(), "Ctrl-C removes the containers");
}

/// The lines a pipe delivers, as they come (the channel ends with the pipe).
fn lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A child process killed (and reaped) if the test ends before it does.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
