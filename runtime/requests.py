"""From a user's mask REF to what a vLLM request carries, shared by the Python engine and the HTTP server.

    REF --store--> version record --base id check--> ServedMask(digest, local path)
        --> SamplingParams.extra_args = {"mask": digest, "mask_token": HMAC(key, digest)}
            cache_salt = "maskserve:" + HMAC(key, "salt" + digest) [+ ":" + the client's own salt]

The key is a secret the API side hands its workers at setup. Workers apply a mask only to requests whose token
matches, so nothing a client puts in `vllm_xargs`, on any of vLLM's routes, can make a worker apply a mask; and a
token printed by vLLM's request log (`--enable-log-requests`) names one digest and reveals nothing of the key.
Cache salts starting with `SALT_PREFIX` are maskserve's alone (the server refuses them from clients), so KV
blocks are never shared between masks, or between a mask and the base, whatever salt a client sends.
"""

import hmac
import secrets
from dataclasses import dataclass

from mask_store.errors import BaseMismatch, MaskError
from mask_store.format import read_mask_file
from mask_store.store import Store

from .layout import check_mask_tensors

SALT_PREFIX = "maskserve:"
MASK_XARGS = ("mask", "mask_token")  # the extra_args keys only maskserve itself may set
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM reserves KV cache in RAM on CPU; 1 GiB is plenty for small models
DEFAULT_MAX_MASKS = 8  # resident mask slots, like vLLM's max_loras
DEFAULT_MASK_MEMORY = 1 << 30  # bytes over all slots
GRAPH_VERSION = 1  # bump when what the masked layers put into a compiled graph changes


def new_mask_key() -> str:
    return secrets.token_hex(32)


def _mac(key: str, message: str) -> str:
    return hmac.new(bytes.fromhex(key), message.encode(), "sha256").hexdigest()[:32]


def mask_token(key: str, digest: str) -> str:
    return _mac(key, "token:" + digest)


def token_matches(key: str, digest: object, token: object) -> bool:
    """Whether a request's `extra_args` were written by maskserve. Whatever a client puts there (non-strings,
    non-ASCII, lone surrogates) is a plain False: this runs before every forward pass, where raising kills the engine.
    Digests and tokens are hex, so nothing valid is turned away."""
    if not (isinstance(digest, str) and isinstance(token, str) and digest.isascii() and token.isascii()):
        return False
    return hmac.compare_digest(mask_token(key, digest), token)


@dataclass(frozen=True)
class ServedMask:
    name: str
    version: int
    digest: str
    path: str

    def extra_args(self, key: str) -> dict:
        return {"mask": self.digest, "mask_token": mask_token(key, self.digest)}

    def cache_salt(self, key: str, client_salt: str | None = None) -> str:
        salt = SALT_PREFIX + _mac(key, "salt:" + self.digest)
        return salt if client_salt is None else f"{salt}:{client_salt}"

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "digest": self.digest}


def resolve(store: Store, ref: str, base_id: str, expected: dict[str, tuple[int, ...]]) -> ServedMask:
    """REF -> the version to serve. Refuses, before any worker sees it, a mask trained on another base or whose
    tensors are not the model's projections (`expected`: name -> shape, layout.ModelShape.hf_shapes)."""
    record = store.resolve(ref)
    if record.base_id != base_id:
        raise BaseMismatch(f"mask {record.ref}", record.base_id, base_id)
    path = store.local_path(record)
    check_mask_tensors(read_mask_file(path).header.tensors, expected, f"mask {record.ref}")
    return ServedMask(record.name, record.version, record.digest, str(path))


def first_result(results: list[dict]) -> dict:
    """collective_rpc returns one dict per worker; re-raise the first error one reports, else return rank 0's."""
    for result in results:
        if "error" in result:
            error = _rebuild(result.get("kind", "MaskError"), result["error"])
            if "status" in result:  # the worker's class may not be importable here; its status still is
                error.status = result["status"]
            raise error
    return results[0]


def per_item(results: list[dict], key: str) -> list[dict | MaskError]:
    """A batched RPC's answers (every worker's `key`, a list of reports): for each item, rank 0's report, or the
    error the first worker that failed it reports. A worker that failed the whole call raises, as first_result."""
    first_result(results)
    out = []
    for reports in zip(*(result[key] for result in results)):
        try:
            out.append(first_result(list(reports)))
        except MaskError as e:
            out.append(e)
    return out


def _rebuild(kind: str, message: str) -> MaskError:
    """An error a worker reported as (class name, message), raised again here as its own class."""
    classes = {cls.__name__: cls for cls in _all_subclasses(MaskError)}
    cls = classes.get(kind, MaskError)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def _all_subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def fast_dtype() -> str:
    """The dtype to serve in when the user leaves it to us: bf16 only where the CPU has native bf16 matmuls.

    Without AVX512-BF16 or AMX, oneDNN's bf16 linears take a slow fallback (SmolLM2, 16 requests: ~30 tok/s in bf16,
    ~120 in fp32 on an AVX2 machine). On CUDA, vLLM's own choice ("auto").
    """
    import torch

    if torch.cuda.is_available():
        return "auto"
    flags = cpu_flags()
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & flags else "float32"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def vector_flags() -> str:
    """The CPU's vector extensions (AVX*, AMX*), as every benchmark figure prints them: they decide the fast dtype."""
    return " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))) or "none"


def default_engine_args(max_masks: int = DEFAULT_MAX_MASKS, mask_memory_bytes: int = DEFAULT_MASK_MEMORY,
                        **overrides) -> dict:
    """vLLM engine arguments for serving masks; user overrides win, except that the load format goes through ours.

    vLLM's default compilation stays on. The user's load format (if any) is the one our loader wraps (loader.py).
    """
    import torch

    args = {
        "worker_extension_cls": "runtime.worker.MaskWorkerExtension",
        "enable_prefix_caching": True,
        "dtype": fast_dtype(),
    }
    if not torch.cuda.is_available():
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    else:  # FULL graphs would skip the hook that maps rows to slots (vllm_compat.py)
        args["compilation_config"] = {"cudagraph_mode": "PIECEWISE"}
    args.update({k: v for k, v in overrides.items() if v is not None})
    extra = dict(args.pop("model_loader_extra_config", None) or {})
    extra["maskserve"] = {"load_format": args.pop("load_format", "auto")}
    args["load_format"] = "maskserve"
    args["model_loader_extra_config"] = extra
    # Slot settings live in additional_config because vLLM hashes it into the compile cache key (load settings
    # are not): a graph with maskserve's op is never reused by plain vLLM, nor under other slot shapes.
    args["additional_config"] = {**(args.get("additional_config") or {}), "maskserve": {
        "max_masks": max_masks, "mask_memory_bytes": mask_memory_bytes, "graph_version": GRAPH_VERSION}}
    return args
