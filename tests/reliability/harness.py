"""What the reliability tests and the soak share: a real mask-serve on loopback, masks that move outputs, requests
over HTTP that report what came back, and the figures (latency percentiles, RSS of the server's process group).

A server runs in a session of its own (`start_new_session`), so stopping it ends its engine processes too; every
server started here is stopped by the context manager that started it, also when a test fails. Waits poll with a
deadline; nothing sleeps to let something happen.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mask_store.store import Store
from serve.launch import free_port, wait_healthy
from tests.runtime.helpers import make_mask

MODEL = "tiny"  # the served model name: the folder name of tests/tiny.py's model
ENGINE_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--seed", "0"]
PROMPTS = ["Once upon a time, in a land of masks,", "The quick brown fox"]
MESSAGES = [[{"role": "user", "content": "Tell me about masks."}], [{"role": "user", "content": "Count to five."}]]
ADMIN_KEY = "reliability-admin"  # admin routes are off without a key (serve/auth.py)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
START_TIMEOUT_S = 600  # a cold vLLM compile of the tiny model takes 1-2 min on 2 cores; a warm one under a minute


def push_masks(model: Path, store: Store, names: list[str], folder: Path, seed0: int = 0, tags=()) -> list:
    """One random mask per name (ratio 0.3 over layers 0-3, every projection): each visibly moves the output."""
    folder.mkdir(parents=True, exist_ok=True)
    return [store.push(make_mask(model, folder / f"{name}.mask", 0.3, "0-3", "all", seed=seed0 + i), name,
                       tags=list(tags))
            for i, name in enumerate(names)]


# --- the server ----------------------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def spawn(model: Path, store_uri: str, root: Path, *extra: str, env: dict | None = None, name: str = "server"):
    """Start mask-serve without waiting; returns (proc, url, log)."""
    port = free_port()
    log = root / f"{name}-{port}.log"
    argv = [sys.executable, "-m", "serve.cli", "--model", str(model), "--store", store_uri, "--port", str(port),
            "--ab-db", str(root / f"{name}-{port}-ab.sqlite"), "--admin-key", ADMIN_KEY, *ENGINE_ARGS, *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    return proc, f"http://127.0.0.1:{port}", log


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def shut_down(proc: subprocess.Popen, timeout_s: float = 90) -> None:
    """SIGTERM to the server's process group; SIGKILL if it has not exited by the deadline."""
    if proc.poll() is None:
        kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc, signal.SIGKILL)  # engine processes left behind by a server that died or hung
    proc.wait()


@contextmanager
def serving(model: Path, store_uri: str, root: Path, *extra: str, env: dict | None = None, name: str = "server"):
    """A running mask-serve for the block, stopped (its whole process group) when the block ends."""
    with serving_replicas(model, store_uri, root, [env or {}], *extra, name=name) as servers:
        yield servers[0]


@contextmanager
def serving_replicas(model: Path, store_uri: str, root: Path, envs: list[dict], *extra: str, name: str = "replica"):
    """One mask-serve per entry of `envs` (extra environment each), started side by side, all stopped at the end."""
    started = []
    try:
        for i, env in enumerate(envs):
            started.append(spawn(model, store_uri, root, *extra, env=env, name=f"{name}{i}" if len(envs) > 1 else name))
        for proc, url, log in started:
            wait_healthy(url, proc, log, timeout_s=START_TIMEOUT_S)
        yield [Server(*s) for s in started]
    finally:
        for proc, _, _ in started:
            shut_down(proc)


def poll(check, timeout_s: float, what: str, interval_s: float = 0.1):
    """Call `check()` until it returns something truthy; fail naming `what` (and the last value) at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what} (last: {value!r})")
        time.sleep(interval_s)  # the interval between two polls, not a wait for something to happen


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}; label order as the server writes it."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum over every label set of `name` that has `labels` (0 when absent)."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in metrics.items()
               if (k == name or k.startswith(name + "{")) and all(w in k for w in wanted))


# --- requests ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One inference request, as a hashable value: two equal Calls must get equal answers (greedy decoding)."""

    route: str  # "completions" or "chat"
    stream: bool
    mask: str | None  # a REF, "ab:NAME", or None for the base
    prompt: int  # index into PROMPTS / MESSAGES
    user: str | None = None
    max_tokens: int = 8

    @property
    def path(self) -> str:
        return "/v1/completions" if self.route == "completions" else "/v1/chat/completions"

    def body(self) -> dict:
        body = {"model": MODEL, "max_tokens": self.max_tokens, "temperature": 0, "stream": self.stream,
                "return_token_ids": True}
        if self.route == "completions":
            body["prompt"] = PROMPTS[self.prompt]
        else:
            body["messages"] = MESSAGES[self.prompt]
        if self.mask is not None:
            body["mask"] = self.mask
        if self.user is not None:
            body["user"] = self.user
        return body


