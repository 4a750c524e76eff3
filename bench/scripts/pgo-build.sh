#!/usr/bin/env bash
# Profile-guided release build of the microstax binary (README, "Build and allocator").
#
#   bench/scripts/pgo-build.sh [OUT]      # OUT: where the binary goes (target/pgo/microstax)
#
# The training pins processes to CPUs 0 and 1 (the compare's placements), so both must exist.
#
# 1. Builds microstax instrumented (-Cprofile-generate), and the bench harness plainly.
# 2. Trains: `microstax-bench compare --quick --systems microstax` drives the instrumented proxy
#    through every arrangement and load of the side-by-side compare: HTTP/1.1 and h2c clients,
#    2-byte and 16 KiB bodies, fixed rates and saturation, one and two workers, HTTP/1.1 and
#    HTTP/2 upstreams, gRPC in all four call shapes, a table of 1,000 branches. Each proxy
#    writes its counts when it exits on the harness's SIGTERM.
# 3. Merges the raw counts with llvm-profdata and checks that they cover the proxy.
# 4. Builds the release binary (the release profile: whole-program LTO) with -Cprofile-use.
#
# The training runs on loopback only. Needs wrk, h2load (nghttp2-client), taskset (util-linux)
# and an llvm-profdata that reads rustc's raw profiles: $LLVM_PROFDATA, else rustup's
# llvm-tools component, else Debian's newest /usr/lib/llvm-N (19 reads rustc 1.95's), else the
# one on PATH; the first that merges the profiles is used.
#
# Flags: RUSTFLAGS (split on whitespace) are kept and the profile flag is added; both go to
# cargo as CARGO_ENCODED_RUSTFLAGS, so paths with spaces work. As with any RUSTFLAGS, cargo then
# ignores `build.rustflags` from its config files: put such flags in RUSTFLAGS. The builds name
# the host as `--target`, so build scripts and proc macros are not instrumented.
set -euo pipefail

if [[ -n ${CARGO_ENCODED_RUSTFLAGS:-} ]]; then
    echo "pgo: CARGO_ENCODED_RUSTFLAGS is set; give extra flags in RUSTFLAGS instead" >&2
    exit 1
fi
# OUT is taken relative to the caller's directory; the rest runs from the workspace root
root=$(CDPATH='' cd -- "$(dirname -- "$0")/../.." > /dev/null && pwd)
out=$(realpath -m "${1:-$root/target/pgo/microstax}")
cd "$root"
work=$root/target/pgo
raw=$work/raw
merged=$work/microstax.profdata
rm -rf "$raw" "$work/train" "$merged"
mkdir -p "$raw"
read -r -a user_flags <<< "${RUSTFLAGS:-}"
unset RUSTFLAGS
host=$(rustc -vV | sed -n 's/^host: //p')
# cargo's encoded form: the flags joined by the unit separator
encoded() {
    local IFS=$'\x1f'
    printf '%s' "$*"
}

echo "pgo: 1/4 instrumented build" >&2
CARGO_ENCODED_RUSTFLAGS=$(encoded "${user_flags[@]}" "-Cprofile-generate=$raw") \
    CARGO_TARGET_DIR=$work/gen \
    cargo build --release --locked --bin microstax --target "$host"
CARGO_TARGET_DIR=$work/tools cargo build --locked --profile bench -p microstax-bench --bin microstax-bench

echo "pgo: 2/4 training (microstax-bench compare --quick --systems microstax)" >&2
"$work/tools/release/microstax-bench" compare --quick --systems microstax --branches 1000 \
    --instructions 0 --microstax "$work/gen/$host/release/microstax" --out "$work/train" >&2
# a round that failed is a note in the results (compare itself still succeeds): the profile
# would miss that load
if ! grep -q '"notes": \[\]' "$work/train/compare.json"; then
    echo "pgo: a training round failed; see $work/train/compare.md" >&2
    exit 1
fi

profiles=$(find "$raw" -name '*.profraw' | wc -l)
if [[ $profiles -eq 0 ]]; then
    echo "pgo: the training wrote no profile (was the proxy killed instead of exiting?)" >&2
    exit 1
fi
echo "pgo: 3/4 merging $profiles raw profiles" >&2
candidates=()
[[ -n ${LLVM_PROFDATA:-} ]] && candidates+=("$LLVM_PROFDATA")
sysroot=$(rustc --print sysroot)
candidates+=("$sysroot/lib/rustlib/$host/bin/llvm-profdata")
while read -r d; do
    candidates+=("$d/bin/llvm-profdata")
done < <(find /usr/lib -maxdepth 1 -name 'llvm-*' -type d 2>/dev/null | sort -t- -k2 -n -r)
command -v llvm-profdata > /dev/null && candidates+=("$(command -v llvm-profdata)")
profdata=
for c in "${candidates[@]}"; do
    [[ -x $c ]] || continue
    if "$c" merge -o "$merged" "$raw" 2> "$work/merge.err"; then
        profdata=$c
        break
    fi
    echo "pgo: $c cannot merge these profiles: $(tail -n 1 "$work/merge.err")" >&2
done
if [[ -z $profdata ]]; then
    echo "pgo: no llvm-profdata reads rustc's profiles; tried: ${candidates[*]}" >&2
    echo "pgo: rustup component add llvm-tools, apt-get install llvm-19, or set LLVM_PROFDATA" >&2
    exit 1
fi
# the proxy's request path must have counts: a training that never reached the proxy (or a
# proxy that was killed instead of exiting) leaves its functions at zero
if ! "$profdata" show --counts --function='microstax_proxy7forward7prepare' "$merged" \
    | awk -F'[][, ]+' '/Block counts/ { for (i = 1; i <= NF; i++) if ($i + 0 > 0) ran = 1 }
                       END { exit !ran }'; then
    echo "pgo: the merged profile has no counts for the proxy's request path" >&2
    exit 1
fi

echo "pgo: 4/4 release build with the profile ($profdata)" >&2
CARGO_ENCODED_RUSTFLAGS=$(encoded "${user_flags[@]}" "-Cprofile-use=$merged") \
    CARGO_TARGET_DIR=$work/use \
    cargo build --release --locked --bin microstax --target "$host"
install -D "$work/use/$host/release/microstax" "$out"
echo "pgo: wrote $out" >&2
