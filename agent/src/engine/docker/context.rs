//! Build context: the context directory as an in-memory tar, minus what `.dockerignore` excludes.
//!
//! The ignore rules are the common subset of Docker's: one pattern per line, `#` comments,
//! `*` and `?` within a path component, `**` across components, a leading `!` re-includes, the
//! last matching line wins, and excluding a directory excludes everything under it. The
//! Dockerfile and `.dockerignore` are always sent, as Docker does.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::engine::EngineError;

/// The name a Dockerfile from outside the context is stored under inside the tar.
const OUTSIDE_DOCKERFILE: &str = ".shoal.Dockerfile";

pub struct BuildContext {
    pub tar: Vec<u8>,
    /// The Dockerfile's path inside the tar, for the build API's `dockerfile` parameter.
    pub dockerfile: String,
}

pub fn pack(context: &Path, dockerfile: Option<&str>) -> Result<BuildContext, EngineError> {
    let err = |message: String| EngineError::BuildContext { path: context.display().to_string(), message };
    let meta = fs::metadata(context).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }

    let dockerfile = dockerfile.unwrap_or("Dockerfile");
    let df_path =
        if Path::new(dockerfile).is_absolute() { PathBuf::from(dockerfile) } else { context.join(dockerfile) };
    let (df_in_tar, outside) = match df_path.strip_prefix(context) {
        Ok(rel) => (to_slash(rel), false),
        Err(_) => (OUTSIDE_DOCKERFILE.to_string(), true),
    };
    if !df_path.is_file() {
        return Err(err(format!("Dockerfile {} not found", df_path.display())));
    }

    let ignore = match fs::read_to_string(context.join(".dockerignore")) {
        Ok(text) => IgnoreRules::parse(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => return Err(err(format!(".dockerignore: {e}"))),
    };

    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let always = [df_in_tar.as_str(), ".dockerignore"];
    add_dir(&mut builder, context, Path::new(""), &ignore, &always).map_err(|e| err(e.to_string()))?;
    if outside {
        builder
            .append_path_with_name(&df_path, OUTSIDE_DOCKERFILE)
            .map_err(|e| err(format!("Dockerfile {}: {e}", df_path.display())))?;
    }
    let tar = builder.into_inner().map_err(|e| err(e.to_string()))?;
    Ok(BuildContext { tar, dockerfile: df_in_tar })
}

fn add_dir(
    builder: &mut tar::Builder<Vec<u8>>,
    root: &Path,
    rel: &Path,
    ignore: &IgnoreRules,
    always: &[&str],
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    // Stable order keeps the tar (and so the build cache key) deterministic.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let name = to_slash(&rel_path);
        let file_type = entry.file_type()?;
        let excluded = ignore.excludes(&name) && !always.contains(&name.as_str());
        if file_type.is_dir() {
            // An excluded directory may still hold re-included files (`!dir/keep`), so descend
            // when negations exist.
            if !excluded {
                builder.append_dir(&name, entry.path())?;
            }
            if !excluded || ignore.has_negations {
                add_dir(builder, root, &rel_path, ignore, always)?;
            }
        } else if !excluded {
            builder.append_path_with_name(entry.path(), &name)?;
        }
    }
    Ok(())
}

fn to_slash(p: &Path) -> String {
    p.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

#[derive(Default)]
struct IgnoreRules {
    rules: Vec<(bool, Vec<String>)>,
    has_negations: bool,
}

impl IgnoreRules {
    fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        let mut has_negations = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            has_negations |= negate;
            let parts: Vec<String> = pattern
                .trim_start_matches("./")
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect();
            if !parts.is_empty() {
                rules.push((negate, parts));
            }
        }
        IgnoreRules { rules, has_negations }
    }

    /// Whether `path` (slash-separated, relative to the context) is excluded. A path is also
    /// matched through its ancestors, so `logs` excludes `logs/a.txt`.
    fn excludes(&self, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for (negate, pattern) in &self.rules {
            let hit = (1..=comps.len()).any(|n| match_components(pattern, &comps[..n]));
            if hit {
                excluded = !negate;
            }
        }
        excluded
    }
}

fn match_components(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| match_components(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((p, path_rest)) => glob(first.as_bytes(), p.as_bytes()) && match_components(rest, path_rest),
            None => false,
        },
    }
}

/// `*` and `?` glob over one path component.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().trim_end_matches('/').to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn ignore_rules_follow_dockerignore_basics() {
        let rules = IgnoreRules::parse("# comment\n*.log\ntarget\n**/secret*\n!keep.log\n");
        assert!(rules.excludes("a.log"));
        assert!(!rules.excludes("keep.log"));
        assert!(!rules.excludes("dir/a.log"), "*.log is anchored at the root");
        assert!(rules.excludes("target/debug/x"));
        assert!(rules.excludes("deep/er/secret.txt"));
        assert!(!rules.excludes("src/main.rs"));
    }

    #[test]
    fn pack_excludes_ignored_but_keeps_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(root.join(".dockerignore"), "Dockerfile\n.dockerignore\nbig\n*.tmp\n").unwrap();
        fs::create_dir_all(root.join("big/inner")).unwrap();
        fs::write(root.join("big/inner/blob"), "x").unwrap();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("src/app.sh"), "echo").unwrap();
        fs::write(root.join("scratch.tmp"), "x").unwrap();
        let ctx = pack(root, None).unwrap();
        assert_eq!(ctx.dockerfile, "Dockerfile");
        assert_eq!(names(&ctx.tar), vec![".dockerignore", "Dockerfile", "src", "src/app.sh"]);
    }

    #[test]
    fn dockerfile_outside_context_is_embedded() {
        let ctx_dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        fs::write(ctx_dir.path().join("file"), "x").unwrap();
        let df = other.path().join("Build.df");
        fs::write(&df, "FROM scratch\n").unwrap();
        let ctx = pack(ctx_dir.path(), Some(df.to_str().unwrap())).unwrap();
        assert_eq!(ctx.dockerfile, OUTSIDE_DOCKERFILE);
        assert_eq!(names(&ctx.tar), vec![OUTSIDE_DOCKERFILE, "file"]);
    }

    #[test]
    fn missing_dockerfile_is_a_clear_error() {
        let ctx_dir = tempfile::tempdir().unwrap();
        let e = pack(ctx_dir.path(), None).err().unwrap().to_string();
        assert!(e.contains("Dockerfile") && e.contains("not found"), "{e}");
    }
}
