use super::*;

fn canon(yaml: &str) -> Value {
    let mut doc: Value = serde_yaml::from_str(yaml).unwrap();
    let mut warnings = Vec::new();
    canonicalize_document(&mut doc, &mut warnings).unwrap();
    doc
}

fn canon_err(yaml: &str) -> PathError {
    let mut doc: Value = serde_yaml::from_str(yaml).unwrap();
    canonicalize_document(&mut doc, &mut Vec::new()).unwrap_err()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

fn service(doc: &Value, attr: &str) -> Value {
    doc["services"]["s"][attr].clone()
}

#[test]
fn ports_short_forms_become_long() {
    let doc = canon(
        r#"services: {s: {ports: [80, "8080:80", "127.0.0.1:53:53/udp", "[::1]:9000:9000", "9000-9001:8000-8001", "3000-3005:3000", "::1:7000:7000"]}}"#,
    );
    let expected = yaml(
        r#"
- {mode: ingress, target: 80, protocol: tcp}
- {mode: ingress, target: 80, published: "8080", protocol: tcp}
- {mode: ingress, host_ip: 127.0.0.1, target: 53, published: "53", protocol: udp}
- {mode: ingress, host_ip: "::1", target: 9000, published: "9000", protocol: tcp}
- {mode: ingress, target: 8000, published: "9000", protocol: tcp}
- {mode: ingress, target: 8001, published: "9001", protocol: tcp}
- {mode: ingress, target: 3000, published: "3000-3005", protocol: tcp}
- {mode: ingress, host_ip: "::1", target: 7000, published: "7000", protocol: tcp}
"#,
    );
    assert_eq!(service(&doc, "ports"), expected);
}

#[test]
fn ports_long_form_gets_defaults() {
    let doc = canon("services: {s: {ports: [{target: 80, published: 8080}]}}");
    assert_eq!(service(&doc, "ports"), yaml(r#"[{target: 80, published: "8080", mode: ingress, protocol: tcp}]"#));
}

#[test]
fn invalid_ports_are_rejected_with_path() {
    let e = canon_err(r#"services: {s: {ports: ["80", "80:abc"]}}"#);
    assert_eq!(e.path.to_string(), "services.s.ports[1]");
    assert!(e.message.contains("invalid port \"80:abc\""), "{e}");
    assert!(e.hint.is_some());
    assert!(canon_err(r#"services: {s: {ports: ["70000"]}}"#).message.contains("not a port"));
    assert!(canon_err(r#"services: {s: {ports: ["80/xtp"]}}"#).message.contains("protocol"));
    assert!(canon_err(r#"services: {s: {ports: ["1-3:1-2"]}}"#).message.contains("different lengths"));
}

#[test]
fn volumes_short_forms_become_long() {
    let doc = canon(
        r#"services: {s: {volumes: ["/anon", "data:/data:ro,nocopy", "./site:/srv:ro,z", "~/x:/x", "/h:/c:rshared"]}}"#,
    );
    let expected = yaml(
        r#"
- {type: volume, target: /anon}
- {type: volume, source: data, target: /data, read_only: true, volume: {nocopy: true}}
- {type: bind, source: ./site, target: /srv, read_only: true, bind: {selinux: z, create_host_path: true}}
- {type: bind, source: ~/x, target: /x, bind: {create_host_path: true}}
- {type: bind, source: /h, target: /c, bind: {propagation: rshared, create_host_path: true}}
"#,
    );
    assert_eq!(service(&doc, "volumes"), expected);
}

#[test]
fn invalid_volumes_are_rejected() {
    let e = canon_err(r#"services: {s: {volumes: ["data:relative"]}}"#);
    assert_eq!(e.path.to_string(), "services.s.volumes[0]");
    assert!(e.message.contains("absolute"), "{e}");
    assert!(canon_err(r#"services: {s: {volumes: ["ab:/b:ro:d"]}}"#).message.contains("too many"));
    assert!(canon_err(r#"services: {s: {volumes: ["ab:/b:xx"]}}"#).message.contains("unknown mode"));
    assert!(canon_err(r#"services: {s: {volumes: [{target: /x}]}}"#).message.contains("type"));
}

#[test]
fn windows_bind_sources_keep_their_drive() {
    let doc = canon(r#"services: {s: {volumes: ['C:\data:/data']}}"#);
    assert_eq!(service(&doc, "volumes")[0]["source"], Value::String("C:\\data".into()));
}

#[test]
fn environment_list_and_map_forms() {
    let doc = canon("services: {s: {environment: [A=1, B=, C, D=x=y]}}");
    assert_eq!(service(&doc, "environment"), yaml(r#"{A: "1", B: "", C: null, D: "x=y"}"#));
    let doc = canon("services: {s: {environment: {A: 1, B: true, C: null, D: ''}}}");
    assert_eq!(service(&doc, "environment"), yaml(r#"{A: "1", B: "true", C: null, D: ""}"#));
}

#[test]
fn labels_without_value_are_empty() {
    let doc = canon("services: {s: {labels: [a=1, b]}}");
    assert_eq!(service(&doc, "labels"), yaml(r#"{a: "1", b: ""}"#));
}

#[test]
fn command_strings_split_shell_style() {
    let doc = canon(r#"services: {s: {command: "sh -c 'echo hi there'", entrypoint: null}}"#);
    assert_eq!(service(&doc, "command"), yaml(r#"[sh, -c, "echo hi there"]"#));
    assert_eq!(service(&doc, "entrypoint"), Value::Null);
    let doc = canon("services: {s: {command: []}}");
    assert_eq!(service(&doc, "command"), yaml("[]"));
    assert!(canon_err(r#"services: {s: {command: "echo 'unclosed"}}"#).message.contains("split"));
}

#[test]
fn healthcheck_test_forms() {
    let doc = canon(r#"services: {s: {healthcheck: {test: "wget -q localhost"}}}"#);
    assert_eq!(service(&doc, "healthcheck")["test"], yaml(r#"[CMD-SHELL, "wget -q localhost"]"#));
    let doc = canon(r#"services: {s: {healthcheck: {test: [NONE]}}}"#);
    assert_eq!(service(&doc, "healthcheck")["test"], yaml("[NONE]"));
    let e = canon_err(r#"services: {s: {healthcheck: {test: [wget, x]}}}"#);
    assert_eq!(e.path.to_string(), "services.s.healthcheck.test");
}

#[test]
fn depends_on_forms() {
    let doc = canon("services: {s: {depends_on: [db]}}");
    assert_eq!(service(&doc, "depends_on"), yaml("{db: {condition: service_started, required: true}}"));
    let doc = canon("services: {s: {depends_on: {db: {condition: service_healthy, restart: true}}}}");
    assert_eq!(service(&doc, "depends_on"), yaml("{db: {condition: service_healthy, restart: true, required: true}}"));
}

#[test]
fn extra_hosts_forms() {
    let doc = canon(r#"services: {s: {extra_hosts: ["a:1.2.3.4", "b=::1", "a=5.6.7.8"]}}"#);
    assert_eq!(service(&doc, "extra_hosts"), yaml(r#"{a: [1.2.3.4, 5.6.7.8], b: ["::1"]}"#));
    let doc = canon(r#"services: {s: {extra_hosts: {a: 1.2.3.4, b: ["[::1]", 10.0.0.1]}}}"#);
    assert_eq!(service(&doc, "extra_hosts"), yaml(r#"{a: [1.2.3.4], b: ["::1", 10.0.0.1]}"#));
}

#[test]
fn small_forms() {
    let doc = canon(
        r#"services: {s: {build: ./app, networks: [front], secrets: [db_pass], ulimits: {nofile: 1024, nproc: {soft: 1, hard: 2}},
           env_file: common.env, dns: 8.8.8.8, devices: ["/dev/fuse", "/dev/a:/dev/b:r"], restart: false, expose: [80]}}"#,
    );
    assert_eq!(service(&doc, "build"), yaml("{context: ./app}"));
    assert_eq!(service(&doc, "networks"), yaml("{front: null}"));
    assert_eq!(service(&doc, "secrets"), yaml("[{source: db_pass}]"));
    assert_eq!(service(&doc, "ulimits"), yaml("{nofile: {soft: 1024, hard: 1024}, nproc: {soft: 1, hard: 2}}"));
    assert_eq!(service(&doc, "env_file"), yaml("[{path: common.env, required: true}]"));
    assert_eq!(service(&doc, "dns"), yaml("[8.8.8.8]"));
    assert_eq!(
        service(&doc, "devices"),
        yaml("[{source: /dev/fuse, target: /dev/fuse}, {source: /dev/a, target: /dev/b, permissions: r}]")
    );
    assert_eq!(service(&doc, "restart"), yaml("'no'"));
    assert_eq!(service(&doc, "expose"), yaml("['80']"));
}

#[test]
fn tags_survive_canonicalization() {
    let doc = canon(r#"services: {s: {ports: !override ["80:80"]}}"#);
    let Value::Tagged(t) = service(&doc, "ports") else { panic!("tag lost") };
    assert_eq!(t.tag, Tag::new("override"));
    assert_eq!(t.value[0]["published"], Value::String("80".into()));
}

#[test]
fn legacy_external_names_and_version_warn() {
    let mut doc = yaml("version: '3.8'\nnetworks: {n: {external: {name: real}}}\nvolumes: {v: }");
    let mut warnings = Vec::new();
    canonicalize_document(&mut doc, &mut warnings).unwrap();
    assert_eq!(doc["networks"]["n"], yaml("{external: true, name: real}"));
    assert_eq!(doc["volumes"]["v"], yaml("{}"));
    assert_eq!(warnings.len(), 2);
    assert!(warnings[0].message.contains("obsolete"));
}

#[test]
fn wrong_types_name_what_was_expected() {
    let e = canon_err("services: {s: {environment: 5}}");
    assert_eq!(e.path.to_string(), "services.s.environment");
    assert!(e.message.contains("expected a list of KEY=VALUE strings or a mapping, got the number 5"), "{e}");
    let e = canon_err("services: [a]");
    assert_eq!(e.path.to_string(), "services");
}

#[test]
fn null_label_values_are_empty_labels_but_null_environment_stays_unset() {
    let doc = canon("services: {s: {labels: {a: , b: 42}, environment: {A: }, sysctls: {k: }}}");
    assert_eq!(service(&doc, "labels"), yaml("{a: '', b: '42'}"));
    assert_eq!(service(&doc, "environment"), yaml("{A: null}"));
    assert_eq!(service(&doc, "sysctls"), yaml("{k: ''}"));
    let doc = canon("volumes: {v: {driver_opts: {o: }}}");
    assert_eq!(doc["volumes"]["v"]["driver_opts"], yaml("{o: ''}"));
}

#[test]
fn service_network_driver_opts_become_strings() {
    let doc = canon("services: {s: {networks: {n: {driver_opts: {baz: 1, on: true}}, m: }}}");
    assert_eq!(service(&doc, "networks"), yaml("{n: {driver_opts: {baz: '1', on: 'true'}}, m: null}"));
}

#[test]
fn develop_watch_rules_take_short_forms() {
    let doc = canon(
        "services: {s: {develop: {watch: [{path: ./src, action: sync+exec, include: '*.go', ignore: tmp/, \
         exec: {command: app reload, environment: [A=1]}}]}}}",
    );
    let rule = &service(&doc, "develop")["watch"][0];
    assert_eq!(rule["include"], yaml("['*.go']"));
    assert_eq!(rule["ignore"], yaml("[tmp/]"));
    assert_eq!(rule["exec"], yaml("{command: [app, reload], environment: {A: '1'}}"));
}

#[test]
fn device_requests_take_list_options_and_numeric_ids() {
    let doc = canon(
        "services: {s: {deploy: {resources: {reservations: {devices: [{capabilities: [gpu], device_ids: [0, 1], \
         options: [a=b]}]}}}, gpus: [{driver: nvidia, count: 1, options: {x: 1}}]}}",
    );
    let device = &service(&doc, "deploy")["resources"]["reservations"]["devices"][0];
    assert_eq!(device["device_ids"], yaml("['0', '1']"));
    assert_eq!(device["options"], yaml("{a: b}"));
    assert_eq!(service(&doc, "gpus")[0]["options"], yaml("{x: '1'}"));
    assert_eq!(service(&canon("services: {s: {gpus: all}}"), "gpus"), yaml("all"));
}

#[test]
fn volume_targets_are_cleaned() {
    let doc = canon(
        r#"services: {s: {volumes: ["./html:/var/www/html/", "data:/a//b/./c", {type: tmpfs, target: /t/}, 'C:\x:C:\y']}}"#,
    );
    let targets: Vec<Value> =
        service(&doc, "volumes").as_sequence().unwrap().iter().map(|v| v["target"].clone()).collect();
    assert_eq!(targets, vec![yaml("/var/www/html"), yaml("/a/b/c"), yaml("/t"), yaml(r"'C:\y'")]);
}

#[test]
fn pre_start_hooks_and_no_cache_filter_take_short_forms() {
    let doc =
        canon("services: {s: {pre_start: [{command: echo hi, environment: [A]}], build: {no_cache_filter: base}}}");
    assert_eq!(service(&doc, "pre_start"), yaml("[{command: [echo, hi], environment: {A: null}}]"));
    assert_eq!(service(&doc, "build")["no_cache_filter"], yaml("[base]"));
}
