//! Checks of single config values, each run while serde_yaml_ng reads the
//! value, so that a failure carries that value's line and column.
//!
//! A field type implements [`ScalarField`]; the raw config holds it as
//! [`Checked<T>`], whose `Deserialize` reads one scalar and checks it. This
//! keeps `Deserialize` off the types themselves, so their plain serde form
//! (where they have one) stays free of our error markers.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::error::marked;
use super::{Auth, Direction, Mode, Peer, PortRange, Protocol, SvidSourceKind};
use crate::policy::{CgroupPattern, IdTemplate};
use crate::spiffe::{SpiffeId, TrustDomain};

/// A value read from one YAML scalar and checked on the spot.
pub trait ScalarField: Sized {
    /// What the value is, for "expected ..." messages.
    const EXPECTING: &'static str;
    /// The message for an empty or null value: what to write instead.
    const EMPTY: &'static str;
    /// Checks the scalar's text. The error says what is wrong and how to fix
    /// it, and quotes the value with `{:?}`.
    fn from_text(text: &str) -> Result<Self, String>;
}

/// A field value that passed its [`ScalarField`] check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<T>(pub T);

impl<'de, T: ScalarField> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde_yaml_ng hands any scalar (number, bool, null) over as text.
        deserializer.deserialize_str(CheckedVisitor(PhantomData))
    }
}

struct CheckedVisitor<T>(PhantomData<T>);

impl<'de, T: ScalarField> Visitor<'de> for CheckedVisitor<T> {
    type Value = Checked<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Checked<T>, E> {
        let checked = if is_null(text) { Err(T::EMPTY.to_owned()) } else { T::from_text(text) };
        checked.map(Checked).map_err(|message| E::custom(marked(&message)))
    }
}

/// YAML's spellings of "no value"; none is a sensible value for our fields.
fn is_null(text: &str) -> bool {
    matches!(text.trim(), "" | "~" | "null" | "Null" | "NULL")
}

impl ScalarField for TrustDomain {
    const EXPECTING: &'static str = "a trust domain name such as grid.local";
    const EMPTY: &'static str = "the trust domain is empty; write a name such as grid.local";

    fn from_text(text: &str) -> Result<Self, String> {
        if let Some(bare) = text.strip_prefix("spiffe://") {
            return Err(format!("write the trust domain without \"spiffe://\", e.g. {bare:?}"));
        }
        TrustDomain::parse(text).map_err(|error| {
            format!("{text:?} is not a trust domain name: {error}; write a name such as grid.local")
        })
    }
}

impl ScalarField for Mode {
    const EXPECTING: &'static str = "observe or enforce";
    const EMPTY: &'static str = "the mode is empty; write observe or enforce";

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "observe" => Ok(Mode::Observe),
            "enforce" => Ok(Mode::Enforce),
            _ => Err(keyword_error(text, "mode", &["observe", "enforce"])),
        }
    }
}

impl ScalarField for Protocol {
    const EXPECTING: &'static str = "tcp, udp or any";
    const EMPTY: &'static str = "the protocol is empty; write tcp, udp or any";

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "any" => Ok(Protocol::Any),
            _ => Err(keyword_error(text, "protocol", &["tcp", "udp", "any"])),
        }
    }
}

impl ScalarField for Direction {
    const EXPECTING: &'static str = "ingress or egress";
    const EMPTY: &'static str = "the direction is empty; write ingress or egress";

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "ingress" => Ok(Direction::Ingress),
            "egress" => Ok(Direction::Egress),
            _ => Err(keyword_error(text, "direction", &["ingress", "egress"])),
        }
    }
}

impl ScalarField for Auth {
    const EXPECTING: &'static str = "none or mtls";
    const EMPTY: &'static str = "the auth is empty; write none or mtls";

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Auth::None),
            "mtls" => Ok(Auth::Mtls),
            _ => Err(keyword_error(text, "kind of auth", &["none", "mtls"])),
        }
    }
}

impl ScalarField for SvidSourceKind {
    const EXPECTING: &'static str = "builtin-ca or files";
    const EMPTY: &'static str = "the SVID source is empty; write builtin-ca or files";

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "builtin-ca" => Ok(SvidSourceKind::BuiltinCa),
            "files" => Ok(SvidSourceKind::Files),
            _ => Err(keyword_error(text, "SVID source", &["builtin-ca", "files"])),
        }
    }
}

/// An absolute directory path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPath(pub PathBuf);

impl ScalarField for DirPath {
    const EXPECTING: &'static str = "an absolute directory path";
    const EMPTY: &'static str = "the directory is empty; write an absolute path";

