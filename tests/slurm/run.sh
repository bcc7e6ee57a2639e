#!/usr/bin/env bash
# `make slurm-test`: the workflow on a real one-node SLURM cluster, from nothing.
#
#  1. start a cluster here (tests/slurm/cluster.sh: installs slurm-wlm + munge, writes
#     slurm.conf, starts the daemons) unless one already answers;
#  2. install Snakemake's SLURM executor plugin into the venv (not a project dependency);
#  3. run tests/test_slurm.py, which submits every rule as a SLURM job, cancels a dump shard
#     and a student mid-run and checks that the reruns finish them exactly;
#  4. stop the daemons that step 1 started (KEEP_CLUSTER=1 leaves them running).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
PLUGIN="snakemake-executor-plugin-slurm==2.8.0"   # the version this test was written against

state=$(tests/slurm/cluster.sh start)
echo "slurm-test: cluster $state ($(sinfo --noheader --format='%P %D node(s), %c CPUs, %m MB' | head -1))"
if [ "$state" = started ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    trap 'tests/slurm/cluster.sh stop' EXIT
fi

"$PY" -m pip install --quiet --disable-pip-version-check "$PLUGIN"
RLD_REQUIRE_SLURM=1 "$PY" -m pytest -m slurm -s -q tests/test_slurm.py
