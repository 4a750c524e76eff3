//! The external programs the harness drives, found on `PATH` (and the sbin directories, where
//! Debian puts nginx and haproxy). The harness installs nothing: it names the missing apt
//! packages and stops.

use anyhow::bail;
use std::path::{Path, PathBuf};

/// Paths of the programs a run needs.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub wrk: PathBuf,
    pub h2load: PathBuf,
    pub taskset: PathBuf,
}

/// Where to look besides `PATH`.
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"];

/// Find `name` on `PATH` or in the sbin directories.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Find every tool the run needs (nginx and haproxy only when those systems are selected);
/// fail naming exactly the missing apt packages.
pub fn find(need_nginx: bool, need_haproxy: bool) -> anyhow::Result<Tools> {
    let wanted: [(&str, &str, bool); 5] = [
        ("nginx", "nginx", need_nginx),
        ("haproxy", "haproxy", need_haproxy),
        ("wrk", "wrk", true),
        ("h2load", "nghttp2-client", true),
        ("taskset", "util-linux", true),
    ];
    let mut missing = Vec::new();
    let mut found = Vec::new();
    for (bin, pkg, needed) in wanted {
        let p = which(bin);
        if needed && p.is_none() {
            missing.push((bin, pkg));
        }
        found.push(p);
    }
    if !missing.is_empty() {
        let pkgs: Vec<&str> = missing.iter().map(|m| m.1).collect();
        let bins: Vec<String> = missing
            .iter()
            .map(|m| format!("{} (apt package {})", m.0, m.1))
            .collect();
        bail!(
            "missing programs: {}\ninstall them with: apt-get install -y {}\n(or leave the system out with --systems)",
            bins.join(", "),
            pkgs.join(" ")
        );
    }
    let mut it = found.into_iter();
    let mut next = || it.next().flatten();
    let nginx = next();
    let haproxy = next();
    let (Some(wrk), Some(h2load), Some(taskset)) = (next(), next(), next()) else {
        bail!("tool lookup is inconsistent");
    };
    Ok(Tools {
        nginx,
        haproxy,
        wrk,
        h2load,
        taskset,
    })
}

/// First line of `<tool> <flag>` output (stdout or stderr), for the report.
pub fn version(tool: &Path, flag: &str, dir: &Path) -> String {
    let mut c = std::process::Command::new(tool);
    c.arg(flag);
    let name = tool.file_name().and_then(|n| n.to_str()).unwrap_or("tool");
    let out = super::procs::Proc::spawn(&format!("{name}-version"), c, dir).and_then(|mut p| {
        let _ = p.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5))?;
        Ok(p.output_text())
    });
    out.ok()
        .and_then(|s| s.lines().find(|l| !l.trim().is_empty()).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
