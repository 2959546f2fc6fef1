//! Classification: which workload identity a cgroup has.
//!
//! A cgroup takes its identity from the deepest path, itself or an ancestor,
//! that some selector matches; at that path the first matching selector in
//! config order wins. So the child cgroups a pod or container makes for
//! itself inherit its identity. A cgroup that no selector covers is either
//! outside every managed subtree (unmanaged: the host) or inside one, which
//! is suspicious and fails closed as `Invalid`.

use std::collections::BTreeSet;

use crate::config::{Config, Mode, Selector, check_cgroup_path};
use crate::spiffe::SpiffeId;

/// What a cgroup is, as far as policy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// A workload: its identity, its effective mode and the index of the
    /// selector (in `config.workloads`) that named it.
    Workload { id: SpiffeId, mode: Mode, selector: usize },
    /// Outside every managed subtree: treated as the host.
    Unmanaged,
    /// Should be a workload but cannot be named; held as unclassified.
    Invalid { reason: String },
}

/// Applies a config's selectors to cgroup paths.
#[derive(Debug, Clone)]
pub struct Classifier {
    global: Mode,
    selectors: Vec<Selector>,
    /// Sorted, deduplicated literal prefixes, as segments.
    subtrees: Vec<Vec<String>>,
}

impl Classifier {
    pub fn new(config: &Config) -> Self {
        let subtrees: BTreeSet<Vec<String>> = config
            .workloads
            .iter()
            .map(|selector| segments_of(&selector.cgroup.literal_prefix()))
            .collect();
        Self {
            global: config.mode,
            selectors: config.workloads.clone(),
            subtrees: subtrees.into_iter().collect(),
        }
    }

