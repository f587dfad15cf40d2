//! The `.env` / `env_file` format, as docker compose (compose-go's `dotenv` package) reads it.
//!
//! ```text
//! # comment                      blank lines and full-line comments are skipped
//! export KEY=value               an `export ` prefix is ignored
//! KEY=value  # note              unquoted: trimmed, ` #` starts a comment, ${VAR} expanded
//! KEY: value                     yaml-ish `:` works like `=`
//! KEY='literal $X \n'            single quotes: taken as written (only \' is special)
//! KEY="a\tb ${X}                 double quotes: escapes, ${VAR} expanded,
//! second line"                   and may span lines
//! KEY                            no `=`: the value comes from the lookup (None if unset)
//! KEY=                           the empty string
//! ```
//!
//! Interpolation resolves a name from `lookup` first and only then from keys defined earlier in
//! the same file: compose-go does it in this order on purpose (docker/compose#9442), so the
//! shell environment wins over the file, as it does everywhere else in compose.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use super::error::{LoadError, Location};
use super::interpolate::{substitute, TemplateError};
use super::path::KeyPath;

/// Why an env file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The file does not exist (callers honour `required: false` by ignoring this one).
    #[error("env file {} not found", file.display())]
    NotFound { file: PathBuf },
    /// The file exists but cannot be read (permissions, a directory, ...).
    #[error("cannot read env file {}: {error}", file.display())]
    Read { file: PathBuf, error: std::io::Error },
    /// The text is not in the env file format.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, column: usize, message: String, hint: String },
    /// A value's `${...}` expression failed (bad syntax or a missing required variable).
    #[error("{}:{line}: {key}: {error}", file.display())]
    Interpolation { file: PathBuf, line: usize, key: String, error: TemplateError },
}

impl EnvFileError {
    pub fn file(&self) -> &Path {
        match self {
            EnvFileError::NotFound { file }
            | EnvFileError::Read { file, .. }
            | EnvFileError::Syntax { file, .. }
            | EnvFileError::Interpolation { file, .. } => file,
        }
    }

    /// 1-based line, for errors about the file's content.
    pub fn line(&self) -> Option<usize> {
        match self {
            EnvFileError::Syntax { line, .. } | EnvFileError::Interpolation { line, .. } => Some(*line),
            EnvFileError::NotFound { .. } | EnvFileError::Read { .. } => None,
        }
    }

    /// True for a file that does not exist (what `required: false` forgives).
    pub fn is_not_found(&self) -> bool {
        matches!(self, EnvFileError::NotFound { .. })
    }

    /// How to fix it.
    pub fn hint(&self) -> String {
        match self {
            EnvFileError::NotFound { .. } => "check the path (relative paths are resolved \
                 against the project directory), or mark the env_file entry `required: false`"
                .to_string(),
            EnvFileError::Read { .. } => {
                "check that the path is a regular file you have permission to read".to_string()
            }
            EnvFileError::Syntax { hint, .. } => hint.clone(),
            EnvFileError::Interpolation { error, .. } => error.hint(),
        }
    }
}

impl From<EnvFileError> for LoadError {
    fn from(error: EnvFileError) -> Self {
        let (line, column) = match &error {
            EnvFileError::Syntax { line, column, .. } => (*line, *column),
            EnvFileError::Interpolation { line, .. } => (*line, 1),
            EnvFileError::NotFound { .. } | EnvFileError::Read { .. } => (0, 0),
        };
        let message = match &error {
            EnvFileError::Syntax { message, .. } => message.clone(),
            EnvFileError::Interpolation { key, error, .. } => format!("{key}: {error}"),
            other => other.to_string(),
        };
        let location = Location { file: error.file().to_path_buf(), line, column };
        LoadError::new(location, KeyPath::root(), message).with_hint(error.hint())
    }
}

/// Reads and parses an env file. A missing file is [`EnvFileError::NotFound`].
pub fn read_env_file(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Option<String>)>, EnvFileError> {
    let bytes = std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => EnvFileError::NotFound { file: path.to_path_buf() },
        _ => EnvFileError::Read { file: path.to_path_buf(), error },
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let valid = bytes.get(..e.valid_up_to()).unwrap_or(&[]);
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        EnvFileError::Syntax {
            file: path.to_path_buf(),
            line,
            column,
            message: "the file is not valid UTF-8".to_string(),
            hint: "save the env file as UTF-8".to_string(),
        }
    })?;
    parse_env_text(text, path, lookup)
}

