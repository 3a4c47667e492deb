"""Cloud launch commands for the runs of a sweep: Cloud TPU VM slices (gcloud) and GKE (xpk).

Pure command generation: nothing here touches the cloud. Commands are argv lists; only the
payload a remote shell runs (`gcloud ... ssh --command=...`, `xpk ... --command`) is a string,
quoted with shlex. The sweep prints these and runs them only when asked (`yes`).

TPU VM: create the slice (or queue it and wait until it is ACTIVE), install the package at a
git ref on every worker (checkout ~/dlmscale, virtualenv ~/dlmscale-venv), run
`python3 -m dlmscale.main --config=... --workdir=... --multihost` on every worker for each
run in turn, optionally delete the slice. launch/tpu_vm.sh runs the same install and run
payloads on an existing slice.
xpk: one workload per run, from an image built with launch/Dockerfile.
Workdirs (and data.prepared_dir) must be absolute paths on storage every host sees, e.g. a
gcsfuse mount of a bucket (not gs:// URLs: runs write their workdir with local file calls).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
from typing import Sequence

from dlmscale.errors import DlmscaleError

REMOTE_CHECKOUT = "~/dlmscale"
REMOTE_VENV = "~/dlmscale-venv"
DOCKERFILE = "launch/Dockerfile"
# Cloud TPU software versions per generation ("TPU runtime versions" in the Cloud TPU docs).
RUNTIME_VERSIONS = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base",
                    "v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5",
                    "v5litepod": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
_ACCELERATOR = re.compile(r"(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)")
# Kubernetes/GCE resource names; xpk allows workload names of at most 40 characters.
_RESOURCE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_WORKLOAD_NAME = 40
MAX_TPU_NAME = 63
_HASH_CHARS = 6


class LauncherError(DlmscaleError):
  """A launch option is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
  """Commands in order: setup (create, install, build), one per run, then teardown."""
  setup: list[list[str]]
  runs: dict[str, list[str]]
  teardown: list[list[str]]

  def commands(self) -> list[list[str]]:
    return [*self.setup, *self.runs.values(), *self.teardown]


def _require(launcher: str, **values) -> None:
  for key, value in values.items():
    if value is None or (isinstance(value, str) and not value.strip()):
      raise LauncherError(f"the {launcher} launcher needs {key}= (launch option {key}=VALUE)")
    if isinstance(value, str) and re.search(r"\s", value):
      raise LauncherError(f"{launcher} launch option {key}={value!r} contains whitespace")


def check_accelerator(name: str) -> str:
  """A Cloud TPU accelerator type (v5p-128, v5litepod-16, v6e-256, v4-8, ...)."""
  match = _ACCELERATOR.fullmatch(name or "")
  if not match:
    raise LauncherError(f"unknown TPU accelerator type {name!r}: use <generation>-<cores or "
                        f"chips>, generation one of {', '.join(RUNTIME_VERSIONS)}, e.g. v5p-128 "
                        "or v5litepod-16")
  return name


def _checkout_root(path: str) -> str | None:
  """The checkout holding `configs/` above path (what remote hosts have a copy of)."""
  here = os.path.dirname(os.path.abspath(path))
  while True:
    if os.path.isfile(os.path.join(here, "configs", "__init__.py")):
      return here
    parent = os.path.dirname(here)
    if parent == here:
      return None
    here = parent


def checkout_root(path: str) -> str:
  root = _checkout_root(path)
  if root is None:
    raise LauncherError(f"{path} is not inside a dlmscale checkout (no configs/ above it): "
                        "remote hosts run studies from their copy of the repository")
  return root


def remote_config_spec(run) -> str:
  """run.config_spec with the study's path relative to the checkout root (remote hosts run from
  their own checkout or the image's /app)."""
  path, sep, arg = run.config_spec.partition(":")
  rel = os.path.relpath(os.path.abspath(path), checkout_root(path))
  return f"{rel}{sep}{arg}"


def main_args(run, extra_args: Sequence[str] = ()) -> list[str]:
  """dlmscale.main's arguments for a run on a multi-host slice."""
  workdir = str(run.workdir)
  if "://" not in workdir and not os.path.isabs(workdir):  # gs://: every host writes the bucket
    raise LauncherError(f"workdir {workdir!r} is relative: remote runs need a bucket or an "
                        "absolute path every host sees, e.g. gs://my-bucket/runs/<study>")
  return [f"--config={remote_config_spec(run)}", f"--workdir={workdir}", *extra_args,
          "--multihost"]


