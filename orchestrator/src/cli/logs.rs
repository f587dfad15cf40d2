//! `shoal logs`: the containers' output, each line prefixed with its container name (coloured
//! per container on a terminal).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use clap::Args;
use futures_util::{Stream, StreamExt};
use shoal_proto::v1 as pb;

use super::connect::{connect, Target};
use super::{project_name, ProjectArgs};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following new output
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Lines from the end of each container's log
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// Show timestamps
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Only these services
    pub services: Vec<String>,
}

pub async fn run(project_args: &ProjectArgs, target: &Target, args: &LogsArgs) -> anyhow::Result<i32> {
    let Some(stack) = project_name(project_args)? else { return Ok(1) };
    let connection = connect(target).await?;
    let mut control = connection.control.clone();
    let stream = control
        .logs(pb::LogsRequest {
            stack,
            services: args.services.clone(),
            follow: args.follow,
            tail: args.tail,
            timestamps: args.timestamps,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let result = print(stream, args.timestamps).await;
    connection.close().await;
    result.map(|()| 0)
}

const COLOURS: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

/// Prints chunks line by line with a per-container prefix until the stream ends.
pub async fn print(
    mut stream: impl Stream<Item = Result<pb::LogChunk, tonic::Status>> + Unpin,
    timestamps: bool,
) -> anyhow::Result<()> {
    let colour = std::io::stdout().is_terminal();
    let mut colours: BTreeMap<String, &str> = BTreeMap::new();
    // Output arrives in chunks that may split lines; keep each container's partial line.
    let mut partial: BTreeMap<(String, bool), String> = BTreeMap::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(status) => {
                eprintln!("warning: {}", status.message());
                continue;
            }
        };
        let next = COLOURS[colours.len() % COLOURS.len()];
        let code = *colours.entry(chunk.container_name.clone()).or_insert(next);
        let buffer = partial.entry((chunk.container_name.clone(), chunk.stderr)).or_default();
        buffer.push_str(&String::from_utf8_lossy(&chunk.data));
        let mut out = std::io::stdout().lock();
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let prefix = if colour {
                format!("\x1b[{code}m{:<24} |\x1b[0m", chunk.container_name)
            } else {
                format!("{:<24} |", chunk.container_name)
            };
            let stamp =
                if timestamps && !chunk.timestamp.is_empty() { format!(" {}", chunk.timestamp) } else { String::new() };
            write!(out, "{prefix}{stamp} {line}")?;
        }
    }
    Ok(())
}
