//! Labels and names the agent puts on engine objects.
//!
//! The compose labels make lazydocker, Portainer and `docker compose ls` group Shoal's containers
//! like compose's own; the `io.shoal.*` labels let an agent find (and adopt) what it created.

use std::collections::{BTreeMap, HashMap};

use crate::spec::{ContainerSpec, NetworkSpec, TaskIdentity, VolumeSpec};

pub const PROJECT: &str = "com.docker.compose.project";
pub const SERVICE: &str = "com.docker.compose.service";
pub const CONTAINER_NUMBER: &str = "com.docker.compose.container-number";
pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
pub const ONEOFF: &str = "com.docker.compose.oneoff";
pub const NETWORK: &str = "com.docker.compose.network";
pub const VOLUME: &str = "com.docker.compose.volume";
pub const NODE: &str = "io.shoal.node";
pub const TASK: &str = "io.shoal.task";

/// `<project>-<service>-<n>` unless the spec names the container.
pub fn container_name(spec: &ContainerSpec) -> String {
    match &spec.container_name {
        Some(name) => name.clone(),
        None => default_container_name(&spec.identity),
    }
}

pub fn default_container_name(id: &TaskIdentity) -> String {
    format!("{}-{}-{}", id.project, id.service, id.container_number)
}

/// User labels plus the identity labels; identity labels win so a user label cannot hide a
/// container from its agent.
pub fn container_labels(spec: &ContainerSpec) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.extend(identity_labels(&spec.identity));
    labels
}

pub fn identity_labels(id: &TaskIdentity) -> [(String, String); 7] {
    [
        (PROJECT.into(), id.project.clone()),
        (SERVICE.into(), id.service.clone()),
        (CONTAINER_NUMBER.into(), id.container_number.to_string()),
        (CONFIG_HASH.into(), id.config_hash.clone()),
        (ONEOFF.into(), "False".into()),
        (NODE.into(), id.node_id.clone()),
        (TASK.into(), id.task_id.clone()),
    ]
}

/// Labels on anonymous volumes, so `down -v` and node cleanup can find them.
pub fn anonymous_volume_labels(id: &TaskIdentity) -> HashMap<String, String> {
    HashMap::from([(PROJECT.to_string(), id.project.clone()), (NODE.to_string(), id.node_id.clone())])
}

pub fn network_labels(spec: &NetworkSpec) -> HashMap<String, String> {
    owned_object_labels(&spec.labels, &spec.project, NETWORK, &spec.key, &spec.node_id)
}

pub fn volume_labels(spec: &VolumeSpec) -> HashMap<String, String> {
    owned_object_labels(&spec.labels, &spec.project, VOLUME, &spec.key, &spec.node_id)
}

fn owned_object_labels(
    user: &BTreeMap<String, String>,
    project: &str,
    key_label: &str,
    key: &str,
    node: &str,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = user.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.insert(PROJECT.into(), project.into());
    labels.insert(key_label.into(), key.into());
    labels.insert(NODE.into(), node.into());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec::new(
            TaskIdentity {
                project: "shop".into(),
                service: "web".into(),
                container_number: 2,
                config_hash: "abc".into(),
                node_id: "n1".into(),
                task_id: "t9".into(),
            },
            "img",
        )
    }

    #[test]
    fn default_name_is_project_service_number() {
        assert_eq!(container_name(&spec()), "shop-web-2");
        let mut named = spec();
        named.container_name = Some("custom".into());
        assert_eq!(container_name(&named), "custom");
    }

    #[test]
    fn identity_labels_override_user_labels() {
        let mut s = spec();
        s.labels.insert(NODE.into(), "spoofed".into());
        s.labels.insert("team".into(), "blue".into());
        let labels = container_labels(&s);
        assert_eq!(labels[NODE], "n1");
        assert_eq!(labels["team"], "blue");
        assert_eq!(labels[ONEOFF], "False");
        assert_eq!(labels[CONTAINER_NUMBER], "2");
        assert_eq!(labels[TASK], "t9");
    }
}
