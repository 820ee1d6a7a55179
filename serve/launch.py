"""mask-serve (or plain `vllm serve`) as a child process: start it on a free port, wait until it answers, stop it.

For scripts that drive a server end to end: the demo, the benches, the end-to-end tests.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """Output to `log`; a session of its own, so `stop` ends the engine processes it spawns too."""
    with open(log, "w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    """Poll GET {url}/health until it answers 200; fail with the log's tail if the server exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with code {proc.returncode}" if proc.returncode is not None else f"not up in {timeout_s} s"
            raise RuntimeError(f"server at {url} {why}; end of {log}:\n{Path(log).read_text()[-4000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen, timeout_s: float = 120) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=timeout_s)
