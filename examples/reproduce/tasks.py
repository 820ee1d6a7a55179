"""The two tasks, built offline from generators that ship in the PyPI package `reasoning-gym`.

- `math`: arithmetic word problems (`basic_arithmetic`, natural phrasing, two terms of one or two digits, + and -),
  split by template as examples/math_mask.py does: training uses "What is", "Solve" and "Compute", held-out only
  "Evaluate:"; no held-out expression appears in training.
- `reversal`: instruction following checked by a rule (`word_sequence_reversal`: "Reverse this list of words: owns,
  progress, constitution" -> "constitution, progress, owns"), lists of 3-4 words, split by the list's first word:
  training lists start with a-m, held-out lists with anything else, and no list appears on both sides. Every answer
  is its own list, so no constant answer scores. The generator's two lines of boilerplate before the instruction
  (its answer-format sentence repeats what the instruction says) are dropped, so an example fits the quick budget's
  64 tokens. This replaced letter counting, whose balanced answers 1 / 2 / 3 let a constant answer score a third and
  made every method tie at chance (docs/results.md).

Each task is written as mask-train's JSON lines (chat `messages` and an `answer`); mask_store/tasks.py scores them.
`build_task` returns (train, held_out) records; `split_key` says which side of the split a record belongs to, so
a test can check the split is disjoint.

Non-goals: other generators, prompts tuned per model.
"""

import json
from collections.abc import Callable
from pathlib import Path

TASKS = ("math", "reversal")

MATH_TRAIN_TEMPLATES = ("What is", "Solve", "Compute")
MATH_EVAL_TEMPLATE = "Evaluate:"
REVERSAL_INSTRUCTION = "Reverse this list of words:"
REVERSAL_TRAIN_INITIALS = frozenset("abcdefghijklm")


def _math_pool(size: int, seed: int) -> list[dict]:
    import reasoning_gym

    return list(reasoning_gym.create_dataset(
        "basic_arithmetic", size=size, seed=seed, min_terms=2, max_terms=2, min_digits=1, max_digits=2,
        operators=("+", "-"), allow_parentheses=False, allow_negation=False, format_style="natural"))


def _reversal_pool(size: int, seed: int) -> list[dict]:
    import reasoning_gym

    items = reasoning_gym.create_dataset("word_sequence_reversal", size=size, seed=seed, min_words=3, max_words=4)
    return [{**item, "question": item["question"][item["question"].index(REVERSAL_INSTRUCTION):].strip()}
            for item in items]


def math_side(item: dict) -> str | None:
    """train, eval or None (a template in neither list) for a math item."""
    question = item["question"]
    if question.startswith(MATH_TRAIN_TEMPLATES):
        return "train"
    return "eval" if question.startswith(MATH_EVAL_TEMPLATE) else None


def reversal_side(item: dict) -> str:
    return "train" if item["metadata"]["words"][0][:1].lower() in REVERSAL_TRAIN_INITIALS else "eval"


def math_key(item: dict) -> str:
    return item["metadata"]["expression"]


def reversal_key(item: dict) -> str:
    return " ".join(item["metadata"]["words"]).lower()


SPLITS: dict[str, tuple[Callable, Callable, Callable]] = {  # pool, side, the key no two sides may share
    "math": (_math_pool, math_side, math_key),
    "reversal": (_reversal_pool, reversal_side, reversal_key),
}


def split_pool(items: list[dict], side: Callable, key: Callable, n_train: int, n_eval: int,
               balance: Callable | None = None) -> tuple[list[dict], list[dict]]:
    """Fill the held-out set first, then training, skipping any item whose key the other side already holds; with
    `balance`, each side takes equally many items per value of balance(item)."""
    chosen: dict[str, list[dict]] = {"train": [], "eval": []}
    keys: dict[str, set] = {"train": set(), "eval": set()}
    wanted = {"train": n_train, "eval": n_eval}
    for name in ("eval", "train"):
        groups = sorted({balance(i) for i in items if side(i) == name}) if balance else [None]
        per_group = {g: -(-wanted[name] // len(groups)) for g in groups}
        counts = dict.fromkeys(groups, 0)
        other = keys["train" if name == "eval" else "eval"]
        for item in items:
            if len(chosen[name]) >= wanted[name]:
                break
            k, g = key(item), balance(item) if balance else None
            if side(item) != name or k in other or k in keys[name] or counts[g] >= per_group[g]:
                continue
            chosen[name].append(item)
            keys[name].add(k)
            counts[g] += 1
    return chosen["train"], chosen["eval"]


def build_task(task: str, n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training records, held-out records) for a task; a clear error when the generator gives too few."""
    pool_of, side, key = SPLITS[task]
    items = pool_of(max(2000, 12 * (n_train + n_eval)), seed)
    train, held_out = split_pool(items, side, key, n_train, n_eval)
    if len(train) < n_train or len(held_out) < n_eval:
        raise ValueError(f"reasoning-gym gave only {len(train)} training and {len(held_out)} held-out {task} problems "
                         f"({n_train} and {n_eval} asked)")
    return [record(i) for i in train], [record(i) for i in held_out]


def record(item: dict) -> dict:
    """mask-train's schema: the question as the user turn, the answer as the assistant's, and `answer` to score."""
    return {"messages": [{"role": "user", "content": item["question"]},
                         {"role": "assistant", "content": item["answer"]}], "answer": item["answer"]}


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.rename(path)
