//! Pure translation between Shoal's types and the Docker API (1.41) models. No I/O here, so every
//! mapping rule can be unit-tested without an engine.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    self, ContainerCreateBody, DeviceMapping, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig,
    HostConfigLogConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType,
    MountVolumeOptions, NetworkingConfig, PortBinding, ResourcesUlimits, RestartPolicyNameEnum,
};

use crate::engine::{ContainerState, ContainerStatus, EngineError, HealthStatus};
use crate::labels;
use crate::spec::{
    BindPropagation, ContainerSpec, HealthcheckSpec, MountKind, MountSpec, NetworkAttachment, PortSpec, RestartPolicy,
};

/// A create request plus the networks that API 1.41 cannot join at create time (it accepts only
/// one endpoint there); they are connected right after create, before start.
pub struct CreatePlan {
    pub name: String,
    pub body: ContainerCreateBody,
    pub platform: Option<String>,
    pub extra_networks: Vec<(String, EndpointSettings)>,
}

pub fn create_plan(spec: &ContainerSpec) -> Result<CreatePlan, EngineError> {
    if spec.image.is_empty() {
        return Err(EngineError::InvalidSpec("image is empty".into()));
    }
    if spec.network_mode.is_some() && !spec.networks.is_empty() {
        return Err(EngineError::InvalidSpec("network_mode and networks cannot be combined".into()));
    }

    let (exposed_ports, port_bindings) = ports(&spec.ports);
    let (mounts, binds) = mounts(spec)?;

    let mut endpoints: Vec<(String, EndpointSettings)> =
        spec.networks.iter().map(|n| (n.name.clone(), endpoint(n, &spec.identity.service))).collect();
    let first = (!endpoints.is_empty()).then(|| endpoints.remove(0));
    let network_mode = match (&spec.network_mode, &first) {
        (Some(mode), _) => Some(mode.to_engine_string()),
        (None, Some((name, _))) => Some(name.clone()),
        (None, None) => None,
    };
    let networking_config =
        first.map(|(name, ep)| NetworkingConfig { endpoints_config: Some(HashMap::from([(name, ep)])) });

    let host_config = HostConfig {
        port_bindings: non_empty_map(port_bindings),
        mounts: non_empty(mounts),
        binds: non_empty(binds),
        tmpfs: non_empty_map(tmpfs(&spec.tmpfs)),
        network_mode,
        init: spec.init,
        readonly_rootfs: spec.read_only.then_some(true),
        privileged: spec.privileged.then_some(true),
        cap_add: non_empty(spec.cap_add.clone()),
        cap_drop: non_empty(spec.cap_drop.clone()),
        security_opt: non_empty(spec.security_opt.clone()),
        devices: non_empty(
            spec.devices
                .iter()
                .map(|d| DeviceMapping {
                    path_on_host: Some(d.host_path.clone()),
                    path_in_container: Some(d.container_path.clone()),
                    cgroup_permissions: Some(d.permissions.clone()),
                })
                .collect(),
        ),
        extra_hosts: non_empty(spec.extra_hosts.clone()),
        dns: non_empty(spec.dns.clone()),
        dns_search: non_empty(spec.dns_search.clone()),
        dns_options: non_empty(spec.dns_opt.clone()),
        ulimits: non_empty(
            spec.ulimits
                .iter()
                .map(|(name, l)| ResourcesUlimits { name: Some(name.clone()), soft: Some(l.soft), hard: Some(l.hard) })
                .collect(),
        ),
        sysctls: non_empty_map(to_hash(&spec.sysctls)),
        shm_size: spec.shm_size.map(|s| s as i64),
        log_config: spec
            .logging
            .as_ref()
            .map(|l| HostConfigLogConfig { typ: l.driver.clone(), config: non_empty_map(to_hash(&l.options)) }),
        nano_cpus: spec.resources.nano_cpus,
        memory: spec.resources.memory,
        memory_reservation: spec.resources.memory_reservation,
        pids_limit: spec.resources.pids_limit,
        restart_policy: spec.restart.map(restart_policy),
        ..HostConfig::default()
    };

    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: non_empty(spec.env.clone()),
        exposed_ports: non_empty(exposed_ports),
        hostname: spec.hostname.clone(),
        domainname: spec.domainname.clone(),
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        labels: Some(labels::container_labels(spec)),
        healthcheck: spec.healthcheck.as_ref().map(healthcheck),
        stop_signal: spec.stop_signal.clone(),
        // Lets a plain `docker stop` honour the grace period too.
        stop_timeout: spec.stop_grace_period.map(|d| d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0)),
        tty: spec.tty.then_some(true),
        open_stdin: spec.stdin_open.then_some(true),
        host_config: Some(host_config),
        networking_config,
        ..ContainerCreateBody::default()
    };

    Ok(CreatePlan {
        name: labels::container_name(spec),
        body,
        platform: spec.platform.clone(),
        extra_networks: endpoints,
    })
}

