//! The exact search: domain propagation of implications to a fixpoint, then depth-first branch
//! and bound over one group of decisions, one component after the other (tie order).
//!
//! A node is pruned when no completion can beat the incumbent under the solver's total order
//! (cost, then instances, then the alternatives in search order, which is tie order):
//! - its cost lower bound exceeds the incumbent's cost, or equals it while the instance lower
//!   bound exceeds the incumbent's instances, or both equal it while every completion's
//!   alternatives come lexicographically after the incumbent's;
//! - a budget's lower bound of use exceeds the budget.
//!
//! Bounds: per-decision minima of the remaining domains; for the components not yet started
//! (when the search takes components one after the other, [`Blocks`]), their exact optima,
//! each computed once by a search of its own; and with budgets, a Lagrangian bound: for a
//! multiplier `l >= 0` on the instance budgets, any assignment meeting them costs at least
//! `sum_d min_a (cost_a + l * instances_a) - l * free`, since each budget's bracket
//! `instances - free` is at most zero. `l` comes from the Lagrangian heuristic that also seeds
//! the incumbent ([`seed`]), or, failing that, from maximising the per-decision bound.

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

    /// The Lagrangian cost bound (valid only for completions that meet the budgets).
    fn lag_bound(&self) -> u128 {
        let lag = i128::try_from(self.lb_lag).unwrap_or(i128::MAX) - self.lag_offset;
        u128::try_from(lag).unwrap_or(0)
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

    /// Keep only the `keep` alternatives of `d` (recording `cause` at the root).
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

    /// Keep only the `keep` alternatives of `d` and propagate (no causes); the trail is
    /// cleared, so the result is a new root.
    pub fn restrict(&mut self, m: &Model, d: usize, keep: u64) -> Result<(), u32> {
        let new = self.dom[d] & keep;
        if new != self.dom[d] {
            self.set(m, d, new);
            self.queue.push(d as u32);
        }
        let r = self.propagate(m, None);
        self.trail.clear();
        r
    }

    /// Forget the undo trail (the current state becomes a root).
    pub fn clear_trail(&mut self) {
        self.trail.clear();
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
    /// The chosen alternative of each decision searched, in search order.
    pub vals: Vec<u8>,
}

/// Exact bounds of whole components, for a search that takes the components one after the
/// other: at a node, the components not yet started are bounded by their own optima
/// (computed once at the root, each by a search of its own) instead of by per-decision minima.
/// Components are independent apart from budgets, so the bounds add up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Blocks {
    /// Per search position, its component.
    comp_at: Vec<u32>,
    /// Per component, its first search position.
    start: Vec<usize>,
    /// Suffix sums over components `c..` of (exact optimum - per-decision minima at the root).
    cost: Vec<u128>,
    inst: Vec<u128>,
    lag: Vec<u128>,
    bud_inst: Vec<Vec<u128>>,
    bud_cost: Vec<Vec<u128>>,
}

