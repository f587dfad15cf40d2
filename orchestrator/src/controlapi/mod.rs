//! The Control API: what the CLI asks of a cluster. Each request is validated here and turned
//! into store commands (writes) or answered from the state (reads). Logs are fetched from the
//! agents that run the containers.

mod cluster;
mod deploy;
mod logs;
mod nodes;
mod watch;

use std::pin::Pin;

use futures_util::Stream;
use shoal_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::manager::{Cluster, ClusterError};
use crate::store::command::Command;
use crate::store::state::{ClusterState, DesiredState, ServiceId, ServiceMode, Task, TaskState};
use crate::wire;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct ControlService {
    cluster: Cluster,
}

impl ControlService {
    pub fn new(cluster: Cluster) -> Self {
        ControlService { cluster }
    }

    pub fn into_server(self) -> pb::control_server::ControlServer<Self> {
        pb::control_server::ControlServer::new(self)
    }
}

/// Store errors as gRPC statuses: lost leadership and timeouts are retryable, rejections are
/// the caller's mistake.
pub fn status_of(error: ClusterError) -> Status {
    match error {
        ClusterError::Rejected(message) => Status::failed_precondition(message),
        ClusterError::Propose(e) => Status::unavailable(e.to_string()),
        ClusterError::Corrupt(e) => Status::internal(e),
        e @ (ClusterError::NoQuorum { .. } | ClusterError::Forward(_)) => Status::unavailable(e.to_string()),
    }
}

/// Tasks `ps` shows: those meant to run (pending ones with their reason included); with `all`,
/// also finished and departing ones.
fn visible(task: &Task, all: bool) -> bool {
    all || (task.desired == DesiredState::Running && !matches!(task.state, TaskState::Complete | TaskState::Failed))
}

