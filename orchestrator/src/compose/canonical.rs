//! Short syntax → long syntax, per document and before merging, so that merging and the typed
//! model only ever see one form: `"8080:80"` becomes `{target: 80, published: "8080", ...}`,
//! `environment: [A=1]` becomes `{A: "1"}`, `depends_on: [db]` becomes
//! `{db: {condition: service_started, required: true}}`, and so on.
//!
//! `!reset` / `!override` tags are kept around the converted value; the merge resolves them.

use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

use super::error::PathError;
use super::path::KeyPath;

/// A warning about a document, located by key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathWarning {
    pub path: KeyPath,
    pub message: String,
}

type Result<T> = std::result::Result<T, PathError>;

/// Converts every short form in a compose document to its long form.
pub fn canonicalize_document(doc: &mut Value, warnings: &mut Vec<PathWarning>) -> Result<()> {
    let root = KeyPath::root();
    let Some(top) = doc.as_mapping_mut() else {
        return Err(PathError::new(root, format!("expected a mapping at the top level, got {}", kind(doc)))
            .with_hint("a compose file starts with keys such as `services:`"));
    };
    if top.remove("version").is_some() {
        warnings.push(PathWarning {
            path: root.key("version"),
            message: "the attribute `version` is obsolete and ignored".into(),
        });
    }
    if let Some(services) = top.get_mut("services") {
        for_each_entry(services, &root.key("services"), |name, service, path| {
            let _ = name;
            with_tag(service, |s| canonicalize_service(s, path, warnings))
        })?;
    }
    for section in ["networks", "volumes"] {
        if let Some(entries) = top.get_mut(section) {
            for_each_entry(entries, &root.key(section), |_, entry, path| {
                with_tag(entry, |e| canonicalize_resource(e, path, warnings))
            })?;
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(entries) = top.get_mut(section) {
            for_each_entry(entries, &root.key(section), |_, entry, path| {
                with_tag(entry, |e| canonicalize_resource(e, path, warnings))
            })?;
        }
    }
    Ok(())
}

/// Calls `f` for each entry of a name → definition section (`services`, `networks`, ...).
fn for_each_entry(
    section: &mut Value,
    path: &KeyPath,
    mut f: impl FnMut(&str, &mut Value, &KeyPath) -> Result<()>,
) -> Result<()> {
    if let Value::Tagged(tagged) = section {
        return for_each_entry(&mut tagged.value, path, f);
    }
    if section.is_null() {
        return Ok(());
    }
    let Some(map) = section.as_mapping_mut() else {
        return Err(expected(path, "a mapping of names to definitions", section));
    };
    for (key, value) in map.iter_mut() {
        let name = key_text(key, path)?;
        f(&name, value, &path.key(name.clone()))?;
    }
    Ok(())
}

/// Runs `f` on the value inside a `!reset`/`!override` tag, or on the value itself.
fn with_tag(value: &mut Value, f: impl FnOnce(&mut Value) -> Result<()>) -> Result<()> {
    match value {
        Value::Tagged(tagged) => f(&mut tagged.value),
        other => f(other),
    }
}

fn canonicalize_service(service: &mut Value, path: &KeyPath, warnings: &mut Vec<PathWarning>) -> Result<()> {
    if service.is_null() {
        *service = Value::Mapping(Mapping::new());
        return Ok(());
    }
    let Some(map) = service.as_mapping_mut() else {
        return Err(expected(path, "a mapping of service attributes", service));
    };
    let attribute_names: Vec<String> = map.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    for name in attribute_names {
        let Some(value) = map.get_mut(name.as_str()) else { continue };
        let p = path.key(name.clone());
        with_tag(value, |v| canonicalize_attribute(&name, v, &p, warnings))?;
    }
    Ok(())
}

fn canonicalize_attribute(
    name: &str,
    value: &mut Value,
    path: &KeyPath,
    warnings: &mut Vec<PathWarning>,
) -> Result<()> {
    match name {
        "build" => canonicalize_build(value, path),
        "command" | "entrypoint" => split_command(value, path),
        "environment" => to_string_map(value, path, ListItemWithoutValue::Null),
        "labels" | "annotations" | "sysctls" | "storage_opt" => to_string_map(value, path, ListItemWithoutValue::Empty),
        "extra_hosts" => canonicalize_extra_hosts(value, path),
        "ports" => canonicalize_ports(value, path),
        "expose" => map_list_items(value, path, scalar_to_string),
        "volumes" => canonicalize_service_volumes(value, path),
        "depends_on" => canonicalize_depends_on(value, path),
        "networks" => canonicalize_service_networks(value, path),
        "models" => list_to_null_map(value, path),
        "secrets" | "configs" => canonicalize_file_references(value, path),
        "ulimits" => canonicalize_ulimits(value, path),
        "healthcheck" => canonicalize_healthcheck(value, path),
        "env_file" => canonicalize_env_file(value, path),
        "label_file"
        | "dns"
        | "dns_search"
        | "dns_opt"
        | "tmpfs"
        | "cap_add"
        | "cap_drop"
        | "security_opt"
        | "profiles"
        | "external_links"
        | "links"
        | "volumes_from"
        | "device_cgroup_rules" => {
            string_to_list(value);
            map_list_items(value, path, scalar_to_string)
        }
        "group_add" => map_list_items(value, path, scalar_to_string),
        "devices" => canonicalize_devices(value, path),
        "logging" => with_field(value, "options", path, |v, p| to_string_map(v, p, ListItemWithoutValue::Empty)),
        "deploy" => canonicalize_deploy(value, path),
        "gpus" if value.is_sequence() => map_list_items(value, path, canonicalize_device_request),
        "post_start" | "pre_start" | "pre_stop" => map_list_items(value, path, canonicalize_hook),
        "develop" => with_field(value, "watch", path, |v, p| map_list_items(v, p, canonicalize_watch_rule)),
        "restart" => {
            // `restart: no` must stay the string "no" (YAML 1.1 would read a boolean).
            if let Value::Bool(false) = value {
                *value = Value::String("no".into());
            }
            Ok(())
        }
        "version" => Ok(()),
        _ => {
            let _ = warnings;
            Ok(())
        }
    }
}

fn canonicalize_build(value: &mut Value, path: &KeyPath) -> Result<()> {
    if let Some(context) = value.as_str() {
        let mut map = Mapping::new();
        map.insert("context".into(), Value::String(context.to_string()));
        *value = Value::Mapping(map);
        return Ok(());
    }
    let Some(map) = value.as_mapping_mut() else {
        return Err(expected(path, "a build context path or a mapping", value));
    };
    for (key, value) in map.iter_mut() {
        let Some(name) = key.as_str() else { continue };
        let p = path.key(name);
        with_tag(value, |v| match name {
            "args" => to_string_map(v, &p, ListItemWithoutValue::Null),
            "labels" | "additional_contexts" => to_string_map(v, &p, ListItemWithoutValue::Empty),
            "extra_hosts" => canonicalize_extra_hosts(v, &p),
            "secrets" => canonicalize_file_references(v, &p),
            "ulimits" => canonicalize_ulimits(v, &p),
            "ssh" => canonicalize_ssh(v, &p),
            "cache_from" | "cache_to" | "no_cache_filter" | "tags" | "platforms" | "entitlements" => {
                string_to_list(v);
                Ok(())
            }
            _ => Ok(()),
        })?;
    }
    Ok(())
}

/// `ssh: default` / `[default, id=path]` / `{id: path}` → `["default", "id=path"]`.
fn canonicalize_ssh(value: &mut Value, path: &KeyPath) -> Result<()> {
    if let Some(map) = value.as_mapping() {
        let mut list = Vec::new();
        for (k, v) in map {
            let key = key_text(k, path)?;
            match scalar_text(v) {
                Some(v) => list.push(Value::String(format!("{key}={v}"))),
                None => list.push(Value::String(key)),
            }
        }
        *value = Value::Sequence(list);
        return Ok(());
    }
    string_to_list(value);
    Ok(())
}

/// A command string is split shell-style (it is not run through `sh -c`); null stays null, which
/// means "the image's default", unlike `[]`.
fn split_command(value: &mut Value, path: &KeyPath) -> Result<()> {
    match value {
        Value::Null | Value::Sequence(_) => map_list_items(value, path, scalar_to_string),
        Value::String(s) => {
            let words = shell_words::split(s).map_err(|e| {
                PathError::new(path.clone(), format!("cannot split the command {s:?}: {e}"))
                    .with_hint("close the quote, or write the command as a list of arguments")
            })?;
            *value = Value::Sequence(words.into_iter().map(Value::String).collect());
            Ok(())
        }
        other => Err(expected(path, "a command string or a list of arguments", other)),
    }
}

#[derive(Clone, Copy)]
enum ListItemWithoutValue {
    /// `environment: [FOO]`: take FOO from the shell later.
    Null,
    /// `labels: [foo]`: an empty label.
    Empty,
}

/// `[K=V, K]` or `{K: V}` → `{K: "V"}`; scalar values become strings, null stays null.
fn to_string_map(value: &mut Value, path: &KeyPath, without_value: ListItemWithoutValue) -> Result<()> {
    match value {
        Value::Null => {
            *value = Value::Mapping(Mapping::new());
            Ok(())
        }
        Value::Sequence(items) => {
            let mut map = Mapping::new();
            for (i, item) in items.iter().enumerate() {
                let p = path.index(i);
                let text = scalar_text(item).ok_or_else(|| expected(&p, "a string like KEY=VALUE", item))?;
                let (key, val) = match text.split_once('=') {
                    Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
                    None => (
                        text.clone(),
                        match without_value {
                            ListItemWithoutValue::Null => Value::Null,
                            ListItemWithoutValue::Empty => Value::String(String::new()),
                        },
                    ),
                };
                if key.is_empty() {
                    return Err(PathError::new(p, format!("{text:?} has no name before `=`"))
                        .with_hint("write entries as KEY=VALUE"));
                }
                map.insert(Value::String(key), val);
            }
            *value = Value::Mapping(map);
            Ok(())
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = key_text(k, path)?;
                let p = path.key(key);
                with_tag(v, |v| {
                    if v.is_null() {
                        // `labels: {foo: }` is an empty label; `environment: {FOO: }` stays unset.
                        if let ListItemWithoutValue::Empty = without_value {
                            *v = Value::String(String::new());
                        }
                        return Ok(());
                    }
                    let text = scalar_text(v).ok_or_else(|| expected(&p, "a string, number or boolean", v))?;
                    *v = Value::String(text);
                    Ok(())
                })?;
            }
            // Keys such as `1: x` become string keys.
            let entries: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
            for (k, v) in entries {
                let key = key_text(&k, path)?;
                map.insert(Value::String(key), v);
            }
            Ok(())
        }
        other => Err(expected(path, "a list of KEY=VALUE strings or a mapping", other)),
    }
}

