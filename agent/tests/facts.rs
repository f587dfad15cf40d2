//! What the agent reads from the engine for the control plane: the host's facts (node
//! registration) and the ports a running container has bound (`ps`).

mod support;

use shoal_agent::spec::{PortSpec, Protocol};
use shoal_agent::Engine;
use support::*;

#[tokio::test]
async fn info_reports_the_hosts_resources_and_platform() {
    let engine = engine().await;
    let info = engine.info().await.unwrap();
    assert!(!info.hostname.is_empty());
    assert!(info.nano_cpus >= 1_000_000_000, "{info:?}");
    assert!(info.memory_bytes > 0, "{info:?}");
    assert_eq!(info.os, "linux");
    assert_eq!(info.arch, shoal_agent::engine::normalize_arch(std::env::consts::ARCH));
    assert!(!info.engine_version.is_empty());
}

#[tokio::test]
async fn inspect_shows_bound_ports_while_running() {
    let engine = engine().await;
    let t = TestRun::new("ports");
    let mut spec = t.spec("web");
    let fixed = free_port();
    spec.ports = vec![
        PortSpec {
            target: 80,
            published: Some(shoal_agent::spec::PortRange::single(fixed)),
            host_ip: Some("127.0.0.1".into()),
            protocol: Protocol::Tcp,
        },
        PortSpec { target: 81, published: None, host_ip: Some("127.0.0.1".into()), protocol: Protocol::Udp },
    ];
    let id = engine.create(&spec).await.unwrap();
    assert!(engine.inspect(&id).await.unwrap().ports.is_empty(), "no ports before start");
    engine.start(&id).await.unwrap();
    let ports = engine.inspect(&id).await.unwrap().ports;
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert!(ports.contains(&format!("127.0.0.1:{fixed}->80/tcp")), "{ports:?}");
    assert!(ports.iter().any(|p| p.starts_with("127.0.0.1:") && p.ends_with("->81/udp")), "{ports:?}");
    engine.stop(&id, std::time::Duration::from_secs(5)).await.unwrap();
    assert!(engine.inspect(&id).await.unwrap().ports.is_empty(), "no ports once stopped");
}
