#!/bin/sh
# Installs latflow under a prefix: the `latflow` command as PREFIX/bin/latflow and the in-tree
# plugins as PREFIX/lib/latflow/liblatflow_*.so. The installed command looks in ../lib/latflow
# relative to itself, so `PREFIX/bin/latflow plugins` finds them with no environment variable.
#
# Usage: tools/install.sh [--profile PROFILE] [--no-build] PREFIX
#   --profile PROFILE  the cargo profile to build and install (default: release; `dev` for
#                      the debug build)
#   --no-build         install what the last build left in the target directory
# The target directory is CARGO_TARGET_DIR, or target/ in the repository.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
build=1
prefix=
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) [ $# -ge 2 ] || { echo "install.sh: --profile needs a value" >&2; exit 2; }
                   profile=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
        *) [ -z "$prefix" ] || { echo "install.sh: one PREFIX only" >&2; exit 2; }
           prefix=$1; shift ;;
    esac
done
[ -n "$prefix" ] || { echo "usage: tools/install.sh [--profile PROFILE] [--no-build] PREFIX" >&2; exit 2; }

# The in-tree plugins: every workspace member built as a cdylib.
plugins="latflow-phi4 latflow-u1 latflow-sun latflow-qcd latflow-flow-scalar latflow-flow-u1 latflow-flow-sun"
if [ "$build" = 1 ]; then
    set -- -p latflow-host
    for p in $plugins; do set -- "$@" -p "$p"; done
    (cd "$root" && cargo build --profile "$profile" "$@")
fi

target=${CARGO_TARGET_DIR:-$root/target}
case "$profile" in
    dev) dir=$target/debug ;;
    *) dir=$target/$profile ;;
esac
case "$(uname -s)" in
    Darwin) ext=dylib ;;
    *) ext=so ;;
esac

[ -x "$dir/latflow" ] || { echo "install.sh: $dir/latflow is missing (build first, or drop --no-build)" >&2; exit 1; }
mkdir -p "$prefix/bin" "$prefix/lib/latflow"
cp -f "$dir/latflow" "$prefix/bin/latflow"
for p in $plugins; do
    lib=lib$(echo "$p" | tr - _).$ext
    [ -f "$dir/$lib" ] || { echo "install.sh: $dir/$lib is missing (build first, or drop --no-build)" >&2; exit 1; }
    cp -f "$dir/$lib" "$prefix/lib/latflow/$lib"
done
echo "installed $prefix/bin/latflow and $(echo $plugins | wc -w) plugins in $prefix/lib/latflow"