@dataclass
class Answer:
    status: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    served: str | None = None  # the x-mask header: NAME@VERSION or base
    arm: str | None = None  # x-mask-arm, for experiment requests
    retry_after: str | None = None
    finish_reason: str | None = None
    done: bool = False  # a stream ended with data: [DONE]
    error: str | None = None
    latency_s: float = 0.0
    chunk_masks: list = field(default_factory=list)  # the `mask` object of every streamed chunk (None: absent)

    def same_output(self) -> tuple:
        return self.status, self.text, self.token_ids, self.served, self.arm


def _headers(answer: Answer, response: httpx.Response) -> None:
    answer.served = response.headers.get("x-mask")
    answer.arm = response.headers.get("x-mask-arm")
    answer.retry_after = response.headers.get("retry-after")


def _take_choice(answer: Answer, choice: dict, route: str) -> None:
    if route == "completions":
        answer.text += choice.get("text") or ""
    else:
        answer.text += ((choice.get("delta") or choice.get("message") or {}).get("content")) or ""
    answer.token_ids += tuple(choice.get("token_ids") or ())
    answer.finish_reason = choice.get("finish_reason") or answer.finish_reason


async def send(client: httpx.AsyncClient, call: Call, timeout_s: float = 120) -> Answer:
    """POST one Call; the answer holds what the client saw (a transport error is status 0 with the reason)."""
    started = time.perf_counter()
    answer = Answer(status=0)
    try:
        if not call.stream:
            response = await client.post(call.path, json=call.body(), timeout=timeout_s)
            answer.status = response.status_code
            _headers(answer, response)
            payload = response.json()
            if response.status_code == 200:
                for choice in payload["choices"]:
                    _take_choice(answer, choice, call.route)
            else:
                answer.error = (payload.get("error") or {}).get("message") or response.text[:300]
        else:
            async with client.stream("POST", call.path, json=call.body(), timeout=timeout_s) as response:
                answer.status = response.status_code
                _headers(answer, response)
                if response.status_code != 200:
                    answer.error = (await response.aread()).decode(errors="replace")[:300]
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            answer.done = True
                            continue
                        chunk = json.loads(line[6:])
                        answer.chunk_masks.append(chunk.get("mask"))  # base chunks carry none
                        for choice in chunk.get("choices") or ():
                            _take_choice(answer, choice, call.route)
    except (httpx.HTTPError, ValueError) as e:
        answer.error = f"{type(e).__name__}: {e}"
    answer.latency_s = time.perf_counter() - started
    return answer


async def send_all(url: str, calls: list[Call], concurrency: int, retry_busy: int = 0) -> list[Answer]:
    """Every call, `concurrency` at a time, answers in the order of `calls`. With `retry_busy`, a 429 or 503 that
    carries Retry-After is retried (up to that many times, waiting what it asks, capped at 5 s)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(call: Call) -> Answer:
            async with gate:
                answer = await send(client, call)
                for _ in range(retry_busy):
                    if answer.status not in (429, 503) or answer.retry_after is None:
                        break
                    await asyncio.sleep(min(5.0, float(answer.retry_after)))  # the server's back-off, bounded
                    answer = await send(client, call)
                return answer

        return list(await asyncio.gather(*(one(c) for c in calls)))


def run_alone(url: str, calls) -> dict[Call, Answer]:
    """Each distinct call on its own, one after another: the answers a loaded server must reproduce."""
    out = {}
    for call in dict.fromkeys(calls):
        out[call] = asyncio.run(send_all(url, [call], 1))[0]
    return out


# --- figures -------------------------------------------------------------------------------------------------------


def percentiles(values: list[float], qs=(50, 95, 99)) -> dict[int, float]:
    """Nearest-rank percentiles."""
    ordered = sorted(values)
    if not ordered:
        return {q: float("nan") for q in qs}
    return {q: ordered[min(len(ordered) - 1, max(0, -(-q * len(ordered) // 100) - 1))] for q in qs}


def group_rss_bytes(pgid: int) -> int:
    """Resident set of every process in a process group, summed (pages shared between them count once each)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
            if int(fields[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return total