/// `["host:ip", "host=ip"]` or `{host: ip | [ips]}` → `{host: [ips]}`.
fn canonicalize_extra_hosts(value: &mut Value, path: &KeyPath) -> Result<()> {
    let mut hosts = Mapping::new();
    let mut add = |host: String, ip: String| match hosts.get_mut(host.as_str()) {
        Some(Value::Sequence(ips)) => ips.push(Value::String(ip)),
        _ => {
            hosts.insert(Value::String(host), Value::Sequence(vec![Value::String(ip)]));
        }
    };
    match value {
        Value::Null => {}
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = path.index(i);
                let text = scalar_text(item).ok_or_else(|| expected(&p, "a string like host=ip", item))?;
                let split = text.split_once('=').or_else(|| text.split_once(':'));
                let Some((host, ip)) = split else {
                    return Err(PathError::new(p, format!("invalid extra host {text:?}: expected host=ip"))
                        .with_hint("write it as myhost=10.0.0.1 (or myhost:10.0.0.1)"));
                };
                add(host.to_string(), strip_brackets(ip).to_string());
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter() {
                let host = key_text(k, path)?;
                let p = path.key(host.clone());
                match v {
                    Value::Sequence(ips) => {
                        for (i, ip) in ips.iter().enumerate() {
                            let ip = scalar_text(ip).ok_or_else(|| expected(&p.index(i), "an IP address", ip))?;
                            add(host.clone(), strip_brackets(&ip).to_string());
                        }
                    }
                    other => {
                        let ip = scalar_text(other).ok_or_else(|| expected(&p, "an IP address", other))?;
                        add(host.clone(), strip_brackets(&ip).to_string());
                    }
                }
            }
        }
        other => return Err(expected(path, "a list of host=ip strings or a mapping", other)),
    }
    *value = Value::Mapping(hosts);
    Ok(())
}

