//! Networks and volumes: idempotent creation, labels, external ones, removal.

mod support;

use std::collections::BTreeMap;

use shoal_agent::spec::{NetworkSpec, VolumeSpec};
use shoal_agent::{Engine, EngineError};
use support::*;

#[tokio::test]
async fn networks_are_created_once_labelled_and_removed() {
    let engine = engine().await;
    let t = TestRun::new("net");
    let (subnet, _) = test_subnet(&t);
    let spec = NetworkSpec {
        name: format!("{}_default", t.project()),
        project: t.project(),
        key: "default".into(),
        node_id: "n1".into(),
        labels: BTreeMap::from([t.label()]),
        internal: true,
        attachable: true,
        driver_opts: BTreeMap::from([("com.docker.network.bridge.enable_icc".to_string(), "true".to_string())]),
        ipam: vec![shoal_agent::spec::IpamPool { subnet: subnet.clone(), ..Default::default() }],
        ..Default::default()
    };
    let id = engine.ensure_network(&spec).await.unwrap();
    assert_eq!(engine.ensure_network(&spec).await.unwrap(), id);

    let n = engine.client().inspect_network(&spec.name, None).await.unwrap();
    let labels = n.labels.unwrap_or_default();
    assert_eq!(labels.get("com.docker.compose.project"), Some(&t.project()));
    assert_eq!(labels.get("com.docker.compose.network").map(String::as_str), Some("default"));
    assert_eq!(labels.get("io.shoal.node").map(String::as_str), Some("n1"));
    assert_eq!(n.internal, Some(true));
    assert_eq!(n.attachable, Some(true));
    let pools = n.ipam.and_then(|i| i.config).unwrap_or_default();
    assert_eq!(pools[0].subnet.as_deref(), Some(subnet.as_str()));

    // An existing network can be referenced as external.
    let external = NetworkSpec { external: true, ..spec.clone() };
    assert_eq!(engine.ensure_network(&external).await.unwrap(), id);

    engine.remove_network(&spec.name).await.unwrap();
    engine.remove_network(&spec.name).await.unwrap();
    let missing = engine.ensure_network(&external).await.unwrap_err();
    assert!(matches!(missing, EngineError::ExternalNetworkMissing { .. }));
    assert!(missing.to_string().contains(&spec.name), "{missing}");
}

#[tokio::test]
async fn volumes_are_created_once_labelled_and_removed() {
    let engine = engine().await;
    let t = TestRun::new("vol");
    let spec = VolumeSpec {
        name: format!("{}_data", t.project()),
        project: t.project(),
        key: "data".into(),
        node_id: "n1".into(),
        labels: BTreeMap::from([t.label()]),
        ..Default::default()
    };
    let name = engine.ensure_volume(&spec).await.unwrap();
    assert_eq!(name, spec.name);
    assert_eq!(engine.ensure_volume(&spec).await.unwrap(), name);
    let v = engine.client().inspect_volume(&name).await.unwrap();
    assert_eq!(v.labels.get("com.docker.compose.project"), Some(&t.project()));
    assert_eq!(v.labels.get("com.docker.compose.volume").map(String::as_str), Some("data"));
    assert_eq!(v.labels.get("io.shoal.node").map(String::as_str), Some("n1"));

    engine.remove_volume(&name).await.unwrap();
    engine.remove_volume(&name).await.unwrap();
    let external = VolumeSpec { external: true, ..spec.clone() };
    let err = engine.ensure_volume(&external).await.unwrap_err();
    assert!(matches!(err, EngineError::ExternalVolumeMissing { .. }));
    assert!(err.to_string().contains(&spec.name), "{err}");
}
