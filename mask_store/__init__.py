"""The .mask format, base-model identity and the versioned mask store."""

from .identity import base_id
from .errors import BaseMismatch, CorruptMask, InvalidRef, MaskError, ModelError, NotFound, StoreError
from .format import encode_mask, load_mask, parse_mask, read_mask_file, save_mask
from .mask import Mask, TensorMask
from .refs import MaskRef
from .store import Store, VersionRecord

__all__ = [
    "BaseMismatch", "CorruptMask", "InvalidRef", "Mask", "MaskError", "MaskRef", "ModelError", "NotFound",
    "Store", "StoreError", "TensorMask", "VersionRecord", "base_id", "encode_mask", "load_mask", "parse_mask",
    "read_mask_file", "save_mask",
]
