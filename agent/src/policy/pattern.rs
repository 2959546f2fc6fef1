//! Cgroup path patterns: the left-hand side of a workload selector.
//!
//! A pattern is a cgroup path relative to the agent's scope whose segments are
//! literals, `*` (any one segment), `<name>` (any one segment, captured) or,
//! as the last segment only, `<name...>` (one or more remaining segments,
//! captured joined with `/`). Parsing checks everything that can be checked
//! without the rest of the config; which captures a template may use is
//! checked by the config module, which sees both sides.

use std::fmt;

/// Why a cgroup pattern is not valid. Each message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty; write a cgroup path such as \"/grid/<ns>/<name>\"")]
    Empty,
    #[error("a cgroup pattern starts with '/' (it is relative to the scope); write \"/{text}\"")]
    NotAbsolute { text: String },
    #[error("the pattern ends with '/'; remove the trailing '/'")]
    TrailingSlash,
    #[error("the pattern has an empty segment ('//'); write a single '/' between segments")]
    EmptySegment,
    #[error("the pattern has the segment {segment:?}; cgroup paths have no '.' or '..' segments")]
    DotSegment { segment: String },
    #[error("the pattern holds a NUL character, which no cgroup name can hold")]
    Nul,
    #[error(
        "the segment {segment:?} mixes a capture with text; '<' and '>' must enclose a whole \
         segment, as in \"/<name>\""
    )]
    PartialCapture { segment: String },
    #[error(
        "the segment {segment:?} mixes '*' with text; '*' stands for one whole segment and \
         patterns have no partial wildcards"
    )]
    PartialWildcard { segment: String },
    #[error(
        "{name:?} is not a capture name; names use letters, digits and '_' and do not start \
         with a digit, e.g. <ns>"
    )]
    BadCaptureName { name: String },
    #[error(
        "<{name}...> takes the rest of the path, so it must be the last segment; use <{name}> \
         for one segment"
    )]
    RestNotLast { name: String },
    #[error(
        "<{name}> is captured twice; give each capture its own name, or write '*' for a \
         segment you do not need"
    )]
    DuplicateCapture { name: String },
}

/// One segment of a cgroup pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this cgroup name.
    Literal(String),
    /// `*`: any one segment, not captured.
    Any,
    /// `<name>`: any one segment, captured.
    Capture(String),
    /// `<name...>`: one or more remaining segments, captured joined with `/`.
    Rest(String),
}

/// A parsed, valid cgroup pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPattern {
    text: String,
    segments: Vec<Segment>,
}

/// What a pattern captured from one path: capture name and value, in pattern
/// order.
pub type Captures<'p> = Vec<(&'p str, String)>;

impl CgroupPattern {
    /// Parses a pattern such as `/grid/<ns>/<name>`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.contains('\0') {
            return Err(PatternError::Nul);
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err(PatternError::NotAbsolute { text: text.to_owned() });
        };
        let mut segments = Vec::new();
        if !body.is_empty() {
            if body.ends_with('/') {
                return Err(PatternError::TrailingSlash);
            }
            for raw in body.split('/') {
                segments.push(parse_segment(raw)?);
            }
        }
        check_segments(&segments)?;
        Ok(Self { text: text.to_owned(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Names of every capture, in order.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Capture(name) | Segment::Rest(name) => Some(name.as_str()),
            Segment::Literal(_) | Segment::Any => None,
        })
    }

    /// Whether `name` captures the rest of the path (`<name...>`).
    pub fn is_rest_capture(&self, name: &str) -> bool {
        matches!(self.segments.last(), Some(Segment::Rest(rest)) if rest == name)
    }

    /// The literal segments before the first wildcard or capture, as a path:
    /// `/grid` for `/grid/<ns>/<name>`, `/` for `/<path...>`.
    pub fn literal_prefix(&self) -> String {
        let literals: Vec<&str> = self
            .segments
            .iter()
            .map_while(|segment| match segment {
                Segment::Literal(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        format!("/{}", literals.join("/"))
    }

    /// Matches a path given as its segments (`[]` for the scope root).
    pub fn matches(&self, path: &[&str]) -> Option<Captures<'_>> {
        let has_rest = matches!(self.segments.last(), Some(Segment::Rest(_)));
        let length_fits = if has_rest {
            path.len() >= self.segments.len()
        } else {
            path.len() == self.segments.len()
        };
        if !length_fits {
            return None;
        }
        let mut captures = Vec::new();
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(text) if text == path[index] => {}
                Segment::Literal(_) => return None,
                Segment::Any => {}
                Segment::Capture(name) => captures.push((name.as_str(), path[index].to_owned())),
                Segment::Rest(name) => captures.push((name.as_str(), path[index..].join("/"))),
            }
        }
        Some(captures)
    }
}

impl fmt::Display for CgroupPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_segment(raw: &str) -> Result<Segment, PatternError> {
    if raw.is_empty() {
        return Err(PatternError::EmptySegment);
    }
    if raw == "." || raw == ".." {
        return Err(PatternError::DotSegment { segment: raw.to_owned() });
    }
    if raw == "*" {
        return Ok(Segment::Any);
    }
    if let Some(inner) = raw.strip_prefix('<').and_then(|rest| rest.strip_suffix('>')) {
        return parse_capture(inner, raw);
    }
    if raw.contains(['<', '>']) {
        return Err(PatternError::PartialCapture { segment: raw.to_owned() });
    }
    if raw.contains('*') {
        return Err(PatternError::PartialWildcard { segment: raw.to_owned() });
    }
    Ok(Segment::Literal(raw.to_owned()))
}

