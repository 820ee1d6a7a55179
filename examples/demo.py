"""`make demo`: the maskserve story on the default model, offline, in a few minutes on a laptop CPU."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def step(title: str, *argv: str) -> None:
    print(f"\n$ {' '.join(argv)}", flush=True)
    subprocess.run(argv, check=True)


def main() -> None:
    from mask_store.default_model import default_model_dir

    work = Path(os.environ.get("DEMO_DIR") or tempfile.mkdtemp(prefix="maskserve-demo-"))
    store = str(work / "store")
    print(f"demo folder: {work}")
    model = default_model_dir()
    step("base id", "mask-store", "base-id", str(model))
    step("a magnitude baseline mask", "mask-train", "--model", str(model), "--method", "magnitude",
         "--layers", "20-23", "--mask-ratio", "0.1", "--out", str(work / "l1.mask"))
    step("push", "mask-store", "--store", store, "push", str(work / "l1.mask"), "--name", "l1", "--tag", "prod")
    step("list", "mask-store", "--store", store, "ls")


if __name__ == "__main__":
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    main()
