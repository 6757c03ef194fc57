//! The workspace's boundaries, checked from its manifests and its source.
//!
//! The pipeline's pure stages are crates of their own so that they stay pure: a decoder is a
//! function from bytes to readings, easy to test, fuzz and share with the simulators, and the
//! disk buffer is storage, not a network client. Nothing stops a convenient `use` from undoing
//! that, so this test does:
//!
//! - **(a) dependencies** (`cargo metadata`, the resolved graph): neither `ioc-decode` nor
//!   `ioc-buffer` may depend, through their normal (non-dev) dependencies and transitively, on
//!   the gateway crate, on a config format or config crate (`toml`, `toml_edit`, …), or on a
//!   network client or server (`axum`, `reqwest`, `rumqttc`). `ioc-decode` may not depend on
//!   `tokio` at all (not even as a dev- or build-dependency), and `ioc-buffer` not on
//!   `serde_json` (rendering a report as JSON is the binary's business). A failure prints the
//!   chain of crates that pulls the forbidden one in.
//! - **(b) source**: the code of `crates/decode/src` and `crates/buffer/src` names no
//!   `ioc_gateway` path, and decode's names no `tokio` path (parsed with `syn`, so prose in doc
//!   comments does not count, but paths inside macro calls do).
//! - **(c) module graph of `ioc-gateway`**: its modules (the top-level ones, and the first level
//!   under `input/` and `output/`; a directory module and its children are one node) form no
//!   import cycle through `crate::`, `super::`, `self::`, child-module or aliased-module paths
//!   (in `use`s, in code, and inside macro calls). A path is followed through the `use`s and
//!   re-exports of the modules it passes to the module that defines the item, so a façade such
//!   as `output/mod.rs` re-exporting `ioc_model::line_protocol` adds no edge of its own.
//!   Code under `#[cfg(test)]` (and files declared only there) is left out: a test may reach
//!   anywhere. The binary's edge, `cli`, may import everything and nothing may import it.
//!   A failure prints every cycle as `a → b → c → a` with, for each edge, the file and line of
//!   one reference.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use syn::visit::{self, Visit};

// ---------------------------------------------------------------------------------------------
// (a) the resolved dependency graph

/// Crates the pure stages (`ioc-decode`, `ioc-buffer`) may not pull in as normal dependencies:
/// the gateway, config formats and crates, network clients and servers.
const FORBIDDEN_FOR_PURE_STAGES: &[&str] = &[
    "ioc-gateway",
    "toml",
    "toml_edit",
    "toml_datetime",
    "basic-toml",
    "config",
    "figment",
    "confy",
    "serde_yaml",
    "axum",
    "reqwest",
    "rumqttc",
];

/// The workspace root: the tests crate lives in `<root>/tests`.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_path_buf()
}

