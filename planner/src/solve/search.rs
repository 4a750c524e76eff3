//! The exact search: domain propagation of implications to a fixpoint, then depth-first branch
//! and bound over one group of decisions in index order.
//!
//! A node is pruned when no completion can beat the incumbent under the solver's total order
//! (cost, then instances, then the vector of alternative indices in decision order):
//! - its cost lower bound (per-decision minima of the remaining domains; with budgets also a
//!   Lagrangian bound, below) exceeds the incumbent's cost, or equals it while the instance
//!   lower bound exceeds the incumbent's instances, or both equal it while the alternatives
//!   chosen so far are already lexicographically after the incumbent's;
//! - a budget's lower bound of use (what is used already plus the minima of its members)
//!   exceeds the budget.
//!
//! Lagrangian bound: for multipliers `l_b >= 0` on the instance budgets, any assignment meeting
//! the budgets costs at least `sum_d min_a (cost_a + sum_{b contains d} l_b * instances_a) -
//! sum_b l_b * free_b`, since each budget's bracket `instances_b - free_b` is at most zero. The
//! multipliers are fixed at the root by maximising that bound (it is concave in each `l_b`).

use super::model::Model;
use std::cmp::Ordering;

/// The search gave up after this many nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit;

/// Why an alternative was removed at the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The alternative's own facts do not allow it.
    NotAllowed,
    /// A forbid constraint.
    Forbid(usize),
    /// Removed by the caller for this solve.
    Extra,
    /// An implication whose trigger was chosen restricted this decision.
    Forward(usize),
    /// This alternative would trigger an implication whose target has no satisfying
    /// alternative left.
    Backward(usize),
}

/// The domains and the running bounds, with an undo trail.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub dom: Vec<u64>,
    min_cost: Vec<u64>,
    min_inst: Vec<u32>,
    min_lag: Vec<u128>,
    /// Per decision, the sum of its instance budgets' multipliers.
    weight: Vec<u128>,
    pub lb_cost: u128,
    pub lb_inst: u128,
    lb_lag: u128,
    /// `sum_b l_b * free_b`.
    lag_offset: i128,
    bud_inst: Vec<u128>,
    bud_cost: Vec<u128>,
    trail: Vec<(u32, u64)>,
    queue: Vec<u32>,
}

fn bits(mut m: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let i = m.trailing_zeros() as usize;
        m &= m - 1;
        Some(i)
    })
}

impl State {
    /// The root state: every decision's domain is `init`, not yet propagated.
    pub fn new(m: &Model, init: Vec<u64>) -> State {
        let n = m.n;
        let mut st = State {
            dom: vec![0; n],
            min_cost: vec![0; n],
            min_inst: vec![0; n],
            min_lag: vec![0; n],
            weight: vec![0; n],
            lb_cost: 0,
            lb_inst: 0,
            lb_lag: 0,
            lag_offset: 0,
            bud_inst: vec![0; m.buds.len()],
            bud_cost: vec![0; m.buds.len()],
            trail: Vec::new(),
            queue: Vec::new(),
        };
        for (d, mask) in init.into_iter().enumerate() {
            st.dom[d] = mask;
            st.account(m, d, true);
        }
        st
    }

    fn stats(&self, m: &Model, d: usize) -> (u64, u32, u128) {
        let mut c = u64::MAX;
        let mut i = u32::MAX;
        let mut l = u128::MAX;
        for a in bits(self.dom[d]) {
            let (ca, ia) = (m.cost[d][a], m.inst[d][a]);
            c = c.min(ca);
            i = i.min(ia);
            l = l.min(u128::from(ca) + self.weight[d] * u128::from(ia));
        }
        if self.dom[d] == 0 {
            return (0, 0, 0);
        }
        (c, i, l)
    }

    /// Add (`add`) or remove decision `d`'s current minima from the running sums.
    fn account(&mut self, m: &Model, d: usize, add: bool) {
        let (c, i, l) = if add {
            let s = self.stats(m, d);
            self.min_cost[d] = s.0;
            self.min_inst[d] = s.1;
            self.min_lag[d] = s.2;
            s
        } else {
            (self.min_cost[d], self.min_inst[d], self.min_lag[d])
        };
        let (c, i) = (u128::from(c), u128::from(i));
        if add {
            self.lb_cost += c;
            self.lb_inst += i;
            self.lb_lag += l;
        } else {
            self.lb_cost -= c;
            self.lb_inst -= i;
            self.lb_lag -= l;
        }
        for &b in &m.buds_of[d] {
            let b = b as usize;
            if add {
                self.bud_inst[b] += i;
                self.bud_cost[b] += c;
            } else {
                self.bud_inst[b] -= i;
                self.bud_cost[b] -= c;
            }
        }
    }

    fn set(&mut self, m: &Model, d: usize, mask: u64) {
        self.trail.push((d as u32, self.dom[d]));
        self.account(m, d, false);
        self.dom[d] = mask;
        self.account(m, d, true);
    }