fn strip_brackets(ip: &str) -> &str {
    ip.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(ip)
}

fn canonicalize_ports(value: &mut Value, path: &KeyPath) -> Result<()> {
    let items = match value {
        Value::Null => return Ok(()),
        Value::Sequence(items) => std::mem::take(items),
        other => return Err(expected(path, "a list of ports", other)),
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let p = path.index(i);
        match item {
            Value::Mapping(mut map) => {
                map.entry("mode".into()).or_insert_with(|| "ingress".into());
                map.entry("protocol".into()).or_insert_with(|| "tcp".into());
                if let Some(published) = map.get_mut("published") {
                    if let Some(text) = scalar_text(published) {
                        *published = Value::String(text);
                    }
                }
                if !map.contains_key("target") {
                    return Err(PathError::new(p, "a port in long syntax needs `target`")
                        .with_hint("add `target: <container port>`"));
                }
                out.push(Value::Mapping(map));
            }
            Value::Tagged(t) => out.push(Value::Tagged(t)),
            other => {
                let text = scalar_text(&other).ok_or_else(|| expected(&p, "a port like \"8080:80\"", &other))?;
                out.extend(parse_short_port(&text, &p)?);
            }
        }
    }
    *value = Value::Sequence(out);
    Ok(())
}

/// A parsed `[ip:][published:]target[/protocol]` entry with ranges.
fn parse_short_port(text: &str, path: &KeyPath) -> Result<Vec<Value>> {
    let invalid = |why: &str| {
        PathError::new(path.clone(), format!("invalid port {text:?}: {why}"))
            .with_hint("use [host_ip:][published:]target[/protocol], e.g. \"8080:80\", \"127.0.0.1:53:53/udp\" or \"9000-9002:9000-9002\"")
    };
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((spec, proto)) => (spec, proto),
        None => (text, "tcp"),
    };
    if !matches!(protocol, "tcp" | "udp" | "sctp") {
        return Err(invalid(&format!("unknown protocol {protocol:?} (use tcp, udp or sctp)")));
    }
    // Split from the right: target, then published, and whatever is left is the host IP
    // (which may itself contain colons when it is IPv6, bracketed or not).
    let (rest, target) = match spec.rsplit_once(':') {
        Some((rest, target)) => (Some(rest), target),
        None => (None, spec),
    };
    let (host_ip, published) = match rest {
        None => (None, None),
        Some(rest) => match rest.rsplit_once(':') {
            Some((ip, published)) => (Some(strip_brackets(ip)), Some(published)),
            None => (None, Some(rest)),
        },
    };
    let targets = parse_range(target).ok_or_else(|| invalid(&format!("{target:?} is not a port or port range")))?;
    let published_range = match published {
        Some("") | None => None,
        Some(p) => Some(parse_range(p).ok_or_else(|| invalid(&format!("{p:?} is not a port or port range")))?),
    };
    let target_count = targets.1 - targets.0 + 1;
    let entry = |target: u32, published: Option<String>| {
        let mut map = Mapping::new();
        map.insert("mode".into(), "ingress".into());
        if let Some(ip) = host_ip.filter(|ip| !ip.is_empty()) {
            map.insert("host_ip".into(), Value::String(ip.to_string()));
        }
        map.insert("target".into(), Value::Number(target.into()));
        if let Some(p) = published {
            map.insert("published".into(), Value::String(p));
        }
        map.insert("protocol".into(), Value::String(protocol.to_string()));
        Value::Mapping(map)
    };
    match published_range {
        None => Ok((targets.0..=targets.1).map(|t| entry(t, None)).collect()),
        Some((lo, hi)) if target_count == 1 => {
            let published = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
            Ok(vec![entry(targets.0, Some(published))])
        }
        Some((lo, hi)) if hi - lo + 1 == target_count => {
            Ok((0..target_count).map(|i| entry(targets.0 + i, Some((lo + i).to_string()))).collect())
        }
        Some(_) => Err(invalid("the published and target ranges have different lengths")),
    }
}

