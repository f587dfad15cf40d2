//! Compose-Specification variable interpolation (`$VAR`, `${VAR:-default}`, `$$`, ...).
//!
//! The semantics follow compose-go's `template` package, which is what `docker compose` runs:
//!
//! | form              | VAR unset     | VAR empty     | VAR set, non-empty |
//! |-------------------|---------------|---------------|--------------------|
//! | `$VAR`, `${VAR}`  | `""` + warning| `""`          | value              |
//! | `${VAR:-d}`       | d             | d             | value              |
//! | `${VAR-d}`        | d             | `""`          | value              |
//! | `${VAR:?m}`       | error m       | error m       | value              |
//! | `${VAR?m}`        | error m       | `""`          | value              |
//! | `${VAR:+r}`       | `""`          | `""`          | r                  |
//! | `${VAR+r}`        | `""`          | r             | r                  |
//!
//! `$$` is a literal `$`; a `$` followed by anything other than a name, `{` or `$` is kept as
//! it is (`a $ string`, `^REGEX$`, `$1`). Defaults, messages and replacements may themselves
//! contain expressions, and are only expanded when they are used, as compose-go does: an unused
//! default neither warns nor fails.

use std::fmt;

use serde_yaml::Value;

use super::error::PathError;
use super::path::KeyPath;

/// Nesting depth (`${A:-${B:-${C:-...}}}`) past which we refuse the template. Real files nest
/// two or three levels; the limit only exists so hostile input cannot overflow the stack.
const MAX_NESTING: usize = 64;

/// Why a template could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${VAR:?message}` / `${VAR?message}` with VAR missing.
    #[error("{}", missing_required_text(variable, message.as_deref(), *empty))]
    MissingRequired {
        variable: String,
        /// The user's (expanded) message; `None` when the template gave none (`${VAR:?}`).
        message: Option<String>,
        /// True when VAR is set but empty (only `:?` rejects that), false when it is unset.
        empty: bool,
    },
    /// The template is not valid interpolation syntax.
    #[error("invalid interpolation syntax at character {column} of {template:?}: {problem}")]
    InvalidSyntax {
        /// The whole string that was being expanded.
        template: String,
        /// 1-based character (not byte) position of the offending `$` or character.
        column: usize,
        problem: String,
    },
}

impl TemplateError {
    /// How to fix it, in words a user can act on.
    pub fn hint(&self) -> String {
        match self {
            TemplateError::MissingRequired { variable, empty: false, .. } => format!(
                "set {variable} in the environment or in the .env file, or give a default with \
                 ${{{variable}:-default}}"
            ),
            TemplateError::MissingRequired { variable, empty: true, .. } => format!(
                "give {variable} a non-empty value in the environment or in the .env file, or \
                 give a default with ${{{variable}:-default}}"
            ),
            TemplateError::InvalidSyntax { .. } => {
                "write a literal $ as $$; variable names are letters, digits and _ and do not \
                 start with a digit, e.g. ${NAME} or ${NAME:-default}"
                    .to_string()
            }
        }
    }
}

fn missing_required_text(variable: &str, message: Option<&str>, empty: bool) -> String {
    match message {
        Some(message) => format!("required variable {variable} is missing a value: {message}"),
        // compose-go prints nothing after the name here; say which of the two cases it is.
        None if empty => format!(
            "required variable {variable} is missing a value: it is set but empty, and \
             ${{{variable}:?}} requires a non-empty value"
        ),
        None => format!(
            "required variable {variable} is missing a value: it is not set, and \
             ${{{variable}?}} / ${{{variable}:?}} require it"
        ),
    }
}

/// The compose warning for an unset variable used without a default.
pub fn unset_warning(variable: &str) -> String {
    format!("The \"{variable}\" variable is not set. Defaulting to a blank string.")
}