    /// `path` is relative to the scope, "/" or "/a/b/c" (no trailing slash).
    pub fn classify(&self, path: &str) -> Classification {
        if let Err(problem) = check_cgroup_path(path) {
            return Classification::Invalid {
                reason: format!("{path:?} is not a cgroup path: it {problem}"),
            };
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        for depth in (0..=segments.len()).rev() {
            if let Some(found) = self.classify_exact(&segments[..depth]) {
                return found;
            }
        }
        match self.enclosing_subtree(&segments) {
            Some(subtree) => Classification::Invalid {
                reason: format!(
                    "no selector matches {path:?} or a cgroup above it, yet it lies in the \
                     managed subtree {:?}",
                    join(subtree)
                ),
            },
            None => Classification::Unmanaged,
        }
    }

    /// Literal leading parts of each selector pattern (relative to the
    /// scope), deduplicated and sorted, e.g. "/grid" for "/grid/<ns>/<name>",
    /// "/" for "/<path...>". Cgroups below these are "managed".
    pub fn managed_subtrees(&self) -> Vec<String> {
        self.subtrees.iter().map(|segments| join(segments)).collect()
    }

    /// The first selector matching exactly this path, filled in.
    fn classify_exact(&self, segments: &[&str]) -> Option<Classification> {
        self.selectors.iter().enumerate().find_map(|(index, selector)| {
            let captures = selector.cgroup.matches(segments)?;
            Some(match selector.spiffe_id.fill(&captures, selector.sanitize) {
                Ok(id) => Classification::Workload {
                    id,
                    mode: selector.mode.unwrap_or(self.global),
                    selector: index,
                },
                Err(error) => Classification::Invalid {
                    reason: format!(
                        "workloads[{index}] (cgroup {:?}) matches {:?}, but {error}",
                        selector.cgroup.as_str(),
                        join(segments)
                    ),
                },
            })
        })
    }

    /// A managed subtree strictly above `segments`. The subtree's own root
    /// is not inside it: it is where the agent's own tree starts.
    fn enclosing_subtree(&self, segments: &[&str]) -> Option<&[String]> {
        self.subtrees
            .iter()
            .find(|subtree| {
                subtree.len() < segments.len()
                    && subtree.iter().zip(segments).all(|(want, have)| want == have)
            })
            .map(Vec::as_slice)
    }
}

fn segments_of(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn join<S: AsRef<str>>(segments: &[S]) -> String {
    let parts: Vec<&str> = segments.iter().map(AsRef::as_ref).collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn classifier(yaml: &str) -> Classifier {
        Classifier::new(&config::parse(yaml, "test.yaml").expect("valid config"))
    }

    fn id_of(classification: Classification) -> String {
        match classification {
            Classification::Workload { id, .. } => id.to_string(),
            other => panic!("not a workload: {other:?}"),
        }
    }

    const GRID: &str = r#"
trust_domain: grid.local
mode: enforce
workloads:
  - cgroup: "/grid/<ns>/<name>"
    spiffe_id: "spiffe://grid.local/ns/<ns>/sa/<name>"
  - cgroup: "/grid/<ns>/<name>/<container>"
    spiffe_id: "spiffe://grid.local/never/<container>"
  - cgroup: "/system.slice/<unit>"
    spiffe_id: "spiffe://grid.local/unit/<unit>"
    mode: observe
    sanitize: true
  - cgroup: "/raw/<unit>"
    spiffe_id: "spiffe://grid.local/raw/<unit>"
"#;

    #[test]
    fn names_workloads_with_selector_and_mode() {
        let c = classifier(GRID);
        assert_eq!(
            c.classify("/grid/shop/payments"),
            Classification::Workload {
                id: SpiffeId::parse("spiffe://grid.local/ns/shop/sa/payments").expect("valid"),
                mode: Mode::Enforce,
                selector: 0,
            }
        );
        match c.classify("/system.slice/nginx.service") {
            Classification::Workload { mode, selector, .. } => {
                assert_eq!((mode, selector), (Mode::Observe, 2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deepest_match_wins_so_children_inherit() {
        let c = classifier(GRID);
        // The container level matches selector 1 itself.
        assert_eq!(id_of(c.classify("/grid/shop/payments/c1")), "spiffe://grid.local/never/c1");
        // Below that no selector matches; the deepest matching ancestor is
        // the container, so grandchildren inherit its identity.
        assert_eq!(id_of(c.classify("/grid/shop/payments/c1/x/y")), "spiffe://grid.local/never/c1");
        let units = classifier(
            "trust_domain: d\nworkloads:\n  - {cgroup: \"/s/<u>\", spiffe_id: \
                \"spiffe://d/<u>\"}\n",
        );
        assert_eq!(id_of(units.classify("/s/a.service/sub/deeper")), "spiffe://d/a.service");
    }

    #[test]
    fn first_selector_wins_at_one_path() {
        let c = classifier(
            r#"
trust_domain: d
workloads:
  - {cgroup: "/k/<a>", spiffe_id: "spiffe://d/first/<a>"}
  - {cgroup: "/k/*", spiffe_id: "spiffe://d/second"}
  - {cgroup: "/k/x/<b>", spiffe_id: "spiffe://d/third/<b>"}
"#,
        );
        assert_eq!(id_of(c.classify("/k/x")), "spiffe://d/first/x");
        assert_eq!(id_of(c.classify("/k/x/y")), "spiffe://d/third/y");
        match c.classify("/k/y") {
            Classification::Workload { selector, .. } => assert_eq!(selector, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unmatched_inside_a_managed_subtree_is_invalid() {
        let c = classifier(GRID);
        match c.classify("/grid/shop") {
            Classification::Invalid { reason } => {
                assert!(reason.contains("managed subtree \"/grid\""), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // The subtree root itself and paths outside are the host.
        assert_eq!(c.classify("/grid"), Classification::Unmanaged);
        assert_eq!(c.classify("/"), Classification::Unmanaged);
        assert_eq!(c.classify("/user.slice/x"), Classification::Unmanaged);
        assert_eq!(c.classify("/gridx/a/b"), Classification::Unmanaged);
    }

    #[test]
    fn bad_characters_without_sanitize_are_invalid() {
        let c = classifier(GRID);
        match c.classify("/raw/my unit@1") {
            Classification::Invalid { reason } => assert_eq!(
                reason,
                "workloads[3] (cgroup \"/raw/<unit>\") matches \"/raw/my unit@1\", but the \
                 cgroup name \"my unit@1\" captured as <unit> has the character ' ', which a \
                 SPIFFE ID path cannot hold; set sanitize: true on the selector to replace such \
                 characters with '_'"
            ),
            other => panic!("{other:?}"),
        }
        // Its children inherit the failure rather than falling back to a
        // shallower match: fail closed.
        assert!(matches!(c.classify("/raw/my unit@1/c"), Classification::Invalid { .. }));
    }

    #[test]
    fn sanitize_makes_names_valid() {
        let c = classifier(GRID);
        assert_eq!(
            id_of(c.classify("/system.slice/getty@tty1.service")),
            "spiffe://grid.local/unit/getty_tty1.service"
        );
    }

    #[test]
    fn malformed_paths_are_invalid() {
        let c = classifier(GRID);
        for path in ["", "grid/a/b", "/grid/a/b/", "/grid//b", "/grid/../b"] {
            assert!(matches!(c.classify(path), Classification::Invalid { .. }), "{path:?}");
        }
    }

    #[test]
    fn managed_subtrees_are_literal_prefixes() {
        let c = classifier(GRID);
        assert_eq!(c.managed_subtrees(), ["/grid", "/raw", "/system.slice"]);
        let all = Classifier::new(&config::builtin().expect("built-in config"));
        assert_eq!(all.managed_subtrees(), ["/"]);
        let none = classifier("trust_domain: d\n");
        assert!(none.managed_subtrees().is_empty());
        assert_eq!(none.classify("/a"), Classification::Unmanaged);
    }

    #[test]
    fn builtin_config_names_every_cgroup_by_path() {
        let c = Classifier::new(&config::builtin().expect("built-in config"));
        match c.classify("/system.slice/getty@tty1.service/x") {
            Classification::Workload { id, mode, selector } => {
                assert_eq!(
                    id.as_str(),
                    "spiffe://local.gridward/cgroup/system.slice/getty_tty1.service/x"
                );
                assert_eq!((mode, selector), (Mode::Observe, 0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.classify("/"), Classification::Unmanaged);
    }

    #[test]
    fn overlong_ids_are_invalid() {
        let c = Classifier::new(&config::builtin().expect("built-in config"));
        let deep = format!("/{}", vec!["a".repeat(200); 12].join("/"));
        match c.classify(&deep) {
            Classification::Invalid { reason } => {
                assert!(reason.contains("longer than"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
