//! Relative paths in a service are relative to the project directory (or, for a service taken
//! from another file by `extends` or `include`, to that file's directory). This pass makes them
//! absolute, lexically (the paths need not exist yet).

use std::path::{Component, Path, PathBuf};

use serde_yaml::Value;

/// Joins `path` onto `base` unless it is absolute; expands a leading `~` with `home`;
/// removes `.` and resolves `..` lexically.
pub fn absolutize(path: &str, base: &Path, home: Option<&Path>) -> String {
    let expanded = match (path.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => home.join(rest.trim_start_matches('/')),
        _ => PathBuf::from(path),
    };
    let joined = if expanded.is_absolute() { expanded } else { base.join(expanded) };
    clean(&joined).to_string_lossy().into_owned()
}

fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A build context that is a URL (git, http) is not a path.
fn is_remote_context(context: &str) -> bool {
    context.contains("://") || context.starts_with("git@") || context.starts_with("github.com/")
}

/// Makes the paths of one canonical service absolute.
pub fn resolve_service_paths(service: &mut Value, base: &Path, home: Option<&Path>) {
    let Some(map) = service.as_mapping_mut() else { return };
    let fix = |v: &mut Value| {
        if let Some(s) = v.as_str() {
            *v = Value::String(absolutize(s, base, home));
        }
    };
    if let Some(build) = map.get_mut("build").and_then(Value::as_mapping_mut) {
        match build.get_mut("context") {
            Some(ctx) if ctx.as_str().is_some_and(is_remote_context) => {}
            Some(ctx) => fix(ctx),
            None => {
                build.insert("context".into(), Value::String(absolutize(".", base, home)));
            }
        }
        // Named contexts that are local directories; `docker-image://`, `service:` and
        // URLs are left as written.
        if let Some(contexts) = build.get_mut("additional_contexts").and_then(Value::as_mapping_mut) {
            for (_, ctx) in contexts.iter_mut() {
                if ctx.as_str().is_some_and(|c| !is_remote_context(c) && !c.starts_with("service:")) {
                    fix(ctx);
                }
            }
        }
        if !build.contains_key("dockerfile") && !build.contains_key("dockerfile_inline") {
            build.insert("dockerfile".into(), "Dockerfile".into());
        }
    }
    if let Some(Value::Sequence(files)) = map.get_mut("env_file") {
        for file in files.iter_mut() {
            if let Some(p) = file.as_mapping_mut().and_then(|m| m.get_mut("path")) {
                fix(p);
            }
        }
    }
    if let Some(Value::Sequence(files)) = map.get_mut("label_file") {
        files.iter_mut().for_each(fix);
    }
    if let Some(Value::Sequence(volumes)) = map.get_mut("volumes") {
        for volume in volumes.iter_mut().filter_map(Value::as_mapping_mut) {
            if volume.get("type").and_then(Value::as_str) == Some("bind") {
                if let Some(source) = volume.get_mut("source") {
                    fix(source);
                }
            }
        }
    }
    if let Some(Value::Sequence(rules)) = map.get_mut("develop").and_then(|d| d.get_mut("watch")) {
        for rule in rules.iter_mut().filter_map(Value::as_mapping_mut) {
            if let Some(p) = rule.get_mut("path") {
                fix(p);
            }
        }
    }
}

/// Makes `file:` of top-level secrets and configs absolute.
pub fn resolve_top_level_paths(doc: &mut Value, base: &Path, home: Option<&Path>) {
    for section in ["secrets", "configs"] {
        let Some(entries) = doc.get_mut(section).and_then(Value::as_mapping_mut) else { continue };
        for (_, entry) in entries.iter_mut() {
            if let Some(file) = entry.as_mapping_mut().and_then(|m| m.get_mut("file")) {
                if let Some(s) = file.as_str() {
                    *file = Value::String(absolutize(s, base, home));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolutizes_lexically() {
        let base = Path::new("/proj/app");
        assert_eq!(absolutize("./data", base, None), "/proj/app/data");
        assert_eq!(absolutize("../x/./y", base, None), "/proj/x/y");
        assert_eq!(absolutize("/abs", base, None), "/abs");
        assert_eq!(absolutize("~/cache", base, Some(Path::new("/home/u"))), "/home/u/cache");
        assert_eq!(absolutize("~", base, Some(Path::new("/home/u"))), "/home/u");
    }

    #[test]
    fn resolves_service_paths() {
        let mut service: Value = serde_yaml::from_str(
            "{build: {context: ./app}, env_file: [{path: a.env}], volumes: [{type: bind, source: ./s, target: /s}, {type: volume, source: data, target: /d}]}",
        )
        .unwrap();
        resolve_service_paths(&mut service, Path::new("/p"), None);
        assert_eq!(service["build"]["context"], Value::String("/p/app".into()));
        assert_eq!(service["build"]["dockerfile"], Value::String("Dockerfile".into()));
        assert_eq!(service["env_file"][0]["path"], Value::String("/p/a.env".into()));
        assert_eq!(service["volumes"][0]["source"], Value::String("/p/s".into()));
        assert_eq!(service["volumes"][1]["source"], Value::String("data".into()));
    }

    #[test]
    fn resolves_local_additional_contexts_only() {
        let mut service: Value = serde_yaml::from_str(
            "{build: {context: ./app, additional_contexts: {a: ./shared, b: 'docker-image://alpine', c: 'service:base', \
             d: 'https://github.com/a/b.git', e: /abs}}}",
        )
        .unwrap();
        resolve_service_paths(&mut service, Path::new("/p"), None);
        let contexts = &service["build"]["additional_contexts"];
        // Relative to the project directory, as compose does, not to the build context.
        assert_eq!(contexts["a"], Value::String("/p/shared".into()));
        assert_eq!(contexts["b"], Value::String("docker-image://alpine".into()));
        assert_eq!(contexts["c"], Value::String("service:base".into()));
        assert_eq!(contexts["d"], Value::String("https://github.com/a/b.git".into()));
        assert_eq!(contexts["e"], Value::String("/abs".into()));
    }

    #[test]
    fn leaves_remote_contexts_alone() {
        let mut service: Value = serde_yaml::from_str("{build: {context: 'https://github.com/a/b.git'}}").unwrap();
        resolve_service_paths(&mut service, Path::new("/p"), None);
        assert_eq!(service["build"]["context"], Value::String("https://github.com/a/b.git".into()));
    }
}
