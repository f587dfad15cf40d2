//! Finding the compose files and naming the project, as docker compose does.

use std::path::{Path, PathBuf};

use super::error::LoadError;

/// File names tried in each directory, in order, with the override file that goes with each.
const CANDIDATES: [(&str, &str); 4] = [
    ("compose.yaml", "compose.override.yaml"),
    ("compose.yml", "compose.override.yml"),
    ("docker-compose.yaml", "docker-compose.override.yaml"),
    ("docker-compose.yml", "docker-compose.override.yml"),
];

/// Looks for a compose file in `start` and then in each parent directory. Returns the file and,
/// if present beside it, its override file.
pub fn discover(start: &Path) -> Result<Vec<PathBuf>, LoadError> {
    for dir in start.ancestors() {
        for (name, override_name) in CANDIDATES {
            let file = dir.join(name);
            if file.is_file() {
                let mut files = vec![file];
                let override_file = dir.join(override_name);
                if override_file.is_file() {
                    files.push(override_file);
                }
                return Ok(files);
            }
        }
    }
    Err(LoadError::file(start, "no compose file found in this directory or any parent directory")
        .with_hint("create compose.yaml here, or name the file with -f FILE"))
}

/// Normalizes a project name the way compose does: lowercase, only `[a-z0-9_-]`, starting with
/// a letter or digit. Returns `None` when nothing usable is left.
pub fn normalize_project_name(raw: &str) -> Option<String> {
    let lowered = raw.to_lowercase();
    let kept: String =
        lowered.chars().filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-').collect();
    let trimmed = kept.trim_start_matches(['_', '-']);
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// True if `name` is already a valid project name (what `-p` must be).
pub fn is_valid_project_name(name: &str) -> bool {
    normalize_project_name(name).as_deref() == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize_project_name("My App.v2").as_deref(), Some("myappv2"));
        assert_eq!(normalize_project_name("_x-Y_").as_deref(), Some("x-y_"));
        assert_eq!(normalize_project_name("..."), None);
        assert!(is_valid_project_name("shop_2"));
        assert!(!is_valid_project_name("Shop"));
    }

    #[test]
    fn discovers_upwards_with_override() {
        let root = std::env::temp_dir().join(format!("shoal-discover-{}", std::process::id()));
        let nested = root.join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(root.join("docker-compose.yml"), "services: {}").unwrap();
        std::fs::write(root.join("docker-compose.override.yml"), "services: {}").unwrap();
        let files = discover(&nested).unwrap();
        assert_eq!(files, vec![root.join("docker-compose.yml"), root.join("docker-compose.override.yml")]);
        std::fs::write(root.join("compose.yaml"), "services: {}").unwrap();
        assert_eq!(discover(&nested).unwrap(), vec![root.join("compose.yaml")]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