def install_payload(repo_url: str, ref: str, python: str = "python3.11") -> str:
  """Remote shell: the repository at `ref` in ~/dlmscale, installed with the tpu extra into
  ~/dlmscale-venv (made with `python`, apt-installed with its venv module if missing: stock TPU
  images ship an older Python than the package needs)."""
  q = shlex.quote
  return (f"({q(python)} -c {q('import ensurepip')} >/dev/null 2>&1 || (sudo apt-get update -qq"
          f" && sudo apt-get install -y -qq {q(python)} {q(python + '-venv')}))"
          f" && (test -d {REMOTE_CHECKOUT}/.git || git clone -q {q(repo_url)} {REMOTE_CHECKOUT})"
          f" && cd {REMOTE_CHECKOUT} && git fetch -q origin {q(ref)}"
          " && git checkout -q --detach FETCH_HEAD"
          f" && (test -x {REMOTE_VENV}/bin/python3 || {q(python)} -m venv {REMOTE_VENV})"
          f" && {REMOTE_VENV}/bin/python3 -m pip install -q -e {q('.[tpu]')}")


def run_payload(args: Sequence[str]) -> str:
  """Remote shell: dlmscale.main with `args` from the checkout, in the venv."""
  return (f"cd {REMOTE_CHECKOUT} && . {REMOTE_VENV}/bin/activate && "
          f"python3 -m dlmscale.main {shlex.join(args)}")


def _tpu(verb: str, *rest: str) -> list[str]:
  return ["gcloud", "compute", "tpus", verb, *rest]


def tpu_vm_plan(runs, *, tpu_name: str | None = None, project: str | None = None,
                zone: str | None = None, accelerator_type: str | None = None,
                runtime_version: str | None = None, repo_url: str | None = None,
                ref: str | None = None, queued: bool = False, spot: bool = False,
                create: bool = True, delete: bool = False, python: str = "python3.11",
                extra_args: Sequence[str] = ()) -> LaunchPlan:
  """One slice for the runs, one after another: create (or queue, then wait), install, run
  each on every worker, delete when `delete`."""
  _require("tpu_vm", tpu_name=tpu_name, project=project, zone=zone,
           accelerator_type=accelerator_type, repo_url=repo_url, ref=ref, python=python)
  if not _RESOURCE_NAME.fullmatch(tpu_name) or len(tpu_name) > MAX_TPU_NAME:
    raise LauncherError(f"tpu_name {tpu_name!r} is not a valid TPU name: lowercase letters, "
                        f"digits and '-', starting with a letter, at most {MAX_TPU_NAME} chars")
  generation = check_accelerator(accelerator_type).split("-")[0]
  version = runtime_version or RUNTIME_VERSIONS[generation]
  where = [f"--zone={zone}", f"--project={project}"]
  setup = []
  if create and queued:
    setup.append(_tpu("queued-resources", "create", tpu_name, f"--node-id={tpu_name}", *where,
                      f"--accelerator-type={accelerator_type}", f"--runtime-version={version}",
                      *(["--spot"] if spot else [])))
    setup.append(["bash", "-c", _wait_active_script(tpu_name, where)])
  elif create:
    setup.append(_tpu("tpu-vm", "create", tpu_name, *where,
                      f"--accelerator-type={accelerator_type}", f"--version={version}",
                      *(["--spot"] if spot else [])))
  ssh = lambda payload: _tpu("tpu-vm", "ssh", tpu_name, *where, "--worker=all",
                             f"--command={payload}")
  setup.append(ssh(install_payload(repo_url, ref, python)))
  per_run = {run.name: ssh(run_payload(main_args(run, extra_args))) for run in runs}
  teardown = []
  if delete:
    teardown.append(_tpu("queued-resources", "delete", tpu_name, *where, "--force", "--quiet")
                    if queued else _tpu("tpu-vm", "delete", tpu_name, *where, "--quiet"))
  return LaunchPlan(setup, per_run, teardown)


def _wait_active_script(name: str, where: list[str]) -> str:
  """A queued resource is granted whenever capacity frees up; ssh needs it ACTIVE."""
  describe = shlex.join(_tpu("queued-resources", "describe", name, *where,
                             "--format=value(state.state)"))
  return (f"while true; do s=$({describe}); case \"$s\" in ACTIVE) exit 0;; "
          f"FAILED|SUSPENDED) echo \"queued resource {name} is $s\" >&2; exit 1;; esac; "
          "sleep 60; done")


def tpu_vm_commands(run, **options) -> list[list[str]]:
  """Create the slice, install, run `run` on every worker (and delete when asked)."""
  return tpu_vm_plan([run], **options).commands()


def k8s_name(base: str, salt: str = "") -> str:
  """A valid xpk/Kubernetes workload name from `base`: lowercase [-a-z0-9], starting with a
  letter, at most 40 characters. A name needing changes gets a short hash of (base, salt), so
  two runs never share a workload."""
  slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
  if not slug[:1].isalpha():
    slug = ("w-" + slug).rstrip("-")
  if slug == base and len(slug) <= MAX_WORKLOAD_NAME and not salt:
    return slug
  digest = hashlib.sha256(f"{base}\0{salt}".encode()).hexdigest()[:_HASH_CHARS]
  head = slug[:MAX_WORKLOAD_NAME - _HASH_CHARS - 1].rstrip("-")
  return f"{head}-{digest}"


