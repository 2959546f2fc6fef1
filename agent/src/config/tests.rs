//! Config parsing and validation, judged by the exact text a user would see.

use super::*;

const EXAMPLE: &str = r#"trust_domain: grid.local
mode: enforce              # observe | enforce; global default; default observe
scope: /gridward-demo      # cgroup path relative to the cgroup2 mount; default "/"
api_socket: /run/gridward/demo/api.sock   # optional
audit_log: /var/log/gridward/demo.jsonl   # optional
workloads:                 # selectors, tried in order; first match wins at a given cgroup
  - cgroup: "/grid/<ns>/<name>"           # pattern relative to the scope
    spiffe_id: "spiffe://grid.local/ns/<ns>/sa/<name>"
    mode: observe          # optional per-workload override
  - cgroup: "/system.slice/<unit>"
    spiffe_id: "spiffe://grid.local/unit/<unit>"
    sanitize: true         # optional
rules:
  - name: gateway-to-payments             # optional, unique if given
    from: ["spiffe://grid.local/ns/shop/sa/gateway"]
    to: ["spiffe://grid.local/ns/shop/sa/payments"]
    ports: [8443, "9000-9100"]            # optional; absent means all ports; 1..=65535
    protocol: tcp                         # tcp | udp | any; default tcp
    direction: ingress                    # ingress (default) | egress
"#;

/// A valid head that tests append rules or selectors to.
const HEAD: &str = r#"trust_domain: grid.local
workloads:
  - cgroup: "/grid/<ns>/<name>"
    spiffe_id: "spiffe://grid.local/ns/<ns>/sa/<name>"
"#;

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).expect("valid ID")
}

fn error_lines(yaml: &str) -> Vec<String> {
    let error = parse(yaml, "policy.yaml").expect_err("the config should be rejected");
    error.to_string().lines().map(str::to_owned).collect()
}

fn one_error(yaml: &str) -> String {
    let lines = error_lines(yaml);
    assert_eq!(lines.len(), 1, "expected one problem: {lines:#?}");
    lines[0].clone()
}

#[test]
fn parses_the_documented_example() {
    let config = parse(EXAMPLE, "policy.yaml").expect("the example is valid");
    assert_eq!(config.trust_domain.as_str(), "grid.local");
    assert_eq!(config.mode, Mode::Enforce);
    assert_eq!(config.scope, "/gridward-demo");
    assert_eq!(config.api_socket.as_deref(), Some(Path::new("/run/gridward/demo/api.sock")));
    assert_eq!(config.audit_log.as_deref(), Some(Path::new("/var/log/gridward/demo.jsonl")));

    assert_eq!(config.workloads.len(), 2);
    let pods = &config.workloads[0];
    assert_eq!(pods.cgroup.as_str(), "/grid/<ns>/<name>");
    assert_eq!(pods.spiffe_id.as_str(), "spiffe://grid.local/ns/<ns>/sa/<name>");
    assert_eq!((pods.mode, pods.sanitize), (Some(Mode::Observe), false));
    assert_eq!((config.workloads[1].mode, config.workloads[1].sanitize), (None, true));

    let rule = &config.rules[0];
    assert_eq!(rule.name.as_deref(), Some("gateway-to-payments"));
    assert_eq!(rule.from, [Peer::Id(id("spiffe://grid.local/ns/shop/sa/gateway"))]);
    assert_eq!(rule.to, [Peer::Id(id("spiffe://grid.local/ns/shop/sa/payments"))]);
    assert_eq!(
        rule.ports,
        Some(vec![PortRange { lo: 8443, hi: 8443 }, PortRange { lo: 9000, hi: 9100 }])
    );
    assert_eq!((rule.protocol, rule.direction), (Protocol::Tcp, Direction::Ingress));
}

