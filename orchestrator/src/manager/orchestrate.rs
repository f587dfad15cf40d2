//! The leader's orchestration loop: after every change (and on a short tick, for restart delays
//! and heartbeat deadlines) run the reconciler, the scheduler and rebalancing (for services that
//! asked for it) over the current state and propose what they decide. Followers idle; a new leader picks up where the old one stopped,
//! because the decisions depend only on the replicated state.

use std::time::Duration;

use tokio::sync::watch;

use super::cluster::{now, Cluster};
use crate::reconciler::reconcile;
use crate::scheduler::rebalance::rebalance_all;
use crate::scheduler::schedule;
use crate::store::command::MAX_TASKS_PER_COMMAND;
use crate::store::state::ClusterState;

/// How often the loop runs without a change (time-based decisions: restart delays).
pub const TICK: Duration = Duration::from_millis(250);

/// Rounds up to this long follow each other at once; a longer one is followed by a rest (see
/// `run`), so small clusters stay as quick as ever.
const MAX_UNRESTED_ROUND: Duration = Duration::from_millis(10);

pub async fn run(cluster: Cluster, mut shutdown: watch::Receiver<bool>) {
    let mut changes = cluster.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rested = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        // A long round (a large state under a stream of changes) is followed by a rest as long
        // as it took: the managers share the machine's cores with everything else, and
        // applying, heartbeats and reports must keep at least half of them.
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep_until(rested) => {}
        }
        if *shutdown.borrow() {
            return;
        }
        if !cluster.is_leader() {
            continue;
        }
        let at = now();
        let started = tokio::time::Instant::now();
        // A round over a large state takes a while (100,000 tasks: ~0.4 s, `cargo bench --bench
        // scheduler`): on a blocking thread, so that the runtime's workers keep serving
        // heartbeats and reports meanwhile, and over a copy of the state (tasks are shared, so
        // it costs milliseconds), so that the raft thread is not kept from applying meanwhile.
        let reader = cluster.clone();
        let decided = tokio::task::spawn_blocking(move || {
            let state = reader.read(ClusterState::clone);
            let mut commands = reconcile(&state, at);
            commands.extend(schedule(&state, at));
            // Moves start only for settled services, where reconcile and schedule have nothing
            // to do, so deciding them from the same snapshot cannot conflict.
            commands.extend(rebalance_all(&state, at));
            commands
        })
        .await;
        let took = started.elapsed();
        let rest = if took > MAX_UNRESTED_ROUND { took } else { Duration::ZERO };
        rested = tokio::time::Instant::now() + rest;
        let commands = match decided {
            Ok(commands) => commands,
            Err(e) => {
                tracing::error!("an orchestration round failed: {e}");
                continue;
            }
        };
        if commands.is_empty() {
            continue;
        }
        let commands: Vec<_> = commands.into_iter().flat_map(|c| c.split(MAX_TASKS_PER_COMMAND)).collect();
        let pieces = commands.len();
        let proposed = tokio::time::Instant::now();
        match cluster.propose_all(commands).await {
            Ok(_) => tracing::debug!(
                round_ms = took.as_millis() as u64,
                commit_ms = proposed.elapsed().as_millis() as u64,
                pieces,
                "orchestration round applied"
            ),
            // Lost leadership or a slow disk: the next round decides again from fresh state.
            Err(e) => tracing::debug!("orchestration round not applied: {e}"),
        }
    }
}