fn parse_capture(inner: &str, raw: &str) -> Result<Segment, PatternError> {
    if inner.contains(['<', '>']) {
        return Err(PatternError::PartialCapture { segment: raw.to_owned() });
    }
    let (name, rest) = match inner.strip_suffix("...") {
        Some(name) => (name, true),
        None => (inner, false),
    };
    check_capture_name(name)?;
    let name = name.to_owned();
    Ok(if rest { Segment::Rest(name) } else { Segment::Capture(name) })
}

/// Checks a capture name: letters, digits and '_', not starting with a digit.
pub fn check_capture_name(name: &str) -> Result<(), PatternError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(PatternError::BadCaptureName { name: name.to_owned() })
    }
}

/// Checks what only the whole pattern shows: `<name...>` placement and
/// duplicate capture names.
fn check_segments(segments: &[Segment]) -> Result<(), PatternError> {
    let last = segments.len().saturating_sub(1);
    let mut seen: Vec<&str> = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        let name = match segment {
            Segment::Rest(name) if index != last => {
                return Err(PatternError::RestNotLast { name: name.clone() });
            }
            Segment::Capture(name) | Segment::Rest(name) => name.as_str(),
            Segment::Literal(_) | Segment::Any => continue,
        };
        if seen.contains(&name) {
            return Err(PatternError::DuplicateCapture { name: name.to_owned() });
        }
        seen.push(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> CgroupPattern {
        CgroupPattern::parse(text).expect("valid pattern")
    }

    fn segs(path: &str) -> Vec<&str> {
        path.split('/').filter(|s| !s.is_empty()).collect()
    }

    #[test]
    fn parses_every_segment_kind() {
        let p = pattern("/grid/*/<name>/<rest...>");
        assert_eq!(
            p.segments(),
            [
                Segment::Literal("grid".into()),
                Segment::Any,
                Segment::Capture("name".into()),
                Segment::Rest("rest".into()),
            ]
        );
        assert_eq!(p.capture_names().collect::<Vec<_>>(), ["name", "rest"]);
        assert!(p.is_rest_capture("rest"));
        assert!(!p.is_rest_capture("name"));
        assert_eq!(pattern("/").segments(), []);
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(pattern("/grid/<ns>/<name>").literal_prefix(), "/grid");
        assert_eq!(pattern("/<path...>").literal_prefix(), "/");
        assert_eq!(pattern("/a/b/c").literal_prefix(), "/a/b/c");
        assert_eq!(pattern("/a/*/c").literal_prefix(), "/a");
        assert_eq!(pattern("/").literal_prefix(), "/");
    }

    #[test]
    fn matches_and_captures() {
        let p = pattern("/grid/<ns>/<name>");
        let caps = p.matches(&segs("/grid/shop/payments")).expect("matches");
        assert_eq!(caps, [("ns", "shop".to_owned()), ("name", "payments".to_owned())]);
        assert!(p.matches(&segs("/grid/shop")).is_none());
        assert!(p.matches(&segs("/grid/shop/payments/c1")).is_none());
        assert!(p.matches(&segs("/other/shop/payments")).is_none());

        let any = pattern("/grid/*/<name>");
        assert_eq!(any.matches(&segs("/grid/x/y")).expect("matches"), [("name", "y".into())]);
    }

    #[test]
    fn rest_capture_takes_one_or_more_segments() {
        let p = pattern("/k/<path...>");
        assert!(p.matches(&segs("/k")).is_none());
        assert_eq!(p.matches(&segs("/k/a")).expect("one"), [("path", "a".into())]);
        assert_eq!(p.matches(&segs("/k/a/b/c")).expect("three"), [("path", "a/b/c".into())]);
        assert!(pattern("/<p...>").matches(&[]).is_none());
        assert_eq!(pattern("/").matches(&[]).expect("root"), []);
    }

    #[test]
    fn rejects_malformed_patterns_with_a_reason() {
        let cases = [
            ("", PatternError::Empty),
            ("grid/<ns>", PatternError::NotAbsolute { text: "grid/<ns>".into() }),
            ("/grid/", PatternError::TrailingSlash),
            ("/grid//x", PatternError::EmptySegment),
            ("/grid/..", PatternError::DotSegment { segment: "..".into() }),
            ("/a\0b", PatternError::Nul),
            ("/pod-<name>", PatternError::PartialCapture { segment: "pod-<name>".into() }),
            ("/<a><b>", PatternError::PartialCapture { segment: "<a><b>".into() }),
            ("/x>", PatternError::PartialCapture { segment: "x>".into() }),
            ("/pod*", PatternError::PartialWildcard { segment: "pod*".into() }),
            ("/<1a>", PatternError::BadCaptureName { name: "1a".into() }),
            ("/<>", PatternError::BadCaptureName { name: "".into() }),
            ("/<a b>", PatternError::BadCaptureName { name: "a b".into() }),
            ("/<p...>/x", PatternError::RestNotLast { name: "p".into() }),
            ("/<a>/<a>", PatternError::DuplicateCapture { name: "a".into() }),
            ("/<a>/<a...>", PatternError::DuplicateCapture { name: "a".into() }),
        ];
        for (text, expected) in cases {
            assert_eq!(CgroupPattern::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn literals_may_hold_any_cgroup_name_characters() {
        let p = pattern("/system.slice/my service@1.service");
        assert!(p.matches(&["system.slice", "my service@1.service"]).is_some());
    }
}
