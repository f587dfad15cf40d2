//! `DeployStack`: the project arrives normalized and validated by the CLI; the manager checks
//! it again (it never trusts a client), works out what changes, and proposes one command.

use shoal_proto::v1 as pb;
use tonic::Status;

use super::status_of;
use crate::compose::model::{Project, Service};
use crate::dispatcher::taskspec::config_hash;
use crate::graph::ServiceGraph;
use crate::manager::cluster::now;
use crate::manager::Cluster;
use crate::store::command::{Command, RecreatePolicy, ServiceDeployment};
use crate::store::state::{ServiceId, ServiceMode};

pub fn mode_of(service: &Service) -> ServiceMode {
    match service.deploy.as_ref().and_then(|d| d.mode.as_deref()) {
        Some("global") => ServiceMode::Global,
        Some("global-job") => ServiceMode::GlobalJob,
        Some("replicated-job") => ServiceMode::ReplicatedJob,
        _ => ServiceMode::Replicated,
    }
}

pub async fn deploy(cluster: &Cluster, request: pb::DeployStackRequest) -> Result<pb::DeployStackResponse, Status> {
    let project: Project = serde_json::from_slice(&request.project_json)
        .map_err(|e| Status::invalid_argument(format!("the project is not a normalized compose model: {e}")))?;
    if request.stack.is_empty() || request.stack != project.name {
        return Err(Status::invalid_argument(format!(
            "stack name {:?} does not match the project's name {:?}",
            request.stack, project.name
        )));
    }
    let graph = ServiceGraph::build(&project).map_err(|e| Status::invalid_argument(e.to_string()))?;
    for name in &request.services {
        if !project.services.contains_key(name) {
            return Err(Status::invalid_argument(format!("no such service in the project: {name}")));
        }
    }
    let only: Vec<String> = if request.services.is_empty() {
        Vec::new()
    } else {
        graph.subgraph_with_dependencies(&request.services).into_iter().collect()
    };
    let services: Vec<ServiceDeployment> = project
        .services
        .iter()
        .map(|(name, spec)| {
            let mode = mode_of(spec);
            let replicas = match mode {
                ServiceMode::Global | ServiceMode::GlobalJob => 0,
                _ => spec.replicas(),
            };
            ServiceDeployment {
                name: name.clone(),
                spec: spec.clone(),
                config_hash: config_hash(&project, name, spec),
                mode,
                replicas,
            }
        })
        .collect();

    let stack = request.stack.clone();
    let (orphans, recreated) = cluster.read(|state| {
        let orphans: Vec<String> = state
            .stack_services(&stack)
            .filter(|s| !s.removing && !project.services.contains_key(&s.id.service))
            .map(|s| s.id.service.clone())
            .collect();
        let recreated: Vec<String> = services
            .iter()
            .filter(|d| only.is_empty() || only.contains(&d.name))
            .filter(|d| {
                let id = ServiceId::new(stack.clone(), d.name.clone());
                state.services.get(&id).is_some_and(|s| s.config_hash != d.config_hash || request.force_recreate)
            })
            .map(|d| d.name.clone())
            .collect();
        (orphans, recreated)
    });
    let recreate = if request.force_recreate {
        RecreatePolicy::Force
    } else if request.no_recreate {
        RecreatePolicy::Never
    } else {
        RecreatePolicy::Changed
    };
    let command = Command::DeployStack {
        stack,
        project: Box::new(project),
        services,
        remove_orphans: request.remove_orphans,
        only,
        recreate,
        at: now(),
        request_id: request.request_id.clone(),
    };
    cluster.propose(command).await.map_err(status_of)?;
    let recreated = if request.no_recreate { Vec::new() } else { recreated };
    let orphans = if request.remove_orphans { Vec::new() } else { orphans };
    Ok(pb::DeployStackResponse { orphans, recreated })
}
