//! Every attribute the Docker driver maps, checked by inspecting the real container.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, MountType, RestartPolicyNameEnum};
use shoal_agent::engine::docker::DockerEngine;
use shoal_agent::spec::*;
use shoal_agent::Engine;
use support::*;

async fn create(engine: &DockerEngine, spec: &ContainerSpec) -> ContainerInspectResponse {
    let id = match engine.create(spec).await {
        Ok(id) => id,
        Err(e) => panic!("create failed: {e}"),
    };
    inspect(engine, &id).await
}

async fn run(engine: &DockerEngine, spec: &ContainerSpec) -> ContainerInspectResponse {
    let id = match engine.create(spec).await {
        Ok(id) => id,
        Err(e) => panic!("create failed: {e}"),
    };
    if let Err(e) = engine.start(&id).await {
        panic!("start failed: {e}");
    }
    inspect(engine, &id).await
}

fn host_config(r: &ContainerInspectResponse) -> &bollard::models::HostConfig {
    r.host_config.as_ref().expect("host config")
}

fn config(r: &ContainerInspectResponse) -> &bollard::models::ContainerConfig {
    r.config.as_ref().expect("config")
}

#[tokio::test]
async fn image_command_and_entrypoint() {
    let engine = engine().await;
    let t = TestRun::new("cmd");
    let mut s = t.spec("a");
    s.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
    s.command = Some(vec!["echo hi".into()]);
    let r = create(&engine, &s).await;
    assert_eq!(config(&r).image.as_deref(), Some(TEST_IMAGE));
    assert_eq!(config(&r).entrypoint, Some(vec!["/bin/sh".to_string(), "-c".to_string()]));
    assert_eq!(config(&r).cmd, Some(vec!["echo hi".to_string()]));

    // None keeps the image's default command.
    let mut d = t.spec("b");
    d.command = None;
    let r = create(&engine, &d).await;
    assert_eq!(config(&r).cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(config(&r).entrypoint, None);
}

#[tokio::test]
async fn environment() {
    let engine = engine().await;
    let t = TestRun::new("env");
    let mut s = t.spec("a");
    s.env = vec!["A=1".into(), "EMPTY=".into(), "SPACED=a b".into()];
    let r = create(&engine, &s).await;
    let env = config(&r).env.clone().unwrap_or_default();
    for want in ["A=1", "EMPTY=", "SPACED=a b", "PATH=/bin"] {
        assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
    }
}

#[tokio::test]
async fn ports_fixed_range_ephemeral_udp_and_host_ip() {
    let engine = engine().await;
    let t = TestRun::new("ports");
    let fixed = free_port();
    let mut s = t.spec("a");
    s.ports = vec![
        PortSpec {
            target: 80,
            published: Some(PortRange::single(fixed)),
            host_ip: Some("127.0.0.1".into()),
            protocol: Protocol::Tcp,
        },
        PortSpec { target: 81, published: None, host_ip: Some("127.0.0.1".into()), protocol: Protocol::Tcp },
        PortSpec {
            target: 82,
            published: Some(PortRange { start: 41000, end: 41999 }),
            host_ip: None,
            protocol: Protocol::Tcp,
        },
        PortSpec { target: 53, published: None, host_ip: None, protocol: Protocol::Udp },
    ];
    let r = run(&engine, &s).await;
    let bindings = host_config(&r).port_bindings.clone().expect("port bindings");
    assert_eq!(bindings["82/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("41000-41999"));
    let exposed = config(&r).exposed_ports.clone().unwrap_or_default();
    for p in ["80/tcp", "81/tcp", "82/tcp", "53/udp"] {
        assert!(exposed.iter().any(|e| e == p), "{p} not exposed: {exposed:?}");
    }

    let ports = r.network_settings.as_ref().and_then(|n| n.ports.clone()).expect("published ports");
    let first = |key: &str| {
        ports[key].as_ref().and_then(|b| b.first().cloned()).unwrap_or_else(|| panic!("{key} not published: {ports:?}"))
    };
    let p80 = first("80/tcp");
    assert_eq!(p80.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(p80.host_port, Some(fixed.to_string()));
    let p81: u16 = first("81/tcp").host_port.unwrap().parse().unwrap();
    assert!(p81 > 0, "ephemeral host port assigned");
    assert_eq!(first("81/tcp").host_ip.as_deref(), Some("127.0.0.1"));
    let p82: u16 = first("82/tcp").host_port.unwrap().parse().unwrap();
    assert!((41000..=41999).contains(&p82), "{p82} outside the range");
    assert!(first("53/udp").host_port.unwrap().parse::<u16>().unwrap() > 0);
}

#[tokio::test]
async fn mounts_bind_named_anonymous_tmpfs() {
    let engine = engine().await;
    let t = TestRun::new("mounts");
    let dir = tempfile::tempdir().unwrap();
    let volume = format!("{}_data", t.project());
    engine
        .ensure_volume(&VolumeSpec {
            name: volume.clone(),
            project: t.project(),
            key: "data".into(),
            labels: BTreeMap::from([t.label()]),
            ..Default::default()
        })
        .await
        .unwrap();
    let created_host_dir = dir.path().join("made/by/engine");
    let mut s = t.spec("a");
    s.mounts = vec![
        MountSpec {
            target: "/bind".into(),
            read_only: true,
            kind: MountKind::Bind {
                source: dir.path().display().to_string(),
                // rslave/rshared need a shared host mount, which test machines may lack.
                propagation: Some(BindPropagation::Rprivate),
                create_host_path: false,
            },
        },
        MountSpec {
            target: "/created".into(),
            read_only: false,
            kind: MountKind::Bind {
                source: created_host_dir.display().to_string(),
                propagation: None,
                create_host_path: true,
            },
        },
        MountSpec {
            target: "/named".into(),
            read_only: false,
            kind: MountKind::Volume { source: volume.clone(), nocopy: true },
        },
        MountSpec { target: "/anon".into(), read_only: false, kind: MountKind::Anonymous { nocopy: false } },
        MountSpec {
            target: "/scratch".into(),
            read_only: false,
            kind: MountKind::Tmpfs { size: Some(2 * 1024 * 1024), mode: Some(0o1770) },
        },
    ];
    let r = run(&engine, &s).await;
    let hc = host_config(&r);
    let mounts = hc.mounts.clone().unwrap_or_default();
    let by_target = |t: &str| {
        mounts
            .iter()
            .find(|m| m.target.as_deref() == Some(t))
            .unwrap_or_else(|| panic!("no mount at {t}: {mounts:?}"))
            .clone()
    };
    let bind = by_target("/bind");
    assert_eq!(bind.typ, Some(MountType::BIND));
    assert_eq!(bind.read_only, Some(true));
    assert_eq!(bind.bind_options.unwrap().propagation.map(|p| p.to_string()), Some("rprivate".to_string()));
    let named = by_target("/named");
    assert_eq!(named.typ, Some(MountType::VOLUME));
    assert_eq!(named.source.as_deref(), Some(volume.as_str()));
    assert_eq!(named.volume_options.unwrap().no_copy, Some(true));
    let anon = by_target("/anon");
    assert_eq!(anon.typ, Some(MountType::VOLUME));
    assert_eq!(anon.source, None);
    let tmpfs = by_target("/scratch").tmpfs_options.unwrap();
    assert_eq!(tmpfs.size_bytes, Some(2 * 1024 * 1024));
    assert_eq!(tmpfs.mode, Some(0o1770));
    assert_eq!(hc.binds, Some(vec![format!("{}:/created:rw", created_host_dir.display())]));
    assert!(created_host_dir.is_dir(), "the engine created the host path");

    // What the running container actually got.
    let points = r.mounts.clone().unwrap_or_default();
    let point = |t: &str| {
        points
            .iter()
            .find(|m| m.destination.as_deref() == Some(t))
            .unwrap_or_else(|| panic!("no mount point at {t}"))
            .clone()
    };
    assert_eq!(point("/bind").rw, Some(false));
    assert_eq!(point("/named").name.as_deref(), Some(volume.as_str()));
    let anon_name = point("/anon").name.expect("anonymous volume name");
    let anon_volume = engine.client().inspect_volume(&anon_name).await.unwrap();
    assert_eq!(anon_volume.labels.get("com.docker.compose.project"), Some(&t.project()));
}

#[tokio::test]
async fn networks_aliases_and_static_ipv4() {
    let engine = engine().await;
    let t = TestRun::new("nets");
    let (subnet, prefix) = test_subnet(&t);
    let front = format!("{}_front", t.project());
    let back = format!("{}_back", t.project());
    for (name, ipam) in [(&front, vec![IpamPool { subnet: subnet.clone(), ..Default::default() }]), (&back, vec![])] {
        engine
            .ensure_network(&NetworkSpec {
                name: name.clone(),
                project: t.project(),
                key: name.rsplit('_').next().unwrap().into(),
                labels: BTreeMap::from([t.label()]),
                ipam,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let ip = format!("{prefix}.77");
    let mut s = t.spec("api");
    s.networks = vec![
        NetworkAttachment {
            name: front.clone(),
            aliases: vec!["api-public".into()],
            ipv4_address: Some(ip.clone()),
            ipv6_address: None,
        },
        NetworkAttachment { name: back.clone(), aliases: vec!["api-internal".into()], ..Default::default() },
    ];
    let r = run(&engine, &s).await;
    let nets = r.network_settings.as_ref().and_then(|n| n.networks.clone()).expect("networks");
    let f = &nets[&front];
    let aliases = f.aliases.clone().unwrap_or_default();
    assert!(aliases.contains(&"api".to_string()), "{aliases:?}");
    assert!(aliases.contains(&"api-public".to_string()), "{aliases:?}");
    assert_eq!(f.ip_address.as_deref(), Some(ip.as_str()));
    assert_eq!(f.ipam_config.as_ref().and_then(|c| c.ipv4_address.clone()), Some(ip));
    let b = &nets[&back];
    let aliases = b.aliases.clone().unwrap_or_default();
    assert!(aliases.contains(&"api".to_string()) && aliases.contains(&"api-internal".to_string()));
    assert!(!nets.contains_key("bridge"), "only the declared networks");
}

#[tokio::test]
async fn network_modes() {
    let engine = engine().await;
    let t = TestRun::new("netmode");
    let target = run(&engine, &t.spec("target")).await;
    let target_id = target.id.clone().unwrap();
    for (service, mode, want) in [
        ("host", NetworkMode::Host, "host".to_string()),
        ("none", NetworkMode::None, "none".to_string()),
        ("bridge", NetworkMode::Bridge, "bridge".to_string()),
        ("shared", NetworkMode::Container(target_id.clone()), format!("container:{target_id}")),
    ] {
        let mut s = t.spec(service);
        s.network_mode = Some(mode);
        let r = create(&engine, &s).await;
        assert_eq!(host_config(&r).network_mode.as_deref(), Some(want.as_str()));
    }
}

#[tokio::test]
async fn identity_names_and_labels() {
    let engine = engine().await;
    let t = TestRun::new("identity");
    let mut s = t.spec("web");
    s.identity.container_number = 3;
    s.labels.insert("team".into(), "blue".into());
    let r = create(&engine, &s).await;
    assert_eq!(r.name, Some(format!("/{}-web-3", t.project())));
    let labels = config(&r).labels.clone().unwrap();
    let want = [
        ("com.docker.compose.project", t.project()),
        ("com.docker.compose.service", "web".to_string()),
        ("com.docker.compose.container-number", "3".to_string()),
        ("com.docker.compose.config-hash", "hash-web-1".to_string()),
        ("com.docker.compose.oneoff", "False".to_string()),
        ("io.shoal.node", format!("node-{}", t.id)),
        ("io.shoal.task", "task-web-1".to_string()),
        ("team", "blue".to_string()),
    ];
    for (k, v) in want {
        assert_eq!(labels.get(k), Some(&v), "label {k}");
    }

    let mut named = t.spec("db");
    named.container_name = Some(format!("{}-custom", t.project()));
    let r = create(&engine, &named).await;
    assert_eq!(r.name, Some(format!("/{}-custom", t.project())));
}

#[tokio::test]
async fn hostname_domainname_user_working_dir() {
    let engine = engine().await;
    let t = TestRun::new("host");
    let mut s = t.spec("a");
    s.hostname = Some("box".into());
    s.domainname = Some("example.test".into());
    s.user = Some("nobody".into());
    s.working_dir = Some("/tmp".into());
    let r = create(&engine, &s).await;
    let c = config(&r);
    assert_eq!(c.hostname.as_deref(), Some("box"));
    assert_eq!(c.domainname.as_deref(), Some("example.test"));
    assert_eq!(c.user.as_deref(), Some("nobody"));
    assert_eq!(c.working_dir.as_deref(), Some("/tmp"));
}

#[tokio::test]
async fn healthcheck_and_disable() {
    let engine = engine().await;
    let t = TestRun::new("hc");
    let mut s = t.spec("a");
    s.healthcheck = Some(HealthcheckSpec {
        test: vec!["CMD-SHELL".into(), "test -e /tmp".into()],
        interval: Some(Duration::from_secs(7)),
        timeout: Some(Duration::from_millis(1500)),
        retries: Some(4),
        start_period: Some(Duration::from_secs(9)),
        start_interval: None,
        disable: false,
    });
    let r = create(&engine, &s).await;
    let hc = config(&r).healthcheck.clone().unwrap();
    assert_eq!(hc.test, Some(vec!["CMD-SHELL".to_string(), "test -e /tmp".to_string()]));
    assert_eq!(hc.interval, Some(7_000_000_000));
    assert_eq!(hc.timeout, Some(1_500_000_000));
    assert_eq!(hc.retries, Some(4));
    assert_eq!(hc.start_period, Some(9_000_000_000));

    let mut off = t.spec("b");
    off.healthcheck = Some(HealthcheckSpec { disable: true, ..Default::default() });
    let r = create(&engine, &off).await;
    assert_eq!(config(&r).healthcheck.clone().unwrap().test, Some(vec!["NONE".to_string()]));
}

#[tokio::test]
async fn init_stop_signal_and_grace_period() {
    let engine = engine().await;
    let t = TestRun::new("stopcfg");
    let mut s = t.spec("a");
    s.init = Some(true);
    s.stop_signal = Some("SIGUSR1".into());
    s.stop_grace_period = Some(Duration::from_secs(42));
    let r = create(&engine, &s).await;
    assert_eq!(host_config(&r).init, Some(true));
    assert_eq!(config(&r).stop_signal.as_deref(), Some("SIGUSR1"));
    assert_eq!(config(&r).stop_timeout, Some(42));
}

#[tokio::test]
async fn security_and_privileges() {
    let engine = engine().await;
    let t = TestRun::new("sec");
    let mut s = t.spec("a");
    s.read_only = true;
    s.cap_add = vec!["NET_ADMIN".into()];
    s.cap_drop = vec!["CHOWN".into()];
    s.security_opt = vec!["no-new-privileges:true".into()];
    let r = run(&engine, &s).await;
    let hc = host_config(&r);
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_add, Some(vec!["NET_ADMIN".to_string()]));
    assert_eq!(hc.cap_drop, Some(vec!["CHOWN".to_string()]));
    assert_eq!(hc.security_opt, Some(vec!["no-new-privileges:true".to_string()]));
}

#[tokio::test]
async fn privileged() {
    let engine = engine().await;
    let t = TestRun::new("priv");
    let mut s = t.spec("a");
    s.privileged = true;
    // Created only: sandboxed test machines may refuse to start privileged containers.
    let r = create(&engine, &s).await;
    assert_eq!(host_config(&r).privileged, Some(true));
    let plain = create(&engine, &t.spec("b")).await;
    assert_eq!(host_config(&plain).privileged, Some(false));
}

#[tokio::test]
async fn devices_hosts_dns_tmpfs() {
    let engine = engine().await;
    let t = TestRun::new("dev");
    let mut s = t.spec("a");
    s.devices = vec![DeviceSpec {
        host_path: "/dev/null".into(),
        container_path: "/dev/xnull".into(),
        permissions: "rwm".into(),
    }];
    s.extra_hosts = vec!["db.local:10.1.2.3".into()];
    s.dns = vec!["10.0.0.53".into()];
    s.dns_search = vec!["corp.test".into()];
    s.dns_opt = vec!["ndots:2".into()];
    s.tmpfs = vec!["/run:size=1m".into(), "/cache".into()];
    let r = run(&engine, &s).await;
    let hc = host_config(&r);
    let dev = &hc.devices.clone().unwrap()[0];
    assert_eq!(dev.path_on_host.as_deref(), Some("/dev/null"));
    assert_eq!(dev.path_in_container.as_deref(), Some("/dev/xnull"));
    assert_eq!(dev.cgroup_permissions.as_deref(), Some("rwm"));
    assert_eq!(hc.extra_hosts, Some(vec!["db.local:10.1.2.3".to_string()]));
    assert_eq!(hc.dns, Some(vec!["10.0.0.53".to_string()]));
    assert_eq!(hc.dns_search, Some(vec!["corp.test".to_string()]));
    assert_eq!(hc.dns_options, Some(vec!["ndots:2".to_string()]));
    let tmpfs = hc.tmpfs.clone().unwrap();
    assert_eq!(tmpfs.get("/run").map(String::as_str), Some("size=1m"));
    assert_eq!(tmpfs.get("/cache").map(String::as_str), Some(""));
}

#[tokio::test]
async fn ulimits_sysctls_shm_size() {
    let engine = engine().await;
    let t = TestRun::new("limits");
    let mut s = t.spec("a");
    s.ulimits = BTreeMap::from([("nofile".to_string(), Ulimit { soft: 1024, hard: 2048 })]);
    s.sysctls = BTreeMap::from([("net.core.somaxconn".to_string(), "1024".to_string())]);
    s.shm_size = Some(32 * 1024 * 1024);
    let r = run(&engine, &s).await;
    let hc = host_config(&r);
    let u = &hc.ulimits.clone().unwrap()[0];
    assert_eq!((u.name.as_deref(), u.soft, u.hard), (Some("nofile"), Some(1024), Some(2048)));
    assert_eq!(hc.sysctls.clone().unwrap().get("net.core.somaxconn").map(String::as_str), Some("1024"));
    assert_eq!(hc.shm_size, Some(32 * 1024 * 1024));
}

#[tokio::test]
async fn logging_driver_and_options() {
    let engine = engine().await;
    let t = TestRun::new("logging");
    let mut s = t.spec("a");
    s.logging = Some(LoggingSpec {
        driver: Some("json-file".into()),
        options: BTreeMap::from([
            ("max-size".to_string(), "1m".to_string()),
            ("max-file".to_string(), "2".to_string()),
        ]),
    });
    let r = create(&engine, &s).await;
    let lc = host_config(&r).log_config.clone().unwrap();
    assert_eq!(lc.typ.as_deref(), Some("json-file"));
    let opts = lc.config.unwrap();
    assert_eq!(opts.get("max-size").map(String::as_str), Some("1m"));
    assert_eq!(opts.get("max-file").map(String::as_str), Some("2"));
}

#[tokio::test]
async fn resource_limits() {
    let engine = engine().await;
    let t = TestRun::new("res");
    let mut s = t.spec("a");
    s.resources = Resources {
        nano_cpus: Some(500_000_000),
        memory: Some(64 * 1024 * 1024),
        memory_reservation: Some(32 * 1024 * 1024),
        pids_limit: Some(50),
    };
    let r = run(&engine, &s).await;
    let hc = host_config(&r);
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(hc.memory_reservation, Some(32 * 1024 * 1024));
    assert_eq!(hc.pids_limit, Some(50));
}

#[tokio::test]
async fn restart_policies() {
    let engine = engine().await;
    let t = TestRun::new("restart");
    for (service, policy, name, max) in [
        ("a", RestartPolicy::Always, RestartPolicyNameEnum::ALWAYS, Some(0)),
        ("b", RestartPolicy::UnlessStopped, RestartPolicyNameEnum::UNLESS_STOPPED, Some(0)),
        ("c", RestartPolicy::OnFailure { max_retries: Some(5) }, RestartPolicyNameEnum::ON_FAILURE, Some(5)),
    ] {
        let mut s = t.spec(service);
        s.restart = Some(policy);
        let r = create(&engine, &s).await;
        let rp = host_config(&r).restart_policy.clone().unwrap();
        assert_eq!(rp.name, Some(name), "{service}");
        assert_eq!(rp.maximum_retry_count, max, "{service}");
    }
}

#[tokio::test]
async fn tty_and_stdin_open() {
    let engine = engine().await;
    let t = TestRun::new("tty");
    let mut s = t.spec("a");
    s.tty = true;
    s.stdin_open = true;
    let r = create(&engine, &s).await;
    assert_eq!(config(&r).tty, Some(true));
    assert_eq!(config(&r).open_stdin, Some(true));
    let plain = create(&engine, &t.spec("b")).await;
    assert_eq!(config(&plain).tty, Some(false));
    assert_eq!(config(&plain).open_stdin, Some(false));
}

#[tokio::test]
async fn platform_is_passed_to_the_engine() {
    let engine = engine().await;
    let t = TestRun::new("platform");
    let mut s = t.spec("a");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    s.platform = Some(format!("linux/{arch}"));
    let r = create(&engine, &s).await;
    assert_eq!(r.platform.as_deref(), Some("linux"));

    // The engine checks the platform against the image, which proves the field reached it.
    let mut wrong = t.spec("b");
    wrong.platform = Some("linux/s390x".into());
    let err = engine.create(&wrong).await.expect_err("platform mismatch");
    assert!(err.to_string().contains("platform"), "unexpected error: {err}");
}
