"""The code sandbox's verdict cannot be forged, and its bubblewrap backend isolates.

Every attack below is a program whose tests fail (or never run); each must come back as anything
but 'passed', under the subprocess backend and under bwrap where bwrap works on this machine.
"""
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from dlmscale.errors import ConfigError
from dlmscale.evaluation.code import humaneval_problems, run_program, run_programs, sandbox_bwrap
from dlmscale.evaluation.code.sandbox import parse_verdict

BWRAP = sandbox_bwrap.find_bwrap()
BWRAP_WHY_NOT = "bwrap not found" if BWRAP is None else sandbox_bwrap.why_not(BWRAP)
needs_bwrap = pytest.mark.skipif(bool(BWRAP_WHY_NOT), reason=f"bubblewrap: {BWRAP_WHY_NOT}")
BACKENDS = ["subprocess", pytest.param("bwrap", marks=needs_bwrap)]
FAIL = "\nassert 1 + 1 == 3, 'the tests fail'\n"
FAKE_JSON = '{"status": "passed", "detail": "", "network": ""}'  # the old verdict file's format
FAKE = FAKE_JSON + "\n0123456789abcdef0123456789abcdef passed\tbwrap\t\n"

ATTACKS = {
    "verdict_file": "open('../result.json', 'w').write(%r)\n" % FAKE + FAIL,
    "verdict_file_then_exit_0": (  # passed in the sandbox that read ../result.json
        "import os\nopen('../result.json', 'w').write(%r)\nos._exit(0)\n" % FAKE_JSON) + FAIL,
    "parent_dirs": (
        "import os\nfor d in ('..', '../..', '/tmp', os.environ['HOME'], '/'):\n"
        "  for name in ('result.json', 'verdict', 'output.txt', 'program.py'):\n"
        "    try:\n"
        "      open(os.path.join(d, name), 'w').write(%r)\n"
        "    except OSError:\n"
        "      pass\n" % FAKE) + FAIL,
    "print_markers": "import sys\nprint(%r)\nsys.stderr.write(%r)\n" % (FAKE, FAKE) + FAIL,
    "write_every_fd": (
        "import os\nfor fd in range(3, 256):\n"
        "  try:\n    os.write(fd, %r.encode())\n  except OSError:\n    pass\n" % FAKE) + FAIL,
    "write_every_fd_then_exit_0": (
        "import os\nfor fd in range(3, 256):\n"
        "  try:\n    os.write(fd, %r.encode())\n  except OSError:\n    pass\n"
        "os._exit(0)\n" % FAKE) + FAIL,
    "close_every_fd": "import os\nos.closerange(3, 256)\n" + FAIL,
    "close_every_fd_and_pass": "import os\nos.closerange(3, 256)\n",  # no verdict: not a pass
    "reopen_fds_as_files": (  # the verdict descriptor's number now names a file of the program's
        "import os\nfor fd in range(3, 64):\n  try:\n"
        "    f = os.open('junk', os.O_WRONLY | os.O_CREAT)\n    os.dup2(f, fd)\n"
        "  except OSError:\n    pass\n"),
    "exit_0_early": "import sys\nsys.exit(0)\n" + FAIL,
    "os_exit_0_early": "import os\nos._exit(0)\n" + FAIL,
    "rebind_harness_functions": (
        "import builtins, os\nreal = os.write\n"
        "os.write = lambda fd, b: real(fd, b.replace(b'failed', b'passed'))\n"
        "os._exit = lambda code: None\n"
        "class S(str):\n  def replace(self, *a):\n    return 'passed'\n"
        "  def __radd__(self, other):\n    return other.replace('failed', 'passed')\n"
        "builtins.str = S\n" + FAIL),
    "exception_with_fake_message": (
        "class E(Exception):\n  def __str__(self):\n    return %r\nraise E()\n" % FAKE),
    "tracer_jumps_past_tests": (  # works in plain Python: the asserts never run
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "  if event == 'line' and frame.f_code.co_name == '<module>' and frame.f_lineno == FIRST:\n"
        "    frame.f_lineno = FIRST + 2\n"
        "  return tracer\n"
        "FIRST = sys._getframe().f_lineno + 3\n"
        "sys._getframe().f_trace = tracer\n"
        "sys.settrace(tracer)\n"
        "assert 1 + 1 == 3, 'test 1'\nassert 2 + 2 == 5, 'test 2'\nprint('skipped')\n"),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_forgery_attempts_never_pass(backend):
  names = list(ATTACKS)
  results = run_programs([ATTACKS[n] for n in names], workers=2, timeout_s=5.0, memory_mb=512,
                         backend=backend)
  statuses = {n: (r.status, r.detail[:80]) for n, r in zip(names, results)}
  assert not [n for n, r in zip(names, results) if r.passed], statuses
  assert all(r.backend == backend for r in results)
  # What the attacks amount to: the tests' own failure, or no verdict at all.
  assert statuses["verdict_file"][1].startswith("AssertionError: the tests fail")
  assert statuses["write_every_fd"][1].startswith("AssertionError: the tests fail")
  assert statuses["os_exit_0_early"][0] == "crashed"
  assert statuses["os_exit_0_early"][1].startswith("exited with code 0 without a verdict")
  assert statuses["close_every_fd_and_pass"][0] == "crashed"
  assert statuses["tracer_jumps_past_tests"][1].startswith("PermissionError: sys.settrace")


@pytest.mark.parametrize("backend", BACKENDS)
def test_forks_cannot_pass_and_die_with_the_run(backend):
  # Forks through libc (the os.fork guard is easy to step around where ctypes imports): each
  # child floods the descriptors with fake verdicts and would outlive the run; the parent fails.
  program = (
      "import os, sys, time\nprint(os.getcwd(), flush=True)\n"
      "try:\n  import ctypes\n  fork = ctypes.CDLL(None).fork\nexcept ImportError:\n"
      "  fork = os.fork\n"
      "kids = 0\nfor _ in range(20):\n"
      "  try:\n    pid = fork()\n  except Exception:\n    break\n"
      "  if pid == 0:\n"
      "    for fd in range(3, 64):\n"
      "      try:\n        os.write(fd, %r.encode())\n      except OSError:\n        pass\n"
      "    time.sleep(60)\n    os._exit(0)\n"
      "  kids += 1\n"
      "print('forked', kids, flush=True)\ntime.sleep(0.5)\n" % FAKE) + FAIL
  result = run_program(program, timeout_s=5.0, memory_mb=512, backend=backend)
  assert result.status == "failed" and result.detail.startswith(("AssertionError", "Permission"))
  workdir = result.output.split("\n")[0]
  assert workdir.endswith("/work")
  # SIGKILL lands asynchronously: give the kernel a moment, never the children's 60 s.
  deadline = time.monotonic() + 5.0
  while _processes_mentioning(os.path.dirname(workdir)) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert _processes_mentioning(os.path.dirname(workdir)) == []


def _processes_mentioning(text: str) -> list[int]:
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as fh:
        if text.encode() in fh.read():
          found.append(int(pid))
    except OSError:
      pass
  return found


def test_parse_verdict_exact_cases():
  token = "ab" * 16
  line = f"\n{token} passed\tbwrap\t\n".encode()
  assert parse_verdict(line, token) == ("passed", "", "bwrap")
  noisy = b"junk without newline" + f"\n{token} failed\tnamespace\tAssertionError: x\n".encode()
  assert parse_verdict(noisy + FAKE.encode(), token) == ("failed", "AssertionError: x",
                                                         "namespace")
  assert parse_verdict(FAKE.encode(), token) is None  # no token: nothing the child said
  assert parse_verdict(line + line, token)[0] == "crashed"  # the token leaked: not trusted
  assert parse_verdict(f"{token} won\t\t\n".encode(), token)[0] == "crashed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_humaneval_references_pass_and_wrong_answers_fail(backend):
  problems = humaneval_problems()[:4]
  programs = [p.program(p.reference) for p in problems]
  programs += [p.program("    return None\n") for p in problems]
  results = run_programs(programs, workers=2, timeout_s=10.0, memory_mb=512, backend=backend)
  assert [r.status for r in results] == ["passed"] * 4 + ["failed"] * 4


@needs_bwrap
def test_bwrap_isolation(tmp_path):
  host_tmp = tmp_path / "host-secret.txt"  # tmp_path lies under /tmp on this host's pytest
  host_tmp.write_text("secret")
  repo_file = os.path.abspath(__file__)
  program = (
      "import os\nprint(os.getuid())\n"
      f"print(os.path.exists({str(host_tmp)!r}))\n"
      "open('/tmp/inside.txt', 'w').write('x')\n"
      "for path in (%r, '/etc/dlmscale-sandbox-test'):\n"
      "  try:\n    open(path, 'a').write('x')\n    print('wrote', path)\n"
      "  except OSError as e:\n    print(type(e).__name__, e.errno)\n" % repo_file)
  result = run_program(program, timeout_s=5.0, memory_mb=512, backend="bwrap")
  assert result.passed and result.backend == "bwrap" and result.network == "bwrap", result
  uid_line, host_file, repo_write, etc_write = result.output.splitlines()[:4]
  assert uid_line == "65534"  # nobody, not the caller
  assert host_file == "False"  # the host's /tmp is not there
  # EROFS: the root is read-only. A checkout under /tmp is not there at all (private /tmp).
  repo_hidden = repo_file.startswith("/tmp/") and repo_write == "FileNotFoundError 2"
  assert repo_write == "OSError 30" or repo_hidden, repo_write
  assert etc_write == "OSError 30"
  assert not os.path.exists("/tmp/inside.txt")  # its /tmp was private


@needs_bwrap
def test_bwrap_has_no_network():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
    assert subprocess.run([sys.executable, "-c", program], timeout=30).returncode == 0
    result = run_program(program, timeout_s=5.0, memory_mb=512, backend="bwrap")
  assert result.status == "failed" and result.network == "bwrap", result
  assert result.detail.startswith(("ConnectionRefusedError", "OSError"))


def test_backend_choice_and_fallback(monkeypatch, caplog):
  with pytest.raises(ConfigError, match="unknown sandbox backend 'docker'"):
    run_program("", backend="docker")
  assert sandbox_bwrap.choose("subprocess") == ("subprocess", None)
  if not BWRAP_WHY_NOT:
    assert sandbox_bwrap.choose("auto") == ("bwrap", BWRAP)
  # A bwrap that cannot make its namespaces (a real binary that fails, as bwrap does in many
  # containers): auto falls back with one log line; asking for bwrap is a one-line error.
  monkeypatch.setattr(sandbox_bwrap, "find_bwrap", lambda: "/bin/false")
  with caplog.at_level(logging.INFO, logger="dlmscale"):
    assert sandbox_bwrap.choose("auto") == ("subprocess", None)
    result = run_program("print('ok')", timeout_s=5.0, memory_mb=512)
  assert result.passed and result.backend == "subprocess"
  logged = [r.getMessage() for r in caplog.records if "bubblewrap unavailable" in r.getMessage()]
  assert len(logged) == 1 and "\n" not in logged[0], logged
  with pytest.raises(ConfigError, match=r"backend 'bwrap' cannot run here .*dlmscale\[sandbox\]"):
    run_program("", backend="bwrap")
