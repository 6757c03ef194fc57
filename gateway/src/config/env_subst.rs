//! `${VAR}` and `${VAR:-default}` in the config file, replaced before parsing.
//!
//! A fleet shares one config template and each box (or its systemd unit's `Environment=`)
//! fills in what differs: `url = "${INFLUX_URL}"`, `id = "${GATEWAY_ID:-cabinet-000}"`.
//! Telegraf, Vector and Fluent Bit all do this; the rules here are theirs, kept small:
//! - `${NAME}` is the variable's value; unset (or set to non-UTF-8) is an error naming it and
//!   its line; `${NAME:-default}` uses `default` when the variable is unset or empty;
//! - `$${` stands for a literal `${`; a `$` not followed by `{` is left alone;
//! - names are `[A-Za-z_][A-Za-z0-9_]*`; anything else inside `${…}` is an error;
//! - comment lines (first non-blank character `#`) are left as they are;
//! - a value holding a newline (or a carriage return) is refused: it could add keys to the
//!   file, and it would shift every later line number in error messages.
//!
//! Substitution keeps line numbers, so an error found in the substituted text is reported at
//! the same line of the file; messages quote the file's own line, never the value (it may be a
//! secret).

/// Why substitution failed, with the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstError {
    pub line: usize,
    pub message: String,
}

/// Replaces `${…}` in `text`, looking names up with `lookup`.
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, SubstError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        if line.trim_start().starts_with('#') || !line.contains('$') {
            out.push_str(line);
            continue;
        }
        substitute_line(line, number, &lookup, &mut out)?;
    }
    Ok(out)
}

fn substitute_line(
    line: &str,
    number: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), SubstError> {
    let err = |message: String| SubstError {
        line: number,
        message,
    };
    let mut rest = line;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let close = tail
                .find('}')
                .ok_or_else(|| err("`${` without a closing `}`".into()))?;
            let inner = &tail[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !is_name(name) {
                return Err(err(format!(
                    "`${{{inner}}}`: a variable name is letters, digits and `_`, not starting \
                     with a digit (write `$${{` for a literal `${{`)"
                )));
            }
            let value = match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_owned(),
                (None, None) => {
                    return Err(err(format!(
                        "environment variable {name} is not set (use `${{{name}:-default}}` \
                         for a default)"
                    )))
                }
            };
            if value.contains(['\n', '\r']) {
                return Err(err(format!(
                    "the value of {name} holds a line break, which a config value cannot take \
                     here"
                )));
            }
            out.push_str(&value);
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(())
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Looks a name up in the process environment (non-UTF-8 values count as unset).
pub fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "URL" => Some("http://store:8428".into()),
            "EMPTY" => Some(String::new()),
            "TWO_LINES" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let text = "url = \"${URL}\"\nid = \"${GATEWAY_ID:-cab-7}\"\nx = \"${EMPTY:-d}\"\n";
        assert_eq!(
            substitute(text, env).unwrap(),
            "url = \"http://store:8428\"\nid = \"cab-7\"\nx = \"d\"\n"
        );
    }

    #[test]
    fn an_unset_variable_names_itself_and_its_line() {
        let e = substitute("a = 1\nurl = \"${NOPE}\"\n", env).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("NOPE"), "{}", e.message);
    }

    #[test]
    fn escapes_comments_and_lone_dollars_are_kept() {
        let text = "# ${NOPE} in a comment\np = \"$${HOME} costs $5\"\n";
        assert_eq!(
            substitute(text, env).unwrap(),
            "# ${NOPE} in a comment\np = \"${HOME} costs $5\"\n"
        );
    }

    #[test]
    fn a_line_break_in_a_value_is_refused() {
        let e = substitute("v = \"${TWO_LINES}\"", env).unwrap_err();
        assert!(e.message.contains("TWO_LINES"));
        assert!(!e.message.contains("a\nb"));
    }

    #[test]
    fn bad_names_and_unclosed_braces_are_errors() {
        assert!(substitute("v = \"${1X}\"", env).is_err());
        assert!(substitute("v = \"${URL\"", env).is_err());
        assert!(substitute("v = \"${}\"", env).is_err());
    }

    #[test]
    fn line_count_is_kept() {
        let text = "a = \"${URL}\"\n\nb = \"${X:-y}\"\n";
        let out = substitute(text, env).unwrap();
        assert_eq!(out.lines().count(), text.lines().count());
    }
}
