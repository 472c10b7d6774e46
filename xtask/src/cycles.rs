//! `cargo xtask cycles`: fails on an import cycle between the modules of a crate.
//!
//! Each crate of the workspace (the root package's library and binary, and every
//! `members` entry of the root `Cargo.toml`) is read from its root file (`lib.rs`,
//! `main.rs`) down its `mod` declarations, the way rustc finds the files: a module
//! is a file (`commands::apply` is `src/commands/apply.rs` or
//! `src/commands/apply/mod.rs`) or an inline `mod x { .. }`. Every `.rs` file is
//! parsed with syn; a module depends on another when it names it or an item in it:
//! in a `use` (`use crate::policy::Policy`, `use super::x`, `use self::a::b`), in a
//! path anywhere in its code (`crate::inputs::read()`), through a name it imported
//! (`use crate::commands;` then `commands::plan::run`), and in the arguments of
//! macros that parse as expressions (`format!`, `assert!`, `vec!`).
//!
//! What is not a cycle, by decision (issue 10):
//! - A module and its own descendants: `policy` declares `policy::locate` and may use
//!   it, and `policy::locate` may use `super::*`; neither edge enters the graph. A
//!   cycle is only between modules neither of which contains the other (siblings or
//!   unrelated), e.g. `commands::apply -> inputs -> commands::apply`.
//! - Test code: a `#[cfg(test)]` module (inline or `mod tests;` in its own file) or
//!   any other `#[cfg(test)]` item is not read.
//! - A name that the crate root re-exports (`crate::CpuSet`) is a dependency on the
//!   root, which contains everything, so it adds no edge.
//! - Other crates (`kvmtune_core::…`): cargo already forbids cycles between crates.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use syn::visit::{self, Visit};

/// A module, as its path from the crate root (`[]` is the root, `crate`).
pub type ModPath = Vec<String>;

/// The module graph of one crate.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every module, with the modules it depends on (neither containing the other).
    pub edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

/// `crate`, or `a::b`.
pub fn display(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_string()
    } else {
        path.join("::")
    }
}

/// The outcome for the whole workspace.
#[derive(Debug)]
pub struct Report {
    pub crates: usize,
    pub modules: usize,
    /// One line per cycle: `crate NAME: a -> b -> a`.
    pub cycles: Vec<String>,
}

/// Checks every crate of the workspace at `root`.
pub fn check_workspace(root: &Path) -> Result<Report> {
    let mut report = Report {
        crates: 0,
        modules: 0,
        cycles: Vec::new(),
    };
    for (name, file) in crate_roots(root)? {
        let graph = crate_graph(&file, &|p| fs::read_to_string(p).ok())
            .with_context(|| format!("crate {name}"))?;
        report.crates += 1;
        report.modules += graph.edges.len();
        for cycle in find_cycles(&graph) {
            let shown: Vec<String> = cycle.iter().map(|m| display(m)).collect();
            report
                .cycles
                .push(format!("crate {name}: {}", shown.join(" -> ")));
        }
    }
    Ok(report)
}

/// The root package and every `members` entry of the workspace's `Cargo.toml`,
/// each with `src/lib.rs` and `src/main.rs` where they exist: (name, root file).
fn crate_roots(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).context("Cargo.toml")?;
    let mut dirs = vec![PathBuf::from(".")];
    dirs.extend(workspace_members(&manifest).into_iter().map(PathBuf::from));
    let mut roots = Vec::new();
    for dir in dirs {
        let name = if dir == Path::new(".") {
            "kvmtune".to_string()
        } else {
            dir.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let lib = root.join(&dir).join("src/lib.rs");
        let main = root.join(&dir).join("src/main.rs");
        let both = lib.exists() && main.exists();
        for (file, kind) in [(lib, "lib"), (main, "bin")] {
            if file.exists() {
                let shown = if both {
                    format!("{name} ({kind})")
                } else {
                    name.clone()
                };
                roots.push((shown, file));
            }
        }
    }
    if roots.len() < 2 {
        bail!(
            "found {} crate root(s) under {}",
            roots.len(),
            root.display()
        );
    }
    Ok(roots)
}

