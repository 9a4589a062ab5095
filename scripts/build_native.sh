#!/bin/sh
# Builds the native parts into dist/native/ when a C compiler is present; each is optional.
# First pghoard_postgres_command's native front (src/commands/postgres_command_native.c): static
# where the C library allows it (no dynamic loader at each of PostgreSQL's calls), else dynamic.
# Without a compiler nothing is built and the bash client bin/pghoard_postgres_command serves
# every call, as before; this never fails a build.
cd "$(dirname "$0")/.." || exit 0
src=src/commands/postgres_command_native.c
out=dist/native/pghoard_postgres_command
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "build_native: no C compiler ($cc): pghoard_postgres_command stays the bash client, snappy the npm packages" >&2
  rm -f "$out" dist/native/snappy_native.node
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

# Snappy's native half (src/fileformat/snappy_native.c: block encoding and decoding), a Node.js addon
# linked to libsnappy (libsnappy-dev to build, libsnappy1v5 to run). Without it, or when it
# cannot be loaded, snappy.ts uses the npm packages; this never fails a build either.
addon_src=src/fileformat/snappy_native.c
addon=dist/native/snappy_native.node
node_include=$(node -p 'require("path").resolve(process.execPath, "../../include/node")' 2>/dev/null)
if [ -f "$node_include/node_api.h" ] && printf '#include <snappy-c.h>\n' | "$cc" -E -x c - >/dev/null 2>&1; then
  if "$cc" -O2 -s -Wall -Wextra -shared -fPIC -I"$node_include" -o "$addon.tmp" "$addon_src" -lsnappy -lm; then
    mv -f "$addon.tmp" "$addon"
  else
    echo "build_native: compiling $addon_src failed: snappy stays on the npm packages" >&2
    rm -f "$addon.tmp" "$addon"
  fi
else
  echo "build_native: no libsnappy or Node.js headers: snappy stays on the npm packages" >&2
  rm -f "$addon"
fi
exit 0
