//! Cross-field checks, and the step from the raw config to [`Config`].
//!
//! These are the problems no single value shows: a template capture that the
//! pattern lacks, an ID outside the trust domain, two rules with one name, a
//! rule peer that no selector could ever produce (almost always a typo that
//! would otherwise leave a rule silently inert). All are collected, so that
//! one run reports every one of them.

use std::collections::HashMap;

use super::locate::{Found, Seg};
use super::raw::{RawConfig, RawRule, RawSelector};
use super::{Auth, Config, Direction, Identity, Mode, Peer, Peering, Protocol, Rule, Selector};
use crate::spiffe::TrustDomain;

/// How many selector templates a "no selector gives this ID" message lists.
const TEMPLATES_LISTED: usize = 4;

/// Builds the config, or returns every cross-field problem found.
pub fn build(raw: RawConfig) -> Result<Config, Vec<Found>> {
    let trust_domain = raw.trust_domain.0;
    let workloads: Vec<Selector> =
        raw.workloads.unwrap_or_default().into_iter().map(selector).collect();
    let rules: Vec<Rule> = raw.rules.unwrap_or_default().into_iter().map(rule).collect();

    let identity = raw.identity.map(|raw| Identity { source: raw.source.0, dir: raw.dir.0.0 });
    let peering = raw.peering.map(|raw| Peering {
        listen: raw.listen.0.0,
        peers: raw.peers.into_iter().map(|peer| peer.0.0).collect(),
    });

    let mut found = Vec::new();
    check_selectors(&trust_domain, &workloads, &mut found);
    check_rules(&trust_domain, &workloads, &rules, &mut found);
    check_auth(&rules, identity.is_some(), &mut found);
    if !found.is_empty() {
        return Err(found);
    }
    Ok(Config {
        trust_domain,
        mode: raw.mode.map_or(Mode::default(), |mode| mode.0),
        scope: raw.scope.map_or_else(|| "/".to_owned(), |scope| scope.0.0),
        api_socket: raw.api_socket.map(|path| path.0.0),
        audit_log: raw.audit_log.map(|path| path.0.0),
        workloads,
        rules,
        identity,
        peering,
    })
}

fn selector(raw: RawSelector) -> Selector {
    Selector {
        cgroup: raw.cgroup.0,
        spiffe_id: raw.spiffe_id.0,
        mode: raw.mode.map(|mode| mode.0),
        sanitize: raw.sanitize.unwrap_or(false),
    }
}

fn rule(raw: RawRule) -> Rule {
    Rule {
        name: raw.name.map(|name| name.0.0),
        from: raw.from.into_iter().map(|peer| peer.0).collect(),
        to: raw.to.into_iter().map(|peer| peer.0).collect(),
        ports: raw.ports.map(|ports| ports.into_iter().map(|range| range.0).collect()),
        protocol: raw.protocol.map_or(Protocol::default(), |protocol| protocol.0),
        direction: raw.direction.map_or(Direction::default(), |direction| direction.0),
        auth: raw.auth.map_or(Auth::default(), |auth| auth.0),
    }
}

/// `list[index].field`, e.g. `rules[2].name`.
fn path(list: &str, index: usize, field: &str) -> Vec<Seg> {
    vec![Seg::Key(list.to_owned()), Seg::Index(index), Seg::Key(field.to_owned())]
}

fn check_selectors(domain: &TrustDomain, selectors: &[Selector], found: &mut Vec<Found>) {
    for (index, selector) in selectors.iter().enumerate() {
        let at = || path("workloads", index, "spiffe_id");
        let template_domain = selector.spiffe_id.trust_domain();
        if template_domain != domain {
            found.push(Found::new(
                at(),
                format!(
                    "the ID is in trust domain {:?}, but trust_domain is {:?}; workload IDs \
                     must be in the config's trust domain",
                    template_domain.as_str(),
                    domain.as_str()
                ),
            ));
        }
        let mut reported: Vec<&str> = Vec::new();
        for name in selector.spiffe_id.capture_names() {
            if reported.contains(&name) || selector.cgroup.capture_names().any(|c| c == name) {
                continue;
            }
            reported.push(name);
            found.push(Found::new(at(), unknown_capture(name, selector)));
        }
    }
}

fn unknown_capture(name: &str, selector: &Selector) -> String {
    let defined: Vec<String> =
        selector.cgroup.capture_names().map(|capture| format!("<{capture}>")).collect();
    let pattern = selector.cgroup.as_str();
    if defined.is_empty() {
        format!(
            "the template uses <{name}>, but the cgroup pattern {pattern:?} captures nothing; \
             add a <{name}> segment to the pattern"
        )
    } else {
        format!(
            "the template uses <{name}>, which the cgroup pattern {pattern:?} does not capture; \
             it captures {}",
            defined.join(", ")
        )
    }
}

