//! Route contracts on the write path: a change after which a branch's routes would serve a
//! caller an incompatible api (see `economy::contracts`) is refused with the edge, the version
//! and the requirement, like a budget refusal, and the last good table keeps serving.

use crate::planner::Planner;
use microstax_config::{Config, ConfigError, LayerIdx};
use std::sync::Arc;

/// Check layer `id` and every layer below it (for an org change, every layer). `file` names the
/// change in the diagnostic.
pub(crate) fn check(config: &Config, id: LayerIdx, file: &Arc<str>) -> Result<(), ConfigError> {
    let mut layers = vec![id];
    let mut i = 0;
    while i < layers.len() {
        layers.extend(config.children(layers[i]));
        i += 1;
    }
    let uses = config
        .layers()
        .any(|l| l.doc.doc.services.values().any(|s| !s.requires.is_empty()));
    if !uses {
        return Ok(());
    }
    // a config that does not plan is refused by the compiler's own checks, not here
    let Ok(planner) = Planner::new(config) else {
        return Ok(());
    };
    for idx in layers.into_iter().filter(|&l| l != 0) {
        let Some(layer) = config.layer(idx) else {
            continue;
        };
        let Ok(plan) = planner.plan(config, &layer.name, None) else {
            continue;
        };
        let Some(r) = &plan.economics.refused else {
            continue;
        };
        if !r.conflicting.iter().any(|c| c.contains("route ")) {
            continue;
        }
        let reason = format!(
            "{} is refused: {}; conflicting: {}",
            plan.layer,
            r.reason,
            r.conflicting.join("; ")
        );
        return Err(crate::budget::refused(file, reason));
    }
    Ok(())
}
