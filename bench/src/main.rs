//! `microstax-bench`: the side-by-side load harness. `compare` runs MicroStax, nginx, HAProxy and
//! a direct connection through the same loads and writes the results under `bench/results/`;
//! `instructions` counts user-space instructions per proxied request under callgrind;
//! `upstream` is the fast upstream server the harness starts as its own pinned child process.

mod harness;

use clap::{Parser, Subcommand};
use harness::{changes, compare, environments, fleet, grpcload, instructions, upstream};

#[derive(Parser)]
#[command(version, about = "MicroStax load harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run MicroStax, nginx, HAProxy and the direct path side by side.
    Compare(compare::Args),
    /// User-space instructions per proxied request under callgrind (MicroStax, nginx, HAProxy).
    Instructions(instructions::Args),
    /// Change-to-effect latency of file and API changes, and first requests to new branches.
    Changes(changes::Args),
    /// Environments that run: new branch to its own instance, wake from zero, a 1k-branch fleet.
    Environments(environments::Args),
    /// A fleet on etcd: planner publish to three proxies serving the new route.
    Fleet(fleet::Args),
    /// The fast upstream (started by `compare`; prints its addresses on the first line).
    #[command(hide = true)]
    Upstream(upstream::Args),
    /// The gRPC load generator (started by `compare`; prints one result line).
    #[command(hide = true)]
    GrpcLoad(grpcload::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Compare(args) => compare::run(args),
        Cmd::Instructions(args) => instructions::run(args),
        Cmd::Changes(args) => changes::run(args),
        Cmd::Environments(args) => environments::run(args),
        Cmd::Fleet(args) => fleet::run(args),
        Cmd::Upstream(args) => upstream::run(args),
        Cmd::GrpcLoad(args) => grpcload::run(args),
    }
}