#[test]
fn defaults_fill_what_is_left_out() {
    let yaml = format!("{HEAD}rules:\n  - from: [host]\n    to: [world]\n");
    let config = parse(&yaml, "policy.yaml").expect("valid");
    assert_eq!(config.mode, Mode::Observe);
    assert_eq!(config.scope, "/");
    assert_eq!((config.api_socket, config.audit_log), (None, None));
    assert_eq!((config.workloads[0].mode, config.workloads[0].sanitize), (None, false));
    let rule = &config.rules[0];
    assert_eq!((rule.name.as_deref(), rule.ports.as_deref()), (None, None));
    assert_eq!((rule.protocol, rule.direction), (Protocol::Tcp, Direction::Ingress));

    let bare = parse("trust_domain: d\nworkloads: ~\nrules:\n", "p").expect("valid");
    assert!(bare.workloads.is_empty() && bare.rules.is_empty());
}

#[test]
fn builtin_config_observes_everything() {
    let config = builtin().expect("the built-in config is valid");
    assert_eq!(config.trust_domain.as_str(), "local.gridward");
    assert_eq!((config.mode, config.scope.as_str()), (Mode::Observe, "/"));
    assert!(config.rules.is_empty());
    assert_eq!(config.workloads.len(), 1);
    let selector = &config.workloads[0];
    assert_eq!(selector.cgroup.as_str(), "/<path...>");
    assert_eq!(selector.spiffe_id.as_str(), "spiffe://local.gridward/cgroup/<path...>");
    assert!(selector.sanitize);
}

#[test]
fn reversed_port_range_names_file_line_column_field_and_fix() {
    let yaml = format!(
        "{HEAD}rules:\n  - from: [host]\n    to: [world]\n  - from: [host]\n    to: [world]\n    \
         ports: [\"9100-9000\"]\n"
    );
    assert_eq!(
        one_error(&yaml),
        "policy.yaml:10:13: rules[1].ports[0]: port range \"9100-9000\" is reversed; write the \
         lower port first, e.g. \"9000-9100\""
    );
}

#[test]
fn port_errors_point_at_the_port() {
    let rule =
        |ports: &str| format!("{HEAD}rules:\n  - {{from: [host], to: [world], ports: {ports}}}\n");
    let cases = [
        (
            "[0]",
            "6:41: rules[0].ports[0]: port 0 is not a port a rule can name; ports are 1 to 65535",
        ),
        (
            "[80, 70000]",
            "6:45: rules[0].ports[1]: port 70000 is out of range; ports are 1 to 65535",
        ),
        (
            "[http]",
            "6:41: rules[0].ports[0]: \"http\" is not a port or a port range; write a port such as \
             8443 or a range such as \"9000-9100\"",
        ),
        (
            "[~]",
            "6:41: rules[0].ports[0]: the port is empty; write a port such as 8443 or a range \
             such as \"9000-9100\"",
        ),
        (
            "[[1]]",
            "6:41: rules[0].ports[0]: expected a port such as 8443 or a range such as \
             \"9000-9100\", found a list",
        ),
        ("8443", "6:40: rules[0].ports: expected a list, e.g. [a, b], found integer `8443`"),
        (
            "[]",
            "6:40: rules[0].ports: the list is empty, so the rule allows no port; remove ports \
             to allow every port",
        ),
    ];
    for (ports, expected) in cases {
        assert_eq!(one_error(&rule(ports)), format!("policy.yaml:{expected}"), "{ports}");
    }
}

