//! Merging compose documents: several `-f` files, and a service with the one it `extends`.
//!
//! The rules are the Compose Specification's "Merge and override" rules as docker compose v2
//! (compose-go's `override` package) applies them:
//!
//! - mappings merge key by key, the overlay's scalars replace the base's, and an overlay `null`
//!   keeps the base value (a key written without a value changes nothing);
//! - sequences append, except `command`, `entrypoint` and `healthcheck.test`, which replace;
//! - sequences whose entries have an identity (`ports`, `volumes`, `secrets`, `configs`,
//!   `devices`, `env_file`, `dns`, `cap_add`, ...) append, and an entry whose identity is already
//!   present replaces the earlier one in place, so the order stays that of first appearance;
//! - string maps (`environment`, `labels`, ...) merge key by key, and there an overlay `null`
//!   does replace the value (`FOO:` means "take FOO from the shell");
//! - `logging` options only merge when both sides use the same driver;
//! - `!reset` removes a key (or a sequence entry), `!override` replaces the base value wholesale.
//!
//! Inputs are canonical documents (long forms only, see `canonical.rs`); short syntax is never
//! parsed here. Results never contain `!reset`/`!override` tags.

use std::collections::HashMap;

use serde_yaml::{Mapping, Value};

use super::error::PathError;
use super::path::{KeyPath, Segment};

/// Merges `overlay` (a later `-f` file) into `base` (the merge of the earlier files).
///
/// Both are whole compose documents (a mapping, or null for an empty file). Tags left in `base`
/// are resolved first, so the first file can be passed as it was read.
pub fn merge_documents(base: Value, overlay: Value) -> Result<Value, PathError> {
    let root = At::root();
    check_document(&base, &root)?;
    check_document(&overlay, &root)?;
    let merged = merge_node(Some(stripped(base)), overlay, &root)?;
    // A `!reset` on a whole document leaves nothing; an empty document is an empty mapping.
    Ok(match merged {
        Some(Value::Null) | None => Value::Mapping(Mapping::new()),
        Some(value) => value,
    })
}

/// Merges a list of documents in order (`-f a.yml -f b.yml -f c.yml`).
pub fn merge_all(documents: impl IntoIterator<Item = Value>) -> Result<Value, PathError> {
    let mut merged = Value::Mapping(Mapping::new());
    for document in documents {
        merged = merge_documents(merged, document)?;
    }
    Ok(merged)
}

/// Merges the service `overlay` into the service it extends, `base`, with the same rules as
/// [`merge_documents`] uses for `services.<name>`. `path` is where `overlay` stands
/// (`services.web`); errors are reported below it. The `extends` key itself is kept: removing
/// it is the caller's business.
pub fn merge_service(base: &Value, overlay: &Value, path: &KeyPath) -> Result<Value, PathError> {
    let at = At::service(path.clone());
    let merged = merge_node(Some(stripped(base.clone())), overlay.clone(), &at)?;
    // `!reset` on a whole service leaves an empty definition rather than no service at all.
    Ok(merged.unwrap_or_else(|| Value::Mapping(Mapping::new())))
}

/// Resolves the `!reset` and `!override` tags of a single document: a `!reset` value disappears
/// (its key is removed, its sequence entry dropped; at the root it becomes null), `!override`
/// is unwrapped. Other tags mean nothing to compose and are unwrapped too, so the result
/// carries no tags at all.
pub fn strip_tags(value: &mut Value) {
    while let Value::Tagged(tagged) = value {
        if tagged.tag == "reset" {
            *value = Value::Null;
            return;
        }
        *value = std::mem::take(&mut tagged.value);
    }
    match value {
        Value::Mapping(map) => {
            map.retain(|_, v| !is_reset(v));
            for v in map.values_mut() {
                strip_tags(v);
            }
        }
        Value::Sequence(items) => {
            items.retain(|v| !is_reset(v));
            items.iter_mut().for_each(strip_tags);
        }
        _ => {}
    }
}

/// Collapses entries that share an identity in the identity-keyed sequences of one document
/// (the later entry replaces the earlier one in place), as compose does after loading each file.
/// [`merge_documents`] already does this for attributes present on both sides; this covers a
/// single file, or an attribute only one file has.
pub fn enforce_uniqueness(document: &mut Value) -> Result<(), PathError> {
    unify_in_place(document, &At::root())
}

// ---------------------------------------------------------------------------------------------
// Rules

/// How the values found at one attribute path combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Mappings merge key by key, sequences append, scalars replace.
    Deep,
    /// `services.<name>`: must be a mapping, then [`Rule::Deep`].
    Service,
    /// The overlay wins, even a null one (`command`, `entrypoint`, `healthcheck.test`).
    Replace,
    /// Map of string → string-or-null; an overlay null replaces the base value.
    StringMap,
    /// Map of host → addresses; addresses of one host are unioned.
    ExtraHosts,
    /// Deep, unless the two sides name different drivers: then the overlay replaces.
    Logging,
    /// Append; a later entry with an identity already present replaces the earlier one.
    Unique(Identity),
    /// Append; a later entry with an identity already present is deep-merged into it.
    Keyed(Identity),
}

/// What makes two sequence entries "the same" entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// The entry's text (`dns`, `cap_add`, `profiles`, ...).
    Text,
    /// The container path of a tmpfs entry (`/run:size=64m` → `/run`).
    TmpfsTarget,
    /// `host_ip:published:target/protocol` of a port mapping.
    Port,
    /// The required `target` of a volume or device mapping.
    Target,
    /// Secret/config reference: `target` if set, else `<dir>/<source>`.
    Mount { dir: &'static str },
    /// `path` of an `env_file` entry.
    FilePath,
    /// `subnet` of an IPAM pool; pools without one never match.
    Subnet,
}

/// Attribute paths with a rule other than [`Rule::Deep`]; `*` matches any one key.
/// Mirrors compose-go's `mergeSpecials` (override/merge.go) and `unique` (override/uncity.go)
/// tables, translated to the canonical forms (string maps instead of `KEY=VALUE` lists).
const RULES: &[(&str, Rule)] = &[
    ("services.*", Rule::Service),
    ("services.*.command", Rule::Replace),
    ("services.*.entrypoint", Rule::Replace),
    ("services.*.healthcheck.test", Rule::Replace),
    // compose-go merges each named ulimit by taking the overlay's entry as a whole.
    ("services.*.ulimits.*", Rule::Replace),
    ("services.*.logging", Rule::Logging),
    ("services.*.logging.options", Rule::StringMap),
    ("services.*.environment", Rule::StringMap),
    ("services.*.labels", Rule::StringMap),
    ("services.*.annotations", Rule::StringMap),
    ("services.*.sysctls", Rule::StringMap),
    ("services.*.build.args", Rule::StringMap),
    ("services.*.build.labels", Rule::StringMap),
    ("services.*.build.additional_contexts", Rule::StringMap),
    ("services.*.deploy.labels", Rule::StringMap),
    ("services.*.extra_hosts", Rule::ExtraHosts),
    ("services.*.build.extra_hosts", Rule::ExtraHosts),
    ("services.*.ports", Rule::Unique(Identity::Port)),
    ("services.*.volumes", Rule::Unique(Identity::Target)),
    ("services.*.devices", Rule::Unique(Identity::Target)),
    ("services.*.secrets", Rule::Unique(Identity::Mount { dir: "/run/secrets" })),
    ("services.*.configs", Rule::Unique(Identity::Mount { dir: "" })),
    ("services.*.env_file", Rule::Unique(Identity::FilePath)),
    ("services.*.tmpfs", Rule::Unique(Identity::TmpfsTarget)),
    ("services.*.dns", Rule::Unique(Identity::Text)),
    ("services.*.dns_opt", Rule::Unique(Identity::Text)),
    ("services.*.dns_search", Rule::Unique(Identity::Text)),
    ("services.*.cap_add", Rule::Unique(Identity::Text)),
    ("services.*.cap_drop", Rule::Unique(Identity::Text)),
    ("services.*.expose", Rule::Unique(Identity::Text)),
    ("services.*.links", Rule::Unique(Identity::Text)),
    ("services.*.profiles", Rule::Unique(Identity::Text)),
    ("services.*.build.tags", Rule::Unique(Identity::Text)),
    ("services.*.build.platforms", Rule::Unique(Identity::Text)),
    ("services.*.networks.*.aliases", Rule::Unique(Identity::Text)),
    ("services.*.networks.*.link_local_ips", Rule::Unique(Identity::Text)),
    ("networks.*.labels", Rule::StringMap),
    ("networks.*.driver_opts", Rule::StringMap),
    ("networks.*.ipam.options", Rule::StringMap),
    ("networks.*.ipam.config", Rule::Keyed(Identity::Subnet)),
    ("volumes.*.labels", Rule::StringMap),
    ("volumes.*.driver_opts", Rule::StringMap),
    ("secrets.*.labels", Rule::StringMap),
    ("configs.*.labels", Rule::StringMap),
];