    fn from_text(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "{text:?} is not an absolute path; write one that starts with '/'"
            ));
        }
        if text.contains('\0') {
            return Err("the path holds a NUL character".to_owned());
        }
        Ok(DirPath(PathBuf::from(text)))
    }
}

/// An IP address and port, such as "192.0.2.1:7700" or "[2001:db8::1]:7700".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress(pub std::net::SocketAddr);

impl ScalarField for PeerAddress {
    const EXPECTING: &'static str = "an address and port such as \"192.0.2.1:7700\"";
    const EMPTY: &'static str = "the address is empty; write one such as \"192.0.2.1:7700\"";

    fn from_text(text: &str) -> Result<Self, String> {
        let address: std::net::SocketAddr = text.parse().map_err(|_| {
            format!("{text:?} is not an address and port; write one such as \"192.0.2.1:7700\"")
        })?;
        if address.port() == 0 {
            return Err(format!("{text:?} has port 0; write the port the peer listens on"));
        }
        Ok(PeerAddress(address))
    }
}

/// "x is not a mode; write observe or enforce", noting a case slip.
fn keyword_error(text: &str, what: &str, words: &[&str]) -> String {
    if let Some(word) = words.iter().find(|word| word.eq_ignore_ascii_case(text.trim())) {
        return format!("{text:?} is not a {what}; write it in lowercase: {word}");
    }
    let (last, rest) = words.split_last().unwrap_or((&"", &[]));
    let choices =
        if rest.is_empty() { (*last).to_owned() } else { format!("{} or {last}", rest.join(", ")) };
    format!("{text:?} is not a {what}; write {choices}")
}

/// The scope: a cgroup path relative to the cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(pub String);

impl ScalarField for Scope {
    const EXPECTING: &'static str = "a cgroup path such as /gridward-demo";
    const EMPTY: &'static str =
        "the scope is empty; write a cgroup path such as /gridward-demo, or / for every cgroup";

    fn from_text(text: &str) -> Result<Self, String> {
        // Hybrid hosts mount cgroup2 at /sys/fs/cgroup/unified.
        let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|mount| text == *mount || text.starts_with(&format!("{mount}/")));
        if let Some(inside) = mount.and_then(|mount| text.strip_prefix(mount)) {
            let relative = if inside.is_empty() { "/" } else { inside };
            return Err(format!(
                "the scope is relative to the cgroup2 mount; write {relative:?}, not {text:?}"
            ));
        }
        check_cgroup_path(text).map(|()| Scope(text.to_owned())).map_err(|problem| {
            format!("the scope {text:?} {problem}; write a path such as /gridward-demo")
        })
    }
}

/// Checks a path relative to the cgroup2 mount: `/` or `/a/b`. The error
/// completes the sentence "the path ...".
pub fn check_cgroup_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("does not start with '/'");
    }
    if path.contains('\0') {
        return Err("holds a NUL character");
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err("ends with '/'");
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("has an empty segment ('//')"),
            "." | ".." => return Err("has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

/// An absolute file path (the API socket, the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePath(pub PathBuf);

impl ScalarField for FilePath {
    const EXPECTING: &'static str = "an absolute file path";
    const EMPTY: &'static str =
        "the path is empty; write an absolute path such as /run/gridward/api.sock, or remove it";

    fn from_text(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "{text:?} is not an absolute path; write one that starts with '/', \
                 e.g. \"/run/gridward/{}\"",
                text.trim_start_matches("./")
            ));
        }
        if text.ends_with('/') {
            return Err(format!("{text:?} names a directory; write the path of a file in it"));
        }
        if text.contains('\0') {
            return Err("the path holds a NUL character".to_owned());
        }
        Ok(FilePath(PathBuf::from(text)))
    }
}

impl ScalarField for CgroupPattern {
    const EXPECTING: &'static str = "a cgroup pattern such as \"/grid/<ns>/<name>\"";
    const EMPTY: &'static str =
        "the cgroup pattern is empty; write one such as \"/grid/<ns>/<name>\"";

    fn from_text(text: &str) -> Result<Self, String> {
        CgroupPattern::parse(text).map_err(|error| error.to_string())
    }
}

impl ScalarField for IdTemplate {
    const EXPECTING: &'static str = "a SPIFFE ID template such as \"spiffe://grid.local/<name>\"";
    const EMPTY: &'static str = "the ID template is empty; write one such as \
                                 \"spiffe://grid.local/ns/<ns>/sa/<name>\"";

    fn from_text(text: &str) -> Result<Self, String> {
        IdTemplate::parse(text).map_err(|error| error.to_string())
    }
}

/// A rule's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleName(pub String);

/// Longest rule name; names appear in every verdict event.
pub const MAX_RULE_NAME: usize = 64;

