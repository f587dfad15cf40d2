//! An unreachable engine is one clear error. Alone in its own test binary because it changes
//! `DOCKER_HOST` for the whole process.

use std::os::unix::net::UnixListener;

use shoal_agent::engine::docker::DockerEngine;
use shoal_agent::EngineError;

#[tokio::test]
async fn unreachable_engine_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();

    // A socket file nobody listens on: what a crashed daemon leaves behind.
    let dead = dir.path().join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap());
    let host = format!("unix://{}", dead.display());
    // SAFETY: the only test in this binary, so no other thread reads the environment.
    std::env::set_var("DOCKER_HOST", &host);
    let err = DockerEngine::connect().await.err().expect("connect must fail");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, EngineError::Unreachable { .. }), "{text}");
    let prefix = format!("cannot reach the Docker engine at {host}: is it running? (");
    assert!(text.starts_with(&prefix), "{text}");
    assert!(text.to_lowercase().contains("connection refused"), "cause given: {text}");

    // No socket at all.
    let missing = format!("unix://{}", dir.path().join("absent.sock").display());
    std::env::set_var("DOCKER_HOST", &missing);
    let text = DockerEngine::connect().await.err().expect("must fail").to_string();
    assert!(text.starts_with(&format!("cannot reach the Docker engine at {missing}: is it running? (")), "{text}");
    std::env::remove_var("DOCKER_HOST");
}
