//! `shoal server`: runs a manager of a cluster (and, unless `--no-agent`, an agent for this
//! machine) until interrupted. It bootstraps a new cluster, joins one with `--join`, restarts from
//! its state dir, restores a backup (`--restore`) or recovers from a lost quorum
//! (`--force-new-cluster`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use shoal_agent::engine::docker::DockerEngine;
use shoal_proto::v1 as pb;
use shoal_proto::v1::raft_client::RaftClient;

use crate::dispatcher::server::{DispatcherConfig, DispatcherConfigError, MIN_HEARTBEAT};
use crate::local_agent::{LocalAgent, LocalAgentConfig};
use crate::manager::peers::service::rand_id;
use crate::manager::peers::transport::endpoint;
use crate::manager::server::{bind, Replication};
use crate::manager::{recovery, tokens, Manager, ManagerConfig};
use crate::store::command::Command;
use crate::store::raft::{Bootstrap, RaftConfig};

/// The manager's raft id, kept in its state dir.
const ID_FILE: &str = "manager-id";

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where to serve managers, agents and clients (gRPC)
    #[arg(long, default_value = "0.0.0.0:4700", value_name = "ADDR")]
    pub listen: String,
    /// The address others reach this manager at (default: the listen address, or this machine's
    /// outbound address when listening on all interfaces)
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Option<String>,
    /// This manager's name, unique in the cluster (default: the host name)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Join the cluster of these managers (comma-separated) instead of starting a new one
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    pub join: Vec<String>,
    /// The manager join token (`shoal cluster join-token manager`)
    #[arg(long, env = "SHOAL_TOKEN", value_name = "TOKEN")]
    pub token: Option<String>,
    /// Do not run an agent: this manager runs no containers
    #[arg(long)]
    pub no_agent: bool,
    /// Start a new cluster of one from this manager's state, after the others are lost for good
    #[arg(long, conflicts_with_all = ["join", "restore"])]
    pub force_new_cluster: bool,
    /// Start a new cluster from a `shoal cluster backup` file (into an empty state dir)
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    pub restore: Option<PathBuf>,
    /// Followers start an election after this long without hearing from a leader (randomized up
    /// to twice as long)
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub election_timeout: Duration,
    /// How often the leader sends heartbeats
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub heartbeat_interval: Duration,
    /// Applied entries between snapshots (each followed by log compaction)
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub snapshot_every: u64,
    /// How often agents send heartbeats to the managers (at least 100ms; each agent sends a little
    /// early at random, up to a fifth of the period)
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub node_heartbeat: Duration,
    /// A ready node not heard from for this long is marked down, and its replicated tasks are
    /// started on other nodes (must be longer than --node-heartbeat; a few periods is sensible)
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub node_down_after: Duration,
    /// When more than 55% of the nodes (in a cluster of 50 or more) miss heartbeats at once —
    /// more likely this manager or its network than the nodes — a node is marked down only after
    /// this long without a heartbeat, until they are heard again (0s, or not longer than
    /// --node-down-after: never wait longer)
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub node_down_hold: Duration,
    /// Node label for this manager's agent (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

/// The raft driver's tick and tick counts for the requested timings.
pub fn raft_timing(election: Duration, heartbeat: Duration) -> anyhow::Result<(Duration, usize, usize)> {
    if heartbeat.is_zero() || election <= heartbeat {
        bail!(
            "--election-timeout ({}) must be longer than --heartbeat-interval ({})",
            humantime::format_duration(election),
            humantime::format_duration(heartbeat)
        );
    }
    let tick = heartbeat.min(Duration::from_millis(100));
    let ticks = |d: Duration| ((d.as_nanos() / tick.as_nanos()).max(1)) as usize;
    let heartbeat_tick = ticks(heartbeat);
    let election_tick = ticks(election).max(heartbeat_tick + 1);
    Ok((tick, heartbeat_tick, election_tick))
}

/// The dispatcher's settings with the requested node timings, or why they are refused (naming
/// the flags).
pub fn node_timing(
    mut config: DispatcherConfig,
    heartbeat: Duration,
    down_after: Duration,
    down_hold: Duration,
) -> anyhow::Result<DispatcherConfig> {
    config.heartbeat_period = heartbeat;
    config.down_after = down_after;
    config.mass_silence.hold = down_hold;
    let show = |d: Duration| humantime::format_duration(d).to_string();
    match config.validate() {
        Ok(()) => Ok(config),
        Err(DispatcherConfigError::HeartbeatTooShort { period }) => bail!(
            "--node-heartbeat {} is too short: agents heartbeat at most every {}\nhint: use --node-heartbeat {} or longer",
            show(period),
            show(MIN_HEARTBEAT),
            show(MIN_HEARTBEAT)
        ),
        Err(DispatcherConfigError::DownTooSoon { down_after, heartbeat }) => bail!(
            "--node-down-after ({}) must be longer than --node-heartbeat ({})\nhint: allow a few missed heartbeats, e.g. --node-down-after {}",
            show(down_after),
            show(heartbeat),
            show(heartbeat * 3)
        ),
    }
}