/// `cargo metadata --format-version 1` of the workspace.
fn cargo_metadata() -> Value {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(workspace_root().join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// The kind of a dependency edge, as `cargo metadata` names it (`null` is a normal dependency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DepKind {
    Normal,
    Dev,
    Build,
}

/// The resolved graph: package names by id, and each package's dependencies with their kinds.
struct CrateGraph {
    names: BTreeMap<String, String>,
    deps: BTreeMap<String, Vec<(String, BTreeSet<DepKind>)>>,
    workspace_members: BTreeSet<String>,
}

impl CrateGraph {
    fn from_metadata(metadata: &Value) -> Self {
        let names = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().expect("package id").to_string(),
                    p["name"].as_str().expect("package name").to_string(),
                )
            })
            .collect();
        let workspace_members = metadata["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .map(|id| id.as_str().expect("member id").to_string())
            .collect();
        let mut deps = BTreeMap::new();
        for node in metadata["resolve"]["nodes"]
            .as_array()
            .expect("resolve.nodes")
        {
            let id = node["id"].as_str().expect("node id").to_string();
            let edges = node["deps"]
                .as_array()
                .expect("node deps")
                .iter()
                .map(|d| {
                    let kinds = d["dep_kinds"]
                        .as_array()
                        .expect("dep_kinds")
                        .iter()
                        .map(|k| match k["kind"].as_str() {
                            None => DepKind::Normal,
                            Some("dev") => DepKind::Dev,
                            Some("build") => DepKind::Build,
                            Some(other) => panic!("unknown dependency kind {other}"),
                        })
                        .collect();
                    (d["pkg"].as_str().expect("dep pkg").to_string(), kinds)
                })
                .collect();
            deps.insert(id, edges);
        }
        CrateGraph {
            names,
            deps,
            workspace_members,
        }
    }

    fn member(&self, name: &str) -> String {
        self.workspace_members
            .iter()
            .find(|id| self.names.get(*id).map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("{name} is a workspace member"))
            .clone()
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.names.get(id).map_or(id, String::as_str)
    }

    /// Every crate reachable from `start`: its direct dependencies of `first_hop` kinds, then
    /// normal dependencies from there on. Each with the chain of crates from `start` to it.
    fn reachable(&self, start: &str, first_hop: &[DepKind]) -> BTreeMap<String, Vec<String>> {
        let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut queue = VecDeque::from([(start.to_string(), vec![self.name(start).to_string()])]);
        let mut first = true;
        while let Some((id, chain)) = queue.pop_front() {
            let kinds: &[DepKind] = if first { first_hop } else { &[DepKind::Normal] };
            first = false;
            for (dep, dep_kinds) in self.deps.get(&id).into_iter().flatten() {
                if !dep_kinds.iter().any(|k| kinds.contains(k)) || chains.contains_key(dep) {
                    continue;
                }
                let mut dep_chain = chain.clone();
                let name = self.name(dep);
                if dep_kinds.contains(&DepKind::Normal) {
                    dep_chain.push(name.to_string());
                } else {
                    let kinds: Vec<&str> = dep_kinds
                        .iter()
                        .map(|k| if *k == DepKind::Dev { "dev" } else { "build" })
                        .collect();
                    dep_chain.push(format!("{name} ({}-dependency)", kinds.join("/")));
                }
                chains.insert(dep.clone(), dep_chain.clone());
                queue.push_back((dep.clone(), dep_chain));
            }
        }
        chains
    }

    /// The chains from crate `from` to each crate of `forbidden` it reaches.
    fn violations(&self, from: &str, first_hop: &[DepKind], forbidden: &[&str]) -> Vec<String> {
        self.reachable(&self.member(from), first_hop)
            .iter()
            .filter(|(id, _)| forbidden.contains(&self.name(id)))
            .map(|(_, chain)| chain.join(" → "))
            .collect()
    }
}

#[test]
fn pure_stage_crates_do_not_depend_on_the_gateway_config_or_network() {
    let graph = CrateGraph::from_metadata(&cargo_metadata());
    let normal = [DepKind::Normal];
    let mut failures = Vec::new();
    for (krate, extra) in [("ioc-decode", &[][..]), ("ioc-buffer", &["serde_json"][..])] {
        let forbidden: Vec<&str> = FORBIDDEN_FOR_PURE_STAGES
            .iter()
            .chain(extra)
            .copied()
            .collect();
        failures.extend(graph.violations(krate, &normal, &forbidden));
    }
    // "Decoders know nothing of tokio": not as any kind of dependency.
    let any_kind = [DepKind::Normal, DepKind::Dev, DepKind::Build];
    failures.extend(graph.violations("ioc-decode", &any_kind, &["tokio"]));
    failures.sort();
    failures.dedup();
    assert!(
        failures.is_empty(),
        "the pipeline's pure stages pull in crates they must not (normal dependencies, \
         transitively; tokio for ioc-decode in any kind):\n  {}",
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Paths in Rust source, with the line they are on

/// A path written in the source (`crate::status::Status`, `super::x`, a `use` leaf).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathRef {
    segments: Vec<String>,
    line: usize,
}

impl PathRef {
    fn text(&self) -> String {
        self.segments.join("::")
    }
}

/// Whether `attrs` make an item exist only in test builds (`#[cfg(test)]`,
/// `#[cfg(all(test, …))]`).
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| cfg_requires_test(&meta))
    })
}

/// Whether a `cfg` predicate can only hold in a test build.
fn cfg_requires_test(meta: &syn::Meta) -> bool {
    match meta {
        syn::Meta::Path(path) => path.is_ident("test"),
        syn::Meta::List(list) if list.path.is_ident("all") => list
            .parse_args_with(
                syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
            )
            .is_ok_and(|preds| preds.iter().any(cfg_requires_test)),
        _ => false,
    }
}