/// `80` → (80, 80); `8000-8010` → (8000, 8010). Ports are 1..=65535 (0 only as published).
fn parse_range(text: &str) -> Option<(u32, u32)> {
    let port = |s: &str| s.trim().parse::<u32>().ok().filter(|p| *p <= 65535);
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    (lo <= hi).then_some((lo, hi))
}

fn canonicalize_service_volumes(value: &mut Value, path: &KeyPath) -> Result<()> {
    map_list_items(value, path, |item, p| {
        match &mut *item {
            Value::Mapping(map) => {
                if !map.contains_key("target") {
                    return Err(PathError::new(p.clone(), "a volume in long syntax needs `target`")
                        .with_hint("add `target: /path/in/container`"));
                }
                if !map.contains_key("type") {
                    return Err(PathError::new(p.clone(), "a volume in long syntax needs `type`")
                        .with_hint("add `type: volume`, `type: bind` or `type: tmpfs`"));
                }
            }
            other => {
                let text =
                    scalar_text(other).ok_or_else(|| expected(p, "a volume like \"data:/var/lib/data\"", other))?;
                *other = parse_short_volume(&text, p)?;
            }
        }
        // `/data/` and `/data` are one mount point (compose cleans the target too), so that
        // merging and duplicate checks see them as the same.
        if let Some(Value::String(target)) = item.get_mut("target") {
            *target = clean_container_path(target);
        }
        Ok(())
    })
}

