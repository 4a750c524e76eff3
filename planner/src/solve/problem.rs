//! The solver's input: decisions with priced alternatives, implications and prohibitions between
//! them, and team budgets. Plain data with no config types, so the planner builds it from its
//! own graph and the solver can be tested on generated problems.

use std::fmt;
use std::sync::Arc;

/// Most alternatives one decision may have (the solver keeps a decision's domain in a `u64`).
pub const MAX_ALTERNATIVES: usize = 64;

/// Why something holds, in words a person can check (e.g. `migration 0042 is not additive`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reason(pub Arc<str>);

impl Reason {
    /// A reason from text.
    pub fn new(text: impl AsRef<str>) -> Reason {
        Reason(Arc::from(text.as_ref()))
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Reason {
        Reason::new(s)
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Reason {
        Reason::new(s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKind {
    /// How a service runs for the branch (own, shared, scaled to zero, reused).
    Service,
    /// How many replicas a service runs.
    Replicas,
    /// How a store is isolated (shared, per-branch schema, database from a template, fork).
    Store,
    /// How a topic is isolated (per-branch topic, or forking every consumer).
    Topic,
}

impl SubjectKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Service => "service",
            SubjectKind::Replicas => "replicas",
            SubjectKind::Store => "store",
            SubjectKind::Topic => "topic",
        }
    }
}

/// One way to run a decision's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// E.g. `own-instance`, `shared-instance`, `scaled-to-zero`, `share`,
    /// `per-branch-schema`, `database-from-template`, `forked-instance`, `per-branch-topic`,
    /// `fork-consumers`, `replicas-2`.
    pub label: Arc<str>,
    /// Expected cost in integer micro-units per hour (already weighted by the branch's
    /// expected active fraction where the alternative scales to zero), so the objective is an
    /// exact integer sum.
    pub cost: u64,
    /// New instances the alternative runs (counted against `max_instances` budgets).
    pub instances: u32,
    /// `Ok` when the alternative is allowed by the subject's own facts; otherwise why not
    /// (e.g. `share` of a store whose migration is not additive). A not-allowed alternative
    /// never appears in a solution.
    pub allowed: Result<(), Vec<Reason>>,
}

impl Alternative {
    /// An allowed alternative.
    pub fn new(label: impl AsRef<str>, cost: u64, instances: u32) -> Alternative {
        Alternative {
            label: Arc::from(label.as_ref()),
            cost,
            instances,
            allowed: Ok(()),
        }
    }

    /// The same alternative, not allowed for `reason`.
    pub fn not_allowed(mut self, reason: impl Into<Reason>) -> Alternative {
        match &mut self.allowed {
            Ok(()) => self.allowed = Err(vec![reason.into()]),
            Err(v) => v.push(reason.into()),
        }
        self
    }
}

/// One choice the solver makes: exactly one of its alternatives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionVar {
    /// The subject's name (`orders`, `orders-db`).
    pub name: Arc<str>,
    /// What it is about.
    pub kind: SubjectKind,
    /// The alternatives, in the planner's order of preference (the last tie-break).
    pub alternatives: Vec<Alternative>,
}

impl DecisionVar {
    /// A decision.
    pub fn new(
        name: impl AsRef<str>,
        kind: SubjectKind,
        alternatives: Vec<Alternative>,
    ) -> DecisionVar {
        DecisionVar {
            name: Arc::from(name.as_ref()),
            kind,
            alternatives,
        }
    }
}

/// An alternative of a decision: `(decision index, alternative index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Choice {
    /// Index into [`Problem::decisions`].
    pub decision: usize,
    /// Index into that decision's alternatives.
    pub alternative: usize,
}

impl Choice {
    /// A choice.
    pub const fn new(decision: usize, alternative: usize) -> Choice {
        Choice {
            decision,
            alternative,
        }
    }
}

/// A rule between decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// If `when` is chosen, decision `then` takes one of `one_of`. Expresses the graph's
    /// isolation rules (an isolated store makes each writer fork; a topic that is not per-branch
    /// makes each consumer fork) and contract compatibility along the edges routes use.
    Requires {
        /// The triggering choice.
        when: Choice,
        /// The decision constrained.
        then: usize,
        /// Its alternatives that satisfy the rule.
        one_of: Vec<usize>,
        /// Why.
        reason: Reason,
    },
    /// `choice` may not be taken.
    Forbid {
        /// The forbidden choice.
        choice: Choice,
        /// Why.
        reason: Reason,
    },
}

