"""Child side of the sandbox: isolates itself, sets limits, runs one program, reports its verdict.

Started by sandbox.py as `python -I sandbox_child.py PROGRAM KEY_FD VERDICT_FD TIMEOUT_S MEMORY_MB
FILE_MB NETWORK` (under bwrap or not), in a fresh session, with the working directory a fresh
temporary one. It imports only the standard library (never dlmscale or JAX), so it starts in tens
of milliseconds.

KEY_FD is a pipe holding a random token: read, then closed before the program starts. Once the
program has returned, the verdict (status, network, detail) goes to the VERDICT_FD pipe as one
line starting with that token, written with functions taken before the program ran (it may
replace os.write or json, not the references kept here). A program that ends the interpreter
itself (os._exit, a signal, closing the pipe) leaves no verdict, and the parent judges from the
exit status. The guards below stop accidents of generated code (a stray subprocess, rmtree, a
socket, a tracer); they are not a security boundary against hostile code.
"""
import builtins
import os
import resource
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
# Modules a program could reach the network through when no network namespace can be made.
_NETWORK_MODULES = ("socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes")


def isolate_network(mode: str) -> str:
  """Leaves the host's network: a new empty network namespace, else no socket module
  ('isolated': bwrap has already left it)."""
  if mode == "isolated":
    return "bwrap"
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
  """Process creation, signals, tracing, limit changes and destructive file operations raise."""
  import _posixsubprocess
  import shutil
  import threading
  blocked = {
      os: ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl",
           "execle", "execlp", "execlpe", "execvp", "execvpe", "posix_spawn", "posix_spawnp",
           "spawnv", "spawnve", "spawnl", "spawnle", "remove", "unlink", "rmdir", "removedirs",
           "rename", "renames", "replace", "truncate", "chmod", "chown", "lchown", "fchmod",
           "fchown", "chroot", "setuid", "setgid", "putenv", "unsetenv", "setsid", "setpgid",
           "setpgrp"),
      # A tracer can jump the program's frames past its own tests.
      sys: ("settrace", "setprofile"),
      threading: ("settrace", "setprofile"),
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
  program_path, key_fd, verdict_fd, timeout_s, memory_mb, file_mb, network_mode = sys.argv[1:]
  with open(program_path, encoding="utf-8") as fh:
    source = fh.read()
  token = _read_all(int(key_fd))
  os.close(int(key_fd))
  # Builtins taken now: the program may rebind os.write or builtins.str, not these references.
  write, exit_now, encode, replace = os.write, os._exit, str.encode, str.replace
  verdict_fd = int(verdict_fd)
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
  try:
    # Bytes built from exact str copies: a str subclass smuggled into `detail` changes nothing.
    detail = encode(replace(replace(detail, "\n", " "), "\t", " "), "utf-8", "replace")
    # The leading newline ends whatever partial line the program may have left on the pipe.
    line = (b"\n" + encode(token) + b" " + encode(status) + b"\t" + encode(network) + b"\t" +
            detail + b"\n")
    write(verdict_fd, line)  # < PIPE_BUF: one atomic write
  except BaseException:  # the program closed or replaced the pipe: no verdict
    exit_now(3)
  exit_now(0)  # skips atexit handlers and non-daemon threads the program left behind


def _read_all(fd: int) -> str:
  data = b""
  while chunk := os.read(fd, 64):
    data += chunk
  return data.decode()


if __name__ == "__main__":
  main()
