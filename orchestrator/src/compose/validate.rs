//! Checks on the typed model that types alone cannot express: references between services and
//! top-level resources, enumerated string values, and the dependency graph.

use super::canonical::PathWarning;
use super::error::{did_you_mean, PathError};
use super::model::{MountType, Placement, Project, Service};
use super::path::KeyPath;

type Result<T> = std::result::Result<T, PathError>;

/// Validates a whole project; the first problem found is returned. Returns the warnings of the
/// dependency graph (optional dependencies on absent services).
pub fn check_project(project: &Project) -> Result<Vec<PathWarning>> {
    for (name, service) in &project.services {
        let path = KeyPath::root().key("services").key(name.as_str());
        check_service(project, name, service, &path)?;
    }
    let graph = crate::graph::ServiceGraph::build(project)?;
    Ok(graph.warnings().to_vec())
}

fn check_service(project: &Project, name: &str, service: &Service, path: &KeyPath) -> Result<()> {
    if service.image.is_none() && service.build.is_none() && service.provider.is_none() {
        return Err(PathError::new(path.clone(), format!("service `{name}` has neither an image nor a build context"))
            .with_hint("add `image: NAME` or `build: ./DIR`"));
    }
    for network in service.networks.keys() {
        check_reference(
            project.networks.keys(),
            network,
            &path.key("networks").key(network.as_str()),
            "network",
            "networks",
        )?;
    }
    for (i, volume) in service.volumes.iter().enumerate() {
        if let (MountType::Volume, Some(source)) = (volume.kind, &volume.source) {
            check_reference(project.volumes.keys(), source, &path.key("volumes").index(i), "volume", "volumes")?;
        }
    }
    for (i, secret) in service.secrets.iter().enumerate() {
        check_reference(project.secrets.keys(), &secret.source, &path.key("secrets").index(i), "secret", "secrets")?;
    }
    for (i, config) in service.configs.iter().enumerate() {
        check_reference(project.configs.keys(), &config.source, &path.key("configs").index(i), "config", "configs")?;
    }
    if let Some(restart) = &service.restart {
        check_restart(restart, &path.key("restart"))?;
    }
    if let Some(mode) = service.deploy.as_ref().and_then(|d| d.mode.as_deref()) {
        check_one_of(mode, &["replicated", "global", "replicated-job", "global-job"], &path.key("deploy").key("mode"))?;
    }
    if let Some(placement) = service.deploy.as_ref().and_then(|d| d.placement.as_ref()) {
        check_placement(placement, &path.key("deploy").key("placement"))?;
    }
    if let Some(condition) =
        service.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()).and_then(|r| r.condition.as_deref())
    {
        check_one_of(
            condition,
            &["none", "on-failure", "any"],
            &path.key("deploy").key("restart_policy").key("condition"),
        )?;
    }
    if let Some(policy) = &service.pull_policy {
        check_pull_policy(policy, &path.key("pull_policy"))?;
    }
    if service.container_name.is_some() && service.replicas() > 1 {
        return Err(PathError::new(
            path.key("container_name"),
            format!("service `{name}` sets container_name but asks for {} replicas", service.replicas()),
        )
        .with_hint("container names are unique: remove container_name or run one replica"));
    }
    for (i, port) in service.ports.iter().enumerate() {
        if let Some(protocol) = &port.protocol {
            check_one_of(protocol, &["tcp", "udp", "sctp"], &path.key("ports").index(i).key("protocol"))?;
        }
        if let Some(mode) = &port.mode {
            check_one_of(mode, &["ingress", "host"], &path.key("ports").index(i).key("mode"))?;
        }
    }
    Ok(())
}

/// Constraints and spread preferences the scheduler can read (it would otherwise keep the
/// service's tasks pending with the same message).
fn check_placement(placement: &Placement, path: &KeyPath) -> Result<()> {
    use crate::scheduler::{constraints::Constraint, preferences::spread_of_one};
    for (i, text) in placement.constraints.iter().enumerate() {
        Constraint::parse(text).map_err(|e| {
            PathError::new(path.key("constraints").index(i), e.to_string())
                .with_hint("for example node.labels.zone==east or node.role!=manager")
        })?;
    }
    for (i, preference) in placement.preferences.iter().enumerate() {
        let path = path.key("preferences").index(i).key("spread");
        spread_of_one(&preference.spread)
            .map_err(|e| PathError::new(path, e.to_string()).with_hint("for example spread: node.labels.zone"))?;
    }
    Ok(())
}

