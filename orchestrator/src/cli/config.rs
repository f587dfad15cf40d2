//! `shoal config`: load, validate and print the normalized project.

use std::io::Write;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::ProjectArgs;
use crate::compose::loader::{self, LoadedProject};
use crate::compose::render;
use crate::compose::support::unsupported_attributes;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
    /// Print the service names, one per line
    #[arg(long)]
    pub services: bool,
    /// Print the volume names, one per line
    #[arg(long)]
    pub volumes: bool,
    /// Print the profile names, one per line
    #[arg(long = "profiles")]
    pub list_profiles: bool,
    /// Only validate; print nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
    /// List the attributes in use that Shoal does not act on yet
    #[arg(long)]
    pub unsupported: bool,
}

pub fn run(project_args: &ProjectArgs, args: &ConfigArgs) -> anyhow::Result<i32> {
    let options = project_args.load_options().context("cannot read the working directory")?;
    let loaded = match loader::load(&options) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    if args.quiet {
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let text = render(&loaded, args)?;
    out.write_all(text.as_bytes())?;
    Ok(0)
}

fn render(loaded: &LoadedProject, args: &ConfigArgs) -> anyhow::Result<String> {
    let lines = |items: Vec<String>| items.into_iter().map(|i| i + "\n").collect::<String>();
    let project = &loaded.project;
    if args.services {
        return Ok(lines(project.services.keys().cloned().collect()));
    }
    if args.volumes {
        return Ok(lines(project.volumes.keys().cloned().collect()));
    }
    if args.list_profiles {
        return Ok(lines(loaded.all_profiles.iter().cloned().collect()));
    }
    if args.unsupported {
        return Ok(lines(unsupported_attributes(project).iter().map(ToString::to_string).collect()));
    }
    // Output that loads back to the same project (quoting, `$$`): see `compose::render`.
    Ok(match args.format {
        Format::Yaml => render::to_yaml(project)?,
        Format::Json => render::to_json(project)?,
    })
}
