//! Config errors, and the translation of YAML and serde errors into them.
//!
//! Every problem is reported as `file:line:column: field: what is wrong; how
//! to fix it`. serde_yaml_ng knows the line and column of a value only while
//! that value is being deserialized, so field checks raise their errors right
//! there (see `fields`), wrapped in markers that let us recover our own
//! message from serde_yaml_ng's decorated one. serde's own messages (unknown
//! field, wrong type) are reworded here with a hint.

use std::fmt::{self, Write as _};
use std::path::PathBuf;

use super::locate::{self, Seg};

/// How many problems one error shows; the rest are counted.
pub const MAX_SHOWN: usize = 20;

/// Brackets a field check's own message inside a serde error. NUL cannot
/// occur in our messages: every echoed value is `Debug`-escaped.
const MARK: char = '\0';

/// One thing wrong with a config, where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; `None` when the position is not known.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// The field path, such as `rules[1].ports[0]`; empty for the whole file.
    pub field: String,
    /// What is wrong and how to fix it; lowercase, no final period.
    pub message: String,
}

impl Problem {
    pub(super) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { line: None, column: None, field: field.into(), message: message.into() }
    }

    pub(super) fn at(mut self, position: Option<(usize, usize)>) -> Self {
        if let Some((line, column)) = position {
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }

    /// Writes `origin:line:column: field: message`, leaving out what is
    /// unknown. Keys and file names come from the user, so all of it is
    /// escaped.
    fn render(&self, origin: &str, out: &mut String) -> fmt::Result {
        let mut line = format!("{origin}:");
        if let (Some(number), Some(column)) = (self.line, self.column) {
            write!(line, "{number}:{column}:")?;
        }
        if !self.field.is_empty() {
            write!(line, " {}:", self.field)?;
        }
        write!(line, " {}", self.message)?;
        out.push_str(&escape_controls(&line));
        Ok(())
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: the file is larger than {max} bytes; is this the config file?")]
    TooLarge { origin: String, max: u64 },
    #[error("{}", render_all(origin, problems))]
    Invalid { origin: String, problems: Vec<Problem> },
}

impl ConfigError {
    pub(super) fn invalid(origin: &str, problems: Vec<Problem>) -> Self {
        Self::Invalid { origin: origin.to_owned(), problems }
    }

    /// Every problem found; empty for read errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } | ConfigError::TooLarge { .. } => &[],
        }
    }
}

