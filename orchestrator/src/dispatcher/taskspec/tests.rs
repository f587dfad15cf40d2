use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use shoal_agent::spec::*;

use super::*;
use crate::compose::loader::{load_in_memory, LoadOptions};
use crate::compose::support::{unsupported_attributes, MAPPED_SERVICE_ATTRIBUTES};
use crate::store::state::{ServiceId, TaskState};

/// Loads compose text through the real loader (short syntax, defaults, engine names).
fn load(yaml: &str) -> Project {
    let file = PathBuf::from("/proj/compose.yaml");
    let options = LoadOptions {
        files: vec![file.clone()],
        working_dir: PathBuf::from("/proj"),
        os_env: BTreeMap::from([("HOME".to_string(), "/home/u".to_string())]),
        ..LoadOptions::default()
    };
    load_in_memory(&options, BTreeMap::from([(file, yaml.to_string())])).expect("loads").project
}

fn task(project: &Project, service: &str, slot: u64) -> Task {
    Task {
        state: TaskState::Assigned,
        node: Some("n1".into()),
        ..Task::pending(42, ServiceId::new(project.name.clone(), service), slot, String::new(), 1, 0)
    }
}

fn no_resolve(_: &str) -> Option<String> {
    None
}

fn spec_of(project: &Project, service: &str) -> Result<TaskSpec> {
    spec_with(project, service, TaskSpecOptions::default())
}

fn spec_with(project: &Project, service: &str, options: TaskSpecOptions) -> Result<TaskSpec> {
    let svc = &project.services[service];
    task_spec_with(project, service, svc, &task(project, service, 2), "n1", &no_resolve, options)
}

fn hash(project: &Project, service: &str) -> String {
    config_hash(project, service, &project.services[service])
}

const RICH: &str = r#"
name: shop
services:
  web:
    image: nginx:1.25
    command: ["nginx", "-g", "daemon off;"]
    entrypoint: []
    environment:
      MODE: prod
      EMPTY: ""
      FROM_SHELL:
    working_dir: /srv
    user: "1000:1000"
    hostname: web-host
    domainname: example.com
    init: true
    tty: true
    stdin_open: true
    read_only: true
    privileged: true
    stop_signal: SIGQUIT
    stop_grace_period: 1m30s
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    devices: ["/dev/fuse:/dev/fuse", {source: /dev/sda, target: /dev/xvda, permissions: r}]
    extra_hosts: ["db.local:10.0.0.5", "db.local:10.0.0.6"]
    dns: [1.1.1.1]
    dns_opt: ["ndots:2"]
    dns_search: [example.com]
    tmpfs: ["/run:size=1m"]
    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 512}
    sysctls: {net.core.somaxconn: "1024"}
    shm_size: 64m
    logging: {driver: json-file, options: {max-size: 10m}}
    platform: linux/amd64
    healthcheck:
      test: curl -f http://localhost
      interval: 5s
      timeout: 2s
      retries: 4
      start_period: 10s
      start_interval: 1s
    cpus: 0.5
    mem_limit: 256m
    mem_reservation: 128m
    pids_limit: 100
    labels: {team: web}
    pull_policy: always
    restart: on-failure:3
    ports:
      - "127.0.0.1:8080:80"
      - "8443-8445:443"
      - "53/udp"
      - {target: 9000, published: "9000", protocol: sctp, host_ip: "::1"}
    volumes:
      - ./site:/usr/share/nginx/html:ro
      - data:/data
      - /cache
      - {type: tmpfs, target: /scratch, tmpfs: {size: 2m, mode: "1777"}}
      - {type: bind, source: /var/run/x.sock, target: /x.sock, bind: {propagation: rslave}}
      - {type: volume, source: data, target: /more, volume: {nocopy: true}}
    networks:
      front:
        aliases: [www, web]
        ipv4_address: 172.28.0.10
      back:
networks:
  front:
    driver: bridge
    driver_opts: {com.docker.network.bridge.name: shop0}
    labels: {tier: front}
    attachable: true
    enable_ipv6: true
    ipam: {config: [{subnet: 172.28.0.0/16, gateway: 172.28.0.1, ip_range: 172.28.5.0/24}]}
  back:
    internal: true
volumes:
  data:
    driver: local
    driver_opts: {type: none}
    labels: {keep: "yes"}
"#;

