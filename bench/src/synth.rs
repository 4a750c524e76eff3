//! Config generation shared by the micro-benchmarks and the load harness: a set of layer files
//! as YAML text ([`Layers`]), either synthetic at a chosen size ([`Spec`]) or the small
//! header-routing config the harness runs MicroStax on ([`header_routing`]).
//!
//! Configs are produced as text and parsed by the real loader, so the benchmarks measure the
//! same path a config directory takes, and the harness config is the one a person would write.

use microstax_config::{parse_text, Config, ConfigError, LayerKind, ParsedDoc};
use std::fmt::Write as _;
use std::path::Path;

/// One config as files: `org.yaml` and `branches/<name>.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layers {
    /// Text of `org.yaml`.
    pub org: String,
    /// `(branch name, text of branches/<name>.yaml)`, parents before children.
    pub branches: Vec<(String, String)>,
}

impl Layers {
    /// Parse every file with the real loader, as a config directory would be read.
    pub fn docs(&self) -> Result<Vec<ParsedDoc>, ConfigError> {
        let mut docs = parse_text("org.yaml", &self.org, Some(LayerKind::Org), None)?;
        for (name, text) in &self.branches {
            let file = format!("branches/{name}.yaml");
            docs.extend(parse_text(
                &file,
                text,
                Some(LayerKind::Branch),
                Some(name),
            )?);
        }
        Ok(docs)
    }

    /// Parse and validate.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::build(self.docs()?)
    }

    /// Write the files under `dir` in the standard layout.
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("branches"))?;
        std::fs::write(dir.join("org.yaml"), &self.org)?;
        for (name, text) in &self.branches {
            std::fs::write(dir.join("branches").join(format!("{name}.yaml")), text)?;
        }
        Ok(())
    }
}

/// The size of a synthetic config.
///
/// Branches form chains of at most `max_depth` branches: branch `i` has branch `i - 1` as its
/// parent unless `i` is a multiple of `max_depth`, in which case its parent is the baseline. So
/// with `max_depth = 4` a lookup walks a lineage of up to 4 branches plus the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Services in the org catalog (`svc-0` ...), each reachable by Host `svc-<i>`.
    pub services: usize,
    /// Branch layers (`br-0` ...).
    pub branches: usize,
    /// Longest chain of branches (1 = every branch's parent is the baseline).
    pub max_depth: usize,
    /// Services each branch overrides (distinct services, spread over the catalog).
    pub overrides: usize,
}

impl Spec {
    /// Name of branch `i`.
    pub fn branch_name(i: usize) -> String {
        format!("br-{i}")
    }

    /// Name of service `s`; it is also the service's Host.
    pub fn service_name(s: usize) -> String {
        format!("svc-{s}")
    }

    /// The parent branch of branch `i`, or `None` for the baseline.
    pub fn parent_of(&self, i: usize) -> Option<usize> {
        let depth = self.max_depth.max(1);
        (!i.is_multiple_of(depth)).then(|| i - 1)
    }

    /// Depth of branch `i` in its chain (1 for a child of the baseline).
    pub fn depth_of(&self, i: usize) -> usize {
        i % self.max_depth.max(1) + 1
    }

    /// The services branch `i` overrides: `overrides` distinct ids, different per branch.
    pub fn overridden(&self, i: usize) -> impl Iterator<Item = usize> {
        let n = self.services.max(1);
        let count = self.overrides.min(n);
        let stride = (n / count.max(1)).max(1);
        let start = i.wrapping_mul(31) % n;
        (0..count).map(move |k| (start + k * stride) % n)
    }

    /// The config as files.
    pub fn layers(&self) -> Layers {
        let mut org = String::with_capacity(self.services * 96);
        org.push_str("kind: org\nservices:\n");
        for s in 0..self.services {
            let name = Spec::service_name(s);
            let _ = writeln!(
                org,
                "  {name}:\n    hosts: [{name}]\n    endpoints: [\"{name}.baseline.internal:8080\"]"
            );
        }
        let branches = (0..self.branches)
            .map(|i| (Spec::branch_name(i), self.branch_text(i, "")))
            .collect();
        Layers { org, branches }
    }

