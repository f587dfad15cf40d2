//! Images without a registry: present, built from a context, and the offline missing-image error.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shoal_agent::engine::{ImageSource, LogOptions, WaitCondition};
use shoal_agent::spec::*;
use shoal_agent::{Engine, EngineError};
use support::*;
use tokio::sync::mpsc;

#[tokio::test]
async fn present_image_is_used_as_is() {
    let engine = engine().await;
    let spec = ImageSpec { image: Some(TEST_IMAGE.into()), pull_policy: PullPolicy::Missing, ..Default::default() };
    let ready = engine.ensure_image(&spec, None).await.unwrap();
    assert_eq!(ready.how, ImageSource::Present);
    assert_eq!(ready.reference, TEST_IMAGE);
}

#[tokio::test]
async fn missing_image_fails_fast_offline_with_a_clear_error() {
    let engine = engine().await;
    let t = TestRun::new("missing");
    let image = format!("shoal-test/missing-{}:1", t.id);
    let spec = ImageSpec { image: Some(image.clone()), ..Default::default() };
    let t0 = Instant::now();
    let err = engine.ensure_image(&spec, None).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
    let text = err.to_string();
    let prefix = format!("image {image} not found locally and could not be pulled: ");
    assert!(text.starts_with(&prefix), "{text}");
    assert!(text.len() > prefix.len(), "the reason is given: {text}");

    let never = ImageSpec { pull_policy: PullPolicy::Never, ..spec.clone() };
    let err = engine.ensure_image(&never, None).await.unwrap_err();
    assert!(matches!(err, EngineError::ImageMissingNoPull { .. }), "{err}");

    // Creating from it without ensure_image is the same clear error, not a raw 404.
    let mut c = t.spec("a");
    c.image = image.clone();
    let err = engine.create(&c).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("image {image} not found locally")), "{err}");
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn builds_from_a_context_with_args_target_labels_and_dockerignore() {
    let engine = engine().await;
    let t = TestRun::new("build");
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        &format!(
            "FROM {TEST_IMAGE} AS base\n\
             ARG GREETING=unset\n\
             COPY hello.txt /hello.txt\n\
             RUN echo \"$GREETING\" > /greeting && ls / > /listing\n\
             FROM base AS final\n\
             RUN echo final > /stage\n"
        ),
    );
    write(ctx.path(), "hello.txt", "from the context\n");
    write(ctx.path(), "secret.key", "must not be sent\n");
    write(ctx.path(), ".dockerignore", "*.key\n");
    let spec = ImageSpec {
        image: None,
        project: t.project(),
        service: "app".into(),
        build: Some(BuildSpec {
            context: ctx.path().to_path_buf(),
            dockerfile: None,
            args: BTreeMap::from([("GREETING".to_string(), "hi there".to_string())]),
            target: Some("base".into()),
            // The test label lets the cleanup guard remove the image.
            labels: BTreeMap::from([t.label(), ("built.by".into(), "shoal".into())]),
        }),
        pull_policy: PullPolicy::Missing,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ready = engine.ensure_image(&spec, Some(tx)).await.unwrap();
    assert_eq!(ready.how, ImageSource::Built);
    assert_eq!(ready.reference, format!("{}-app", t.project()));
    let mut progress = Vec::new();
    while let Ok(line) = rx.try_recv() {
        progress.push(line);
    }
    assert!(progress.iter().any(|l| l.starts_with("Step 1/")), "build output is streamed: {progress:?}");

    let image = engine.client().inspect_image(&ready.reference).await.unwrap();
    let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get("built.by").map(String::as_str), Some("shoal"));

    // Present now: a second ensure does not rebuild.
    assert_eq!(engine.ensure_image(&spec, None).await.unwrap().how, ImageSource::Present);

    let mut c = t.spec("app");
    c.image = ready.reference.clone();
    c.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "cat /hello.txt /greeting; test -e /stage && echo stage-present; grep -c secret /listing || true; ls /secret.key 2>&1 || true".into(),
    ]);
    let id = engine.create(&c).await.unwrap();
    engine.start(&id).await.unwrap();
    engine.wait(&id, WaitCondition::Exit).await.unwrap();
    let out: Vec<u8> = engine.logs(&id, LogOptions::default()).map(|c| c.unwrap().data.to_vec()).concat().await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("from the context"), "COPY worked: {out}");
    assert!(out.contains("hi there"), "build arg reached RUN: {out}");
    assert!(!out.contains("stage-present"), "target stopped at base: {out}");
    assert!(out.contains("No such file"), "ignored file not in the image: {out}");
}

#[tokio::test]
async fn a_failing_build_reports_the_step_error() {
    let engine = engine().await;
    let t = TestRun::new("badbuild");
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "Build.df", &format!("FROM {TEST_IMAGE}\nRUN echo about to fail && exit 7\n"));
    let spec = ImageSpec {
        image: Some(format!("shoal-test/bad-{}:1", t.id)),
        build: Some(BuildSpec {
            context: ctx.path().to_path_buf(),
            dockerfile: Some("Build.df".into()),
            labels: BTreeMap::from([t.label()]),
            ..Default::default()
        }),
        pull_policy: PullPolicy::Build,
        ..Default::default()
    };
    let err = engine.ensure_image(&spec, None).await.unwrap_err();
    let EngineError::Build { message, .. } = &err else {
        panic!("expected a build error, got {err}");
    };
    assert!(message.contains("7"), "{message}");
}