#[test]
fn unknown_fields_suggest_the_right_one() {
    let yaml = format!("{HEAD}rules:\n  - from: [host]\n    to: [world]\n    prots: [80]\n");
    assert_eq!(
        one_error(&yaml),
        "policy.yaml:8:5: rules[0].prots: unknown field `prots`; did you mean `ports`? the \
         fields here are `name`, `from`, `to`, `ports`, `protocol`, `direction`, `auth`"
    );
    let yaml = "trust_domain: d\nworkloads:\n  - cgroup: /a/<x>\n    spiffe-id: spiffe://d/<x>\n";
    assert_eq!(
        one_error(yaml),
        "policy.yaml:4:5: workloads[0].spiffe-id: unknown field `spiffe-id`; did you mean \
         `spiffe_id`? the fields here are `cgroup`, `spiffe_id`, `mode`, `sanitize`"
    );
    assert_eq!(
        one_error("trust_domain: d\nselectors: []\n"),
        "policy.yaml:2:1: selectors: unknown field `selectors`; did you mean `workloads`? the \
         fields here are `trust_domain`, `mode`, `scope`, `api_socket`, `audit_log`, \
         `workloads`, `rules`, `identity`, `peering`"
    );
    assert_eq!(
        one_error("trust_domain: d\ncolour: blue\n"),
        "policy.yaml:2:1: colour: unknown field `colour`; the fields here are `trust_domain`, \
         `mode`, `scope`, `api_socket`, `audit_log`, `workloads`, `rules`, `identity`, `peering`"
    );
}

#[test]
fn missing_fields_say_what_to_add() {
    assert_eq!(
        one_error("mode: enforce\n"),
        "policy.yaml:1:1: missing field `trust_domain`; add the trust domain this agent speaks \
         for, e.g. trust_domain: grid.local"
    );
    assert_eq!(
        one_error(""),
        "policy.yaml:1:1: missing field `trust_domain`; add the trust domain this agent speaks \
         for, e.g. trust_domain: grid.local"
    );
    let yaml = format!("{HEAD}rules:\n  - to: [world]\n");
    assert_eq!(
        one_error(&yaml),
        "policy.yaml:6:5: rules[0]: missing field `from`; add who may connect, e.g. from: \
         [\"spiffe://grid.local/ns/shop/sa/gateway\"]"
    );
    assert_eq!(
        one_error("trust_domain: d\nworkloads:\n  - cgroup: /a\n"),
        "policy.yaml:3:5: workloads[0]: missing field `spiffe_id`; add the ID its workloads \
         get, e.g. spiffe_id: \"spiffe://grid.local/ns/<ns>/sa/<name>\""
    );
}