impl Blocks {
    /// Bounds for `comps` (each in index order; the search visits them in this order) from the
    /// root state `st` (propagated, multipliers set).
    pub fn new(
        m: &Model,
        st: &State,
        comps: &[Vec<u32>],
        max_nodes: u64,
        nodes: &mut u64,
    ) -> Result<Option<Blocks>, Limit> {
        let k = comps.len();
        let nb = m.buds.len();
        let mut gain =
            |f: &dyn Fn(usize, usize) -> Option<u64>| -> Result<Option<Vec<u128>>, Limit> {
                let mut om = m.clone();
                for d in 0..m.n {
                    for a in 0..m.cost[d].len() {
                        let Some(v) = f(d, a) else {
                            return Ok(None);
                        };
                        om.cost[d][a] = v;
                        om.inst[d][a] = 0;
                    }
                }
                om.buds.clear();
                om.buds_of.iter_mut().for_each(Vec::clear);
                let mut ost = State::new(&om, st.dom.clone());
                let mut out = vec![0u128; k + 1];
                for (c, comp) in comps.iter().enumerate() {
                    let Some(best) =
                        search(&om, &mut ost, comp, false, None, None, max_nodes, nodes)?
                    else {
                        return Ok(None);
                    };
                    let mut exact = 0u128;
                    let mut per = 0u128;
                    for (i, &d) in comp.iter().enumerate() {
                        let d = d as usize;
                        exact += u128::from(om.cost[d][usize::from(best.vals[i])]);
                        per += bits(st.dom[d])
                            .map(|a| u128::from(om.cost[d][a]))
                            .min()
                            .unwrap_or(0);
                    }
                    out[c] = exact - per;
                }
                for c in (0..k).rev() {
                    out[c] += out[c + 1];
                }
                Ok(Some(out))
            };
        let Some(cost) = gain(&|d, a| Some(m.cost[d][a]))? else {
            return Ok(None);
        };
        let Some(inst) = gain(&|d, a| Some(u64::from(m.inst[d][a])))? else {
            return Ok(None);
        };
        // a saturated reduced cost would make the gain too large: then no Lagrangian gain
        let lag = gain(&|d, a| {
            let v = u128::from(m.cost[d][a]) + st.weight[d] * u128::from(m.inst[d][a]);
            u64::try_from(v).ok()
        })?
        .unwrap_or_else(|| vec![0; k + 1]);
        let mut bud_inst = vec![vec![0u128; nb]; k + 1];
        let mut bud_cost = vec![vec![0u128; nb]; k + 1];
        for (b, bud) in m.buds.iter().enumerate() {
            let mut member = vec![false; m.n];
            for &d in &bud.members {
                member[d as usize] = true;
            }
            if bud.free_instances.is_some() {
                let g = gain(&|d, a| {
                    Some(if member[d] {
                        u64::from(m.inst[d][a])
                    } else {
                        0
                    })
                })?;
                for (c, v) in g.unwrap_or_else(|| vec![0; k + 1]).into_iter().enumerate() {
                    bud_inst[c][b] = v;
                }
            }
            if bud.free_cost.is_some() {
                let g = gain(&|d, a| Some(if member[d] { m.cost[d][a] } else { 0 }))?;
                for (c, v) in g.unwrap_or_else(|| vec![0; k + 1]).into_iter().enumerate() {
                    bud_cost[c][b] = v;
                }
            }
        }
        let mut comp_at = Vec::new();
        let mut start = Vec::with_capacity(k);
        for (c, comp) in comps.iter().enumerate() {
            start.push(comp_at.len());
            comp_at.extend(std::iter::repeat_n(c as u32, comp.len()));
        }
        Ok(Some(Blocks {
            comp_at,
            start,
            cost,
            inst,
            lag,
            bud_inst,
            bud_cost,
        }))
    }

    /// The suffix of untouched components at search position `k`.
    fn suffix(&self, k: usize) -> usize {
        match self.comp_at.get(k) {
            Some(&c) if self.start[c as usize] == k => c as usize,
            Some(&c) => c as usize + 1,
            None => self.start.len(),
        }
    }
}

struct Dfs<'a> {
    m: &'a Model,
    st: &'a mut State,
    /// The decisions searched, in the order they are assigned and compared in.
    order: &'a [u32],
    blocks: Option<&'a Blocks>,
    budgets: bool,
    best: Option<Best>,
    nodes: u64,
    max_nodes: u64,
}

/// The least assignment (cost, instances, alternatives in `order`) of the decisions of `order`
/// (closed under implications: no implication leaves them; components contiguous, each in index
/// order) from the propagated state `st`, meeting the budgets if `budgets`. `blocks`: the
/// components' bounds. `st` is restored on return. `seed`: a known assignment meeting the budgets, to prune with from the
/// start.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search(
    m: &Model,
    st: &mut State,
    order: &[u32],
    budgets: bool,
    blocks: Option<&Blocks>,
    seed: Option<Best>,
    max_nodes: u64,
    nodes: &mut u64,
) -> Result<Option<Best>, Limit> {
    let mut dfs = Dfs {
        m,
        st,
        order,
        blocks,
        budgets,
        best: seed,
        nodes: *nodes,
        max_nodes,
    };
    let r = dfs.run(0);
    *nodes = dfs.nodes;
    r?;
    Ok(dfs.best)
}

