//! Fixture tests for the compose loader.
//!
//! `fixtures/load/<case>/`: compose files, an optional `options.yaml` (files, env, profiles,
//! project_name, env_files, project_directory, working_dir — relative to the case directory)
//! and `expected.yaml`, the normalized project `shoal config` prints. `$DIR` in the expected
//! text stands for the case directory. An optional `expected-warnings.txt` lists warnings.
//!
//! `fixtures/errors/<case>/`: the same inputs and `expected-error.txt`, the exact error text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shoal_orchestrator::compose::loader::{load, LoadOptions, LoadedProject};
use shoal_orchestrator::compose::{render, LoadError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseOptions {
    #[serde(default)]
    files: Vec<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    profiles: Vec<String>,
    project_name: Option<String>,
    #[serde(default)]
    env_files: Vec<PathBuf>,
    project_directory: Option<PathBuf>,
    working_dir: Option<PathBuf>,
}

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(kind);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no fixtures under {}", root.display());
    cases
}

fn case_options(dir: &Path) -> CaseOptions {
    let options_file = dir.join("options.yaml");
    if options_file.exists() {
        serde_yaml::from_str(&std::fs::read_to_string(&options_file).unwrap()).unwrap()
    } else {
        CaseOptions::default()
    }
}

/// A fixed, small environment: the test must not depend on the machine's variables.
fn test_env() -> BTreeMap<String, String> {
    [("HOME", "/home/tester")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn run_case(dir: &Path) -> Result<LoadedProject, LoadError> {
    let case = case_options(dir);
    let mut os_env = test_env();
    os_env.extend(case.env);
    let options = LoadOptions {
        files: case.files,
        project_name: case.project_name,
        project_directory: case.project_directory.map(|d| dir.join(d)),
        env_files: case.env_files,
        profiles: case.profiles,
        working_dir: dir.join(case.working_dir.unwrap_or_default()),
        os_env,
    };
    load(&options)
}

fn with_dir(text: &str, dir: &Path) -> String {
    text.replace("$DIR", &dir.to_string_lossy())
}

#[test]
fn loads_every_fixture_to_its_expected_normalized_form() {
    let mut failures = Vec::new();
    for dir in fixtures("load") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let loaded = match run_case(&dir) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{name}: unexpected error: {e}"));
                continue;
            }
        };
        let actual = render::to_yaml(&loaded.project).expect("the project renders");
        let expected_file = dir.join("expected.yaml");
        if std::env::var_os("SHOAL_BLESS").is_some() {
            std::fs::write(&expected_file, actual.replace(&*dir.to_string_lossy(), "$DIR")).unwrap();
            continue;
        }
        let expected = with_dir(&std::fs::read_to_string(&expected_file).unwrap(), &dir);
        if actual != expected {
            failures.push(format!("{name}: output differs\n--- expected\n{expected}\n--- actual\n{actual}"));
        }
        let warnings_file = dir.join("expected-warnings.txt");
        if warnings_file.exists() {
            let actual: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
            let expected: Vec<String> =
                with_dir(&std::fs::read_to_string(&warnings_file).unwrap(), &dir).lines().map(str::to_string).collect();
            if actual != expected {
                failures.push(format!("{name}: warnings differ\nexpected: {expected:#?}\nactual: {actual:#?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `shoal config`'s output is a compose file for the same project: loaded again (with the
/// case's profiles and environment, e.g. `COMPOSE_PROFILES`, and `HOME`, which an unescaped
/// `$HOME` would pick up), it gives the project it was rendered from. This is what the YAML 1.1
/// quoting and the `$$` escaping of `compose::render` are for.
#[test]
fn every_rendered_fixture_loads_back_to_the_same_project() {
    let mut failures = Vec::new();
    for dir in fixtures("load") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // Load failures are reported by the test above.
        let Ok(loaded) = run_case(&dir) else { continue };
        let text = render::to_yaml(&loaded.project).expect("the project renders");
        let tmp = tempfile::tempdir().expect("a temp dir");
        let file = tmp.path().join("compose.yaml");
        std::fs::write(&file, &text).expect("writing the rendered file");
        let case = case_options(&dir);
        let mut os_env = test_env();
        os_env.extend(case.env);
        let options = LoadOptions {
            files: vec![file],
            profiles: case.profiles,
            working_dir: tmp.path().to_path_buf(),
            os_env,
            ..LoadOptions::default()
        };
        match load(&options) {
            Ok(again) if again.project == loaded.project => {}
            Ok(again) => {
                let again = render::to_yaml(&again.project).expect("the project renders");
                failures
                    .push(format!("{name}: loads back differently\n--- rendered\n{text}\n--- loaded back\n{again}"));
            }
            Err(e) => failures.push(format!("{name}: the rendered file does not load: {e}\n{text}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn rejects_every_error_fixture_with_its_exact_message() {
    let mut failures = Vec::new();
    for dir in fixtures("errors") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let expected = with_dir(std::fs::read_to_string(dir.join("expected-error.txt")).unwrap().trim_end(), &dir);
        match run_case(&dir) {
            Ok(_) => failures.push(format!("{name}: loaded, but should fail with:\n{expected}")),
            Err(e) => {
                let actual = e.to_string();
                if actual != expected {
                    failures.push(format!("{name}:\n--- expected\n{expected}\n--- actual\n{actual}"));
                }
                // Every error names a file and, for errors inside a file, a line and column.
                if e.location.file.as_os_str().is_empty() {
                    failures.push(format!("{name}: error has no file"));
                }
                if e.hint.is_none() {
                    failures.push(format!("{name}: error has no hint"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
