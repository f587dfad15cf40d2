//! Engine driver benchmark: create+start N containers in parallel through the driver, versus N
//! parallel `docker run -d` of the same container, in the same run. Rounds alternate which side
//! goes first so neither always gets a warm (or cold) engine.
//!
//! Run with `scripts/bench-driver` (or `cargo run -p shoal-agent --example bench_driver -- [N]
//! [ROUNDS]`). Needs a running engine; imports the test image when missing.

use std::process::Command as StdCommand;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use shoal_agent::engine::docker::DockerEngine;
use shoal_agent::engine::RemoveOptions;
use shoal_agent::{ContainerSpec, Engine, TaskIdentity};

const IMAGE: &str = "shoal-test/busybox:latest";
const LABEL: &str = "io.shoal.bench";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test-image");
    let status = StdCommand::new("bash").arg(script).status()?;
    if !status.success() {
        return Err(format!("{script} failed").into());
    }
    let engine = Arc::new(DockerEngine::connect().await?);
    let run_id = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis().to_string();

    let mut driver_times = Vec::new();
    let mut cli_times = Vec::new();
    for round in 0..rounds {
        let tag = format!("{run_id}-{round}");
        let sides: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        for use_driver in sides {
            let result = if use_driver {
                driver_round(&engine, n, &format!("{tag}d")).await
            } else {
                cli_round(n, &format!("{tag}c")).await
            };
            cleanup(&run_id);
            let elapsed = result?;
            if use_driver {
                driver_times.push(elapsed);
            } else {
                cli_times.push(elapsed);
            }
        }
    }

    let d = median(&mut driver_times);
    let c = median(&mut cli_times);
    println!("containers per round: {n}, rounds: {rounds}");
    println!("driver create+start (parallel):  median {:>8.1} ms  all {:?}", ms(d), fmt_all(&driver_times));
    println!("docker run -d (parallel):        median {:>8.1} ms  all {:?}", ms(c), fmt_all(&cli_times));
    println!("ratio driver / docker run: {:.2}x", d.as_secs_f64() / c.as_secs_f64());
    Ok(())
}

async fn driver_round(engine: &Arc<DockerEngine>, n: usize, tag: &str) -> Result<Duration, String> {
    let specs: Vec<ContainerSpec> = (1..=n)
        .map(|i| {
            let mut s = ContainerSpec::new(
                TaskIdentity {
                    project: format!("bench{tag}"),
                    service: "s".into(),
                    container_number: i as u32,
                    config_hash: "bench".into(),
                    node_id: "bench".into(),
                    task_id: format!("bench-{tag}-{i}"),
                },
                IMAGE,
            );
            s.command = Some(vec!["sleep".into(), "300".into()]);
            s.init = Some(true);
            s.labels.insert(LABEL.into(), tag.split('-').next().unwrap_or(tag).into());
            s
        })
        .collect();
    let start = Instant::now();
    let handles: Vec<_> = specs
        .into_iter()
        .map(|s| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let id = engine.create(&s).await.map_err(|e| e.to_string())?;
                engine.start(&id).await.map_err(|e| e.to_string())
            })
        })
        .collect();
    for h in handles {
        h.await.map_err(|e| e.to_string())??;
    }
    let elapsed = start.elapsed();
    // Removal is not part of the measurement; do it through the driver to exercise it too.
    let ids = engine.list(&[(LABEL, tag.split('-').next().unwrap_or(tag))]).await.map_err(|e| e.to_string())?;
    for c in ids {
        let _ = engine.remove(&c.id, RemoveOptions { force: true, volumes: true }).await;
    }
    Ok(elapsed)
}

async fn cli_round(n: usize, tag: &str) -> Result<Duration, String> {
    let label = format!("{LABEL}={}", tag.split('-').next().unwrap_or(tag));
    let start = Instant::now();
    let children: Vec<_> = (1..=n)
        .map(|i| {
            tokio::process::Command::new("docker")
                .args(["run", "-d", "--init", "--label", &label, "--name", &format!("bench{tag}-s-{i}"), IMAGE])
                .args(["sleep", "300"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    for child in children {
        let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("docker run failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    Ok(start.elapsed())
}

/// Removes every container of this benchmark run (pass or fail).
fn cleanup(run_id: &str) {
    let filter = format!("label={LABEL}={run_id}");
    let out = StdCommand::new("docker").args(["ps", "-aq", "--filter", &filter]).output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
        if !ids.is_empty() {
            let _ = StdCommand::new("docker").args(["rm", "-fv"]).args(&ids).output();
        }
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_all(v: &[Duration]) -> Vec<String> {
    v.iter().map(|d| format!("{:.0}ms", ms(*d))).collect()
}
