//! The import-cycle rule: at every level of a crate's module tree, the sibling modules under
//! one parent, with an edge A -> B when anything in A's subtree names something in B's
//! subtree, form an acyclic graph. A parent naming its own child, and a child naming items of
//! its parent, are no sibling edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::resolve::Reference;
use crate::tree::Tree;

/// One way a sibling edge arises: `written`, in `file`, names something in `target_file`.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub file: PathBuf,
    pub written: String,
    pub target_file: PathBuf,
}

/// A strongly connected set of sibling modules (two or more) under one parent.
#[derive(Debug)]
pub struct Cycle {
    /// The parent module, as `crate::a`.
    pub parent: String,
    pub parent_file: PathBuf,
    /// The siblings involved, sorted.
    pub members: Vec<String>,
    /// One shortest cycle through the first member, e.g. `[a, b, a]`.
    pub example: Vec<String>,
    /// Every edge between members, with how it arises.
    pub edges: BTreeMap<(String, String), Vec<Evidence>>,
}

/// Every cycle of sibling modules in `tree`.
pub fn find(tree: &Tree, references: &[Reference]) -> Vec<Cycle> {
    // parent module -> (sibling from, sibling to) -> evidence
    type Edges = BTreeMap<(String, String), Vec<Evidence>>;
    let mut levels: BTreeMap<usize, Edges> = BTreeMap::new();
    for r in references {
        let (from, to) = (&tree.modules[r.from], &tree.modules[r.to]);
        let common = from
            .path
            .iter()
            .zip(&to.path)
            .take_while(|(a, b)| a == b)
            .count();
        if common >= from.path.len() || common >= to.path.len() {
            continue; // one is the other's ancestor (or itself)
        }
        let Some(parent) = ancestor(tree, r.from, from.path.len() - common) else {
            continue;
        };
        let evidence = levels
            .entry(parent)
            .or_default()
            .entry((from.path[common].clone(), to.path[common].clone()))
            .or_default();
        if !evidence
            .iter()
            .any(|e| e.file == from.file && e.written == r.written)
        {
            evidence.push(Evidence {
                file: from.file.clone(),
                written: r.written.clone(),
                target_file: to.file.clone(),
            });
        }
    }
    let mut cycles = Vec::new();
    for (parent, edges) in levels {
        let graph: BTreeMap<&str, BTreeSet<&str>> =
            edges.keys().fold(BTreeMap::new(), |mut g, (a, b)| {
                g.entry(a.as_str()).or_default().insert(b.as_str());
                g
            });
        for members in components(&graph) {
            let Some(first) = members.first() else {
                continue;
            };
            let example = shortest_cycle(&graph, first, &members);
            let inside: BTreeMap<(String, String), Vec<Evidence>> = edges
                .iter()
                .filter(|((a, b), _)| members.contains(a) && members.contains(b))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            cycles.push(Cycle {
                parent: tree.modules[parent].display(),
                parent_file: tree.modules[parent].file.clone(),
                members,
                example,
                edges: inside,
            });
        }
    }
    cycles
}

/// The module `up` levels above module `m`.
fn ancestor(tree: &Tree, m: usize, up: usize) -> Option<usize> {
    (0..up).try_fold(m, |at, _| tree.modules[at].parent)
}

/// The strongly connected components of two or more nodes, each sorted.
fn components(graph: &BTreeMap<&str, BTreeSet<&str>>) -> Vec<Vec<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            for &next in graph.get(n).into_iter().flatten() {
                if seen.insert(next.to_owned()) {
                    stack.push(next);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&str, BTreeSet<String>> =
        graph.keys().map(|&n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for (&n, from_n) in &reachable {
        if done.contains(n) || !from_n.contains(n) {
            continue;
        }
        let members: Vec<String> = from_n
            .iter()
            .filter(|m| reachable.get(m.as_str()).is_some_and(|r| r.contains(n)))
            .cloned()
            .collect();
        if members.len() < 2 {
            continue;
        }
        done.extend(members.iter().cloned());
        out.push(members);
    }
    out
}

/// A shortest path from `start` back to itself through `members` (breadth first).
fn shortest_cycle(
    graph: &BTreeMap<&str, BTreeSet<&str>>,
    start: &str,
    members: &[String],
) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &next in graph.get(n).into_iter().flatten() {
            if !members.iter().any(|m| m == next) {
                continue;
            }
            if next == start {
                let mut path = vec![start.to_owned(), n.to_owned()];
                let mut at = n;
                while at != start {
                    at = came_from.get(at).copied().unwrap_or(start);
                    path.push(at.to_owned());
                }
                path.reverse();
                return path;
            }
            if !came_from.contains_key(next) {
                came_from.insert(next, n);
                queue.push_back(next);
            }
        }
    }
    vec![start.to_owned()]
}