fn ports(ports: &[PortSpec]) -> (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>) {
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in ports {
        let key = format!("{}/{}", p.target, p.protocol.as_str());
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        let host_port = match p.published {
            None => String::new(),
            Some(r) if r.start == r.end => r.start.to_string(),
            Some(r) => format!("{}-{}", r.start, r.end),
        };
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding { host_ip: p.host_ip.clone(), host_port: Some(host_port) });
    }
    (exposed, bindings)
}

/// Long-syntax mounts go through the Mounts API; binds that must create their host directory
/// use the legacy `Binds` form, which is the only one that creates it (as compose does).
fn mounts(spec: &ContainerSpec) -> Result<(Vec<Mount>, Vec<String>), EngineError> {
    let mut mounts = Vec::new();
    let mut binds = Vec::new();
    for m in &spec.mounts {
        if !m.target.starts_with('/') {
            return Err(EngineError::InvalidSpec(format!("mount target {:?} is not an absolute path", m.target)));
        }
        match &m.kind {
            MountKind::Bind { source, propagation, create_host_path: true } => {
                binds.push(legacy_bind(source, m, *propagation))
            }
            kind => mounts.push(mount(m, kind, spec)),
        }
    }
    Ok((mounts, binds))
}

fn legacy_bind(source: &str, m: &MountSpec, propagation: Option<BindPropagation>) -> String {
    let mut opts = vec![if m.read_only { "ro" } else { "rw" }];
    if let Some(p) = propagation {
        opts.push(p.as_str());
    }
    format!("{source}:{}:{}", m.target, opts.join(","))
}

fn mount(m: &MountSpec, kind: &MountKind, spec: &ContainerSpec) -> Mount {
    let base = Mount { target: Some(m.target.clone()), read_only: m.read_only.then_some(true), ..Mount::default() };
    match kind {
        MountKind::Bind { source, propagation, .. } => Mount {
            typ: Some(MountType::BIND),
            source: Some(source.clone()),
            bind_options: propagation
                .map(|p| MountBindOptions { propagation: Some(propagation_enum(p)), ..MountBindOptions::default() }),
            ..base
        },
        MountKind::Volume { source, nocopy } => Mount {
            typ: Some(MountType::VOLUME),
            source: Some(source.clone()),
            volume_options: nocopy.then(|| MountVolumeOptions { no_copy: Some(true), ..MountVolumeOptions::default() }),
            ..base
        },
        MountKind::Anonymous { nocopy } => Mount {
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                no_copy: nocopy.then_some(true),
                labels: Some(labels::anonymous_volume_labels(&spec.identity)),
                ..MountVolumeOptions::default()
            }),
            ..base
        },
        MountKind::Tmpfs { size, mode } => Mount {
            typ: Some(MountType::TMPFS),
            tmpfs_options: (size.is_some() || mode.is_some()).then(|| MountTmpfsOptions {
                size_bytes: size.map(|s| s as i64),
                mode: mode.map(i64::from),
                ..MountTmpfsOptions::default()
            }),
            ..base
        },
    }
}

fn propagation_enum(p: BindPropagation) -> MountBindOptionsPropagationEnum {
    match p {
        BindPropagation::Private => MountBindOptionsPropagationEnum::PRIVATE,
        BindPropagation::Rprivate => MountBindOptionsPropagationEnum::RPRIVATE,
        BindPropagation::Shared => MountBindOptionsPropagationEnum::SHARED,
        BindPropagation::Rshared => MountBindOptionsPropagationEnum::RSHARED,
        BindPropagation::Slave => MountBindOptionsPropagationEnum::SLAVE,
        BindPropagation::Rslave => MountBindOptionsPropagationEnum::RSLAVE,
    }
}

