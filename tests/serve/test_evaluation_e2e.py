"""Evaluation against a real `mask-serve`: the accuracy a mask gets over HTTP is the accuracy `mask-eval` reports
for it, for prompt/completion records through /v1/completions and for chat records through /v1/chat/completions
(what the reproduction's tasks are), and lm-evaluation-harness (`local-completions`) runs a local task against the
server, on the base and on a mask chosen by model name. Slow: a server and a mask-eval engine on the tiny model.

The task's answers are what the plain-transformers oracle generates with the mask (most problems) or without it
(the rest), so the base and the mask score differently and a mask that was not applied would show."""

import json
import subprocess
import sys

import openai
import pytest
import torch
from transformers import AutoTokenizer

from mask_store.format import load_mask
from mask_store.store import Store
from mask_store.tasks import exact_match, prompt_ids
from runtime.reference import load_model, materialize
from serve.launch import free_port, start, stop, wait_healthy
from tests.runtime.helpers import make_mask

pytestmark = pytest.mark.slow

MAX_TOKENS = 8
PROMPTS = [f"Tale {i}: once upon a time" for i in range(8)] + [f"{i} masks walk into a bar" for i in range(4)]
FROM_BASE = {1, 7}  # problems whose answer is the base model's own text
ENGINE_ARGS = ["--dtype", "float32", "--max-model-len", "512"]


def oracle_texts(model_dir, mask_path, chat: bool = False) -> list[str]:
    """Greedy continuations of PROMPTS (as one user message each with `chat`) by the materialized model (None: the
    base), cut at the first special token."""
    model, tokenizer = load_model(model_dir)
    if mask_path is not None:
        materialize(model, load_mask(mask_path))
    stops = sorted(set(tokenizer.all_special_ids))
    texts = []
    for prompt in PROMPTS:
        record = {"messages": user_turn(prompt, "")} if chat else {"prompt": prompt}
        ids = torch.tensor([prompt_ids(record, tokenizer, "oracle")])
        out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        cut = next((j for j, t in enumerate(out) if t in stops), len(out))
        texts.append(tokenizer.decode(out[:cut]))
    return texts


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-e2e")
    store = Store(root / "store")
    mask = make_mask(tiny_model, root / "alpha.mask", 0.3, "0-3", "all", seed=1)
    store.push(mask, "alpha")
    answers = task_answers(tiny_model, mask, chat=False)
    task = root / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": p, "completion": a, "answer": a}) + "\n"
                            for p, a in zip(PROMPTS, answers)))
    chat_answers = task_answers(tiny_model, mask, chat=True)
    chat_task = root / "chat_task.jsonl"
    chat_task.write_text("".join(json.dumps({"messages": user_turn(p, a), "answer": a}) + "\n"
                                 for p, a in zip(PROMPTS, chat_answers)))
    port = free_port()
    proc = start([sys.executable, "-m", "serve.cli", "--model", str(tiny_model), "--store", store.uri,
                  "--port", str(port), "--ab-db", str(root / "ab.sqlite"), *ENGINE_ARGS], root / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, root / "server.log", timeout_s=300)
        yield {"url": url, "root": root, "store": store, "task": task, "answers": answers, "model": tiny_model,
               "chat_task": chat_task, "chat_answers": chat_answers, "stops": stop_ids(tiny_model)}
    finally:
        stop(proc, timeout_s=60)


def stop_ids(model_dir) -> list[int]:
    """The special tokens mask-eval stops at, which the HTTP requests name as `stop_token_ids`."""
    return sorted(set(AutoTokenizer.from_pretrained(model_dir).all_special_ids))


