//! The loading pipeline: compose files on disk → [`LoadedProject`].
//!
//! 1. Pick the files (`-f`, `COMPOSE_FILE`, or discovery) and the project directory.
//! 2. Build the environment: the process environment over `.env` / `--env-file`.
//! 3. Per file and document: YAML → drop `x-` keys → warn on YAML 1.1 booleans → interpolate →
//!    canonicalize (short → long forms); then merge documents and files in order.
//! 4. `include` (each included project loaded on its own), `extends`, then `!reset`/`!override`.
//! 5. Absolute paths, `env_file`/`label_file` read, `environment` resolved, profiles applied,
//!    project name, default network and resource names.
//! 6. Deserialize into the typed model; check references and the dependency graph.
//!
//! Errors raised on the YAML tree carry a key path; this module finds the file, line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::canonical::{canonicalize_document, scalar_text, PathWarning};
use super::discovery;
use super::dotenv;
use super::error::{did_you_mean, LoadError, Location, PathError};
use super::interpolate::interpolate_value;
use super::merge;
use super::model::Project;
use super::path::{KeyPath, Segment};
use super::paths::{absolutize, resolve_service_paths, resolve_top_level_paths};
use super::validate;
use super::yaml::SourceFile;

/// What the user asked for: the global flags of the CLI and the process context.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f` files in order; empty means `COMPOSE_FILE` or discovery.
    pub files: Vec<PathBuf>,
    /// `-p`.
    pub project_name: Option<String>,
    /// `--project-directory`.
    pub project_directory: Option<PathBuf>,
    /// `--env-file`, in order (later files win). Empty means `<project dir>/.env` if present.
    pub env_files: Vec<PathBuf>,
    /// `--profile`; empty means `COMPOSE_PROFILES`.
    pub profiles: Vec<String>,
    /// The directory relative paths on the command line are taken from.
    pub working_dir: PathBuf,
    /// The process environment (injected so tests need not change the real one).
    pub os_env: BTreeMap<String, String>,
}

impl LoadOptions {
    /// Options for this process: its working directory and environment.
    pub fn from_process() -> std::io::Result<Self> {
        Ok(LoadOptions {
            working_dir: std::env::current_dir()?,
            os_env: std::env::vars().collect(),
            ..LoadOptions::default()
        })
    }
}

/// A warning with the place it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadWarning {
    pub location: Location,
    pub path: KeyPath,
    pub message: String,
}

impl std::fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.location)?;
        if !self.path.is_root() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A loaded project and what `config` and `up` need to know about how it was loaded.
#[derive(Debug, Clone)]
pub struct LoadedProject {
    pub project: Project,
    pub files: Vec<PathBuf>,
    pub project_directory: PathBuf,
    pub warnings: Vec<LoadWarning>,
    /// Every profile named by any service, active or not (`config --profiles`).
    pub all_profiles: BTreeSet<String>,
    /// The environment used for interpolation (process over `.env`).
    pub environment: BTreeMap<String, String>,
}

/// How deep `include` may nest before we call it a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Loads a project.
pub fn load(options: &LoadOptions) -> Result<LoadedProject, LoadError> {
    load_with(Loader::default(), options)
}

/// Loads a project whose files are given in memory (path → text) instead of read from disk;
/// paths not in `files` are still read from disk. Used by the fuzz target and benchmarks.
pub fn load_in_memory(options: &LoadOptions, files: BTreeMap<PathBuf, String>) -> Result<LoadedProject, LoadError> {
    load_with(Loader { in_memory: files, ..Loader::default() }, options)
}

fn load_with(mut loader: Loader, options: &LoadOptions) -> Result<LoadedProject, LoadError> {
    let (files, project_dir, shell_env) = loader.select_files_and_environment(options)?;
    // Interpolation and `environment: [COMPOSE_PROJECT_NAME]` see the project's name, as in
    // compose; a name that cannot be used is reported below, where the final name is chosen.
    let mut env = shell_env.clone();
    if let Some(name) = loader.early_project_name(options, &shell_env, &files, &project_dir) {
        env.insert("COMPOSE_PROJECT_NAME".to_string(), name);
    }
    let mut doc = loader.load_model(&files, &project_dir, &env, 0)?;
    let home = env.get("HOME").map(PathBuf::from);

    let mut warnings = Vec::new();
    loader.read_env_and_label_files(&mut doc, &env, &mut warnings)?;
    let all_profiles = collect_profiles(&doc);
    let active = active_profiles(options, &env);
    loader.apply_profiles(&mut doc, &active)?;
    let name = project_name(options, &shell_env, &doc, &project_dir).map_err(|e| loader.locate_error(e))?;
    set_project_defaults(&mut doc, &name);
    inherit_pre_start_image(&mut doc);

    let project = loader.to_model(doc)?;
    warnings.extend(validate::check_project(&project).map_err(|e| loader.locate_error(e))?);
    let _ = home;

    let mut located: Vec<LoadWarning> = std::mem::take(&mut loader.warnings);
    located.extend(warnings.into_iter().map(|w: PathWarning| {
        let location = loader.locate_error(PathError::new(w.path.clone(), "")).location;
        LoadWarning { location, path: w.path, message: w.message }
    }));
    Ok(LoadedProject {
        project,
        files,
        project_directory: project_dir,
        warnings: located,
        all_profiles,
        environment: env,
    })
}

