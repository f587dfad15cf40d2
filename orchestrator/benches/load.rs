//! Compose loader benchmark: a generated 200-service project in three files (`-f base -f
//! override -f extra`) with YAML anchors and `<<` merge keys, `${VAR}` / `${VAR:-default}`
//! interpolation, short and long port/volume forms, `depends_on` chains, healthchecks, labels and
//! `deploy.resources`, loaded from disk with [`load`] (file reads included). Target: median under
//! 50 ms in release.
//!
//! A plain timing loop, no framework: warm-up runs, then `SHOAL_BENCH_ITERS` (default 50) timed
//! runs; prints min / median / p95 / max in milliseconds. Run with
//! `cargo bench -p shoal-orchestrator --bench load`. Without `--bench` on the command line (as
//! `cargo test --all-targets` runs it) it loads the project once as a smoke test. Set
//! `SHOAL_BENCH_DIR=/some/dir` to keep the generated files there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_orchestrator::compose::loader::{load, LoadOptions};

const SERVICES: usize = 200;
const WARMUP: usize = 5;
const TARGET_MEDIAN_MS: f64 = 50.0;

fn name(i: usize) -> String {
    format!("svc-{i:03}")
}

/// The base file: shared blocks as `x-` anchors, every service built from them.
fn base_file() -> String {
    let mut out = String::from(
        r#"name: loader-bench

x-common: &common
  restart: unless-stopped
  logging:
    driver: json-file
    options: {max-size: 10m, max-file: "3"}
  stop_grace_period: ${STOP_GRACE:-15s}
x-labels: &labels
  com.example.project: loader-bench
  com.example.owner: "${OWNER:-platform}"
  com.example.tier: backend
x-env: &env
  LOG_FORMAT: json
  REGION: ${REGION:-eu-west-1}
  OTEL_EXPORTER: http://collector:4317
x-health: &health
  interval: 10s
  timeout: 3s
  retries: 5
  start_period: 20s
x-resources: &resources
  deploy:
    resources:
      limits: {cpus: "0.50", memory: 256M}
      reservations: {cpus: "0.10", memory: 64M}

services:
"#,
    );
    for i in 0..SERVICES {
        let n = name(i);
        let port = 20000 + i;
        let _ = write!(
            out,
            r#"  {n}:
    <<: [*common, *resources]
    image: ${{REGISTRY:-registry.local:5000}}/team/{n}:${{TAG:-latest}}
    command: ["/app/{n}", "--listen", ":8080", "--log-level", "${{LOG_LEVEL:-info}}"]
    environment:
      - SERVICE_NAME={n}
      - DATABASE_URL=postgres://app:${{DB_PASSWORD}}@db:5432/{n}
      - CACHE_URL=redis://cache:6379/{db}
      - WORKERS=${{WORKERS:-4}}
    ports:
      - "${{BIND_IP:-127.0.0.1}}:{port}:8080"
      - "{metrics}:9090/tcp"
    volumes:
      - {n}-data:/var/lib/{n}
      - ./config/{n}:/etc/{n}:ro
      - type: tmpfs
        target: /tmp
        tmpfs: {{size: 64m}}
    labels:
      <<: *labels
      com.example.service: {n}
    healthcheck:
      <<: *health
      test: ["CMD", "wget", "-q", "-O-", "http://localhost:8080/healthz"]
    networks: [front, back]
"#,
            db = i % 16,
            metrics = 40000 + i,
        );
        // Chains of ten: each service waits for the previous one in its chain.
        if i % 10 != 0 {
            let _ = write!(out, "    depends_on:\n      {}:\n        condition: service_healthy\n", name(i - 1));
        }
    }
    out.push_str("\nnetworks:\n  front: {}\n  back:\n    internal: true\n\nvolumes:\n");
    for i in 0..SERVICES {
        let _ = writeln!(out, "  {}-data:\n    labels: {{com.example.backup: daily}}", name(i));
    }
    out
}

