//! The crate's shape, checked: no import circle between the modules of `core/src`, and no
//! module too large to read. Modules are the top-level ones (`replica/` counts as one); a
//! reference is any `crate::module` outside comments and test code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read core/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`replica/window.rs` is `replica`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under core/src");
    let first = relative.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let text = code(&std::fs::read_to_string(file).expect("read a source file"));
        let deps = graph.entry(module.clone()).or_default();
        for (index, _) in text.match_indices("crate::") {
            let name: String = text[index + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

/// A path of modules that leads back to its start, if any.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_of_core_form_no_import_circle() {
    let graph = graph();
    assert!(graph.len() > 8, "the modules were read: {graph:?}");
    assert!(
        graph["replica"].contains("statement"),
        "references are seen: {graph:?}"
    );
    assert_eq!(find_circle(&graph), None, "modules import in a circle");
}

#[test]
fn the_checker_finds_a_planted_circle() {
    let mut graph = graph();
    graph
        .entry("crypto".to_string())
        .or_default()
        .insert("config".to_string());
    let circle = find_circle(&graph).expect("config imports crypto, crypto now config");
    assert!(circle.contains(&"crypto".to_string()), "{circle:?}");
}

#[test]
fn no_module_is_too_large_to_read() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    for file in files {
        let lines = std::fs::read_to_string(&file)
            .expect("read")
            .lines()
            .count();
        let limit = match file.ends_with("replica/mod.rs") {
            // The replica's struct, entry points, dispatch and three phases, nothing else.
            true => 500,
            false => 700,
        };
        assert!(
            lines <= limit,
            "{} has {lines} lines, more than {limit}",
            file.display()
        );
    }
}
