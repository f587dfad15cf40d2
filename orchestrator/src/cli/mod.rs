//! The `shoal` command line: argument definitions and dispatch. Each verb lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::compose::loader::LoadOptions;

pub mod config;

#[derive(Debug, Parser)]
#[command(name = "shoal", version, about = "Compose files on one host or many: a multi-container orchestrator")]
pub struct Cli {
    #[command(flatten)]
    pub project: ProjectArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The compose project flags, shared by every compose verb.
#[derive(Debug, Args, Clone, Default)]
pub struct ProjectArgs {
    /// Compose file(s); repeat to merge several (later files override earlier ones)
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
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
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Config(args) => config::run(&cli.project, &args),
    }
}