impl Dfs<'_> {
    /// Whether no completion of this node can beat the incumbent, or a budget cannot be met.
    fn pruned(&self, k: usize) -> bool {
        let st = &*self.st;
        let (mut cost, mut lag, mut inst) = (st.lb_cost, st.lag_bound(), st.lb_inst);
        let s = self.blocks.map(|b| b.suffix(k));
        if let (Some(b), Some(s)) = (self.blocks, s) {
            cost += b.cost[s];
            lag += b.lag[s];
            inst += b.inst[s];
        }
        if self.budgets && !self.budgets_ok(s) {
            return true;
        }
        let Some(best) = &self.best else {
            return false;
        };
        let key = (if self.budgets { cost.max(lag) } else { cost }, inst);
        match key.cmp(&(best.cost, best.inst)) {
            Ordering::Greater => true,
            Ordering::Equal => self.after(best),
            Ordering::Less => false,
        }
    }

    fn budgets_ok(&self, s: Option<usize>) -> bool {
        let st = &*self.st;
        self.m.buds.iter().enumerate().all(|(b, bud)| {
            let (gi, gc) = match (self.blocks, s) {
                (Some(bl), Some(s)) => (bl.bud_inst[s][b], bl.bud_cost[s][b]),
                _ => (0, 0),
            };
            let fits = |used: u128, free: Option<i128>| {
                free.is_none_or(|f| i128::try_from(used).unwrap_or(i128::MAX) <= f)
            };
            fits(st.bud_inst[b] + gi, bud.free_instances)
                && fits(st.bud_cost[b] + gc, bud.free_cost)
        })
    }

    /// Whether every completion comes lexicographically after `best` (search order): the
    /// first decision that cannot take `best`'s alternative can only take later ones.
    fn after(&self, best: &Best) -> bool {
        for (i, &d) in self.order.iter().enumerate() {
            let dom = self.st.dom[d as usize];
            let want = best.vals[i];
            let least = dom.trailing_zeros() as u8;
            if least < want {
                return false;
            }
            if dom & (1u64 << want) == 0 {
                return true;
            }
        }
        false
    }

    fn run(&mut self, k: usize) -> Result<(), Limit> {
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(Limit);
        }
        if self.pruned(k) {
            return Ok(());
        }
        let Some(&d) = self.order.get(k) else {
            self.leaf();
            return Ok(());
        };
        let d = d as usize;
        let dom = self.st.dom[d];
        if dom.count_ones() == 1 {
            return self.run(k + 1);
        }
        let mut alts = [0u8; 64];
        let mut len = 0;
        for a in bits(dom) {
            alts[len] = a as u8;
            len += 1;
        }
        let m = self.m;
        let w = self.st.weight[d];
        let budgets = self.budgets;
        alts[..len].sort_by_key(|&a| {
            let (c, i) = (m.cost[d][a as usize], m.inst[d][a as usize]);
            let lag = if budgets {
                u128::from(c) + w * u128::from(i)
            } else {
                u128::from(c)
            };
            (lag, c, i, a)
        });
        for &a in &alts[..len] {
            let mark = self.st.trail.len();
            self.st.set(m, d, 1u64 << a);
            self.st.queue.push(d as u32);
            if self.st.propagate(m, None).is_ok() {
                self.run(k + 1)?;
            }
            self.st.queue.clear();
            self.st.undo(m, mark);
        }
        Ok(())
    }

    fn leaf(&mut self) {
        let cand = (self.st.lb_cost, self.st.lb_inst);
        let vals: Vec<u8> = self
            .order
            .iter()
            .map(|&d| self.st.dom[d as usize].trailing_zeros() as u8)
            .collect();
        let better = match &self.best {
            None => true,
            Some(b) => cand
                .cmp(&(b.cost, b.inst))
                .then_with(|| vals.cmp(&b.vals))
                .is_lt(),
        };
        if better {
            self.best = Some(Best {
                cost: cand.0,
                inst: cand.1,
                vals,
            });
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

/// A good assignment of the coupled `comps` meeting the budgets, to seed the search with (the
/// Lagrangian heuristic): each component's optimum of `cost + l * instances` (instances counted
/// once per instance budget), for the least `l` whose combination meets every budget (found by
/// bisection; `None` if even the largest does not), with that `l` (a good multiplier for the
/// Lagrangian bound). `order`: the components' decisions, one
/// component after the other.
pub(crate) fn seed(
    m: &Model,
    st: &State,
    comps: &[Vec<u32>],
    order: &[u32],
    max_nodes: u64,
    nodes: &mut u64,
) -> Result<Option<(Best, u64)>, Limit> {
    let mut count = vec![0u64; m.n];
    for b in m.buds.iter().filter(|b| b.free_instances.is_some()) {
        for &d in &b.members {
            count[d as usize] += 1;
        }
    }
    let spread = (0..m.n)
        .flat_map(|d| m.cost[d].iter().copied())
        .max()
        .unwrap_or(0);
    let mut vals_of = vec![0u8; m.n];
    let mut trial = |l: u64| -> Result<Option<Best>, Limit> {
        let mut om = m.clone();
        #[allow(clippy::needless_range_loop)]
        for d in 0..m.n {
            for a in 0..m.cost[d].len() {
                let extra = l
                    .checked_mul(count[d])
                    .and_then(|x| x.checked_mul(u64::from(m.inst[d][a])));
                let Some(v) = extra.and_then(|x| x.checked_add(m.cost[d][a])) else {
                    return Ok(None);
                };
                om.cost[d][a] = v;
            }
        }
        om.buds.clear();
        om.buds_of.iter_mut().for_each(Vec::clear);
        let mut ost = State::new(&om, st.dom.clone());
        for comp in comps {
            let Some(best) = search(&om, &mut ost, comp, false, None, None, max_nodes, nodes)?
            else {
                return Ok(None);
            };
            for (i, &d) in comp.iter().enumerate() {
                vals_of[d as usize] = best.vals[i];
            }
        }
        // the true totals, measured as the search measures them: the group's choices plus
        // the per-decision minima of everything else
        let mut cost = st.lb_cost;
        let mut inst = st.lb_inst;
        let mut bud_inst = vec![0u128; m.buds.len()];
        let mut bud_cost = vec![0u128; m.buds.len()];
        for &d in order {
            let d = d as usize;
            let a = usize::from(vals_of[d]);
            let (c, i) = (u128::from(m.cost[d][a]), u128::from(m.inst[d][a]));
            cost = cost - u128::from(st.min_cost[d]) + c;
            inst = inst - u128::from(st.min_inst[d]) + i;
            for &b in &m.buds_of[d] {
                bud_inst[b as usize] += i;
                bud_cost[b as usize] += c;
            }
        }
        let fits = |used: u128, free: Option<i128>| {
            free.is_none_or(|f| i128::try_from(used).unwrap_or(i128::MAX) <= f)
        };
        let ok = m.buds.iter().enumerate().all(|(b, bud)| {
            fits(bud_inst[b], bud.free_instances) && fits(bud_cost[b], bud.free_cost)
        });
        Ok(ok.then(|| Best {
            cost,
            inst,
            vals: order.iter().map(|&d| vals_of[d as usize]).collect(),
        }))
    };
    let (mut lo, mut hi) = (0u64, spread.saturating_add(1));
    let Some(mut found) = trial(hi)? else {
        return Ok(None);
    };
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match trial(mid)? {
            Some(b) => {
                hi = mid;
                found = b;
            }
            None => lo = mid + 1,
        }
    }
    Ok(Some((found, hi)))
}
