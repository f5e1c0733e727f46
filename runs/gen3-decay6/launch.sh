#!/usr/bin/env bash
# A decay branch of runs/gen3 at step 13,312 with a larger share of the shape families (vessels, small, rings,
# instances): synthetic 0.4 of episodes and shape 0.75 of those (30 % of episodes; 18 % in the other branches).
# Starts or resumes exactly (same flags each time).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec runs/gen3/decay-branch.sh runs/gen3-decay6 1000 --synthetic-fraction 0.4 --shape-fraction 0.75 "$@"