fn check_rules(
    domain: &TrustDomain,
    selectors: &[Selector],
    rules: &[Rule],
    found: &mut Vec<Found>,
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut peers = PeerCheck { domain, selectors, known: HashMap::new() };
    for (index, rule) in rules.iter().enumerate() {
        check_name(&mut names, index, rule, found);
        check_lists(index, rule, found);
        for (field, list) in [("from", &rule.from), ("to", &rule.to)] {
            for (position, peer) in list.iter().enumerate() {
                if let Some(message) = peers.problem(peer) {
                    let mut at = path("rules", index, field);
                    at.push(Seg::Index(position));
                    found.push(Found::new(at, message));
                }
            }
        }
    }
}

/// A rule that asks for mutual TLS needs a source of SVIDs.
fn check_auth(rules: &[Rule], has_identity: bool, found: &mut Vec<Found>) {
    if has_identity {
        return;
    }
    for (index, rule) in rules.iter().enumerate() {
        if rule.auth == Auth::Mtls {
            let message = "auth: mtls needs SVIDs; add an `identity` section (source: builtin-ca \
                           or files, and its dir)";
            found.push(Found::new(path("rules", index, "auth"), message.to_owned()));
        }
    }
}

/// Records a rule's name, reporting it when an earlier rule has it.
fn check_name<'r>(
    names: &mut HashMap<&'r str, usize>,
    index: usize,
    rule: &'r Rule,
    found: &mut Vec<Found>,
) {
    let Some(name) = rule.name.as_deref() else { return };
    let first = *names.entry(name).or_insert(index);
    if first != index {
        found.push(Found::new(
            path("rules", index, "name"),
            format!(
                "the name {name:?} is already used by rules[{first}]; rule names must be unique"
            ),
        ));
    }
}

fn check_lists(index: usize, rule: &Rule, found: &mut Vec<Found>) {
    if rule.from.is_empty() {
        found.push(Found::new(
            path("rules", index, "from"),
            "the list is empty, so the rule allows nothing; name who may connect, e.g. \
             from: [world]",
        ));
    }
    if rule.to.is_empty() {
        found.push(Found::new(
            path("rules", index, "to"),
            "the list is empty, so the rule allows nothing; name what may be reached, e.g. \
             to: [\"spiffe://grid.local/ns/shop/sa/api\"]",
        ));
    }
    if rule.ports.as_ref().is_some_and(Vec::is_empty) {
        found.push(Found::new(
            path("rules", index, "ports"),
            "the list is empty, so the rule allows no port; remove ports to allow every port",
        ));
    }
}

/// Checks rule peers against the trust domain and the selectors, remembering
/// answers: large policies name the same peers many times.
struct PeerCheck<'c> {
    domain: &'c TrustDomain,
    selectors: &'c [Selector],
    known: HashMap<&'c Peer, Option<String>>,
}

impl<'c> PeerCheck<'c> {
    fn problem(&mut self, peer: &'c Peer) -> Option<String> {
        if let Some(answer) = self.known.get(peer) {
            return answer.clone();
        }
        let answer = self.judge(peer);
        self.known.insert(peer, answer.clone());
        answer
    }

    fn judge(&self, peer: &Peer) -> Option<String> {
        let (id, target, prefix) = match peer {
            Peer::Host | Peer::World => return None,
            Peer::Id(id) => (id, id.path().to_owned(), false),
            Peer::Prefix(base) => (base, format!("{}/", base.path()), true),
        };
        if !id.is_member_of(self.domain) {
            return Some(format!(
                "{:?} is in trust domain {:?}, but trust_domain is {:?}; rules name \
                 identities of the config's trust domain",
                peer.to_string(),
                id.trust_domain(),
                self.domain.as_str()
            ));
        }
        // `spiffe://<td>/*` is every workload: any selector of the domain
        // produces some ID under it, no need to look closer.
        let whole_domain = prefix && *id == self.domain.id();
        let producible = self.selectors.iter().any(|selector| {
            selector.spiffe_id.trust_domain() == self.domain
                && (whole_domain
                    || selector.spiffe_id.could_produce(&selector.cgroup, &target, prefix))
        });
        if producible { None } else { Some(self.unproducible(peer, prefix)) }
    }

    fn unproducible(&self, peer: &Peer, prefix: bool) -> String {
        let what = if prefix { "an ID under this prefix" } else { "this ID" };
        if self.selectors.is_empty() {
            return format!(
                "no workload can have {what}: there are no selectors; add one under workloads"
            );
        }
        let mut templates: Vec<&str> = self
            .selectors
            .iter()
            .take(TEMPLATES_LISTED)
            .map(|selector| selector.spiffe_id.as_str())
            .collect();
        if self.selectors.len() > TEMPLATES_LISTED {
            templates.push("...");
        }
        format!(
            "no workload selector gives a cgroup {what} ({:?}); the selectors give {}; check \
             the spelling",
            peer.to_string(),
            templates.join(", ")
        )
    }
}