/// Parses env file text. `file` only names the source in errors. Each key appears once, where
/// it was first defined, with its last value; `None` is a bare `KEY` that `lookup` lacks.
pub fn parse_env_text(
    text: &str,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Option<String>)>, EnvFileError> {
    // Some Windows editors start UTF-8 files with a byte-order mark; compose skips it too.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser { text, pos: 0, file, lookup, entries: IndexMap::new() };
    while parser.next_statement() {
        parser.statement()?;
    }
    Ok(parser.entries.into_iter().collect())
}

/// Whitespace that does not end a line (compose-go's `isSpace`).
fn is_inline_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}')
}

/// Characters compose-go accepts in a variable name.
fn is_key_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']')
}

const KEY_HINT: &str = "write one KEY=value per line; names may contain letters, digits, _ . - [ ]";

struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the cursor; always on a char boundary.
    pos: usize,
    file: &'a Path,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    entries: IndexMap<String, Option<String>>,
}

impl<'a> Parser<'a> {
    /// The text from the cursor on (borrowing the text, not the parser, so the cursor can move
    /// while it is in use).
    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    /// 1-based line and column (in chars) of byte offset `at`.
    fn line_column(&self, at: usize) -> (usize, usize) {
        let before = self.text.get(..at).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        (line, column)
    }

    fn syntax(&self, at: usize, message: impl Into<String>, hint: impl Into<String>) -> EnvFileError {
        let (line, column) = self.line_column(at);
        EnvFileError::Syntax { file: self.file.to_path_buf(), line, column, message: message.into(), hint: hint.into() }
    }

    /// Moves past blank space and comment lines; false at the end of the text.
    fn next_statement(&mut self) -> bool {
        loop {
            let rest = self.rest();
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.is_empty() {
                return false;
            }
            if !trimmed.starts_with('#') {
                return true;
            }
            self.pos += trimmed.find('\n').unwrap_or(trimmed.len());
        }
    }