/// The quoted strings of `members = [ … ]` in `[workspace]` (no globs in ours).
fn workspace_members(manifest: &str) -> Vec<String> {
    let Some(start) = manifest.find("\nmembers") else {
        return Vec::new();
    };
    let rest = &manifest[start..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    rest[open + 1..close]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Reads a crate from its root file; `read` returns a file's text (None: missing).
pub fn crate_graph(root_file: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Result<Graph> {
    let mut modules: BTreeMap<ModPath, ModuleRefs> = BTreeMap::new();
    let dir = root_file.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut pending = vec![(Vec::new(), root_file.to_path_buf(), dir)];
    while let Some((path, file, child_dir)) = pending.pop() {
        let text = read(&file).with_context(|| format!("reading {}", file.display()))?;
        let ast = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        let mut collector = Collector {
            stack: vec![path],
            modules: &mut modules,
            file_mods: Vec::new(),
        };
        collector.enter();
        collector.visit_file(&ast);
        for (child, name) in collector.file_mods {
            let flat = child_dir.join(format!("{name}.rs"));
            let nested = child_dir.join(&name).join("mod.rs");
            let (found, dir) = if read(&flat).is_some() {
                (flat, child_dir.join(&name))
            } else if read(&nested).is_some() {
                (nested, child_dir.join(&name))
            } else {
                bail!(
                    "module {} is in neither {} nor {}",
                    display(&child),
                    flat.display(),
                    nested.display()
                );
            };
            pending.push((child, found, dir));
        }
    }
    Ok(resolve(&modules))
}

/// What one module names, before resolution.
#[derive(Debug, Default)]
struct ModuleRefs {
    /// Names brought in by `use` from inside the crate: name -> absolute path.
    aliases: BTreeMap<String, ModPath>,
    /// Absolute paths named (`use` targets and `crate::`/`super::`/`self::` paths).
    absolute: Vec<ModPath>,
    /// Relative paths whose first segment may be an alias or a child module.
    relative: Vec<Vec<String>>,
    /// The module's children (declared with `mod`).
    children: BTreeSet<String>,
}

/// Walks one file, collecting each module's references.
struct Collector<'m> {
    /// The module being read, innermost last.
    stack: Vec<ModPath>,
    modules: &'m mut BTreeMap<ModPath, ModuleRefs>,
    /// `mod x;` declarations of this file: (child path, name), files to read next.
    file_mods: Vec<(ModPath, String)>,
}

impl Collector<'_> {
    fn current(&self) -> ModPath {
        self.stack.last().cloned().unwrap_or_default()
    }

    fn enter(&mut self) {
        let current = self.current();
        self.modules.entry(current).or_default();
    }

    fn refs(&mut self) -> &mut ModuleRefs {
        let current = self.current();
        self.modules.entry(current).or_default()
    }

    /// `crate::a`, `self::a`, `super::super::a` to an absolute path; None if the
    /// path does not start with one of those (`std::…`, a local name, an alias).
    fn absolute(&self, segments: &[String]) -> Option<ModPath> {
        let first = segments.first()?;
        match first.as_str() {
            "crate" => Some(segments[1..].to_vec()),
            "self" => {
                let mut out = self.current();
                out.extend_from_slice(&segments[1..]);
                Some(out)
            }
            "super" => {
                let mut out = self.current();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    out.pop();
                    rest = &rest[1..];
                }
                out.extend_from_slice(rest);
                Some(out)
            }
            _ => None,
        }
    }

    fn path(&mut self, segments: Vec<String>) {
        if segments.is_empty() {
            return;
        }
        match self.absolute(&segments) {
            Some(abs) => self.refs().absolute.push(abs),
            None => self.refs().relative.push(segments),
        }
    }

    /// A `use` tree under `prefix` (the segments before it).
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                self.use_name(prefix, &name, &name);
            }
            syn::UseTree::Rename(r) => {
                self.use_name(prefix, &r.ident.to_string(), &r.rename.to_string());
            }
            syn::UseTree::Glob(_) => self.path(prefix.clone()),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }

    /// `use PREFIX::name as local;` (`self` in a group names the prefix itself).
    fn use_name(&mut self, prefix: &[String], name: &str, local: &str) {
        let mut full = prefix.to_vec();
        if name != "self" || full.is_empty() {
            full.push(name.to_string());
        }
        let local = if name == "self" && local == "self" {
            full.last().cloned().unwrap_or_default()
        } else {
            local.to_string()
        };
        if let Some(abs) = self.absolute(&full) {
            self.refs().aliases.insert(local, abs.clone());
            self.refs().absolute.push(abs);
        } else {
            self.refs().relative.push(full);
        }
    }
}

