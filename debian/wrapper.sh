#!/bin/sh
# @COMMAND@ — pghoard for Node.js. The code lives in ../lib/pghoard relative to this script
# (/usr/lib/pghoard when installed); PGHOARD_NODE overrides the Node.js binary (>= 20).
set -e
here=$(dirname "$(readlink -f "$0")")
libdir=$(readlink -f "$here/../lib/pghoard")
node=${PGHOARD_NODE:-/usr/bin/node}
[ -x "$node" ] || node=node
exec "$node" "$libdir/bin/@COMMAND@.js" "$@"