def check_image(image: str) -> str:
  _require("xpk", image=image)
  return image


def docker_build_commands(image: str) -> list[list[str]]:
  """Build launch/Dockerfile from the checkout root (the working directory) and push it."""
  check_image(image)
  return [["docker", "build", "-f", DOCKERFILE, "-t", image, "."], ["docker", "push", image]]


def xpk_commands(run, *, cluster: str | None = None, project: str | None = None,
                 zone: str | None = None, tpu_type: str | None = None,
                 image: str | None = None, num_slices: int = 1,
                 workload_name: str | None = None, xpk_args: Sequence[str] = (),
                 extra_args: Sequence[str] = ()) -> list[list[str]]:
  """`xpk workload create` for one run: every host of `num_slices` slices runs dlmscale.main.

  The workload is named from the run (its name plus a hash of its config and workdir, so two
  studies' runs of the same name differ), or `workload_name` shortened to fit.
  """
  _require("xpk", cluster=cluster, project=project, zone=zone, tpu_type=tpu_type)
  check_accelerator(tpu_type)
  check_image(image)
  if not isinstance(num_slices, int) or num_slices < 1:
    raise LauncherError(f"num_slices must be an integer >= 1, got {num_slices!r}")
  name = (k8s_name(workload_name) if workload_name
          else k8s_name(run.name, f"{run.config_spec}\0{run.workdir}"))
  payload = shlex.join(["python3", "-m", "dlmscale.main", *main_args(run, extra_args)])
  return [["xpk", "workload", "create", "--cluster", cluster, "--workload", name,
           "--tpu-type", tpu_type, "--num-slices", str(num_slices), "--docker-image", image,
           "--project", project, "--zone", zone, *xpk_args, "--command", payload]]


def xpk_plan(runs, *, build_image: bool = True, workload_name: str | None = None,
             **options) -> LaunchPlan:
  """Build and push the image (when `build_image`), then one workload per run."""
  runs = list(runs)
  if workload_name and len(runs) > 1:
    raise LauncherError(f"workload_name names one workload, but the sweep has {len(runs)} runs:"
                        " drop it (each run's workload is named after the run)")
  per_run = {}
  for run in runs:
    (per_run[run.name],) = xpk_commands(run, workload_name=workload_name, **options)
  setup = docker_build_commands(options.get("image")) if build_image else []
  return LaunchPlan(setup, per_run, [])


PLANNERS = {"tpu_vm": tpu_vm_plan, "xpk": xpk_plan}
OPTIONS = {
    "tpu_vm": ("tpu_name", "project", "zone", "accelerator_type", "runtime_version", "repo_url",
               "ref", "queued", "spot", "create", "delete", "python"),
    "xpk": ("cluster", "project", "zone", "tpu_type", "image", "num_slices", "workload_name",
            "build_image", "xpk_args"),
}
# check_data is the sweep's (whether to check corpora here before launching).
_BOOLEAN = ("queued", "spot", "create", "delete", "build_image", "check_data")
_INTEGER = ("num_slices",)
_LISTS = ("xpk_args",)


def plan(launcher: str, runs, options: dict, extra_args: Sequence[str] = ()) -> LaunchPlan:
  """The launcher's plan for `runs`; unknown option names are one-line errors."""
  if launcher not in PLANNERS:
    raise LauncherError(f"unknown launcher {launcher!r}: use one of local, {', '.join(PLANNERS)}")
  unknown = sorted(set(options) - set(OPTIONS[launcher]))
  if unknown:
    raise LauncherError(f"unknown {launcher} launch option(s) {', '.join(unknown)}: use "
                        f"{', '.join(OPTIONS[launcher])}")
  return PLANNERS[launcher](runs, extra_args=tuple(extra_args), **options)


def parse_options(items: Sequence[str]) -> dict:
  """`key=value` strings (the CLI's --launch flags) as options: booleans, integers, lists
  (comma-separated) for the keys that take them."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise LauncherError(f"launch option {item!r} is not key=value, e.g. project=my-project")
    if key in _BOOLEAN:
      if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise LauncherError(f"launch option {key} takes true or false, got {value!r}")
      out[key] = value.lower() in ("true", "1", "yes")
    elif key in _INTEGER:
      try:
        out[key] = int(value)
      except ValueError:
        raise LauncherError(f"launch option {key} takes an integer, got {value!r}") from None
    elif key in _LISTS:
      out[key] = tuple(v for v in value.split(",") if v)
    else:
      out[key] = value
  return out