/// `#[cfg(test)]` (also `#[cfg(all(test, …))]`): test-only code, not read.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        if !attr.path().is_ident("cfg") {
            return false;
        }
        let syn::Meta::List(list) = &attr.meta else {
            return false;
        };
        let tokens = list.tokens.to_string();
        tokens == "test"
            || (tokens.starts_with("all") && tokens.contains("test") && !tokens.contains("not"))
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item;
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test_only(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs: &[syn::Attribute] = match item {
            syn::ImplItem::Fn(f) => &f.attrs,
            syn::ImplItem::Const(c) => &c.attrs,
            _ => &[],
        };
        if !is_test_only(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        let name = item.ident.to_string();
        self.refs().children.insert(name.clone());
        let mut child = self.current();
        child.push(name.clone());
        match &item.content {
            Some((_, items)) => {
                self.stack.push(child);
                self.enter();
                for inner in items {
                    self.visit_item(inner);
                }
                self.stack.pop();
            }
            None => self.file_mods.push((child, name)),
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        if item.leading_colon.is_none() {
            self.use_tree(&mut prefix, &item.tree);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.path(segments);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        visit::visit_macro(self, mac);
        let parser = syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated;
        if let Ok(args) = mac.parse_body_with(parser) {
            for expr in &args {
                self.visit_expr(expr);
            }
        }
    }
}

/// Each module's references to module-to-module edges: the longest known module
/// prefix of each path, kept when neither module contains the other.
fn resolve(modules: &BTreeMap<ModPath, ModuleRefs>) -> Graph {
    let target = |abs: &[String]| -> ModPath {
        (0..=abs.len())
            .rev()
            .map(|n| abs[..n].to_vec())
            .find(|p| modules.contains_key(p))
            .unwrap_or_default()
    };
    let mut graph = Graph::default();
    for (module, refs) in modules {
        let mut deps = BTreeSet::new();
        let mut absolute = refs.absolute.clone();
        for rel in &refs.relative {
            let first = &rel[0];
            if let Some(alias) = refs.aliases.get(first) {
                let mut abs = alias.clone();
                abs.extend_from_slice(&rel[1..]);
                absolute.push(abs);
            } else if refs.children.contains(first) {
                let mut abs = module.clone();
                abs.extend_from_slice(rel);
                absolute.push(abs);
            }
        }
        for abs in absolute {
            let to = target(&abs);
            if !to.starts_with(module) && !module.starts_with(&to) {
                deps.insert(to);
            }
        }
        graph.edges.insert(module.clone(), deps);
    }
    graph
}

/// One cycle per strongly connected component of more than one module, each as
/// `[a, b, …, a]` starting from the component's first module.
pub fn find_cycles(graph: &Graph) -> Vec<Vec<ModPath>> {
    let mut cycles = Vec::new();
    for component in components(graph) {
        if component.len() < 2 {
            continue;
        }
        let Some(start) = component.iter().next().cloned() else {
            continue;
        };
        // Shortest way back to `start` inside the component (breadth first).
        let mut previous: BTreeMap<ModPath, ModPath> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut last = None;
        'search: while let Some(node) = queue.pop_front() {
            for next in graph.edges.get(&node).into_iter().flatten() {
                if !component.contains(next) {
                    continue;
                }
                if *next == start {
                    last = Some(node.clone());
                    break 'search;
                }
                if !previous.contains_key(next) {
                    previous.insert(next.clone(), node.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let Some(mut node) = last else { continue };
        // Back from the last module to `start`, then in edge order.
        let mut way = Vec::new();
        while node != start {
            let before = previous
                .get(&node)
                .cloned()
                .unwrap_or_else(|| start.clone());
            way.push(node);
            node = before;
        }
        let mut cycle = vec![start.clone()];
        cycle.extend(way.into_iter().rev());
        cycle.push(start);
        cycles.push(cycle);
    }
    cycles
}

/// Strongly connected components (Tarjan), each a set of modules.
fn components(graph: &Graph) -> Vec<BTreeSet<ModPath>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on_stack: BTreeSet<&'g ModPath>,
        out: Vec<BTreeSet<ModPath>>,
    }
    fn connect<'g>(s: &mut State<'g>, v: &'g ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.edges.get(v).into_iter().flatten() {
            // Edges to modules outside the graph (none: targets are known modules).
            let Some((w, _)) = graph.edges.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                connect(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.clone());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.edges.keys() {
        if !state.index.contains_key(v) {
            connect(&mut state, v);
        }
    }
    state.out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The graph of a crate given as (path under src/, text) pairs.
    fn graph(files: &[(&str, &str)]) -> Graph {
        let files: BTreeMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (Path::new("src").join(p), (*t).to_string()))
            .collect();
        crate_graph(Path::new("src/lib.rs"), &|p| files.get(p).cloned()).unwrap()
    }

    fn cycles_of(files: &[(&str, &str)]) -> Vec<String> {
        find_cycles(&graph(files))
            .iter()
            .map(|c| {
                c.iter()
                    .map(|m| display(m))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            })
            .collect()
    }

    fn m(path: &str) -> ModPath {
        path.split("::").map(str::to_string).collect()
    }

    #[test]
    fn a_cycle_through_three_modules_is_found_in_edge_order() {
        let found = cycles_of(&[
            ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
            ("a.rs", "use crate::b::B; pub struct A;"),
            ("b.rs", "pub struct B; fn f() { crate::c::g(); }"),
            ("c/mod.rs", "pub fn g() { let _ = super::a::A; }"),
        ]);
        assert_eq!(found, ["a -> b -> c -> a"]);
    }

    #[test]
    fn a_tree_without_a_cycle_passes() {
        let files = [
            ("lib.rs", "pub mod a; pub mod b; pub use a::A;"),
            (
                "a.rs",
                "pub mod inner; use crate::b; pub struct A; fn f() { b::g(); inner::h(); }",
            ),
            (
                "a/inner.rs",
                "use super::*; pub fn h() { let _ = A; crate::b::g(); }",
            ),
            ("b.rs", "pub fn g() { let _ = crate::A; }"),
        ];
        assert!(cycles_of(&files).is_empty());
        let g = graph(&files);
        assert_eq!(g.edges.len(), 4);
        // b -> crate (a re-export) and a -> a::inner (a child) are no edges.
        assert!(g.edges[&m("b")].is_empty(), "{g:?}");
        assert_eq!(g.edges[&m("a")], BTreeSet::from([m("b")]));
        assert_eq!(g.edges[&m("a::inner")], BTreeSet::from([m("b")]));
    }

    #[test]
    fn aliases_groups_renames_and_macros_are_edges() {
        let found = cycles_of(&[
            ("lib.rs", "mod x; mod y; mod z;"),
            (
                "x.rs",
                "use crate::{y as why, z::{self}}; fn f() { why::g(); }",
            ),
            ("y.rs", "fn g() { assert_eq!(crate::x::K, 1); }"),
            ("z.rs", ""),
        ]);
        assert_eq!(found, ["x -> y -> x"]);
        let g = graph(&[
            ("lib.rs", "mod x; mod y; mod z;"),
            ("x.rs", "use crate::{y as why, z::{self}};"),
            ("y.rs", ""),
            ("z.rs", ""),
        ]);
        assert_eq!(g.edges[&m("x")], BTreeSet::from([m("y"), m("z")]));
    }

    #[test]
    fn test_code_and_ancestors_are_no_edges() {
        let found = cycles_of(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            (
                "a.rs",
                "use crate::b; #[cfg(test)] mod tests; \
                 #[cfg(test)] fn t() { crate::b::f(); }",
            ),
            ("a/tests.rs", "use crate::b::*;"),
            (
                "b.rs",
                "pub fn f() {} #[cfg(test)] mod tests { use crate::a; } \
                 pub mod deep { pub fn g() { super::super::b::f(); } }",
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
        // The same inline module, with and without `#[cfg(test)]`.
        let files = |attr: &'static str| {
            [
                ("lib.rs", "pub mod a; pub mod b;"),
                ("a.rs", "use crate::b::tests::T;"),
                (
                    "b.rs",
                    if attr.is_empty() {
                        "pub mod tests { pub struct T; use crate::a; }"
                    } else {
                        "#[cfg(test)] pub mod tests { pub struct T; use crate::a; }"
                    },
                ),
            ]
        };
        assert_eq!(cycles_of(&files("")), ["a -> b::tests -> a"]);
        assert!(cycles_of(&files("cfg")).is_empty());
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let files: BTreeMap<PathBuf, String> =
            BTreeMap::from([(PathBuf::from("src/lib.rs"), "mod gone;".to_string())]);
        let err = crate_graph(Path::new("src/lib.rs"), &|p| files.get(p).cloned()).unwrap_err();
        assert!(format!("{err:#}").contains("gone"), "{err:#}");
    }

    #[test]
    fn members_of_the_workspace_manifest() {
        let manifest = "[workspace]\nmembers = [\"crates/a\", \"xtask\"]\nresolver = \"3\"\n";
        assert_eq!(workspace_members(manifest), ["crates/a", "xtask"]);
    }
}

#[cfg(test)]
mod workspace_tests {
    use super::*;

    /// This workspace: every crate is read, and its modules do depend on each other.
    #[test]
    fn the_workspace_is_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut edges = 0;
        for (name, file) in crate_roots(&root).unwrap() {
            let graph = crate_graph(&file, &|p| fs::read_to_string(p).ok()).unwrap();
            for (from, to) in &graph.edges {
                for t in to {
                    eprintln!("{name}: {} -> {}", display(from), display(t));
                }
            }
            edges += graph.edges.values().map(BTreeSet::len).sum::<usize>();
        }
        assert!(edges > 20, "only {edges} edges between modules");
    }
}
