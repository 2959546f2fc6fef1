//! SPIFFE ID templates: the right-hand side of a workload selector.
//!
//! A template is a SPIFFE ID whose path may hold `<name>` (or `<name...>`,
//! same meaning) wherever a cgroup pattern's capture is to be inserted. The
//! trust domain is always literal. Filling a template yields an ID that went
//! through [`SpiffeId::parse`] like every other, so an odd cgroup name can
//! never produce an ID that the specification forbids.

use std::fmt;

use super::pattern::{Captures, CgroupPattern, PatternError, check_capture_name};
use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain, is_path_char};

const SCHEME: &str = "spiffe://";

/// Why a template is not valid. Each message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "a SPIFFE ID template starts with \"spiffe://\", e.g. \
         \"spiffe://grid.local/ns/<ns>/sa/<name>\""
    )]
    NotSpiffe,
    #[error(
        "the trust domain cannot hold a capture; write it out, e.g. spiffe://grid.local/<name>"
    )]
    CaptureInTrustDomain,
    #[error("the trust domain is not valid: {reason}")]
    BadTrustDomain { reason: SpiffeIdError },
    #[error(
        "the template has no path, so every workload would get the same ID; add one, e.g. \
         \"spiffe://{trust_domain}/workload/<name>\""
    )]
    NoPath { trust_domain: String },
    #[error("a '<' is not closed by '>'; write captures as <name>")]
    Unclosed,
    #[error("a '>' has no matching '<'; write captures as <name>")]
    StrayClose,
    #[error("{0}")]
    BadCaptureName(PatternError),
    #[error("the path is not valid even before captures are filled in: {reason}")]
    InvalidPath { reason: SpiffeIdError },
}

/// Why filling a template for one cgroup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    #[error(
        "the cgroup name {value:?} captured as <{capture}> has the character {found:?}, which \
         a SPIFFE ID path cannot hold; set sanitize: true on the selector to replace such \
         characters with '_'"
    )]
    BadCharacter { capture: String, value: String, found: char },
    #[error("the template uses <{capture}>, which the pattern did not capture")]
    UnknownCapture { capture: String },
    #[error("the filled-in ID is not valid: {reason}")]
    Invalid { reason: SpiffeIdError },
}

/// One piece of a template's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Capture(String),
}

/// A parsed, valid SPIFFE ID template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTemplate {
    text: String,
    trust_domain: TrustDomain,
    parts: Vec<Part>,
}

impl IdTemplate {
    /// Parses a template such as `spiffe://grid.local/ns/<ns>/sa/<name>`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let rest = text.strip_prefix(SCHEME).ok_or(TemplateError::NotSpiffe)?;
        let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if domain.contains(['<', '>']) {
            return Err(TemplateError::CaptureInTrustDomain);
        }
        let trust_domain = TrustDomain::parse(domain)
            .map_err(|reason| TemplateError::BadTrustDomain { reason })?;
        if path.is_empty() {
            return Err(TemplateError::NoPath { trust_domain: domain.to_owned() });
        }
        let parts = parse_parts(path)?;
        let template = Self { text: text.to_owned(), trust_domain, parts };
        template.check_literals()?;
        Ok(template)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Names of the captures the template uses, in order, repeats included.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Capture(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Fills in captured values. With `sanitize`, characters a path segment
    /// cannot hold become `_`; without it they make the fill fail.
    pub fn fill(&self, captures: &Captures<'_>, sanitize: bool) -> Result<SpiffeId, FillError> {
        let mut path = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => path.push_str(text),
                Part::Capture(name) => path.push_str(&captured(captures, name, sanitize)?),
            }
        }
        SpiffeId::from_parts(&self.trust_domain, &path)
            .map_err(|reason| FillError::Invalid { reason })
    }

    /// Whether some cgroup that `pattern` matches could be given an ID whose
    /// path is `target` (or, with `prefix`, starts with `target` and goes on).
    pub fn could_produce(&self, pattern: &CgroupPattern, target: &str, prefix: bool) -> bool {
        Producer { parts: &self.parts, pattern, target: target.as_bytes(), prefix }.run()
    }

    /// Fills every capture with a harmless value, so that a bad literal part
    /// is reported now rather than for every cgroup later.
    fn check_literals(&self) -> Result<(), TemplateError> {
        let mut path = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => path.push_str(text),
                Part::Capture(_) => path.push('x'),
            }
        }
        SpiffeId::from_parts(&self.trust_domain, &path)
            .map(drop)
            .map_err(|reason| TemplateError::InvalidPath { reason })
    }
}

