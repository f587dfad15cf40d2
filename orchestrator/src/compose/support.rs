//! Which compose attributes Shoal acts on. Everything in the spec parses into the model; the
//! attributes not listed here are reported by `shoal config --unsupported` and warned about by
//! `up`, so that nothing a user wrote is silently dropped.

use std::collections::BTreeSet;

use serde_yaml::Value;

use super::model::Project;

/// Service attributes the engine driver maps onto containers or the control plane acts on.
/// Keep in step with the agent's `ContainerSpec` mapping (agent/src/spec.rs).
pub const SUPPORTED_SERVICE_ATTRIBUTES: &[&str] = &[
    "build",
    "cap_add",
    "cap_drop",
    "command",
    "container_name",
    "cpus",
    "depends_on",
    "deploy",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extra_hosts",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "label_file",
    "labels",
    "logging",
    "mem_limit",
    "mem_reservation",
    "network_mode",
    "networks",
    "pids_limit",
    "platform",
    "ports",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "scale",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "volumes",
    "working_dir",
];

/// `deploy` sub-attributes Shoal acts on.
pub const SUPPORTED_DEPLOY_ATTRIBUTES: &[&str] =
    &["mode", "replicas", "labels", "resources", "restart_policy", "placement"];

/// One attribute a project uses that Shoal does not act on yet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unsupported {
    pub service: String,
    /// Dotted attribute path within the service (`deploy.update_config`).
    pub attribute: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "services.{}.{}", self.service, self.attribute)
    }
}

/// Lists the attributes set in `project` that Shoal does not act on yet.
pub fn unsupported_attributes(project: &Project) -> Vec<Unsupported> {
    let supported: BTreeSet<&str> = SUPPORTED_SERVICE_ATTRIBUTES.iter().copied().collect();
    let deploy_supported: BTreeSet<&str> = SUPPORTED_DEPLOY_ATTRIBUTES.iter().copied().collect();
    let mut found = Vec::new();
    for (name, service) in &project.services {
        // The serialized form omits unset attributes, so its keys are exactly what was set.
        let Ok(Value::Mapping(map)) = serde_yaml::to_value(service) else { continue };
        for (key, value) in &map {
            let Some(key) = key.as_str() else { continue };
            if !supported.contains(key) {
                found.push(Unsupported { service: name.clone(), attribute: key.to_string() });
            } else if key == "deploy" {
                for sub in value.as_mapping().into_iter().flat_map(|m| m.keys()).filter_map(Value::as_str) {
                    if !deploy_supported.contains(sub) {
                        found.push(Unsupported { service: name.clone(), attribute: format!("deploy.{sub}") });
                    }
                }
            }
        }
    }
    found.sort();
    found
}
