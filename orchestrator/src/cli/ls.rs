//! `shoal ls`: the stacks the cluster runs.

use clap::Args;
use comfy_table::{presets, Table};
use shoal_proto::v1 as pb;

use super::connect::{connect, Target};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print only the names
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(target: &Target, args: &LsArgs) -> anyhow::Result<i32> {
    let connection = connect(target).await?;
    let mut control = connection.control.clone();
    let stacks = control.list_stacks(pb::ListStacksRequest {}).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let stacks = stacks.into_inner().stacks;
    if args.quiet {
        for stack in &stacks {
            println!("{}", stack.name);
        }
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
