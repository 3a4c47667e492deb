#!/usr/bin/env bash
# Runs one dlmscale command on every host of an existing Cloud TPU VM slice (the multi-controller
# model: the same program on each host; jax.distributed.initialize() finds the peers itself),
# after installing the package at a git ref on every host.
#
#   PROJECT=my-project launch/tpu_vm.sh TPU_NAME ZONE -- \
#       --config=experiments/quickstart.py --workdir=/mnt/shared/runs/quickstart
#
# Each host gets the repository at REF in ~/dlmscale and `pip install -e '.[tpu]'` in the
# virtualenv ~/dlmscale-venv (made with PYTHON, apt-installed if missing: stock TPU images ship
# an older Python than the package needs), then runs
# `python3 -m dlmscale.main <arguments> --multihost` from ~/dlmscale in that venv.
# Environment: PROJECT (default: gcloud's configured project), REPO_URL (default: this
# checkout's origin), REF (default: this checkout's HEAD commit, which must be pushed),
# PYTHON (default python3.11), SKIP_INSTALL=1 to reuse the hosts' install.
# The workdir and data.prepared_dir must be on storage every host sees (NFS or a gcsfuse
# mount). To create, queue or delete slices and run a whole study, use the sweep's tpu_vm
# launcher (dlmscale/sweep/, dlmscale/launchers.py: the same install and run commands).
# Untested on TPUs here; tests/test_launchers.py runs it against a fake gcloud.
set -euo pipefail
if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: [PROJECT=...] $0 TPU_NAME ZONE -- <dlmscale.main arguments>" >&2
  exit 2
fi
tpu="$1"; zone="$2"; shift 3
checkout="$(cd "$(dirname "$0")/.." && pwd)"
project="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
if [[ -z "$project" ]]; then
  echo "error: set PROJECT=<gcp project> (gcloud has no default project)" >&2
  exit 2
fi
repo="${REPO_URL:-$(git -C "$checkout" remote get-url origin)}"
ref="${REF:-$(git -C "$checkout" rev-parse HEAD)}"
python="${PYTHON:-python3.11}"

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --project="$project" --worker=all \
    --command="$1"
}

q() { printf '%q' "$1"; }
# Keep in step with dlmscale/launchers.py install_payload and run_payload.
if [[ -z "${SKIP_INSTALL:-}" ]]; then
  on_all_workers "($(q "$python") -c 'import ensurepip' >/dev/null 2>&1 || (sudo apt-get update -qq\
 && sudo apt-get install -y -qq $(q "$python") $(q "$python-venv")))\
 && (test -d ~/dlmscale/.git || git clone -q $(q "$repo") ~/dlmscale)\
 && cd ~/dlmscale && git fetch -q origin $(q "$ref") && git checkout -q --detach FETCH_HEAD\
 && (test -x ~/dlmscale-venv/bin/python3 || $(q "$python") -m venv ~/dlmscale-venv)\
 && ~/dlmscale-venv/bin/python3 -m pip install -q -e '.[tpu]'"
fi
on_all_workers "cd ~/dlmscale && . ~/dlmscale-venv/bin/activate && python3 -m dlmscale.main$(printf ' %q' "$@") --multihost"