fn check_reference<'a>(
    defined: impl Iterator<Item = &'a String> + Clone,
    name: &str,
    path: &KeyPath,
    kind: &str,
    section: &str,
) -> Result<()> {
    if defined.clone().any(|d| d == name) {
        return Ok(());
    }
    let hint = did_you_mean(name, defined.map(String::as_str))
        .unwrap_or_else(|| format!("define it under the top-level `{section}:` section"));
    Err(PathError::new(path.clone(), format!("refers to undefined {kind} `{name}`")).with_hint(hint))
}

fn check_one_of(value: &str, allowed: &[&str], path: &KeyPath) -> Result<()> {
    if allowed.contains(&value) {
        return Ok(());
    }
    let hint =
        did_you_mean(value, allowed.iter().copied()).unwrap_or_else(|| format!("use one of: {}", allowed.join(", ")));
    Err(PathError::new(path.clone(), format!("invalid value `{value}`")).with_hint(hint))
}

fn check_restart(value: &str, path: &KeyPath) -> Result<()> {
    let valid = match value.split_once(':') {
        Some(("on-failure", n)) => n.parse::<u32>().is_ok(),
        Some(_) => false,
        None => matches!(value, "no" | "always" | "on-failure" | "unless-stopped"),
    };
    if valid {
        return Ok(());
    }
    Err(PathError::new(path.clone(), format!("invalid restart policy `{value}`"))
        .with_hint("use no, always, on-failure, on-failure:N or unless-stopped"))
}

/// The `<duration>` of `every_<duration>`: like `1h30m`, with days (`d`) and weeks (`w`) too.
fn is_refresh_duration(text: &str) -> bool {
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let unit_len =
            rest[number_len..].find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len() - number_len);
        let (number, unit) = (&rest[..number_len], &rest[number_len..number_len + unit_len]);
        if number.parse::<f64>().is_err() || !matches!(unit, "w" | "d" | "h" | "m" | "s" | "ms" | "us" | "µs" | "ns") {
            return false;
        }
        rest = &rest[number_len + unit_len..];
    }
    !text.is_empty()
}

fn check_pull_policy(value: &str, path: &KeyPath) -> Result<()> {
    let fixed = ["always", "never", "missing", "build", "if_not_present", "daily", "weekly"];
    let every = value.strip_prefix("every_").is_some_and(is_refresh_duration);
    if fixed.contains(&value) || every {
        return Ok(());
    }
    let hint =
        did_you_mean(value, fixed).unwrap_or_else(|| format!("use one of: {}, or every_<duration>", fixed.join(", ")));
    Err(PathError::new(path.clone(), format!("invalid pull policy `{value}`")).with_hint(hint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::model::PlacementPreference;

    #[test]
    fn placement_constraints_and_preferences_must_be_readable() {
        let path = KeyPath::root().key("deploy").key("placement");
        let spread = |s: &str| PlacementPreference { spread: s.into() };
        let good = Placement {
            constraints: vec!["node.labels.zone==east".into(), "node.role != manager".into()],
            preferences: vec![spread("node.labels.zone")],
            max_replicas_per_node: None,
        };
        assert_eq!(check_placement(&good, &path), Ok(()));
        let typo =
            Placement { constraints: vec!["node.role==worker".into(), "node.labels.zone=east".into()], ..good.clone() };
        let e = check_placement(&typo, &path).unwrap_err();
        assert_eq!(e.path.to_string(), "deploy.placement.constraints[1]");
        assert!(e.message.ends_with("(did you mean node.labels.zone==east?)"), "{}", e.message);
        let unknown = Placement { preferences: vec![spread("node.labels.zone"), spread("datacenter")], ..good };
        let e = check_placement(&unknown, &path).unwrap_err();
        assert_eq!(e.path.to_string(), "deploy.placement.preferences[1].spread");
        assert!(e.message.starts_with("invalid placement preference \"spread: datacenter\""), "{}", e.message);
    }

    #[test]
    fn pull_policy_refresh_takes_days_and_weeks() {
        let path = KeyPath::root().key("pull_policy");
        for ok in ["daily", "every_12h", "every_2d", "every_1w2d", "every_1h30m", "missing"] {
            assert!(check_pull_policy(ok, &path).is_ok(), "{ok}");
        }
        for bad in ["every_", "every_2", "every_2y", "every_d", "sometimes"] {
            let e = check_pull_policy(bad, &path).unwrap_err();
            assert_eq!(e.path.to_string(), "pull_policy", "{bad}");
        }
    }
}