fn render_all(origin: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (index, problem) in problems.iter().take(MAX_SHOWN).enumerate() {
        if index > 0 {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = problem.render(origin, &mut out);
    }
    if problems.len() > MAX_SHOWN {
        let more = format!("{origin}: and {} more problems", problems.len() - MAX_SHOWN);
        let _ = write!(out, "\n{}", escape_controls(&more));
    }
    out
}

/// Shows control characters (a terminal escape in a key, say) as escapes, so
/// that printing an error cannot drive the terminal.
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// Wraps a field check's message so that [`from_yaml`] can find it again.
pub(super) fn marked(message: &str) -> String {
    format!("{MARK}{}{MARK}", message.replace(MARK, "\\0"))
}

/// Our own message inside a decorated serde_yaml_ng message, if any. Keys
/// in the path before it may hold NUL; our message holds none, so it is what
/// lies between the last two markers.
fn unmark(text: &str) -> Option<&str> {
    let end = text.rfind(MARK)?;
    let start = text[..end].rfind(MARK)?;
    Some(&text[start + MARK.len_utf8()..end])
}

/// Turns the first error serde_yaml_ng met into a problem.
pub(super) fn from_yaml(
    error: serde_path_to_error::Error<serde_yaml_ng::Error>,
    text: &str,
) -> Problem {
    let field = field_path(&error.path().to_string());
    let segs = path_segments(error.path());
    let inner = error.into_inner();
    let position = inner.location().map(|at| (at.line(), at.column()));
    let shown = inner.to_string();
    if let Some(own) = unmark(&shown) {
        return Problem::new(field, own).at(position);
    }
    let bare = strip_decoration(&shown, position);
    if let Some(name) = quoted_after(&bare, "duplicate field `") {
        // serde points at the mapping; the second key is more useful.
        let second = locate::find(text, &segs, Some((name, 2))).or(position);
        let message = format!("`{name}` is set twice here; keep one of them");
        return Problem::new(field, message).at(second);
    }
    Problem::new(field, reword(&bare)).at(position)
}

/// serde_path_to_error writes the root as `.` and unknown steps as `?`.
fn field_path(path: &str) -> String {
    let mut path = path;
    while let Some(shorter) = path.strip_suffix(".?").or_else(|| path.strip_suffix('?')) {
        path = shorter;
    }
    if path == "." { String::new() } else { path.to_owned() }
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// serde messages this module knows how to reword, in the order tried.
const SERDE_PHRASES: [&str; 9] = [
    "unknown field `",
    "missing field `",
    "duplicate field `",
    "invalid type: ",
    "invalid value: ",
    "invalid length ",
    "unknown variant `",
    "deserializing from YAML containing more than one document",
    "unknown anchor",
];

/// Removes serde_yaml_ng's `path: ` prefix and its ` at line L column C`,
/// which the problem's own position already says.
fn strip_decoration(shown: &str, position: Option<(usize, usize)>) -> String {
    let mut text = shown.to_owned();
    if let Some((line, column)) = position {
        // libyaml may add context after the position ("while scanning a
        // quoted scalar at ..."); that part stays.
        text = text.replacen(&format!(" at line {line} column {column}"), "", 1);
    }
    let start = SERDE_PHRASES
        .iter()
        .filter_map(|phrase| text.find(phrase))
        .filter(|at| *at == 0 || text[..*at].ends_with(": "))
        .min();
    match start {
        Some(at) => text[at..].to_owned(),
        None => text,
    }
}

/// The text between `prefix` and the next backtick.
fn quoted_after<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let rest = text.strip_prefix(prefix)?;
    rest.find('`').map(|end| &rest[..end])
}

fn reword(message: &str) -> String {
    if let Some(name) = quoted_after(message, "unknown field `") {
        return unknown_field(name, &expected_fields(message));
    }
    if let Some(name) = quoted_after(message, "missing field `") {
        return format!("missing field `{name}`; {}", missing_hint(name));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        return invalid_type(rest);
    }
    if message.starts_with("deserializing from YAML containing more than one document") {
        return "the file holds more than one YAML document; keep one and remove the '---' lines"
            .to_owned();
    }
    if SERDE_PHRASES.iter().any(|phrase| message.starts_with(phrase)) {
        return message.to_owned();
    }
    format!("the file is not valid YAML here: {message}")
}

/// The field names listed after "expected ..." in serde's unknown-field text.
fn expected_fields(message: &str) -> Vec<&str> {
    let Some(at) = message.find("expected") else { return Vec::new() };
    message[at..].split('`').skip(1).step_by(2).collect()
}

/// Common misspellings that edit distance alone would not catch.
const ALIASES: [(&str, &str); 12] = [
    ("src", "from"),
    ("source", "from"),
    ("sources", "from"),
    ("dst", "to"),
    ("dest", "to"),
    ("destination", "to"),
    ("destinations", "to"),
    ("proto", "protocol"),
    ("selectors", "workloads"),
    ("policy", "rules"),
    ("policies", "rules"),
    ("id", "spiffe_id"),
];

fn unknown_field(name: &str, known: &[&str]) -> String {
    if name == "<<" {
        // serde_yaml_ng applies merge keys only to untyped values, which
        // carry no positions; refusing them keeps every error placed.
        return "YAML merge keys (<<) are not supported here; write the fields out".to_owned();
    }
    let listed = known.iter().map(|field| format!("`{field}`")).collect::<Vec<_>>().join(", ");
    let here = if known.is_empty() {
        "nothing else belongs here".to_owned()
    } else {
        format!("the fields here are {listed}")
    };
    match suggest(name, known) {
        Some(best) => format!("unknown field `{name}`; did you mean `{best}`? {here}"),
        None => format!("unknown field `{name}`; {here}"),
    }
}

fn suggest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = name.to_ascii_lowercase().replace('-', "_");
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == lower) {
        return known.iter().find(|field| *field == to).copied();
    }
    known
        .iter()
        .map(|field| (edit_distance(&lower, field), *field))
        // Two edits at most, and fewer than half the name: "at" is not "to".
        .filter(|(distance, field)| *distance <= 2 && *distance * 2 <= field.len())
        .min()
        .map(|(_, field)| field)
}