    fn undo(&mut self, m: &Model, to: usize) {
        while self.trail.len() > to {
            let Some((d, old)) = self.trail.pop() else {
                break;
            };
            let d = d as usize;
            self.account(m, d, false);
            self.dom[d] = old;
            self.account(m, d, true);
        }
    }

    /// Set the Lagrangian multipliers (one per budget of the model; zero for budgets
    /// without an instance limit).
    pub fn reweight(&mut self, m: &Model, lambda: &[u64]) {
        let mut weight = vec![0u128; m.n];
        let mut offset: i128 = 0;
        for (b, bud) in m.buds.iter().enumerate() {
            let l = lambda.get(b).copied().unwrap_or(0);
            if l == 0 {
                continue;
            }
            let Some(free) = bud.free_instances else {
                continue;
            };
            offset += i128::from(l) * free;
            for &d in &bud.members {
                weight[d as usize] += u128::from(l);
            }
        }
        self.weight = weight;
        self.lag_offset = offset;
        self.lb_lag = 0;
        for d in 0..m.n {
            let l = self.stats(m, d).2;
            self.min_lag[d] = l;
            self.lb_lag += l;
        }
    }

    /// The best cost lower bound: per-decision minima, or the Lagrangian bound if higher.
    fn cost_bound(&self) -> u128 {
        let lag = i128::try_from(self.lb_lag).unwrap_or(i128::MAX) - self.lag_offset;
        let lag = u128::try_from(lag).unwrap_or(0);
        self.lb_cost.max(lag)
    }

    /// Whether every budget can still be met.
    pub fn budgets_ok(&self, m: &Model) -> bool {
        m.buds.iter().enumerate().all(|(b, bud)| {
            let inst_ok = bud
                .free_instances
                .is_none_or(|f| i128::try_from(self.bud_inst[b]).unwrap_or(i128::MAX) <= f);
            let cost_ok = bud
                .free_cost
                .is_none_or(|f| i128::try_from(self.bud_cost[b]).unwrap_or(i128::MAX) <= f);
            inst_ok && cost_ok
        })
    }

    /// Remove `bit` alternatives from `d` (recording `cause` at the root).
    fn remove(
        &mut self,
        m: &Model,
        d: usize,
        keep: u64,
        cause: Removal,
        causes: &mut Option<&mut Vec<Vec<Option<Removal>>>>,
    ) {
        let old = self.dom[d];
        let new = old & keep;
        if new == old {
            return;
        }
        if let Some(c) = causes.as_deref_mut() {
            for a in bits(old & !new) {
                c[d][a] = Some(cause);
            }
        }
        self.set(m, d, new);
        self.queue.push(d as u32);
    }

