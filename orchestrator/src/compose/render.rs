//! `shoal config`'s output: the typed project as YAML or JSON that loads back to the same
//! project — by Shoal, by docker compose, and by YAML 1.1 readers such as docker-compose v1.
//!
//! Two things keep the output re-loadable:
//! - a literal `$` in a value is written `$$`: every string value is interpolated when a file is
//!   loaded, so a `$` the loader produced (from `$$`, or from an `env_file`) would otherwise be
//!   read as the start of a variable the second time;
//! - strings a YAML 1.1 reader takes for something else (`no`, `on`, `0755`, `1:30`,
//!   `2024-01-02`) are single-quoted. serde_yaml follows YAML 1.2, which reads them as strings,
//!   so it leaves them plain (`restart: no`, which docker-compose v1 reads as `false`).

use serde_yaml::{Mapping, Value};

use super::model::Project;
use super::units::yaml11_bool;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot convert the project for output: {0}")]
    Value(#[from] serde_yaml::Error),
    #[error("cannot write the project as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The project as a YAML document.
pub fn to_yaml(project: &Project) -> Result<String, RenderError> {
    let mut value = reloadable_value(project)?;
    let prefix = placeholder_prefix(&value);
    let mut quoted = Vec::new();
    mark_yaml11_strings(&mut value, &prefix, &mut quoted);
    let text = serde_yaml::to_string(&value)?;
    Ok(restore_quoted(&text, &prefix, &quoted))
}

/// The project as pretty-printed JSON, with a final newline.
pub fn to_json(project: &Project) -> Result<String, RenderError> {
    Ok(serde_json::to_string_pretty(&reloadable_value(project)?)? + "\n")
}

/// The project as a value tree, with every literal `$` of a value escaped.
fn reloadable_value(project: &Project) -> Result<Value, RenderError> {
    let mut value = serde_yaml::to_value(project)?;
    escape_dollars(&mut value);
    Ok(value)
}

/// `$` → `$$` in string values. Mapping keys are not interpolated, so they stay as they are.
fn escape_dollars(value: &mut Value) {
    match value {
        Value::String(text) if text.contains('$') => *text = text.replace('$', "$$"),
        Value::Sequence(items) => items.iter_mut().for_each(escape_dollars),
        Value::Mapping(map) => map.values_mut().for_each(escape_dollars),
        Value::Tagged(tagged) => escape_dollars(&mut tagged.value),
        _ => {}
    }
}

/// Whether a YAML 1.1 reader resolves this plain scalar to something other than a string:
/// a boolean, null, an integer, a float, a timestamp, or a merge/value key. Erring towards
/// true is harmless (a quoted scalar is a string to every reader).
pub fn yaml11_reads_as_non_string(s: &str) -> bool {
    const OTHER: [&str; 7] = ["", "~", "null", "Null", "NULL", "<<", "="];
    OTHER.contains(&s)
        || yaml11_bool(s).is_some()
        || s.eq_ignore_ascii_case("true")
        || s.eq_ignore_ascii_case("false")
        || is_yaml11_int(s)
        || is_yaml11_float(s)
        || is_yaml11_timestamp(s)
}

fn unsigned(s: &str) -> &str {
    s.strip_prefix(['+', '-']).unwrap_or(s)
}

fn all(s: &str, ok: impl Fn(char) -> bool) -> bool {
    s.chars().all(ok)
}

/// `[1-9][0-9_]*`
fn is_decimal(s: &str) -> bool {
    s.starts_with(|c: char| matches!(c, '1'..='9')) && all(s, |c| c.is_ascii_digit() || c == '_')
}

/// `(:[0-5]?[0-9])+` after the head `head` accepts: base-60 numbers (`1:30` is 90).
fn is_sexagesimal(s: &str, head: impl Fn(&str) -> bool) -> bool {
    let mut parts = s.split(':');
    let first = parts.next().unwrap_or_default();
    let mut tail = parts.peekable();
    tail.peek().is_some()
        && head(first)
        && tail.all(|p| matches!(p.as_bytes(), [b'0'..=b'9'] | [b'0'..=b'5', b'0'..=b'9']))
}

/// YAML 1.1 `!!int`: binary, octal, decimal, hexadecimal and base 60, with `_` separators.
fn is_yaml11_int(s: &str) -> bool {
    let t = unsigned(s);
    if let Some(digits) = t.strip_prefix("0b") {
        return !digits.is_empty() && all(digits, |c| matches!(c, '0' | '1' | '_'));
    }
    if let Some(digits) = t.strip_prefix("0x") {
        return !digits.is_empty() && all(digits, |c| c.is_ascii_hexdigit() || c == '_');
    }
    if let Some(digits) = t.strip_prefix('0') {
        return all(digits, |c| matches!(c, '0'..='7' | '_'));
    }
    is_decimal(t) || is_sexagesimal(t, is_decimal)
}

/// YAML 1.1 `!!float` as PyYAML resolves it: `[-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?`,
/// `[-+]?\.[0-9_]+` (with the same exponent), base 60 with a fraction, the infinities and NaN.
fn is_yaml11_float(s: &str) -> bool {
    let t = unsigned(s);
    if [".inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN"].contains(&t) {
        return true;
    }
    let Some((whole, fraction)) = t.split_once('.') else { return false };
    let digits_ = |p: &str| all(p, |c| c.is_ascii_digit() || c == '_');
    let head = |p: &str| p.starts_with(|c: char| c.is_ascii_digit()) && digits_(p);
    if whole.contains(':') {
        return is_sexagesimal(whole, head) && digits_(fraction);
    }
    let (fraction, exponent) = match fraction.find(['e', 'E']) {
        Some(at) => (&fraction[..at], Some(&fraction[at + 1..])),
        None => (fraction, None),
    };
    let exponent_ok = exponent
        .is_none_or(|e| e.strip_prefix(['+', '-']).is_some_and(|d| !d.is_empty() && all(d, |c| c.is_ascii_digit())));
    let number = if whole.is_empty() { fraction.starts_with(|c: char| c.is_ascii_digit()) } else { head(whole) };
    number && digits_(fraction) && exponent_ok
}

/// YAML 1.1 `!!timestamp`: a `YYYY-M-D` date, alone or followed by a time (`T`, `t` or
/// whitespace, then anything: such strings are quoted whatever the rest looks like).
fn is_yaml11_timestamp(s: &str) -> bool {
    let mut parts = s.splitn(3, '-');
    let (Some(year), Some(month), Some(rest)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let day_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let after_day = &rest[day_len..];
    let digits = |p: &str, n: std::ops::RangeInclusive<usize>| n.contains(&p.len()) && all(p, |c| c.is_ascii_digit());
    digits(year, 4..=4)
        && digits(month, 1..=2)
        && (1..=2).contains(&day_len)
        && (after_day.is_empty() || after_day.starts_with(['T', 't', ' ', '\t']))
}

/// A prefix that no key or string of the document contains, for placeholder scalars.
fn placeholder_prefix(value: &Value) -> String {
    let mut prefix = String::from("__shoal_quoted_");
    while contains_text(value, &prefix) {
        prefix.push('_');
    }
    prefix
}

fn contains_text(value: &Value, needle: &str) -> bool {
    match value {
        Value::String(text) => text.contains(needle),
        Value::Sequence(items) => items.iter().any(|v| contains_text(v, needle)),
        Value::Mapping(map) => map.iter().any(|(k, v)| contains_text(k, needle) || contains_text(v, needle)),
        Value::Tagged(tagged) => contains_text(&tagged.value, needle),
        _ => false,
    }
}

/// Replaces every key and string that needs quoting by `<prefix><n>`, `n` its index in
/// `quoted`. serde_yaml offers no way to choose a scalar's style, so the quotes are put in the
/// emitted text instead (`restore_quoted`); the placeholders are plain scalars it leaves as is.
fn mark_yaml11_strings(value: &mut Value, prefix: &str, quoted: &mut Vec<String>) {
    match value {
        Value::String(text) => mark(text, prefix, quoted),
        Value::Sequence(items) => items.iter_mut().for_each(|v| mark_yaml11_strings(v, prefix, quoted)),
        Value::Mapping(map) => {
            let mut marked = Mapping::with_capacity(map.len());
            for (mut key, mut item) in std::mem::take(map) {
                if let Value::String(text) = &mut key {
                    mark(text, prefix, quoted);
                }
                mark_yaml11_strings(&mut item, prefix, quoted);
                marked.insert(key, item);
            }
            *map = marked;
        }
        Value::Tagged(tagged) => mark_yaml11_strings(&mut tagged.value, prefix, quoted),
        _ => {}
    }
}

fn mark(text: &mut String, prefix: &str, quoted: &mut Vec<String>) {
    if yaml11_reads_as_non_string(text) {
        quoted.push(std::mem::replace(text, format!("{prefix}{}", quoted.len())));
    }
}

/// Puts the marked strings back, single-quoted, in place of their placeholders.
fn restore_quoted(text: &str, prefix: &str, quoted: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        out.push_str(&rest[..at]);
        let after = &rest[at + prefix.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>().ok().and_then(|i| quoted.get(i)) {
            Some(original) => {
                out.push('\'');
                out.push_str(&original.replace('\'', "''"));
                out.push('\'');
                rest = &after[digits..];
            }
            // Not one of ours (the prefix was chosen so that this cannot happen).
            None => {
                out.push_str(prefix);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml11_non_strings_are_recognised() {
        let non_strings = [
            "no",
            "No",
            "NO",
            "yes",
            "on",
            "OFF",
            "y",
            "N",
            "true",
            "False",
            "~",
            "",
            "null",
            "<<",
            "=",
            "0",
            "0755",
            "0b101",
            "0x1F",
            "-12",
            "1_000",
            "1:30",
            "190:20:30",
            "1.5",
            "-.5",
            "1.",
            "1_000.5",
            "6.8523015e+5",
            "1:30.5",
            ".inf",
            "-.Inf",
            ".NaN",
            "2001-12-14",
            "2001-12-14t21:59:43.10-05:00",
            "2001-12-14 21:59:43",
        ];
        for s in non_strings {
            assert!(yaml11_reads_as_non_string(s), "{s:?} should be quoted");
        }
        let strings = [
            "always",
            "unless-stopped",
            "on-failure:3",
            "nginx:1.25",
            "80:80",
            "1:60",
            "0x",
            "0b",
            "08",
            "1m30s",
            "8000-8010",
            "1.2.3",
            "1.2.3-beta",
            ".",
            "e5",
            "yes please",
            "2001-12",
            "20011-2-3",
            "$$HOME",
            "noon",
            "n/a",
        ];
        for s in strings {
            assert!(!yaml11_reads_as_non_string(s), "{s:?} needs no quotes");
        }
    }

    fn project(yaml: &str) -> Project {
        serde_yaml::from_str(yaml).expect("a valid model")
    }

    #[test]
    fn yaml_quotes_yaml11_words_and_escapes_dollars() {
        let p = project(
            "name: p\nservices:\n  'no':\n    image: x\n    restart: 'no'\n    environment: {ON: 'off', PRICE: \
             'costs $5', REF: '${NOT_A_VAR}', PORT: '1:30'}\n    labels: {a$b: 'yes'}\n",
        );
        let text = to_yaml(&p).expect("renders");
        for line in [
            "  'no':",
            "    restart: 'no'",
            "      'ON': 'off'",
            "      PRICE: costs $$5",
            "      REF: $${NOT_A_VAR}",
            "      PORT: '1:30'",
            "      a$b: 'yes'",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        // A YAML 1.2 reader gets the same strings back (after the `$$` a loader unescapes).
        let back: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
        assert_eq!(back["services"]["no"]["restart"], "no");
        assert_eq!(back["services"]["no"]["environment"]["ON"], "off");
    }

    #[test]
    fn json_escapes_dollars_only() {
        let p = project("name: p\nservices:\n  web: {image: x, restart: 'no', environment: {A: $x}}\n");
        let json: serde_json::Value = serde_json::from_str(&to_json(&p).expect("renders")).expect("valid JSON");
        assert_eq!(json["services"]["web"]["restart"], "no");
        assert_eq!(json["services"]["web"]["environment"]["A"], "$$x");
    }

    #[test]
    fn placeholders_never_collide_with_the_document() {
        let p = project("name: p\nservices:\n  web: {image: __shoal_quoted_0, restart: 'no'}\n");
        let text = to_yaml(&p).expect("renders");
        assert!(text.contains("image: __shoal_quoted_0\n"), "{text}");
        assert!(text.contains("restart: 'no'\n"), "{text}");
    }
}