/// The override: environment as a map over the base's list, long-form ports and volumes, more
/// labels and an extra dependency.
fn override_file() -> String {
    let mut out = String::from(
        r#"x-debug-env: &debug-env
  LOG_LEVEL: debug
  DEBUG: "${DEBUG:-false}"

services:
"#,
    );
    for i in 0..SERVICES {
        let n = name(i);
        let _ = write!(
            out,
            r#"  {n}:
    environment:
      <<: *debug-env
      FEATURE_FLAGS: "${{FEATURES:-alpha,beta}}"
      INSTANCE: {n}-${{HOSTNAME:-local}}
    ports:
      - target: 8443
        published: "{published}"
        host_ip: 0.0.0.0
        protocol: tcp
    volumes:
      - type: bind
        source: ./secrets/{n}
        target: /run/app-secrets
        read_only: true
    labels:
      com.example.override: "true"
"#,
            published = 30000 + i,
        );
        if i % 10 == 5 {
            let _ = write!(out, "    depends_on:\n      {}:\n        condition: service_started\n", name(i - 5));
        }
    }
    out
}

/// The third file: resources for every other service and a few profiles.
fn extra_file() -> String {
    let mut out = String::from(
        r#"x-big: &big
  resources:
    limits: {cpus: "${BIG_CPUS:-2}", memory: 1G}
    reservations: {memory: 512M}

services:
"#,
    );
    for i in (0..SERVICES).step_by(2) {
        let n = name(i);
        let _ = write!(
            out,
            "  {n}:\n    deploy:\n      <<: *big\n      replicas: ${{REPLICAS:-1}}\n    labels:\n      - com.example.size=big\n"
        );
    }
    out
}

fn write_project(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("create the bench directory");
    [("compose.yaml", base_file()), ("compose.override.yaml", override_file()), ("compose.extra.yaml", extra_file())]
        .into_iter()
        .map(|(file, text)| {
            let path = dir.join(file);
            std::fs::write(&path, text).expect("write a bench compose file");
            path
        })
        .collect()
}

fn options(dir: &Path, files: Vec<PathBuf>) -> LoadOptions {
    let os_env: BTreeMap<String, String> = [
        ("HOME", "/home/bench"),
        ("DB_PASSWORD", "s3cret"),
        ("TAG", "1.4.2"),
        ("LOG_LEVEL", "warn"),
        ("OWNER", "bench-team"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    LoadOptions { files, working_dir: dir.to_path_buf(), os_env, ..LoadOptions::default() }
}

fn load_once(options: &LoadOptions) -> Duration {
    let start = Instant::now();
    let loaded = load(options).unwrap_or_else(|e| panic!("the bench project does not load: {e}"));
    let elapsed = start.elapsed();
    assert_eq!(loaded.project.services.len(), SERVICES);
    std::hint::black_box(loaded);
    elapsed
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let iterations: usize = std::env::var("SHOAL_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(50).max(1);
    // SHOAL_BENCH_DIR keeps the generated project (to profile or inspect it); else a temp dir.
    let keep = std::env::var_os("SHOAL_BENCH_DIR").map(PathBuf::from);
    let dir =
        keep.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("shoal-bench-load-{}", std::process::id())));
    let files = write_project(&dir);
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let options = options(&dir, files);

    if !bench_mode {
        load_once(&options);
        if keep.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        println!("loader bench: smoke run ok (pass --bench to measure)");
        return;
    }

    for _ in 0..WARMUP {
        load_once(&options);
    }
    let mut times: Vec<Duration> = (0..iterations).map(|_| load_once(&options)).collect();
    times.sort();
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let median = pick(0.5);
    println!(
        "compose loader: {SERVICES} services, 3 files, {:.0} KiB; {WARMUP} warm-up + {iterations} timed loads",
        bytes as f64 / 1024.0
    );
    println!(
        "  min {:.2} ms   median {:.2} ms   p95 {:.2} ms   max {:.2} ms   (target: median < {TARGET_MEDIAN_MS} ms: {})",
        ms(times[0]),
        ms(median),
        ms(pick(0.95)),
        ms(times[times.len() - 1]),
        if ms(median) < TARGET_MEDIAN_MS { "met" } else { "MISSED" }
    );
}
