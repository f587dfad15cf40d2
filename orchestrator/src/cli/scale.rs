//! `shoal scale SERVICE=N...`: change replica counts and wait until the new tasks have started
//! or cannot be placed (a warning: they start once a node fits them).

use std::collections::BTreeSet;

use clap::Args;
use shoal_proto::v1 as pb;

use super::connect::{connect, Connection, Target};
use super::converge::{print_reasons, print_unplaceable, Goal, Verdict};
use super::{load_project, ProjectArgs};
use crate::compose::model::Project;

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// SERVICE=REPLICAS pairs
    #[arg(required = true, value_name = "SERVICE=N")]
    pub targets: Vec<String>,
    /// Return without waiting for the containers to start
    #[arg(short = 'd', long)]
    pub detach: bool,
}

fn parse(target: &str) -> Result<(String, u64), String> {
    let (service, replicas) = target.split_once('=').ok_or_else(|| format!("{target:?}: expected SERVICE=N"))?;
    let replicas = replicas.parse().map_err(|_| format!("{target:?}: {replicas:?} is not a number of replicas"))?;
    Ok((service.to_string(), replicas))
}

pub async fn run(project_args: &ProjectArgs, target: &Target, args: &ScaleArgs) -> anyhow::Result<i32> {
    let mut wanted = Vec::new();
    for t in &args.targets {
        match parse(t) {
            Ok(pair) => wanted.push(pair),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(1);
            }
        }
    }
    let Some(loaded) = load_project(project_args)? else { return Ok(1) };
    let mut connection = connect(target).await?;
    let result = scale(&mut connection, loaded.project, &wanted, args.detach).await;
    connection.close().await;
    result
}

/// Sets the replica counts (a count set twice is the same count: safe to repeat), then waits.
async fn scale(
    connection: &mut Connection,
    mut project: Project,
    wanted: &[(String, u64)],
    detach: bool,
) -> anyhow::Result<i32> {
    for (service, replicas) in wanted {
        let request = pb::ScaleServiceRequest {
            service: Some(pb::ServiceRef { stack: project.name.clone(), service: service.clone() }),
            replicas: *replicas,
        };
        let scaled = connection
            .with_failover(|mut c| {
                let request = request.clone();
                async move { c.scale_service(request).await }
            })
            .await;
        if let Err(status) = scaled {
            eprintln!("error: {}", status.message());
            return Ok(1);
        }
        // Judge convergence against the new counts.
        if let Some(spec) = project.services.get_mut(service) {
            spec.scale = Some(*replicas);
            if let Some(deploy) = spec.deploy.as_mut() {
                deploy.replicas = Some(*replicas);
            }
        }
    }
    if detach {
        return Ok(0);
    }
    let selected: BTreeSet<String> = wanted.iter().map(|(s, _)| s.clone()).collect();
    let none = BTreeSet::new();
    match super::up::wait_for(connection, &project, &selected, &none, Goal::Started, None).await? {
        Verdict::Failed(reasons) => {
            print_reasons(&reasons);
            Ok(1)
        }
        Verdict::Unplaceable(reasons) => {
            print_unplaceable(&project.name, &reasons);
            super::up::settle(connection, &project, &selected, None).await?;
            Ok(0)
        }
        // Scaled down: the surplus containers go before this process (and with it the
        // embedded agent that removes them) exits.
        _ => {
            super::up::settle(connection, &project, &selected, None).await?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_pairs() {
        assert_eq!(super::parse("web=3"), Ok(("web".into(), 3)));
        assert!(super::parse("web").is_err());
        assert!(super::parse("web=x").is_err());
    }
}
