//! Fuzzes the whole compose loading pipeline on one in-memory file: YAML parsing, `x-` removal,
//! interpolation, canonicalization, merging of multi-document files, `extends` within the file,
//! profiles, deserialization into the model and validation. Errors are fine; panics are bugs.
//!
//! Paths the file names that are not the compose file itself (`env_file`, `extends.file`,
//! `include`, ...) are read from the real disk, under `/fuzz` unless absolute. The directory does
//! not normally exist, so those reads fail with an error.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use shoal_orchestrator::compose::loader::{load_in_memory, LoadOptions};

fuzz_target!(|data: &[u8]| {
    // Non-UTF-8 input never reaches the loader (files are read as UTF-8 text).
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = PathBuf::from("/fuzz/compose.yaml");
    let os_env: BTreeMap<String, String> = [
        ("HOME", "/home/fuzz"),
        ("TAG", "1.2.3"),
        ("PORT", "8080"),
        ("EMPTY", ""),
        ("REGISTRY", "registry.example:5000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let options = LoadOptions {
        files: vec![file.clone()],
        working_dir: PathBuf::from("/fuzz"),
        os_env,
        ..LoadOptions::default()
    };
    let files = BTreeMap::from([(file, text.to_string())]);
    let _ = load_in_memory(&options, files);
});