#[test]
fn duplicate_keys_point_at_the_second() {
    assert_eq!(
        one_error("trust_domain: a\nmode: observe\ntrust_domain: b\n"),
        "policy.yaml:3:1: `trust_domain` is set twice here; keep one of them"
    );
    let yaml = format!("{HEAD}rules:\n  - {{from: [host], to: [world], from: [world]}}\n");
    assert_eq!(
        one_error(&yaml),
        "policy.yaml:6:33: rules[0]: `from` is set twice here; keep one of them"
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    assert_eq!(
        one_error("trust_domain: d\nrules: {a: 1}\n"),
        "policy.yaml:2:8: rules: expected a list, e.g. [a, b], found a mapping"
    );
    assert_eq!(
        one_error("- a\n"),
        "policy.yaml:1:1: expected a mapping of `key: value` lines, found a list"
    );
    let yaml =
        "trust_domain: d\nworkloads:\n  - {cgroup: /a, spiffe_id: spiffe://d/a, sanitize: yes}\n";
    assert_eq!(
        one_error(yaml),
        "policy.yaml:3:53: workloads[0].sanitize: expected true or false, found string \"yes\""
    );
    let yaml = format!("{HEAD}rules:\n  - from: host\n    to: [world]\n");
    assert_eq!(
        one_error(&yaml),
        "policy.yaml:6:11: rules[0].from: expected a list, e.g. [a, b], found string \"host\""
    );
}

#[test]
fn top_level_values_are_checked_where_they_stand() {
    let cases = [
        (
            "trust_domain: Grid.local\n",
            "1:15: trust_domain: \"Grid.local\" is not a trust domain name: the trust domain \
             has the character 'G'; only lowercase letters, digits, '.', '-' and '_' are \
             allowed (no port, no userinfo); write a name such as grid.local",
        ),
        (
            "trust_domain: spiffe://grid.local\n",
            "1:15: trust_domain: write the trust domain without \"spiffe://\", e.g. \"grid.local\"",
        ),
        (
            "trust_domain:\n",
            "1:14: trust_domain: the trust domain is empty; write a name such as grid.local",
        ),
        (
            "trust_domain: d\nmode: Enforce\n",
            "2:7: mode: \"Enforce\" is not a mode; write it in lowercase: enforce",
        ),
        (
            "trust_domain: d\nmode: strict\n",
            "2:7: mode: \"strict\" is not a mode; write observe or enforce",
        ),
        (
            "trust_domain: d\nscope: gridward\n",
            "2:8: scope: the scope \"gridward\" does not start with '/'; write a path such as \
                /gridward-demo",
        ),
        (
            "trust_domain: d\nscope: /a/\n",
            "2:8: scope: the scope \"/a/\" ends with '/'; write a path such as /gridward-demo",
        ),
        (
            "trust_domain: d\nscope: /sys/fs/cgroup/demo\n",
            "2:8: scope: the scope is relative to the cgroup2 mount; write \"/demo\", not \
                \"/sys/fs/cgroup/demo\"",
        ),
        (
            "trust_domain: d\napi_socket: api.sock\n",
            "2:13: api_socket: \"api.sock\" is not an absolute path; write one that starts with \
                '/', e.g. \"/run/gridward/api.sock\"",
        ),
        (
            "trust_domain: d\naudit_log: /var/log/\n",
            "2:12: audit_log: \"/var/log/\" names a directory; write the path of a file in it",
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(one_error(yaml), format!("policy.yaml:{expected}"), "{yaml:?}");
    }
}

#[test]
fn selector_values_are_checked_where_they_stand() {
    let selector = |cgroup: &str, id: &str| {
        format!("trust_domain: d\nworkloads:\n  - cgroup: {cgroup}\n    spiffe_id: {id}\n")
    };
    let cases = [
        (
            selector("grid/<a>", "spiffe://d/<a>"),
            "3:13: workloads[0].cgroup: a cgroup pattern starts with '/' (it is relative to the \
                scope); write \"/grid/<a>\"",
        ),
        (
            selector("\"/pod-<a>\"", "spiffe://d/<a>"),
            "3:13: workloads[0].cgroup: the segment \"pod-<a>\" mixes a capture with text; '<' and \
                '>' must enclose a whole segment, as in \"/<name>\"",
        ),
        (
            selector("\"/<p...>/x\"", "spiffe://d/<p>"),
            "3:13: workloads[0].cgroup: <p...> takes the rest of the path, so it must be the last \
                segment; use <p> for one segment",
        ),
        (
            selector("\"/<a>\"", "d/<a>"),
            "4:16: workloads[0].spiffe_id: a SPIFFE ID template starts with \"spiffe://\", e.g. \
                \"spiffe://grid.local/ns/<ns>/sa/<name>\"",
        ),
        (
            selector("\"/<a>\"", "spiffe://d"),
            "4:16: workloads[0].spiffe_id: the template has no path, so every workload would get \
                the same ID; add one, e.g. \"spiffe://d/workload/<name>\"",
        ),
        (
            selector("\"/<a>\"", "\"spiffe://d/a b/<a>\""),
            "4:16: workloads[0].spiffe_id: the path is not valid even before captures are filled \
                in: the path has the character ' '; only letters, digits, '.', '-' and '_' are \
                allowed (no percent-encoding, query or fragment)",
        ),
        (
            selector("\"/<a>\"", "spiffe://d/<a"),
            "4:16: workloads[0].spiffe_id: a '<' is not closed by '>'; write captures as <name>",
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(one_error(&yaml), format!("policy.yaml:{expected}"), "{yaml}");
    }
}

#[test]
fn rule_values_are_checked_where_they_stand() {
    let rule = |body: &str| format!("{HEAD}rules:\n  - {body}\n");
    let cases = [
        (
            rule("{from: [Host], to: [world]}"),
            "6:13: rules[0].from[0]: \"Host\" is not a peer; write it in lowercase: host",
        ),
        (
            rule("{from: [payments], to: [world]}"),
            "6:13: rules[0].from[0]: \"payments\" is not a peer; write a SPIFFE ID such as \
                \"spiffe://grid.local/ns/shop/sa/api\", a prefix such as \
                \"spiffe://grid.local/ns/shop/*\", host or world",
        ),
        (
            rule("{from: [host], to: [\"spiffe://grid.local/ns/*/sa/api\"]}"),
            "6:25: rules[0].to[0]: \"spiffe://grid.local/ns/*/sa/api\" has a '*' that is not the \
                whole last segment; a prefix ends in \"/*\", e.g. \
                \"spiffe://grid.local/ns/shop/*\"",
        ),
        (
            rule("{from: [host], to: [world], protocol: icmp}"),
            "6:43: rules[0].protocol: \"icmp\" is not a protocol; write tcp, udp or any",
        ),
        (
            rule("{from: [host], to: [world], direction: in}"),
            "6:44: rules[0].direction: \"in\" is not a direction; write ingress or egress",
        ),
        (
            rule("{name: \"a b\", from: [host], to: [world]}"),
            "6:12: rules[0].name: the name \"a b\" has the character ' '; names use letters, \
                digits, '-', '_' and '.', e.g. gateway-to-payments",
        ),
        (
            rule("{from: [], to: [world]}"),
            "6:12: rules[0].from: the list is empty, so the rule allows nothing; name who may \
                connect, e.g. from: [world]",
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(one_error(&yaml), format!("policy.yaml:{expected}"), "{yaml}");
    }
}

#[test]
fn cross_field_problems_are_all_reported_with_positions() {
    let yaml = r#"trust_domain: grid.local
workloads:
  - cgroup: "/grid/<ns>/<name>"
    spiffe_id: "spiffe://grid.local/ns/<ns>/sa/<nmae>"
  - cgroup: "/other/<x>"
    spiffe_id: "spiffe://other.local/<x>"
  - cgroup: "/k8s/<ns>/<pod>"
    spiffe_id: "spiffe://grid.local/k8s/<ns>/<pod>"
rules:
  - name: one
    from: ["spiffe://other.local/x"]
    to: ["spiffe://grid.local/k8s/shop/api", "spiffe://grid.local/k8z/*"]
  - name: one
    from: [host, "spiffe://grid.local/k8s/shop/api/extra"]
    to: [world]
"#;
    assert_eq!(
        error_lines(yaml),
        [
            "policy.yaml:4:16: workloads[0].spiffe_id: the template uses <nmae>, which the \
             cgroup pattern \"/grid/<ns>/<name>\" does not capture; it captures <ns>, <name>",
            "policy.yaml:6:16: workloads[1].spiffe_id: the ID is in trust domain \
             \"other.local\", but trust_domain is \"grid.local\"; workload IDs must be in the \
             config's trust domain",
            "policy.yaml:11:12: rules[0].from[0]: \"spiffe://other.local/x\" is in trust domain \
             \"other.local\", but trust_domain is \"grid.local\"; rules name identities of the \
             config's trust domain",
            "policy.yaml:12:46: rules[0].to[1]: no workload selector gives a cgroup an ID under \
             this prefix (\"spiffe://grid.local/k8z/*\"); the selectors give \
             spiffe://grid.local/ns/<ns>/sa/<nmae>, spiffe://other.local/<x>, \
             spiffe://grid.local/k8s/<ns>/<pod>; check the spelling",
            "policy.yaml:13:11: rules[1].name: the name \"one\" is already used by rules[0]; \
             rule names must be unique",
            "policy.yaml:14:18: rules[1].from[1]: no workload selector gives a cgroup this ID \
             (\"spiffe://grid.local/k8s/shop/api/extra\"); the selectors give \
             spiffe://grid.local/ns/<ns>/sa/<nmae>, spiffe://other.local/<x>, \
             spiffe://grid.local/k8s/<ns>/<pod>; check the spelling",
        ]
    );
}

#[test]
fn peers_need_a_selector_that_can_produce_them() {
    let rule = |peer: &str| format!("{HEAD}rules:\n  - {{from: [host], to: [\"{peer}\"]}}\n");
    for good in [
        "spiffe://grid.local/ns/shop/sa/api",
        "spiffe://grid.local/ns/shop/*",
        "spiffe://grid.local/ns/*",
        "spiffe://grid.local/*",
    ] {
        assert!(parse(&rule(good), "p").is_ok(), "{good}");
    }
    for bad in [
        "spiffe://grid.local/ns/shop",
        "spiffe://grid.local/sa/*",
        "spiffe://grid.local/ns/a/sa/b/*",
    ] {
        let error = one_error(&rule(bad));
        assert!(error.contains("no workload selector gives a cgroup"), "{bad}: {error}");
    }
    let none = "trust_domain: d\nrules:\n  - {from: [world], to: [\"spiffe://d/*\"]}\n";
    assert_eq!(
        one_error(none),
        "policy.yaml:3:26: rules[0].to[0]: no workload can have an ID under this prefix: there \
         are no selectors; add one under workloads"
    );
}

#[test]
fn yaml_syntax_errors_are_located() {
    assert_eq!(
        one_error("trust_domain: 'grid.local\n"),
        "policy.yaml:2:1: trust_domain: the file is not valid YAML here: found unexpected end \
         of stream, while scanning a quoted scalar at line 1 column 15"
    );
    assert_eq!(
        one_error("trust_domain: d\nrules: [\n"),
        "policy.yaml:3:1: rules: the file is not valid YAML here: did not find expected node \
         content, while parsing a flow node"
    );
    assert_eq!(
        one_error("trust_domain: a\n---\ntrust_domain: b\n"),
        "policy.yaml: the file holds more than one YAML document; keep one and remove the '---' \
         lines"
    );
}

#[test]
fn errors_escape_control_characters() {
    let error = one_error("trust_domain: d\n\"\\e[31mred\": 1\n");
    assert!(error.contains("unknown field `\\u{1b}[31mred`"), "{error}");
    assert!(!error.contains('\u{1b}'));
}

#[test]
fn many_problems_are_capped() {
    let mut yaml = String::from(HEAD);
    yaml.push_str("rules:\n");
    for _ in 0..30 {
        yaml.push_str("  - {name: same, from: [host], to: [world]}\n");
    }
    let error = parse(&yaml, "policy.yaml").expect_err("duplicate names");
    assert_eq!(error.problems().len(), 29);
    let lines = error_lines(&yaml);
    assert_eq!(lines.len(), error::MAX_SHOWN + 1);
    assert_eq!(
        lines[0],
        "policy.yaml:7:12: rules[1].name: the name \"same\" is already used by rules[0]; \
         rule names must be unique"
    );
    assert_eq!(lines[error::MAX_SHOWN], "policy.yaml: and 9 more problems");
}

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("gridward-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let good = TempFile::new("good.yaml", EXAMPLE.as_bytes());
    assert_eq!(load(&good.0).expect("valid"), parse(EXAMPLE, "x").expect("valid"));

    let bad = TempFile::new("bad.yaml", b"trust_domain: d\nmode: on\n");
    let text = load(&bad.0).expect_err("invalid").to_string();
    assert_eq!(
        text,
        format!("{}:2:7: mode: \"on\" is not a mode; write observe or enforce", bad.0.display())
    );

    let binary = TempFile::new("binary.yaml", b"trust_domain: d\nmode: \xff\n");
    let text = load(&binary.0).expect_err("not utf-8").to_string();
    assert_eq!(
        text,
        format!(
            "{}:2:7: the file is not UTF-8 text from here on; save it as UTF-8",
            binary.0.display()
        )
    );
}

#[test]
fn load_reports_unreadable_and_oversized_files() {
    let missing = std::env::temp_dir().join("gridward-no-such-config.yaml");
    let error = load(&missing).expect_err("missing");
    assert!(matches!(error, ConfigError::Read { .. }));
    assert_eq!(error.to_string(), format!("cannot read the config file {}", missing.display()));
    assert!(std::error::Error::source(&error).is_some());

    let big = TempFile::new("big.yaml", b"");
    let file = std::fs::OpenOptions::new().write(true).open(&big.0).expect("open");
    // Sparse: no real disk space is used.
    file.set_len(MAX_FILE_BYTES + 1).expect("grow");
    let error = load(&big.0).expect_err("too large");
    assert!(matches!(error, ConfigError::TooLarge { .. }), "{error}");
}

#[test]
fn prefix_peers_match_ids_strictly_below() {
    let peer = Peer::Prefix(id("spiffe://d/ns/shop"));
    assert!(peer.matches(&id("spiffe://d/ns/shop/api")));
    assert!(peer.matches(&id("spiffe://d/ns/shop/a/b")));
    assert!(!peer.matches(&id("spiffe://d/ns/shop")));
    assert!(!peer.matches(&id("spiffe://d/ns/shopping/api")));
    assert!(!peer.matches(&id("spiffe://e/ns/shop/api")));
    let domain = Peer::Prefix(id("spiffe://d"));
    assert!(domain.matches(&id("spiffe://d/x")));
    assert_eq!(domain.to_string(), "spiffe://d/*");
    assert!(!Peer::Host.matches(&id("spiffe://d/x")));
}

#[test]
fn mode_has_a_lowercase_serde_form() {
    assert_eq!(serde_json::to_string(&Mode::Enforce).expect("serialize"), "\"enforce\"");
    let mode: Mode = serde_json::from_str("\"observe\"").expect("deserialize");
    assert_eq!(mode, Mode::Observe);
    assert!(serde_json::from_str::<Mode>("\"Observe\"").is_err());
    assert_eq!(Mode::Enforce.to_string(), "enforce");
}

#[test]
fn problems_are_structured_for_callers() {
    let error = parse("trust_domain: d\nmode: on\n", "policy.yaml").expect_err("invalid");
    assert_eq!(
        error.problems(),
        [Problem {
            line: Some(2),
            column: Some(7),
            field: "mode".to_owned(),
            message: "\"on\" is not a mode; write observe or enforce".to_owned(),
        }]
    );
}

#[test]
fn aliases_work_and_merge_keys_are_refused_plainly() {
    let yaml = format!(
        "{HEAD}rules:\n  - {{from: &edge [host, world], to: [world]}}\n  \
         - {{from: *edge, to: [host]}}\n"
    );
    let config = parse(&yaml, "policy.yaml").expect("valid");
    assert_eq!(config.rules[1].from, [Peer::Host, Peer::World]);

    let yaml = format!(
        "{HEAD}rules:\n  - &base {{from: [host], to: [world]}}\n  - {{<<: *base, ports: [1]}}\n"
    );
    assert_eq!(
        one_error(&yaml),
        "policy.yaml:7:6: rules[1].<<: YAML merge keys (<<) are not supported here; write the \
         fields out"
    );
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    let deep = format!("trust_domain: d\nrules: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let error = one_error(&deep);
    assert!(error.contains("nesting deeper than 64 levels"), "{error}");
    assert!(error.starts_with("policy.yaml:2:1:"), "{error}");
    let dashes = format!("trust_domain: d\nrules:\n{}x\n", "- ".repeat(200));
    assert!(one_error(&dashes).contains("nesting deeper"));
}
