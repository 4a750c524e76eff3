//! The load harness: processes, tools, systems under test, load generators, and the report.

pub mod changes;
pub mod compare;
pub mod environments;
pub mod fleet;
pub mod grpcload;
pub mod h1client;
pub mod instructions;
pub mod load;
pub mod procfs;
pub mod procs;
pub mod report;
mod results;
pub mod svg;
pub mod systems;
pub mod tools;
pub mod upstream;
