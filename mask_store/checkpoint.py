"""Reading a Hugging Face-format model folder's safetensors files without loading them.

The format is an 8-byte length, a JSON header (dtype, shape, byte range per tensor), then raw little-endian data;
the header alone tells what the model holds and where, which is all the store, the trainer's target selection and
the runtime's weight lookups need.
"""

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError


@dataclass(frozen=True)
class TensorLocation:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in `file`
    end: int


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a model folder")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir}: no *.safetensors weights (convert the model to safetensors first)")
    return files


def read_header(path: Path) -> dict[str, TensorLocation]:
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ModelError(f"{path}: not a safetensors file")
        (n,) = struct.unpack("<Q", prefix)
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ModelError(f"{path}: unreadable safetensors header") from e
    header.pop("__metadata__", None)
    start = 8 + n
    return {
        name: TensorLocation(path, info["dtype"], tuple(info["shape"]), start + info["data_offsets"][0],
                             start + info["data_offsets"][1])
        for name, info in header.items()
    }


def tensor_locations(model_dir: str | os.PathLike) -> dict[str, TensorLocation]:
    """Every tensor in the folder; a name in two files is an error."""
    out: dict[str, TensorLocation] = {}
    for path in weight_files(model_dir):
        for name, loc in read_header(path).items():
            if name in out:
                raise ModelError(f"{model_dir}: tensor {name} appears in more than one weight file")
            out[name] = loc
    return out


def tensor_shapes(model_dir: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    return {name: loc.shape for name, loc in tensor_locations(model_dir).items()}