/// The leaves of a `use` tree as full paths (a glob gives the path it globs), each with the name
/// it binds (`None` for a glob).
fn use_leaves(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(PathRef, Option<String>)>,
) {
    let line = |ident: &syn::Ident| ident.span().start().line;
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_leaves(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut segments = prefix.clone();
            // `use a::b::{self}` names `a::b`.
            if name != "self" {
                segments.push(name.clone());
            }
            let bound = segments.last().cloned();
            out.push((
                PathRef {
                    segments,
                    line: line(&n.ident),
                },
                bound,
            ));
        }
        syn::UseTree::Rename(r) => {
            let mut segments = prefix.clone();
            if r.ident != "self" {
                segments.push(r.ident.to_string());
            }
            out.push((
                PathRef {
                    segments,
                    line: line(&r.ident),
                },
                Some(r.rename.to_string()),
            ));
        }
        syn::UseTree::Glob(g) => out.push((
            PathRef {
                segments: prefix.clone(),
                line: g.star_token.span.start().line,
            },
            None,
        )),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                use_leaves(tree, prefix, out);
            }
        }
    }
}

/// `a::b::c` sequences in a macro's tokens (macro bodies are not parsed as Rust by `syn`).
fn paths_in_tokens(tokens: proc_macro2::TokenStream, out: &mut Vec<PathRef>) {
    use proc_macro2::{Spacing, TokenTree};
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Group(group) => {
                paths_in_tokens(group.stream(), out);
                i += 1;
            }
            TokenTree::Ident(first) => {
                let mut segments = vec![first.to_string()];
                let mut j = i + 1;
                loop {
                    let sep = matches!(
                        (tokens.get(j), tokens.get(j + 1)),
                        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
                    );
                    match (sep, tokens.get(j + 2)) {
                        (true, Some(TokenTree::Ident(next))) => {
                            segments.push(next.to_string());
                            j += 3;
                        }
                        _ => break,
                    }
                }
                if segments.len() > 1 {
                    out.push(PathRef {
                        segments,
                        line: first.span().start().line,
                    });
                }
                i = j;
            }
            TokenTree::Punct(_) | TokenTree::Literal(_) => i += 1,
        }
    }
}

/// A module's own items as the graph sees them: its paths, its `use` leaves, and the modules it
/// declares (inline, or in a file).
#[derive(Default)]
struct ModuleItems {
    paths: Vec<PathRef>,
    uses: Vec<(PathRef, Option<String>)>,
    /// Declared child modules: name, `#[path]` if any, and inline contents if any.
    children: Vec<(String, Option<String>, Option<Vec<syn::Item>>)>,
}