pub fn task_view(state: &ClusterState, task: &Task) -> pb::Task {
    let name = state.services.get(&task.service).map(|s| task.actual_name(&s.spec)).unwrap_or_default();
    wire::task(task, name)
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn deploy_stack(
        &self,
        request: Request<pb::DeployStackRequest>,
    ) -> Result<Response<pb::DeployStackResponse>, Status> {
        deploy::deploy(&self.cluster, request.into_inner()).await.map(Response::new)
    }

    async fn remove_stack(
        &self,
        request: Request<pb::RemoveStackRequest>,
    ) -> Result<Response<pb::RemoveStackResponse>, Status> {
        let request = request.into_inner();
        let command = Command::RemoveStack {
            stack: request.stack,
            remove_volumes: request.remove_volumes,
            stop_timeout: request.timeout_seconds,
            at: crate::manager::cluster::now(),
        };
        self.cluster.propose(command).await.map_err(status_of)?;
        Ok(Response::new(pb::RemoveStackResponse {}))
    }

    async fn scale_service(
        &self,
        request: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::ScaleServiceResponse>, Status> {
        let request = request.into_inner();
        let service = request
            .service
            .as_ref()
            .map(wire::service_id)
            .ok_or_else(|| Status::invalid_argument("no service named"))?;
        let mode = self.cluster.read(|s| s.services.get(&service).map(|r| r.mode));
        match mode {
            None => return Err(Status::not_found(format!("no such service: {service}"))),
            Some(ServiceMode::Global | ServiceMode::GlobalJob) => {
                return Err(Status::failed_precondition(format!(
                    "{service} is a global service: it runs one task per node and cannot be scaled"
                )))
            }
            Some(_) => {}
        }
        let command = Command::ScaleService { service, replicas: request.replicas, at: crate::manager::cluster::now() };
        self.cluster.propose(command).await.map_err(status_of)?;
        Ok(Response::new(pb::ScaleServiceResponse {}))
    }

    async fn list_stacks(
        &self,
        request: Request<pb::ListStacksRequest>,
    ) -> Result<Response<pb::ListStacksResponse>, Status> {
        let stale = request.into_inner().stale;
        let stacks = self
            .cluster
            .read_consistent(stale, |state| {
                let counts = state.task_counts();
                state
                    .stacks
                    .values()
                    .map(|stack| {
                        let (running, total) = counts
                            .iter()
                            .filter(|(service, _)| service.stack == stack.name)
                            .fold((0, 0), |(running, total), (_, c)| (running + c.running, total + c.total));
                        let running = running as u32;
                        let status =
                            if stack.removing { "removing".to_string() } else { format!("running({running})") };
                        pb::StackSummary {
                            name: stack.name.clone(),
                            services: state.stack_services(&stack.name).count() as u32,
                            running,
                            tasks: total as u32,
                            status,
                            config_files: Vec::new(),
                            revision: stack.revision,
                        }
                    })
                    .collect()
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ListStacksResponse { stacks }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let pb::ListServicesRequest { stack, stale } = request.into_inner();
        let services = self
            .cluster
            .read_consistent(stale, |state| {
                let counts = state.task_counts();
                state
                    .services
                    .values()
                    .filter(|s| stack.is_empty() || s.id.stack == stack)
                    .map(|s| {
                        let count = counts.get(&s.id).copied().unwrap_or_default();
                        let running = count.running;
                        let desired = match s.mode {
                            ServiceMode::Global | ServiceMode::GlobalJob => count.wanted,
                            _ => s.replicas,
                        };
                        pb::ServiceSummary {
                            id: Some(wire::service_ref(&s.id)),
                            mode: wire::enum_text(&s.mode),
                            desired,
                            running,
                            image: s.spec.image.clone().unwrap_or_else(|| format!("{}-{}", s.id.stack, s.id.service)),
                            config_hash: s.config_hash.clone(),
                            removing: s.removing,
                        }
                    })
                    .collect()
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let request = request.into_inner();
        let tasks = self
            .cluster
            .read_consistent(request.stale, |state| {
                state
                    .tasks
                    .values()
                    .filter(|t| request.stack.is_empty() || t.service.stack == request.stack)
                    .filter(|t| request.services.is_empty() || request.services.contains(&t.service.service))
                    .filter(|t| visible(t, request.all))
                    .map(|t| task_view(state, t))
                    .collect()
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let stale = request.into_inner().stale;
        let nodes = self
            .cluster
            .read_consistent(stale, |s| s.nodes.values().map(|n| wire::node(s, n)).collect())
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        cluster::status(&self.cluster, request.into_inner().stale).await.map(Response::new)
    }

    async fn join_token(
        &self,
        request: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        cluster::join_token(&self.cluster, &request.into_inner().role).await.map(Response::new)
    }

    async fn backup(&self, _: Request<pb::BackupRequest>) -> Result<Response<pb::BackupResponse>, Status> {
        cluster::backup(&self.cluster).await.map(Response::new)
    }

    async fn update_manager(
        &self,
        request: Request<pb::UpdateManagerRequest>,
    ) -> Result<Response<pb::UpdateManagerResponse>, Status> {
        let message = cluster::update_manager(&self.cluster, request.into_inner()).await?;
        Ok(Response::new(pb::UpdateManagerResponse { message }))
    }

    async fn update_node(
        &self,
        request: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::UpdateNodeResponse>, Status> {
        let node = nodes::update_node(&self.cluster, request.into_inner()).await?;
        Ok(Response::new(pb::UpdateNodeResponse { node: Some(node) }))
    }

    async fn rebalance_service(
        &self,
        request: Request<pb::RebalanceServiceRequest>,
    ) -> Result<Response<pb::RebalanceServiceResponse>, Status> {
        let service = request
            .into_inner()
            .service
            .as_ref()
            .map(wire::service_id)
            .ok_or_else(|| Status::invalid_argument("no service named"))?;
        let mode = self.cluster.read_linearizable(|s| s.services.get(&service).map(|r| r.mode)).await;
        match mode.map_err(status_of)? {
            None => return Err(Status::not_found(format!("no such service: {service}"))),
            Some(ServiceMode::Global | ServiceMode::GlobalJob) => {
                return Err(Status::failed_precondition(format!(
                    "{service} is a global service: it runs one task per node, there is nothing to rebalance"
                )))
            }
            Some(_) => {}
        }
        let command = Command::RebalanceService { service, at: crate::manager::cluster::now() };
        self.cluster.propose(command).await.map_err(status_of)?;
        Ok(Response::new(pb::RebalanceServiceResponse {}))
    }

    async fn update_cluster(
        &self,
        request: Request<pb::UpdateClusterRequest>,
    ) -> Result<Response<pb::UpdateClusterResponse>, Status> {
        let request = request.into_inner();
        let Some(enabled) = request.rebalance_on_join else {
            return Err(Status::invalid_argument("nothing to update: give --rebalance-on-join true|false"));
        };
        self.cluster.propose(Command::SetRebalanceOnJoin { enabled }).await.map_err(status_of)?;
        Ok(Response::new(pb::UpdateClusterResponse {}))
    }

    type LogsStream = BoxStream<pb::LogChunk>;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        logs::logs(&self.cluster, request.into_inner()).await.map(Response::new)
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(watch::watch(self.cluster.clone(), request.into_inner().stack)))
    }
}

/// `stack/service` names used in messages.
pub fn service_name(id: &ServiceId) -> String {
    id.to_string()
}
