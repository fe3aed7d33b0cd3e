//! The crate's layout, checked: the module dependency graph of `src/` is drawn from its
//! `crate::`, `super::` and child-module paths, and must follow the layers below with no
//! loops. `docs/architecture.md` explains the layers; this test keeps them true.
//!
//! What counts as a dependency: any path in non-comment code outside `#[cfg(test)]`
//! items (tests may reach anywhere). Two rules:
//! 1. Between areas (the top-level modules), an area may only use areas listed before it
//!    in [`LAYERS`]; nothing runs back up, so there is no loop between areas.
//! 2. Inside an area, the files other than its `mod.rs` form no loop. A file using its
//!    own area's `mod.rs` (the area's shared items) is the normal Rust shape and allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The areas, lowest first. An area may use only the areas before it.
const LAYERS: &[&str] = &[
    // Leaves.
    "metrics",
    "error",
    "drain",
    "stream",
    "http",
    "tunnel",
    "tls",
    // Admission limits: keyed by what the request carries.
    "limit",
    // Pools, routes and the snapshot holding them.
    "upstream",
    "route",
    "snapshot",
    // A connection and the phases of its requests.
    "conn",
    "observe",
    "forward",
    "upgrade",
    "request",
    "listen",
    // Around the data plane.
    "handoff",
    "reload",
    "admin",
    "lifecycle",
];

type ModPath = Vec<String>;

struct Module {
    file: PathBuf,
    /// Production code only: comments and `#[cfg(test)]` blocks removed.
    code: String,
}

fn modules(src: &Path) -> BTreeMap<ModPath, Module> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: ModPath = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let last = parts.pop().unwrap();
            let stem = last.trim_end_matches(".rs");
            if stem != "mod" && stem != "lib" {
                parts.push(stem.to_string());
            }
            let text = fs::read_to_string(&path).unwrap();
            out.insert(
                parts,
                Module {
                    file: rel.to_path_buf(),
                    code: production_code(&text),
                },
            );
        }
    }
    out
}

/// Drops comments and every `#[cfg(test)]` item (the item after the attribute, up to its
/// closing brace or semicolon).
fn production_code(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let line = match line.find(" //") {
            Some(at) => &line[..at],
            None => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => {
                    end = i + 1;
                    break;
                }
                '}' => depth = depth.saturating_sub(1),
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every path (as segments) that starts at `prefix` in `code`: `prefix::a::b` and the
/// expanded form of `prefix::{a::{b, c}, d}`.
fn paths_after(code: &str, prefix: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        parse_tree(rest, Vec::new(), &mut out);
    }
    out
}

/// Parses one use-tree at the start of `s`, appending the full paths it names.
fn parse_tree(s: &str, base: ModPath, out: &mut Vec<ModPath>) -> usize {
    let mut path = base;
    let mut i = 0;
    let bytes = s.as_bytes();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'{' {
            i += 1;
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    return i + 1;
                }
                i += parse_tree(&s[i..], path.clone(), out);
            }
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if start < i {
            path.push(s[start..i].to_string());
        }
        if s[i..].starts_with("::") {
            i += 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// The module a path names: its longest prefix that is a file of the crate.
fn resolve<'a>(mods: &'a BTreeMap<ModPath, Module>, path: &[String]) -> &'a ModPath {
    (0..=path.len())
        .rev()
        .find_map(|n| mods.get_key_value(&path[..n]).map(|(k, _)| k))
        .unwrap()
}

/// The modules that `module`'s code uses, through `crate::`, `super::` or a child
/// module's bare name.
fn dependencies(mods: &BTreeMap<ModPath, Module>, module: &ModPath) -> BTreeSet<ModPath> {
    let code = &mods[module].code;
    let mut deps = BTreeSet::new();
    for path in paths_after(code, "crate::") {
        deps.insert(resolve(mods, &path).clone());
    }
    let parent: ModPath = module[..module.len().saturating_sub(1)].to_vec();
    for path in paths_after(code, "super::") {
        let full: ModPath = parent.iter().cloned().chain(path).collect();
        deps.insert(resolve(mods, &full).clone());
    }
    // Child modules used by their bare name (`plugins::run` in `request/mod.rs`).
    for child in mods
        .keys()
        .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
    {
        let name = child.last().unwrap();
        for path in paths_after(code, &format!("{name}::")) {
            let full: ModPath = child.iter().cloned().chain(path).collect();
            deps.insert(resolve(mods, &full).clone());
        }
    }
    deps.remove(module);
    deps
}