/// Collects what one module's items reference, leaving out test-only items and not descending
/// into child modules (they are modules of their own).
struct Collector<'a> {
    items: &'a mut ModuleItems,
    /// Whether `#[cfg(test)]` items are left out.
    skip_test_code: bool,
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::ExternCrate(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::ForeignMod(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::TraitAlias(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Union(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => return visit::visit_item(self, item),
        };
        if self.skip_test_code && is_test_only(attrs) {
            return;
        }
        match item {
            syn::Item::Mod(m) => {
                let path_attr = m
                    .attrs
                    .iter()
                    .find(|a| a.path().is_ident("path"))
                    .and_then(|a| match &a.meta {
                        syn::Meta::NameValue(nv) => match &nv.value {
                            syn::Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Str(s),
                                ..
                            }) => Some(s.value()),
                            _ => None,
                        },
                        _ => None,
                    });
                let content = m.content.as_ref().map(|(_, items)| items.clone());
                self.items
                    .children
                    .push((m.ident.to_string(), path_attr, content));
            }
            syn::Item::Use(u) => use_leaves(&u.tree, &mut Vec::new(), &mut self.items.uses),
            syn::Item::ExternCrate(e) => self.items.paths.push(PathRef {
                segments: vec![e.ident.to_string()],
                line: e.ident.span().start().line,
            }),
            _ => visit::visit_item(self, item),
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs: &[syn::Attribute] = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !(self.skip_test_code && is_test_only(attrs)) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_trait_item(&mut self, item: &'ast syn::TraitItem) {
        let attrs: &[syn::Attribute] = match item {
            syn::TraitItem::Const(i) => &i.attrs,
            syn::TraitItem::Fn(i) => &i.attrs,
            syn::TraitItem::Type(i) => &i.attrs,
            syn::TraitItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !(self.skip_test_code && is_test_only(attrs)) {
            visit::visit_trait_item(self, item);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if let Some(first) = path.segments.first() {
            self.items.paths.push(PathRef {
                segments: path.segments.iter().map(|s| s.ident.to_string()).collect(),
                line: first.ident.span().start().line,
            });
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        paths_in_tokens(mac.tokens.clone(), &mut self.items.paths);
        visit::visit_macro(self, mac);
    }
}

/// What the module made of `items` references and declares (test-only items left out if
/// `skip_test_code`).
fn collect(items: &[syn::Item], skip_test_code: bool) -> ModuleItems {
    let mut module = ModuleItems::default();
    let mut collector = Collector {
        items: &mut module,
        skip_test_code,
    };
    for item in items {
        collector.visit_item(item);
    }
    module
}

// ---------------------------------------------------------------------------------------------
// (b) the pure stages' source

/// Every `.rs` file under `dir`, keyed by its path relative to `dir` (`/`-separated).
fn rust_files(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let key = path
                    .strip_prefix(root)
                    .expect("under the root")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                out.insert(key, text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `file:line: path` for each path in `files` whose first segment is one of `forbidden`
/// (whole files, tests included: a pure crate's tests have no business with those either).
fn forbidden_mentions(
    display_root: &str,
    files: &BTreeMap<String, String>,
    forbidden: &[&str],
) -> Vec<String> {
    let mut found = Vec::new();
    for (key, text) in files {
        let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{display_root}/{key}: {e}"));
        // Every item, test-only ones and inline modules included.
        let module = collect(&file.items, false);
        let mut all = module.paths;
        all.extend(module.uses.into_iter().map(|(p, _)| p));
        let mut pending: Vec<Vec<syn::Item>> = module
            .children
            .into_iter()
            .filter_map(|(_, _, content)| content)
            .collect();
        while let Some(items) = pending.pop() {
            let nested = collect(&items, false);
            all.extend(nested.paths);
            all.extend(nested.uses.into_iter().map(|(p, _)| p));
            pending.extend(nested.children.into_iter().filter_map(|(_, _, c)| c));
        }
        all.sort_by_key(|p| p.line);
        for path in all {
            let first = path.segments.first().map(String::as_str);
            if first.is_some_and(|f| forbidden.contains(&f)) {
                found.push(format!(
                    "{display_root}/{key}:{}: {}",
                    path.line,
                    path.text()
                ));
            }
        }
    }
    found
}

#[test]
fn pure_stage_sources_do_not_name_the_gateway_or_tokio() {
    let root = workspace_root();
    let mut found = Vec::new();
    for (dir, forbidden) in [
        ("crates/decode/src", &["ioc_gateway", "tokio"][..]),
        ("crates/buffer/src", &["ioc_gateway"][..]),
    ] {
        found.extend(forbidden_mentions(
            dir,
            &rust_files(&root.join(dir)),
            forbidden,
        ));
    }
    assert!(
        found.is_empty(),
        "the pipeline's pure stages name what they must not (decode: ioc_gateway, tokio; \
         buffer: ioc_gateway):\n  {}",
        found.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// (c) the gateway's module graph

/// Top-level modules whose first-level children are nodes of their own.
const SPLIT_MODULES: &[&str] = &["input", "output"];
/// The binary's edge: it may import any module, and no module may import it.
const EDGE_MODULE: &str = "cli";

/// One reference from a module to another: where it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    file: String,
    line: usize,
    path: String,
}

/// The gateway's modules as nodes, and for each edge between two of them its first reference.
#[derive(Debug, Default)]
struct ModuleGraph {
    nodes: BTreeSet<String>,
    edges: BTreeMap<(String, String), Site>,
}

/// A parsed module: its path from the crate root, the file it is in, and its items.
struct Module {
    path: Vec<String>,
    file: String,
    items: ModuleItems,
}

/// The graph node a module belongs to (`None` for the crate root).
fn node_of(module: &[String]) -> Option<String> {
    match module {
        [] => None,
        [top, child, ..] if SPLIT_MODULES.contains(&top.as_str()) => {
            Some(format!("{top}::{child}"))
        }
        [top, ..] => Some(top.clone()),
    }
}

/// Builds the module graph of a crate from its source files, keyed by their path under `src`
/// (`lib.rs`, `input/serial.rs`, …); `display_root` prefixes those paths in the report. The
/// module tree is followed from `lib.rs` through `mod` declarations that are not test-only.
fn module_graph(
    display_root: &str,
    files: &BTreeMap<String, String>,
) -> Result<ModuleGraph, String> {
    // The module tree, from lib.rs.
    let mut modules: Vec<Module> = Vec::new();
    let root = files.get("lib.rs").ok_or("no lib.rs")?;
    let root = syn::parse_file(root).map_err(|e| format!("{display_root}/lib.rs: {e}"))?;
    // (module path, file, directory its file-children live in, items)
    let mut pending = vec![(
        Vec::<String>::new(),
        "lib.rs".to_string(),
        String::new(),
        root.items,
    )];
    while let Some((path, file, dir, items)) = pending.pop() {
        let collected = collect(&items, true);
        for (name, path_attr, content) in &collected.children {
            let mut child_path = path.clone();
            child_path.push(name.clone());
            let child_dir = join(&dir, name);
            match content {
                Some(items) => pending.push((child_path, file.clone(), child_dir, items.clone())),
                None => {
                    let file_dir = file.rsplit_once('/').map_or("", |(d, _)| d);
                    let candidates = match path_attr {
                        Some(p) => vec![(join(file_dir, p), None)],
                        None => vec![
                            (join(&dir, &format!("{name}.rs")), Some(child_dir.clone())),
                            (join(&child_dir, "mod.rs"), Some(child_dir.clone())),
                        ],
                    };
                    let (child_file, text, grand_dir) = candidates
                        .into_iter()
                        .find_map(|(f, d)| files.get(&f).map(|t| (f.clone(), t, d)))
                        .ok_or_else(|| {
                            format!("{display_root}/{file}: no file for `mod {name};`")
                        })?;
                    let parsed = syn::parse_file(text)
                        .map_err(|e| format!("{display_root}/{child_file}: {e}"))?;
                    let grand_dir = grand_dir.unwrap_or_else(|| {
                        child_file
                            .rsplit_once('/')
                            .map_or(String::new(), |(d, _)| d.to_string())
                    });
                    pending.push((child_path, child_file, grand_dir, parsed.items));
                }
            }
        }
        modules.push(Module {
            path,
            file,
            items: collected,
        });
    }
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let children_of = |module: &Module| -> BTreeSet<String> {
        module
            .items
            .children
            .iter()
            .map(|(name, _, _)| name.clone())
            .collect()
    };
    // What each module's `use`s bind, so that paths through them (and through re-exports) lead
    // to the module that defines the item.
    let bindings: BTreeMap<Vec<String>, Bindings> = modules
        .iter()
        .map(|m| (m.path.clone(), bindings_of(m, &children_of(m))))
        .collect();

    let mut graph = ModuleGraph {
        nodes: modules.iter().filter_map(|m| node_of(&m.path)).collect(),
        ..ModuleGraph::default()
    };
    for module in &modules {
        let Some(from) = node_of(&module.path) else {
            continue;
        };
        let children = children_of(module);
        let uses = module.items.uses.iter().map(|(p, _)| (p, true));
        let paths = module.items.paths.iter().map(|p| (p, false));
        for (reference, is_use) in uses.chain(paths) {
            let own = &bindings[&module.path];
            let Some(target) = absolute(&module.path, &children, own, &reference.segments, is_use)
            else {
                continue;
            };
            let Some(to) = defining_module(&known, &bindings, target).and_then(|m| node_of(&m))
            else {
                continue;
            };
            if to == from {
                continue;
            }
            let site = Site {
                file: format!("{display_root}/{}", module.file),
                line: reference.line,
                path: reference.text(),
            };
            graph
                .edges
                .entry((from.clone(), to))
                .and_modify(|s| {
                    if site < *s {
                        *s = site.clone();
                    }
                })
                .or_insert(site);
        }
    }
    Ok(graph)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// What a name bound by a `use` stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// A path in this crate, from its root.
    Internal(Vec<String>),
    /// Something outside it (`std`, another crate, a re-exported crate such as `ioc_model`).
    External,
}

type Bindings = BTreeMap<String, Binding>;

/// The names `module`'s `use`s bind (globs bind none we can name).
fn bindings_of(module: &Module, children: &BTreeSet<String>) -> Bindings {
    let mut bindings = Bindings::new();
    // Twice: a `use` may go through a name another `use` of the module binds further down.
    for _ in 0..2 {
        for (leaf, bound) in &module.items.uses {
            let Some(bound) = bound else { continue };
            let binding = match absolute(&module.path, children, &bindings, &leaf.segments, true) {
                Some(path) => Binding::Internal(path),
                None => Binding::External,
            };
            bindings.insert(bound.clone(), binding);
        }
    }
    bindings
}

/// The module that defines what the crate-root path `target` names: the longest prefix that is
/// a module, after following the re-exports (`pub use`) and imports of the modules on the way.
/// `None` when it leads out of the crate (or goes round in circles).
fn defining_module(
    known: &BTreeSet<Vec<String>>,
    bindings: &BTreeMap<Vec<String>, Bindings>,
    mut target: Vec<String>,
) -> Option<Vec<String>> {
    for _ in 0..16 {
        let module_len = (0..=target.len())
            .rev()
            .find(|&n| known.contains(&target[..n]))?;
        let module = &target[..module_len];
        let via = target
            .get(module_len)
            .and_then(|name| bindings.get(module)?.get(name));
        match via {
            None => return Some(module.to_vec()),
            Some(Binding::External) => return None,
            Some(Binding::Internal(path)) => {
                target = path
                    .iter()
                    .chain(&target[module_len + 1..])
                    .cloned()
                    .collect();
            }
        }
    }
    None
}

/// The path from the crate root that `segments`, written in module `at`, names, if it names
/// something in this crate: `crate::…`, `super::…`, `self::…`, a child module's path (with at
/// least one more segment, or in a `use`), or a path through a name a `use` bound to something
/// in this crate.
fn absolute(
    at: &[String],
    children: &BTreeSet<String>,
    bindings: &Bindings,
    segments: &[String],
    is_use: bool,
) -> Option<Vec<String>> {
    let (first, rest) = segments.split_first()?;
    match first.as_str() {
        "crate" => Some(rest.to_vec()),
        "self" => Some(at.iter().chain(rest).cloned().collect()),
        "super" => {
            let mut base = at.to_vec();
            base.pop()?;
            let mut rest = rest;
            while let Some(("super", tail)) = rest.split_first().map(|(s, t)| (s.as_str(), t)) {
                base.pop()?;
                rest = tail;
            }
            Some(base.into_iter().chain(rest.iter().cloned()).collect())
        }
        name if children.contains(name) && (is_use || !rest.is_empty()) => {
            Some(at.iter().chain(segments).cloned().collect())
        }
        name if is_use || !rest.is_empty() => match bindings.get(name)? {
            Binding::Internal(target) => Some(target.iter().chain(rest).cloned().collect()),
            Binding::External => None,
        },
        _ => None,
    }
}

/// What is wrong with a module graph: modules importing the binary's edge, and every import
/// cycle with, for each edge, one reference. Empty when the graph is fine.
fn graph_problems(graph: &ModuleGraph) -> String {
    let mut report = String::new();
    let into_edge: Vec<_> = graph
        .edges
        .iter()
        .filter(|((from, to), _)| to == EDGE_MODULE && from != EDGE_MODULE)
        .collect();
    if !into_edge.is_empty() {
        let _ = writeln!(
            report,
            "modules import `{EDGE_MODULE}`, the binary's edge (it may import them, not they it):"
        );
        for ((from, to), site) in into_edge {
            let _ = writeln!(
                report,
                "  {from} → {to}: {}:{} ({})",
                site.file, site.line, site.path
            );
        }
    }
    let cycles = cycles(graph);
    if !cycles.is_empty() {
        let _ = writeln!(
            report,
            "import cycles among ioc-gateway's modules ({} cycle(s); each edge with one reference):",
            cycles.len()
        );
        for cycle in &cycles {
            let _ = writeln!(report, "  {} → {}", cycle.join(" → "), cycle[0]);
            for (i, from) in cycle.iter().enumerate() {
                let to = &cycle[(i + 1) % cycle.len()];
                let site = &graph.edges[&(from.clone(), to.clone())];
                let _ = writeln!(
                    report,
                    "      {from} → {to}: {}:{} ({})",
                    site.file, site.line, site.path
                );
            }
        }
    }
    report
}

/// Every elementary cycle of the graph (edges out of the binary's edge left out), each starting
/// at its smallest node: the strongly connected components (Tarjan), then a search for the
/// cycles through each node within its component, using only nodes after it.
fn cycles(graph: &ModuleGraph) -> Vec<Vec<String>> {
    let nodes: Vec<&String> = graph.nodes.iter().collect();
    let index: BTreeMap<&String, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (from, to) in graph.edges.keys() {
        if from == EDGE_MODULE {
            continue;
        }
        if let (Some(&f), Some(&t)) = (index.get(from), index.get(to)) {
            succ[f].push(t);
        }
    }
    let component = strongly_connected_components(&succ);

    let mut found = Vec::new();
    for start in 0..nodes.len() {
        let mut stack = vec![start];
        cycles_from(start, start, &succ, &component, &mut stack, &mut found);
    }
    found
        .into_iter()
        .map(|cycle| cycle.into_iter().map(|i| nodes[i].clone()).collect())
        .collect()
}

/// Depth-first search for paths from `at` back to `start` through nodes after `start` in
/// `start`'s component; `stack` is the path so far.
fn cycles_from(
    start: usize,
    at: usize,
    succ: &[Vec<usize>],
    component: &[usize],
    stack: &mut Vec<usize>,
    found: &mut Vec<Vec<usize>>,
) {
    for &next in &succ[at] {
        if next == start {
            found.push(stack.clone());
        } else if next > start && component[next] == component[start] && !stack.contains(&next) {
            stack.push(next);
            cycles_from(start, next, succ, component, stack, found);
            stack.pop();
        }
    }
}

/// Tarjan's algorithm: each node's component number.
fn strongly_connected_components(succ: &[Vec<usize>]) -> Vec<usize> {
    struct Tarjan<'a> {
        succ: &'a [Vec<usize>],
        next_index: usize,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        component: Vec<usize>,
        components: usize,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next_index);
            self.low[v] = self.next_index;
            self.next_index += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.succ[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    self.component[w] = self.components;
                    if w == v {
                        break;
                    }
                }
                self.components += 1;
            }
        }
    }
    let n = succ.len();
    let mut t = Tarjan {
        succ,
        next_index: 0,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        component: vec![0; n],
        components: 0,
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    t.component
}

#[test]
fn gateway_modules_form_no_import_cycle() {
    let src = workspace_root().join("gateway/src");
    let graph = module_graph("gateway/src", &rust_files(&src)).unwrap_or_else(|e| panic!("{e}"));
    for expected in [
        "config",
        "status",
        "pipeline",
        "input::serial",
        "output::influx",
        "cli",
    ] {
        assert!(
            graph.nodes.contains(expected),
            "the module graph lost `{expected}`: {:?}",
            graph.nodes
        );
    }
    let problems = graph_problems(&graph);
    assert!(problems.is_empty(), "{problems}");
}

// ---------------------------------------------------------------------------------------------
// The graph builder itself, on small in-memory crates

fn crate_of(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(path, text)| (path.to_string(), text.to_string()))
        .collect()
}

fn problems_of(files: &[(&str, &str)]) -> String {
    graph_problems(&module_graph("src", &crate_of(files)).unwrap())
}

#[test]
fn graph_builder_reports_a_three_module_cycle_with_its_references() {
    let problems = problems_of(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a.rs", "use crate::b::B;\npub struct A;\n"),
        (
            "b.rs",
            "pub struct B;\npub fn f() -> crate::c::C { todo!() }\n",
        ),
        (
            "c.rs",
            "pub struct C;\nfn g() {\n    let _ = crate::a::A;\n}\n",
        ),
    ]);
    assert_eq!(
        problems,
        "import cycles among ioc-gateway's modules (1 cycle(s); each edge with one reference):\n  \
         a → b → c → a\n      \
         a → b: src/a.rs:1 (crate::b::B)\n      \
         b → c: src/b.rs:2 (crate::c::C)\n      \
         c → a: src/c.rs:3 (crate::a::A)\n"
    );
}

#[test]
fn graph_builder_accepts_an_acyclic_crate() {
    let problems = problems_of(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a.rs", "use crate::b::B;\npub struct A;\n"),
        (
            "b.rs",
            "pub struct B;\npub fn f() -> crate::c::C { todo!() }\n",
        ),
        ("c.rs", "pub struct C;\n"),
    ]);
    assert_eq!(problems, "");
}

#[test]
fn graph_builder_leaves_out_test_code_and_sees_super_self_aliases_and_macros() {
    let files = [
        (
            "lib.rs",
            "pub mod input;\npub mod status;\npub mod config;\n#[cfg(test)]\nmod testkit;\n",
        ),
        // `input` and its children: `input::serial` is a node of its own.
        (
            "input/mod.rs",
            "pub mod serial;\npub mod mqtt;\npub use self::mqtt::M;\n",
        ),
        (
            "input/serial.rs",
            "use super::mqtt;\npub fn f() { mqtt::g(); }\n\
             #[cfg(test)]\nmod tests { use crate::status::S; }\n\
             #[cfg(all(test, unix))]\nfn only_in_tests() { crate::status::t(); }\n",
        ),
        (
            "input/mqtt.rs",
            "pub struct M;\npub fn g() { tracing::info!(\"{}\", crate::config::C); }\n",
        ),
        ("status.rs", "pub struct S;\npub fn t() {}\n"),
        ("config/mod.rs", "mod parse;\npub struct C;\n"),
        ("config/parse.rs", "use super::C;\n"),
        (
            "testkit.rs",
            "use crate::input::serial::f;\nuse crate::status::S;\n",
        ),
    ];
    let graph = module_graph("src", &crate_of(&files)).unwrap();
    let edges: Vec<String> = graph
        .edges
        .iter()
        .map(|((from, to), site)| format!("{from} → {to} @{}", site.line))
        .collect();
    assert_eq!(
        edges,
        [
            "input → input::mqtt @3",
            "input::mqtt → config @2",
            "input::serial → input::mqtt @1",
        ]
    );
    assert_eq!(
        graph.nodes.iter().map(String::as_str).collect::<Vec<_>>(),
        ["config", "input", "input::mqtt", "input::serial", "status"]
    );
}

#[test]
fn graph_builder_allows_the_edge_to_import_but_not_to_be_imported() {
    let allowed = problems_of(&[
        ("lib.rs", "pub mod cli;\npub mod a;\n"),
        ("cli/mod.rs", "pub mod run;\n"),
        ("cli/run.rs", "use crate::a::A;\n"),
        ("a.rs", "pub struct A;\n"),
    ]);
    assert_eq!(allowed, "");
    let refused = problems_of(&[
        ("lib.rs", "pub mod cli;\npub mod a;\n"),
        ("cli/mod.rs", "pub fn go() { crate::a::f(); }\n"),
        ("a.rs", "pub fn f() {}\npub fn g() { crate::cli::go(); }\n"),
    ]);
    assert_eq!(
        refused,
        "modules import `cli`, the binary's edge (it may import them, not they it):\n  \
         a → cli: src/a.rs:2 (crate::cli::go)\n"
    );
}

#[test]
fn graph_builder_follows_re_exports_to_the_defining_module() {
    let files = [
        (
            "lib.rs",
            "pub mod output;\npub mod a;\npub use ioc_model as model;\n",
        ),
        (
            "output/mod.rs",
            "pub mod influx;\npub use ioc_model::line_protocol;\n\
             pub use influx::Sink;\npub use line_protocol::Flavor;\n",
        ),
        // Through the façade to another crate: no edge back to `output`.
        (
            "output/influx.rs",
            "pub struct Sink;\nfn f(_: crate::output::Flavor, _: crate::model::Reading) {}\n",
        ),
        ("a.rs", "fn g(_: crate::output::Sink) {}\n"),
    ];
    let graph = module_graph("src", &crate_of(&files)).unwrap();
    let edges: Vec<String> = graph
        .edges
        .keys()
        .map(|(from, to)| format!("{from} → {to}"))
        .collect();
    assert_eq!(edges, ["a → output::influx", "output → output::influx"]);
    assert_eq!(graph_problems(&graph), "");
}