impl ScalarField for RuleName {
    const EXPECTING: &'static str = "a rule name such as gateway-to-payments";
    const EMPTY: &'static str = "the name is empty; write one such as gateway-to-payments, \
                                 or remove the name";

    fn from_text(text: &str) -> Result<Self, String> {
        if text.len() > MAX_RULE_NAME {
            return Err(format!("the name is longer than {MAX_RULE_NAME} bytes; shorten it"));
        }
        match text.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            Some(found) => Err(format!(
                "the name {text:?} has the character {found:?}; names use letters, digits, '-', \
                 '_' and '.', e.g. gateway-to-payments"
            )),
            None => Ok(RuleName(text.to_owned())),
        }
    }
}

const PEER_FORMS: &str = "write a SPIFFE ID such as \"spiffe://grid.local/ns/shop/sa/api\", a \
                          prefix such as \"spiffe://grid.local/ns/shop/*\", host or world";

impl ScalarField for Peer {
    const EXPECTING: &'static str = "a SPIFFE ID, a prefix ending in /*, host or world";
    const EMPTY: &'static str =
        "the peer is empty; write a SPIFFE ID, a prefix ending in /*, host or world";

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "host" => return Ok(Peer::Host),
            "world" => return Ok(Peer::World),
            _ => {}
        }
        if let Some(word) = ["host", "world"].iter().find(|word| word.eq_ignore_ascii_case(text)) {
            return Err(format!("{text:?} is not a peer; write it in lowercase: {word}"));
        }
        if !text.starts_with("spiffe://") {
            return Err(format!("{text:?} is not a peer; {PEER_FORMS}"));
        }
        match text.strip_suffix("/*") {
            Some(base) => parse_prefix(text, base),
            None => parse_exact(text),
        }
    }
}

fn parse_prefix(text: &str, base: &str) -> Result<Peer, String> {
    if base.contains('*') {
        return Err(wildcard_error(text));
    }
    SpiffeId::parse(base)
        .map(Peer::Prefix)
        .map_err(|error| format!("the prefix {text:?} is not valid: {error}"))
}

fn parse_exact(text: &str) -> Result<Peer, String> {
    if text.contains('*') {
        return Err(wildcard_error(text));
    }
    let id = SpiffeId::parse(text)
        .map_err(|error| format!("{text:?} is not a valid SPIFFE ID: {error}"))?;
    if id.path().is_empty() {
        return Err(format!(
            "{text:?} names the trust domain, not a workload; write \"{text}/*\" for every \
             workload in it"
        ));
    }
    Ok(Peer::Id(id))
}

fn wildcard_error(text: &str) -> String {
    format!(
        "{text:?} has a '*' that is not the whole last segment; a prefix ends in \"/*\", \
         e.g. \"spiffe://grid.local/ns/shop/*\""
    )
}

const PORT_FORMS: &str = "write a port such as 8443 or a range such as \"9000-9100\"";

impl ScalarField for PortRange {
    const EXPECTING: &'static str = "a port such as 8443 or a range such as \"9000-9100\"";
    const EMPTY: &'static str =
        "the port is empty; write a port such as 8443 or a range such as \"9000-9100\"";

    fn from_text(text: &str) -> Result<Self, String> {
        let Some((first, second)) = text.split_once('-') else {
            let port = parse_port(text.trim(), text)?;
            return Ok(PortRange { lo: port, hi: port });
        };
        let (lo, hi) = (parse_port(first.trim(), text)?, parse_port(second.trim(), text)?);
        if lo > hi {
            return Err(format!(
                "port range {text:?} is reversed; write the lower port first, e.g. \"{hi}-{lo}\""
            ));
        }
        Ok(PortRange { lo, hi })
    }
}

