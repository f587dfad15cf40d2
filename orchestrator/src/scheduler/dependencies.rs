//! `depends_on` gating: a task starts only when each dependency meets its condition.
//! Independent services are never held back, so they start in parallel.

use crate::compose::model::{Dependency, DependencyCondition};
use crate::store::state::{ClusterState, DesiredState, Health, ServiceId, ServiceRecord, TaskState};

/// Why `service`'s tasks cannot start yet, or `None` when every dependency is satisfied.
pub fn waiting_for(state: &ClusterState, service: &ServiceRecord) -> Option<String> {
    service.spec.depends_on.iter().find_map(|(name, dependency)| {
        let id = ServiceId::new(service.id.stack.clone(), name.clone());
        match state.services.get(&id).filter(|s| !s.removing) {
            None if dependency.required => Some(format!("waiting for {name}, which is not deployed")),
            None => None,
            Some(record) => unmet(state, name, record, dependency),
        }
    })
}

fn unmet(state: &ClusterState, name: &str, dependency: &ServiceRecord, edge: &Dependency) -> Option<String> {
    let tasks: Vec<_> = state.service_tasks(&dependency.id).filter(|t| t.desired == DesiredState::Running).collect();
    let wanted = match dependency.mode {
        crate::store::state::ServiceMode::Global | crate::store::state::ServiceMode::GlobalJob => tasks.len() as u64,
        _ => dependency.replicas,
    };
    if wanted == 0 {
        return None;
    }
    let count = |ok: &dyn Fn(&crate::store::state::Task) -> bool| tasks.iter().filter(|t| ok(t)).count() as u64;
    match edge.condition {
        DependencyCondition::ServiceStarted => {
            // `Starting` is reported before the engine has started the container: not yet.
            let started = count(&|t| matches!(t.state, TaskState::Running | TaskState::Complete));
            (started < wanted).then(|| format!("waiting for {name} to start ({started} of {wanted} started)"))
        }
        DependencyCondition::ServiceHealthy => {
            let has_check = dependency.spec.healthcheck.as_ref().is_some_and(|h| {
                h.disable != Some(true) && h.test.as_ref().is_none_or(|t| t.first().map(String::as_str) != Some("NONE"))
            });
            if !has_check {
                return Some(format!(
                    "{name} has no healthcheck, so it can never become healthy (depends_on condition service_healthy)"
                ));
            }
            let healthy = count(&|t| t.state == TaskState::Running && t.health == Some(Health::Healthy));
            (healthy < wanted).then(|| format!("waiting for {name} to be healthy ({healthy} of {wanted} healthy)"))
        }
        DependencyCondition::ServiceCompletedSuccessfully => {
            if let Some(failed) = tasks.iter().find(|t| t.state.is_terminal() && t.exit_code.is_some_and(|c| c != 0)) {
                let code = failed.exit_code.unwrap_or_default();
                return Some(format!("{name} did not complete successfully: it exited with code {code}"));
            }
            let done = count(&|t| t.state == TaskState::Complete && t.exit_code == Some(0));
            (done < wanted).then(|| format!("waiting for {name} to complete successfully ({done} of {wanted} done)"))
        }
    }
}
