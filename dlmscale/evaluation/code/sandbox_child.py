"""Child side of the sandbox: isolates itself, sets limits, runs one program, writes its verdict.

Started by sandbox.py as `python -I sandbox_child.py PROGRAM RESULT TIMEOUT_S MEMORY_MB FILE_MB
NETWORK`, in a fresh session, with the working directory a fresh temporary one. It imports only
the standard library (never dlmscale or JAX), so it starts in tens of milliseconds.

The verdict (status, detail, network) is one JSON object written to RESULT after the program
returns; a program that ends the interpreter itself (os._exit, a signal) writes none, and the
parent then judges from the exit status. The guards below stop accidents of generated code (a
stray subprocess, rmtree, a socket); they are not a security boundary against hostile code.
"""
import builtins
import json
import os
import resource
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
# Modules a program could reach the network through when no network namespace can be made.
_NETWORK_MODULES = ("socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes")


def isolate_network(mode: str) -> str:
  """Leaves the host's network: a new empty network namespace, else no socket module."""
  if mode == "auto":
    try:
      import ctypes
      libc = ctypes.CDLL(None, use_errno=True)
      # Root (or CAP_SYS_ADMIN) can unshare the network alone; an unprivileged user needs a user
      # namespace around it.
      for flags, name in ((CLONE_NEWNET, "namespace"),
                          (CLONE_NEWUSER | CLONE_NEWNET, "user_namespace")):
        if libc.unshare(flags) == 0:
          return name
    except (OSError, AttributeError):
      pass
  for name in _NETWORK_MODULES:
    sys.modules[name] = None  # a later `import socket` raises ImportError
  return "socket_disabled"


def set_limits(timeout_s: float, memory_mb: int, file_mb: int) -> None:
  cpu_s = int(timeout_s) + 1
  resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL
  memory = memory_mb * 2**20
  resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
  files = file_mb * 2**20
  resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))  # bounds captured output too
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _refused(name: str):
  def refused(*args, **kwargs):
    raise PermissionError(f"{name} is disabled in the code sandbox")
  return refused


def disable_dangerous_calls() -> None:
  """Process creation, signals, limit changes and destructive file operations raise."""
  import _posixsubprocess
  import shutil
  blocked = {
      os: ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl",
           "execle", "execlp", "execlpe", "execvp", "execvpe", "posix_spawn", "posix_spawnp",
           "spawnv", "spawnve", "spawnl", "spawnle", "remove", "unlink", "rmdir", "removedirs",
           "rename", "renames", "replace", "truncate", "chmod", "chown", "lchown", "fchmod",
           "fchown", "chroot", "setuid", "setgid", "putenv", "unsetenv"),
      _posixsubprocess: ("fork_exec",),  # what subprocess.Popen and multiprocessing use
      shutil: ("rmtree", "move", "chown"),
      resource: ("setrlimit", "prlimit"),
  }
  for module, names in blocked.items():
    for name in names:
      if hasattr(module, name):
        setattr(module, name, _refused(f"{module.__name__}.{name}"))


def run(source: str) -> tuple[str, str]:
  """Executes the program as __main__; returns (status, detail)."""
  try:
    exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
  except MemoryError:
    return "memory", "MemoryError"
  except BaseException as e:  # SystemExit too: a program that exits early did not pass
    try:
      import traceback
      traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from program.py on
      detail = f"{type(e).__name__}: {e}"
    except BaseException:
      detail = type(e).__name__
    return "failed", detail[:300]
  return "passed", ""


def main() -> None:
  program_path, result_path, timeout_s, memory_mb, file_mb, network_mode = sys.argv[1:]
  with open(program_path, encoding="utf-8") as fh:
    source = fh.read()
  result = open(result_path, "w", encoding="utf-8")  # opened before the limits and guards
  write, flush, exit_now = result.write, result.flush, os._exit
  network = isolate_network(network_mode)
  set_limits(float(timeout_s), int(memory_mb), int(file_mb))
  disable_dangerous_calls()
  sys.argv = ["program.py"]
  status, detail = run(source)
  try:
    sys.stdout.flush()
    sys.stderr.flush()
  except BaseException:
    pass
  write(json.dumps({"status": status, "detail": detail, "network": network}))
  flush()
  exit_now(0)  # skips atexit handlers and non-daemon threads the program left behind


if __name__ == "__main__":
  main()
