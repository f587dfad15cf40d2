//! Conversions between the store's types and the gRPC protocol's, in one place for the control
//! API and the dispatcher alike.

use shoal_proto::v1 as pb;

use crate::store::state::{ClusterState, DesiredState, Health, Node, ServiceId, Task, TaskState};

pub fn task_state(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Preparing => pb::TaskState::Preparing,
        TaskState::Starting => pb::TaskState::Starting,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Complete => pb::TaskState::Complete,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Shutdown => pb::TaskState::Shutdown,
        TaskState::Orphaned => pb::TaskState::Orphaned,
        TaskState::Removed => pb::TaskState::Removed,
    }
}

/// `None` for a value no state maps to (unspecified, or from a newer peer).
pub fn task_state_from(value: i32) -> Option<TaskState> {
    Some(match pb::TaskState::try_from(value).ok()? {
        pb::TaskState::Unspecified => return None,
        pb::TaskState::Pending => TaskState::Pending,
        pb::TaskState::Assigned => TaskState::Assigned,
        pb::TaskState::Preparing => TaskState::Preparing,
        pb::TaskState::Starting => TaskState::Starting,
        pb::TaskState::Running => TaskState::Running,
        pb::TaskState::Complete => TaskState::Complete,
        pb::TaskState::Failed => TaskState::Failed,
        pb::TaskState::Shutdown => TaskState::Shutdown,
        pb::TaskState::Orphaned => TaskState::Orphaned,
        pb::TaskState::Removed => TaskState::Removed,
    })
}

pub fn desired_state(state: DesiredState) -> pb::DesiredState {
    match state {
        DesiredState::Running => pb::DesiredState::Running,
        DesiredState::Shutdown => pb::DesiredState::Shutdown,
        DesiredState::Remove => pb::DesiredState::Remove,
    }
}

pub fn health(health: Option<Health>) -> pb::Health {
    match health {
        None => pb::Health::Unspecified,
        Some(Health::Starting) => pb::Health::Starting,
        Some(Health::Healthy) => pb::Health::Healthy,
        Some(Health::Unhealthy) => pb::Health::Unhealthy,
    }
}

pub fn health_from(value: i32) -> Option<Health> {
    match pb::Health::try_from(value).ok()? {
        pb::Health::Unspecified => None,
        pb::Health::Starting => Some(Health::Starting),
        pb::Health::Healthy => Some(Health::Healthy),
        pb::Health::Unhealthy => Some(Health::Unhealthy),
    }
}

pub fn service_ref(id: &ServiceId) -> pb::ServiceRef {
    pb::ServiceRef { stack: id.stack.clone(), service: id.service.clone() }
}

pub fn service_id(r: &pb::ServiceRef) -> ServiceId {
    ServiceId::new(r.stack.clone(), r.service.clone())
}

/// A task as clients see it; `container_name` is computed by the caller from the service spec.
pub fn task(task: &Task, container_name: String) -> pb::Task {
    pb::Task {
        id: task.id,
        service: Some(service_ref(&task.service)),
        slot: task.slot,
        desired: desired_state(task.desired) as i32,
        state: task_state(task.state) as i32,
        node: task.node.clone().unwrap_or_default(),
        container_id: task.container_id.clone().unwrap_or_default(),
        exit_code: task.exit_code,
        health: health(task.health) as i32,
        message: task.message.clone(),
        container_name,
        ports: task.ports.clone(),
        created_at_ms: task.created_at,
        updated_at_ms: task.updated_at,
        cleanup_errors: task.cleanup_errors.clone(),
        unplaceable: task.unplaceable && task.state == TaskState::Pending,
    }
}

/// A node as clients see it, with the labels its agent gave (kept apart from an operator's).
pub fn node(state: &ClusterState, node: &Node) -> pb::Node {
    let agent_labels = match state.node_labels.get(&node.id) {
        Some(labels) => labels.agent.clone(),
        None => node.labels.clone(),
    };
    pb::Node {
        id: node.id.clone(),
        hostname: node.hostname.clone(),
        role: enum_text(&node.role),
        availability: enum_text(&node.availability),
        status: enum_text(&node.status),
        nano_cpus: node.nano_cpus,
        memory_bytes: node.memory_bytes,
        labels: node.labels.clone().into_iter().collect(),
        os: node.os.clone(),
        arch: node.arch.clone(),
        engine_version: node.engine_version.clone(),
        address: node.address.clone().unwrap_or_default(),
        status_message: node.status_message.clone(),
        agent_labels: agent_labels.into_iter().collect(),
    }
}

/// The serde name of a unit enum value (`drain`, `ready`): one spelling for the API and the store.
pub fn enum_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_round_trip() {
        for state in [
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Preparing,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Shutdown,
            TaskState::Orphaned,
            TaskState::Removed,
        ] {
            assert_eq!(task_state_from(task_state(state) as i32), Some(state));
        }
        assert_eq!(task_state_from(0), None);
        assert_eq!(task_state_from(999), None);
    }

    #[test]
    fn health_round_trips() {
        for h in [None, Some(Health::Starting), Some(Health::Healthy), Some(Health::Unhealthy)] {
            assert_eq!(health_from(health(h) as i32), h);
        }
    }
}
