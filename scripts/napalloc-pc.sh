#!/bin/sh
# Write napalloc.pc from napalloc.pc.in.
#
#   scripts/napalloc-pc.sh [PROFILE]
#
# With no settings it describes the build tree as it is: prefix = the repository,
# includedir = <repo>/include, libdir = <target dir>/PROFILE (PROFILE defaults to "release"; the
# target dir is $CARGO_TARGET_DIR or <repo>/target), written to <libdir>/napalloc.pc.
# For an installation, set any of PREFIX, LIBDIR, INCLUDEDIR and OUT in the environment:
#
#   PREFIX=/usr/local LIBDIR=/usr/local/lib INCLUDEDIR=/usr/local/include \
#     OUT=/usr/local/lib/pkgconfig/napalloc.pc scripts/napalloc-pc.sh
#
# Prints the path it wrote.
set -eu

root=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
profile=${1:-release}
target_dir=${CARGO_TARGET_DIR:-$root/target}

prefix=${PREFIX:-$root}
libdir=${LIBDIR:-$target_dir/$profile}
includedir=${INCLUDEDIR:-$prefix/include}
out=${OUT:-$libdir/napalloc.pc}

version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1)
if [ -z "$version" ]; then
    echo "napalloc-pc.sh: no version in $root/Cargo.toml" >&2
    exit 1
fi

# The values may hold '/', so '|' delimits the substitutions; reject a '|' in them.
case "$prefix$libdir$includedir" in
    *'|'*) echo "napalloc-pc.sh: '|' in a path is not supported" >&2; exit 1 ;;
esac

mkdir -p "$(dirname -- "$out")"
sed -e "s|@prefix@|$prefix|g" \
    -e "s|@libdir@|$libdir|g" \
    -e "s|@includedir@|$includedir|g" \
    -e "s|@version@|$version|g" \
    "$root/napalloc.pc.in" > "$out"
echo "$out"
