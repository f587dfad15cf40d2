//! Getting an image onto the node: keep the local one, build it from a context, or pull it.

use bollard::query_parameters::{BuildImageOptions, CreateImageOptions};
use futures_util::stream::StreamExt;

use super::{context, error_chain, status, DockerEngine};
use crate::engine::{EngineError, EngineResult, ImageReady, ImageSource, ProgressSink};
use crate::spec::{BuildSpec, ImageSpec, PullPolicy};

pub(super) async fn ensure(
    engine: &DockerEngine,
    spec: &ImageSpec,
    progress: Option<ProgressSink>,
) -> EngineResult<ImageReady> {
    let reference = spec.reference();
    let present = is_present(engine, &reference).await?;
    let ready = |how| ImageReady { reference: reference.clone(), how };
    match (spec.pull_policy, &spec.build, present) {
        (PullPolicy::Build, Some(build), _) => {
            build_image(engine, &reference, build, progress).await?;
            Ok(ready(ImageSource::Built))
        }
        (PullPolicy::Build, None, _) => Err(EngineError::NothingToBuild { image: reference }),
        (PullPolicy::Always, _, _) => match pull(engine, &reference, progress).await {
            Ok(()) => Ok(ready(ImageSource::Pulled)),
            // "not found locally" would be false here; say what actually failed.
            Err(EngineError::ImageUnavailable { reason, .. }) if present => {
                Err(EngineError::api(format!("pulling image {reference} (pull_policy \"always\")"), reason))
            }
            Err(e) => Err(e),
        },
        (PullPolicy::Missing | PullPolicy::Never, _, true) => Ok(ready(ImageSource::Present)),
        (PullPolicy::Never, _, false) => Err(EngineError::ImageMissingNoPull { image: reference }),
        (PullPolicy::Missing, Some(build), false) => {
            build_image(engine, &reference, build, progress).await?;
            Ok(ready(ImageSource::Built))
        }
        (PullPolicy::Missing, None, false) => {
            pull(engine, &reference, progress).await?;
            Ok(ready(ImageSource::Pulled))
        }
    }
}

async fn is_present(engine: &DockerEngine, reference: &str) -> EngineResult<bool> {
    match engine.client().inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(e) if status(&e) == Some(404) => Ok(false),
        Err(e) => Err(engine.err(format!("inspecting image {reference}"), e)),
    }
}

/// Splits `repo[:tag]` / `repo@digest` as the create-image API wants it; a `:` inside the
/// registry host (`localhost:5000/x`) is not a tag.
fn split_reference(reference: &str) -> (String, Option<String>) {
    if reference.contains('@') {
        return (reference.to_string(), None);
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (reference[..last_slash + i].to_string(), Some(reference[last_slash + i + 1..].to_string())),
        None => (reference.to_string(), Some("latest".into())),
    }
}

async fn pull(engine: &DockerEngine, reference: &str, progress: Option<ProgressSink>) -> EngineResult<()> {
    let (from_image, tag) = split_reference(reference);
    let options = CreateImageOptions { from_image: Some(from_image), tag, ..Default::default() };
    let unavailable = |reason: String| EngineError::ImageUnavailable { image: reference.to_string(), reason };
    let mut stream = engine.client().create_image(Some(options), None, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(unavailable(detail.message.unwrap_or_default()));
                }
                if let (Some(sink), Some(status)) = (&progress, info.status) {
                    let line = match info.id {
                        Some(id) => format!("{id}: {status}"),
                        None => status,
                    };
                    let _ = sink.send(line);
                }
            }
            Err(e) => {
                return Err(match engine.err("pulling", e) {
                    unreachable @ EngineError::Unreachable { .. } => unreachable,
                    EngineError::Api { message, .. } => unavailable(message),
                    other => unavailable(other.to_string()),
                })
            }
        }
    }
    Ok(())
}

async fn build_image(
    engine: &DockerEngine,
    reference: &str,
    build: &BuildSpec,
    progress: Option<ProgressSink>,
) -> EngineResult<()> {
    let context_dir = build.context.clone();
    let dockerfile = build.dockerfile.clone();
    // Reading and tarring a context is blocking file I/O.
    let ctx = tokio::task::spawn_blocking(move || context::pack(&context_dir, dockerfile.as_deref())).await.map_err(
        |e| EngineError::BuildContext { path: build.context.display().to_string(), message: e.to_string() },
    )??;

    let options = BuildImageOptions {
        dockerfile: ctx.dockerfile,
        t: Some(reference.to_string()),
        buildargs: (!build.args.is_empty()).then(|| build.args.clone().into_iter().collect()),
        labels: (!build.labels.is_empty()).then(|| build.labels.clone().into_iter().collect()),
        target: build.target.clone().unwrap_or_default(),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    let failed = |message: String| EngineError::Build { image: reference.to_string(), message };
    let mut stream = engine.client().build_image(options, None, Some(bollard::body_full(ctx.tar.into())));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(failed(detail.message.unwrap_or_default()));
                }
                if let (Some(sink), Some(text)) = (&progress, info.stream) {
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        let _ = sink.send(line.to_string());
                    }
                }
            }
            Err(e) => {
                return Err(match engine.err("building", e) {
                    unreachable @ EngineError::Unreachable { .. } => unreachable,
                    EngineError::Api { message, .. } => failed(message),
                    other => failed(error_chain(&other)),
                })
            }
        }
    }
    if !is_present(engine, reference).await? {
        return Err(failed("the build finished but produced no image".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn splits_references() {
        assert_eq!(split_reference("busybox"), ("busybox".into(), Some("latest".into())));
        assert_eq!(split_reference("a/b:1.2"), ("a/b".into(), Some("1.2".into())));
        assert_eq!(split_reference("localhost:5000/x"), ("localhost:5000/x".into(), Some("latest".into())));
        assert_eq!(split_reference("x@sha256:ab"), ("x@sha256:ab".into(), None));
    }
}