fn rule_for(logical: &[String]) -> Rule {
    RULES.iter().find(|(pattern, _)| pattern_matches(pattern, logical)).map_or(Rule::Deep, |(_, rule)| *rule)
}

fn pattern_matches(pattern: &str, logical: &[String]) -> bool {
    // Runs for every node against every rule: compare without allocating.
    let mut parts = pattern.split('.');
    for key in logical {
        match parts.next() {
            Some(part) if part == "*" || part == key => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

/// Where a merge step stands: the key path used in errors, and the path used to look up rules
/// (the same keys, but sequence entries are `[]`, and a service merged on its own for `extends`
/// is looked up as `services.*` whatever its real path).
#[derive(Debug, Clone)]
struct At {
    path: KeyPath,
    logical: Vec<String>,
}

impl At {
    fn root() -> Self {
        At { path: KeyPath::root(), logical: Vec::new() }
    }

    fn service(path: KeyPath) -> Self {
        At { path, logical: vec!["services".to_string(), "*".to_string()] }
    }

    fn key(&self, key: &str) -> Self {
        let mut logical = self.logical.clone();
        logical.push(key.to_string());
        At { path: self.path.key(key), logical }
    }

    fn index(&self, index: usize) -> Self {
        let mut logical = self.logical.clone();
        logical.push("[]".to_string());
        At { path: self.path.index(index), logical }
    }

    /// The attribute name, for messages (the last key: `volumes` for `services.web.volumes[2]`).
    fn name(&self) -> &str {
        self.path
            .segments()
            .iter()
            .rev()
            .find_map(|segment| match segment {
                Segment::Key(key) => Some(key.as_str()),
                Segment::Index(_) => None,
            })
            .unwrap_or("document")
    }
}

// ---------------------------------------------------------------------------------------------
// The merge

/// An overlay value with its merge tag read off.
enum Incoming {
    Reset,
    Override(Value),
    Plain(Value),
}

fn classify(mut value: Value) -> Incoming {
    loop {
        match value {
            Value::Tagged(tagged) if tagged.tag == "reset" => return Incoming::Reset,
            Value::Tagged(tagged) if tagged.tag == "override" => return Incoming::Override(tagged.value),
            // Tags other than ours carry no meaning for compose: look through them.
            Value::Tagged(tagged) => value = tagged.value,
            other => return Incoming::Plain(other),
        }
    }
}

fn is_reset(value: &Value) -> bool {
    matches!(value, Value::Tagged(tagged) if tagged.tag == "reset")
}

fn stripped(mut value: Value) -> Value {
    strip_tags(&mut value);
    value
}

/// Merges one overlay value into the base value at the same place (`None`: the base has no such
/// key). Returns `None` when the key must disappear from the result.
fn merge_node(base: Option<Value>, overlay: Value, at: &At) -> Result<Option<Value>, PathError> {
    match classify(overlay) {
        Incoming::Reset => Ok(None),
        Incoming::Override(value) => Ok(Some(stripped(value))),
        Incoming::Plain(value) => match base {
            None => Ok(Some(stripped(value))),
            Some(base) => merge_by_rule(base, value, at).map(Some),
        },
    }
}

/// `base` carries no tags; `overlay` has none at its top but may have some inside.
fn merge_by_rule(base: Value, overlay: Value, at: &At) -> Result<Value, PathError> {
    let rule = rule_for(&at.logical);
    if rule == Rule::Replace {
        return Ok(stripped(overlay));
    }
    // A key written without a value in the overlay changes nothing; one without a value in the
    // base is simply set.
    if overlay.is_null() {
        return Ok(base);
    }
    if base.is_null() {
        return Ok(stripped(overlay));
    }
    match rule {
        Rule::Deep | Rule::Replace => merge_deep(base, overlay, at),
        Rule::Service => merge_service_body(base, overlay, at),
        Rule::StringMap => merge_string_map(base, overlay, at),
        Rule::ExtraHosts => merge_extra_hosts(base, overlay, at),
        Rule::Logging => merge_logging(base, overlay, at),
        Rule::Unique(identity) => merge_unique(base, overlay, identity, EntryMerge::Replace, at),
        Rule::Keyed(identity) => merge_unique(base, overlay, identity, EntryMerge::Deep, at),
    }
}

fn merge_deep(base: Value, overlay: Value, at: &At) -> Result<Value, PathError> {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => merge_mappings(base, overlay, at).map(Value::Mapping),
        (Value::Sequence(mut base), Value::Sequence(overlay)) => {
            base.extend(stripped_items(overlay));
            Ok(Value::Sequence(base))
        }
        (base, overlay) if is_container(&base) || is_container(&overlay) => Err(mismatch(&base, &overlay, at)),
        (_, overlay) => Ok(stripped(overlay)),
    }
}

fn merge_mappings(mut base: Mapping, overlay: Mapping, at: &At) -> Result<Mapping, PathError> {
    for (key, value) in overlay {
        let child = at.key(&key_text(&key, at)?);
        let existing = base.get_mut(&key).map(std::mem::take);
        match merge_node(existing, value, &child)? {
            // `insert` on a present key keeps its position: the base's key order is preserved.
            Some(merged) => {
                base.insert(key, merged);
            }
            None => {
                base.shift_remove(&key);
            }
        }
    }
    Ok(base)
}

fn merge_service_body(base: Value, overlay: Value, at: &At) -> Result<Value, PathError> {
    let (base, overlay) = both_mappings(base, overlay, at)?;
    merge_mappings(base, overlay, at).map(Value::Mapping)
}

/// Key by key; unlike [`merge_deep`], an overlay null replaces (it means "no value" /
/// "take it from the environment"), and values are never merged further.
fn merge_string_map(base: Value, overlay: Value, at: &At) -> Result<Value, PathError> {
    let (mut base, overlay) = both_mappings(base, overlay, at)?;
    for (key, value) in overlay {
        match classify(value) {
            Incoming::Reset => {
                base.shift_remove(&key);
            }
            Incoming::Override(value) | Incoming::Plain(value) => {
                base.insert(key, stripped(value));
            }
        }
    }
    Ok(Value::Mapping(base))
}

/// Host by host; a host's addresses are the base's followed by the overlay's new ones
/// (compose-go keeps every distinct host=ip pair rather than letting the overlay replace).
fn merge_extra_hosts(base: Value, overlay: Value, at: &At) -> Result<Value, PathError> {
    let (mut base, overlay) = both_mappings(base, overlay, at)?;
    for (host, value) in overlay {
        let child = at.key(&key_text(&host, at)?);
        match classify(value) {
            Incoming::Reset => {
                base.shift_remove(&host);
            }
            Incoming::Override(value) => {
                base.insert(host, stripped(value));
            }
            Incoming::Plain(value) => {
                let merged = match base.get_mut(&host).map(std::mem::take) {
                    Some(existing) => union_addresses(existing, value, &child)?,
                    None => stripped(value),
                };
                base.insert(host, merged);
            }
        }
    }
    Ok(Value::Mapping(base))
}

fn union_addresses(base: Value, overlay: Value, at: &At) -> Result<Value, PathError> {
    let mut addresses = into_items(base, at)?;
    for address in into_items(stripped(overlay), at)? {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    Ok(Value::Sequence(addresses))
}

/// Options written for one logging driver mean nothing to another, so a change of driver
/// replaces the whole block; with the same driver (or one side not naming it) it merges.
fn merge_logging(base: Value, overlay: Value, at: &At) -> Result<Value, PathError> {
    if let (Value::Mapping(b), Value::Mapping(o)) = (&base, &overlay) {
        if let (Some(base_driver), Some(overlay_driver)) = (driver(b), driver(o)) {
            if base_driver != overlay_driver {
                return Ok(stripped(overlay));
            }
        }
    }
    merge_deep(base, overlay, at)
}

fn driver(logging: &Mapping) -> Option<&Value> {
    let mut value = logging.get("driver")?;
    while let Value::Tagged(tagged) = value {
        if tagged.tag == "reset" {
            return None;
        }
        value = &tagged.value;
    }
    (!value.is_null()).then_some(value)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryMerge {
    Replace,
    Deep,
}

/// Appends the overlay's entries to the base's; an entry whose identity is already present takes
/// the earlier one's place (or is deep-merged into it), so order is that of first appearance.
/// Duplicates within one side collapse the same way, as compose-go's `EnforceUnicity` does.
fn merge_unique(
    base: Value,
    overlay: Value,
    identity: Identity,
    mode: EntryMerge,
    at: &At,
) -> Result<Value, PathError> {
    if base.is_mapping() || overlay.is_mapping() {
        return Err(if base.is_mapping() && overlay.is_mapping() {
            expected_sequence(&overlay, at)
        } else {
            mismatch(&base, &overlay, at)
        });
    }
    let mut out = UniqueList::new(identity, mode);
    for (i, entry) in into_items(base, at)?.into_iter().enumerate() {
        out.add(entry, false, &at.index(i))?;
    }
    for (i, entry) in into_items(overlay, at)?.into_iter().enumerate() {
        match classify(entry) {
            Incoming::Reset => {}
            Incoming::Override(entry) => out.add(stripped(entry), true, &at.index(i))?,
            Incoming::Plain(entry) => out.add(entry, false, &at.index(i))?,
        }
    }
    Ok(Value::Sequence(out.entries))
}

/// The entries of an identity-keyed sequence being built, with where each identity sits.
struct UniqueList {
    identity: Identity,
    mode: EntryMerge,
    entries: Vec<Value>,
    positions: HashMap<String, usize>,
}

impl UniqueList {
    fn new(identity: Identity, mode: EntryMerge) -> Self {
        UniqueList { identity, mode, entries: Vec::new(), positions: HashMap::new() }
    }

    /// `wholesale`: the entry was tagged `!override`, so it replaces even in deep mode.
    fn add(&mut self, entry: Value, wholesale: bool, at: &At) -> Result<(), PathError> {
        let clean = stripped(entry.clone());
        let Some(key) = identity_of(&clean, self.identity, at)? else {
            self.entries.push(clean);
            return Ok(());
        };
        let Some(&position) = self.positions.get(&key) else {
            self.positions.insert(key, self.entries.len());
            self.entries.push(clean);
            return Ok(());
        };
        let Some(slot) = self.entries.get_mut(position) else {
            return Ok(());
        };
        *slot = if self.mode == EntryMerge::Deep && !wholesale {
            // Merge the tagged entry so that tags inside it act on the earlier entry's keys.
            merge_deep(std::mem::take(slot), entry, at)?
        } else {
            clean
        };
        Ok(())
    }
}

/// The identity of one entry, or `None` when it has none and is simply appended.
fn identity_of(entry: &Value, identity: Identity, at: &At) -> Result<Option<String>, PathError> {
    match identity {
        Identity::Text => text_identity(entry, at).map(Some),
        Identity::TmpfsTarget => match entry {
            Value::Mapping(map) => required_field(map, "target", at).map(Some),
            _ => text_identity(entry, at).map(|t| Some(t.split(':').next().unwrap_or_default().to_string())),
        },
        Identity::Port => port_identity(entry, at).map(Some),
        Identity::Target => match entry {
            Value::Mapping(map) => required_field(map, "target", at).map(Some),
            other => Err(expected_mapping(other, at)),
        },
        Identity::Mount { dir } => mount_identity(entry, dir, at).map(Some),
        Identity::FilePath => match entry {
            Value::Mapping(map) => required_field(map, "path", at).map(Some),
            _ => text_identity(entry, at).map(Some),
        },
        Identity::Subnet => Ok(entry.as_mapping().and_then(|map| field_text(map, "subnet"))),
    }
}

fn text_identity(entry: &Value, at: &At) -> Result<String, PathError> {
    scalar_text(entry).ok_or_else(|| {
        PathError::new(at.path.clone(), format!("expected a string in `{}`, got {}", at.name(), kind(entry)))
    })
}

/// Two port entries are the same mapping when they bind the same host address, published port,
/// container port and protocol; unset host address and protocol mean `0.0.0.0` and `tcp`.
fn port_identity(entry: &Value, at: &At) -> Result<String, PathError> {
    let Value::Mapping(map) = entry else {
        return Err(expected_mapping(entry, at));
    };
    let target = required_field(map, "target", at)?;
    let host = field_text(map, "host_ip").filter(|h| !h.is_empty()).unwrap_or_else(|| "0.0.0.0".to_string());
    let published = field_text(map, "published").unwrap_or_default();
    let protocol = field_text(map, "protocol").map_or_else(|| "tcp".to_string(), |p| p.to_ascii_lowercase());
    Ok(format!("{host}:{published}:{target}/{protocol}"))
}

/// A secret or config lands at `target`, or at `<dir>/<source>` without one; a relative target
/// is also placed under `<dir>` (that is where the engine mounts it).
fn mount_identity(entry: &Value, dir: &str, at: &At) -> Result<String, PathError> {
    let under_dir = |name: &str| format!("{dir}/{name}");
    match entry {
        Value::Mapping(map) => match field_text(map, "target") {
            Some(target) if target.starts_with('/') => Ok(target),
            Some(target) => Ok(under_dir(&target)),
            None => required_field(map, "source", at).map(|source| under_dir(&source)),
        },
        other => text_identity(other, at).map(|source| under_dir(&source)),
    }
}

fn required_field(map: &Mapping, field: &str, at: &At) -> Result<String, PathError> {
    field_text(map, field).ok_or_else(|| {
        PathError::new(at.path.clone(), format!("this `{}` entry has no `{field}`", at.name()))
            .with_hint(format!("add `{field}:`; entries of `{}` are matched across files by it", at.name()))
    })
}

fn field_text(map: &Mapping, field: &str) -> Option<String> {
    map.get(field).and_then(scalar_text)
}

/// The text of a scalar (numbers and booleans too), looking through `!override`; `None` for
/// null, `!reset`, and containers.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Tagged(tagged) if tagged.tag != "reset" => scalar_text(&tagged.value),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Uniqueness within one document

fn unify_in_place(value: &mut Value, at: &At) -> Result<(), PathError> {
    // serde_yaml's `is_sequence()` looks through tags, so tags must be unwrapped first.
    if let Value::Tagged(tagged) = value {
        return unify_in_place(&mut tagged.value, at);
    }
    let keyed = match rule_for(&at.logical) {
        Rule::Unique(identity) => Some((identity, EntryMerge::Replace)),
        Rule::Keyed(identity) => Some((identity, EntryMerge::Deep)),
        _ => None,
    };
    match keyed {
        Some((identity, mode)) if value.is_sequence() => {
            let entries = std::mem::take(value);
            *value = merge_unique(entries, Value::Sequence(Vec::new()), identity, mode, at)?;
            Ok(())
        }
        _ => match value {
            Value::Mapping(map) => {
                for (key, child) in map.iter_mut() {
                    let key = key_text(key, at)?;
                    unify_in_place(child, &at.key(&key))?;
                }
                Ok(())
            }
            Value::Tagged(tagged) => unify_in_place(&mut tagged.value, at),
            _ => Ok(()),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes and errors

fn check_document(document: &Value, at: &At) -> Result<(), PathError> {
    let mut value = document;
    while let Value::Tagged(tagged) = value {
        value = &tagged.value;
    }
    if value.is_mapping() || value.is_null() {
        return Ok(());
    }
    Err(PathError::new(at.path.clone(), format!("a compose file must be a mapping, got {}", kind(value)))
        .with_hint("start the file with top-level keys such as `services:`"))
}

fn both_mappings(base: Value, overlay: Value, at: &At) -> Result<(Mapping, Mapping), PathError> {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => Ok((base, overlay)),
        (base, overlay) if base.is_mapping() || overlay.is_mapping() => Err(mismatch(&base, &overlay, at)),
        (_, overlay) => Err(expected_mapping(&overlay, at)),
    }
}

/// The items of a sequence; a lone scalar counts as a one-item sequence.
fn into_items(value: Value, at: &At) -> Result<Vec<Value>, PathError> {
    match value {
        Value::Sequence(items) => Ok(items),
        Value::Null => Ok(Vec::new()),
        Value::Mapping(_) => Err(expected_sequence(&value, at)),
        scalar => Ok(vec![scalar]),
    }
}

/// The items of an overlay sequence, `!reset` entries dropped and tags resolved.
fn stripped_items(items: Vec<Value>) -> Vec<Value> {
    items.into_iter().filter(|item| !is_reset(item)).map(stripped).collect()
}

fn key_text(key: &Value, at: &At) -> Result<String, PathError> {
    scalar_text(key).ok_or_else(|| {
        PathError::new(at.path.clone(), format!("mapping keys must be strings, got {}", kind(key)))
            .with_hint("quote the key")
    })
}

fn is_container(value: &Value) -> bool {
    value.is_mapping() || value.is_sequence()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn mismatch(base: &Value, overlay: &Value, at: &At) -> PathError {
    PathError::new(
        at.path.clone(),
        format!("cannot merge {} into {} (the value it overrides)", kind(overlay), kind(base)),
    )
    .with_hint(format!(
        "write `{}` in the same form in both places, or tag the new value with `!override` to replace the old one",
        at.name()
    ))
}

fn expected_mapping(got: &Value, at: &At) -> PathError {
    PathError::new(at.path.clone(), format!("expected a mapping in `{}`, got {}", at.name(), kind(got)))
}

fn expected_sequence(got: &Value, at: &At) -> PathError {
    PathError::new(at.path.clone(), format!("expected a list in `{}`, got {}", at.name(), kind(got)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    fn merged(base: &str, overlay: &str) -> Value {
        merge_documents(yaml(base), yaml(overlay)).unwrap()
    }

    /// Compares as YAML text, so that key order counts (`Mapping` equality ignores it).
    fn assert_yaml(actual: &Value, expected: &str) {
        let expected = serde_yaml::to_string(&yaml(expected)).unwrap();
        let actual = serde_yaml::to_string(actual).unwrap();
        assert_eq!(actual, expected, "\nactual:\n{actual}\nexpected:\n{expected}");
    }

    fn assert_merge(base: &str, overlay: &str, expected: &str) {
        assert_yaml(&merged(base, overlay), expected);
    }

    fn merge_error(base: &str, overlay: &str) -> PathError {
        merge_documents(yaml(base), yaml(overlay)).unwrap_err()
    }

    // --- the spec's examples -------------------------------------------------------------------

    #[test]
    fn mappings_add_missing_entries_and_replace_conflicting_scalars() {
        assert_merge(
            "services: {foo: {key1: value1, key2: value2}}",
            "services: {foo: {key2: VALUE, key3: value3}}",
            "services: {foo: {key1: value1, key2: VALUE, key3: value3}}",
        );
    }

    #[test]
    fn sequences_append() {
        assert_merge(
            "services: {foo: {DNS: [1.1.1.1]}}",
            "services: {foo: {DNS: [8.8.8.8]}}",
            "services: {foo: {DNS: [1.1.1.1, 8.8.8.8]}}",
        );
    }

    #[test]
    fn shell_commands_replace() {
        assert_merge(
            r#"
services:
  foo:
    command: [echo, foo]
    entrypoint: [/bin/sh, -c]
    healthcheck: {test: [CMD, a], interval: 10s}
"#,
            r#"
services:
  foo:
    command: [echo, bar]
    entrypoint: [/entry]
    healthcheck: {test: [CMD-SHELL, b], retries: 3}
"#,
            r#"
services:
  foo:
    command: [echo, bar]
    entrypoint: [/entry]
    healthcheck: {test: [CMD-SHELL, b], interval: 10s, retries: 3}
"#,
        );
    }

    #[test]
    fn volumes_with_the_same_target_replace_in_place() {
        assert_merge(
            r#"
services:
  foo:
    volumes:
      - {type: volume, source: foo, target: /work}
      - {type: bind, source: ./b, target: /b, read_only: true}
"#,
            r#"
services:
  foo:
    volumes:
      - {type: volume, source: bar, target: /work}
      - {type: volume, source: c, target: /c}
"#,
            r#"
services:
  foo:
    volumes:
      - {type: volume, source: bar, target: /work}
      - {type: bind, source: ./b, target: /b, read_only: true}
      - {type: volume, source: c, target: /c}
"#,
        );
    }

    #[test]
    fn reset_removes_values() {
        assert_merge(
            r#"
services:
  app:
    image: myapp
    ports: [{target: 80, published: "8080", protocol: tcp}]
    environment: {FOO: BAR}
"#,
            r#"
services:
  app:
    image: myapp
    ports: !reset []
    environment:
      FOO: !reset null
"#,
            "services: {app: {image: myapp, environment: {}}}",
        );
    }

    #[test]
    fn override_replaces_values() {
        assert_merge(
            r#"
services:
  app:
    image: myapp
    ports: [{target: 80, published: "8080", protocol: tcp}]
"#,
            r#"
services:
  app:
    ports: !override
      - {target: 443, published: "8443", protocol: tcp}
"#,
            r#"
services:
  app:
    image: myapp
    ports: [{target: 443, published: "8443", protocol: tcp}]
"#,
        );
    }

    // --- plain values ----------------------------------------------------------------------------

    #[test]
    fn scalars_replace_whatever_their_type() {
        assert_merge(
            "services: {test: {mem_limit: 256m, scale: 1}}",
            "services: {test: {mem_limit: 1, scale: 2}}",
            "services: {test: {mem_limit: 1, scale: 2}}",
        );
    }

    #[test]
    fn an_overlay_null_keeps_the_base_value() {
        assert_merge(
            "services: {web: {image: nginx, networks: {front: {aliases: [a]}}}}",
            "services: {web: {image: null, networks: {front: null}}, db: null}",
            "services: {web: {image: nginx, networks: {front: {aliases: [a]}}}, db: null}",
        );
    }

    #[test]
    fn a_null_base_takes_the_overlay() {
        assert_merge(
            "services: {web: {networks: {front: null}}}",
            "services: {web: {networks: {front: {aliases: [a]}}}}",
            "services: {web: {networks: {front: {aliases: [a]}}}}",
        );
    }

    #[test]
    fn an_empty_document_changes_nothing() {
        assert_merge("services: {web: {image: a}}", "", "services: {web: {image: a}}");
        assert_merge("", "services: {web: {image: a}}", "services: {web: {image: a}}");
    }

    #[test]
    fn top_level_sections_merge_by_name() {
        assert_merge(
            r#"
name: one
services: {web: {image: a}}
networks: {front: {driver: bridge}}
volumes: {data: {driver: local}}
secrets: {token: {file: ./token}}
configs: {conf: {file: ./a.conf}}
"#,
            r#"
name: two
services: {db: {image: b}}
networks: {front: {internal: true}, back: {}}
volumes: {data: {labels: {a: b}}}
secrets: {key: {environment: KEY}}
configs: {conf: {file: ./b.conf}}
"#,
            r#"
name: two
services: {web: {image: a}, db: {image: b}}
networks: {front: {driver: bridge, internal: true}, back: {}}
volumes: {data: {driver: local, labels: {a: b}}}
secrets: {token: {file: ./token}, key: {environment: KEY}}
configs: {conf: {file: ./b.conf}}
"#,
        );
    }

    // --- string maps -----------------------------------------------------------------------------

    #[test]
    fn string_maps_merge_by_key_and_a_null_replaces() {
        assert_merge(
            r#"
services:
  web:
    environment: {A: "1", B: "2", C: "3"}
    labels: {com.example.a: x}
    annotations: {a: x}
    sysctls: {net.core.somaxconn: "1024"}
"#,
            r#"
services:
  web:
    environment: {B: "20", C: null, D: "4"}
    labels: {com.example.b: y}
    annotations: {a: y}
    sysctls: {net.ipv4.tcp_syncookies: "0"}
"#,
            r#"
services:
  web:
    environment: {A: "1", B: "20", C: null, D: "4"}
    labels: {com.example.a: x, com.example.b: y}
    annotations: {a: y}
    sysctls: {net.core.somaxconn: "1024", net.ipv4.tcp_syncookies: "0"}
"#,
        );
    }

    #[test]
    fn build_merges_as_a_mapping_with_string_maps_and_unique_lists() {
        assert_merge(
            r#"
services:
  test:
    build:
      context: .
      dockerfile: a.Dockerfile
      args: {FOO: BAR}
      additional_contexts: {resources: /path/to/resources, app: "docker-image://my-app:latest"}
      tags: ["myimage:mytag"]
      platforms: [linux/amd64]
      cache_from: [a]
      extra_hosts: {somehost: [162.242.195.82], otherhost: [50.31.209.229]}
"#,
            r#"
services:
  test:
    build:
      dockerfile: b.Dockerfile
      args: {GIT_COMMIT: cdc3b19, EMPTY: "", NIL: null}
      additional_contexts: {app: "docker-image://new-app:latest"}
      tags: ["myimage:mytag", "registry/username/myrepos:my-other-tag"]
      platforms: [linux/arm64, linux/amd64]
      cache_from: [a]
      extra_hosts: {otherhost: [50.31.209.230], myhostv6: ["::1"]}
"#,
            r#"
services:
  test:
    build:
      context: .
      dockerfile: b.Dockerfile
      args: {FOO: BAR, GIT_COMMIT: cdc3b19, EMPTY: "", NIL: null}
      additional_contexts: {resources: /path/to/resources, app: "docker-image://new-app:latest"}
      tags: ["myimage:mytag", "registry/username/myrepos:my-other-tag"]
      platforms: [linux/amd64, linux/arm64]
      cache_from: [a, a]
      extra_hosts:
        somehost: [162.242.195.82]
        otherhost: [50.31.209.229, 50.31.209.230]
        myhostv6: ["::1"]
"#,
        );
    }

    #[test]
    fn extra_hosts_union_the_addresses_of_a_host() {
        assert_merge(
            "services: {test: {extra_hosts: {example.com: [1.2.3.4]}}}",
            "services: {test: {extra_hosts: {localhost: [127.0.0.1], example.com: [1.2.3.4, 4.3.2.1]}}}",
            "services: {test: {extra_hosts: {example.com: [1.2.3.4, 4.3.2.1], localhost: [127.0.0.1]}}}",
        );
    }

    #[test]
    fn extra_hosts_can_be_overridden_per_host() {
        assert_merge(
            "services: {test: {extra_hosts: {a: [1.1.1.1], b: [2.2.2.2]}}}",
            "services: {test: {extra_hosts: {a: !override [9.9.9.9], b: !reset []}}}",
            "services: {test: {extra_hosts: {a: [9.9.9.9]}}}",
        );
    }

    #[test]
    fn deploy_labels_and_top_level_labels_are_string_maps() {
        assert_merge(
            r#"
services: {web: {deploy: {labels: {a: "1"}, replicas: 1}}}
networks: {n: {labels: {x: "1"}, driver_opts: {mtu: "1400"}, ipam: {options: {foo: bar}}}}
volumes: {v: {labels: {y: "1"}, driver_opts: {type: nfs}}}
"#,
            r#"
services: {web: {deploy: {labels: {a: null, b: "2"}, replicas: 2}}}
networks: {n: {labels: {x: "2"}, driver_opts: {mtu: null}, ipam: {options: {bar: foo}}}}
volumes: {v: {labels: {z: "2"}, driver_opts: {o: "addr=1.2.3.4"}}}
"#,
            r#"
services: {web: {deploy: {labels: {a: null, b: "2"}, replicas: 2}}}
networks: {n: {labels: {x: "2"}, driver_opts: {mtu: null}, ipam: {options: {foo: bar, bar: foo}}}}
volumes: {v: {labels: {y: "1", z: "2"}, driver_opts: {type: nfs, o: "addr=1.2.3.4"}}}
"#,
        );
    }

    // --- logging, ulimits, depends_on, networks --------------------------------------------------

    #[test]
    fn logging_with_the_same_driver_merges_options() {
        assert_merge(
            r#"
services:
  test:
    logging: {driver: syslog, options: {syslog-address: "tcp://192.168.0.42:123", tag: web}}
"#,
            r#"
services:
  test:
    logging: {driver: syslog, options: {syslog-address: "tcp://127.0.0.1:123"}}
"#,
            r#"
services:
  test:
    logging: {driver: syslog, options: {syslog-address: "tcp://127.0.0.1:123", tag: web}}
"#,
        );
    }

    #[test]
    fn logging_with_another_driver_replaces_the_options() {
        assert_merge(
            "services: {test: {logging: {driver: local, options: {max-size: 10m}}}}",
            r#"services: {test: {logging: {driver: syslog, options: {syslog-address: "tcp://127.0.0.1:123"}}}}"#,
            r#"services: {test: {logging: {driver: syslog, options: {syslog-address: "tcp://127.0.0.1:123"}}}}"#,
        );
    }

    #[test]
    fn logging_without_a_driver_on_one_side_merges() {
        assert_merge(
            "services: {test: {logging: {options: {max-size: 10m}}}}",
            r#"services: {test: {logging: {options: {max-file: "3"}}}}"#,
            r#"services: {test: {logging: {options: {max-size: 10m, max-file: "3"}}}}"#,
        );
        assert_merge(
            "services: {test: {logging: {driver: local, options: {max-size: 10m}}}}",
            r#"services: {test: {logging: {options: {max-file: "3"}}}}"#,
            r#"services: {test: {logging: {driver: local, options: {max-size: 10m, max-file: "3"}}}}"#,
        );
    }

    #[test]
    fn each_ulimit_is_replaced_as_a_whole() {
        assert_merge(
            r#"
services:
  test:
    ulimits:
      nofile: {soft: 20000, hard: 40000}
      nproc: {soft: 65535, hard: 65535}
      memlock: {soft: -1, hard: -1}
"#,
            r#"
services:
  test:
    ulimits:
      nofile: {soft: 10000, hard: 40000}
      nproc: {soft: 1024}
"#,
            r#"
services:
  test:
    ulimits:
      nofile: {soft: 10000, hard: 40000}
      nproc: {soft: 1024}
      memlock: {soft: -1, hard: -1}
"#,
        );
    }

    #[test]
    fn depends_on_merges_per_dependency() {
        assert_merge(
            r#"
services:
  web:
    depends_on:
      db: {condition: service_started, required: true}
      cache: {condition: service_started, required: true}
"#,
            r#"
services:
  web:
    depends_on:
      db: {condition: service_healthy, restart: true}
      queue: {condition: service_started, required: false}
"#,
            r#"
services:
  web:
    depends_on:
      db: {condition: service_healthy, required: true, restart: true}
      cache: {condition: service_started, required: true}
      queue: {condition: service_started, required: false}
"#,
        );
    }

    #[test]
    fn service_networks_merge_and_dedupe_aliases() {
        assert_merge(
            r#"
services:
  test:
    networks:
      network1:
        aliases: [alias1, alias2]
        link_local_ips: [57.123.22.11, 57.123.22.13]
      network2:
        aliases: [alias1, alias3]
"#,
            r#"
services:
  test:
    networks:
      network1:
        aliases: [alias3, alias1]
        link_local_ips: [57.123.22.12, 57.123.22.13]
      network3: null
"#,
            r#"
services:
  test:
    networks:
      network1:
        aliases: [alias1, alias2, alias3]
        link_local_ips: [57.123.22.11, 57.123.22.13, 57.123.22.12]
      network2:
        aliases: [alias1, alias3]
      network3: null
"#,
        );
    }

    #[test]
    fn ipam_pools_merge_by_subnet() {
        assert_merge(
            r#"
networks:
  network1:
    ipam:
      config:
        - subnet: 172.28.0.0/16
          ip_range: 172.28.5.0/24
          gateway: 172.28.5.254
          aux_addresses: {host1: 172.28.1.5, host2: 172.28.1.6, host3: 172.28.1.7}
        - ip_range: 10.0.0.0/24
"#,
            r#"
networks:
  network1:
    ipam:
      config:
        - subnet: 172.28.0.0/16
          ip_range: 172.28.5.1/24
          aux_addresses: {host2: 172.28.1.4, host4: 172.28.1.10}
        - subnet: 172.28.10.0/16
          gateway: 172.28.10.254
        - ip_range: 10.0.1.0/24
"#,
            r#"
networks:
  network1:
    ipam:
      config:
        - subnet: 172.28.0.0/16
          ip_range: 172.28.5.1/24
          gateway: 172.28.5.254
          aux_addresses: {host1: 172.28.1.5, host2: 172.28.1.4, host3: 172.28.1.7, host4: 172.28.1.10}
        - ip_range: 10.0.0.0/24
        - subnet: 172.28.10.0/16
          gateway: 172.28.10.254
        - ip_range: 10.0.1.0/24
"#,
        );
    }

    #[test]
    fn an_overridden_ipam_pool_is_not_merged() {
        assert_merge(
            "networks: {n: {ipam: {config: [{subnet: 10.0.0.0/8, gateway: 10.0.0.1, ip_range: 10.1.0.0/16}]}}}",
            "networks: {n: {ipam: {config: [!override {subnet: 10.0.0.0/8, gateway: 10.0.0.254}]}}}",
            "networks: {n: {ipam: {config: [{subnet: 10.0.0.0/8, gateway: 10.0.0.254}]}}}",
        );
        assert_merge(
            "networks: {n: {ipam: {config: [{subnet: 10.0.0.0/8, gateway: 10.0.0.1, ip_range: 10.1.0.0/16}]}}}",
            "networks: {n: {ipam: {config: [{subnet: 10.0.0.0/8, ip_range: !reset null}]}}}",
            "networks: {n: {ipam: {config: [{subnet: 10.0.0.0/8, gateway: 10.0.0.1}]}}}",
        );
    }

    // --- identity-keyed sequences ----------------------------------------------------------------

    #[test]
    fn ports_are_identified_by_host_ip_target_published_and_protocol() {
        assert_merge(
            r#"
services:
  web:
    ports:
      - {target: 80, published: "8080", protocol: tcp, mode: ingress}
      - {target: 53, published: "53", protocol: udp}
      - {target: 443, published: "8443", host_ip: 127.0.0.1}
"#,
            r#"
services:
  web:
    ports:
      - {target: 80, published: 8080, host_ip: 0.0.0.0, protocol: tcp, mode: host, name: http}
      - {target: 53, published: "53", protocol: tcp}
      - {target: 443, published: "8443", host_ip: 10.0.0.1}
"#,
            r#"
services:
  web:
    ports:
      - {target: 80, published: 8080, host_ip: 0.0.0.0, protocol: tcp, mode: host, name: http}
      - {target: 53, published: "53", protocol: udp}
      - {target: 443, published: "8443", host_ip: 127.0.0.1}
      - {target: 53, published: "53", protocol: tcp}
      - {target: 443, published: "8443", host_ip: 10.0.0.1}
"#,
        );
    }

    #[test]
    fn ports_without_published_port_share_an_identity() {
        assert_merge(
            "services: {web: {ports: [{target: 80, protocol: tcp}]}}",
            "services: {web: {ports: [{target: 80, app_protocol: http}]}}",
            "services: {web: {ports: [{target: 80, app_protocol: http}]}}",
        );
    }

    #[test]
    fn secrets_are_identified_by_their_mount_path() {
        assert_merge(
            r#"
services:
  test:
    secrets: [{source: foo}, {source: bar}, {source: zot}]
"#,
            r#"
services:
  test:
    secrets:
      - {source: zot, target: /run/secrets/foo}
      - {source: qix, target: bar}
"#,
            r#"
services:
  test:
    secrets:
      - {source: zot, target: /run/secrets/foo}
      - {source: qix, target: bar}
      - {source: zot}
"#,
        );
    }

    #[test]
    fn configs_default_to_a_path_under_the_root() {
        assert_merge(
            "services: {test: {configs: [{source: app}, {source: other, target: /etc/other}]}}",
            "services: {test: {configs: [{source: app2, target: /app}, {source: x, target: /etc/x, mode: 0440}]}}",
            r#"
services:
  test:
    configs:
      - {source: app2, target: /app}
      - {source: other, target: /etc/other}
      - {source: x, target: /etc/x, mode: 0440}
"#,
        );
    }

    #[test]
    fn devices_are_identified_by_target() {
        assert_merge(
            r#"
services:
  test:
    devices:
      - {source: /dev/sda, target: /dev/sda, permissions: rwm}
      - {source: /dev/sdb, target: /dev/sdb, permissions: rwm}
      - {source: /dev/sdd, target: /dev/sdd, permissions: rwm}
"#,
            r#"
services:
  test:
    devices:
      - {source: /dev/nvme0n1p1, target: /dev/sda, permissions: r}
      - {source: /dev/sde, target: /dev/sde, permissions: rwm}
      - {source: /dev/nvme1n1p1, target: /dev/sdb, permissions: rwm}
"#,
            r#"
services:
  test:
    devices:
      - {source: /dev/nvme0n1p1, target: /dev/sda, permissions: r}
      - {source: /dev/nvme1n1p1, target: /dev/sdb, permissions: rwm}
      - {source: /dev/sdd, target: /dev/sdd, permissions: rwm}
      - {source: /dev/sde, target: /dev/sde, permissions: rwm}
"#,
        );
    }

    #[test]
    fn env_files_are_identified_by_path() {
        assert_merge(
            "services: {test: {env_file: [{path: bar.env, required: true}, {path: foo.env, required: true}]}}",
            "services: {test: {env_file: [{path: foo.env, required: false}, {path: baz.env, required: true}]}}",
            r#"
services:
  test:
    env_file:
      - {path: bar.env, required: true}
      - {path: foo.env, required: false}
      - {path: baz.env, required: true}
"#,
        );
    }

    #[test]
    fn tmpfs_is_identified_by_its_container_path() {
        assert_merge(
            "services: {test: {tmpfs: [/run, /tmp:size=64m]}}",
            "services: {test: {tmpfs: [/tmp:size=128m, /cache]}}",
            "services: {test: {tmpfs: [/run, /tmp:size=128m, /cache]}}",
        );
    }

    #[test]
    fn text_lists_that_compose_dedupes() {
        assert_merge(
            r#"
services:
  test:
    dns: [1.1.1.1, 8.8.8.8]
    dns_search: [example.com]
    dns_opt: [use-vc]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    expose: ["80", "443"]
    links: [db, "cache:redis"]
    profiles: [debug]
"#,
            r#"
services:
  test:
    dns: [8.8.8.8, 9.9.9.9]
    dns_search: [example.com, example.org]
    dns_opt: [use-vc, "ndots:2"]
    cap_add: [NET_ADMIN, SYS_ADMIN]
    cap_drop: [ALL]
    expose: [80, 8080]
    links: ["cache:redis", queue]
    profiles: [debug, test]
"#,
            r#"
services:
  test:
    dns: [1.1.1.1, 8.8.8.8, 9.9.9.9]
    dns_search: [example.com, example.org]
    dns_opt: [use-vc, "ndots:2"]
    cap_add: [NET_ADMIN, SYS_ADMIN]
    cap_drop: [ALL]
    expose: [80, "443", 8080]
    links: [db, "cache:redis", queue]
    profiles: [debug, test]
"#,
        );
    }

    #[test]
    fn lists_compose_only_appends() {
        assert_merge(
            r#"
services:
  test:
    security_opt: ["label:role:ROLE"]
    external_links: [redis]
    group_add: [mail]
    volumes_from: [other]
    device_cgroup_rules: ["c 1:3 mr"]
"#,
            r#"
services:
  test:
    security_opt: ["label:user:USER", "label:role:ROLE"]
    external_links: [redis]
    group_add: [mail]
    volumes_from: [other]
    device_cgroup_rules: ["c 1:3 mr"]
"#,
            r#"
services:
  test:
    security_opt: ["label:role:ROLE", "label:user:USER", "label:role:ROLE"]
    external_links: [redis, redis]
    group_add: [mail, mail]
    volumes_from: [other, other]
    device_cgroup_rules: ["c 1:3 mr", "c 1:3 mr"]
"#,
        );
    }

    #[test]
    fn a_lone_string_counts_as_a_one_item_list() {
        assert_merge(
            "services: {test: {dns: 1.1.1.1}}",
            "services: {test: {dns: [8.8.8.8, 1.1.1.1]}}",
            "services: {test: {dns: [1.1.1.1, 8.8.8.8]}}",
        );
    }

    #[test]
    fn duplicates_within_the_base_collapse_when_merged() {
        assert_merge(
            "services: {web: {ports: [{target: 80, published: '80'}, {target: 80, published: '80', mode: host}]}}",
            "services: {web: {ports: []}}",
            "services: {web: {ports: [{target: 80, published: '80', mode: host}]}}",
        );
    }

    #[test]
    fn enforce_uniqueness_collapses_duplicates_in_one_document() {
        let mut doc = yaml(
            r#"
services:
  web:
    volumes: [{type: volume, source: a, target: /data}, {type: volume, source: b, target: /data}]
    cap_add: [NET_ADMIN, NET_ADMIN]
    security_opt: [a, a]
    environment: {A: "1"}
"#,
        );
        enforce_uniqueness(&mut doc).unwrap();
        assert_yaml(
            &doc,
            r#"
services:
  web:
    volumes: [{type: volume, source: b, target: /data}]
    cap_add: [NET_ADMIN]
    security_opt: [a, a]
    environment: {A: "1"}
"#,
        );
    }

    // --- !reset and !override at several depths --------------------------------------------------

    #[test]
    fn reset_removes_a_whole_service_network_or_attribute() {
        assert_merge(
            r#"
services:
  foo: {build: {context: ., dockerfile: foo.Dockerfile}, environment: {FOO: BAR}}
  bar: {image: bar}
networks:
  test: {name: test, external: true}
"#,
            r#"
services:
  foo:
    image: foo
    build: !reset null
    environment:
      FOO: !reset
  bar: !reset {}
networks:
  test: !reset {}
"#,
            "services: {foo: {environment: {}, image: foo}}\nnetworks: {}",
        );
    }

    #[test]
    fn override_replaces_a_network_wholesale() {
        assert_merge(
            "networks: {test: {name: test, external: true}}",
            "networks: {test: !override {}}",
            "networks: {test: {}}",
        );
    }

    #[test]
    fn reset_and_override_deep_inside_a_service() {
        assert_merge(
            r#"
services:
  web:
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 512M}
        reservations: {memory: 128M}
    healthcheck: {test: [CMD, a], interval: 10s, timeout: 5s}
    environment: {A: "1", B: "2"}
"#,
            r#"
services:
  web:
    deploy:
      resources:
        limits: {memory: !reset null, pids: 100}
        reservations: !override {cpus: "0.1"}
    healthcheck: {interval: !reset null}
    environment: !override {C: "3"}
"#,
            r#"
services:
  web:
    deploy:
      resources:
        limits: {cpus: "0.5", pids: 100}
        reservations: {cpus: "0.1"}
    healthcheck: {test: [CMD, a], timeout: 5s}
    environment: {C: "3"}
"#,
        );
    }

    #[test]
    fn reset_of_a_key_the_base_lacks_leaves_it_absent() {
        assert_merge(
            "services: {web: {image: a}}",
            "services: {web: {ports: !reset [], command: !reset null}, db: {image: !reset x, user: root}}",
            "services: {web: {image: a}, db: {user: root}}",
        );
    }

    #[test]
    fn tags_inside_new_values_are_resolved() {
        assert_merge(
            "services: {web: {image: a}}",
            r#"
services:
  web:
    environment: {A: !override "1", B: !reset "2"}
    volumes: [!reset {type: volume, target: /x}, !override {type: volume, source: v, target: /y}]
  db:
    image: !override postgres
    labels: !reset {}
"#,
            r#"
services:
  web:
    image: a
    environment: {A: "1"}
    volumes: [{type: volume, source: v, target: /y}]
  db:
    image: postgres
"#,
        );
    }

    #[test]
    fn tags_in_the_base_document_are_resolved() {
        assert_merge(
            "services: {web: {image: !override a, command: !reset [x], ports: !reset []}}",
            "services: {web: {user: root}}",
            "services: {web: {image: a, user: root}}",
        );
    }

    #[test]
    fn override_of_a_list_drops_the_base_entries_but_keeps_its_own() {
        assert_merge(
            "services: {web: {dns: [1.1.1.1], volumes: [{type: volume, source: a, target: /a}]}}",
            "services: {web: {dns: !override [8.8.8.8, 8.8.4.4], volumes: !override []}}",
            "services: {web: {dns: [8.8.8.8, 8.8.4.4], volumes: []}}",
        );
    }

    #[test]
    fn reset_entries_of_an_overlay_list_are_dropped() {
        assert_merge(
            "services: {web: {security_opt: [a], cap_add: [X]}}",
            "services: {web: {security_opt: [!reset b, c], cap_add: [!reset X, Y]}}",
            "services: {web: {security_opt: [a, c], cap_add: [X, Y]}}",
        );
    }

    #[test]
    fn a_logging_driver_reset_merges_with_the_base_options() {
        assert_merge(
            "services: {web: {logging: {driver: local, options: {max-size: 1m}}}}",
            "services: {web: {logging: {driver: !reset null, options: {max-file: '2'}}}}",
            "services: {web: {logging: {options: {max-size: 1m, max-file: '2'}}}}",
        );
    }

    // --- several files, order --------------------------------------------------------------------

    #[test]
    fn three_files_merge_in_order() {
        let base = yaml(
            r#"
services:
  web:
    image: web:1
    environment: {A: "1", B: "2"}
    ports: [{target: 80, published: "8080", protocol: tcp}]
    command: [serve]
"#,
        );
        let dev = yaml(
            r#"
services:
  web:
    environment: {B: "dev"}
    ports: !reset []
    volumes: [{type: bind, source: ., target: /src}]
"#,
        );
        let local = yaml(
            r#"
services:
  web:
    image: web:local
    environment: {C: "3"}
    ports: [{target: 80, published: "9090", protocol: tcp}]
    command: [serve, --reload]
"#,
        );
        let all = merge_all([base, dev, local]).unwrap();
        assert_yaml(
            &all,
            r#"
services:
  web:
    image: web:local
    environment: {A: "1", B: dev, C: "3"}
    command: [serve, --reload]
    volumes: [{type: bind, source: ., target: /src}]
    ports: [{target: 80, published: "9090", protocol: tcp}]
"#,
        );
    }

    #[test]
    fn merging_is_associative_for_plain_documents() {
        let a = yaml("services: {web: {image: a, dns: [1.1.1.1], environment: {A: '1'}}}");
        let b = yaml("services: {web: {dns: [2.2.2.2], environment: {B: '2'}}, db: {image: d}}");
        let c = yaml("services: {web: {dns: [1.1.1.1, 3.3.3.3], environment: {A: '3'}}}");
        let left = merge_documents(merge_documents(a.clone(), b.clone()).unwrap(), c.clone()).unwrap();
        let right = merge_documents(a, merge_documents(b, c).unwrap()).unwrap();
        assert_eq!(serde_yaml::to_string(&left).unwrap(), serde_yaml::to_string(&right).unwrap());
    }

    #[test]
    fn key_order_is_the_base_order_then_new_keys_in_overlay_order() {
        let result = merged(
            "services: {z: {image: z, user: u, init: true}, a: {image: a}}",
            "services: {m: {image: m}, a: {user: r}, b: {image: b}, z: {hostname: h, image: zz}}",
        );
        assert_yaml(
            &result,
            r#"
services:
  z: {image: zz, user: u, init: true, hostname: h}
  a: {image: a, user: r}
  m: {image: m}
  b: {image: b}
"#,
        );
    }

    #[test]
    fn removing_a_key_keeps_the_order_of_the_others() {
        assert_merge(
            "services: {web: {a: 1, b: 2, c: 3, d: 4}}",
            "services: {web: {b: !reset null}}",
            "services: {web: {a: 1, c: 3, d: 4}}",
        );
    }

    // --- type mismatches and bad entries ---------------------------------------------------------

    #[test]
    fn a_mapping_against_a_list_is_an_error_with_its_path() {
        let error = merge_error("services: {web: {environment: {A: '1'}}}", "services: {web: {environment: [A=1]}}");
        assert_eq!(error.path.to_string(), "services.web.environment");
        assert!(error.message.contains("cannot merge a list into a mapping"), "{error}");
        assert!(error.hint.as_deref().unwrap_or_default().contains("!override"), "{error}");

        let error = merge_error(
            "services: {web: {volumes: [{type: volume, target: /a}]}}",
            "services: {web: {volumes: {a: /a}}}",
        );
        assert_eq!(error.path.to_string(), "services.web.volumes");

        let error = merge_error("services: {web: {deploy: {resources: {}}}}", "services: {web: {deploy: [x]}}");
        assert_eq!(error.path.to_string(), "services.web.deploy");
    }

    #[test]
    fn a_container_against_a_scalar_is_an_error() {
        let error = merge_error("services: {web: {build: {context: .}}}", "services: {web: {build: ./app}}");
        assert_eq!(error.path.to_string(), "services.web.build");
        assert!(error.message.contains("a string into a mapping"), "{error}");

        let error = merge_error("services: {web: {image: nginx}}", "services: {web: {image: [nginx]}}");
        assert_eq!(error.path.to_string(), "services.web.image");

        let error = merge_error("services: {web: {image: a}}", "services: {web: web}");
        assert_eq!(error.path.to_string(), "services.web");
        let error = merge_error("services: {web: {image: a}}", "services: [web]");
        assert_eq!(error.path.to_string(), "services");
    }

    #[test]
    fn override_resolves_a_type_change() {
        assert_merge(
            "services: {web: {environment: {A: '1'}}}",
            "services: {web: {environment: !override [A=1]}}",
            "services: {web: {environment: [A=1]}}",
        );
    }

    #[test]
    fn entries_without_their_identity_are_errors() {
        let error = merge_error(
            "services: {web: {volumes: [{type: volume, target: /a}]}}",
            "services: {web: {volumes: [{type: volume, target: /b}, {type: volume, source: x}]}}",
        );
        assert_eq!(error.path.to_string(), "services.web.volumes[1]");
        assert!(error.message.contains("no `target`"), "{error}");
        assert!(error.hint.is_some());

        let error =
            merge_error("services: {web: {ports: [{target: 80}]}}", "services: {web: {ports: [{published: '80'}]}}");
        assert_eq!(error.path.to_string(), "services.web.ports[0]");

        let error = merge_error("services: {web: {ports: [{target: 80}]}}", "services: {web: {ports: ['80:80']}}");
        assert!(error.message.contains("expected a mapping"), "{error}");

        let error = merge_error("services: {web: {cap_add: [A]}}", "services: {web: {cap_add: [{a: b}]}}");
        assert_eq!(error.path.to_string(), "services.web.cap_add[0]");
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_an_error() {
        let error = merge_error("services: {}", "- a\n- b");
        assert!(error.path.is_root());
        assert!(error.message.contains("must be a mapping"), "{error}");
        assert!(merge_documents(yaml("hello"), yaml("services: {}")).is_err());
    }

    // --- extends ---------------------------------------------------------------------------------

    #[test]
    fn merge_service_applies_the_same_rules() {
        let common = yaml(
            r#"
image: busybox
environment: {TZ: utc, PORT: "80"}
volumes: [{type: volume, source: common-volume, target: /var/lib/backup/data}]
security_opt: ["label:role:ROLE"]
command: [a]
"#,
        );
        let cli = yaml(
            r#"
extends: {service: common}
environment: {PORT: "8080"}
volumes: [{type: volume, source: cli-volume, target: /var/lib/backup/data, read_only: true}]
security_opt: ["label:user:USER"]
command: [b]
"#,
        );
        let result = merge_service(&common, &cli, &KeyPath::parse("services.cli")).unwrap();
        assert_yaml(
            &result,
            r#"
image: busybox
environment: {TZ: utc, PORT: "8080"}
volumes: [{type: volume, source: cli-volume, target: /var/lib/backup/data, read_only: true}]
security_opt: ["label:role:ROLE", "label:user:USER"]
command: [b]
extends: {service: common}
"#,
        );
    }

    #[test]
    fn merge_service_honours_tags_and_reports_paths_below_the_service() {
        let base = yaml("{image: a, ports: [{target: 80}], user: root}");
        let overlay = yaml("{ports: !reset [], user: !override nobody}");
        let result = merge_service(&base, &overlay, &KeyPath::parse("services.cli")).unwrap();
        assert_yaml(&result, "{image: a, user: nobody}");

        let error = merge_service(&base, &yaml("{ports: {a: b}}"), &KeyPath::parse("services.cli")).unwrap_err();
        assert_eq!(error.path.to_string(), "services.cli.ports");

        let error = merge_service(&yaml("[a]"), &yaml("{image: b}"), &KeyPath::parse("services.cli")).unwrap_err();
        assert_eq!(error.path.to_string(), "services.cli");
    }

    #[test]
    fn merge_service_uses_service_rules_whatever_the_path() {
        // The rules are looked up as `services.*` even when the caller reports elsewhere.
        let result =
            merge_service(&yaml("{command: [a, b]}"), &yaml("{command: [c]}"), &KeyPath::parse("x-base")).unwrap();
        assert_yaml(&result, "{command: [c]}");
    }

    // --- strip_tags ------------------------------------------------------------------------------

    #[test]
    fn strip_tags_resolves_a_single_document() {
        let mut doc = yaml(
            r#"
services:
  web:
    image: !override nginx
    ports: !reset []
    environment: {A: !reset "1", B: !custom "2"}
    volumes: [!reset {target: /a}, {target: /b, volume: !override {nocopy: true}}]
"#,
        );
        strip_tags(&mut doc);
        assert_yaml(
            &doc,
            r#"
services:
  web:
    image: nginx
    environment: {B: "2"}
    volumes: [{target: /b, volume: {nocopy: true}}]
"#,
        );

        let mut root = yaml("!reset {a: 1}");
        strip_tags(&mut root);
        assert_eq!(root, Value::Null);
    }

    #[test]
    fn results_carry_no_tags() {
        fn has_tags(value: &Value) -> bool {
            match value {
                Value::Tagged(_) => true,
                Value::Mapping(map) => map.iter().any(|(k, v)| has_tags(k) || has_tags(v)),
                Value::Sequence(items) => items.iter().any(has_tags),
                _ => false,
            }
        }
        let result = merged(
            "services: {web: {environment: {A: !override '1'}, ports: [!override {target: 1}]}}",
            r#"
services:
  web:
    environment: {B: !override '2', C: !custom x}
    ports: [!override {target: 2}, {target: 3, name: !override p}]
    deploy: !override {labels: {a: !reset b, c: !override d}}
    networks: {n: !custom {aliases: [!override x]}}
"#,
        );
        assert!(!has_tags(&result), "{result:?}");
    }
}