/// The compose files, the project directory and the environment, chosen before reading.
type SelectedFiles = (Vec<PathBuf>, PathBuf, BTreeMap<String, String>);

#[derive(Default)]
struct Loader {
    /// Every file read, in order; used to find where a key path stands.
    sources: Vec<SourceFile>,
    warnings: Vec<LoadWarning>,
    /// Files given as text rather than read from disk.
    in_memory: BTreeMap<PathBuf, String>,
    /// Files parsed early (to find the project name), kept for the real read.
    parsed: BTreeMap<PathBuf, SourceFile>,
}

impl Loader {
    fn select_files_and_environment(&mut self, options: &LoadOptions) -> Result<SelectedFiles, LoadError> {
        let cwd = &options.working_dir;
        let explicit_dir =
            options.project_directory.as_ref().map(|d| PathBuf::from(absolutize(&d.to_string_lossy(), cwd, None)));
        // `.env` may itself say COMPOSE_FILE, so it is read from the project directory as known
        // before the files are chosen: --project-directory, or the working directory.
        let early_dir = explicit_dir.clone().unwrap_or_else(|| cwd.clone());
        let early_env = build_environment(options, &early_dir)?;
        let files: Vec<PathBuf> = if !options.files.is_empty() {
            options.files.iter().map(|f| PathBuf::from(absolutize(&f.to_string_lossy(), cwd, None))).collect()
        } else if let Some(list) = early_env.get("COMPOSE_FILE").filter(|v| !v.is_empty()) {
            let separator = early_env.get("COMPOSE_PATH_SEPARATOR").map(String::as_str).unwrap_or(":");
            list.split(separator)
                .filter(|f| !f.is_empty())
                .map(|f| PathBuf::from(absolutize(f, &early_dir, None)))
                .collect()
        } else {
            discovery::discover(explicit_dir.as_deref().unwrap_or(cwd))?
        };
        let project_dir =
            explicit_dir.unwrap_or_else(|| files[0].parent().map(Path::to_path_buf).unwrap_or_else(|| cwd.clone()));
        let env = if project_dir == early_dir { early_env } else { build_environment(options, &project_dir)? };
        Ok((files, project_dir, env))
    }

    /// The project name before the files are interpolated: `-p`, `COMPOSE_PROJECT_NAME`, the
    /// last `name:` of the files (itself interpolated), or the directory. `None` if unusable.
    fn early_project_name(
        &mut self,
        options: &LoadOptions,
        env: &BTreeMap<String, String>,
        files: &[PathBuf],
        project_dir: &Path,
    ) -> Option<String> {
        let mut name = None;
        for file in files {
            let source = match self.in_memory.get(file) {
                Some(text) => SourceFile::parse(file, text),
                None => SourceFile::read(file),
            };
            // Unreadable files are reported when they are loaded.
            let Ok(source) = source else { return None };
            for doc in &source.documents {
                if let Some(value) = doc.get("name").filter(|v| !v.is_null()) {
                    name = Some(value.clone());
                }
            }
            self.parsed.insert(file.clone(), source);
        }
        let mut top = Mapping::new();
        if let Some(mut value) = name {
            let lookup = |k: &str| env.get(k).cloned();
            interpolate_value(&mut value, &KeyPath::root().key("name"), &lookup, &mut Vec::new()).ok()?;
            top.insert("name".into(), value);
        }
        project_name(options, env, &Value::Mapping(top), project_dir).ok()
    }

