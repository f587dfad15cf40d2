//! Which compose attributes Shoal acts on. Everything in the spec parses into the model; the
//! attributes not listed here are reported by `shoal config --unsupported` and warned about by
//! `up`, so that nothing a user wrote is silently dropped.

use serde_yaml::Value;

use super::model::Project;

/// Service attributes the dispatcher's `taskspec` turns into agent container specs (a test
/// there checks each one is mapped).
pub const MAPPED_SERVICE_ATTRIBUTES: &[&str] = &[
    "build",
    "cap_add",
    "cap_drop",
    "command",
    "container_name",
    "cpus",
    "deploy", // resources here; mode, replicas, placement, restart_policy in the control plane
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "environment",
    "extra_hosts",
    "healthcheck",
    "hostname",
    "image",
    "init",
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
    "pull_policy",
    "read_only",
    "restart", // engine policy in embedded mode only; the reconciler otherwise
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

/// Supported service attributes that need no container field:
/// - the loader applies `env_file`, `label_file` (into `environment`/`labels`) and `profiles`;
/// - the reconciler and scheduler act on `depends_on`, `scale`, `restart` and `deploy`
///   (`mode`, `replicas`, `placement`, `restart_policy`; `labels` are kept on the service, as
///   Swarm keeps them on its service object, not on containers);
/// - `expose` only documents ports: every port of a container is reachable by the other
///   services on the networks Shoal attaches it to, which is all `expose` promises.
pub const ACTED_ON_ELSEWHERE: &[&str] =
    &["depends_on", "deploy", "env_file", "expose", "label_file", "profiles", "restart", "scale"];

/// Whether Shoal acts on a top-level service attribute.
pub fn is_supported(attribute: &str) -> bool {
    MAPPED_SERVICE_ATTRIBUTES.contains(&attribute) || ACTED_ON_ELSEWHERE.contains(&attribute)
}

/// `deploy` sub-attributes Shoal acts on.
pub const SUPPORTED_DEPLOY_ATTRIBUTES: &[&str] =
    &["mode", "replicas", "labels", "resources", "restart_policy", "placement"];

/// Sub-attributes Shoal acts on, below the attributes it acts on only in part: each pattern is a
/// dotted path within a service where `*` stands for any map key or list item. Attributes not
/// named here are acted on in full (`healthcheck`, `logging`, `ports`, ...). Keep in step with
/// the translation into agent specs (`dispatcher/taskspec.rs`).
pub const SUPPORTED_SUB_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("build", &["context", "dockerfile", "args", "target", "labels"]),
    ("deploy", SUPPORTED_DEPLOY_ATTRIBUTES),
    ("deploy.resources.limits", &["cpus", "memory", "pids"]),
    ("deploy.resources.reservations", &["cpus", "memory"]),
    ("networks.*", &["aliases", "ipv4_address", "ipv6_address", "priority"]),
    // `consistency` only matters to Docker Desktop's file sharing; engines ignore it.
    ("volumes.*", &["type", "source", "target", "read_only", "consistency", "bind", "volume", "tmpfs"]),
    ("volumes.*.bind", &["propagation", "create_host_path"]),
    ("volumes.*.volume", &["nocopy"]),
];

/// One attribute a project uses that Shoal does not act on yet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unsupported {
    pub service: String,
    /// Attribute path within the service (`deploy.update_config`, `volumes[0].bind.selinux`).
    pub attribute: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "services.{}.{}", self.service, self.attribute)
    }
}

/// Lists the attributes set in `project` that Shoal does not act on yet.
pub fn unsupported_attributes(project: &Project) -> Vec<Unsupported> {
    let mut found = Vec::new();
    for (name, service) in &project.services {
        // The serialized form omits unset attributes, so its keys are exactly what was set.
        let Ok(value @ Value::Mapping(_)) = serde_yaml::to_value(service) else { continue };
        let mut report = |attribute: String| found.push(Unsupported { service: name.clone(), attribute });
        for key in value.as_mapping().into_iter().flat_map(|m| m.keys()).filter_map(Value::as_str) {
            if !is_supported(key) {
                report(key.to_string());
            }
        }
        for (pattern, allowed) in SUPPORTED_SUB_ATTRIBUTES {
            let steps: Vec<&str> = pattern.split('.').collect();
            let mut nodes = Vec::new();
            matching(&value, &steps, String::new(), &mut nodes);
            for (path, node) in nodes {
                for key in node.as_mapping().into_iter().flat_map(|m| m.keys()).filter_map(Value::as_str) {
                    if !allowed.contains(&key) {
                        report(format!("{path}.{key}"));
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The nodes below `value` that `steps` lead to, with their paths (`volumes[2].bind`).
fn matching<'a>(value: &'a Value, steps: &[&str], path: String, out: &mut Vec<(String, &'a Value)>) {
    let Some((step, rest)) = steps.split_first() else {
        out.push((path, value));
        return;
    };
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (*step, value) {
        ("*", Value::Mapping(map)) => {
            for (key, child) in map {
                if let Some(key) = key.as_str() {
                    matching(child, rest, join(key), out);
                }
            }
        }
        ("*", Value::Sequence(items)) => {
            for (i, child) in items.iter().enumerate() {
                matching(child, rest, format!("{path}[{i}]"), out);
            }
        }
        (key, Value::Mapping(map)) => {
            if let Some(child) = map.get(key) {
                matching(child, rest, join(key), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Project {
        let mut project = Project::default();
        project.services.insert("app".into(), serde_yaml::from_str(yaml).unwrap());
        project
    }

    fn report(yaml: &str) -> Vec<String> {
        unsupported_attributes(&service(yaml)).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn top_level_and_deploy_attributes() {
        assert_eq!(
            report("{image: x, cgroup_parent: /c, deploy: {replicas: 2, update_config: {parallelism: 2}}}"),
            vec!["services.app.cgroup_parent", "services.app.deploy.update_config"]
        );
    }

    #[test]
    fn sub_attributes_the_agent_does_not_map() {
        let yaml = r#"{
            image: x,
            build: {context: /src, ssh: [default], args: {A: "1"}},
            networks: {front: {aliases: [a], mac_address: "02:42:ac:11:00:02"}, back: null},
            volumes: [
                {type: bind, source: /h, target: /c, bind: {selinux: z, create_host_path: true}},
                {type: volume, source: v, target: /v, volume: {nocopy: true, subpath: s}},
                {type: tmpfs, target: /t, tmpfs: {size: 1024}}
            ],
            deploy: {resources: {limits: {cpus: 1, devices: [{capabilities: [gpu]}]}, reservations: {memory: 1g}}}
        }"#;
        assert_eq!(
            report(yaml),
            vec![
                "services.app.build.ssh",
                "services.app.deploy.resources.limits.devices",
                "services.app.networks.front.mac_address",
                "services.app.volumes[0].bind.selinux",
                "services.app.volumes[1].volume.subpath",
            ]
        );
    }

    #[test]
    fn fully_supported_service_reports_nothing() {
        let yaml = r#"{
            image: x,
            ports: [{target: 80, published: "8080", mode: ingress, protocol: tcp}],
            networks: {front: {aliases: [a], ipv4_address: 10.0.0.2, priority: 3}},
            volumes: [{type: bind, source: /h, target: /c, read_only: true, bind: {propagation: rslave}}],
            healthcheck: {test: [CMD, "true"], interval: 1s}
        }"#;
        assert_eq!(report(yaml), Vec::<String>::new());
    }
}
