//! What simpler rules would run, for comparison with the solver's plan: cloning everything,
//! forking each changed service with everything that calls it (transitively), and Kardinal's
//! rule (fork each changed service and every stateful service reachable downstream of it,
//! share the rest).

use std::sync::Arc;

/// A service or store of the graph, priced as its own instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its name.
    pub name: Arc<str>,
    /// Cost of its own instance, in micro-units per hour.
    pub cost: u64,
    /// Instances it runs when forked.
    pub instances: u32,
    /// Whether it holds state (a store, or a service with a volume).
    pub stateful: bool,
    /// Whether the branch changes it.
    pub changed: bool,
    /// What it calls or uses (downstream), as indices into [`Topology::nodes`].
    pub calls: Vec<usize>,
}

/// The graph the baselines need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Services and stores.
    pub nodes: Vec<Node>,
}

/// What one rule runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Nodes it runs for the branch.
    pub nodes: usize,
    /// Their cost.
    pub cost: u64,
    /// Their instances.
    pub instances: u64,
}

/// The three baselines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Baselines {
    /// Every node cloned.
    pub clone_all: Totals,
    /// Each changed node and, transitively, everything that calls it.
    pub fork_dependents: Totals,
    /// Each changed node and every stateful node reachable downstream of one.
    pub kardinal: Totals,
}

fn totals(t: &Topology, pick: &[bool]) -> Totals {
    t.nodes
        .iter()
        .zip(pick)
        .filter(|(_, &p)| p)
        .fold(Totals::default(), |acc, (n, _)| Totals {
            nodes: acc.nodes + 1,
            cost: acc.cost.saturating_add(n.cost),
            instances: acc.instances + u64::from(n.instances),
        })
}

/// Everything reachable from the changed nodes along `adj` (the changed nodes included).
fn reach<'a>(t: &Topology, adj: impl Fn(usize) -> &'a [usize]) -> Vec<bool> {
    let mut seen: Vec<bool> = t.nodes.iter().map(|n| n.changed).collect();
    let mut stack: Vec<usize> = (0..t.nodes.len()).filter(|&i| seen[i]).collect();
    while let Some(v) = stack.pop() {
        for &w in adj(v) {
            if w < seen.len() && !seen[w] {
                seen[w] = true;
                stack.push(w);
            }
        }
    }
    seen
}

/// Compute the baselines. Indices out of range are ignored.
pub fn baselines(t: &Topology) -> Baselines {
    let n = t.nodes.len();
    let mut up: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, x) in t.nodes.iter().enumerate() {
        for &c in &x.calls {
            if c < n {
                up[c].push(i);
            }
        }
    }
    let dependents = reach(t, |v| up[v].as_slice());
    let downstream = reach(t, |v| t.nodes[v].calls.as_slice());
    let kardinal: Vec<bool> = t
        .nodes
        .iter()
        .zip(&downstream)
        .map(|(x, &r)| x.changed || (r && x.stateful))
        .collect();
    Baselines {
        clone_all: totals(t, &vec![true; n]),
        fork_dependents: totals(t, &dependents),
        kardinal: totals(t, &kardinal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cost: u64, stateful: bool, changed: bool, calls: Vec<usize>) -> Node {
        Node {
            name: Arc::from(name),
            cost,
            instances: 1,
            stateful,
            changed,
            calls,
        }
    }

    #[test]
    fn three_rules_on_a_chain() {
        // web -> orders -> orders-db, web -> cart -> cart-cache; orders changes
        let t = Topology {
            nodes: vec![
                node("web", 10, false, false, vec![1, 3]),
                node("orders", 20, false, true, vec![2]),
                node("orders-db", 40, true, false, vec![]),
                node("cart", 5, false, false, vec![4]),
                node("cart-cache", 7, true, false, vec![]),
            ],
        };
        let b = baselines(&t);
        assert_eq!(b.clone_all.cost, 82);
        assert_eq!(b.clone_all.nodes, 5);
        // orders and web (which calls it)
        assert_eq!(b.fork_dependents.cost, 30);
        // orders and orders-db
        assert_eq!(b.kardinal.cost, 60);
        assert_eq!(b.kardinal.instances, 2);
    }
}
