//! The crate docs promise that no module of the runtime imports a module that imports
//! it back, directly or through others. This reads the sources and holds them to it.
//!
//! A module is a source file (`executor/partition.rs` is `executor::partition`). It
//! imports another when it names a path into it (`crate::sink::Ack`, `super::state`),
//! in a `use` or inline. A path to an item a module re-exports (`pub use`) counts as
//! a path to where the item is defined. A module's own parent and children are not
//! counted: a parent declares its children, and that is not an import. Test modules
//! (`#[cfg(test)] mod tests`) are left out; they import what they test.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every module of `src`, by path, with its source (comments and test modules removed).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the source folder reads") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            let name = parts.join("::");
            let text = std::fs::read_to_string(&path).expect("a source file reads");
            out.insert(name, without_tests(&without_comments(&text)));
        }
    }
    out
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` without its `#[cfg(test)] mod NAME { ... }` blocks.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let is_mod = after.trim_start().starts_with("mod ") && {
            let line_end = after.find(['{', ';']).unwrap_or(after.len());
            after[..line_end].trim_start().starts_with("mod ") && after[line_end..].starts_with('{')
        };
        if !is_mod {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let open = after.find('{').expect("checked above");
        rest = &after[matching_brace(after, open) + 1..];
    }
    out.push_str(rest);
    out
}

/// The index of the `}` that closes the `{` at `open`.
fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    text.len() - 1
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path `text` names that starts with `crate`, `super` or `self`, with `use`
/// groups (`use super::{a, b::C}`) expanded.
fn paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            if at > 0 && (is_ident(bytes[at - 1] as char) || bytes[at - 1] == b':') {
                continue;
            }
            expand(&text[at..], String::new(), &mut out);
        }
    }
    out
}

/// Reads one path (or `use` tree) at the start of `text`, after `prefix`.
fn expand(text: &str, prefix: String, out: &mut Vec<String>) {
    let mut path = prefix;
    let mut rest = text.trim_start();
    loop {
        let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if len == 0 && rest.starts_with('{') {
            let close = matching_brace(rest, 0);
            for part in split_top(&rest[1..close]) {
                expand(part, path.clone(), out);
            }
            return;
        }
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(&rest[..len]);
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            Some(more) => rest = more.trim_start(),
            None => break,
        }
    }
    out.push(path);
}

/// `text` split at the commas outside braces.
fn split_top(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// `path` as written in module `from`, made absolute (no `crate`, `super`, `self`).
fn absolute(from: &str, path: &str) -> Vec<String> {
    let mut here: Vec<String> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").map(str::to_owned).collect()
    };
    let mut out = Vec::new();
    for (i, seg) in path.split("::").enumerate() {
        match seg {
            "crate" if i == 0 => here.clear(),
            "super" if out.is_empty() => {
                here.pop();
            }
            "self" if out.is_empty() => {}
            _ => out.push(seg.to_owned()),
        }
    }
    here.extend(out);
    here
}

/// What each module re-exports: `(module, item)` → the absolute path it names.
fn reexports(mods: &BTreeMap<String, String>) -> BTreeMap<(String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for (name, text) in mods {
        for stmt in text.split(';') {
            let stmt = stmt.trim();
            let Some(tree) = stmt
                .strip_prefix("pub use ")
                .or_else(|| stmt.strip_prefix("pub(crate) use "))
                .or_else(|| stmt.strip_prefix("pub(super) use "))
            else {
                continue;
            };
            let tree = if ["crate::", "super::", "self::"]
                .iter()
                .any(|p| tree.starts_with(p))
            {
                tree.to_owned()
            } else {
                format!("self::{tree}")
            };
            let mut named = Vec::new();
            expand(&tree, String::new(), &mut named);
            for p in named {
                let abs = absolute(name, &p);
                if let Some(item) = abs.last() {
                    out.insert((name.clone(), item.clone()), abs.clone());
                }
            }
        }
    }
    out
}

/// The module `path` leads into: the longest module prefix, through re-exports.
fn resolve(
    mods: &BTreeMap<String, String>,
    reexports: &BTreeMap<(String, String), Vec<String>>,
    mut path: Vec<String>,
) -> Option<String> {
    for _ in 0..8 {
        let (n, module) = (0..=path.len())
            .rev()
            .map(|n| (n, path[..n].join("::")))
            .find(|(_, m)| mods.contains_key(m))?;
        match path.get(n) {
            Some(item) if reexports.contains_key(&(module.clone(), item.clone())) => {
                let mut next = reexports[&(module, item.clone())].clone();
                next.extend(path[n + 1..].iter().cloned());
                path = next;
            }
            _ => return Some(module),
        }
    }
    None
}

fn related(a: &str, b: &str) -> bool {
    a.is_empty()
        || b.is_empty()
        || a == b
        || a.starts_with(&format!("{b}::"))
        || b.starts_with(&format!("{a}::"))
}

fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let reexports = reexports(&mods);
    let mut graph = Graph::new();
    for (name, text) in &mods {
        let imports = graph.entry(name.clone()).or_default();
        for p in paths(text) {
            if let Some(to) = resolve(&mods, &reexports, absolute(name, &p))
                && !related(name, &to)
            {
                imports.insert(to);
            }
        }
    }
    graph
}

/// A cycle of `graph`, as the modules along it, if it has one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(graph, next, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(graph, n, &mut Vec::new(), &mut done))
}

#[test]
fn the_runtime_modules_import_each_other_without_cycles() {
    let graph = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The reader finds what is there: imports written every way the crate writes them.
    let imports = |a: &str, b: &str| graph.get(a).is_some_and(|i| i.contains(b));
    assert!(
        imports("job", "executor::state"),
        "a `use crate::executor::{{..}}` re-export"
    );
    assert!(
        imports("executor::task", "executor::dispatch"),
        "a `use super::` path"
    );
    assert!(
        imports("record", "kafka::headers"),
        "an inline `crate::` path"
    );
    assert!(
        imports("health", "executor::state"),
        "`JobStats`, re-exported"
    );
    if let Some(cycle) = cycle(&graph) {
        panic!(
            "the runtime's modules import each other in a cycle: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut graph = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(
        cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    graph.get_mut("c").expect("c").clear();
    assert_eq!(cycle(&graph), None);
}