/// Lexically cleans a `/`-separated container path: repeated `/`, `.` and `..` segments and a
/// trailing `/` go (`/a//b/./c/` → `/a/b/c`). Other paths (Windows, relative) are left alone.
fn clean_container_path(target: &str) -> String {
    if !target.starts_with('/') {
        return target.to_string();
    }
    let mut parts: Vec<&str> = Vec::new();
    for segment in target.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `[source:]target[:mode]` → long syntax. A source that looks like a path (`/`, `.`, `~`, or
/// a Windows drive) is a bind mount; otherwise it names a volume.
fn parse_short_volume(text: &str, path: &KeyPath) -> Result<Value> {
    let invalid = |why: &str| {
        PathError::new(path.clone(), format!("invalid volume {text:?}: {why}"))
            .with_hint("use [source:]target[:mode], e.g. \"data:/var/lib/data\", \"./site:/srv:ro\" or \"/cache\"")
    };
    let parts = split_volume_spec(text);
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => return Err(invalid("too many `:`-separated parts")),
    };
    if target.is_empty() {
        return Err(invalid("the target path is empty"));
    }
    if !target.starts_with('/') && !is_windows_path(target) {
        return Err(invalid(&format!("the target {target:?} must be an absolute path in the container")));
    }
    let mut map = Mapping::new();
    let is_bind = source.is_some_and(|s| s.starts_with(['/', '.', '~']) || is_windows_path(s));
    let kind = if is_bind { "bind" } else { "volume" };
    map.insert("type".into(), kind.into());
    if let Some(s) = source {
        if s.is_empty() {
            return Err(invalid("the source is empty"));
        }
        map.insert("source".into(), Value::String(s.to_string()));
    }
    map.insert("target".into(), Value::String(target.to_string()));
    let mut bind = Mapping::new();
    let mut volume = Mapping::new();
    for option in mode.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => {
                map.insert("read_only".into(), Value::Bool(true));
            }
            "rw" => {}
            "z" | "Z" => {
                bind.insert("selinux".into(), Value::String(option.to_string()));
            }
            "nocopy" => {
                volume.insert("nocopy".into(), Value::Bool(true));
            }
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                bind.insert("propagation".into(), Value::String(option.to_string()));
            }
            "consistent" | "cached" | "delegated" => {
                map.insert("consistency".into(), Value::String(option.to_string()));
            }
            other => {
                return Err(invalid(&format!("unknown mode {other:?} (use ro, rw, z, Z, nocopy or a propagation)")))
            }
        }
    }
    if is_bind {
        // A short-syntax bind creates a missing host directory (docker's historical behaviour).
        bind.insert("create_host_path".into(), Value::Bool(true));
        map.insert("bind".into(), Value::Mapping(bind));
    } else if !bind.is_empty() {
        return Err(invalid("selinux and propagation modes apply only to bind mounts"));
    }
    if !volume.is_empty() {
        if is_bind {
            return Err(invalid("nocopy applies only to volumes"));
        }
        map.insert("volume".into(), Value::Mapping(volume));
    }
    Ok(Value::Mapping(map))
}

