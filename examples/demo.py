"""`make demo`: the maskserve story on the default model, offline, in a few minutes on a laptop CPU.

1. convert SmolLM2-135M-Instruct (shipped as a GGUF on PyPI) to a safetensors folder, once
2. learn a math mask with MFT on offline arithmetic problems (examples/math_mask.py), and a magnitude baseline
3. push both to a store, tag the math mask `prod`
4. start mask-serve, ask the base and the mask the same held-out questions with the openai client
5. run an A/B experiment (base vs math:prod), score each answer, print the report

    python examples/demo.py [--work DIR] [--steps 80] [--questions 24]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

EXPERIMENTS = """experiments:
  - name: math-ab
    arms:
      - {mask: base, weight: 1}
      - {mask: "math:prod", weight: 1}
"""


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run(*argv: str) -> None:
    print("$ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for everything the demo makes (default: a new temp folder)")
    parser.add_argument("--steps", default="80", help="MFT steps (more is better and slower)")
    parser.add_argument("--questions", type=int, default=24, help="held-out questions sent in the A/B experiment")
    args = parser.parse_args()

    import httpx
    import openai

    from mask_store.default_model import default_model_dir
    from serve.launch import free_port, start, stop, wait_healthy
    from mask_store.tasks import exact_match

    work = Path(args.work or tempfile.mkdtemp(prefix="maskserve-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    store = str(work / "store")
    print(f"demo folder: {work}")

    step("1. the base model")
    model = default_model_dir()
    run("mask-store", "base-id", str(model))

    step("2. learn a math mask (MFT), and a magnitude baseline")
    run(sys.executable, str(Path(__file__).parent / "math_mask.py"), "--work", str(work), "--steps", args.steps)
    run("mask-train", "--model", str(model), "--method", "magnitude", "--layers", "20-23", "--mask-ratio", "0.1",
        "--out", str(work / "l1.mask"))

    step("3. push them")
    run("mask-store", "--store", store, "push", str(work / "math.mask"), "--name", "math", "--tag", "prod")
    run("mask-store", "--store", store, "push", str(work / "l1.mask"), "--name", "l1")
    run("mask-store", "--store", store, "ls")

    step("4. serve: one model, every mask")
    (work / "experiments.yaml").write_text(EXPERIMENTS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(
        ["mask-serve", "--model", str(model), "--served-model-name", "smollm2", "--store", store, "--port",
         str(port), "--experiments", str(work / "experiments.yaml"), "--ab-db", str(work / "ab.sqlite"),
         "--max-model-len", "2048"],
        work / "server.log",
    )
    print(f"mask-serve starting on {url} (log: {work / 'server.log'})", flush=True)
    try:
        wait_healthy(url, server, work / "server.log")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo")
        print("models:", ", ".join(m.id for m in client.models.list()))

        questions = [json.loads(line) for line in (work / "eval.jsonl").read_text().splitlines()]
        print(f"\n{'question':<22} {'expected':>8}   {'base':<26} {'math:prod':<26}")
        for q in questions[:6]:
            messages = q["messages"][:1]
            cells = []
            for mask in (None, "math:prod"):
                r = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16, temperature=0,
                                                   extra_body={"mask": mask})
                text = r.choices[0].message.content
                mark = "ok " if exact_match(text, q["answer"]) else "-- "
                cells.append(mark + " ".join(text.split())[:22])
            print(f"{messages[0]['content'][:22]:<22} {q['answer']:>8}   {cells[0]:<26} {cells[1]:<26}")

        stream = client.chat.completions.create(model="math", messages=questions[0]["messages"][:1], max_tokens=16,
                                                temperature=0, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        print(f"\nstreamed with model='math': {text!r}")

        step("5. A/B: base vs math:prod, scored by exact match")
        for i, q in enumerate(questions[: args.questions]):
            raw = client.chat.completions.with_raw_response.create(
                model="smollm2", messages=q["messages"][:1], max_tokens=16, temperature=0, user=f"user-{i}",
                extra_body={"mask": "ab:math-ab"},
            )
            response = raw.parse()
            score = float(exact_match(response.choices[0].message.content, q["answer"]))
            httpx.post(f"{url}/v1/feedback", json={"id": response.id, "score": score}).raise_for_status()
        run("mask-serve", "ab", "report", "math-ab", "--ab-db", str(work / "ab.sqlite"))
    finally:
        stop(server)
    print(f"\ndone; everything is in {work}")


if __name__ == "__main__":
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    main()