fn tmpfs(entries: &[String]) -> HashMap<String, String> {
    entries
        .iter()
        .map(|e| match e.split_once(':') {
            Some((path, opts)) => (path.to_string(), opts.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

/// The service name is always an alias (compose semantics), except on the default bridge, where
/// the engine refuses network-scoped aliases.
fn endpoint(n: &NetworkAttachment, service: &str) -> EndpointSettings {
    let mut aliases = Vec::new();
    if !matches!(n.name.as_str(), "bridge" | "host" | "none") {
        aliases.push(service.to_string());
        for a in &n.aliases {
            if !aliases.contains(a) {
                aliases.push(a.clone());
            }
        }
    }
    let ipam = (n.ipv4_address.is_some() || n.ipv6_address.is_some()).then(|| EndpointIpamConfig {
        ipv4_address: n.ipv4_address.clone(),
        ipv6_address: n.ipv6_address.clone(),
        ..EndpointIpamConfig::default()
    });
    EndpointSettings { aliases: non_empty(aliases), ipam_config: ipam, ..EndpointSettings::default() }
}

fn healthcheck(h: &HealthcheckSpec) -> HealthConfig {
    if h.disable {
        return HealthConfig { test: Some(vec!["NONE".into()]), ..HealthConfig::default() };
    }
    HealthConfig {
        test: non_empty(h.test.clone()),
        interval: h.interval.map(nanos),
        timeout: h.timeout.map(nanos),
        retries: h.retries.map(i64::from),
        start_period: h.start_period.map(nanos),
        start_interval: h.start_interval.map(nanos),
    }
}

fn restart_policy(r: RestartPolicy) -> models::RestartPolicy {
    let (name, max) = match r {
        RestartPolicy::No => (RestartPolicyNameEnum::NO, None),
        RestartPolicy::Always => (RestartPolicyNameEnum::ALWAYS, None),
        RestartPolicy::UnlessStopped => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
        RestartPolicy::OnFailure { max_retries } => (RestartPolicyNameEnum::ON_FAILURE, max_retries.map(i64::from)),
    };
    models::RestartPolicy { name: Some(name), maximum_retry_count: max }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn non_empty_map<K, V>(m: HashMap<K, V>) -> Option<HashMap<K, V>> {
    (!m.is_empty()).then_some(m)
}

fn to_hash(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Maps an inspect response to our state; `None` parts of the response become neutral values.
pub fn container_state(r: models::ContainerInspectResponse) -> ContainerState {
    let config = r.config.unwrap_or_default();
    let state = r.state.unwrap_or_default();
    let status = match state.status {
        Some(models::ContainerStateStatusEnum::RUNNING) => ContainerStatus::Running,
        Some(models::ContainerStateStatusEnum::PAUSED) => ContainerStatus::Paused,
        Some(models::ContainerStateStatusEnum::RESTARTING) => ContainerStatus::Restarting,
        Some(models::ContainerStateStatusEnum::REMOVING) => ContainerStatus::Removing,
        Some(models::ContainerStateStatusEnum::EXITED) => ContainerStatus::Exited,
        Some(models::ContainerStateStatusEnum::DEAD) => ContainerStatus::Dead,
        _ => ContainerStatus::Created,
    };
    let health = state.health.and_then(|h| h.status).and_then(|s| HealthStatus::parse(s.as_ref()));
    let started = state.started_at.as_deref().is_some_and(|s| !s.starts_with("0001-"));
    ContainerState {
        id: r.id.unwrap_or_default(),
        name: r.name.unwrap_or_default().trim_start_matches('/').to_string(),
        image: config.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        status,
        // Docker reports 0 for a container that never ran; only an actual exit has a code.
        exit_code: if started || status == ContainerStatus::Exited { state.exit_code } else { None },
        health,
        oom_killed: state.oom_killed.unwrap_or(false),
        // A start that failed on a taken host port leaves the engine's raw text here too.
        error: state.error.filter(|e| !e.is_empty()).map(|e| port_in_use(&e).map_or(e, |c| c.to_string())),
        ports: bound_ports(r.network_settings.and_then(|n| n.ports).unwrap_or_default()),
    }
}

/// A refused start whose reason is a published port that another container or process holds,
/// as [`EngineError::PortInUse`]; `None` for any other message. The engine words it as
/// - `Bind for 0.0.0.0:8080 failed: port is already allocated` (another container has it),
/// - `Error starting userland proxy: listen tcp4 0.0.0.0:8080: bind: address already in use`
///   (a process has it),
/// - `failed to bind host port for 0.0.0.0:8080:172.17.0.2:80/tcp: address already in use`
///   (Docker 25 and later),
///
/// each after `driver failed programming external connectivity on endpoint <name> (<id>): `.
pub fn port_in_use(message: &str) -> Option<EngineError> {
    let allocated = message.contains("port is already allocated");
    if !allocated && !message.contains("address already in use") {
        return None;
    }
    let port = allocated_port(message).or_else(|| proxy_port(message)).or_else(|| bind_port(message));
    Some(EngineError::PortInUse { port })
}

/// The port of an `ip:port` address (IPv6 in brackets or not: the port follows the last `:`).
fn port_of(address: &str) -> Option<&str> {
    address.rsplit_once(':').map(|(_, port)| port).filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `Bind for <address> failed: port is already allocated`
fn allocated_port(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("Bind for ")?;
    let (address, _) = rest.split_once(" failed")?;
    port_of(address).map(str::to_string)
}

/// `listen <proto> <address>: bind: address already in use`
fn proxy_port(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("listen ")?;
    let (proto, rest) = rest.split_once(' ')?;
    let (address, _) = rest.split_once(": bind:")?;
    let port = port_of(address)?;
    Some(if proto.starts_with("udp") { format!("{port}/udp") } else { port.to_string() })
}

/// `failed to bind host port for <host ip>:<port>:<container ip>:<port>/<proto>: address ...`
/// (IPv4 host addresses only: an IPv6 one makes the fields ambiguous).
fn bind_port(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("host port for ")?;
    let (mapping, _) = rest.split_once(": address already in use")?;
    let (mapping, proto) = mapping.rsplit_once('/')?;
    let mut fields = mapping.split(':');
    let (host_ip, port) = (fields.next()?, fields.next()?);
    host_ip.parse::<std::net::Ipv4Addr>().ok()?;
    port.bytes().all(|b| b.is_ascii_digit()).then(|| if proto == "udp" { format!("{port}/udp") } else { port.into() })
}

/// The engine's port map (`"80/tcp" → [{HostIp, HostPort}]`) as `host_ip:published->80/tcp`.
fn bound_ports(map: HashMap<String, Option<Vec<PortBinding>>>) -> Vec<String> {
    let mut out: Vec<String> = map
        .into_iter()
        .flat_map(|(target, bindings)| {
            bindings.unwrap_or_default().into_iter().filter_map(move |b| {
                let port = b.host_port.filter(|p| !p.is_empty())?;
                let ip = b.host_ip.filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
                Some(format!("{ip}:{port}->{target}"))
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{PortRange, Protocol, TaskIdentity};

    #[test]
    fn taken_host_ports_are_recognised_in_every_wording() {
        let prefix = "driver failed programming external connectivity on endpoint p-web-1 (8624ce08): ";
        let port = |message: &str| match port_in_use(&format!("{prefix}{message}")) {
            Some(EngineError::PortInUse { port }) => Some(port),
            _ => None,
        };
        let cases = [
            ("Bind for 0.0.0.0:18999 failed: port is already allocated", Some("18999")),
            ("Bind for [::]:8080 failed: port is already allocated", Some("8080")),
            ("Error starting userland proxy: listen tcp4 0.0.0.0:39805: bind: address already in use", Some("39805")),
            ("Error starting userland proxy: listen udp 127.0.0.1:53: bind: address already in use", Some("53/udp")),
            ("Error starting userland proxy: listen tcp6 [::]:443: bind: address already in use", Some("443")),
            ("failed to bind host port for 0.0.0.0:8080:172.17.0.2:80/tcp: address already in use", Some("8080")),
            ("failed to bind host port for 0.0.0.0:5353:172.17.0.2:53/udp: address already in use", Some("5353/udp")),
            ("something new: address already in use", None),
        ];
        for (message, expected) in cases {
            assert_eq!(port(message), Some(expected.map(str::to_string)), "{message}");
        }
        assert_eq!(port("Conflict. The container name \"/p-web-1\" is already in use"), None);
        assert_eq!(port("OCI runtime create failed: executable file not found"), None);
    }

    #[test]
    fn a_taken_port_reads_as_one_sentence_with_the_way_out() {
        let e = EngineError::PortInUse { port: Some("8080".into()) };
        assert_eq!(
            e.to_string(),
            "host port 8080 is already in use (another container or process holds it); choose another published \
             port or stop the holder"
        );
        let e = EngineError::PortInUse { port: None };
        assert!(e.to_string().starts_with("a published host port is already in use"), "{e}");
    }

    #[test]
    fn an_inspected_start_error_about_a_taken_port_is_translated() {
        let error = "driver failed programming external connectivity on endpoint x (1): Bind for 0.0.0.0:80 failed: \
                     port is already allocated";
        let state = models::ContainerState {
            status: Some(models::ContainerStateStatusEnum::CREATED),
            error: Some(error.into()),
            ..Default::default()
        };
        let c = container_state(models::ContainerInspectResponse { state: Some(state), ..Default::default() });
        assert_eq!(c.error.as_deref(), Some(EngineError::PortInUse { port: Some("80".into()) }.to_string().as_str()));
    }

    fn spec() -> ContainerSpec {
        ContainerSpec::new(
            TaskIdentity { project: "p".into(), service: "web".into(), container_number: 1, ..TaskIdentity::default() },
            "img",
        )
    }

    #[test]
    fn ports_group_by_target_and_protocol() {
        let mut s = spec();
        s.ports = vec![
            PortSpec {
                target: 80,
                published: Some(PortRange::single(8080)),
                host_ip: Some("127.0.0.1".into()),
                protocol: Protocol::Tcp,
            },
            PortSpec {
                target: 80,
                published: Some(PortRange { start: 9000, end: 9005 }),
                host_ip: None,
                protocol: Protocol::Tcp,
            },
            PortSpec { target: 53, published: None, host_ip: None, protocol: Protocol::Udp },
        ];
        let plan = create_plan(&s).unwrap();
        let exposed = plan.body.exposed_ports.unwrap();
        assert_eq!(exposed, vec!["80/tcp".to_string(), "53/udp".to_string()]);
        let b = plan.body.host_config.unwrap().port_bindings.unwrap();
        let tcp = b["80/tcp"].as_ref().unwrap();
        assert_eq!(tcp.len(), 2);
        assert_eq!(tcp[1].host_port.as_deref(), Some("9000-9005"));
        assert_eq!(b["53/udp"].as_ref().unwrap()[0].host_port.as_deref(), Some(""));
    }

    #[test]
    fn only_first_network_joins_at_create_and_service_is_an_alias() {
        let mut s = spec();
        s.networks = vec![
            NetworkAttachment {
                name: "p_front".into(),
                aliases: vec!["www".into(), "web".into()],
                ..Default::default()
            },
            NetworkAttachment { name: "p_back".into(), ..Default::default() },
        ];
        let plan = create_plan(&s).unwrap();
        let hc = plan.body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("p_front"));
        let eps = plan.body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(eps["p_front"].aliases.as_deref(), Some(&["web".to_string(), "www".to_string()][..]));
        assert_eq!(plan.extra_networks.len(), 1);
        assert_eq!(plan.extra_networks[0].0, "p_back");
    }

    #[test]
    fn network_mode_with_networks_is_rejected() {
        let mut s = spec();
        s.network_mode = Some(crate::spec::NetworkMode::Host);
        s.networks = vec![NetworkAttachment { name: "x".into(), ..Default::default() }];
        assert!(matches!(
            create_plan(&s),
            Err(EngineError::InvalidSpec(m)) if m.contains("network_mode")
        ));
    }

    #[test]
    fn disabled_healthcheck_is_none_test() {
        let mut s = spec();
        s.healthcheck =
            Some(HealthcheckSpec { test: vec!["CMD".into(), "true".into()], disable: true, ..Default::default() });
        let hc = create_plan(&s).unwrap().body.healthcheck.unwrap();
        assert_eq!(hc.test, Some(vec!["NONE".to_string()]));
        assert_eq!(hc.interval, None);
    }

    #[test]
    fn grace_period_rounds_up_to_whole_seconds() {
        let mut s = spec();
        s.stop_grace_period = Some(Duration::from_millis(1500));
        assert_eq!(create_plan(&s).unwrap().body.stop_timeout, Some(2));
        s.stop_grace_period = Some(Duration::from_secs(3));
        assert_eq!(create_plan(&s).unwrap().body.stop_timeout, Some(3));
    }

    #[test]
    fn bind_that_creates_its_host_path_uses_legacy_binds() {
        let mut s = spec();
        s.mounts = vec![MountSpec {
            target: "/data".into(),
            read_only: true,
            kind: MountKind::Bind {
                source: "/srv/data".into(),
                propagation: Some(BindPropagation::Rslave),
                create_host_path: true,
            },
        }];
        let hc = create_plan(&s).unwrap().body.host_config.unwrap();
        assert_eq!(hc.binds, Some(vec!["/srv/data:/data:ro,rslave".to_string()]));
        assert_eq!(hc.mounts, None);
    }

    #[test]
    fn relative_mount_target_is_rejected() {
        let mut s = spec();
        s.mounts =
            vec![MountSpec { target: "data".into(), read_only: false, kind: MountKind::Anonymous { nocopy: false } }];
        assert!(matches!(create_plan(&s), Err(EngineError::InvalidSpec(_))));
    }
}
