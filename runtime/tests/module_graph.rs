//! The crate docs promise that no module of the runtime imports a module that imports
//! it back, directly or through others. This reads the sources and holds them to it.
//!
//! A module is a source file (`executor/partition.rs` is `executor::partition`). It
//! imports another when it names a path into it (`crate::sink::Ack`, `super::state`),
//! in a `use`, in code, or inside a macro's arguments. A path to an item a module
//! re-exports (`pub use`) counts as a path to where the item is defined. A module's own
//! parent and children are not counted: a parent declares its children, and that is not
//! an import. Test modules (`#[cfg(test)] mod tests`) are left out; they import what
//! they test. The files are parsed with `syn`, so comments and strings never count.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every module of `src`, by path, with its parsed source.
fn modules(src: &Path) -> BTreeMap<String, syn::File> {
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
            let text = std::fs::read_to_string(&path).expect("a source file reads");
            let file = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            out.insert(parts.join("::"), file);
        }
    }
    out
}

/// The paths a module names that start with `crate`, `super` or `self`, as segments;
/// and, for `pub use` items, what each re-exported name stands for.
#[derive(Default)]
struct Named {
    paths: Vec<Vec<String>>,
    /// `(name, path)` per name a `pub use` makes public.
    reexports: Vec<(String, Vec<String>)>,
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

/// Each path of a `use` tree, with the name it is known by here.
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut path = prefix.clone();
            path.push(n.ident.to_string());
            out.push((n.ident.to_string(), path));
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.push((r.rename.to_string(), path));
        }
        syn::UseTree::Glob(_) => out.push(("*".into(), prefix.clone())),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| use_paths(t, prefix, out)),
    }
}

fn anchored(path: &[String]) -> bool {
    path.first()
        .is_some_and(|s| s == "crate" || s == "super" || s == "self")
}

impl Named {
    /// Paths written inside a macro's arguments (`format!`, `tracing::warn!`), which
    /// `syn` leaves as tokens: `crate :: a :: b` runs.
    fn scan(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            if let TokenTree::Group(g) = &tokens[i] {
                self.scan(g.stream());
            }
            let starts = matches!(&tokens[i], TokenTree::Ident(id)
                if id == "crate" || id == "super" || id == "self");
            if !starts {
                i += 1;
                continue;
            }
            let mut path = vec![tokens[i].to_string()];
            let mut j = i + 1;
            while let (
                Some(TokenTree::Punct(a)),
                Some(TokenTree::Punct(b)),
                Some(TokenTree::Ident(id)),
            ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
            {
                if a.as_char() != ':' || b.as_char() != ':' {
                    break;
                }
                path.push(id.to_string());
                j += 3;
            }
            if path.len() > 1 {
                self.paths.push(path);
            }
            i = j;
        }
    }
}

impl<'ast> Visit<'ast> for Named {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if is_test(&u.attrs) {
            return;
        }
        let mut named = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut named);
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        for (name, mut path) in named {
            if public && name != "*" {
                // In a `use`, a path that does not start at `crate`, `super` or `self`
                // names a child module (or another crate, which resolves to nothing).
                if !anchored(&path) {
                    path.insert(0, "self".into());
                }
                self.reexports.push((name, path.clone()));
            }
            if anchored(&path) {
                self.paths.push(path);
            }
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let path: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if anchored(&path) {
            self.paths.push(path);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.scan(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// `path` as written in module `from`, made absolute (no `crate`, `super`, `self`).
fn absolute(from: &str, path: &[String]) -> Vec<String> {
    let mut here: Vec<String> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").map(str::to_owned).collect()
    };
    let mut out = Vec::new();
    for (i, seg) in path.iter().enumerate() {
        match seg.as_str() {
            "crate" if i == 0 => here.clear(),
            "super" if out.is_empty() => {
                here.pop();
            }
            "self" if out.is_empty() => {}
            _ => out.push(seg.clone()),
        }
    }
    here.extend(out);
    here
}

/// The module `path` leads into: the longest module prefix, through re-exports.
fn resolve(
    mods: &BTreeSet<String>,
    reexports: &BTreeMap<(String, String), Vec<String>>,
    mut path: Vec<String>,
) -> Option<String> {
    for _ in 0..8 {
        let (n, module) = (0..=path.len())
            .rev()
            .map(|n| (n, path[..n].join("::")))
            .find(|(_, m)| mods.contains(m))?;
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
    let named: BTreeMap<String, Named> = modules(src)
        .into_iter()
        .map(|(name, file)| {
            let mut n = Named::default();
            n.visit_file(&file);
            (name, n)
        })
        .collect();
    let mods: BTreeSet<String> = named.keys().cloned().collect();
    let reexports: BTreeMap<(String, String), Vec<String>> = named
        .iter()
        .flat_map(|(module, n)| {
            n.reexports
                .iter()
                .map(|(item, path)| ((module.clone(), item.clone()), absolute(module, path)))
        })
        .collect();
    let mut graph = Graph::new();
    for (name, n) in &named {
        let imports = graph.entry(name.clone()).or_default();
        for p in &n.paths {
            if let Some(to) = resolve(&mods, &reexports, absolute(name, p))
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
