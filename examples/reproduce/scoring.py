"""Score one model folder and its masks on the tasks' held-out sets, through runtime.Engine: one engine start.

    python -m examples.reproduce.scoring SPEC.json OUT.json

SPEC: {"model": DIR, "max_new_tokens": N, "eager": bool,
       "jobs": [{"task": "math", "data": "eval.jsonl", "subjects": [["fft", null], ["mft", "x.mask"], ...]}]}
OUT: {"task": {"label": {n, correct, exact_match, ci95, per_problem}}, "seconds": ...}

The scoring is mask-eval's (runtime/evaluate.py: greedy, exact match from mask_store/tasks.py, Wilson intervals);
this only batches several tasks and up to 8 masks behind one engine start, which on a 2-core CPU is most of the
cost (vLLM's compile alone takes minutes, hence `eager`). Masks are staged in a private store, as mask-eval does,
and a mask trained on another base is refused before the engine starts. Run as its own process: vLLM spawns
workers and is not torn down cleanly within one.
"""

import json
import sys
import tempfile
import time
from pathlib import Path


def score(spec: dict) -> dict:
    from mask_store.identity import base_id
    from mask_store.store import Store
    from runtime.engine import Engine
    from runtime.eval_cli import load_tokenizer, stage_masks
    from runtime.evaluate import Subject, evaluate, greedy_params, load_problems

    started = time.perf_counter()
    model_dir = Path(spec["model"])
    tokenizer = load_tokenizer(model_dir)
    served = base_id(model_dir)
    params = greedy_params(tokenizer, spec["max_new_tokens"])
    mask_files = [m for job in spec["jobs"] for _, m in job["subjects"] if m is not None]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="reproduce-eval-") as tmp:
        staging = Store(Path(tmp) / "store")
        refs = {m["label"]: m["ref"] for m in stage_masks(mask_files, None, served, staging)}
        engine_args = {"enforce_eager": True} if spec.get("eager", True) else {}
        engine = Engine(model_dir, staging, max_masks=max(1, min(8, len(mask_files))), **engine_args)
        for job in spec["jobs"]:
            problems = load_problems(job["data"], tokenizer)
            subjects = [Subject(label, None if m is None else refs[m]) for label, m in job["subjects"]]
            for s in evaluate(engine, problems, subjects, params):
                results.setdefault(job["task"], {})[s.subject.label] = {
                    **s.summary(), "per_problem": [int(c) for c in s.correct], "sample": list(s.texts[:3])}
    return {"model": str(model_dir), "dtype": engine.dtype, "results": results,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    result = score(json.loads(spec_path.read_text()))
    tmp = out_path.with_name(out_path.name + ".partial")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.rename(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