    /// Skips spaces and tabs (not newlines) at the cursor.
    fn skip_inline_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start_matches(is_inline_space).len();
    }

    /// Skips an `export ` prefix, unless `export` is itself the (bare) key.
    fn skip_export(&mut self) {
        let Some(after) = self.rest().strip_prefix("export") else {
            return;
        };
        let spaced = after.trim_start_matches(is_inline_space);
        if spaced.len() < after.len() && !spaced.is_empty() && !spaced.starts_with('\n') {
            self.pos += self.rest().len() - spaced.len();
        }
    }

    /// One `KEY=value`, `KEY: value` or bare `KEY` statement.
    fn statement(&mut self) -> Result<(), EnvFileError> {
        self.skip_export();
        let (key, terminator) = self.key()?;
        match terminator {
            Some('=') | Some(':') => {
                self.skip_inline_space();
                let value = self.value(&key)?;
                self.entries.insert(key, Some(value));
            }
            // A bare name takes its value from outside (or from earlier in this file).
            _ => {
                let value = self.resolve(&key);
                self.entries.insert(key, value);
            }
        }
        Ok(())
    }

    /// Reads a variable name up to `=`, `:`, a newline or the end (returned as the terminator,
    /// which the cursor is moved past).
    fn key(&mut self) -> Result<(String, Option<char>), EnvFileError> {
        let start = self.pos;
        let rest = self.rest();
        let end = rest.find(['=', ':', '\n']).unwrap_or(rest.len());
        let raw = rest.get(..end).unwrap_or("");
        let terminator = rest.get(end..).and_then(|t| t.chars().next());
        if let Some((i, c)) = raw.char_indices().find(|&(_, c)| !is_key_char(c) && !is_inline_space(c)) {
            let line_text = raw.trim_end();
            return Err(self.syntax(
                start + i,
                format!("unexpected character {c:?} in variable name {line_text:?}"),
                KEY_HINT,
            ));
        }
        let key = raw.trim_end_matches(is_inline_space);
        if let Some(i) = key.find(is_inline_space) {
            return Err(self.syntax(
                start + i,
                format!("variable name {key:?} contains a space"),
                "remove the space, or put the value after `=` (KEY=value)",
            ));
        }
        if key.is_empty() {
            // compose-go would define a variable named "" here; that is never what was meant.
            return Err(self.syntax(start, "missing variable name before `=`", KEY_HINT));
        }
        let key = key.to_string();
        self.pos = start + end + terminator.map_or(0, char::len_utf8);
        Ok((key, terminator))
    }

    /// The name's value from `lookup` first, then from earlier in this file (compose's order).
    fn resolve(&self, name: &str) -> Option<String> {
        (self.lookup)(name).or_else(|| self.entries.get(name).cloned().flatten())
    }

    fn interpolate(&self, key: &str, at: usize, template: &str) -> Result<String, EnvFileError> {
        substitute(template, &|name: &str| self.resolve(name)).map_err(|error| EnvFileError::Interpolation {
            file: self.file.to_path_buf(),
            line: self.line_column(at).0,
            key: key.to_string(),
            error,
        })
    }

    /// Reads the value at the cursor (which is past `=` and any spaces).
    fn value(&mut self, key: &str) -> Result<String, EnvFileError> {
        let start = self.pos;
        match self.rest().chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let body = self.quoted_body(quote)?;
                self.after_closing_quote(quote)?;
                let value = if quote == '"' { self.interpolate(key, start, &expand_escapes(&body))? } else { body };
                Ok(value)
            }
            _ => {
                let rest = self.rest();
                let line = rest.get(..rest.find('\n').unwrap_or(rest.len())).unwrap_or("");
                self.pos += line.len();
                // Only ` #` starts a comment, so `a#b` and URLs with fragments survive.
                let value = line.split(" #").next().unwrap_or("").trim_end();
                self.interpolate(key, start, value)
            }
        }
    }

    /// The text between the quote at the cursor and its closing quote, with `\<quote>` turned
    /// into the quote and every other backslash pair kept for [`expand_escapes`].
    fn quoted_body(&mut self, quote: char) -> Result<String, EnvFileError> {
        let open = self.pos;
        let mut body = String::new();
        let mut escaped = false;
        for (i, c) in self.rest().char_indices().skip(1) {
            if c == quote && !escaped {
                self.pos = open + i + c.len_utf8();
                return Ok(body);
            }
            if escaped {
                escaped = false;
                if c != quote {
                    body.push('\\');
                }
                body.push(c);
            } else if c == '\\' {
                escaped = true;
            } else {
                body.push(c);
            }
        }
        let kind = if quote == '"' { "double" } else { "single" };
        Err(self.syntax(
            open,
            format!("unterminated {kind}-quoted value: no closing {quote} after this one"),
            format!(
                "add the closing {quote}; quoted values may span lines, so it may be missing \
                 anywhere below, and a literal {quote} inside is written \\{quote}"
            ),
        ))
    }

    /// After a closing quote only spaces and a `#` comment may follow on that line.
    fn after_closing_quote(&mut self, quote: char) -> Result<(), EnvFileError> {
        self.skip_inline_space();
        let rest = self.rest();
        match rest.chars().next() {
            None | Some('\n') => Ok(()),
            Some('#') => {
                self.pos += rest.find('\n').unwrap_or(rest.len());
                Ok(())
            }
            // compose-go would silently start a new statement here; a typo is more likely.
            Some(c) => Err(self.syntax(
                self.pos,
                format!("unexpected {c:?} after the closing {quote} of a quoted value"),
                format!("put the whole value inside the quotes, or escape an inner quote as \\{quote}"),
            )),
        }
    }
}

/// Expands the escapes compose recognises in double-quoted values. `\$` becomes `$$` so that
/// interpolation then yields a literal `$`; unknown escapes are kept as written.
fn expand_escapes(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let simple = match chars.peek() {
            Some('a') => Some("\u{7}"),
            Some('b') => Some("\u{8}"),
            Some('f') => Some("\u{c}"),
            Some('n') => Some("\n"),
            Some('r') => Some("\r"),
            Some('t') => Some("\t"),
            Some('v') => Some("\u{b}"),
            Some('"') => Some("\""),
            Some('\\') => Some("\\"),
            Some('$') => Some("$$"),
            _ => None,
        };
        if let Some(text) = simple {
            chars.next();
            out.push_str(text);
        } else if chars.peek() == Some(&'0') {
            chars.next();
            out.push_str(&octal_escape(&mut chars));
        } else {
            out.push('\\');
        }
    }
    out
}