/// Expands every expression in `template`; unset-variable warnings are dropped.
pub fn substitute(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, TemplateError> {
    let mut warnings = Vec::new();
    substitute_with_warnings(template, lookup, &mut warnings)
}

/// Like [`substitute`], and appends a compose-style warning for each unset variable used without
/// a default (once per variable: a name already warned about in `warnings` is not repeated).
pub fn substitute_with_warnings(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<String, TemplateError> {
    let mut expander = Expander { template, lookup, warnings, depth: 0 };
    expander.expand(0, template.len())
}

/// Interpolates every string scalar under `value` in place (mapping keys are left alone, as in
/// compose-go). `path` is where `value` sits in its document; errors name the offending scalar.
pub fn interpolate_value(
    value: &mut Value,
    path: &KeyPath,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(), PathError> {
    match value {
        Value::String(text) => {
            *text = substitute_with_warnings(text, lookup, warnings)
                .map_err(|e| PathError::new(path.clone(), e.to_string()).with_hint(e.hint()))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &path.index(i), lookup, warnings)?;
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                interpolate_value(item, &path.key(key_text(key)), lookup, warnings)?;
            }
        }
        // `!reset` / `!override` wrap the value they apply to; the tag is not part of the path.
        Value::Tagged(tagged) => interpolate_value(&mut tagged.value, path, lookup, warnings)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// A mapping key as it appears in a [`KeyPath`]: scalars by their text, like the position index
/// in `yaml.rs` does, so error paths can be located in the source.
fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        Value::Tagged(tagged) => key_text(&tagged.value),
        Value::Sequence(_) | Value::Mapping(_) => "?".to_string(),
    }
}

/// The six operators allowed after a braced name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    /// `:-`
    DefaultIfUnsetOrEmpty,
    /// `-`
    DefaultIfUnset,
    /// `:?`
    RequireNonEmpty,
    /// `?`
    RequireSet,
    /// `:+`
    ReplaceIfNonEmpty,
    /// `+`
    ReplaceIfSet,
}

impl Operator {
    /// Reads an operator at the start of `rest`; returns it and its length in bytes.
    fn parse(rest: &[u8]) -> Option<(Operator, usize)> {
        match rest {
            [b':', b'-', ..] => Some((Operator::DefaultIfUnsetOrEmpty, 2)),
            [b':', b'?', ..] => Some((Operator::RequireNonEmpty, 2)),
            [b':', b'+', ..] => Some((Operator::ReplaceIfNonEmpty, 2)),
            [b'-', ..] => Some((Operator::DefaultIfUnset, 1)),
            [b'?', ..] => Some((Operator::RequireSet, 1)),
            [b'+', ..] => Some((Operator::ReplaceIfSet, 1)),
            _ => None,
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operator::DefaultIfUnsetOrEmpty => ":-",
            Operator::DefaultIfUnset => "-",
            Operator::RequireNonEmpty => ":?",
            Operator::RequireSet => "?",
            Operator::ReplaceIfNonEmpty => ":+",
            Operator::ReplaceIfSet => "+",
        })
    }
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Expands byte ranges of one template. Positions are byte offsets into the whole template, so
/// an error deep inside a default still points at the right place of the string the user wrote.
/// Every offset used for slicing sits just before or after an ASCII byte (`$`, `{`, `}`, name
/// characters), hence on a `char` boundary.
struct Expander<'a> {
    template: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    warnings: &'a mut Vec<String>,
    depth: usize,
}