/// One port number, 1 to 65535. `whole` is the full value, for messages.
fn parse_port(digits: &str, whole: &str) -> Result<u16, String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{whole:?} is not a port or a port range; {PORT_FORMS}"));
    }
    // Leading zeros aside, anything past five digits is out of range.
    let value = digits.trim_start_matches('0');
    let number: u32 = if value.len() > 5 { u32::MAX } else { value.parse().unwrap_or(0) };
    match u16::try_from(number) {
        Ok(0) => Err("port 0 is not a port a rule can name; ports are 1 to 65535".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {digits} is out of range; ports are 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges() {
        assert_eq!(PortRange::from_text("8443"), Ok(PortRange { lo: 8443, hi: 8443 }));
        assert_eq!(PortRange::from_text("9000-9100"), Ok(PortRange { lo: 9000, hi: 9100 }));
        assert_eq!(PortRange::from_text(" 80 - 90 "), Ok(PortRange { lo: 80, hi: 90 }));
        assert_eq!(PortRange::from_text("65535"), Ok(PortRange { lo: 65535, hi: 65535 }));
        assert_eq!(PortRange::from_text("080"), Ok(PortRange { lo: 80, hi: 80 }));
    }

    const NOT_A_PORT: &str = "is not a port or a port range; write a port such as 8443 or a \
                              range such as \"9000-9100\"";

    #[test]
    fn bad_ports_say_why() {
        let cases = [
            ("0", "port 0 is not a port a rule can name; ports are 1 to 65535"),
            ("65536", "port 65536 is out of range; ports are 1 to 65535"),
            ("99999999999", "port 99999999999 is out of range; ports are 1 to 65535"),
            (
                "9100-9000",
                "port range \"9100-9000\" is reversed; write the lower port first, e.g. \
                 \"9000-9100\"",
            ),
            ("http", NOT_A_PORT),
            ("-5", NOT_A_PORT),
            ("1-2-3", NOT_A_PORT),
            ("80.5", NOT_A_PORT),
        ];
        for (text, expected) in cases {
            let expected = if expected == NOT_A_PORT {
                format!("{text:?} {NOT_A_PORT}")
            } else {
                expected.to_owned()
            };
            assert_eq!(PortRange::from_text(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn peers() {
        assert_eq!(Peer::from_text("host"), Ok(Peer::Host));
        assert_eq!(Peer::from_text("world"), Ok(Peer::World));
        let id = SpiffeId::parse("spiffe://d/a/b").expect("valid");
        assert_eq!(Peer::from_text("spiffe://d/a/b"), Ok(Peer::Id(id.clone())));
        assert_eq!(Peer::from_text("spiffe://d/a/b/*"), Ok(Peer::Prefix(id)));
        let domain = SpiffeId::parse("spiffe://d").expect("valid");
        assert_eq!(Peer::from_text("spiffe://d/*"), Ok(Peer::Prefix(domain)));
    }

    #[test]
    fn bad_peers_say_why() {
        let cases = [
            ("Host", "\"Host\" is not a peer; write it in lowercase: host"),
            ("payments", "\"payments\" is not a peer; write a SPIFFE ID such as"),
            ("spiffe://d/a*", "\"spiffe://d/a*\" has a '*' that is not the whole last segment"),
            ("spiffe://d/*/x", "\"spiffe://d/*/x\" has a '*' that is not the whole last segment"),
            ("spiffe://d/*/*", "\"spiffe://d/*/*\" has a '*' that is not the whole last segment"),
            ("spiffe://d/a b", "\"spiffe://d/a b\" is not a valid SPIFFE ID: the path has the"),
            ("spiffe://d/a//*", "the prefix \"spiffe://d/a//*\" is not valid: the path has an"),
            ("spiffe://d", "\"spiffe://d\" names the trust domain, not a workload; write"),
        ];
        for (text, expected) in cases {
            let error = Peer::from_text(text).expect_err(text);
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn keywords_note_case_slips() {
        assert_eq!(
            Mode::from_text("Enforce"),
            Err("\"Enforce\" is not a mode; write it in lowercase: enforce".into())
        );
        assert_eq!(
            Mode::from_text("on"),
            Err("\"on\" is not a mode; write observe or enforce".into())
        );
        assert_eq!(
            Protocol::from_text("sctp"),
            Err("\"sctp\" is not a protocol; write tcp, udp or any".into())
        );
        assert_eq!(Direction::from_text("egress"), Ok(Direction::Egress));
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(check_cgroup_path("/"), Ok(()));
        assert_eq!(check_cgroup_path("/a/b.slice"), Ok(()));
        assert_eq!(check_cgroup_path("a"), Err("does not start with '/'"));
        assert_eq!(check_cgroup_path("/a/"), Err("ends with '/'"));
        assert_eq!(check_cgroup_path("/a//b"), Err("has an empty segment ('//')"));
        assert_eq!(check_cgroup_path("/a/.."), Err("has a '.' or '..' segment"));
        assert_eq!(
            Scope::from_text("/sys/fs/cgroup/demo"),
            Err("the scope is relative to the cgroup2 mount; write \"/demo\", not \
                 \"/sys/fs/cgroup/demo\""
                .into())
        );
    }

    #[test]
    fn rule_names() {
        assert!(RuleName::from_text("gateway-to-payments.v2_a").is_ok());
        let long = "a".repeat(MAX_RULE_NAME + 1);
        assert!(RuleName::from_text(&long).is_err());
        assert_eq!(
            RuleName::from_text("a b"),
            Err("the name \"a b\" has the character ' '; names use letters, digits, '-', '_' and \
                 '.', e.g. gateway-to-payments"
                .into())
        );
    }
}