/// `\0` followed by up to three digits (the `\0` already consumed): exactly three octal digits
/// worth at most 255 are one character (`\0101` is `A`); anything else is kept literally.
fn octal_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut digits = String::new();
    while digits.len() < 3 {
        match chars.peek() {
            Some(d) if d.is_ascii_digit() => {
                digits.push(*d);
                chars.next();
            }
            _ => break,
        }
    }
    match u8::from_str_radix(&digits, 8) {
        Ok(byte) if digits.len() == 3 => char::from(byte).to_string(),
        _ => format!("\\0{digits}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn shell(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            "A" => Some("from-shell".into()),
            _ => None,
        }
    }

    fn parse_with(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<(String, Option<String>)> {
        match parse_env_text(text, Path::new("test.env"), lookup) {
            Ok(entries) => entries,
            Err(e) => panic!("{text:?} failed: {e}"),
        }
    }

    fn parse(text: &str) -> Vec<(String, Option<String>)> {
        parse_with(text, &no_env)
    }

    fn parse_err(text: &str) -> EnvFileError {
        match parse_env_text(text, Path::new("test.env"), &shell) {
            Ok(entries) => panic!("{text:?} should fail, gave {entries:?}"),
            Err(e) => e,
        }
    }

    fn one(text: &str) -> String {
        match parse(text).as_slice() {
            [(_, Some(value))] => value.clone(),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn set(key: &str, value: &str) -> (String, Option<String>) {
        (key.to_string(), Some(value.to_string()))
    }

    #[test]
    fn blank_lines_and_comments_are_skipped() {
        let text = "\n# a comment\n   # indented comment\nA=1\n\n\t\nB=2 # trailing\n#C=3";
        assert_eq!(parse(text), vec![set("A", "1"), set("B", "2")]);
        assert!(parse("").is_empty());
        assert!(parse("# only a comment").is_empty());
    }

    #[test]
    fn export_prefix_is_ignored() {
        assert_eq!(parse("export A=1\nexport\tB=2"), vec![set("A", "1"), set("B", "2")]);
        assert_eq!(parse("export=3"), vec![set("export", "3")]);
        assert_eq!(parse("exported=4"), vec![set("exported", "4")]);
        // `export` alone is a bare key named export.
        assert_eq!(parse("export"), vec![("export".to_string(), None)]);
    }

    #[test]
    fn unquoted_values_are_trimmed_and_lose_inline_comments() {
        assert_eq!(one("A=  spaced out   "), "spaced out");
        assert_eq!(one("A=value # comment"), "value");
        assert_eq!(one("A=a#b"), "a#b");
        assert_eq!(one("A=http://x/#frag"), "http://x/#frag");
        assert_eq!(one("A=#not-a-comment"), "#not-a-comment");
        assert_eq!(one("A=it's \"fine\""), "it's \"fine\"");
        assert_eq!(one("A=x=y"), "x=y");
        assert_eq!(one("A=a\\nb"), "a\\nb");
    }

    #[test]
    fn keys_may_be_spaced_from_the_equals_sign() {
        assert_eq!(parse("  A = 1"), vec![set("A", "1")]);
    }

    #[test]
    fn yaml_style_colon_is_accepted() {
        assert_eq!(parse("A: 1\nB:2"), vec![set("A", "1"), set("B", "2")]);
        assert_eq!(one("A=b:c"), "b:c");
    }

    #[test]
    fn empty_value_is_an_empty_string() {
        assert_eq!(parse("A=\nB="), vec![set("A", ""), set("B", "")]);
        // As in compose-go, the spaces after `=` are dropped before ` #` is looked for, so this
        // is a value, not a comment.
        assert_eq!(parse("A=   # something"), vec![set("A", "# something")]);
    }

    #[test]
    fn bare_key_takes_its_value_from_the_lookup() {
        assert_eq!(
            parse_with("HOME\nMISSING\nEMPTY", &shell),
            vec![set("HOME", "/home/me"), ("MISSING".to_string(), None), set("EMPTY", ""),]
        );
        assert_eq!(parse_with("export HOME  \r\n", &shell), vec![set("HOME", "/home/me")]);
    }

    #[test]
    fn bare_key_falls_back_to_an_earlier_definition() {
        assert_eq!(parse("X=1\nX"), vec![set("X", "1")]);
    }

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(one("A='${HOME} $X \\n # not a comment'"), "${HOME} $X \\n # not a comment");
        assert_eq!(one("A='it\\'s'"), "it's");
        assert_eq!(one("A='  padded  '"), "  padded  ");
        assert_eq!(one("A=''"), "");
        assert_eq!(one("A='line1\nline2'"), "line1\nline2");
    }

    #[test]
    fn double_quotes_expand_escapes() {
        assert_eq!(one(r#"A="a\nb\tc""#), "a\nb\tc");
        assert_eq!(one(r#"A="say \"hi\"""#), "say \"hi\"");
        assert_eq!(one(r#"A="back\\slash""#), "back\\slash");
        assert_eq!(one(r#"A="\\n is not a newline""#), "\\n is not a newline");
        assert_eq!(one(r#"A="\r\a\b\f\v""#), "\r\u{7}\u{8}\u{c}\u{b}");
        assert_eq!(one(r#"A="unknown \q \x41 \c kept""#), "unknown \\q \\x41 \\c kept");
        assert_eq!(one(r#"A="it\'s""#), "it\\'s");
        assert_eq!(one(r#"A="ends with \\""#), "ends with \\");
    }

    #[test]
    fn octal_escapes_need_three_octal_digits() {
        assert_eq!(one(r#"A="\0101""#), "A");
        assert_eq!(one(r#"A="\01011""#), "A1");
        assert_eq!(one(r#"A="\0""#), "\\0");
        assert_eq!(one(r#"A="\012""#), "\\012");
        assert_eq!(one(r#"A="\0129""#), "\\0129");
        assert_eq!(one(r#"A="\0777""#), "\\0777");
    }

    #[test]
    fn double_quoted_values_span_lines() {
        let entries = parse("A=\"line1\nline2\"\nB=2");
        assert_eq!(entries, vec![set("A", "line1\nline2"), set("B", "2")]);
    }

    #[test]
    fn quoted_values_keep_hashes_and_allow_trailing_comments() {
        assert_eq!(parse("A=\"x # y\"  # comment\nB='#'"), vec![set("A", "x # y"), set("B", "#")]);
    }

    #[test]
    fn unquoted_and_double_quoted_values_are_interpolated() {
        let entries =
            parse_with("A=$HOME/x\nB=\"${HOME}/y\"\nC='$HOME'\nD=${NOPE:-dflt}\nE=\"\\$HOME\"\nF=$$HOME", &shell);
        assert_eq!(
            entries,
            vec![
                set("A", "/home/me/x"),
                set("B", "/home/me/y"),
                set("C", "$HOME"),
                set("D", "dflt"),
                set("E", "$HOME"),
                set("F", "$HOME"),
            ]
        );
    }

    #[test]
    fn interpolation_sees_earlier_keys_after_the_lookup() {
        let entries = parse_with("B=1\nC=${B}-x\nA=file\nD=$A\nE=${LATER:-none}\nLATER=2", &shell);
        assert_eq!(
            entries,
            vec![
                set("B", "1"),
                set("C", "1-x"),
                set("A", "file"),
                // The shell's A wins over the file's, as in compose.
                set("D", "from-shell"),
                set("E", "none"),
                set("LATER", "2"),
            ]
        );
    }

    #[test]
    fn redefinition_keeps_the_first_position_and_the_last_value() {
        assert_eq!(parse("A=1\nB=2\nA=3"), vec![set("A", "3"), set("B", "2")]);
    }

    #[test]
    fn crlf_line_endings_work() {
        assert_eq!(parse("A=1\r\nB=\"2\"\r\n"), vec![set("A", "1"), set("B", "2")]);
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        assert_eq!(parse("\u{feff}A=1"), vec![set("A", "1")]);
    }

    #[test]
    fn key_characters_follow_compose() {
        assert_eq!(parse("a.b-c[0]_d=1\nÜ1=2"), vec![set("a.b-c[0]_d", "1"), set("Ü1", "2")]);
    }

    fn syntax_at(err: &EnvFileError) -> (usize, usize, String) {
        match err {
            EnvFileError::Syntax { line, column, message, .. } => (*line, *column, message.clone()),
            other => panic!("not a syntax error: {other:?}"),
        }
    }

    #[test]
    fn invalid_key_characters_are_reported_with_line_and_column() {
        let err = parse_err("A=1\nFOO!=bar\n");
        let (line, column, message) = syntax_at(&err);
        assert_eq!((line, column), (2, 4));
        assert!(message.contains("unexpected character '!'"), "{message}");
        assert!(err.to_string().starts_with("test.env:2:4: "), "{err}");
        assert!(err.hint().contains("names may contain"));
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn spaces_inside_keys_are_errors() {
        let (line, _, message) = syntax_at(&parse_err("\n\nFOO BAR=1"));
        assert_eq!(line, 3);
        assert!(message.contains("contains a space"), "{message}");
        let (_, _, message) = syntax_at(&parse_err("FOO BAR"));
        assert!(message.contains("contains a space"), "{message}");
    }

    #[test]
    fn missing_key_is_an_error() {
        let (line, column, message) = syntax_at(&parse_err("A=1\n=2"));
        assert_eq!((line, column), (2, 1));
        assert!(message.contains("missing variable name"), "{message}");
    }

    #[test]
    fn unterminated_quotes_point_at_the_opening_quote() {
        let err = parse_err("A=1\nB=\"abc\nC=2\n");
        let (line, column, message) = syntax_at(&err);
        assert_eq!((line, column), (2, 3));
        assert!(message.contains("unterminated double-quoted value"), "{message}");
        let (line, _, message) = syntax_at(&parse_err("B='abc"));
        assert_eq!(line, 1);
        assert!(message.contains("unterminated single-quoted"), "{message}");
        syntax_at(&parse_err("B=\"abc\\\""));
    }

    #[test]
    fn text_after_a_closing_quote_is_an_error() {
        let (line, column, message) = syntax_at(&parse_err("A=\"x\"y"));
        assert_eq!((line, column), (1, 6));
        assert!(message.contains("after the closing"), "{message}");
    }

    #[test]
    fn interpolation_errors_name_the_key_and_line() {
        let err = parse_err("A=1\nB=${NOPE:?please set NOPE}");
        match &err {
            EnvFileError::Interpolation { line, key, error, .. } => {
                assert_eq!((*line, key.as_str()), (2, "B"));
                assert!(matches!(error, TemplateError::MissingRequired { .. }));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.to_string(), "test.env:2: B: required variable NOPE is missing a value: please set NOPE");
        assert!(matches!(parse_err("A=\"${oops\""), EnvFileError::Interpolation { .. }));
        // Single-quoted values are never interpolated, so they cannot fail.
        assert_eq!(parse("A='${oops'"), vec![set("A", "${oops")]);
    }

    #[test]
    fn missing_file_is_its_own_variant() {
        let path = Path::new("/nonexistent/shoal-test/.env");
        let err = read_env_file(path, &no_env).unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(err.file(), path);
    }

    #[test]
    fn reads_a_file_from_disk() {
        let dir = std::env::temp_dir().join(format!("shoal-dotenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("good.env");
        std::fs::write(&path, "A=1\nB=\"${A}2\"\n").unwrap();
        assert_eq!(read_env_file(&path, &no_env).unwrap(), vec![set("A", "1"), set("B", "12")]);

        let bad = dir.join("bad.env");
        std::fs::write(&bad, b"A=1\nB=\xff\n").unwrap();
        let err = read_env_file(&bad, &no_env).unwrap_err();
        assert_eq!(syntax_at(&err).0, 2);

        // A directory exists but cannot be read as a file.
        let err = read_env_file(&dir, &no_env).unwrap_err();
        assert!(matches!(err, EnvFileError::Read { .. }), "{err:?}");
        assert!(!err.is_not_found());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn converts_to_a_load_error_with_position() {
        let load: LoadError = parse_err("A=1\nFOO!=x").into();
        assert_eq!(load.location.file, PathBuf::from("test.env"));
        assert_eq!((load.location.line, load.location.column), (2, 4));
        assert!(load.hint.is_some());
    }

    proptest! {
        #[test]
        fn never_panics(text in any::<String>()) {
            let _ = parse_env_text(&text, Path::new("p.env"), &shell);
        }

        #[test]
        fn never_panics_on_env_like_input(text in "[A-Za-z_=:#'\"\\\\$ {}\n\r\t0-9-]{0,60}") {
            let _ = parse_env_text(&text, Path::new("p.env"), &shell);
        }

        #[test]
        fn single_quoted_values_round_trip(key in "[A-Za-z_][A-Za-z0-9_]{0,8}", value in "[^'\\\\]*") {
            let text = format!("{key}='{value}'\n");
            let entries = parse_env_text(&text, Path::new("p.env"), &no_env);
            prop_assert_eq!(entries.ok(), Some(vec![(key, Some(value))]));
        }
    }
}
