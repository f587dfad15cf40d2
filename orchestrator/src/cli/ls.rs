//! `shoal ls`: the stacks the cluster runs.

use clap::{Args, ValueEnum};
use comfy_table::{presets, Table};
use shoal_proto::v1 as pb;

use super::connect::{connect, Target};

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print only the names
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub async fn run(target: &Target, args: &LsArgs) -> anyhow::Result<i32> {
    let mut connection = connect(target).await?;
    let request = pb::ListStacksRequest { stale: target.stale };
    let stacks = connection
        .with_failover(|mut c| async move { c.list_stacks(request).await })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let stacks = stacks.into_inner().stacks;
    if args.quiet {
        for stack in &stacks {
            println!("{}", stack.name);
        }
    } else if let Format::Json = args.format {
        let json: Vec<_> = stacks
            .iter()
            .map(|s| {
                serde_json::json!({
                    "Name": s.name,
                    "Status": s.status,
                    "Services": s.services,
                    "Containers": s.tasks,
                    "Running": s.running,
                    "Revision": s.revision,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let mut table = Table::new();
        table.load_preset(presets::NOTHING);
        table.set_header(["NAME", "STATUS", "SERVICES", "CONTAINERS"]);
        for s in &stacks {
            table.add_row([s.name.clone(), s.status.clone(), s.services.to_string(), s.tasks.to_string()]);
        }
        println!("{table}");
    }
    connection.close().await;
    Ok(0)
}
