//! Engine errors: each variant is a situation the caller (or the user) can act on, with a message
//! that says what to do rather than echoing the engine's raw response.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {host}: is it running? ({cause})")]
    Unreachable { host: String, cause: String },

    #[error("image {image} not found locally and could not be pulled: {reason}")]
    ImageUnavailable { image: String, reason: String },

    #[error("image {image} not found locally and pull_policy is \"never\"")]
    ImageMissingNoPull { image: String },

    #[error("image {image} has pull_policy \"build\" but no build section")]
    NothingToBuild { image: String },

    #[error("building image {image} failed: {message}")]
    Build { image: String, message: String },

    #[error("build context {path}: {message}")]
    BuildContext { path: String, message: String },

    #[error("network {name} is declared external but does not exist: create it first (docker network create {name})")]
    ExternalNetworkMissing { name: String },

    #[error("volume {name} is declared external but does not exist: create it first (docker volume create {name})")]
    ExternalVolumeMissing { name: String },

    #[error("no such container: {0}")]
    ContainerNotFound(String),

    /// `create`: another container already has this name.
    #[error("the container name {name} is already in use by another container: remove or rename that one")]
    NameInUse { name: String },

    #[error("container {0} has no healthcheck to wait for")]
    NoHealthcheck(String),

    #[error("invalid container spec: {0}")]
    InvalidSpec(String),

    /// The engine could not bind a published port on the host. `port` is `8080` or `8080/udp`,
    /// when the engine's message says which.
    #[error(
        "{} is already in use (another container or process holds it); choose another published \
         port or stop the holder",
        port.as_deref().map_or_else(|| "a published host port".to_string(), |p| format!("host port {p}"))
    )]
    PortInUse { port: Option<String> },

    /// Any other refusal by the engine; `context` says what we were doing.
    #[error("{context}: {message}")]
    Api { context: String, status: Option<u16>, message: String },
}

impl EngineError {
    pub fn api(context: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::Api { context: context.into(), status: None, message: message.into() }
    }
}