    /// Reads, merges and resolves one model (the main project or an included one): its files,
    /// `include`, `extends`, tags, and paths made absolute against `project_dir`.
    fn load_model(
        &mut self,
        files: &[PathBuf],
        project_dir: &Path,
        env: &BTreeMap<String, String>,
        depth: usize,
    ) -> Result<Value, LoadError> {
        let mut merged: Option<Value> = None;
        for file in files {
            let doc = self.read_canonical(file, env)?;
            merged = Some(match merged {
                None => doc,
                Some(base) => merge::merge_documents(base, doc).map_err(|e| self.locate_error(e))?,
            });
        }
        let mut doc = merged.unwrap_or_else(|| Value::Mapping(Mapping::new()));
        self.apply_extends(&mut doc, &files[0], env)?;
        merge::strip_tags(&mut doc);
        let home = env.get("HOME").map(PathBuf::from);
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (_, service) in services.iter_mut() {
                resolve_service_paths(service, project_dir, home.as_deref());
            }
        }
        resolve_top_level_paths(&mut doc, project_dir, home.as_deref());
        self.apply_includes(&mut doc, project_dir, env, depth)?;
        Ok(doc)
    }

    /// One file → one canonical document (its YAML documents merged in order).
    fn read_canonical(&mut self, file: &Path, env: &BTreeMap<String, String>) -> Result<Value, LoadError> {
        let source = match (self.parsed.remove(file), self.in_memory.get(file)) {
            (Some(parsed), _) => parsed,
            (None, Some(text)) => SourceFile::parse(file, text)?,
            (None, None) => SourceFile::read(file)?,
        };
        let index = self.sources.len();
        let documents = source.documents.clone();
        self.sources.push(source);
        let lookup = |name: &str| env.get(name).cloned();
        let mut merged: Option<Value> = None;
        for mut doc in documents {
            strip_extensions(&mut doc, &KeyPath::root());
            let mut bool_warnings = Vec::new();
            warn_yaml11_booleans(&doc, &KeyPath::root(), &mut bool_warnings);
            let mut unset = Vec::new();
            interpolate_value(&mut doc, &KeyPath::root(), &lookup, &mut unset).map_err(|e| self.error_in(index, e))?;
            let mut canon_warnings = Vec::new();
            canonicalize_document(&mut doc, &mut canon_warnings).map_err(|e| self.error_in(index, e))?;
            merge::enforce_uniqueness(&mut doc).map_err(|e| self.error_in(index, e))?;
            for w in bool_warnings.into_iter().chain(canon_warnings) {
                let location = self.sources[index].location(&w.path, false);
                self.warnings.push(LoadWarning { location, path: w.path, message: w.message });
            }
            for message in unset {
                let location = Location { file: file.to_path_buf(), line: 0, column: 0 };
                self.warnings.push(LoadWarning { location, path: KeyPath::root(), message });
            }
            merged = Some(match merged {
                None => doc,
                Some(base) => merge::merge_documents(base, doc).map_err(|e| self.error_in(index, e))?,
            });
        }
        Ok(merged.unwrap_or_else(|| Value::Mapping(Mapping::new())))
    }

    // ---- extends -------------------------------------------------------------------------

    fn apply_extends(&mut self, doc: &mut Value, file: &Path, env: &BTreeMap<String, String>) -> Result<(), LoadError> {
        let names: Vec<String> = service_names(doc);
        let snapshot = doc.clone();
        for name in names {
            let mut chain = vec![(file.to_path_buf(), name.clone())];
            let resolved = self.resolve_extends(&snapshot, file, &name, env, &mut chain)?;
            if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
                services.insert(Value::String(name), resolved);
            }
        }
        Ok(())
    }

    /// The service `name` of `doc` (read from `file`) with its `extends` chain applied.
    fn resolve_extends(
        &mut self,
        doc: &Value,
        file: &Path,
        name: &str,
        env: &BTreeMap<String, String>,
        chain: &mut Vec<(PathBuf, String)>,
    ) -> Result<Value, LoadError> {
        let path = KeyPath::root().key("services").key(name);
        let Some(service) = doc.get("services").and_then(|s| s.get(name)).cloned() else {
            let known = service_names(doc);
            return Err(self.locate_error(
                PathError::new(
                    path.clone(),
                    format!("`extends` refers to service `{name}`, which {} does not define", file.display()),
                )
                .with_hint(
                    did_you_mean(name, known.iter().map(String::as_str))
                        .unwrap_or_else(|| "check the service name".into()),
                ),
            ));
        };
        let Some(extends) = service.get("extends").cloned() else { return Ok(service) };
        let extends_path = path.key("extends");
        let (base_name, base_file) = parse_extends(&extends, &extends_path).map_err(|e| self.locate_error(e))?;
        let base_file = match base_file {
            Some(f) => {
                PathBuf::from(absolutize(&f, file.parent().unwrap_or(Path::new("/")), env.get("HOME").map(Path::new)))
            }
            None => file.to_path_buf(),
        };
        if chain.iter().any(|(f, n)| *f == base_file && *n == base_name) {
            let mut names: Vec<String> = chain.iter().map(|(_, n)| n.clone()).collect();
            names.push(base_name.clone());
            return Err(self.locate_error(
                PathError::new(extends_path, format!("`extends` loop: {}", names.join(" -> ")))
                    .with_hint("a service cannot extend itself, directly or through others"),
            ));
        }
        chain.push((base_file.clone(), base_name.clone()));
        let base = if base_file == file {
            self.resolve_extends(doc, file, &base_name, env, chain)?
        } else {
            let other = self.read_canonical(&base_file, env)?;
            let mut base = self.resolve_extends(&other, &base_file, &base_name, env, chain)?;
            // The base's relative paths are relative to its own file.
            let home = env.get("HOME").map(PathBuf::from);
            resolve_service_paths(&mut base, base_file.parent().unwrap_or(Path::new("/")), home.as_deref());
            base
        };
        chain.pop();
        let mut overlay = service;
        if let Some(map) = overlay.as_mapping_mut() {
            map.remove("extends");
        }
        merge::merge_service(&base, &overlay, &path).map_err(|e| self.locate_error(e))
    }

    // ---- include -------------------------------------------------------------------------

    fn apply_includes(
        &mut self,
        doc: &mut Value,
        project_dir: &Path,
        env: &BTreeMap<String, String>,
        depth: usize,
    ) -> Result<(), LoadError> {
        let Some(includes) = doc.as_mapping_mut().and_then(|m| m.remove("include")) else { return Ok(()) };
        let include_path = KeyPath::root().key("include");
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(self.locate_error(
                PathError::new(include_path, format!("`include` nests more than {MAX_INCLUDE_DEPTH} levels deep"))
                    .with_hint("an included file probably includes itself"),
            ));
        }
        let Some(entries) = includes.as_sequence() else {
            return Err(self.locate_error(PathError::new(include_path, "expected a list of files to include")));
        };
        for (i, entry) in entries.iter().enumerate() {
            let p = include_path.index(i);
            let spec = parse_include(entry, &p).map_err(|e| self.locate_error(e))?;
            let files: Vec<PathBuf> =
                spec.paths.iter().map(|f| PathBuf::from(absolutize(f, project_dir, None))).collect();
            let Some(first) = files.first() else { continue };
            let sub_dir = match &spec.project_directory {
                Some(d) => PathBuf::from(absolutize(d, project_dir, None)),
                None => first.parent().map(Path::to_path_buf).unwrap_or_else(|| project_dir.to_path_buf()),
            };
            let mut sub_env = env.clone();
            let env_files: Vec<PathBuf> = if spec.env_files.is_empty() {
                vec![sub_dir.join(".env")].into_iter().filter(|f| f.is_file()).collect()
            } else {
                spec.env_files.iter().map(|f| PathBuf::from(absolutize(f, project_dir, None))).collect()
            };
            for file in env_files {
                for (k, v) in read_dotenv(&file, &sub_env)? {
                    // The including project's environment wins over the included .env.
                    if let (Some(v), false) = (v, env.contains_key(&k)) {
                        sub_env.insert(k, v);
                    }
                }
            }
            let included = self.load_model(&files, &sub_dir, &sub_env, depth + 1)?;
            self.import_resources(doc, included, &p)?;
        }
        Ok(())
    }

    /// Adds the services, networks, ... of an included model; a name defined on both sides is
    /// an error (compose refuses to guess which one wins).
    fn import_resources(&mut self, doc: &mut Value, included: Value, path: &KeyPath) -> Result<(), LoadError> {
        let Value::Mapping(included) = included else { return Ok(()) };
        let Some(top) = doc.as_mapping_mut() else { return Ok(()) };
        for (section, entries) in included {
            let Some(section_name) = section.as_str().map(str::to_string) else { continue };
            if section_name == "name" {
                continue;
            }
            let Value::Mapping(entries) = entries else { continue };
            let target = top.entry(section.clone()).or_insert_with(|| Value::Mapping(Mapping::new()));
            let Some(target) = target.as_mapping_mut() else { continue };
            for (key, value) in entries {
                if let Some(existing) = target.get(&key) {
                    if *existing != value {
                        let name = scalar_text(&key).unwrap_or_default();
                        return Err(self.locate_error(
                            PathError::new(
                                path.clone(),
                                format!(
                                    "the included file defines {section_name}.{name}, which this project also defines"
                                ),
                            )
                            .with_hint("rename one of them, or remove it from one side"),
                        ));
                    }
                    continue;
                }
                target.insert(key, value);
            }
        }
        Ok(())
    }

    // ---- env_file / label_file -------------------------------------------------------------

    fn read_env_and_label_files(
        &mut self,
        doc: &mut Value,
        env: &BTreeMap<String, String>,
        warnings: &mut Vec<PathWarning>,
    ) -> Result<(), LoadError> {
        let names = service_names(doc);
        for name in names {
            let path = KeyPath::root().key("services").key(name.as_str());
            let Some(service) =
                doc.get_mut("services").and_then(|s| s.get_mut(name.as_str())).and_then(Value::as_mapping_mut)
            else {
                continue;
            };
            let mut from_files: BTreeMap<String, Option<String>> = BTreeMap::new();
            if let Some(Value::Sequence(files)) = service.get("env_file") {
                for (i, entry) in files.iter().enumerate() {
                    let file = entry.get("path").and_then(Value::as_str).unwrap_or_default().to_string();
                    let required = entry.get("required").and_then(Value::as_bool).unwrap_or(true);
                    let entry_path = path.key("env_file").index(i);
                    match dotenv::read_env_file(Path::new(&file), &|k: &str| env.get(k).cloned()) {
                        Ok(vars) => from_files.extend(vars),
                        Err(dotenv::EnvFileError::NotFound { .. }) if !required => {
                            warnings.push(PathWarning {
                                path: entry_path,
                                message: format!("optional env_file {file} not found; skipped"),
                            });
                        }
                        Err(e @ dotenv::EnvFileError::NotFound { .. }) => {
                            let error = PathError::new(entry_path, e.to_string())
                                .with_hint("create the file, fix the path, or mark it optional with `required: false`");
                            return Err(self.locate_error(error));
                        }
                        // A problem inside the env file is reported where it is, in that file.
                        Err(e) => {
                            let mut error = LoadError::from(e);
                            error.path = entry_path;
                            return Err(error);
                        }
                    }
                }
            }
            let environment = service.entry("environment".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Some(environment) = environment.as_mapping_mut() {
                // Values written in `environment` win over env files; a bare `FOO` takes the
                // value from the shell (or .env), as compose does.
                for (k, v) in from_files {
                    if !environment.contains_key(k.as_str()) {
                        environment.insert(Value::String(k), v.map(Value::String).unwrap_or(Value::Null));
                    }
                }
                for (k, v) in environment.iter_mut() {
                    if v.is_null() {
                        if let Some(value) = k.as_str().and_then(|k| env.get(k)) {
                            *v = Value::String(value.clone());
                        }
                    }
                }
                if environment.is_empty() {
                    service.remove("environment");
                }
            }
            self.read_label_files(service, &path)?;
        }
        Ok(())
    }

    fn read_label_files(&mut self, service: &mut Mapping, path: &KeyPath) -> Result<(), LoadError> {
        let Some(Value::Sequence(files)) = service.get("label_file").cloned() else { return Ok(()) };
        // A later label file overrides an earlier one.
        let mut from_files: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            let file = file.as_str().unwrap_or_default();
            let vars = dotenv::read_env_file(Path::new(file), &|_: &str| None).map_err(|e| match e {
                dotenv::EnvFileError::NotFound { .. } => self.locate_error(
                    PathError::new(path.key("label_file").index(i), format!("label file {file} not found"))
                        .with_hint("check the path (relative paths are resolved against the project directory)"),
                ),
                other => LoadError::from(other),
            })?;
            from_files.extend(vars);
        }
        let labels = service.entry("labels".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
        if let Some(labels) = labels.as_mapping_mut() {
            for (k, v) in from_files {
                if !labels.contains_key(k.as_str()) {
                    labels.insert(Value::String(k), Value::String(v.unwrap_or_default()));
                }
            }
        }
        Ok(())
    }

    // ---- profiles --------------------------------------------------------------------------

    fn apply_profiles(&mut self, doc: &mut Value, active: &BTreeSet<String>) -> Result<(), LoadError> {
        let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) else { return Ok(()) };
        let enabled = |service: &Value| -> bool {
            let profiles: Vec<&str> = match service.get("profiles") {
                Some(Value::Sequence(p)) => p.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            profiles.is_empty() || active.contains("*") || profiles.iter().any(|p| active.contains(*p))
        };
        let disabled: BTreeMap<String, Vec<String>> = services
            .iter()
            .filter(|(_, s)| !enabled(s))
            .filter_map(|(k, s)| {
                let profiles =
                    s.get("profiles")?.as_sequence()?.iter().filter_map(|p| p.as_str().map(str::to_string)).collect();
                Some((k.as_str()?.to_string(), profiles))
            })
            .collect();
        for name in disabled.keys() {
            services.remove(name.as_str());
        }
        // A required dependency on a service that a profile switched off cannot start.
        for (name, service) in services.iter() {
            let Some(deps) = service.get("depends_on").and_then(Value::as_mapping) else { continue };
            for (dep, spec) in deps {
                let Some(dep) = dep.as_str() else { continue };
                let required = spec.get("required").and_then(Value::as_bool).unwrap_or(true);
                if let (Some(profiles), true) = (disabled.get(dep), required) {
                    let name = name.as_str().unwrap_or_default();
                    let path = KeyPath::root().key("services").key(name).key("depends_on").key(dep);
                    return Err(self.locate_error(
                        PathError::new(
                            path,
                            format!("service `{name}` depends on `{dep}`, which is not enabled by the active profiles"),
                        )
                        .with_hint(format!(
                            "enable it with --profile {} (or COMPOSE_PROFILES), or set `required: false`",
                            profiles.join(" --profile ")
                        )),
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- typed model -----------------------------------------------------------------------

    fn to_model(&self, doc: Value) -> Result<Project, LoadError> {
        serde_path_to_error::deserialize::<_, Project>(doc).map_err(|e| {
            let path = convert_path(e.path());
            let inner = e.inner().to_string();
            self.locate_error(describe_serde_error(path, &inner))
        })
    }

    // ---- locating errors -------------------------------------------------------------------

    /// Locates an error raised while processing source `index`.
    fn error_in(&self, index: usize, e: PathError) -> LoadError {
        let prefer_key = e.message.starts_with("unknown attribute");
        let location = self.sources[index].location(&e.path, prefer_key);
        LoadError::new(location, e.path, e.message).with_hint_opt(e.hint)
    }

    /// Locates an error on the merged model: the deepest ancestor of its path that some file
    /// has, preferring the last file read (overrides come last).
    fn locate_error(&self, e: PathError) -> LoadError {
        let prefer_key = e.message.starts_with("unknown attribute");
        let mut current = Some(e.path.clone());
        while let Some(p) = current {
            if let Some(source) = self.sources.iter().rev().find(|s| s.positions().contains(&p)) {
                let location = source.location(&p, prefer_key);
                return LoadError::new(location, e.path, e.message).with_hint_opt(e.hint);
            }
            current = p.parent();
        }
        let file = self.sources.first().map(|s| s.path.clone()).unwrap_or_default();
        LoadError::new(Location { file, line: 0, column: 0 }, e.path, e.message).with_hint_opt(e.hint)
    }
}

// ---- environment ----------------------------------------------------------------------------

/// The process environment over the `.env` file (or the `--env-file`s): variables from files
/// never override the real environment.
fn build_environment(options: &LoadOptions, project_dir: &Path) -> Result<BTreeMap<String, String>, LoadError> {
    let files: Vec<PathBuf> = if options.env_files.is_empty() {
        vec![project_dir.join(".env")].into_iter().filter(|f| f.is_file()).collect()
    } else {
        options
            .env_files
            .iter()
            .map(|f| PathBuf::from(absolutize(&f.to_string_lossy(), &options.working_dir, None)))
            .collect()
    };
    let mut env = options.os_env.clone();
    let mut from_files: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let lookup_env: BTreeMap<String, String> =
            from_files.iter().chain(options.os_env.iter()).map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in read_dotenv(&file, &lookup_env)? {
            if let Some(v) = v {
                from_files.insert(k, v);
            }
        }
    }
    for (k, v) in from_files {
        env.entry(k).or_insert(v);
    }
    Ok(env)
}

fn read_dotenv(file: &Path, env: &BTreeMap<String, String>) -> Result<Vec<(String, Option<String>)>, LoadError> {
    dotenv::read_env_file(file, &|k: &str| env.get(k).cloned()).map_err(LoadError::from)
}

fn active_profiles(options: &LoadOptions, env: &BTreeMap<String, String>) -> BTreeSet<String> {
    if !options.profiles.is_empty() {
        return options
            .profiles
            .iter()
            .flat_map(|p| p.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
    }
    env.get("COMPOSE_PROFILES")
        .map(|p| p.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
        .unwrap_or_default()
}

fn collect_profiles(doc: &Value) -> BTreeSet<String> {
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else { return BTreeSet::new() };
    services
        .values()
        .filter_map(|s| s.get("profiles")?.as_sequence())
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

/// `-p` > `COMPOSE_PROJECT_NAME` > top-level `name:` > the project directory's name.
fn project_name(
    options: &LoadOptions,
    env: &BTreeMap<String, String>,
    doc: &Value,
    project_dir: &Path,
) -> Result<String, PathError> {
    if let Some(name) = &options.project_name {
        if !discovery::is_valid_project_name(name) {
            return Err(PathError::new(KeyPath::root(), format!("invalid project name {name:?} given with -p"))
                .with_hint("use lowercase letters, digits, `_` and `-`, starting with a letter or digit"));
        }
        return Ok(name.clone());
    }
    if let Some(name) = env.get("COMPOSE_PROJECT_NAME").filter(|n| !n.is_empty()) {
        return discovery::normalize_project_name(name).ok_or_else(|| {
            PathError::new(KeyPath::root(), format!("COMPOSE_PROJECT_NAME {name:?} has no usable characters"))
                .with_hint("use lowercase letters, digits, `_` and `-`")
        });
    }
    if let Some(name) = doc.get("name").and_then(scalar_text).filter(|n| !n.is_empty()) {
        return discovery::normalize_project_name(&name).ok_or_else(|| {
            PathError::new(KeyPath::root().key("name"), format!("the project name {name:?} has no usable characters"))
                .with_hint("use lowercase letters, digits, `_` and `-`")
        });
    }
    let dir_name = project_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    discovery::normalize_project_name(&dir_name).ok_or_else(|| {
        PathError::new(KeyPath::root(), format!("cannot derive a project name from the directory {dir_name:?}"))
            .with_hint("set `name:` at the top of the compose file, or pass -p NAME")
    })
}

/// Sets the name, attaches services without networks to `default`, and gives networks, volumes,
/// secrets and configs their engine names (`<project>_<key>` unless named or external).
fn set_project_defaults(doc: &mut Value, project: &str) {
    let Some(top) = doc.as_mapping_mut() else { return };
    top.insert("name".into(), Value::String(project.to_string()));
    let mut uses_default = false;
    if let Some(services) = top.get_mut("services").and_then(Value::as_mapping_mut) {
        for (_, service) in services.iter_mut() {
            let Some(service) = service.as_mapping_mut() else { continue };
            if service.contains_key("network_mode") {
                continue;
            }
            let networks = service.entry("networks".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Some(networks) = networks.as_mapping_mut() {
                if networks.is_empty() {
                    networks.insert("default".into(), Value::Null);
                }
                uses_default |= networks.contains_key("default");
            }
        }
    }
    if uses_default {
        let networks = top.entry("networks".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
        if let Some(networks) = networks.as_mapping_mut() {
            networks.entry("default".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
        }
    }
    for section in ["networks", "volumes", "secrets", "configs"] {
        let Some(entries) = top.get_mut(section).and_then(Value::as_mapping_mut) else { continue };
        for (key, entry) in entries.iter_mut() {
            let Some(key) = key.as_str() else { continue };
            let Some(entry) = entry.as_mapping_mut() else { continue };
            if entry.contains_key("name") {
                continue;
            }
            let external = entry.get("external").and_then(Value::as_bool).unwrap_or(false);
            let name = if external { key.to_string() } else { format!("{project}_{key}") };
            entry.insert("name".into(), Value::String(name));
        }
    }
}

/// A `pre_start` hook without an `image` runs the service's image (compose-spec PR #647).
fn inherit_pre_start_image(doc: &mut Value) {
    let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) else { return };
    for (_, service) in services.iter_mut() {
        let Some(image) = service.get("image").filter(|i| i.is_string()).cloned() else { continue };
        let Some(Value::Sequence(hooks)) = service.get_mut("pre_start") else { continue };
        for hook in hooks.iter_mut().filter_map(Value::as_mapping_mut) {
            hook.entry("image".into()).or_insert_with(|| image.clone());
        }
    }
}

// ---- small pieces -----------------------------------------------------------------------------

fn service_names(doc: &Value) -> Vec<String> {
    doc.get("services")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `extends: base` or `extends: {service: base, file: other.yaml}`.
fn parse_extends(value: &Value, path: &KeyPath) -> Result<(String, Option<String>), PathError> {
    match value {
        Value::String(s) => Ok((s.clone(), None)),
        Value::Mapping(m) => {
            let service = m.get("service").and_then(Value::as_str).ok_or_else(|| {
                PathError::new(path.clone(), "`extends` needs `service`")
                    .with_hint("write extends: {service: NAME, file: FILE}")
            })?;
            for key in m.keys() {
                if !matches!(key.as_str(), Some("service" | "file")) {
                    let k = scalar_text(key).unwrap_or_default();
                    return Err(PathError::new(path.key(k.as_str()), format!("unknown attribute `{k}` in extends"))
                        .with_hint(
                            did_you_mean(&k, ["service", "file"])
                                .unwrap_or_else(|| "extends takes `service` and `file`".into()),
                        ));
                }
            }
            Ok((service.to_string(), m.get("file").and_then(Value::as_str).map(str::to_string)))
        }
        _ => Err(PathError::new(path.clone(), "expected a service name or {service, file}")),
    }
}

struct IncludeSpec {
    paths: Vec<String>,
    project_directory: Option<String>,
    env_files: Vec<String>,
}

fn parse_include(entry: &Value, path: &KeyPath) -> Result<IncludeSpec, PathError> {
    let strings = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Sequence(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    };
    match entry {
        Value::String(s) => Ok(IncludeSpec { paths: vec![s.clone()], project_directory: None, env_files: Vec::new() }),
        Value::Mapping(m) => {
            for key in m.keys() {
                if !matches!(key.as_str(), Some("path" | "project_directory" | "env_file")) {
                    let k = scalar_text(key).unwrap_or_default();
                    return Err(PathError::new(path.key(k.as_str()), format!("unknown attribute `{k}` in include"))
                        .with_hint(
                            did_you_mean(&k, ["path", "project_directory", "env_file"])
                                .unwrap_or_else(|| "include takes path, project_directory and env_file".into()),
                        ));
                }
            }
            let paths = strings(m.get("path"));
            if paths.is_empty() {
                return Err(PathError::new(path.clone(), "an include entry needs `path`")
                    .with_hint("write include: [{path: other/compose.yaml}]"));
            }
            Ok(IncludeSpec {
                paths,
                project_directory: m.get("project_directory").and_then(Value::as_str).map(str::to_string),
                env_files: strings(m.get("env_file")),
            })
        }
        _ => Err(PathError::new(path.clone(), "expected a file path or {path, project_directory, env_file}")),
    }
}

/// Keys whose mappings hold user data (names, variables, labels) rather than attributes:
/// an `x-` key there is data, not an extension.
const FREE_FORM_KEYS: &[&str] = &[
    "environment",
    "labels",
    "annotations",
    "sysctls",
    "args",
    "driver_opts",
    "options",
    "extra_hosts",
    "storage_opt",
    "aux_addresses",
    "additional_contexts",
    "depends_on",
    "networks",
    "ulimits",
    "services",
    "volumes",
    "secrets",
    "configs",
    "models",
];

/// Removes `x-` extension keys at attribute levels (compose ignores them).
fn strip_extensions(value: &mut Value, path: &KeyPath) {
    let free_form = path.last_key().is_some_and(|k| FREE_FORM_KEYS.contains(&k))
        && path.segments().len() % 2 == 1
        && !path.is_root();
    match value {
        Value::Mapping(map) => {
            if !free_form {
                map.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
            }
            for (k, v) in map.iter_mut() {
                let key = scalar_text(k).unwrap_or_default();
                strip_extensions(v, &path.key(key));
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                strip_extensions(item, &path.index(i));
            }
        }
        Value::Tagged(t) => strip_extensions(&mut t.value, path),
        _ => {}
    }
}

/// Attributes whose value is a boolean; `yes`/`no`/`on`/`off` there are YAML 1.1 booleans.
const BOOLEAN_ATTRIBUTES: &[&str] = &[
    "attach",
    "init",
    "no_cache",
    "per_replica",
    "pull",
    "privileged",
    "oom_kill_disable",
    "read_only",
    "stdin_open",
    "tty",
    "use_api_socket",
    "required",
    "initial_sync",
    "disable",
    "external",
    "internal",
    "attachable",
    "enable_ipv4",
    "enable_ipv6",
    "create_host_path",
    "nocopy",
];

fn warn_yaml11_booleans(value: &Value, path: &KeyPath, warnings: &mut Vec<PathWarning>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = scalar_text(k).unwrap_or_default();
                let p = path.key(key.as_str());
                if let (Value::String(word), true) = (v, BOOLEAN_ATTRIBUTES.contains(&key.as_str())) {
                    if let Some(b) = super::units::yaml11_bool(word) {
                        warnings.push(PathWarning {
                            path: p.clone(),
                            message: format!("`{word}` is read as the boolean {b} (YAML 1.1 style); write {b}"),
                        });
                    }
                }
                warn_yaml11_booleans(v, &p, warnings);
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                warn_yaml11_booleans(item, &path.index(i), warnings);
            }
        }
        Value::Tagged(t) => warn_yaml11_booleans(&t.value, path, warnings),
        _ => {}
    }
}

fn convert_path(path: &serde_path_to_error::Path) -> KeyPath {
    let segments = path
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect::<Vec<_>>();
    KeyPath::from(segments)
}

/// Turns serde's messages into ours: unknown fields get a did-you-mean hint, unknown variants
/// list the accepted values.
fn describe_serde_error(path: KeyPath, message: &str) -> PathError {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backticked(expected);
        // serde reports the unknown key's own path for some containers and the parent for others.
        let path = if path.last_key() == Some(field) { path } else { path.key(field) };
        let hint = did_you_mean(field, known.iter().map(String::as_str))
            .unwrap_or_else(|| format!("valid attributes here: {}", known.join(", ")));
        return PathError::new(path, format!("unknown attribute `{field}`")).with_hint(hint);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backticked(expected);
        let hint = did_you_mean(value, known.iter().map(String::as_str))
            .unwrap_or_else(|| format!("use one of: {}", known.join(", ")));
        return PathError::new(path, format!("invalid value `{value}`")).with_hint(hint);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return PathError::new(path, format!("missing required attribute `{field}`"))
            .with_hint(format!("add `{field}:`"));
    }
    // Our own parsers end their message with "; write ..." — that part is the hint.
    if let Some((message, advice)) = message.split_once("; write ") {
        return PathError::new(path, message).with_hint(format!("write {advice}"));
    }
    let message = message
        .replace("invalid type: ", "wrong type: got ")
        .replace("got sequence", "got a list")
        .replace("got map", "got a mapping")
        .replace("got unit value", "got nothing (null)");
    // "wrong type: got X, expected Y" (serde) or "expected Y, got X" (our readers).
    let expected = match message.split_once(", expected ") {
        Some((_, expected)) => Some(expected),
        None => message.strip_prefix("expected ").and_then(|m| m.split(", got ").next()),
    };
    let hint = match (expected, path.last_key()) {
        (Some(expected), Some(key)) => format!("write `{key}` as {expected}"),
        _ => "see the Compose Specification for this attribute's form".to_string(),
    };
    PathError::new(path, message).with_hint(hint)
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}
