//! When a finished task is replaced: the service's `deploy.restart_policy`, else its compose
//! `restart`, else compose's default (`no`).

use crate::compose::model::Service;
use crate::store::state::{Millis, Task, TaskState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub condition: Condition,
    /// `None`: unlimited.
    pub max_attempts: Option<u64>,
    /// `None`: docker's backoff (100 ms doubling, at most 10 s).
    pub delay_ms: Option<Millis>,
}

impl RestartPolicy {
    pub fn of(service: &Service) -> RestartPolicy {
        if let Some(policy) = service.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()) {
            let condition = match policy.condition.as_deref() {
                Some("none") => Condition::Never,
                Some("on-failure") => Condition::OnFailure,
                _ => Condition::Always, // swarm's default is `any`
            };
            return RestartPolicy {
                condition,
                max_attempts: policy.max_attempts.filter(|n| *n > 0),
                delay_ms: policy.delay.map(|d| d.0.as_millis() as Millis),
            };
        }
        let restart = service.restart.as_deref().unwrap_or("no");
        let (condition, max_attempts) = match restart.split_once(':') {
            Some(("on-failure", n)) => (Condition::OnFailure, n.parse().ok().filter(|n| *n > 0)),
            _ => match restart {
                "always" | "unless-stopped" => (Condition::Always, None),
                "on-failure" => (Condition::OnFailure, None),
                _ => (Condition::Never, None),
            },
        };
        RestartPolicy { condition, max_attempts, delay_ms: None }
    }

    /// Should this finished task be replaced by a new one in its slot?
    pub fn should_restart(&self, task: &Task) -> bool {
        let failed = match task.state {
            TaskState::Failed => true,
            TaskState::Complete => task.exit_code.is_some_and(|c| c != 0),
            _ => false,
        };
        let wanted = match self.condition {
            Condition::Never => false,
            Condition::OnFailure => failed,
            Condition::Always => true,
        };
        wanted && self.max_attempts.is_none_or(|max| u64::from(task.restarts) < max)
    }

    /// When the replacement may start.
    pub fn next_start(&self, task: &Task) -> Millis {
        let delay = self.delay_ms.unwrap_or_else(|| (100u64 << task.restarts.min(7)).min(10_000));
        task.updated_at + delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::ServiceId;

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn finished(state: TaskState, exit: i64, restarts: u32) -> Task {
        Task {
            state,
            node: Some("n".into()),
            exit_code: Some(exit),
            restarts,
            updated_at: 1_000,
            ..Task::pending(1, ServiceId::new("p", "s"), 1, String::new(), 1, 0)
        }
    }

    #[test]
    fn compose_restart_values() {
        let no = RestartPolicy::of(&service("image: x"));
        assert!(!no.should_restart(&finished(TaskState::Failed, 1, 0)));
        let always = RestartPolicy::of(&service("{image: x, restart: always}"));
        assert!(always.should_restart(&finished(TaskState::Complete, 0, 50)));
        let on_failure = RestartPolicy::of(&service("{image: x, restart: 'on-failure:2'}"));
        assert!(on_failure.should_restart(&finished(TaskState::Complete, 3, 1)));
        assert!(!on_failure.should_restart(&finished(TaskState::Complete, 3, 2)), "max attempts reached");
        assert!(!on_failure.should_restart(&finished(TaskState::Complete, 0, 0)), "exit 0 is success");
    }

    #[test]
    fn deploy_restart_policy_wins() {
        let p = RestartPolicy::of(&service(
            "{image: x, restart: always, deploy: {restart_policy: {condition: on-failure, delay: 3s, max_attempts: 1}}}",
        ));
        assert_eq!(p.condition, Condition::OnFailure);
        assert_eq!(p.next_start(&finished(TaskState::Failed, 1, 0)), 4_000);
        assert!(!p.should_restart(&finished(TaskState::Failed, 1, 1)));
    }

    #[test]
    fn default_backoff_doubles_up_to_ten_seconds() {
        let p = RestartPolicy::of(&service("{image: x, restart: always}"));
        assert_eq!(p.next_start(&finished(TaskState::Failed, 1, 0)), 1_100);
        assert_eq!(p.next_start(&finished(TaskState::Failed, 1, 3)), 1_800);
        assert_eq!(p.next_start(&finished(TaskState::Failed, 1, 30)), 11_000);
    }
}