fn graph() -> (
    BTreeMap<ModPath, Module>,
    BTreeMap<ModPath, BTreeSet<ModPath>>,
) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let graph = mods
        .keys()
        .map(|m| (m.clone(), dependencies(&mods, m)))
        .collect();
    (mods, graph)
}

#[test]
fn every_area_is_in_a_layer() {
    let (mods, _) = graph();
    let areas: BTreeSet<&str> = mods
        .keys()
        .filter_map(|m| m.first().map(String::as_str))
        .collect();
    let listed: BTreeSet<&str> = LAYERS.iter().copied().collect();
    assert_eq!(
        areas, listed,
        "every top-level module must appear exactly once in LAYERS"
    );
}

#[test]
fn areas_only_use_lower_layers() {
    let (mods, graph) = graph();
    let rank = |area: &str| LAYERS.iter().position(|a| *a == area);
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(from) = module.first() else { continue };
        for dep in deps {
            let Some(to) = dep.first() else { continue };
            if from != to && rank(to) >= rank(from) {
                wrong.push(format!(
                    "{} uses {} ({to} is not below {from})",
                    mods[module].file.display(),
                    mods[dep].file.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn files_inside_an_area_form_no_loop() {
    let (mods, graph) = graph();
    // Edges between two files of one area, neither being the area's root `mod.rs`
    // nor an ancestor of the other.
    let edges = |m: &ModPath| -> Vec<ModPath> {
        graph[m]
            .iter()
            .filter(|d| d.first() == m.first() && d.len() > 1 && !m.starts_with(d))
            .cloned()
            .collect()
    };
    // Depth-first search for a back edge, reporting the loop it closes.
    fn visit(
        m: &ModPath,
        edges: &dyn Fn(&ModPath) -> Vec<ModPath>,
        on_path: &mut Vec<ModPath>,
        done: &mut BTreeSet<ModPath>,
    ) -> Option<Vec<ModPath>> {
        if let Some(at) = on_path.iter().position(|p| p == m) {
            return Some(on_path[at..].to_vec());
        }
        if !done.insert(m.clone()) {
            return None;
        }
        on_path.push(m.clone());
        for next in edges(m) {
            if let Some(cycle) = visit(&next, edges, on_path, done) {
                return Some(cycle);
            }
        }
        on_path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys().filter(|m| m.len() > 1) {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let files: Vec<String> = cycle
                .iter()
                .map(|m| mods[m].file.display().to_string())
                .collect();
            panic!("import loop: {}", files.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_the_edges_it_polices() {
    // Guards the parser itself: edges known to exist must be found, or the rules above
    // would pass on an empty graph.
    let (_, graph) = graph();
    let has = |from: &[&str], to: &[&str]| {
        let from: ModPath = from.iter().map(|s| s.to_string()).collect();
        let to: ModPath = to.iter().map(|s| s.to_string()).collect();
        graph[&from].contains(&to)
    };
    assert!(
        has(&["upstream", "keepalive"], &["http", "body"]),
        "crate:: path"
    );
    assert!(
        has(&["listen", "service"], &["request"]),
        "inline crate:: path"
    );
    assert!(
        has(&["upgrade", "client"], &["upgrade", "switched"]),
        "super:: path"
    );
    assert!(
        has(&["request"], &["request", "plugins"]),
        "child by bare name"
    );
    assert!(has(&["reload"], &["listen"]), "grouped use");
    assert!(has(&["reload"], &["limit"]), "grouped use with a path");
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(
        edges > 60,
        "only {edges} edges found; the parser is missing paths"
    );
}
