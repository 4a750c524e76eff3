//! Pricing decisions. Every decision of a plan is priced on its own by a [`CostModel`], so plan
//! cost is a plain sum; a later exact cheapest-plan solver can choose among alternatives (e.g. a
//! per-branch schema or a forked store) by asking the same model for each alternative's price.

use crate::decision::Isolation;
use microstax_config::schema::ResourcesDoc;
use std::fmt;
use std::ops::{Add, AddAssign};

/// Cluster resources: CPU in millicores and memory in MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_m: u64,
    /// Memory in MiB.
    pub memory_mi: u64,
}

impl Resources {
    /// Nothing.
    pub const ZERO: Resources = Resources {
        cpu_m: 0,
        memory_mi: 0,
    };

    /// A value.
    pub const fn new(cpu_m: u64, memory_mi: u64) -> Resources {
        Resources { cpu_m, memory_mi }
    }

    /// `self - other`, floored at zero per dimension.
    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_m: self.cpu_m.saturating_sub(other.cpu_m),
            memory_mi: self.memory_mi.saturating_sub(other.memory_mi),
        }
    }

    /// Whether both dimensions are zero.
    pub fn is_zero(self) -> bool {
        self == Resources::ZERO
    }

    /// As JSON.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "cpu_m": self.cpu_m, "memory_mi": self.memory_mi })
    }
}

impl From<ResourcesDoc> for Resources {
    fn from(r: ResourcesDoc) -> Resources {
        Resources::new(u64::from(r.cpu_m), u64::from(r.memory_mi))
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Resources {
            cpu_m: self.cpu_m.saturating_add(o.cpu_m),
            memory_mi: self.memory_mi.saturating_add(o.memory_mi),
        }
    }
}

impl AddAssign for Resources {
    fn add_assign(&mut self, o: Resources) {
        *self = *self + o;
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m/{}Mi", self.cpu_m, self.memory_mi)
    }
}

/// Prices instances. Implementations must be pure: the same question gets the same answer.
pub trait CostModel: Send + Sync + fmt::Debug {
    /// One instance of a service; `requested` is its effective `resources`, if set.
    fn service(&self, service: &str, requested: Option<ResourcesDoc>) -> Resources;
    /// Isolating a store of `kind` in the given way.
    fn store(&self, store: &str, kind: &str, isolation: Isolation) -> Resources;
    /// Isolating a topic (a per-branch topic on the shared broker is free by default).
    fn topic(&self, _topic: &str) -> Resources {
        Resources::ZERO
    }
}

/// The built-in prices: services cost what they request (or `service_default`), a forked store
/// costs `store_instance` (redis: `cache_instance`), and a per-branch schema or database on the
/// shared server costs nothing extra.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultCostModel {
    /// A service that requests nothing.
    pub service_default: Resources,
    /// A forked database-like store.
    pub store_instance: Resources,
    /// A forked cache (redis, memcached).
    pub cache_instance: Resources,
}

impl Default for DefaultCostModel {
    fn default() -> Self {
        DefaultCostModel {
            service_default: Resources::new(100, 128),
            store_instance: Resources::new(250, 512),
            cache_instance: Resources::new(100, 256),
        }
    }
}

impl CostModel for DefaultCostModel {
    fn service(&self, _service: &str, requested: Option<ResourcesDoc>) -> Resources {
        requested.map_or(self.service_default, Resources::from)
    }

    fn store(&self, _store: &str, kind: &str, isolation: Isolation) -> Resources {
        match isolation {
            Isolation::Schema | Isolation::Database | Isolation::Topic => Resources::ZERO,
            Isolation::Instance if matches!(kind, "redis" | "memcached" | "valkey") => {
                self.cache_instance
            }
            Isolation::Instance => self.store_instance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prices() {
        let m = DefaultCostModel::default();
        assert_eq!(m.service("x", None), Resources::new(100, 128));
        let r = ResourcesDoc {
            cpu_m: 300,
            memory_mi: 64,
        };
        assert_eq!(m.service("x", Some(r)), Resources::new(300, 64));
        assert_eq!(
            m.store("db", "postgres", Isolation::Schema),
            Resources::ZERO
        );
        assert_eq!(
            m.store("c", "redis", Isolation::Instance),
            Resources::new(100, 256)
        );
        assert_eq!(
            m.store("s", "s3", Isolation::Instance),
            Resources::new(250, 512)
        );
        assert_eq!(m.topic("t"), Resources::ZERO);
    }

    #[test]
    fn arithmetic_saturates() {
        let a = Resources::new(1, 2);
        assert_eq!(a.saturating_sub(Resources::new(5, 1)), Resources::new(0, 1));
        assert_eq!(Resources::new(u64::MAX, 0) + a, Resources::new(u64::MAX, 2));
        assert_eq!(a.to_string(), "1m/2Mi");
    }
}