pub fn parse_labels(labels: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => bail!("--label {l:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "manager".to_string())
}

/// The address to tell others: the listen address unless it is a wildcard, then the address the
/// machine would use to reach the first peer (or the outside).
pub fn advertise(listen: SocketAddr, given: Option<&str>, join: &[String]) -> String {
    if let Some(given) = given {
        return if given.contains(':') { given.to_string() } else { format!("{given}:{}", listen.port()) };
    }
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let probe_target = join.first().cloned().unwrap_or_else(|| "192.0.2.1:9".to_string());
    // Connecting a UDP socket sends nothing; it only picks the route and source address.
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(probe_target.as_str()).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, listen.port()).to_string()
}

async fn read_id(state_dir: &Path) -> anyhow::Result<Option<u64>> {
    match tokio::fs::read_to_string(state_dir.join(ID_FILE)).await {
        Ok(text) => {
            let id =
                text.trim().parse().with_context(|| format!("{} is damaged", state_dir.join(ID_FILE).display()))?;
            Ok(Some(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", state_dir.join(ID_FILE).display())),
    }
}

async fn write_id(state_dir: &Path, id: u64) -> anyhow::Result<()> {
    let path = state_dir.join(ID_FILE);
    tokio::fs::write(&path, id.to_string()).await.with_context(|| format!("cannot write {}", path.display()))
}

/// How long `--join` keeps asking while no manager can admit this one yet: none reachable (they
/// may be starting too), no join tokens yet, or another manager's admission still in progress.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// Asks the given managers, in turn, to admit this one; goes round again (with a growing pause)
/// while the failures are transient, until [`JOIN_PATIENCE`] runs out.
async fn join(addresses: &[String], request: pb::JoinRequest) -> anyhow::Result<pb::JoinResponse> {
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    let mut pause = Duration::from_millis(100);
    let mut told = false;
    loop {
        let transient = match join_round(addresses, &request).await? {
            Ok(response) => return Ok(response),
            Err(transient) => transient,
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(transient);
        }
        if !told {
            eprintln!("shoal server: cannot join yet ({transient:#}); retrying");
            told = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// One round over the addresses: the answer, `Ok(Err)` when every manager was unreachable or
/// answered "unavailable" (worth another round), or `Err` when one refused for good.
async fn join_round(
    addresses: &[String],
    request: &pb::JoinRequest,
) -> anyhow::Result<Result<pb::JoinResponse, anyhow::Error>> {
    if addresses.is_empty() {
        bail!("no manager address given to --join");
    }
    let mut last = None;
    for address in addresses {
        let client = match endpoint(address) {
            Ok(e) => match e.connect().await {
                Ok(channel) => RaftClient::new(channel),
                Err(e) => {
                    last = Some(anyhow::anyhow!("cannot reach the manager at {address}: {e}"));
                    continue;
                }
            },
            Err(e) => bail!("invalid manager address {address:?}: {e}"),
        };
        match client.clone().join(request.clone()).await {
            Ok(response) => return Ok(Ok(response.into_inner())),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                last = Some(anyhow::anyhow!("{address}: {}", status.message()))
            }
            Err(status) => bail!("{address} refused the join: {}", status.message()),
        }
    }
    Ok(Err(last.unwrap_or_else(|| anyhow::anyhow!("no manager address given to --join"))))
}

fn random_bytes(count: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0u8; count];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the join tokens")?;
    Ok(bytes)
}

pub async fn run(state_dir: &Path, args: &ServerArgs) -> anyhow::Result<i32> {
    let (tick, heartbeat_tick, election_tick) = raft_timing(args.election_timeout, args.heartbeat_interval)?;
    let dispatcher =
        node_timing(DispatcherConfig::new(""), args.node_heartbeat, args.node_down_after, args.node_down_hold)?;
    let labels = parse_labels(&args.labels)?;
    if args.snapshot_every == 0 {
        bail!("--snapshot-every must be at least 1");
    }
    tokio::fs::create_dir_all(state_dir)
        .await
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let engine = if args.no_agent {
        None
    } else {
        Some(Arc::new(DockerEngine::connect().await.map_err(|e| {
            anyhow::anyhow!("{e}\nhint: run the manager without containers with `shoal server --no-agent`")
        })?))
    };
    let listener = bind(&args.listen).await?;
    let local = listener.local_addr()?;
    let advertise_addr = advertise(local, args.advertise_addr.as_deref(), &args.join);
    let name = args.name.clone().unwrap_or_else(host_name);

    let known_id = read_id(state_dir).await?;
    let mut seed_peers = Vec::new();
    let mut initial_state = None;
    let mut new_cluster = false;
    let (id, bootstrap) = if args.force_new_cluster {
        let id =
            known_id.context("--force-new-cluster needs the state dir of a former manager (no manager-id in it)")?;
        initial_state = Some(recovery::recover_for_new_cluster(state_dir, id).await?);
        eprintln!("shoal server: starting a new cluster of one from the state in {}", state_dir.display());
        (id, Bootstrap::SingleNode)
    } else if let Some(file) = &args.restore {
        recovery::ensure_empty(state_dir)?;
        initial_state = Some(recovery::read_backup(file)?);
        eprintln!("shoal server: starting a new cluster from the backup {}", file.display());
        (rand_id(), Bootstrap::SingleNode)
    } else if let Some(id) = known_id {
        // A restart; or a join that stopped before the first snapshot arrived (the leader resends).
        (id, Bootstrap::Join)
    } else if !args.join.is_empty() {
        let token =
            args.token.clone().context("--join needs --token (run `shoal cluster join-token manager` on a manager)")?;
        let request = pb::JoinRequest { token, address: advertise_addr.clone(), name: name.clone() };
        let response = join(&args.join, request).await?;
        seed_peers = response.peers.into_iter().map(|p| (p.id, p.address)).collect();
        write_id(state_dir, response.id).await?;
        eprintln!("shoal server: joined the cluster as manager {} ({name}); catching up", response.id);
        (response.id, Bootstrap::Join)
    } else {
        if recovery::has_raft_state(state_dir) {
            bail!("{} holds raft state but no manager-id: it is not a `shoal server` state dir", state_dir.display());
        }
        new_cluster = true;
        (rand_id(), Bootstrap::SingleNode)
    };

    let mut raft = RaftConfig::new(id, state_dir);
    raft.bootstrap = bootstrap;
    raft.tick_interval = tick;
    raft.heartbeat_tick = heartbeat_tick;
    raft.election_tick = election_tick;
    raft.snapshot_every = args.snapshot_every;
    raft.log_retain = raft.log_retain.min(args.snapshot_every);
    // Requests give up well before a client would, so that it can try another manager.
    raft.request_timeout = Duration::from_secs(5);
    let mut config = ManagerConfig::new(state_dir, local.to_string(), "");
    config.raft = raft;
    config.dispatcher = dispatcher;
    config.initial_state = initial_state;
    config.replication = Some(Replication {
        name: name.clone(),
        advertise: advertise_addr.clone(),
        seed_peers,
        contact_window: (args.election_timeout * 2).max(Duration::from_millis(1500)),
    });
    let manager = Manager::start_on(listener, config).await?;
    if known_id.is_none() {
        write_id(state_dir, id).await?;
    }
    if new_cluster || args.force_new_cluster || args.restore.is_some() {
        let tokens = tokens::generate(&random_bytes(32)?);
        manager.cluster.propose(Command::InitTokens { tokens }).await.context("cannot store the join tokens")?;
    }
    eprintln!("shoal server: manager {name} (id {id}) serving on {advertise_addr}");
    if new_cluster {
        eprintln!("shoal server: new cluster; add managers with the token from `shoal -H {advertise_addr} cluster join-token manager`");
    }

    let agent = match engine {
        Some(engine) => Some(start_agent(&manager, engine, &name, &advertise_addr, args.token.clone(), labels).await?),
        None => None,
    };
    wait_for_signal().await?;
    eprintln!("shoal server: stopping (containers keep running)");
    if let Some(agent) = agent {
        agent.shutdown().await;
    }
    manager.shutdown().await;
    Ok(0)
}

async fn start_agent(
    manager: &Manager,
    engine: Arc<DockerEngine>,
    name: &str,
    advertise_addr: &str,
    given_token: Option<String>,
    labels: Vec<(String, String)>,
) -> anyhow::Result<LocalAgent> {
    // The tokens replicate with the state; a joining manager has its own token meanwhile.
    let mut changes = manager.cluster.subscribe();
    let token = loop {
        if let Some(tokens) = manager.cluster.read(|s| s.tokens.clone()) {
            break tokens.manager;
        }
        if let Some(token) = &given_token {
            break token.clone();
        }
        if changes.changed().await.is_err() {
            bail!("the manager stopped before the cluster had join tokens");
        }
    };
    let mut managers = vec![advertise_addr.to_string()];
    managers.extend(
        manager
            .cluster
            .read(|s| s.managers.values().map(|m| m.address.clone()).collect::<Vec<_>>())
            .into_iter()
            .filter(|a| a != advertise_addr),
    );
    let host = advertise_addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
    let config = LocalAgentConfig {
        managers,
        token,
        node_id: Some(name.to_string()),
        node_id_file: None,
        name: Some(name.to_string()),
        role: "manager".into(),
        logs_listen: "0.0.0.0:0".into(),
        advertise_host: Some(host.to_string()),
        labels,
    };
    LocalAgent::start(engine, config).await.context("cannot start the local agent")
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_become_ticks_and_nonsense_is_refused() {
        let (tick, hb, el) = raft_timing(Duration::from_secs(1), Duration::from_millis(100)).expect("valid");
        assert_eq!((tick, hb, el), (Duration::from_millis(100), 1, 10));
        let (tick, hb, el) = raft_timing(Duration::from_millis(500), Duration::from_millis(50)).expect("valid");
        assert_eq!((tick, hb, el), (Duration::from_millis(50), 1, 10));
        let err = raft_timing(Duration::from_millis(100), Duration::from_millis(200)).expect_err("refused");
        assert!(err.to_string().contains("--election-timeout"), "{err}");
    }

    #[test]
    fn the_advertised_address_defaults_sensibly() {
        let listen: SocketAddr = "127.0.0.1:4700".parse().expect("addr");
        assert_eq!(advertise(listen, None, &[]), "127.0.0.1:4700");
        assert_eq!(advertise(listen, Some("10.0.0.5"), &[]), "10.0.0.5:4700");
        assert_eq!(advertise(listen, Some("10.0.0.5:9000"), &[]), "10.0.0.5:9000");
        let wildcard: SocketAddr = "0.0.0.0:4700".parse().expect("addr");
        assert!(!advertise(wildcard, None, &["127.0.0.1:1".into()]).starts_with("0.0.0.0"));
    }

    #[test]
    fn node_timings_are_checked_and_named_by_their_flags() {
        let base = DispatcherConfig::new("token");
        let hold = Duration::from_secs(30);
        let config =
            node_timing(base.clone(), Duration::from_millis(500), Duration::from_secs(2), hold).expect("valid");
        assert_eq!((config.heartbeat_period, config.down_after), (Duration::from_millis(500), Duration::from_secs(2)));
        assert_eq!(config.mass_silence.hold, hold);
        assert_eq!(config.join_token, "token");

        let err = node_timing(base.clone(), Duration::from_secs(5), Duration::from_secs(5), hold).expect_err("refused");
        let text = err.to_string();
        assert!(text.starts_with("--node-down-after (5s) must be longer than --node-heartbeat (5s)"), "{text}");
        assert!(text.contains("hint: allow a few missed heartbeats, e.g. --node-down-after 15s"), "{text}");
        assert!(node_timing(base.clone(), Duration::from_secs(3), Duration::from_secs(1), hold).is_err());

        let err =
            node_timing(base.clone(), Duration::from_millis(10), Duration::from_secs(1), hold).expect_err("refused");
        assert!(err.to_string().starts_with("--node-heartbeat 10ms is too short"), "{err}");

        // A down window longer than the default hold is fine: the hold then never applies.
        node_timing(base.clone(), Duration::from_secs(2), Duration::from_secs(60), hold).expect("valid");
        let off =
            node_timing(base, Duration::from_secs(2), Duration::from_secs(6), Duration::ZERO).expect("0s: never hold");
        assert_eq!(off.mass_silence.hold, Duration::ZERO);
    }

    #[test]
    fn node_timings_default_to_a_down_window_within_ten_seconds() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            server: ServerArgs,
        }
        let cli = Cli::try_parse_from(["shoal"]).expect("defaults parse");
        assert_eq!(cli.server.node_heartbeat, Duration::from_secs(2));
        assert_eq!(cli.server.node_down_after, Duration::from_secs(6));
        assert!(cli.server.node_down_after <= Duration::from_secs(10));
        assert_eq!(cli.server.node_down_hold, Duration::from_secs(30));
        let cli =
            Cli::try_parse_from(["shoal", "--node-heartbeat", "250ms", "--node-down-after", "1s"]).expect("parse");
        assert_eq!(
            (cli.server.node_heartbeat, cli.server.node_down_after),
            (Duration::from_millis(250), Duration::from_secs(1))
        );
        assert!(Cli::try_parse_from(["shoal", "--node-down-after", "soon"]).is_err());
    }

    #[test]
    fn labels_need_a_key() {
        assert_eq!(parse_labels(&["zone=east".into()]).expect("ok"), vec![("zone".into(), "east".into())]);
        assert!(parse_labels(&["=x".into()]).is_err());
        assert!(parse_labels(&["novalue".into()]).is_err());
    }
}
