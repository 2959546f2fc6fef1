//! SPIFFE IDs and trust domains, validated strictly by the SPIFFE ID
//! specification: `spiffe://<trust-domain><path>`, lowercase scheme and trust
//! domain, path segments of `[A-Za-z0-9._-]` without dot segments, no
//! percent-encoding, port, userinfo, query or fragment.
//!
//! Every identity the agent handles, from config or from a certificate, goes
//! through [`SpiffeId::parse`]; nothing else builds one.

use std::fmt;

/// The longest SPIFFE ID the specification allows, in bytes.
pub const MAX_ID_BYTES: usize = 2048;
/// The longest trust domain name the specification allows, in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID starts with 'spiffe://' (lowercase)")]
    WrongScheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")]
    TrustDomainTooLong,
    #[error(
        "the trust domain has the character {found:?}; only lowercase letters, digits, \
         '.', '-' and '_' are allowed (no port, no userinfo)"
    )]
    BadTrustDomainChar { found: char },
    #[error("the ID is longer than {MAX_ID_BYTES} bytes")]
    TooLong,
    #[error("the path has an empty segment (a double or trailing '/')")]
    EmptySegment,
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    #[error(
        "the path has the character {found:?}; only letters, digits, '.', '-' and '_' are \
         allowed (no percent-encoding, query or fragment)"
    )]
    BadPathChar { found: char },
}

/// A trust domain name, such as `grid.local`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme).
    pub fn parse(name: &str) -> Result<Self, SpiffeIdError> {
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId { text: format!("{SCHEME}{}", self.0), path_start: SCHEME.len() + self.0.len() }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    text: String,
    /// Byte offset where the path (possibly empty) begins.
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a full SPIFFE ID.
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        if text.len() > MAX_ID_BYTES {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = text.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let path_offset = rest.find('/').unwrap_or(rest.len());
        let (domain, path) = rest.split_at(path_offset);
        check_trust_domain(domain)?;
        check_path(path)?;
        Ok(Self { text: text.to_owned(), path_start: SCHEME.len() + domain.len() })
    }

    /// Builds `spiffe://<domain><path>` from parts, validating the path.
    pub fn from_parts(domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{domain}{path}"))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn trust_domain(&self) -> &str {
        &self.text[SCHEME.len()..self.path_start]
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.text[self.path_start..]
    }

    pub fn is_member_of(&self, domain: &TrustDomain) -> bool {
        self.trust_domain() == domain.as_str()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn check_trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if domain.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match domain.chars().find(|c| !is_trust_domain_char(*c)) {
        Some(found) => Err(SpiffeIdError::BadTrustDomainChar { found }),
        None => Ok(()),
    }
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // The caller split at the first '/', so the first segment is empty by
    // construction; every later one must not be.
    for segment in path.split('/').skip(1) {
        check_segment(segment)?;
    }
    Ok(())
}

/// Checks one path segment; exposed so that templates can be checked as they
/// are filled in.
pub fn check_segment(segment: &str) -> Result<(), SpiffeIdError> {
    if segment.is_empty() {
        return Err(SpiffeIdError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(SpiffeIdError::DotSegment);
    }
    match segment.chars().find(|c| !is_path_char(*c)) {
        Some(found) => Err(SpiffeIdError::BadPathChar { found }),
        None => Ok(()),
    }
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

/// Whether a character may appear in a path segment.
pub fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let id = SpiffeId::parse("spiffe://grid.local/ns/shop/sa/payments").expect("valid");
        assert_eq!(id.trust_domain(), "grid.local");
        assert_eq!(id.path(), "/ns/shop/sa/payments");

        let bare = SpiffeId::parse("spiffe://grid.local").expect("valid");
        assert_eq!(bare.path(), "");
        assert!(SpiffeId::parse("spiffe://a-b_c.1/A.b-_9/...x").is_ok());
    }

    #[test]
    fn rejects_what_the_specification_forbids() {
        let cases = [
            ("SPIFFE://grid.local/a", SpiffeIdError::WrongScheme),
            ("https://grid.local/a", SpiffeIdError::WrongScheme),
            ("spiffe:///a", SpiffeIdError::EmptyTrustDomain),
            ("spiffe://Grid.local/a", SpiffeIdError::BadTrustDomainChar { found: 'G' }),
            ("spiffe://grid.local:443/a", SpiffeIdError::BadTrustDomainChar { found: ':' }),
            ("spiffe://user@grid.local/a", SpiffeIdError::BadTrustDomainChar { found: '@' }),
            ("spiffe://grid.local/", SpiffeIdError::EmptySegment),
            ("spiffe://grid.local/a//b", SpiffeIdError::EmptySegment),
            ("spiffe://grid.local/a/", SpiffeIdError::EmptySegment),
            ("spiffe://grid.local/a/./b", SpiffeIdError::DotSegment),
            ("spiffe://grid.local/a/..", SpiffeIdError::DotSegment),
            ("spiffe://grid.local/a%2Fb", SpiffeIdError::BadPathChar { found: '%' }),
            ("spiffe://grid.local/a?x=1", SpiffeIdError::BadPathChar { found: '?' }),
            ("spiffe://grid.local/a#frag", SpiffeIdError::BadPathChar { found: '#' }),
        ];
        for (text, expected) in cases {
            assert_eq!(SpiffeId::parse(text), Err(expected), "{text}");
        }
    }

    #[test]
    fn rejects_overlong_input() {
        let long_domain = format!("spiffe://{}/a", "d".repeat(256));
        assert_eq!(SpiffeId::parse(&long_domain), Err(SpiffeIdError::TrustDomainTooLong));

        let long_path = format!("spiffe://grid.local/{}", "p".repeat(MAX_ID_BYTES));
        assert_eq!(SpiffeId::parse(&long_path), Err(SpiffeIdError::TooLong));
    }

    #[test]
    fn trust_domain_round_trips() {
        let domain = TrustDomain::parse("grid.local").expect("valid");
        assert_eq!(domain.id().as_str(), "spiffe://grid.local");
        let id = SpiffeId::from_parts(&domain, "/ns/a").expect("valid");
        assert!(id.is_member_of(&domain));
        assert!(TrustDomain::parse("grid.local/x").is_err());
    }
}
