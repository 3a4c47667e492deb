"""Cloud launch commands (dlmscale/launchers.py), checked exactly; launch/tpu_vm.sh against a fake
gcloud; launch/Dockerfile's shape. Nothing here reaches a cloud."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dlmscale import launchers
from dlmscale.launchers import LauncherError
from dlmscale.sweep import Run

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "configs" / "tiny_study.py"
ARG = "unique=4k,objective=mdm,scale=cpu"
RUN = Run("unique-4k_objective-mdm", ARG, f"{STUDY}:{ARG}",
          "/mnt/shared/runs/tiny/unique-4k_objective-mdm")
SPEC = f"--config=tests/configs/tiny_study.py:{ARG}"
WORKDIR = "--workdir=/mnt/shared/runs/tiny/unique-4k_objective-mdm"
TPU = dict(tpu_name="sweep-v5p", project="my-proj", zone="us-east5-a",
           accelerator_type="v5p-128", repo_url="https://github.com/me/dlmscale.git", ref="v0.1")
WHERE = ["--zone=us-east5-a", "--project=my-proj"]
INSTALL = ("(python3.11 -c 'import ensurepip' >/dev/null 2>&1 || (sudo apt-get update -qq && "
           "sudo apt-get install -y -qq python3.11 python3.11-venv)) && (test -d ~/dlmscale/.git "
           "|| git clone -q https://github.com/me/dlmscale.git ~/dlmscale) && cd ~/dlmscale && "
           "git fetch -q origin v0.1 && git checkout -q --detach FETCH_HEAD && (test -x "
           "~/dlmscale-venv/bin/python3 || python3.11 -m venv ~/dlmscale-venv) && "
           "~/dlmscale-venv/bin/python3 -m pip install -q -e '.[tpu]'")
RUN_PAYLOAD = (f"cd ~/dlmscale && . ~/dlmscale-venv/bin/activate && python3 -m dlmscale.main "
               f"{SPEC} {WORKDIR} --multihost")
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sweep-v5p", *WHERE, "--worker=all"]
XPK = dict(cluster="tpu-cluster", project="my-proj", zone="us-east5-a", tpu_type="v5p-128",
           image="us-docker.pkg.dev/my-proj/dlmscale/train:v1")


def test_tpu_vm_commands_plain():
  assert launchers.tpu_vm_commands(RUN, **TPU) == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "sweep-v5p", *WHERE,
       "--accelerator-type=v5p-128", "--version=v2-alpha-tpuv5"],
      [*SSH, f"--command={INSTALL}"],
      [*SSH, f"--command={RUN_PAYLOAD}"],
  ]


def test_tpu_vm_commands_queued_spot_deleted():
  commands = launchers.tpu_vm_commands(RUN, **TPU, queued=True, spot=True, delete=True,
                                       runtime_version="v2-alpha-tpuv5-custom")
  describe = ("gcloud compute tpus queued-resources describe sweep-v5p --zone=us-east5-a "
              "--project=my-proj '--format=value(state.state)'")
  assert commands == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "sweep-v5p",
       "--node-id=sweep-v5p", *WHERE, "--accelerator-type=v5p-128",
       "--runtime-version=v2-alpha-tpuv5-custom", "--spot"],
      ["bash", "-c", f"while true; do s=$({describe}); case \"$s\" in ACTIVE) exit 0;; "
                     "FAILED|SUSPENDED) echo \"queued resource sweep-v5p is $s\" >&2; exit 1;; "
                     "esac; sleep 60; done"],
      [*SSH, f"--command={INSTALL}"],
      [*SSH, f"--command={RUN_PAYLOAD}"],
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "sweep-v5p", *WHERE, "--force",
       "--quiet"],
  ]


def test_tpu_vm_plan_one_slice_for_a_sweep():
  other = Run("unique-8k_objective-ar", "unique=8k,objective=ar,scale=cpu",
              f"{STUDY}:unique=8k,objective=ar,scale=cpu", "/mnt/shared/runs/tiny/u8")
  plan = launchers.tpu_vm_plan([RUN, other], **TPU, create=False, delete=True)
  assert plan.setup == [[*SSH, f"--command={INSTALL}"]]
  assert list(plan.runs) == [RUN.name, other.name]
  assert plan.runs[other.name][-1] == (
      "--command=cd ~/dlmscale && . ~/dlmscale-venv/bin/activate && python3 -m dlmscale.main "
      "--config=tests/configs/tiny_study.py:unique=8k,objective=ar,scale=cpu "
      "--workdir=/mnt/shared/runs/tiny/u8 --multihost")
  assert plan.teardown == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "sweep-v5p", *WHERE,
                            "--quiet"]]


def test_xpk_and_docker_commands():
  name = launchers.k8s_name(RUN.name, f"{RUN.config_spec}\0{RUN.workdir}")
  assert re.fullmatch(r"unique-4k-objective-mdm-[0-9a-f]{6}", name)
  payload = f"python3 -m dlmscale.main {SPEC} {WORKDIR} --multihost"
  expected = ["xpk", "workload", "create", "--cluster", "tpu-cluster", "--workload", name,
              "--tpu-type", "v5p-128", "--num-slices", "2", "--docker-image", XPK["image"],
              "--project", "my-proj", "--zone", "us-east5-a", "--command", payload]
  assert launchers.xpk_commands(RUN, **XPK, num_slices=2) == [expected]
  # Same run, same name; another workdir (another study's run of that name), another name.
  assert launchers.xpk_commands(RUN, **XPK, num_slices=2) == [expected]
  moved = Run(RUN.name, RUN.arg, RUN.config_spec, "/mnt/shared/runs/other/x")
  assert launchers.xpk_commands(moved, **XPK)[0][6] != name
  assert launchers.xpk_commands(RUN, **XPK, workload_name="dlm-a")[0][6] == "dlm-a"
  assert launchers.docker_build_commands(XPK["image"]) == [
      ["docker", "build", "-f", "launch/Dockerfile", "-t", XPK["image"], "."],
      ["docker", "push", XPK["image"]]]
  plan = launchers.plan("xpk", [RUN], dict(XPK, xpk_args=("--priority", "high")))
  assert plan.setup == launchers.docker_build_commands(XPK["image"])
  assert plan.runs[RUN.name][-4:] == ["--priority", "high", "--command",
                                      f"python3 -m dlmscale.main {SPEC} {WORKDIR} --multihost"]


def test_workload_names_shortened_deterministically():
  long = "unique-96B_objective-mdm_model-8B1A_dropout-0.3_noise-0.1"
  short = launchers.k8s_name(long)
  assert short == launchers.k8s_name(long) and len(short) <= launchers.MAX_WORKLOAD_NAME
  assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", short)
  assert short.startswith("unique-96b-objective-mdm-model")
  assert launchers.k8s_name(long + "x") != short
  assert launchers.k8s_name("0.5B").startswith("w-0-5b-")  # must start with a letter
  cmd = launchers.xpk_commands(RUN, **XPK, workload_name=long)[0]
  assert cmd[cmd.index("--workload") + 1] == short


@pytest.mark.parametrize("change, message", [
    (dict(accelerator_type="v5p128"), "unknown TPU accelerator type 'v5p128'"),
    (dict(accelerator_type="v9-8"), "unknown TPU accelerator type 'v9-8'"),
    (dict(project=None), "needs project="),
    (dict(project=""), "needs project="),
    (dict(zone="us east"), "contains whitespace"),
    (dict(tpu_name="Sweep_1"), "not a valid TPU name"),
])
def test_tpu_vm_bad_inputs(change, message):
  with pytest.raises(LauncherError, match=re.escape(message)) as e:
    launchers.tpu_vm_commands(RUN, **dict(TPU, **change))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, message", [
    (dict(tpu_type="tpu-v5p-128"), "unknown TPU accelerator type"),
    (dict(project=None), "needs project="),
    (dict(image=""), "needs image="),
    (dict(num_slices=0), "num_slices must be an integer >= 1"),
])
def test_xpk_bad_inputs(change, message):
  with pytest.raises(LauncherError, match=re.escape(message)):
    launchers.xpk_commands(RUN, **dict(XPK, **change))


def test_runs_must_be_remote_ready(tmp_path):
  relative = Run(RUN.name, RUN.arg, RUN.config_spec, "runs/tiny/x")
  with pytest.raises(LauncherError, match="is relative"):
    launchers.tpu_vm_commands(relative, **TPU)
  on_a_bucket = Run(RUN.name, RUN.arg, RUN.config_spec, "gs://b/runs/x")  # every host writes it
  assert "--workdir=gs://b/runs/x" in launchers.main_args(on_a_bucket)
  outside = tmp_path / "study.py"
  outside.write_text("")
  with pytest.raises(LauncherError, match="not inside a dlmscale checkout"):
    launchers.xpk_commands(Run("a", "", str(outside), "/mnt/x/a"), **XPK)
  with pytest.raises(LauncherError, match="names one workload"):
    launchers.xpk_plan([RUN, RUN], workload_name="w", **XPK)
  with pytest.raises(LauncherError, match="unknown tpu_vm launch option.*cluster"):
    launchers.plan("tpu_vm", [RUN], dict(TPU, cluster="c"))


def test_parse_options():
  assert launchers.parse_options(["project=p", "spot=true", "num_slices=4",
                                  "xpk_args=--priority,high", "ref=a=b", "check_data=false"]) == {
      "project": "p", "spot": True, "num_slices": 4, "xpk_args": ("--priority", "high"),
      "ref": "a=b", "check_data": False}
  for bad in ("project", "spot=maybe", "num_slices=two"):
    with pytest.raises(LauncherError):
      launchers.parse_options([bad])


def test_accelerator_names_cover_the_compile_topologies():
  from dlmscale.compile import TOPOLOGIES  # v5e-N is compile's alias of gcloud's v5litepod-N
  for name in TOPOLOGIES:
    if not name.startswith("v5e-"):
      assert launchers.check_accelerator(name) == name


def test_tpu_vm_sh_runs_the_generated_payloads(tmp_path):
  """launch/tpu_vm.sh calls gcloud with the install and run commands launchers.py makes."""
  calls = tmp_path / "calls.jsonl"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                  f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  fake.chmod(0o755)
  args = ["--config=experiments/quickstart.py", "--workdir=/mnt/shared/runs/qs",
          "--config.sample.prompts=('a b',)"]
  env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", PROJECT="my-proj",
             REPO_URL=TPU["repo_url"], REF=TPU["ref"])
  proc = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh"), "sweep-v5p", "us-east5-a",
                         "--", *args], env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  got = [json.loads(line) for line in calls.read_text().splitlines()]
  expected = [SSH[1:] + [f"--command={launchers.install_payload(TPU['repo_url'], TPU['ref'])}"],
              SSH[1:] + [f"--command={launchers.run_payload([*args, '--multihost'])}"]]
  assert len(got) == 2
  for g, e in zip(got, expected):
    assert g[:-1] == e[:-1]
    # Bash quotes with backslashes, shlex with single quotes: the remote shell reads the same.
    assert shlex.split(g[-1].removeprefix("--command=")) == shlex.split(
        e[-1].removeprefix("--command="))
  usage = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh"), "x"], env=env,
                         capture_output=True, text=True, timeout=60)
  assert usage.returncode == 2 and "usage:" in usage.stderr


def test_dockerfile():
  lines = [line.strip() for line in (REPO / "launch" / "Dockerfile").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
  assert lines[0] == "FROM python:3.11-slim"
  assert any(line.startswith("RUN") and "pip install" in line and "'.[tpu]'" in line
             for line in lines)
  assert "COPY . ." in lines
  assert lines[-1] == 'ENTRYPOINT ["python3", "-m", "dlmscale.main"]'
