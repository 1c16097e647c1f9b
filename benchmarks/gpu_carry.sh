#!/usr/bin/env bash
# Optional: copy photos the GPU machine does not have (../shared is not there) into .devcarry/
# (git-ignored), for a throughput run on more images than the three bundled in samples/hr:
#
#   bash benchmarks/gpu_carry.sh [SET]        # default set5 -> .devcarry/images/*.png
#   # then, on the device, carry ".devcarry" and run: bash benchmarks/gpu_check.sh --images .devcarry/images OUT
#
# The check itself needs nothing carried: by default it uses samples/ (in git).
set -eu
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SET=${1:-set5}
SRC=$REPO/../shared/data/images/$SET
[[ -d $SRC ]] || { echo "no $SRC here: nothing to carry (gpu_check.sh uses samples/hr)" >&2; exit 1; }
mkdir -p "$REPO/.devcarry/images"
cp "$SRC"/*.png "$REPO/.devcarry/images/"
du -sh "$REPO/.devcarry"