impl fmt::Display for IdTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_parts(path: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let open = rest.find('<').unwrap_or(rest.len());
        let literal = &rest[..open];
        if literal.contains('>') {
            return Err(TemplateError::StrayClose);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.to_owned()));
        }
        rest = &rest[open..];
        if let Some(after) = rest.strip_prefix('<') {
            let close = after.find('>').ok_or(TemplateError::Unclosed)?;
            let inner = &after[..close];
            let name = inner.strip_suffix("...").unwrap_or(inner);
            if name.contains('<') {
                return Err(TemplateError::Unclosed);
            }
            check_capture_name(name).map_err(TemplateError::BadCaptureName)?;
            parts.push(Part::Capture(name.to_owned()));
            rest = &after[close + 1..];
        }
    }
    Ok(parts)
}

fn captured(captures: &Captures<'_>, name: &str, sanitize: bool) -> Result<String, FillError> {
    let Some((_, value)) = captures.iter().find(|(capture, _)| *capture == name) else {
        return Err(FillError::UnknownCapture { capture: name.to_owned() });
    };
    if sanitize {
        return Ok(sanitize_value(value));
    }
    // '/' only appears in `<name...>` values, where it separates segments.
    match value.chars().find(|c| *c != '/' && !is_path_char(*c)) {
        Some(found) => {
            Err(FillError::BadCharacter { capture: name.to_owned(), value: value.clone(), found })
        }
        None => Ok(value.clone()),
    }
}

/// Replaces what a SPIFFE path segment cannot hold with `_`, keeping `/`
/// between segments. `.` and `..` segments, which the specification forbids,
/// become `_` and `__`.
pub fn sanitize_value(value: &str) -> String {
    let segments: Vec<String> = value
        .split('/')
        .map(|segment| match segment {
            "." => "_".to_owned(),
            ".." => "__".to_owned(),
            _ => segment.chars().map(|c| if is_path_char(c) { c } else { '_' }).collect(),
        })
        .collect();
    segments.join("/")
}

/// Decides whether a template can produce a given path, by tracking every
/// position of `target` that the template's parts can have consumed so far.
struct Producer<'a> {
    parts: &'a [Part],
    pattern: &'a CgroupPattern,
    target: &'a [u8],
    prefix: bool,
}

