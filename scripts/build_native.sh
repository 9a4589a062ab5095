#!/bin/sh
# Builds pghoard_postgres_command's native front (src/commands/postgres_command_native.c) into
# dist/native/ when a C compiler is present: static where the C library allows it (no dynamic
# loader at each of PostgreSQL's calls), else dynamic. Without a compiler nothing is built and the
# bash client bin/pghoard_postgres_command serves every call, as before; this never fails a build.
cd "$(dirname "$0")/.." || exit 0
src=src/commands/postgres_command_native.c
out=dist/native/pghoard_postgres_command
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "build_native: no C compiler ($cc): pghoard_postgres_command stays the bash client" >&2
  rm -f "$out"
  exit 0
fi
mkdir -p dist/native
flags="-O2 -s -Wall -Wextra -Werror"
if "$cc" $flags -static -o "$out.tmp" "$src" 2>/dev/null || "$cc" $flags -o "$out.tmp" "$src"; then
  mv -f "$out.tmp" "$out"
else
  echo "build_native: compiling $src failed: pghoard_postgres_command stays the bash client" >&2
  rm -f "$out.tmp" "$out"
fi
exit 0
