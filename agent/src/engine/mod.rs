//! The engine interface: the only way the agent touches containers.
//!
//! Kept small so that an in-memory [`mock::MockEngine`] can stand in for Docker when simulating
//! thousands of nodes. Methods return `Send` futures so runners can drive them from spawned tasks.

use std::future::Future;
use std::time::Duration;

use futures_util::stream::BoxStream;
use tokio::sync::mpsc::UnboundedSender;

use crate::spec::{ContainerSpec, ImageSpec, NetworkSpec, VolumeSpec};

pub mod docker;
mod error;
pub mod mock;
mod types;

pub use error::EngineError;
pub use types::*;

pub type EngineResult<T> = Result<T, EngineError>;

/// Receives human-readable progress lines (build output, pull status).
pub type ProgressSink = UnboundedSender<String>;

pub trait Engine: Send + Sync + 'static {
    /// Creates the network unless it exists (then returns its id). External networks are only
    /// looked up.
    fn ensure_network(&self, spec: &NetworkSpec) -> impl Future<Output = EngineResult<String>> + Send;

    /// Removes a network; a missing one is not an error.
    fn remove_network(&self, name: &str) -> impl Future<Output = EngineResult<()>> + Send;

    /// Creates the volume unless it exists (then returns its name). External volumes are only
    /// looked up.
    fn ensure_volume(&self, spec: &VolumeSpec) -> impl Future<Output = EngineResult<String>> + Send;

    /// Removes a volume; a missing one is not an error.
    fn remove_volume(&self, name: &str) -> impl Future<Output = EngineResult<()>> + Send;

    /// Makes the image available per its pull policy: use the local one, build it, or pull it.
    fn ensure_image(
        &self,
        spec: &ImageSpec,
        progress: Option<ProgressSink>,
    ) -> impl Future<Output = EngineResult<ImageReady>> + Send;

    /// Creates (does not start) the container and joins its networks; returns its id.
    fn create(&self, spec: &ContainerSpec) -> impl Future<Output = EngineResult<String>> + Send;

    fn start(&self, id: &str) -> impl Future<Output = EngineResult<()>> + Send;

    fn wait(&self, id: &str, until: WaitCondition) -> impl Future<Output = EngineResult<WaitOutcome>> + Send;

    /// Sends the container's stop signal, waits up to `grace`, then kills it.
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = EngineResult<StopOutcome>> + Send;

    /// Removes the container; a missing one is not an error.
    fn remove(&self, id: &str, opts: RemoveOptions) -> impl Future<Output = EngineResult<()>> + Send;

    fn logs(&self, id: &str, opts: LogOptions) -> BoxStream<'static, EngineResult<LogChunk>>;

    /// Subscribes to container events (start, die, oom, health_status, destroy). The subscription
    /// is registered (or replays from `filter.since`) by the time the future resolves.
    fn events(
        &self,
        filter: EventFilter,
    ) -> impl Future<Output = EngineResult<BoxStream<'static, EngineResult<EngineEvent>>>> + Send;

    fn inspect(&self, id: &str) -> impl Future<Output = EngineResult<ContainerState>> + Send;

    /// All containers (running or not) carrying every given label.
    fn list(&self, labels: &[(&str, &str)]) -> impl Future<Output = EngineResult<Vec<ContainerState>>> + Send;

    /// The host's facts (name, CPUs, memory, OS/arch, engine version), for node registration.
    fn info(&self) -> impl Future<Output = EngineResult<EngineInfo>> + Send;
}