impl Producer<'_> {
    fn run(&self) -> bool {
        let end = self.target.len();
        let mut reached = vec![false; end + 1];
        reached[0] = true;
        for part in self.parts {
            let mut next = vec![false; end + 1];
            if self.step(part, &reached, &mut next) {
                return true;
            }
            reached = next;
        }
        // In prefix mode an ID equal to the prefix would end in '/', which
        // no valid ID does; only a longer one counts, and `step` saw those.
        !self.prefix && reached[end]
    }

    /// Advances over one part. Returns true when, in prefix mode, the target
    /// is used up while the template can still produce more.
    fn step(&self, part: &Part, reached: &[bool], next: &mut [bool]) -> bool {
        let end = self.target.len();
        for start in (0..=end).filter(|start| reached[*start]) {
            if self.prefix && start == end {
                // Every part produces at least one more character.
                return true;
            }
            let done = match part {
                Part::Literal(text) => self.literal(text.as_bytes(), start, next),
                Part::Capture(name) if self.pattern.is_rest_capture(name) => {
                    // Anything after the first start is reachable; later
                    // starts add nothing, so stop here.
                    next[start + 1..].fill(true);
                    return self.prefix;
                }
                Part::Capture(_) => self.segment(start, next),
            };
            if done {
                return true;
            }
        }
        false
    }

    fn literal(&self, text: &[u8], start: usize, next: &mut [bool]) -> bool {
        let rest = &self.target[start..];
        if rest.starts_with(text) {
            next[start + text.len()] = true;
            false
        } else {
            // The target ends inside the literal: a longer ID has it as prefix.
            self.prefix && text.starts_with(rest)
        }
    }

    /// One capture of one segment: one or more characters other than '/'.
    fn segment(&self, start: usize, next: &mut [bool]) -> bool {
        let mut at = start;
        while at < self.target.len() && self.target[at] != b'/' {
            at += 1;
            next[at] = true;
        }
        self.prefix && at == self.target.len() && at > start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> IdTemplate {
        IdTemplate::parse(text).expect("valid template")
    }

    fn caps<'a>(pairs: &[(&'a str, &str)]) -> Captures<'a> {
        pairs.iter().map(|(name, value)| (*name, (*value).to_owned())).collect()
    }

    #[test]
    fn parses_literals_and_captures() {
        let t = template("spiffe://grid.local/ns/<ns>/sa/<name>");
        assert_eq!(t.trust_domain().as_str(), "grid.local");
        assert_eq!(t.capture_names().collect::<Vec<_>>(), ["ns", "name"]);
        assert_eq!(
            t.parts(),
            [
                Part::Literal("/ns/".into()),
                Part::Capture("ns".into()),
                Part::Literal("/sa/".into()),
                Part::Capture("name".into()),
            ]
        );
        let rest = template("spiffe://d/cgroup/<path...>");
        assert_eq!(rest.capture_names().collect::<Vec<_>>(), ["path"]);
        assert!(IdTemplate::parse("spiffe://d/k8s/<ns>-<name>").is_ok());
    }

    #[test]
    fn rejects_malformed_templates() {
        let cases = [
            ("https://d/x", TemplateError::NotSpiffe),
            ("spiffe://<td>/x", TemplateError::CaptureInTrustDomain),
            (
                "spiffe://Grid/x",
                TemplateError::BadTrustDomain {
                    reason: SpiffeIdError::BadTrustDomainChar { found: 'G' },
                },
            ),
            ("spiffe://d", TemplateError::NoPath { trust_domain: "d".into() }),
            ("spiffe://d/<name", TemplateError::Unclosed),
            ("spiffe://d/<a<b>", TemplateError::Unclosed),
            ("spiffe://d/name>", TemplateError::StrayClose),
            (
                "spiffe://d/<9>",
                TemplateError::BadCaptureName(PatternError::BadCaptureName { name: "9".into() }),
            ),
            (
                "spiffe://d/a b/<x>",
                TemplateError::InvalidPath { reason: SpiffeIdError::BadPathChar { found: ' ' } },
            ),
            ("spiffe://d/<x>/", TemplateError::InvalidPath { reason: SpiffeIdError::EmptySegment }),
            ("spiffe://d/../<x>", TemplateError::InvalidPath { reason: SpiffeIdError::DotSegment }),
        ];
        for (text, expected) in cases {
            assert_eq!(IdTemplate::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn fills_captures() {
        let t = template("spiffe://d/ns/<ns>/sa/<name>");
        let id = t.fill(&caps(&[("ns", "shop"), ("name", "api")]), false).expect("fills");
        assert_eq!(id.as_str(), "spiffe://d/ns/shop/sa/api");

        let rest = template("spiffe://d/cgroup/<path...>");
        let id = rest.fill(&caps(&[("path", "a/b.slice/c")]), false).expect("fills");
        assert_eq!(id.as_str(), "spiffe://d/cgroup/a/b.slice/c");
    }

    #[test]
    fn unsanitized_bad_characters_fail_with_the_capture_named() {
        let t = template("spiffe://d/unit/<unit>");
        let err = t.fill(&caps(&[("unit", "my svc@1")]), false).expect_err("bad char");
        assert_eq!(
            err,
            FillError::BadCharacter {
                capture: "unit".into(),
                value: "my svc@1".into(),
                found: ' '
            }
        );
        assert!(err.to_string().contains("sanitize: true"));
    }

    #[test]
    fn sanitize_replaces_what_a_segment_cannot_hold() {
        let t = template("spiffe://d/unit/<unit>");
        let id = t.fill(&caps(&[("unit", "my svc@1:x")]), true).expect("sanitized");
        assert_eq!(id.as_str(), "spiffe://d/unit/my_svc_1_x");
        assert_eq!(sanitize_value("a b/c%d/./.."), "a_b/c_d/_/__");
        assert_eq!(sanitize_value("é"), "_");
    }

    #[test]
    fn overlong_fill_is_invalid() {
        let t = template("spiffe://d/<x>");
        let long = "a".repeat(3000);
        let err = t.fill(&caps(&[("x", &long)]), true).expect_err("too long");
        assert_eq!(err, FillError::Invalid { reason: SpiffeIdError::TooLong });
    }

    #[test]
    fn missing_capture_is_reported() {
        let t = template("spiffe://d/<x>");
        let err = t.fill(&caps(&[]), true).expect_err("missing");
        assert_eq!(err, FillError::UnknownCapture { capture: "x".into() });
    }

    #[test]
    fn could_produce_exact_paths() {
        let pattern = CgroupPattern::parse("/grid/<ns>/<name>").expect("valid");
        let t = template("spiffe://d/ns/<ns>/sa/<name>");
        assert!(t.could_produce(&pattern, "/ns/shop/sa/api", false));
        assert!(!t.could_produce(&pattern, "/ns/shop/sa", false));
        assert!(!t.could_produce(&pattern, "/ns/shop/sa/api/x", false));
        assert!(!t.could_produce(&pattern, "/nss/shop/sa/api", false));
        assert!(!t.could_produce(&pattern, "/ns//sa/api", false));
    }

    #[test]
    fn could_produce_prefixes() {
        let pattern = CgroupPattern::parse("/grid/<ns>/<name>").expect("valid");
        let t = template("spiffe://d/ns/<ns>/sa/<name>");
        for prefix in ["/", "/n", "/ns/", "/ns/shop/", "/ns/shop/sa/", "/ns/shop/sa/ap"] {
            assert!(t.could_produce(&pattern, prefix, true), "{prefix}");
        }
        // Nothing below the workload name, and no other roots.
        assert!(!t.could_produce(&pattern, "/ns/shop/sa/api/", true));
        assert!(!t.could_produce(&pattern, "/other/", true));
    }

    #[test]
    fn rest_captures_produce_many_segments() {
        let pattern = CgroupPattern::parse("/<path...>").expect("valid");
        let t = template("spiffe://d/cgroup/<path...>");
        assert!(t.could_produce(&pattern, "/cgroup/a/b/c", false));
        assert!(t.could_produce(&pattern, "/cgroup/a/b/", true));
        assert!(!t.could_produce(&pattern, "/cgroup", false));
        assert!(!t.could_produce(&pattern, "/cgroupx/a", false));

        // The same template text with a one-segment capture cannot.
        let one = CgroupPattern::parse("/<path>").expect("valid");
        assert!(!t.could_produce(&one, "/cgroup/a/b", false));
        assert!(!t.could_produce(&one, "/cgroup/a/", true));
    }

    #[test]
    fn literal_only_templates_produce_themselves() {
        let pattern = CgroupPattern::parse("/system.slice/nginx.service").expect("valid");
        let t = template("spiffe://d/nginx");
        assert!(t.could_produce(&pattern, "/nginx", false));
        assert!(!t.could_produce(&pattern, "/nginx/", true));
        assert!(!t.could_produce(&pattern, "/ngin", false));
        assert!(t.could_produce(&pattern, "/ngi", true));
    }
}