impl Constraint {
    /// The constraint's reason.
    pub fn reason(&self) -> &Reason {
        match self {
            Constraint::Requires { reason, .. } | Constraint::Forbid { reason, .. } => reason,
        }
    }
}

/// What a team's other live branches already use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Usage {
    /// Instances.
    pub instances: u64,
    /// Cost in micro-units per hour.
    pub cost: u64,
}

/// A team's limits across all of its live branches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The team.
    pub name: Arc<str>,
    /// The decisions of this branch that count against it (each counted once).
    pub decisions: Vec<usize>,
    /// At most this many instances, in all.
    pub max_instances: Option<u64>,
    /// At most this cost per hour, in all.
    pub max_cost: Option<u64>,
    /// What the team's other live branches already use.
    pub already_used: Usage,
}

/// The whole question: choose one alternative per decision, meeting every constraint and
/// budget, at the least cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problem {
    /// The decisions; their order is the last tie-break.
    pub decisions: Vec<DecisionVar>,
    /// Implications and prohibitions.
    pub constraints: Vec<Constraint>,
    /// Team budgets.
    pub budgets: Vec<Budget>,
}

/// A problem that does not describe a question (bad indices, too many alternatives).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A decision has more alternatives than the solver supports.
    #[error(
        "decision {decision} has {count} alternatives; at most {MAX_ALTERNATIVES} are supported"
    )]
    TooManyAlternatives {
        /// The decision.
        decision: Arc<str>,
        /// How many it has.
        count: usize,
    },
    /// A constraint names a decision or alternative that does not exist.
    #[error("constraint {constraint} names {what}, which does not exist")]
    Constraint {
        /// Index of the constraint.
        constraint: usize,
        /// What it names.
        what: String,
    },
    /// A budget names a decision that does not exist.
    #[error("budget {budget} names decision {decision}, which does not exist")]
    Budget {
        /// The budget's name.
        budget: Arc<str>,
        /// The index.
        decision: usize,
    },
    /// Costs could overflow 64 bits when summed.
    #[error("the sum of the largest costs exceeds 2^64 micro-units")]
    CostOverflow,
}

impl Problem {
    /// Check indices and sizes.
    pub fn validate(&self) -> Result<(), Malformed> {
        let mut total: u64 = 0;
        for d in &self.decisions {
            if d.alternatives.len() > MAX_ALTERNATIVES {
                return Err(Malformed::TooManyAlternatives {
                    decision: d.name.clone(),
                    count: d.alternatives.len(),
                });
            }
            let max = d.alternatives.iter().map(|a| a.cost).max().unwrap_or(0);
            total = total.checked_add(max).ok_or(Malformed::CostOverflow)?;
        }
        for b in &self.budgets {
            total
                .checked_add(b.already_used.cost)
                .ok_or(Malformed::CostOverflow)?;
        }
        let choice = |ci: usize, c: Choice| -> Result<(), Malformed> {
            let ok = self
                .decisions
                .get(c.decision)
                .is_some_and(|d| c.alternative < d.alternatives.len());
            if ok {
                Ok(())
            } else {
                Err(Malformed::Constraint {
                    constraint: ci,
                    what: format!("alternative {} of decision {}", c.alternative, c.decision),
                })
            }
        };
        for (ci, c) in self.constraints.iter().enumerate() {
            match c {
                Constraint::Requires {
                    when, then, one_of, ..
                } => {
                    choice(ci, *when)?;
                    for &a in one_of {
                        choice(ci, Choice::new(*then, a))?;
                    }
                    if self.decisions.get(*then).is_none() {
                        return Err(Malformed::Constraint {
                            constraint: ci,
                            what: format!("decision {then}"),
                        });
                    }
                }
                Constraint::Forbid { choice: c, .. } => choice(ci, *c)?,
            }
        }
        for b in &self.budgets {
            if let Some(&d) = b.decisions.iter().find(|&&d| d >= self.decisions.len()) {
                return Err(Malformed::Budget {
                    budget: b.name.clone(),
                    decision: d,
                });
            }
        }
        Ok(())
    }

    /// The alternative of a choice.
    pub fn alternative(&self, c: Choice) -> &Alternative {
        &self.decisions[c.decision].alternatives[c.alternative]
    }

    /// `orders=own-instance`, for messages.
    pub fn describe(&self, c: Choice) -> String {
        let d = &self.decisions[c.decision];
        format!("{}={}", d.name, d.alternatives[c.alternative].label)
    }
}