    /// Text of branch `i`; `tag` is added to its endpoint names, so a different tag gives a
    /// changed version of the same branch (for incremental updates).
    pub fn branch_text(&self, i: usize, tag: &str) -> String {
        let parent = self
            .parent_of(i)
            .map_or_else(|| "baseline".to_string(), Spec::branch_name);
        if self.overrides == 0 || self.services == 0 {
            return format!("kind: branch\nparent: {parent}\nservices: {{}}\n");
        }
        let mut t = format!("kind: branch\nparent: {parent}\nservices:\n");
        let branch = Spec::branch_name(i);
        for s in self.overridden(i) {
            let svc = Spec::service_name(s);
            let _ = writeln!(
                t,
                "  {svc}: {{endpoints: [\"{svc}.{branch}{tag}.internal:8080\"]}}"
            );
        }
        t
    }

    /// Parse and validate the whole config.
    pub fn config(&self) -> Result<Config, ConfigError> {
        self.layers().config()
    }
}

/// The config the load harness runs MicroStax on: one service `app` (Host `app`, and the
/// default service for any other Host) with `baseline` as its baseline endpoint, and one branch
/// per `(name, endpoint)` overriding it. The branch is chosen by `x-microstax-branch`.
pub fn header_routing(baseline: &str, branches: &[(&str, &str)]) -> Layers {
    header_routing_over(baseline, branches, None)
}

/// [`header_routing`] with the service's upstream protocol (`policy.protocol`, e.g. `http2`),
/// which the branches inherit.
pub fn header_routing_over(
    baseline: &str,
    branches: &[(&str, &str)],
    protocol: Option<&str>,
) -> Layers {
    let policy = protocol.map_or(String::new(), |p| {
        format!("    policy: {{protocol: {p}}}\n")
    });
    let org = format!(
        "kind: org\nrouting: {{default_service: app}}\nservices:\n  app:\n    hosts: [app]\n    endpoints: [\"{baseline}\"]\n{policy}"
    );
    let branches = branches
        .iter()
        .map(|(name, ep)| {
            let text = format!(
                "kind: branch\nparent: baseline\nservices:\n  app: {{endpoints: [\"{ep}\"]}}\n"
            );
            (name.to_string(), text)
        })
        .collect();
    Layers { org, branches }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_distinct_and_in_range() {
        let spec = Spec {
            services: 50,
            branches: 10,
            max_depth: 4,
            overrides: 5,
        };
        for i in 0..10 {
            let mut v: Vec<usize> = spec.overridden(i).collect();
            assert!(v.iter().all(|&s| s < 50));
            v.sort_unstable();
            v.dedup();
            assert_eq!(v.len(), 5);
        }
    }

    #[test]
    fn chains_are_at_most_max_depth() {
        let spec = Spec {
            services: 5,
            branches: 9,
            max_depth: 4,
            overrides: 1,
        };
        assert_eq!(spec.parent_of(0), None);
        assert_eq!(spec.parent_of(3), Some(2));
        assert_eq!(spec.parent_of(4), None);
        assert_eq!(spec.depth_of(3), 4);
    }

    #[test]
    fn synthetic_config_builds() -> Result<(), ConfigError> {
        let spec = Spec {
            services: 20,
            branches: 9,
            max_depth: 4,
            overrides: 3,
        };
        let cfg = spec.config()?;
        assert_eq!(cfg.services().len(), 20);
        assert!(cfg.branch_id("br-8").is_some());
        Ok(())
    }

    #[test]
    fn header_routing_config_builds() -> Result<(), ConfigError> {
        let l = header_routing(
            "127.0.0.1:9000",
            &[("b1", "127.0.0.1:9001"), ("b2", "127.0.0.1:9002")],
        );
        let cfg = l.config()?;
        assert!(cfg.branch_id("b2").is_some());
        let l = header_routing_over("127.0.0.1:9000", &[("b1", "127.0.0.1:9001")], Some("http2"));
        assert!(l.org.contains("policy: {protocol: http2}"));
        l.config()?;
        Ok(())
    }
}