def user_turn(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def task_answers(model_dir, mask_path, chat: bool) -> list[str]:
    masked, base = oracle_texts(model_dir, mask_path, chat), oracle_texts(model_dir, None, chat)
    return [(base if i in FROM_BASE else masked)[i].strip() or "-" for i in range(len(PROMPTS))]


def run_mask_eval(world, task) -> dict:
    """`mask-eval --json` on the base and the mask, as a user runs it (its own engine, its own process)."""
    out = subprocess.run(
        [sys.executable, "-m", "runtime.eval_cli", "--model", str(world["model"]), "--data", str(task),
         "--store", world["store"].uri, "--mask", "alpha", "--max-new-tokens", str(MAX_TOKENS), "--json",
         *ENGINE_ARGS], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return {row["subject"]: row for row in json.loads(out.stdout)["results"]}


@pytest.fixture(scope="module")
def mask_eval(world):
    return run_mask_eval(world, world["task"])


def served(world, model: str) -> list[int]:
    """Per-problem exact match of the server's answers: one completions request, greedy, same stop tokens."""
    client = openai.OpenAI(base_url=f"{world['url']}/v1", api_key="unused")
    response = client.completions.create(model=model, prompt=PROMPTS, max_tokens=MAX_TOKENS, temperature=0,
                                         extra_body={"stop_token_ids": world["stops"]})
    texts = [c.text for c in sorted(response.choices, key=lambda c: c.index)]
    return [int(exact_match(t, a)) for t, a in zip(texts, world["answers"])]


def served_chat(world, model: str) -> list[int]:
    """Per-problem exact match of the server's chat answers: one chat request per problem, greedy, same stops."""
    client = openai.OpenAI(base_url=f"{world['url']}/v1", api_key="unused")
    texts = [client.chat.completions.create(
        model=model, messages=user_turn(p, "")[:1], max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"stop_token_ids": world["stops"]}).choices[0].message.content
        for p in PROMPTS]
    return [int(exact_match(t, a)) for t, a in zip(texts, world["chat_answers"])]


def test_served_chat_accuracy_equals_mask_eval(world):
    evaluated = run_mask_eval(world, world["chat_task"])
    over_http = {"base": served_chat(world, world["model"].name), "alpha": served_chat(world, "alpha")}
    assert evaluated["alpha"]["per_problem"] == over_http["alpha"]
    assert evaluated["base"]["per_problem"] == over_http["base"]
    assert over_http["alpha"] != over_http["base"]  # the mask was applied over chat too
    assert sum(over_http["alpha"]) > sum(over_http["base"])


def test_served_accuracy_equals_mask_eval(world, mask_eval):
    over_http = {"base": served(world, world["model"].name), "alpha": served(world, "alpha")}
    assert mask_eval["alpha"]["per_problem"] == over_http["alpha"]
    assert mask_eval["base"]["per_problem"] == over_http["base"]
    assert mask_eval["alpha"]["n"] == len(PROMPTS)
    assert mask_eval["alpha"]["correct"] == sum(over_http["alpha"])
    assert over_http["alpha"] != over_http["base"]  # the mask was applied: served base answers would not match
    assert sum(over_http["alpha"]) > sum(over_http["base"])


TASK_YAML = """\
task: tiny_exact
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {max_tokens}
  temperature: 0
  do_sample: false
  stop_token_ids: {stops}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
"""


def lm_eval(world, model: str, tag: str) -> float:
    """The documented command (docs/evaluation.md), offline; returns the task's exact match."""
    tasks = world["root"] / "lm_eval_tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "tiny_exact.yaml").write_text(TASK_YAML.format(
        data=world["task"], max_tokens=MAX_TOKENS, stops=world["stops"]))
    out_dir = world["root"] / f"lm_eval_{tag}"
    model_args = (f"model={model},base_url={world['url']}/v1/completions,tokenizer_backend=huggingface,"
                  f"tokenizer={world['model']},tokenized_requests=False,num_concurrent=1,max_retries=1")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(world["root"] / "hf_datasets"), "OPENAI_API_KEY": "unused"}
    run = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args",
                          model_args, "--include_path", str(tasks), "--tasks", "tiny_exact",
                          "--output_path", str(out_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    (results,) = out_dir.rglob("results_*.json")
    return json.loads(results.read_text())["results"]["tiny_exact"]["exact_match,none"]


def test_lm_eval_runs_against_the_server_on_the_base_and_a_mask(world, mask_eval):
    on_base, on_mask = lm_eval(world, world["model"].name, "base"), lm_eval(world, "alpha", "alpha")
    assert on_mask == pytest.approx(mask_eval["alpha"]["exact_match"])
    assert on_base == pytest.approx(mask_eval["base"]["exact_match"])
    assert on_mask > on_base