    /// Propagate the decisions queued so far to a fixpoint. `Err(d)`: `d` has no alternative
    /// left.
    pub fn propagate(
        &mut self,
        m: &Model,
        mut causes: Option<&mut Vec<Vec<Option<Removal>>>>,
    ) -> Result<(), u32> {
        while let Some(v) = self.queue.pop() {
            let dv = self.dom[v as usize];
            if dv == 0 {
                self.queue.clear();
                return Err(v);
            }
            for &r in &m.by_then[v as usize] {
                let q = m.reqs[r as usize];
                if dv & q.mask == 0 {
                    let keep = !(1u64 << q.when_alt);
                    self.remove(
                        m,
                        q.when as usize,
                        keep,
                        Removal::Backward(q.ci),
                        &mut causes,
                    );
                }
            }
            if dv.count_ones() == 1 {
                let a = dv.trailing_zeros();
                for &r in &m.by_when[v as usize] {
                    let q = m.reqs[r as usize];
                    if q.when_alt == a {
                        self.remove(
                            m,
                            q.then as usize,
                            q.mask,
                            Removal::Forward(q.ci),
                            &mut causes,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Queue every decision (for the root propagation).
    pub fn queue_all(&mut self) {
        self.queue.extend((0..self.dom.len() as u32).rev());
    }
}

/// The best assignment of a group found by [`search`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Best {
    pub cost: u128,
    pub inst: u128,
    /// The chosen alternative of each decision of the group, in group order.
    pub vals: Vec<u8>,
}

struct Dfs<'a> {
    m: &'a Model,
    st: &'a mut State,
    group: &'a [u32],
    budgets: bool,
    best: Option<Best>,
    version: u64,
    nodes: u64,
    max_nodes: u64,
    path: Vec<u8>,
}

/// The least assignment (cost, instances, alternatives in group order) of the decisions of
/// `group` (in index order, closed under implications: no implication leaves it) from the
/// propagated state `st`, meeting the budgets if `budgets`. `st` is restored on return.
pub(crate) fn search(
    m: &Model,
    st: &mut State,
    group: &[u32],
    budgets: bool,
    max_nodes: u64,
    nodes: &mut u64,
) -> Result<Option<Best>, Limit> {
    let mut dfs = Dfs {
        m,
        st,
        group,
        budgets,
        best: None,
        version: 0,
        nodes: *nodes,
        max_nodes,
        path: Vec::with_capacity(group.len()),
    };
    let r = dfs.run(0, Ordering::Less);
    *nodes = dfs.nodes;
    r?;
    Ok(dfs.best)
}

impl Dfs<'_> {
    fn pruned(&self, status: Ordering) -> bool {
        let Some(b) = &self.best else {
            return false;
        };
        let key = (self.st.cost_bound(), self.st.lb_inst);
        match key.cmp(&(b.cost, b.inst)) {
            Ordering::Greater => true,
            Ordering::Equal => status == Ordering::Greater,
            Ordering::Less => false,
        }
    }

    fn run(&mut self, k: usize, status: Ordering) -> Result<(), Limit> {
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(Limit);
        }
        if self.pruned(status) {
            return Ok(());
        }
        let Some(&d) = self.group.get(k) else {
            self.leaf();
            return Ok(());
        };
        let d = d as usize;
        let dom = self.st.dom[d];
        let mut order = [0u8; 64];
        let mut len = 0;
        for a in bits(dom) {
            order[len] = a as u8;
            len += 1;
        }
        let m = self.m;
        let w = self.st.weight[d];
        let budgets = self.budgets;
        order[..len].sort_by_key(|&a| {
            let (c, i) = (m.cost[d][a as usize], m.inst[d][a as usize]);
            let lag = if budgets {
                u128::from(c) + w * u128::from(i)
            } else {
                u128::from(c)
            };
            (lag, c, i, a)
        });
        let entry = self.version;
        for &a in &order[..len] {
            let base = if self.version != entry {
                Ordering::Equal
            } else {
                status
            };
            let s = match (&self.best, base) {
                (Some(b), Ordering::Equal) => a.cmp(&b.vals[k]),
                (None, _) => Ordering::Less,
                (_, s) => s,
            };
            self.path.push(a);
            if len == 1 {
                self.run(k + 1, s)?;
            } else {
                let mark = self.st.trail.len();
                self.st.set(m, d, 1u64 << a);
                self.st.queue.push(d as u32);
                let ok = self.st.propagate(m, None).is_ok() && (!budgets || self.st.budgets_ok(m));
                if ok {
                    self.run(k + 1, s)?;
                }
                self.st.queue.clear();
                self.st.undo(m, mark);
            }
            self.path.pop();
        }
        Ok(())
    }

    fn leaf(&mut self) {
        let cand = (self.st.lb_cost, self.st.lb_inst);
        let better = match &self.best {
            None => true,
            Some(b) => cand
                .cmp(&(b.cost, b.inst))
                .then_with(|| self.path.as_slice().cmp(b.vals.as_slice()))
                .is_lt(),
        };
        if better {
            self.best = Some(Best {
                cost: cand.0,
                inst: cand.1,
                vals: self.path.clone(),
            });
            self.version += 1;
        }
    }
}

/// Multipliers for the Lagrangian bound: coordinate ascent over the instance budgets, each
/// step the integer maximum of the (concave) bound in one multiplier, from the root domains.
pub(crate) fn multipliers(m: &Model, dom: &[u64]) -> Vec<u64> {
    let mut lambda = vec![0u64; m.buds.len()];
    if m.buds.iter().all(|b| b.free_instances.is_none()) {
        return lambda;
    }
    let spread = (0..m.n)
        .flat_map(|d| bits(dom[d]).map(move |a| (d, a)))
        .map(|(d, a)| m.cost[d][a])
        .max()
        .unwrap_or(0);
    let bound = |lambda: &[u64]| -> i128 {
        let mut weight = vec![0u128; m.n];
        let mut offset: i128 = 0;
        for (b, bud) in m.buds.iter().enumerate() {
            if let Some(free) = bud.free_instances {
                offset += i128::from(lambda[b]) * free;
                for &d in &bud.members {
                    weight[d as usize] += u128::from(lambda[b]);
                }
            }
        }
        let sum: u128 = (0..m.n)
            .map(|d| {
                bits(dom[d])
                    .map(|a| u128::from(m.cost[d][a]) + weight[d] * u128::from(m.inst[d][a]))
                    .min()
                    .unwrap_or(0)
            })
            .sum();
        i128::try_from(sum).unwrap_or(i128::MAX) - offset
    };
    for _round in 0..2 {
        for b in 0..m.buds.len() {
            if m.buds[b].free_instances.is_none() {
                continue;
            }
            // smallest l in [0, spread + 1] with bound(l + 1) <= bound(l): the maximum
            let (mut lo, mut hi) = (0u64, spread.saturating_add(1));
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                lambda[b] = mid;
                let here = bound(&lambda);
                lambda[b] = mid + 1;
                let next = bound(&lambda);
                if next > here {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lambda[b] = lo;
        }
    }
    lambda
}