#[test]
fn rich_service_translates_field_by_field() {
    let project = load(RICH);
    let spec = spec_of(&project, "web").unwrap();
    let c = &spec.container;

    assert_eq!(
        c.identity,
        TaskIdentity {
            project: "shop".into(),
            service: "web".into(),
            container_number: 2,
            config_hash: hash(&project, "web"),
            node_id: "n1".into(),
            task_id: "42".into(),
        }
    );
    assert_eq!(shoal_agent::labels::container_name(c), "shop-web-2");
    assert_eq!(c.image, "nginx:1.25");
    assert_eq!(c.container_name, None);
    assert_eq!(c.command, Some(vec!["nginx".to_string(), "-g".into(), "daemon off;".into()]));
    assert_eq!(c.entrypoint, Some(vec![]), "an empty entrypoint clears the image's");
    assert_eq!(c.env, vec!["EMPTY=".to_string(), "MODE=prod".into()], "unset FROM_SHELL is dropped");
    assert_eq!(
        c.ports,
        vec![
            PortSpec {
                target: 80,
                published: Some(PortRange::single(8080)),
                host_ip: Some("127.0.0.1".into()),
                protocol: Protocol::Tcp
            },
            PortSpec {
                target: 443,
                published: Some(PortRange { start: 8443, end: 8445 }),
                host_ip: None,
                protocol: Protocol::Tcp
            },
            PortSpec { target: 53, published: None, host_ip: None, protocol: Protocol::Udp },
            PortSpec {
                target: 9000,
                published: Some(PortRange::single(9000)),
                host_ip: Some("::1".into()),
                protocol: Protocol::Sctp
            },
        ]
    );
    assert_eq!(
        c.mounts,
        vec![
            MountSpec {
                target: "/usr/share/nginx/html".into(),
                read_only: true,
                kind: MountKind::Bind { source: "/proj/site".into(), propagation: None, create_host_path: true },
            },
            MountSpec {
                target: "/data".into(),
                read_only: false,
                kind: MountKind::Volume { source: "shop_data".into(), nocopy: false },
            },
            MountSpec { target: "/cache".into(), read_only: false, kind: MountKind::Anonymous { nocopy: false } },
            MountSpec {
                target: "/scratch".into(),
                read_only: false,
                kind: MountKind::Tmpfs { size: Some(2 * 1024 * 1024), mode: Some(0o1777) },
            },
            MountSpec {
                target: "/x.sock".into(),
                read_only: false,
                kind: MountKind::Bind {
                    source: "/var/run/x.sock".into(),
                    propagation: Some(BindPropagation::Rslave),
                    create_host_path: false,
                },
            },
            MountSpec {
                target: "/more".into(),
                read_only: false,
                kind: MountKind::Volume { source: "shop_data".into(), nocopy: true },
            },
        ]
    );
    assert_eq!(
        c.networks,
        vec![
            NetworkAttachment { name: "shop_back".into(), aliases: vec!["web".into()], ..Default::default() },
            NetworkAttachment {
                name: "shop_front".into(),
                aliases: vec!["web".into(), "www".into()],
                ipv4_address: Some("172.28.0.10".into()),
                ipv6_address: None,
            },
        ]
    );
    assert_eq!(c.network_mode, None);
    assert_eq!(c.hostname.as_deref(), Some("web-host"));
    assert_eq!(c.domainname.as_deref(), Some("example.com"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.labels, BTreeMap::from([("team".to_string(), "web".to_string())]));
    assert_eq!(
        c.healthcheck,
        Some(HealthcheckSpec {
            test: vec!["CMD-SHELL".into(), "curl -f http://localhost".into()],
            interval: Some(Duration::from_secs(5)),
            timeout: Some(Duration::from_secs(2)),
            retries: Some(4),
            start_period: Some(Duration::from_secs(10)),
            start_interval: Some(Duration::from_secs(1)),
            disable: false,
        })
    );
    assert_eq!(c.init, Some(true));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(c.stop_grace_period, Some(Duration::from_secs(90)));
    assert!(c.read_only && c.privileged && c.tty && c.stdin_open);
    assert_eq!(c.cap_add, vec!["NET_ADMIN".to_string()]);
    assert_eq!(c.cap_drop, vec!["ALL".to_string()]);
    assert_eq!(c.security_opt, vec!["no-new-privileges:true".to_string()]);
    assert_eq!(
        c.devices,
        vec![
            DeviceSpec { host_path: "/dev/fuse".into(), container_path: "/dev/fuse".into(), permissions: "rwm".into() },
            DeviceSpec { host_path: "/dev/sda".into(), container_path: "/dev/xvda".into(), permissions: "r".into() },
        ]
    );
    assert_eq!(c.extra_hosts, vec!["db.local:10.0.0.5".to_string(), "db.local:10.0.0.6".into()]);
    assert_eq!(c.dns, vec!["1.1.1.1".to_string()]);
    assert_eq!(c.dns_opt, vec!["ndots:2".to_string()]);
    assert_eq!(c.dns_search, vec!["example.com".to_string()]);
    assert_eq!(c.tmpfs, vec!["/run:size=1m".to_string()]);
    assert_eq!(
        c.ulimits,
        BTreeMap::from([
            ("nofile".to_string(), Ulimit { soft: 1024, hard: 2048 }),
            ("nproc".to_string(), Ulimit { soft: 512, hard: 512 }),
        ])
    );
    assert_eq!(c.sysctls, BTreeMap::from([("net.core.somaxconn".to_string(), "1024".to_string())]));
    assert_eq!(c.shm_size, Some(64 * 1024 * 1024));
    assert_eq!(
        c.logging,
        Some(LoggingSpec {
            driver: Some("json-file".into()),
            options: BTreeMap::from([("max-size".to_string(), "10m".to_string())]),
        })
    );
    assert_eq!(
        c.resources,
        Resources {
            nano_cpus: Some(500_000_000),
            memory: Some(256 * 1024 * 1024),
            memory_reservation: Some(128 * 1024 * 1024),
            pids_limit: Some(100),
        }
    );
    assert_eq!(c.restart, Some(RestartPolicy::No), "the control plane restarts tasks by default");
    assert_eq!(c.platform.as_deref(), Some("linux/amd64"));

    assert_eq!(
        spec.image,
        ImageSpec {
            image: Some("nginx:1.25".into()),
            project: "shop".into(),
            service: "web".into(),
            build: None,
            pull_policy: PullPolicy::Always,
        }
    );
    assert_eq!(
        spec.networks,
        vec![
            NetworkSpec {
                name: "shop_back".into(),
                project: "shop".into(),
                key: "back".into(),
                node_id: "n1".into(),
                internal: true,
                ..Default::default()
            },
            NetworkSpec {
                name: "shop_front".into(),
                project: "shop".into(),
                key: "front".into(),
                node_id: "n1".into(),
                driver: Some("bridge".into()),
                driver_opts: BTreeMap::from([("com.docker.network.bridge.name".to_string(), "shop0".to_string())]),
                labels: BTreeMap::from([("tier".to_string(), "front".to_string())]),
                external: false,
                internal: false,
                attachable: true,
                enable_ipv6: true,
                ipam: vec![IpamPool {
                    subnet: "172.28.0.0/16".into(),
                    gateway: Some("172.28.0.1".into()),
                    ip_range: Some("172.28.5.0/24".into()),
                }],
            },
        ]
    );
    assert_eq!(
        spec.volumes,
        vec![VolumeSpec {
            name: "shop_data".into(),
            project: "shop".into(),
            key: "data".into(),
            node_id: "n1".into(),
            driver: Some("local".into()),
            driver_opts: BTreeMap::from([("type".to_string(), "none".to_string())]),
            labels: BTreeMap::from([("keep".to_string(), "yes".to_string())]),
            external: false,
        }],
        "a volume mounted twice is ensured once"
    );

    // The agent's engine driver accepts the result.
    let labels = shoal_agent::labels::container_labels(c);
    assert_eq!(labels[shoal_agent::labels::CONFIG_HASH], hash(&project, "web"));
    assert_eq!(labels[shoal_agent::labels::CONTAINER_NUMBER], "2");
    assert_eq!(labels[shoal_agent::labels::TASK], "42");
    assert_eq!(labels[shoal_agent::labels::NODE], "n1");
    assert_eq!(labels["team"], "web");
}

#[test]
fn the_rich_example_covers_every_mapped_attribute_and_uses_only_supported_ones() {
    let project = load(RICH);
    let mut rich = project.clone();
    // Attributes that cannot sit together with the ones above get their own services.
    let extra = load(
        "name: shop\nservices:\n  a: {build: ., container_name: a1, network_mode: host, deploy: {resources: {limits: {cpus: '1'}}}}\n",
    );
    rich.services.extend(extra.services);
    assert_eq!(unsupported_attributes(&rich), vec![], "the rich example uses only supported attributes");
    let mut used = BTreeSet::new();
    for service in rich.services.values() {
        let serde_yaml::Value::Mapping(map) = serde_yaml::to_value(service).unwrap() else { panic!() };
        used.extend(map.keys().filter_map(|k| k.as_str().map(str::to_string)));
    }
    for attribute in MAPPED_SERVICE_ATTRIBUTES {
        assert!(used.contains(*attribute), "no test value for {attribute}");
    }
}

#[test]
fn build_only_service_runs_the_image_it_builds() {
    let project = load(
        r#"
name: shop
services:
  api:
    build:
      context: ./api
      dockerfile: Dockerfile.prod
      args: {VERSION: "1.2", FROM_SHELL: null}
      target: runtime
      labels: {org.opencontainers.image.title: api}
    pull_policy: build
"#,
    );
    let spec = spec_of(&project, "api").unwrap();
    assert_eq!(
        spec.image,
        ImageSpec {
            image: None,
            project: "shop".into(),
            service: "api".into(),
            build: Some(BuildSpec {
                context: PathBuf::from("/proj/api"),
                dockerfile: Some("Dockerfile.prod".into()),
                args: BTreeMap::from([("VERSION".to_string(), "1.2".to_string())]),
                target: Some("runtime".into()),
                labels: BTreeMap::from([("org.opencontainers.image.title".to_string(), "api".to_string())]),
            }),
            pull_policy: PullPolicy::Build,
        }
    );
    assert_eq!(spec.container.image, "shop-api");

    // With both, the built image is tagged as `image:` says.
    let both = load("name: shop\nservices:\n  api: {image: registry/api:2, build: ./api}\n");
    let spec = spec_of(&both, "api").unwrap();
    assert_eq!(spec.container.image, "registry/api:2");
    assert_eq!(spec.image.build.unwrap().context, PathBuf::from("/proj/api"));
    assert_eq!(spec.image.pull_policy, PullPolicy::Missing);
}

#[test]
fn pull_policies_map_or_are_refused() {
    for (policy, expected) in [
        ("missing", PullPolicy::Missing),
        ("if_not_present", PullPolicy::Missing),
        ("always", PullPolicy::Always),
        ("never", PullPolicy::Never),
        ("build", PullPolicy::Build),
    ] {
        let project = load(&format!("name: p\nservices:\n  s: {{image: x, pull_policy: {policy}}}\n"));
        assert_eq!(spec_of(&project, "s").unwrap().image.pull_policy, expected, "{policy}");
    }
    let project = load("name: p\nservices:\n  s: {image: x, pull_policy: daily}\n");
    let err = spec_of(&project, "s").unwrap_err();
    assert!(matches!(&err, TaskSpecError::Unsupported { path, .. } if path.to_string() == "services.s.pull_policy"));
    assert!(err.to_string().contains("\"daily\""), "{err}");
}

#[test]
fn inline_dockerfiles_and_remote_contexts_are_refused() {
    let project = load("name: p\nservices:\n  s: {build: {context: ., dockerfile_inline: 'FROM x'}}\n");
    let err = spec_of(&project, "s").unwrap_err();
    assert_eq!(
        err.to_string(),
        "services.s.build.dockerfile_inline: an inline Dockerfile is not supported by Shoal yet"
    );
    let project = load("name: p\nservices:\n  s: {build: 'https://github.com/o/r.git#main'}\n");
    assert!(matches!(spec_of(&project, "s"), Err(TaskSpecError::Unsupported { .. })));
}

#[test]
fn named_external_and_renamed_volumes_use_their_engine_names() {
    let project = load(
        r#"
name: shop
services:
  db:
    image: postgres
    volumes:
      - data:/var/lib/postgresql/data
      - legacy:/legacy:nocopy
      - renamed:/renamed
      - elsewhere:/elsewhere
volumes:
  data:
  legacy:
    external: true
  renamed:
    name: shared-data
  elsewhere:
    external: true
    name: other-name
"#,
    );
    let spec = spec_of(&project, "db").unwrap();
    let sources: Vec<(String, bool)> = spec
        .container
        .mounts
        .iter()
        .map(|m| match &m.kind {
            MountKind::Volume { source, nocopy } => (source.clone(), *nocopy),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sources,
        vec![
            ("shop_data".to_string(), false),
            ("legacy".to_string(), true),
            ("shared-data".to_string(), false),
            ("other-name".to_string(), false),
        ]
    );
    let volumes: Vec<(&str, &str, bool)> =
        spec.volumes.iter().map(|v| (v.key.as_str(), v.name.as_str(), v.external)).collect();
    assert_eq!(
        volumes,
        vec![
            ("data", "shop_data", false),
            ("legacy", "legacy", true),
            ("renamed", "shared-data", false),
            ("elsewhere", "other-name", true),
        ]
    );
}

#[test]
fn volumes_missing_from_the_model_are_named_like_the_loader_would() {
    let mut project = load("name: shop\nservices:\n  s: {image: x, volumes: ['data:/d', 'ext:/e']}\nvolumes:\n  data:\n  ext: {external: true}\n");
    for volume in project.volumes.values_mut() {
        volume.name = None;
    }
    let spec = spec_of(&project, "s").unwrap();
    let names: Vec<&str> = spec.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, vec!["shop_data", "ext"]);
}

#[test]
fn undefined_volumes_and_networks_are_errors_not_panics() {
    let mut project = load("name: shop\nservices:\n  s: {image: x, volumes: ['data:/d'], networks: [front]}\nvolumes:\n  data:\nnetworks:\n  front:\n");
    project.volumes.clear();
    assert_eq!(
        spec_of(&project, "s").unwrap_err(),
        TaskSpecError::UndefinedVolume { path: KeyPath::parse("services.s.volumes[0].source"), volume: "data".into() }
    );
    project.services.get_mut("s").unwrap().volumes.clear();
    project.networks.clear();
    let err = spec_of(&project, "s").unwrap_err();
    assert_eq!(err.to_string(), "services.s.networks.front: network \"front\" is not defined in the project");
}

#[test]
fn unsupported_mounts_are_refused() {
    let project = load("name: p\nservices:\n  s: {image: x, volumes: [{type: volume, source: d, target: /d, volume: {subpath: sub}}]}\nvolumes:\n  d:\n");
    assert_eq!(
        spec_of(&project, "s").unwrap_err().to_string(),
        "services.s.volumes[0].volume.subpath: mounting a volume's subpath is not supported by Shoal yet"
    );
    let project = load("name: p\nservices:\n  s: {image: x, volumes: [{type: image, source: alpine, target: /img}]}\n");
    assert_eq!(
        spec_of(&project, "s").unwrap_err().to_string(),
        "services.s.volumes[0].type: a mount of type image is not supported by Shoal yet"
    );
}

#[test]
fn relative_bind_sources_and_bad_propagation_are_invalid() {
    let mut project = load("name: p\nservices:\n  s: {image: x, volumes: ['/host:/c']}\n");
    project.services.get_mut("s").unwrap().volumes[0].source = Some("host".into());
    assert!(
        matches!(spec_of(&project, "s"), Err(TaskSpecError::Invalid { path, .. }) if path.to_string() == "services.s.volumes[0].source")
    );
    let mut project = load("name: p\nservices:\n  s: {image: x, volumes: ['/host:/c']}\n");
    project.services.get_mut("s").unwrap().volumes[0].bind.as_mut().unwrap().propagation = Some("sideways".into());
    assert!(matches!(spec_of(&project, "s"), Err(TaskSpecError::Invalid { .. })));
}

#[test]
fn network_aliases_start_with_the_service_name_and_follow_priority() {
    let project = load(
        r#"
name: shop
services:
  api:
    image: x
    networks:
      zeta: {priority: 10, aliases: [api, backend, backend]}
      alpha:
        ipv6_address: "2001:db8::10"
      outside:
networks:
  zeta:
  alpha:
    enable_ipv6: true
  outside:
    external: true
"#,
    );
    let spec = spec_of(&project, "api").unwrap();
    assert_eq!(
        spec.container.networks,
        vec![
            NetworkAttachment {
                name: "shop_zeta".into(),
                aliases: vec!["api".into(), "backend".into()],
                ..Default::default()
            },
            NetworkAttachment {
                name: "shop_alpha".into(),
                aliases: vec!["api".into()],
                ipv4_address: None,
                ipv6_address: Some("2001:db8::10".into()),
            },
            NetworkAttachment { name: "outside".into(), aliases: vec!["api".into()], ..Default::default() },
        ]
    );
    let networks: Vec<(&str, bool)> = spec.networks.iter().map(|n| (n.name.as_str(), n.external)).collect();
    assert_eq!(networks, vec![("shop_zeta", false), ("shop_alpha", false), ("outside", true)]);
}

#[test]
fn services_without_networks_join_the_default_network() {
    let project = load("name: shop\nservices:\n  s: {image: x}\n");
    let spec = spec_of(&project, "s").unwrap();
    assert_eq!(spec.container.networks.len(), 1);
    assert_eq!(spec.container.networks[0].name, "shop_default");
    assert_eq!(spec.networks[0].key, "default");
}

#[test]
fn network_modes_map_and_service_modes_resolve_through_the_callback() {
    for (mode, expected) in [
        ("host", NetworkMode::Host),
        ("none", NetworkMode::None),
        ("bridge", NetworkMode::Bridge),
        ("container:abc123", NetworkMode::Container("abc123".into())),
        ("my-custom-net", NetworkMode::Other("my-custom-net".into())),
    ] {
        let project = load(&format!("name: p\nservices:\n  s: {{image: x, network_mode: '{mode}'}}\n"));
        let spec = spec_of(&project, "s").unwrap();
        assert_eq!(spec.container.network_mode, Some(expected), "{mode}");
        assert!(spec.container.networks.is_empty() && spec.networks.is_empty(), "{mode}");
    }

    let project = load("name: shop\nservices:\n  vpn: {image: vpn}\n  app: {image: x, network_mode: 'service:vpn'}\n");
    let app = &project.services["app"];
    let resolve = |name: &str| (name == "vpn").then(|| "shop-vpn-1".to_string());
    let spec = task_spec(&project, "app", app, &task(&project, "app", 1), "n1", &resolve).unwrap();
    assert_eq!(spec.container.network_mode, Some(NetworkMode::Container("shop-vpn-1".into())));
    assert!(spec.networks.is_empty());

    let err = task_spec(&project, "app", app, &task(&project, "app", 1), "n1", &no_resolve).unwrap_err();
    assert_eq!(
        err,
        TaskSpecError::UnresolvedService {
            path: KeyPath::parse("services.app.network_mode"),
            dependency: "vpn".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "services.app.network_mode: service \"vpn\" has no container yet whose network stack this one could share"
    );
}

#[test]
fn container_name_and_global_task_numbers() {
    let project = load(
        "name: shop\nservices:\n  s: {image: x, container_name: the-one}\n  g: {image: x, deploy: {mode: global}}\n",
    );
    let s = &project.services["s"];
    let spec = task_spec(&project, "s", s, &task(&project, "s", 1), "n1", &no_resolve).unwrap();
    assert_eq!(spec.container.container_name.as_deref(), Some("the-one"));
    assert_eq!(shoal_agent::labels::container_name(&spec.container), "the-one");

    let g = &project.services["g"];
    let global_task = task(&project, "g", 0);
    let spec = task_spec(&project, "g", g, &global_task, "n7", &no_resolve).unwrap();
    assert_eq!(spec.container.identity.container_number, 1);
    assert_eq!(spec.container.identity.node_id, "n7");
    assert_eq!(shoal_agent::labels::container_name(&spec.container), global_task.container_name(g));
    assert_eq!(global_task.container_name(g), "shop-g-n1", "a global task is named after its node");
}

#[test]
fn a_task_of_another_service_is_refused() {
    let project = load("name: shop\nservices:\n  a: {image: x}\n  b: {image: x}\n");
    let err = task_spec(&project, "a", &project.services["a"], &task(&project, "b", 1), "n1", &no_resolve).unwrap_err();
    assert!(matches!(err, TaskSpecError::WrongService { .. }), "{err}");
}

#[test]
fn defaults_of_a_minimal_service() {
    let project = load("name: shop\nservices:\n  s: {image: x}\n");
    let c = spec_of(&project, "s").unwrap().container;
    assert_eq!(c.command, None, "no command keeps the image's");
    assert_eq!(c.entrypoint, None);
    assert_eq!(c.hostname, None);
    assert_eq!(c.stop_grace_period, Some(Duration::from_secs(10)));
    assert_eq!(c.restart, Some(RestartPolicy::No));
    assert_eq!(c.healthcheck, None);
    assert_eq!(c.resources, Resources::default());
    assert!(!c.read_only && !c.privileged && !c.tty && !c.stdin_open);
}

#[test]
fn deploy_resources_override_service_level_limits() {
    let project = load(
        r#"
name: p
services:
  s:
    image: x
    cpus: 2
    mem_limit: 1g
    mem_reservation: 512m
    pids_limit: 50
    deploy:
      resources:
        limits: {cpus: "0.25", memory: 32M, pids: 10}
        reservations: {cpus: "0.1", memory: 16M}
"#,
    );
    let r = spec_of(&project, "s").unwrap().container.resources;
    assert_eq!(
        r,
        Resources {
            nano_cpus: Some(250_000_000),
            memory: Some(32 * 1024 * 1024),
            memory_reservation: Some(16 * 1024 * 1024),
            pids_limit: Some(10),
        }
    );
}

#[test]
fn disabled_healthcheck_is_passed_on() {
    let project = load("name: p\nservices:\n  s: {image: x, healthcheck: {disable: true}}\n");
    let h = spec_of(&project, "s").unwrap().container.healthcheck.unwrap();
    assert!(h.disable);
    assert!(h.test.is_empty());
}

#[test]
fn ephemeral_and_invalid_published_ports() {
    let mut project = load("name: p\nservices:\n  s: {image: x, ports: ['80', '0:81']}\n");
    let ports = spec_of(&project, "s").unwrap().container.ports;
    assert_eq!(ports[0].published, None);
    assert_eq!(ports[1].published, None, "port 0 is ephemeral too");
    project.services.get_mut("s").unwrap().ports[0].published = Some("90-80".into());
    assert_eq!(
        spec_of(&project, "s").unwrap_err().to_string(),
        "services.s.ports[0].published: \"90-80\" is not a port or a port range"
    );
    project.services.get_mut("s").unwrap().ports[0].published = None;
    project.services.get_mut("s").unwrap().ports[0].protocol = Some("quic".into());
    assert!(
        matches!(spec_of(&project, "s"), Err(TaskSpecError::Invalid { path, .. }) if path.to_string() == "services.s.ports[0].protocol")
    );
}

#[test]
fn engine_restart_policy_only_when_the_engine_owns_restarts() {
    let engine = TaskSpecOptions { restart: RestartOwner::Engine };
    for (yaml, expected) in [
        ("{image: x}", RestartPolicy::No),
        ("{image: x, restart: 'no'}", RestartPolicy::No),
        ("{image: x, restart: always}", RestartPolicy::Always),
        ("{image: x, restart: unless-stopped}", RestartPolicy::UnlessStopped),
        ("{image: x, restart: on-failure}", RestartPolicy::OnFailure { max_retries: None }),
        ("{image: x, restart: 'on-failure:3'}", RestartPolicy::OnFailure { max_retries: Some(3) }),
        ("{image: x, restart: always, deploy: {restart_policy: {condition: none}}}", RestartPolicy::No),
        (
            "{image: x, deploy: {restart_policy: {condition: on-failure, max_attempts: 2}}}",
            RestartPolicy::OnFailure { max_retries: Some(2) },
        ),
        ("{image: x, deploy: {restart_policy: {delay: 5s}}}", RestartPolicy::Always),
    ] {
        let project = load(&format!("name: p\nservices:\n  s: {yaml}\n"));
        assert_eq!(spec_with(&project, "s", engine).unwrap().container.restart, Some(expected), "{yaml}");
        assert_eq!(spec_of(&project, "s").unwrap().container.restart, Some(RestartPolicy::No), "{yaml}");
    }
}

// ---- config_hash ------------------------------------------------------------------------------

const HASHED: &str = r#"
name: shop
services:
  web:
    image: nginx:1.25
    environment: {A: "1", B: "2"}
    labels: {x: "1", y: "2"}
    ports: ["8080:80"]
    networks: [front]
    volumes: ["data:/data"]
  other:
    image: busybox
    networks: [back]
networks:
  front: {driver_opts: {a: "1", b: "2"}}
  back:
volumes:
  data:
"#;

fn hashed_with(from: &str, to: &str) -> String {
    assert!(HASHED.contains(from), "{from}");
    hash(&load(&HASHED.replacen(from, to, 1)), "web")
}

#[test]
fn config_hash_is_a_stable_sha256() {
    let h = hash(&load(HASHED), "web");
    assert_eq!(h.len(), 64);
    assert!(h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(h, hash(&load(HASHED), "web"), "same input, same hash");
    // Pinned: a change here recreates every container of every stack on upgrade; make it only
    // on purpose.
    assert_eq!(h, "c7054680034b7f3583d01aa6c2bdf5bc1e242dff8906bf24c01f47ffe1b4cf2f");
}

#[test]
fn config_hash_ignores_the_order_maps_are_written_in() {
    let reordered = r#"
name: shop
volumes:
  data:
networks:
  back:
  front: {driver_opts: {b: "2", a: "1"}}
services:
  other:
    networks: [back]
    image: busybox
  web:
    volumes: ["data:/data"]
    networks: [front]
    ports: ["8080:80"]
    labels: [y=2, x=1]
    environment: [B=2, A=1]
    image: nginx:1.25
"#;
    assert_eq!(hash(&load(reordered), "web"), hash(&load(HASHED), "web"));
}

#[test]
fn config_hash_changes_with_what_the_container_is() {
    let base = hash(&load(HASHED), "web");
    for (from, to) in [
        ("image: nginx:1.25", "image: nginx:1.26"),
        ("A: \"1\"", "A: \"2\""),
        ("A: \"1\"", "A: \"1\", C: \"3\""),
        ("8080:80", "8081:80"),
        ("front: {driver_opts: {a: \"1\", b: \"2\"}}", "front: {driver_opts: {a: \"1\", b: \"3\"}}"),
        ("volumes:\n  data:\n", "volumes:\n  data: {driver: nfs}\n"),
    ] {
        assert_ne!(hashed_with(from, to), base, "{from} -> {to}");
    }
}

#[test]
fn config_hash_ignores_counts_and_other_services() {
    let base = hash(&load(HASHED), "web");
    for (from, to) in [
        ("    image: nginx:1.25\n", "    image: nginx:1.25\n    deploy: {replicas: 3}\n"),
        ("    image: nginx:1.25\n", "    image: nginx:1.25\n    scale: 4\n"),
        ("    image: busybox\n", "    image: busybox:1.36\n"),
        ("  back:\n", "  back: {internal: true}\n"),
        ("    image: nginx:1.25\n", "    image: nginx:1.25\n    depends_on: [other]\n"),
    ] {
        assert_eq!(hashed_with(from, to), base, "{from} -> {to}");
    }
    // Replicas beside other deploy settings: those still count, the replicas do not.
    let with_limits = hashed_with(
        "    image: nginx:1.25\n",
        "    image: nginx:1.25\n    deploy: {replicas: 2, resources: {limits: {memory: 1g}}}\n",
    );
    assert_ne!(with_limits, base);
    assert_eq!(
        hashed_with(
            "    image: nginx:1.25\n",
            "    image: nginx:1.25\n    deploy: {replicas: 5, resources: {limits: {memory: 1g}}}\n"
        ),
        with_limits
    );
}

#[test]
fn every_example_stack_translates() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut translated = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let file = entry.unwrap().path().join("compose.yaml");
        if !file.exists() {
            continue;
        }
        let options = LoadOptions {
            files: vec![file.clone()],
            working_dir: examples.clone(),
            os_env: BTreeMap::new(),
            ..LoadOptions::default()
        };
        let project = crate::compose::loader::load(&options).expect("example loads").project;
        for (name, service) in &project.services {
            let resolve = |dependency: &str| Some(format!("{}-{dependency}-1", project.name));
            let spec = task_spec(&project, name, service, &task(&project, name, 1), "n1", &resolve)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(spec.container.identity.config_hash, hash(&project, name));
            translated += 1;
        }
    }
    assert!(translated >= 3, "found the examples");
}

#[test]
fn network_definitions_the_agent_cannot_create_are_refused_unless_external() {
    let yaml = "name: p\nservices:\n  s: {image: x, networks: [n]}\nnetworks:\n  n: {ipam: {driver: dhcp}}\n";
    assert_eq!(
        spec_of(&load(yaml), "s").unwrap_err().to_string(),
        "networks.n.ipam.driver: an IPAM driver other than `default` is not supported by Shoal yet"
    );
    let external =
        "name: p\nservices:\n  s: {image: x, networks: [n]}\nnetworks:\n  n: {external: true, ipam: {driver: dhcp}}\n";
    let spec = spec_of(&load(external), "s").unwrap();
    assert!(spec.networks[0].external && spec.networks[0].ipam.is_empty());
    let yaml =
        "name: p\nservices:\n  s: {image: x, networks: [n]}\nnetworks:\n  n: {ipam: {config: [{gateway: 10.0.0.1}]}}\n";
    assert!(matches!(
        spec_of(&load(yaml), "s"),
        Err(TaskSpecError::Invalid { path, .. }) if path.to_string() == "networks.n.ipam.config[0].subnet"
    ));
}

#[test]
fn a_precomputed_config_hash_gives_the_same_spec() {
    let project = load(RICH);
    let svc = &project.services["web"];
    let t = task(&project, "web", 2);
    let computed = task_spec_with(&project, "web", svc, &t, "n1", &no_resolve, TaskSpecOptions::default());
    let given = task_spec_hashed(
        &project,
        "web",
        svc,
        &hash(&project, "web"),
        &t,
        "n1",
        &no_resolve,
        TaskSpecOptions::default(),
    );
    assert_eq!(computed.expect("builds"), given.expect("builds"));
}

#[test]
fn a_shared_spec_made_a_tasks_own_is_the_spec_built_for_that_task() {
    let project = load(RICH);
    let mut shared_services = 0;
    for (name, svc) in &project.services {
        let hash = hash(&project, name);
        let options = TaskSpecOptions::default();
        let shared = shared_task_spec(&project, name, svc, &hash, &task(&project, name, 1), options);
        // As the agent gets it: through JSON.
        let shared = shared.map(|spec| {
            let json = serde_json::to_vec(&spec).expect("encodes");
            serde_json::from_slice::<TaskSpec>(&json).expect("decodes")
        });
        for slot in [1, 3, 250] {
            let t = Task { id: 1000 + slot, ..task(&project, name, slot) };
            let own = task_spec_hashed(&project, name, svc, &hash, &t, "n9", &no_resolve, options);
            match (&shared, own) {
                (Some(shared), Ok(own)) => {
                    assert_eq!(shared.clone().for_task(t.id, slot, "n9"), Ok(own), "{name} slot {slot}");
                }
                (Some(_), Err(e)) => panic!("{name}: shared, but its own spec fails: {e}"),
                (None, own) => assert!(
                    own.is_err() || svc.network_mode.as_deref().is_some_and(|m| m.starts_with("service:")),
                    "{name}: not shared without a reason"
                ),
            }
        }
        shared_services += usize::from(shared.is_some());
    }
    assert!(shared_services > 0, "the rich example has replicated services");
}

#[test]
fn specs_that_depend_on_the_node_are_not_shared() {
    let project = load(
        "name: shop\nservices:\n  vpn: {image: vpn}\n  app: {image: x, network_mode: 'service:vpn'}\n  g: {image: x, deploy: {mode: global}}\n",
    );
    let options = TaskSpecOptions::default();
    let app = &project.services["app"];
    assert!(
        shared_task_spec(&project, "app", app, &hash(&project, "app"), &task(&project, "app", 1), options).is_none()
    );
    let g = &project.services["g"];
    assert!(shared_task_spec(&project, "g", g, &hash(&project, "g"), &task(&project, "g", 0), options).is_none());
    let vpn = &project.services["vpn"];
    let shared = shared_task_spec(&project, "vpn", vpn, &hash(&project, "vpn"), &task(&project, "vpn", 1), options)
        .expect("a plain replicated service is shared");
    assert_eq!((shared.container.identity.task_id.as_str(), shared.container.identity.node_id.as_str()), ("", ""));
    assert!(shared.networks.iter().all(|n| n.node_id.is_empty()));
    assert_eq!(
        shared.for_task(7, u64::from(u32::MAX) + 1, "n").map(drop),
        Err(format!("task 7 has replica number {}, more than a container number can hold", u64::from(u32::MAX) + 1))
    );
}