/// Splits on `:` but not the one after a Windows drive letter (`C:\data:/data`).
fn split_volume_spec(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        if c != ':' {
            continue;
        }
        let drive_colon = i == start + 1
            && bytes[start].is_ascii_alphabetic()
            && matches!(bytes.get(i + 1), Some(b'\\') | Some(b'/'));
        if !drive_colon {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

fn is_windows_path(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/')
}

fn canonicalize_depends_on(value: &mut Value, path: &KeyPath) -> Result<()> {
    let default_entry = || {
        let mut m = Mapping::new();
        m.insert("condition".into(), "service_started".into());
        m.insert("required".into(), Value::Bool(true));
        m
    };
    match value {
        Value::Null | Value::Sequence(_) => {
            names_to_map(value, path, "a service name", || Value::Mapping(default_entry()))
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let name = key_text(k, path)?;
                let p = path.key(name);
                with_tag(v, |v| {
                    if v.is_null() {
                        *v = Value::Mapping(default_entry());
                        return Ok(());
                    }
                    let Some(entry) = v.as_mapping_mut() else {
                        return Err(expected(&p, "a mapping with `condition`", v));
                    };
                    entry.entry("condition".into()).or_insert_with(|| "service_started".into());
                    entry.entry("required".into()).or_insert(Value::Bool(true));
                    Ok(())
                })?;
            }
            Ok(())
        }
        other => Err(expected(path, "a list of service names or a mapping", other)),
    }
}

/// A list of names (or null) → a map of each name to `entry()`; other values are left alone.
fn names_to_map(value: &mut Value, path: &KeyPath, what: &str, entry: impl Fn() -> Value) -> Result<()> {
    let mut map = Mapping::new();
    if let Value::Sequence(items) = value {
        for (i, item) in items.iter().enumerate() {
            let name = item.as_str().ok_or_else(|| expected(&path.index(i), what, item))?;
            map.insert(Value::String(name.to_string()), entry());
        }
    } else if !value.is_null() {
        return Ok(());
    }
    *value = Value::Mapping(map);
    Ok(())
}

/// `[a, b]` → `{a: null, b: null}` (service networks, models).
fn list_to_null_map(value: &mut Value, path: &KeyPath) -> Result<()> {
    match value {
        Value::Null | Value::Sequence(_) => names_to_map(value, path, "a name", || Value::Null),
        Value::Mapping(_) => Ok(()),
        other => Err(expected(path, "a list of names or a mapping", other)),
    }
}

/// A `develop.watch` rule: `include`/`ignore` may be one pattern; `exec` is a hook.
fn canonicalize_watch_rule(rule: &mut Value, path: &KeyPath) -> Result<()> {
    for field in ["include", "ignore"] {
        with_field(rule, field, path, |v, _| {
            string_to_list(v);
            Ok(())
        })?;
    }
    with_field(rule, "exec", path, canonicalize_hook)
}

/// Service `networks`: a list of names → `{name: null}`; `driver_opts` values as strings.
fn canonicalize_service_networks(value: &mut Value, path: &KeyPath) -> Result<()> {
    list_to_null_map(value, path)?;
    for_each_entry(value, path, |_, network, p| {
        with_tag(network, |n| with_field(n, "driver_opts", p, |v, p| to_string_map(v, p, ListItemWithoutValue::Empty)))
    })
}

/// Service `secrets`/`configs`: `name` → `{source: name}`.
fn canonicalize_file_references(value: &mut Value, path: &KeyPath) -> Result<()> {
    map_list_items(value, path, |item, p| match item {
        Value::String(name) => {
            let mut map = Mapping::new();
            map.insert("source".into(), Value::String(name.clone()));
            *item = Value::Mapping(map);
            Ok(())
        }
        Value::Mapping(map) => {
            if !map.contains_key("source") {
                return Err(PathError::new(p.clone(), "a reference in long syntax needs `source`")
                    .with_hint("add `source: <name of the top-level secret or config>`"));
            }
            Ok(())
        }
        other => Err(expected(p, "a name or a mapping with `source`", other)),
    })
}

/// `nofile: 1024` → `{soft: 1024, hard: 1024}`.
fn canonicalize_ulimits(value: &mut Value, path: &KeyPath) -> Result<()> {
    let Some(map) = value.as_mapping_mut() else {
        if value.is_null() {
            return Ok(());
        }
        return Err(expected(path, "a mapping of limit names", value));
    };
    for (k, v) in map.iter_mut() {
        let name = key_text(k, path)?;
        if v.is_number() || v.is_string() {
            let mut limit = Mapping::new();
            limit.insert("soft".into(), v.clone());
            limit.insert("hard".into(), v.clone());
            *v = Value::Mapping(limit);
        } else if !v.is_mapping() && !matches!(v, Value::Tagged(_)) {
            return Err(expected(&path.key(name), "a number or {soft, hard}", v));
        }
    }
    Ok(())
}

/// `test: "curl -f x"` → `["CMD-SHELL", "curl -f x"]`.
fn canonicalize_healthcheck(value: &mut Value, path: &KeyPath) -> Result<()> {
    with_field(value, "test", path, |test, p| match test {
        Value::String(s) => {
            *test = Value::Sequence(vec!["CMD-SHELL".into(), Value::String(s.clone())]);
            Ok(())
        }
        Value::Sequence(items) => {
            let first = items.first().and_then(Value::as_str);
            match first {
                Some("NONE" | "CMD" | "CMD-SHELL") => map_list_items(test, p, scalar_to_string),
                _ => Err(PathError::new(p.clone(), "a healthcheck test list must start with NONE, CMD or CMD-SHELL")
                    .with_hint(
                        "e.g. [\"CMD\", \"wget\", \"-q\", \"http://localhost\"] or a plain string for a shell command",
                    )),
            }
        }
        other => Err(expected(p, "a command string or a list starting with CMD, CMD-SHELL or NONE", other)),
    })
}

/// `env_file: a.env` / `[a.env]` / `[{path, required}]` → `[{path, required}]`.
fn canonicalize_env_file(value: &mut Value, path: &KeyPath) -> Result<()> {
    string_to_list(value);
    map_list_items(value, path, |item, p| match item {
        Value::String(file) => {
            let mut map = Mapping::new();
            map.insert("path".into(), Value::String(file.clone()));
            map.insert("required".into(), Value::Bool(true));
            *item = Value::Mapping(map);
            Ok(())
        }
        Value::Mapping(map) => {
            if !map.contains_key("path") {
                return Err(
                    PathError::new(p.clone(), "an env_file entry needs `path`").with_hint("add `path: ./file.env`")
                );
            }
            map.entry("required".into()).or_insert(Value::Bool(true));
            Ok(())
        }
        other => Err(expected(p, "a file path or {path, required}", other)),
    })
}

/// `"/dev/sda:/dev/xvda:rwm"` → `{source, target, permissions}`.
fn canonicalize_devices(value: &mut Value, path: &KeyPath) -> Result<()> {
    map_list_items(value, path, |item, p| {
        let Some(text) = item.as_str() else {
            return if item.is_mapping() { Ok(()) } else { Err(expected(p, "a device like /dev/x:/dev/y:rwm", item)) };
        };
        let parts: Vec<&str> = text.split(':').collect();
        let (source, target, permissions) = match parts.as_slice() {
            [s] => (*s, *s, None),
            [s, t] => (*s, *t, None),
            [s, t, perm] => (*s, *t, Some(*perm)),
            _ => {
                return Err(PathError::new(p.clone(), format!("invalid device {text:?}"))
                    .with_hint("use host_path[:container_path[:permissions]]"))
            }
        };
        let mut map = Mapping::new();
        map.insert("source".into(), Value::String(source.to_string()));
        map.insert("target".into(), Value::String(target.to_string()));
        if let Some(perm) = permissions {
            map.insert("permissions".into(), Value::String(perm.to_string()));
        }
        *item = Value::Mapping(map);
        Ok(())
    })
}

fn canonicalize_deploy(value: &mut Value, path: &KeyPath) -> Result<()> {
    with_field(value, "labels", path, |v, p| to_string_map(v, p, ListItemWithoutValue::Empty))?;
    with_field(value, "resources", path, |resources, p| {
        for field in ["limits", "reservations"] {
            with_field(resources, field, p, |spec, p| {
                with_field(spec, "devices", p, |v, p| map_list_items(v, p, canonicalize_device_request))
            })?;
        }
        Ok(())
    })?;
    with_field(value, "placement", path, |placement, p| {
        with_field(placement, "constraints", p, |v, _| {
            string_to_list(v);
            Ok(())
        })
    })
}

/// A device request (`deploy.resources.*.devices`, `gpus`): `options` as a string map, IDs and
/// capabilities as strings (`device_ids: [0]`).
fn canonicalize_device_request(request: &mut Value, path: &KeyPath) -> Result<()> {
    for field in ["capabilities", "device_ids"] {
        with_field(request, field, path, |v, p| map_list_items(v, p, scalar_to_string))?;
    }
    with_field(request, "options", path, |v, p| to_string_map(v, p, ListItemWithoutValue::Empty))
}

fn canonicalize_hook(hook: &mut Value, path: &KeyPath) -> Result<()> {
    with_field(hook, "command", path, split_command)?;
    with_field(hook, "environment", path, |v, p| to_string_map(v, p, ListItemWithoutValue::Null))
}

/// Top-level networks/volumes/secrets/configs: `null` → `{}`; legacy `external: {name: x}` →
/// `external: true, name: x`.
fn canonicalize_resource(value: &mut Value, path: &KeyPath, warnings: &mut Vec<PathWarning>) -> Result<()> {
    if value.is_null() {
        *value = Value::Mapping(Mapping::new());
        return Ok(());
    }
    let Some(map) = value.as_mapping_mut() else {
        return Err(expected(path, "a mapping (or nothing, for the defaults)", value));
    };
    if let Some(Value::Mapping(external)) = map.get("external").cloned() {
        warnings.push(PathWarning {
            path: path.key("external"),
            message: "`external: {name: ...}` is deprecated; write `external: true` and `name: ...`".into(),
        });
        map.insert("external".into(), Value::Bool(true));
        if let Some(name) = external.get("name") {
            map.insert("name".into(), name.clone());
        }
    }
    for field in ["labels", "driver_opts"] {
        if let Some(v) = map.get_mut(field) {
            to_string_map(v, &path.key(field), ListItemWithoutValue::Empty)?;
        }
    }
    Ok(())
}

// ---- small helpers -------------------------------------------------------------------------

/// Runs `f` on `value[field]` when `value` is a mapping that has it.
fn with_field(
    value: &mut Value,
    field: &str,
    path: &KeyPath,
    f: impl FnOnce(&mut Value, &KeyPath) -> Result<()>,
) -> Result<()> {
    if let Some(v) = value.as_mapping_mut().and_then(|m| m.get_mut(field)) {
        let p = path.key(field);
        return with_tag(v, |v| f(v, &p));
    }
    Ok(())
}

/// Runs `f` on each item of a sequence (null counts as empty).
fn map_list_items(
    value: &mut Value,
    path: &KeyPath,
    mut f: impl FnMut(&mut Value, &KeyPath) -> Result<()>,
) -> Result<()> {
    match value {
        Value::Null => Ok(()),
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                f(item, &path.index(i))?;
            }
            Ok(())
        }
        other => Err(expected(path, "a list", other)),
    }
}

