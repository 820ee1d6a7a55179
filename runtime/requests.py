"""From a user's mask REF to what a vLLM request carries, shared by the Python engine and the HTTP server.

    REF --store--> version record --base id check--> ServedMask(digest, local path)
        --> SamplingParams.extra_args = {"mask": digest, "mask_path": path, "mask_key": key}, cache_salt = digest

The cache salt keeps the prefix cache from sharing KV blocks between masks (or with the base); the path lets a
worker reload a mask it evicted. The key is a secret the API side hands its workers at setup: workers apply a mask
only to requests that carry it, so nothing a client puts in `vllm_xargs`, on any of vLLM's routes, can make a worker
apply a mask or read a file.
"""

import secrets
from dataclasses import dataclass

from mask_store.errors import BaseMismatch, rebuild
from mask_store.store import Store

ENGINE_DEFAULTS = {
    "enforce_eager": True,  # the per-request correction is data-dependent Python; no graphs or compilation
    "worker_extension_cls": "runtime.worker.MaskWorkerExtension",
    "enable_prefix_caching": True,
}
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM reserves KV cache in RAM on CPU; 1 GiB is plenty for small models
MASK_XARGS = ("mask", "mask_path", "mask_key")  # the extra_args keys only maskserve itself may set


def new_mask_key() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class ServedMask:
    name: str
    version: int
    digest: str
    path: str

    def extra_args(self, key: str) -> dict:
        return {"mask": self.digest, "mask_path": self.path, "mask_key": key}

    @property
    def cache_salt(self) -> str:
        return self.digest

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "digest": self.digest}


def resolve(store: Store, ref: str, base_id: str) -> ServedMask:
    """REF -> the version to serve; refuses a mask trained on another base before anything is loaded."""
    record = store.resolve(ref)
    if record.base_id != base_id:
        raise BaseMismatch(f"mask {record.ref}", record.base_id, base_id)
    return ServedMask(record.name, record.version, record.digest, str(store.local_path(record)))


def first_result(results: list[dict]) -> dict:
    """collective_rpc returns one dict per worker; re-raise the first error one reports, else return rank 0's."""
    for result in results:
        if "error" in result:
            raise rebuild(result.get("kind", "MaskError"), result["error"])
    return results[0]


def default_engine_args(**overrides) -> dict:
    """vLLM engine arguments maskserve needs, plus a sane KV cache size on CPU; user overrides win."""
    import torch

    args = dict(ENGINE_DEFAULTS)
    if not torch.cuda.is_available():
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    args.update({k: v for k, v in overrides.items() if v is not None})
    return args
