//! The `shoal` command line: argument definitions and dispatch. Each verb lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::compose::loader::{self, LoadOptions, LoadedProject};

pub mod agent;
pub mod cluster;
pub mod config;
pub mod connect;
pub mod converge;
pub mod down;
pub mod logs;
pub mod ls;
pub mod node;
pub mod progress;
pub mod ps;
pub mod scale;
pub mod server;
pub mod service;
pub mod sim;
pub mod up;
pub mod watch;

#[derive(Debug, Parser)]
#[command(name = "shoal", version, about = "Compose files on one host or many: a multi-container orchestrator")]
pub struct Cli {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Manager address(es) of a cluster, comma-separated; without it, shoal runs an embedded
    /// single-node cluster on the local Docker engine
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", global = true, value_name = "ADDR")]
    pub host: Option<String>,
    /// State directory of the embedded cluster (default: ~/.local/share/shoal)
    #[arg(long = "state-dir", env = "SHOAL_STATE_DIR", global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Answer reads from the contacted manager's copy of the state, which may lag the leader,
    /// instead of a linearizable read (works without a quorum)
    #[arg(long, global = true)]
    pub stale: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The compose project flags, shared by every compose verb.
#[derive(Debug, Args, Clone, Default)]
pub struct ProjectArgs {
    /// Compose file(s); repeat to merge several (later files override earlier ones). Given before
    /// the verb, as with docker compose: after it, `-f` is `logs --follow`
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Project name (default: COMPOSE_PROJECT_NAME, then `name:` in the file, then the directory)
    #[arg(short = 'p', long = "project-name", global = true, value_name = "NAME")]
    pub project_name: Option<String>,
    /// Read variables from this file instead of .env (repeatable)
    #[arg(long = "env-file", global = true, value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Enable services of this profile (repeatable; default: COMPOSE_PROFILES)
    #[arg(id = "profile", long = "profile", global = true, value_name = "NAME")]
    pub profiles: Vec<String>,
    /// Directory relative paths are resolved from (default: the first file's directory)
    #[arg(long = "project-directory", global = true, value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
}

impl ProjectArgs {
    pub fn load_options(&self) -> std::io::Result<LoadOptions> {
        let mut options = LoadOptions::from_process()?;
        options.files = self.files.clone();
        options.project_name = self.project_name.clone();
        options.env_files = self.env_files.clone();
        options.profiles = self.profiles.clone();
        options.project_directory = self.project_directory.clone();
        Ok(options)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the compose files and print the normalized project
    Config(config::ConfigArgs),
    /// Create and start the project's containers
    Up(up::UpArgs),
    /// Stop and remove the project's containers and networks
    Down(down::DownArgs),
    /// List the project's containers
    Ps(ps::PsArgs),
    /// Show the containers' output
    Logs(logs::LogsArgs),
    /// Set the number of replicas of services
    Scale(scale::ScaleArgs),
    /// List the running projects
    Ls(ls::LsArgs),
    /// Run a manager of a cluster (bootstrap, join, restore or recover one)
    Server(server::ServerArgs),
    /// Run this machine as a node of a cluster
    Agent(agent::AgentArgs),
    /// The control plane: status, join tokens, backups
    Cluster(cluster::ClusterArgs),
    /// The cluster's nodes: list, inspect, availability and labels; manager membership
    Node(node::NodeArgs),
    /// The cluster's services: list them, their tasks and where they run, rebalance
    Service(service::ServiceArgs),
    /// Simulate many nodes in this process (real agent sessions, in-memory engines), for scale tests
    Sim(sim::SimArgs),
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Config(args) = &cli.command {
        return config::run(&cli.project, args);
    }
    let mut target = connect::Target::new(cli.host.as_deref(), cli.state_dir.clone());
    target.stale = cli.stale;
    // At least four workers whatever the cores: a handler reading the state waits while a large
    // command is applied, and with one worker per core (2 here) two such waits stalled every
    // heartbeat of 10,000 nodes.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(cores.max(4)).enable_all().build()?;
    runtime.block_on(async {
        match &cli.command {
            Command::Config(_) => Ok(0),
            Command::Server(args) => {
                let state_dir = cli.state_dir.clone().unwrap_or_else(|| sibling_state_dir("shoal-server"));
                server::run(&state_dir, args).await
            }
            Command::Agent(args) => {
                let state_dir = cli.state_dir.clone().unwrap_or_else(|| sibling_state_dir("shoal-agent"));
                agent::run(&state_dir, args).await
            }
            Command::Cluster(args) => cluster::run(&target, args).await,
            Command::Node(args) => node::run(&target, args).await,
            Command::Service(args) => service::run(&cli.project, &target, args).await,
            Command::Up(args) => up::run(&cli.project, &target, args).await,
            Command::Down(args) => down::run(&cli.project, &target, args).await,
            Command::Ps(args) => ps::run(&cli.project, &target, args).await,
            Command::Logs(args) => logs::run(&cli.project, &target, args).await,
            Command::Scale(args) => scale::run(&cli.project, &target, args).await,
            Command::Ls(args) => ls::run(&target, args).await,
            Command::Sim(args) => sim::run(args).await,
        }
    })
}

/// `shoal server`'s and `shoal agent`'s default state dirs: beside the embedded cluster's, never
/// the same one.
fn sibling_state_dir(name: &str) -> PathBuf {
    connect::default_state_dir().with_file_name(name)
}

/// Loads the project, printing warnings, or the error (then `None`: exit 1, nothing changed).
pub fn load_project(args: &ProjectArgs) -> anyhow::Result<Option<LoadedProject>> {
    let options = args.load_options()?;
    match loader::load(&options) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(Some(loaded))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(None)
        }
    }
}

/// The project name for verbs that only need the name: from the files, or `-p` alone when
/// there are none (so `shoal -p shop down` works from anywhere).
pub fn project_name(args: &ProjectArgs) -> anyhow::Result<Option<String>> {
    let options = args.load_options()?;
    match loader::load(&options) {
        Ok(loaded) => Ok(Some(loaded.project.name)),
        Err(_) if args.project_name.is_some() && args.files.is_empty() => Ok(args.project_name.clone()),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        // clap checks these only when a verb is parsed in a debug build: check every verb now.
        super::Cli::command().debug_assert();
    }
}
