"""What maskserve's middleware costs per request, against the same response served without it, in one process.

    python bench/annotation.py [--requests 2000] [--tokens 64]

A stand-in for vLLM's completion route answers every request with a fixed response shaped like vLLM's (a JSON body
of --tokens tokens, or --tokens SSE chunks and a usage chunk). Each request goes through the ASGI stack twice, in
alternating batches: straight to that route, and through `serve.middleware.MaskMiddleware` (the auth and body-limit
middlewares are not included). The middleware parses the request, routes it, rewrites it for vLLM, adds the
`x-mask` headers and the `mask` body field (a JSON re-encode for a plain response, a byte splice per streamed chunk)
and counts metrics. Printed: microseconds per request each way, and the difference as a fraction of the time to
serve the same response from a real engine, which the bench does not run: compare it with a base request's latency
from docs/reliability.md or bench/server_overhead.py on the same machine.

This decides whether the `mask` body field stays (issue: "keep the body field only if it costs nothing
measurable"): the headers alone would save at most the whole middleware difference printed here.
"""

import argparse
import asyncio
import json
import statistics
import time
from types import SimpleNamespace


def vllm_like_app(tokens: int):
    body = json.dumps({
        "id": "cmpl-0123456789abcdef", "object": "text_completion", "created": 1, "model": "base",
        "choices": [{"index": 0, "text": " word" * tokens, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "total_tokens": 12 + tokens, "completion_tokens": tokens}}).encode()
    chunks = [b"data: " + json.dumps({"id": "cmpl-0123456789abcdef", "object": "text_completion", "created": 1,
                                      "model": "base", "choices": [{"index": 0, "text": " word"}]}).encode() + b"\n\n"
              for _ in range(tokens)]
    chunks.append(b"data: " + json.dumps({"id": "cmpl-0123456789abcdef", "object": "text_completion", "created": 1,
                                          "model": "base", "choices": [], "usage": {
                                              "prompt_tokens": 12, "completion_tokens": tokens}}).encode() + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")

    async def app(scope, receive, send):
        request = json.loads((await receive())["body"])
        if request.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


async def serve_once(app, state, request: bytes) -> int:
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(request)).encode())],
             "app": state}
    sent = 0

    async def receive():
        return {"type": "http.request", "body": request, "more_body": False}

    async def send(message):
        nonlocal sent
        sent += len(message.get("body", b""))

    await app(scope, receive, send)
    return sent


async def per_request_us(app, state, request: bytes, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await serve_once(app, state, request)
    return 1e6 * (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per batch")
    parser.add_argument("--batches", type=int, default=7, help="alternating batches per path (median)")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    from runtime.requests import vector_flags
    from serve.experiments import Experiments
    from serve.middleware import MaskMiddleware
    from serve.state import MaskServeState

    inner = vllm_like_app(args.tokens)
    wrapped = MaskMiddleware(inner)
    state = SimpleNamespace(state=SimpleNamespace(maskserve=MaskServeState(
        service=None, experiments=Experiments(), ablog=None, base_names=frozenset({"base"}))))
    print(f"CPU flags {vector_flags()}; base requests (no mask, no experiment)")
    print(f"{args.tokens}-token responses, median of {args.batches} alternating batches of {args.requests} requests")
    print(f"{'response':<12} {'vLLM route':>11} {'+ middleware':>13} {'difference':>11}")
    for stream in (False, True):
        request = json.dumps({"model": "base", "prompt": "Write a story about masks.", "max_tokens": args.tokens,
                              "temperature": 0, "stream": stream}).encode()
        times = {"plain": [], "ours": []}
        for batch in range(args.batches + 1):  # batch 0 warms up
            for label, app in (("plain", inner), ("ours", wrapped)) if batch % 2 else (("ours", wrapped),
                                                                                      ("plain", inner)):
                us = asyncio.run(per_request_us(app, state, request, args.requests))
                if batch:
                    times[label].append(us)
        plain, ours = statistics.median(times["plain"]), statistics.median(times["ours"])
        kind = "streamed" if stream else "JSON"
        print(f"{kind:<12} {plain:>9.1f}us {ours:>11.1f}us {ours - plain:>9.1f}us")


if __name__ == "__main__":
    main()