impl Expander<'_> {
    fn slice(&self, start: usize, end: usize) -> &str {
        self.template.get(start..end).unwrap_or("")
    }

    /// The byte at `at`, if it lies before `end`.
    fn byte(&self, at: usize, end: usize) -> Option<u8> {
        if at < end {
            self.template.as_bytes().get(at).copied()
        } else {
            None
        }
    }

    fn error(&self, at: usize, problem: impl Into<String>) -> TemplateError {
        TemplateError::InvalidSyntax {
            template: self.template.to_string(),
            column: self.slice(0, at).chars().count() + 1,
            problem: problem.into(),
        }
    }

    /// Expands `template[start..end]`.
    fn expand(&mut self, start: usize, end: usize) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(end.saturating_sub(start));
        let mut pos = start;
        while let Some(offset) = self.slice(pos, end).find('$') {
            let dollar = pos + offset;
            out.push_str(self.slice(pos, dollar));
            pos = self.expand_dollar(dollar, end, &mut out)?;
        }
        out.push_str(self.slice(pos, end));
        Ok(out)
    }

    /// Expands the expression starting with the `$` at `dollar` into `out`; returns the offset
    /// just past it.
    fn expand_dollar(&mut self, dollar: usize, end: usize, out: &mut String) -> Result<usize, TemplateError> {
        match self.byte(dollar + 1, end) {
            Some(b'$') => {
                out.push('$');
                Ok(dollar + 2)
            }
            Some(b'{') => self.expand_braced(dollar, end, out),
            Some(b) if is_name_start(b) => {
                let name_end = self.scan_name(dollar + 1, end);
                let value = self.plain(dollar + 1, name_end);
                out.push_str(&value);
                Ok(name_end)
            }
            // Not an expression: compose-go keeps such a `$` (e.g. `$1`, `$}`, a trailing `$`).
            _ => {
                out.push('$');
                Ok(dollar + 1)
            }
        }
    }

    /// The offset just past the run of name characters starting at `start`.
    fn scan_name(&self, start: usize, end: usize) -> usize {
        let mut pos = start;
        while self.byte(pos, end).is_some_and(|b| if pos == start { is_name_start(b) } else { is_name_char(b) }) {
            pos += 1;
        }
        pos
    }

    /// The value of a variable used without an operator.
    fn plain(&mut self, name_start: usize, name_end: usize) -> String {
        let name = self.slice(name_start, name_end).to_string();
        match (self.lookup)(&name) {
            Some(value) => value,
            None => {
                let warning = unset_warning(&name);
                if !self.warnings.contains(&warning) {
                    self.warnings.push(warning);
                }
                String::new()
            }
        }
    }

    /// `${...}` starting at `dollar`.
    fn expand_braced(&mut self, dollar: usize, end: usize, out: &mut String) -> Result<usize, TemplateError> {
        let name_start = dollar + 2;
        let name_end = self.scan_name(name_start, end);
        if name_end == name_start {
            return Err(self.bad_name_start(dollar, name_start, end));
        }
        let rest = self.template.as_bytes().get(name_end..end).unwrap_or(&[]);
        if rest.first() == Some(&b'}') {
            out.push_str(&self.plain(name_start, name_end));
            return Ok(name_end + 1);
        }
        let Some((operator, len)) = Operator::parse(rest) else {
            return Err(self.bad_after_name(dollar, name_start, name_end, end));
        };
        let arg_start = name_end + len;
        let close = self.closing_brace(arg_start, end).ok_or_else(|| {
            let name = self.slice(name_start, name_end);
            self.error(dollar, format!("`${{{name}{operator}` is never closed with `}}`"))
        })?;
        let name = self.slice(name_start, name_end).to_string();
        let value = self.apply(&name, operator, arg_start, close)?;
        out.push_str(&value);
        Ok(close + 1)
    }

    /// The `}` closing an argument that starts at `start`. Braces inside the argument nest (as
    /// in compose-go), so defaults like `${A:-${B}}` and `${A:-{"json":1}}` work.
    fn closing_brace(&self, start: usize, end: usize) -> Option<usize> {
        let bytes = self.template.as_bytes().get(start..end)?;
        let mut depth = 1usize;
        for (i, b) in bytes.iter().enumerate() {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(start + i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn bad_name_start(&self, dollar: usize, name_start: usize, end: usize) -> TemplateError {
        match self.slice(name_start, end).chars().next() {
            None => self.error(dollar, "`${` is never closed with `}`"),
            Some('}') => self.error(dollar, "`${}` has no variable name"),
            Some(c) => self.error(
                name_start,
                format!("expected a variable name after `${{`, found {c:?}; names start with a letter or _"),
            ),
        }
    }

    fn bad_after_name(&self, dollar: usize, name_start: usize, name_end: usize, end: usize) -> TemplateError {
        let name = self.slice(name_start, name_end);
        match self.slice(name_end, end).chars().next() {
            None => self.error(dollar, format!("`${{{name}` is never closed with `}}`")),
            Some(c) => self
                .error(name_end, format!("unexpected {c:?} after `${{{name}`; expected `}}` or one of :- - :? ? :+ +")),
        }
    }

    /// Applies an operator; the argument `template[arg_start..arg_end]` is expanded only when
    /// it is used, so an unused default cannot warn or fail.
    fn apply(
        &mut self,
        name: &str,
        operator: Operator,
        arg_start: usize,
        arg_end: usize,
    ) -> Result<String, TemplateError> {
        let value = (self.lookup)(name);
        let set = value.is_some();
        let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
        match operator {
            Operator::DefaultIfUnsetOrEmpty if !non_empty => self.argument(arg_start, arg_end),
            Operator::DefaultIfUnset if !set => self.argument(arg_start, arg_end),
            Operator::RequireNonEmpty if !non_empty => Err(self.missing(name, set, arg_start, arg_end)?),
            Operator::RequireSet if !set => Err(self.missing(name, set, arg_start, arg_end)?),
            Operator::ReplaceIfNonEmpty if non_empty => self.argument(arg_start, arg_end),
            Operator::ReplaceIfSet if set => self.argument(arg_start, arg_end),
            // `:+`/`+` not applying give the (empty or absent) value, i.e. "".
            _ => Ok(value.unwrap_or_default()),
        }
    }

    /// Expands a nested argument, refusing absurd nesting depths.
    fn argument(&mut self, start: usize, end: usize) -> Result<String, TemplateError> {
        if self.depth >= MAX_NESTING {
            return Err(self.error(start, format!("expressions nest more than {MAX_NESTING} deep")));
        }
        self.depth += 1;
        let result = self.expand(start, end);
        self.depth -= 1;
        result
    }

    /// The error for a missing required variable (its message is itself a template).
    fn missing(
        &mut self,
        name: &str,
        set: bool,
        arg_start: usize,
        arg_end: usize,
    ) -> Result<TemplateError, TemplateError> {
        let message = self.argument(arg_start, arg_end)?;
        Ok(TemplateError::MissingRequired {
            variable: name.to_string(),
            message: (!message.is_empty()).then_some(message),
            empty: set,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The environment compose-go's own tests use.
    fn env(name: &str) -> Option<String> {
        match name {
            "FOO" => Some("first".into()),
            "BAR" => Some(String::new()),
            "JSON" => Some(r#"{"json":2}"#.into()),
            _ => None,
        }
    }

    fn sub(template: &str) -> String {
        match substitute(template, &env) {
            Ok(s) => s,
            Err(e) => panic!("{template:?} failed: {e}"),
        }
    }

    fn sub_err(template: &str) -> TemplateError {
        match substitute(template, &env) {
            Ok(s) => panic!("{template:?} should fail, gave {s:?}"),
            Err(e) => e,
        }
    }

    fn warnings_of(template: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        let _ = substitute_with_warnings(template, &env, &mut warnings);
        warnings
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(sub("foo"), "foo");
        assert_eq!(sub(""), "");
        assert_eq!(sub("ünïcødé ✓"), "ünïcødé ✓");
    }

    #[test]
    fn named_and_braced_variables() {
        assert_eq!(sub("This $FOO var"), "This first var");
        assert_eq!(sub("This ${FOO} var"), "This first var");
        assert_eq!(sub("$FOO-bar"), "first-bar");
        assert_eq!(sub("${FOO}${FOO}"), "firstfirst");
        assert_eq!(sub("$FOO.$FOO"), "first.first");
    }

    #[test]
    fn names_are_letters_digits_and_underscore() {
        let lookup = |n: &str| (n == "a_1").then(|| "x".to_string());
        assert_eq!(substitute("$a_1-", &lookup).unwrap(), "x-");
        assert_eq!(substitute("${a_1}", &lookup).unwrap(), "x");
        assert_eq!(substitute("$_", &|n: &str| (n == "_").then(|| "u".into())).unwrap(), "u");
    }

    #[test]
    fn unset_and_empty_without_modifier_give_blank() {
        assert_eq!(sub("This ${missing} var"), "This  var");
        assert_eq!(sub("This $missing var"), "This  var");
        assert_eq!(sub("This ${BAR} var"), "This  var");
    }

    #[test]
    fn unset_variables_warn_once_and_empty_ones_not_at_all() {
        assert_eq!(warnings_of("$missing ${missing}"), vec![unset_warning("missing")]);
        assert_eq!(unset_warning("X"), "The \"X\" variable is not set. Defaulting to a blank string.");
        assert!(warnings_of("${BAR} $FOO").is_empty());
        assert!(warnings_of("${missing-x} ${missing:+y}").is_empty());
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(sub("$${foo}"), "${foo}");
        assert_eq!(sub("$$FOO"), "$FOO");
        assert_eq!(sub("$$$FOO"), "$first");
        assert_eq!(sub("$$$$"), "$$");
    }

    #[test]
    fn lone_dollars_are_kept() {
        for template in ["a $ string", "^REGEX$", "$}", "$", "$1", "cost: 5$", "$-x", "€$€"] {
            assert_eq!(sub(template), template);
        }
    }

    #[test]
    fn default_when_unset_or_empty() {
        assert_eq!(sub("ok ${missing:-def}"), "ok def");
        assert_eq!(sub("ok ${BAR:-def}"), "ok def");
        assert_eq!(sub("ok ${FOO:-def}"), "ok first");
        assert_eq!(sub("ok ${missing:-}"), "ok ");
    }

    #[test]
    fn default_when_unset() {
        assert_eq!(sub("ok ${missing-def}"), "ok def");
        assert_eq!(sub("ok ${BAR-def}"), "ok ");
        assert_eq!(sub("ok ${FOO-def}"), "ok first");
    }

    #[test]
    fn replacement_when_set_and_non_empty() {
        assert_eq!(sub("ok ${missing:+rep}"), "ok ");
        assert_eq!(sub("ok ${BAR:+rep}"), "ok ");
        assert_eq!(sub("ok ${FOO:+rep}"), "ok rep");
    }

    #[test]
    fn replacement_when_set() {
        assert_eq!(sub("ok ${missing+rep}"), "ok ");
        assert_eq!(sub("ok ${BAR+rep}"), "ok rep");
        assert_eq!(sub("ok ${FOO+rep}"), "ok rep");
    }

    #[test]
    fn required_passes_when_present() {
        assert_eq!(sub("ok ${FOO:?err}"), "ok first");
        assert_eq!(sub("ok ${FOO?err}"), "ok first");
        assert_eq!(sub("ok ${BAR?err}"), "ok ");
    }

    #[test]
    fn required_fails_like_compose() {
        let cases = [
            ("${UNSET_VAR:?Mandatory Variable Unset}", "UNSET_VAR", "Mandatory Variable Unset"),
            ("${BAR:?Mandatory Variable Empty}", "BAR", "Mandatory Variable Empty"),
            ("${UNSET_VAR?Mandatory Variable Unset}", "UNSET_VAR", "Mandatory Variable Unset"),
        ];
        for (template, variable, message) in cases {
            let err = sub_err(&format!("not ok {template}"));
            assert_eq!(err.to_string(), format!("required variable {variable} is missing a value: {message}"));
            assert!(matches!(err, TemplateError::MissingRequired { .. }));
        }
    }

    #[test]
    fn required_without_message_says_what_is_wrong() {
        let unset = sub_err("${UNSET_VAR:?}");
        assert_eq!(unset, TemplateError::MissingRequired { variable: "UNSET_VAR".into(), message: None, empty: false });
        assert!(unset.to_string().starts_with("required variable UNSET_VAR is missing a value: "));
        assert!(unset.to_string().contains("not set"));
        assert!(unset.hint().contains("${UNSET_VAR:-default}"));
        let empty = sub_err("${BAR:?}");
        assert!(empty.to_string().contains("set but empty"), "{empty}");
        assert!(sub_err("${UNSET_VAR?}").to_string().contains("not set"));
    }

    #[test]
    fn required_message_is_interpolated() {
        let err = sub_err("${UNSET_VAR:?Mandatory Variable ${FOO}}");
        assert_eq!(err.to_string(), "required variable UNSET_VAR is missing a value: Mandatory Variable first");
    }

    #[test]
    fn nested_defaults_and_replacements() {
        assert_eq!(sub("${A:-${B:-x}}"), "x");
        assert_eq!(sub("${A:-${FOO:-x}}"), "first");
        assert_eq!(sub("ok ${UNSET_VAR-$FOO}"), "ok first");
        assert_eq!(sub("ok ${UNSET_VAR-${FOO} ${FOO}}"), "ok first first");
        assert_eq!(sub("ok ${BAR:-${FOO} ${FOO}}"), "ok first first");
        assert_eq!(sub("ok ${BAR+$FOO ${FOO:+second}}"), "ok first second");
        assert_eq!(sub("+ok ${UNSET:-${BAR-defaultValue}}"), "+ok ");
        assert_eq!(sub("${A:-${B:-${C:-${FOO}}}}-tail"), "first-tail");
    }

    #[test]
    fn operators_in_the_argument_are_plain_text() {
        assert_eq!(sub("ok ${BAR:-/non:-alphanumeric}"), "ok /non:-alphanumeric");
        assert_eq!(sub("${UNSET_VAR-myerror?msg}"), "myerror?msg");
        assert_eq!(sub(":?ok ${BAR:-defaultValue}"), ":?ok defaultValue");
        let err = sub_err("${UNSET_VAR?bar-baz}");
        assert_eq!(err.to_string(), "required variable UNSET_VAR is missing a value: bar-baz");
    }

    #[test]
    fn braces_in_defaults_nest() {
        assert_eq!(sub(r#"ok ${missing:-{"json":1}}"#), r#"ok {"json":1}"#);
        assert_eq!(sub(r#"ok ${missing-{"json":1}}"#), r#"ok {"json":1}"#);
        assert_eq!(sub(r#"ok ${JSON:-{"json":1}}"#), r#"ok {"json":2}"#);
        assert_eq!(sub("${A:-x} and ${B:-y}"), "x and y");
        assert_eq!(sub("${FOO}}"), "first}");
    }

    #[test]
    fn defaults_may_contain_escaped_dollars() {
        assert_eq!(sub("${missing:-$$HOME}"), "$HOME");
    }

    #[test]
    fn unused_arguments_are_not_expanded() {
        // A broken or required expression in an unused branch neither warns nor fails.
        assert!(warnings_of("${FOO:-${B}}").is_empty());
        assert_eq!(warnings_of("${A:-${B}}"), vec![unset_warning("B")]);
        assert_eq!(sub("${FOO:-${NOPE:?boom}}"), "first");
        assert_eq!(sub("${FOO?${B}}"), "first");
        assert_eq!(sub("${missing:+${NOPE:?boom}}"), "");
    }

    #[test]
    fn invalid_templates_are_errors() {
        for template in ["${", "${}", "${ }", "${ foo}", "${foo }", "${foo!}", "${1}", "${FOO BAR}"] {
            let err = sub_err(template);
            assert!(matches!(err, TemplateError::InvalidSyntax { .. }), "{template}: {err:?}");
        }
    }

    #[test]
    fn unterminated_expressions_are_errors() {
        for template in ["${FOO", "x ${FOO:-abc", "${A:-${B}", "${A:-{x}"] {
            let err = sub_err(template);
            assert!(err.to_string().contains("never closed"), "{template}: {err}");
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = sub_err("héllo ${FOO BAR}");
        assert_eq!(
            err,
            TemplateError::InvalidSyntax {
                template: "héllo ${FOO BAR}".into(),
                column: 12,
                problem: "unexpected ' ' after `${FOO`; expected `}` or one of :- - :? ? :+ +".into(),
            }
        );
        assert!(err.to_string().contains("at character 12"));
        match sub_err("ab ${") {
            TemplateError::InvalidSyntax { column, .. } => assert_eq!(column, 4),
            other => panic!("{other:?}"),
        }
        // Errors inside a default point into the outer string.
        match sub_err("${A:-${}}") {
            TemplateError::InvalidSyntax { column, .. } => assert_eq!(column, 6),
            other => panic!("{other:?}"),
        }
        assert!(sub_err("${}").hint().contains("$$"));
    }

    #[test]
    fn hostile_nesting_is_an_error_not_a_crash() {
        let deep = "${A:-".repeat(10_000) + &"}".repeat(10_000);
        assert!(matches!(sub_err(&deep), TemplateError::InvalidSyntax { .. }));
        let ok = "${A:-".repeat(MAX_NESTING) + "x" + &"}".repeat(MAX_NESTING);
        assert_eq!(sub(&ok), "x");
    }

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn interpolates_every_string_scalar_but_not_keys() {
        let mut doc = yaml(
            "services:\n  $FOO:\n    image: img:${FOO}\n    ports: [\"${FOO}\", 80, true]\n    x: !reset ${FOO:-y}\n    y: !override [\"$FOO\"]\n",
        );
        let mut warnings = Vec::new();
        interpolate_value(&mut doc, &KeyPath::root(), &env, &mut warnings).unwrap();
        let expected = yaml(
            "services:\n  $FOO:\n    image: img:first\n    ports: [first, 80, true]\n    x: !reset first\n    y: !override [first]\n",
        );
        assert_eq!(doc, expected);
        assert!(warnings.is_empty());
    }

    #[test]
    fn interpolation_collects_warnings() {
        let mut doc = yaml("a: $NOPE\nb: [\"${NOPE}\", \"$OTHER\"]\n");
        let mut warnings = Vec::new();
        interpolate_value(&mut doc, &KeyPath::root(), &env, &mut warnings).unwrap();
        assert_eq!(warnings, vec![unset_warning("NOPE"), unset_warning("OTHER")]);
    }

    #[test]
    fn interpolation_errors_carry_the_path_and_a_hint() {
        let mut doc = yaml("services:\n  web:\n    ports:\n      - \"80\"\n      - ${PORT:?no port}\n");
        let err = interpolate_value(&mut doc, &KeyPath::root(), &env, &mut Vec::new()).unwrap_err();
        assert_eq!(err.path.to_string(), "services.web.ports[1]");
        assert_eq!(err.message, "required variable PORT is missing a value: no port");
        let hint = err.hint.unwrap_or_default();
        assert!(hint.contains("set PORT in the environment or in the .env file"), "{hint}");
        assert!(hint.contains("${PORT:-default}"), "{hint}");

        let mut doc = yaml("x:\n  1: \"${oops\"\n");
        let err = interpolate_value(&mut doc, &KeyPath::parse("top"), &env, &mut Vec::new()).unwrap_err();
        assert_eq!(err.path.to_string(), "top.x.1");
        assert!(err.message.contains("never closed"), "{}", err.message);
    }

    #[test]
    fn numbers_bools_and_nulls_are_untouched() {
        let mut doc = yaml("a: 1\nb: 2.5\nc: false\nd: ~\n");
        let before = doc.clone();
        interpolate_value(&mut doc, &KeyPath::root(), &env, &mut Vec::new()).unwrap();
        assert_eq!(doc, before);
    }

    /// Text that cannot end or open an expression inside a default.
    fn safe_default() -> impl Strategy<Value = String> {
        "[^${}]*"
    }

    proptest! {
        #[test]
        fn never_panics(template in any::<String>()) {
            let _ = substitute(&template, &env);
        }

        #[test]
        fn never_panics_on_dollar_heavy_input(template in "[${}:?+\\-A-Za-z_0-9 ]{0,40}") {
            let _ = substitute(&template, &env);
        }

        #[test]
        fn escaping_dollars_round_trips(text in any::<String>()) {
            let escaped = text.replace('$', "$$");
            prop_assert_eq!(substitute(&escaped, &env), Ok(text));
        }

        #[test]
        fn default_is_used_for_unset_variables(default in safe_default()) {
            let template = format!("${{UNSET_VAR:-{default}}}");
            prop_assert_eq!(substitute(&template, &env), Ok(default.clone()));
            let template = format!("${{UNSET_VAR-{default}}}");
            prop_assert_eq!(substitute(&template, &env), Ok(default));
        }
    }
}
