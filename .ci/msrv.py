#!/usr/bin/env python3
"""Gate: the workspace's rust-version must be at least the highest rust-version any locked
dependency declares, so the number we state is one the lockfile can actually be built with."""
import json
import subprocess
import sys


def parse(v):
    return tuple(int(x) for x in v.split("."))[:3] + (0,) * (3 - len(v.split(".")))


meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked"]))
members = set(meta["workspace_members"])
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"workspace members must share one rust-version, found {sorted(map(str, ours))}")
ours = parse(ours.pop())
need = max(((parse(p["rust_version"]), f'{p["name"]} {p["version"]}')
            for p in meta["packages"] if p["id"] not in members and p.get("rust_version")),
           default=((0, 0, 0), "none"))
if need[0] > ours:
    sys.exit(f"rust-version {'.'.join(map(str, ours))} is below what {need[1]} needs "
             f"({'.'.join(map(str, need[0]))})")
print(f"rust-version {'.'.join(map(str, ours))} covers every locked dependency "
      f"(highest: {need[1]}, {'.'.join(map(str, need[0]))})")