/// A lone string where a list is allowed: `dns: 8.8.8.8` → `[8.8.8.8]`.
fn string_to_list(value: &mut Value) {
    if value.is_string() || value.is_number() {
        *value = Value::Sequence(vec![value.clone()]);
    }
}

fn scalar_to_string(item: &mut Value, path: &KeyPath) -> Result<()> {
    let text = scalar_text(item).ok_or_else(|| expected(path, "a string", item))?;
    *item = Value::String(text);
    Ok(())
}

/// The text of a string, number or boolean scalar.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn key_text(key: &Value, path: &KeyPath) -> Result<String> {
    scalar_text(key).ok_or_else(|| {
        PathError::new(path.clone(), format!("a key must be a string, got {}", kind(key)))
            .with_hint("quote the key or use a plain name")
    })
}

/// A readable name for a YAML node's type, for "expected X, got Y" messages.
pub fn kind(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn expected(path: &KeyPath, what: &str, got: &Value) -> PathError {
    PathError::new(path.clone(), format!("expected {what}, got {}", kind(got)))
}

/// Builds a tagged value (used by tests and by the merge of `!reset`/`!override`).
pub fn tagged(tag: &str, value: Value) -> Value {
    Value::Tagged(Box::new(TaggedValue { tag: Tag::new(tag), value }))
}

#[cfg(test)]
mod tests;
