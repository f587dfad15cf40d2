//! `shoal logs`: the containers' output, each line prefixed with its container name (coloured
//! per container on a terminal).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use clap::Args;
use futures_util::{Stream, StreamExt};
use shoal_proto::v1 as pb;

use super::connect::{connect, Connection, Target};
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
    let mut connection = connect(target).await?;
    let request = pb::LogsRequest {
        stack,
        services: args.services.clone(),
        follow: args.follow,
        tail: args.tail,
        timestamps: args.timestamps,
    };
    let result = follow(&mut connection, request).await;
    connection.close().await;
    result.map(|()| 0)
}

/// Prints what `request` asks for until the output ends. Output also ends when the manager
/// serving it goes away (see [`Connection::recover`]); then the next one is asked for the rest:
/// all of it if nothing was printed yet, else — when following — only new lines (those written
/// during the switch are missed, rather than everything printed twice). A followed stream that
/// breaks on the wire while its manager stays (a connection reset) is asked for again the same
/// way, up to [`MAX_REOPENS`] times in a row without a line.
pub async fn follow(connection: &mut Connection, mut request: pb::LogsRequest) -> anyhow::Result<()> {
    let mut reopens = 0;
    loop {
        let stream = connection
            .with_failover(|mut c| {
                let request = request.clone();
                async move { c.logs(request).await }
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let printed = print(stream, request.timestamps).await?;
        // A stream that broke on our side of the wire (a connection reset; the manager may
        // well still be there) is followed on, like one whose manager went away; an error the
        // manager sent is its answer.
        let broke = printed.last_error.as_ref().is_some_and(|status| std::error::Error::source(status).is_some());
        reopens = if printed.lines > 0 { 1 } else { reopens + 1 };
        let manager_gone = connection.recover().await?;
        let follow_on = broke && request.follow && reopens <= MAX_REOPENS;
        if !(manager_gone || follow_on) {
            if let Some(status) = printed.last_error {
                eprintln!("warning: {}", status.message());
            }
            return Ok(());
        }
        // The last error was the manager going away: nothing to warn about.
        if printed.lines > 0 {
            anyhow::ensure!(
                request.follow,
                "the manager serving the logs went away; the output above may be incomplete"
            );
            request.tail = Some(0);
        }
    }
}

/// Times in a row a followed stream may break on the wire without a line in between before
/// `logs -f` gives up.
const MAX_REOPENS: u32 = 5;

const COLOURS: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

/// What [`print`] printed.
pub struct Printed {
    pub lines: usize,
    /// The stream's last error, not printed: the caller tells whether it matters (a stream that
    /// fails and ends may just mean its manager went away). Earlier errors are printed as
    /// warnings (a node whose logs cannot be read).
    pub last_error: Option<tonic::Status>,
}

/// Prints chunks line by line with a per-container prefix until the stream ends.
pub async fn print(
    mut stream: impl Stream<Item = Result<pb::LogChunk, tonic::Status>> + Unpin,
    timestamps: bool,
) -> anyhow::Result<Printed> {
    let mut printed = Printed { lines: 0, last_error: None };
    let colour = std::io::stdout().is_terminal();
    let mut colours: BTreeMap<String, &str> = BTreeMap::new();
    // Output arrives in chunks that may split lines; keep each container's partial line.
    let mut partial: BTreeMap<(String, bool), String> = BTreeMap::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(status) => {
                if let Some(earlier) = printed.last_error.replace(status) {
                    eprintln!("warning: {}", earlier.message());
                }
                continue;
            }
        };
        if let Some(earlier) = printed.last_error.take() {
            eprintln!("warning: {}", earlier.message());
        }
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
            printed.lines += 1;
        }
    }
    Ok(printed)
}
