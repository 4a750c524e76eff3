//! Budget enforcement on the write path: a change that would take a team over its budget (its
//! live branches' cheapest plans together need more instances or cost than it allows) is
//! refused with the solver's reason, the conflicting constraints and the cheapest plan that
//! would be feasible without the budget. Nothing is trimmed silently.

use crate::economy::money;
use crate::planner::Planner;
use microstax_config::{Config, ConfigError, Diagnostic, LayerIdx, LayerKind};
use std::sync::Arc;

/// Check the layers a change to `id` can take over a budget: `id` itself (its use plus the
/// team's other layers'), or for an org change, every team with a budget. `file` names the
/// change in the diagnostic.
pub(crate) fn check(config: &Config, id: LayerIdx, file: &Arc<str>) -> Result<(), ConfigError> {
    let layers: Vec<LayerIdx> = if id == 0 {
        config
            .layers()
            .filter(|l| l.kind == LayerKind::Team && l.doc.doc.budget.is_some())
            .filter_map(|l| config.layer_id(&l.name))
            .collect()
    } else if config.budget(id).is_some() {
        vec![id]
    } else {
        return Ok(());
    };
    if layers.is_empty() {
        return Ok(());
    }
    // a config that does not plan is refused by the compiler's own checks, not here
    let Ok(planner) = Planner::new(config) else {
        return Ok(());
    };
    for idx in layers {
        let Some(layer) = config.layer(idx) else {
            continue;
        };
        let Ok(plan) = planner.plan(config, &layer.name, None) else {
            continue;
        };
        let x = &plan.economics;
        let Some(r) = &x.refused else { continue };
        let mut reason = format!("{} is refused: {}", plan.layer, r.reason);
        if let Some(b) = &x.budget {
            let instances = b
                .max_instances
                .map_or_else(|| "any number of".into(), |v| v.to_string());
            let cost = b
                .max_cost
                .map_or_else(|| "any cost".into(), |v| format!("{}/h", money(v)));
            reason.push_str(&format!(
                " ({} allows {instances} instances and {cost}; its other live layers use {} and {}/h)",
                b.origin,
                b.others.instances,
                money(b.others.cost),
            ));
        }
        if !r.conflicting.is_empty() {
            reason.push_str(&format!("; conflicting: {}", r.conflicting.join("; ")));
        }
        if let Some((names, cost, inst)) = &r.without_budget {
            reason.push_str(&format!(
                "; cheapest plan without the budget: {} ({}/h, {inst} instances)",
                names.join(", "),
                money(*cost)
            ));
        }
        return Err(refused(file, reason));
    }
    Ok(())
}

/// A write to `file` refused for `reason` (a budget, a route contract): one diagnostic for the
/// whole layer.
pub(crate) fn refused(file: &Arc<str>, reason: String) -> ConfigError {
    ConfigError::Invalid {
        diagnostics: vec![Diagnostic {
            file: file.clone(),
            line: 0,
            field: String::new(),
            reason,
        }],
    }
}
