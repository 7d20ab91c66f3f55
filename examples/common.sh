# Sourced by the examples' run.sh scripts, after they set `here` (their own directory):
#
#   source "$here/../common.sh" WORKDIR
#
# sets `root` (the repository) and `latflow` (the release binary; LATFLOW overrides it, and a
# missing one is built with `cargo build --release`), then enters WORKDIR, made if missing.
root="$(cd "$here/../.." && pwd)"
latflow="${LATFLOW:-$root/target/release/latflow}"
[ -x "$latflow" ] || (cd "$root" && cargo build --release)
mkdir -p "$1" && cd "$1"
