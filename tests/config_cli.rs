//! `shoal config` run as a separate process: output formats, flags, discovery, errors.

use serde_json::Value as Json;
use shoal_tests::{repo_root, run, shoal, Project};

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

#[test]
fn prints_the_normalized_example_stack() {
    let root = repo_root();
    let out = run(shoal(&root).args(["-f", "examples/webapp/compose.yaml", "config"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = yaml(&out.stdout);
    assert_eq!(doc["name"], "webapp");
    let services: Vec<&str> = doc["services"].as_mapping().unwrap().keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(services, ["api", "db", "web"]);
    // Long syntax, interpolation from the example's .env, project-prefixed names.
    assert_eq!(doc["services"]["web"]["ports"][0]["published"], "8080");
    assert_eq!(doc["services"]["web"]["depends_on"]["api"]["condition"], "service_healthy");
    assert_eq!(doc["volumes"]["dbdata"]["name"], "webapp_dbdata");
    assert_eq!(doc["networks"]["default"]["name"], "webapp_default");
    let command = doc["services"]["web"]["command"][2].as_str().unwrap();
    assert!(command.contains("hello from the webapp example"), "{command}");
}

#[test]
fn json_format_carries_the_same_model() {
    let root = repo_root();
    let out = run(shoal(&root).args(["-f", "examples/workers/compose.yaml", "config", "--format", "json"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: Json = serde_json::from_str(&out.stdout).expect("valid JSON");
    assert_eq!(doc["services"]["worker"]["deploy"]["replicas"], 3);
    assert_eq!(doc["services"]["worker"]["deploy"]["resources"]["limits"]["memory"], "33554432");
    assert!(doc["services"].get("monitor").is_none(), "profile-only service shown without its profile");
}

#[test]
fn lists_services_volumes_and_profiles() {
    let root = repo_root();
    let file = "examples/workers/compose.yaml";
    let services = run(shoal(&root).args(["-f", file, "config", "--services"]));
    assert_eq!(services.stdout, "queue\nworker\n");
    let with_profile = run(shoal(&root).args(["-f", file, "--profile", "monitoring", "config", "--services"]));
    assert_eq!(with_profile.stdout, "monitor\nqueue\nworker\n");
    let from_env = run(shoal(&root).args(["-f", file, "config", "--services"]).env("COMPOSE_PROFILES", "monitoring"));
    assert_eq!(from_env.stdout, "monitor\nqueue\nworker\n");
    let volumes = run(shoal(&root).args(["-f", file, "config", "--volumes"]));
    assert_eq!(volumes.stdout, "jobs\n");
    let profiles = run(shoal(&root).args(["-f", file, "config", "--profiles"]));
    assert_eq!(profiles.stdout, "monitoring\n");
}

#[test]
fn invalid_file_fails_with_location_key_and_hint_and_prints_nothing() {
    let p = Project::new("broken");
    p.write("broken/compose.yaml", "services:\n  web:\n    image: x\n    ports: [\"80:http\"]\n");
    let out = run(shoal(&p.path().join("broken")).args(["config"]));
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    let file = p.path().join("broken/compose.yaml");
    let expected = format!("error: {}:4:13: services.web.ports[0]: invalid port \"80:http\"", file.display());
    assert!(out.stderr.starts_with(&expected), "stderr was:\n{}", out.stderr);
    assert!(out.stderr.contains("hint: use [host_ip:][published:]target[/protocol]"), "{}", out.stderr);
    let quiet = run(shoal(&p.path().join("broken")).args(["config", "-q"]));
    assert_eq!(quiet.code, 1);
    assert!(quiet.stderr.contains("invalid port"));
}

#[test]
fn quiet_mode_validates_silently() {
    let root = repo_root();
    let out = run(shoal(&root).args(["-f", "examples/migration/compose.yaml", "config", "-q"]));
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (0, "", ""));
}

#[test]
fn discovers_files_upwards_and_names_the_project() {
    let p = Project::new("My.Shop");
    p.write("My.Shop/docker-compose.yml", "services:\n  app:\n    image: shoal-test/busybox:latest\n");
    p.write("My.Shop/docker-compose.override.yml", "services:\n  app:\n    environment: [LAYER=override]\n");
    let nested = p.path().join("My.Shop/src/deep");
    std::fs::create_dir_all(&nested).unwrap();
    let doc = yaml(&run(shoal(&nested).args(["config"])).stdout);
    assert_eq!(doc["name"], "myshop", "directory name, normalized");
    assert_eq!(doc["services"]["app"]["environment"]["LAYER"], "override");
    let by_env = yaml(&run(shoal(&nested).args(["config"]).env("COMPOSE_PROJECT_NAME", "from_env")).stdout);
    assert_eq!(by_env["name"], "from_env");
    let by_flag =
        yaml(&run(shoal(&nested).args(["-p", "flag", "config"]).env("COMPOSE_PROJECT_NAME", "from_env")).stdout);
    assert_eq!(by_flag["name"], "flag");
    let bad = run(shoal(&nested).args(["-p", "Bad Name", "config"]));
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("invalid project name"), "{}", bad.stderr);
}

#[test]
fn merges_several_files_and_uses_env_files() {
    let p = Project::new("merge");
    p.write("merge/base.yaml", "services:\n  app:\n    image: app:${TAG}\n    ports: [\"80:80\"]\n");
    p.write("merge/extra.yaml", "services:\n  app:\n    ports: [\"443:443\"]\n");
    p.write("merge/.env", "TAG=from-dotenv\n");
    p.write("merge/prod.env", "TAG=from-prod-env\n");
    let dir = p.path().join("merge");
    let doc = yaml(&run(shoal(&dir).args(["-f", "base.yaml", "-f", "extra.yaml", "config"])).stdout);
    assert_eq!(doc["services"]["app"]["image"], "app:from-dotenv");
    assert_eq!(doc["services"]["app"]["ports"].as_sequence().unwrap().len(), 2);
    let prod = yaml(&run(shoal(&dir).args(["-f", "base.yaml", "--env-file", "prod.env", "config"])).stdout);
    assert_eq!(prod["services"]["app"]["image"], "app:from-prod-env");
    let shell = yaml(&run(shoal(&dir).args(["-f", "base.yaml", "config"]).env("TAG", "from-shell")).stdout);
    assert_eq!(shell["services"]["app"]["image"], "app:from-shell", "the shell wins over .env");
}

#[test]
fn project_directory_anchors_relative_paths() {
    let p = Project::new("proj");
    p.write("proj/compose/app.yaml", "services:\n  app:\n    image: x\n    volumes: [\"./data:/data\"]\n");
    std::fs::create_dir_all(p.path().join("elsewhere")).unwrap();
    let root = p.path();
    let doc = yaml(
        &run(shoal(root).args(["-f", "proj/compose/app.yaml", "--project-directory", "elsewhere", "config"])).stdout,
    );
    assert_eq!(doc["name"], "elsewhere");
    let source = doc["services"]["app"]["volumes"][0]["source"].as_str().unwrap().to_string();
    assert_eq!(source, root.join("elsewhere/data").to_string_lossy());
}

#[test]
fn reports_unsupported_attributes() {
    let p = Project::new("unsup");
    p.write(
        "unsup/compose.yaml",
        "services:\n  app:\n    image: x\n    cgroup_parent: /custom\n    deploy:\n      update_config: {parallelism: 2}\n",
    );
    let out = run(shoal(&p.path().join("unsup")).args(["config", "--unsupported"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "services.app.cgroup_parent\nservices.app.deploy.update_config\n");
    let root = repo_root();
    let clean = run(shoal(&root).args(["-f", "examples/webapp/compose.yaml", "config", "--unsupported"]));
    assert_eq!(clean.stdout, "", "the examples use only what Shoal acts on");
}

#[test]
fn missing_compose_file_says_how_to_fix_it() {
    let p = Project::new("empty");
    let out = run(shoal(&p.path().join("empty")).args(["config"]));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no compose file found"), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
}

#[test]
fn output_loads_back_unchanged_and_reads_right_in_yaml_1_1() {
    let p = Project::new("reload");
    // `$$` is a literal `$`; `no`/`on`/`1:30` are strings here but not to a YAML 1.1 reader.
    p.write(
        "reload/compose.yaml",
        "services:\n  app:\n    image: x\n    restart: \"no\"\n    command: [echo, \"$$HOME\", \"$${HOME}\"]\n    \
         environment:\n      PRICE: costs $$5\n      DEBUG: \"on\"\n      WHEN: \"1:30\"\n",
    );
    let dir = p.path().join("reload");
    let first = run(shoal(&dir).args(["config"]).env("HOME", "/expanded"));
    assert_eq!(first.code, 0, "{}", first.stderr);
    for line in [
        "    restart: 'no'",
        "    - $$HOME",
        "    - $${HOME}",
        "      PRICE: costs $$5",
        "      DEBUG: 'on'",
        "      WHEN: '1:30'",
    ] {
        assert!(first.stdout.lines().any(|l| l == line), "no line {line:?} in:\n{}", first.stdout);
    }
    // The output is a compose file for the same project: loading it prints the same again.
    p.write("reload/printed/compose.yaml", &first.stdout);
    let again = run(shoal(&dir.join("printed")).args(["config"]).env("HOME", "/expanded"));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.stdout, first.stdout);
    let json = run(shoal(&dir).args(["config", "--format", "json"]));
    let doc: Json = serde_json::from_str(&json.stdout).expect("valid JSON");
    assert_eq!(doc["services"]["app"]["command"][1], "$$HOME");
    assert_eq!(doc["services"]["app"]["restart"], "no");
}
