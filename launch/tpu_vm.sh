#!/usr/bin/env bash
# Runs one dlmscale command on every host of a Cloud TPU VM slice (the multi-controller model:
# the same program on each host; jax.distributed.initialize() finds the peers itself).
#
#   launch/tpu_vm.sh TPU_NAME ZONE -- --config=experiments/quickstart.py --workdir=/mnt/runs/qs
#
# Assumes the checkout is at ~/dlmscale on every host with `pip install -e .` done (for example
# with: gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all --command="...").
# The workdir and data.prepared_dir must be on storage every host sees (NFS or a gcsfuse
# mount). Untested here: this project has no TPU; the same entry point is exercised on CPU by
# launch/local.py.
set -euo pipefail
if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- <dlmscale.main arguments>" >&2
  exit 2
fi
tpu="$1"; zone="$2"; shift 3
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd ~/dlmscale && python -m dlmscale.main${args} --multihost"