/// Levenshtein distance, for "did you mean" hints on short field names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

fn missing_hint(name: &str) -> &'static str {
    match name {
        "trust_domain" => {
            "add the trust domain this agent speaks for, e.g. trust_domain: grid.local"
        }
        "cgroup" => {
            "add the cgroup pattern this selector matches, e.g. cgroup: \"/grid/<ns>/<name>\""
        }
        "spiffe_id" => {
            "add the ID its workloads get, e.g. spiffe_id: \
                \"spiffe://grid.local/ns/<ns>/sa/<name>\""
        }
        "from" => "add who may connect, e.g. from: [\"spiffe://grid.local/ns/shop/sa/gateway\"]",
        "to" => "add what they may connect to, e.g. to: [\"spiffe://grid.local/ns/shop/sa/api\"]",
        _ => "add it",
    }
}

/// Rewords serde's "invalid type: FOUND, expected WANTED".
fn invalid_type(rest: &str) -> String {
    let (found, wanted) = rest.split_once(", expected ").unwrap_or((rest, "something else"));
    let wanted = match wanted {
        "a sequence" => "a list, e.g. [a, b]",
        "a boolean" => "true or false",
        w if w.starts_with("struct ") || w == "a map" => "a mapping of `key: value` lines",
        w => w,
    };
    let found = match found {
        "unit value" => "nothing",
        "sequence" => "a list",
        "map" => "a mapping",
        f => f,
    };
    format!("expected {wanted}, found {found}")
}

/// Decodes file bytes, pointing at the first byte that is not UTF-8.
pub(super) fn utf8(bytes: Vec<u8>) -> Result<String, Problem> {
    String::from_utf8(bytes).map_err(|error| {
        let good = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        // The prefix is valid UTF-8 by construction.
        let before = String::from_utf8_lossy(good);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
        Problem::new("", "the file is not UTF-8 text from here on; save it as UTF-8")
            .at(Some((line, column)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("ports", "ports"), 0);
        assert_eq!(edit_distance("prots", "ports"), 2);
        assert_eq!(edit_distance("port", "ports"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggests_close_names_and_aliases() {
        let fields = ["name", "from", "to", "ports", "protocol", "direction"];
        assert_eq!(suggest("prots", &fields), Some("ports"));
        assert_eq!(suggest("src", &fields), Some("from"));
        assert_eq!(suggest("Direction", &fields), Some("direction"));
        assert_eq!(suggest("colour", &fields), None);
        assert_eq!(suggest("at", &fields), None);
        assert_eq!(suggest("trustDomain", &["trust_domain", "mode"]), Some("trust_domain"));
    }

    #[test]
    fn unmark_finds_the_last_marked_message() {
        let shown = format!("a\0b: {} at line 1 column 2", marked("own \"x\""));
        assert_eq!(unmark(&shown), Some("own \"x\""));
        assert_eq!(unmark("no marks"), None);
    }

    #[test]
    fn rendering_escapes_control_characters() {
        let problem = Problem::new("f", "bad \u{1b}[31m").at(Some((3, 4)));
        let mut out = String::new();
        problem.render("c.yaml", &mut out).expect("render");
        assert_eq!(out, "c.yaml:3:4: f: bad \\u{1b}[31m");
    }

    #[test]
    fn shows_at_most_max_problems() {
        let problems = vec![Problem::new("", "x"); MAX_SHOWN + 3];
        let text = ConfigError::invalid("c.yaml", problems).to_string();
        assert_eq!(text.lines().count(), MAX_SHOWN + 1);
        assert!(text.ends_with("c.yaml: and 3 more problems"), "{text}");
    }

    #[test]
    fn non_utf8_is_located() {
        let problem = utf8(b"a: b\ncd\xff".to_vec()).expect_err("not utf-8");
        assert_eq!((problem.line, problem.column), (Some(2), Some(3)));
    }
}
