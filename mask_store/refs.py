"""Names and references, parsed once into small immutable values.

    NAME        the newest version (same as NAME:latest)
    NAME@N      version N, which never changes
    NAME:TAG    whatever version TAG points at now
    DIGEST      12 to 64 hex digits of a mask's digest

Mask names never look like digests, and `base` and `ab` are reserved (the server uses `base` for the bare model
and `ab:NAME` for experiments), so every string has one reading.
"""

import re
from dataclasses import dataclass

from .errors import InvalidRef

LATEST = "latest"
RESERVED_NAMES = frozenset({"base", "ab"})
MAX_NAME_CHARS = MAX_TAG_CHARS = 128
NAME_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}"  # masks; serve/'s experiment and arm names
_NAME = re.compile(NAME_PATTERN)
_TAG = re.compile(rf"[A-Za-z][A-Za-z0-9._-]{{0,{MAX_TAG_CHARS - 1}}}")
MAX_REF_CHARS = MAX_NAME_CHARS + 1 + MAX_TAG_CHARS  # the longest valid REF, NAME:TAG
_DIGEST_PREFIX = re.compile(r"[0-9a-f]{12,64}")
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit and int() also take "١" and "²"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRef(
            f"invalid mask name {name!r}: use letters, digits, '.', '_' or '-' (not first), at most {MAX_NAME_CHARS} characters"
        )
    if name.lower() in RESERVED_NAMES:
        raise InvalidRef(f"invalid mask name {name!r}: it is reserved")
    if _DIGEST_PREFIX.fullmatch(name):
        raise InvalidRef(f"invalid mask name {name!r}: it would read as a digest")
    return name


def check_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise InvalidRef(f"invalid tag {tag!r}: start with a letter; then letters, digits, '.', '_' or '-'")
    return tag


@dataclass(frozen=True)
class MaskRef:
    """Exactly one of (version, tag, digest_prefix) is set; name is None only for a digest."""

    name: str | None
    version: int | None = None
    tag: str | None = None
    digest_prefix: str | None = None

    @classmethod
    def parse(cls, text: str) -> "MaskRef":
        text = text.strip()
        if _DIGEST_PREFIX.fullmatch(text):
            return cls(None, digest_prefix=text)
        if "@" in text:
            name, _, version = text.partition("@")
            if not _VERSION.fullmatch(version) or int(version) < 1:
                raise InvalidRef(f"invalid ref {text!r}: the version after '@' is a number from 1 in ASCII digits 0-9")
            return cls(check_name(name), version=int(version))
        if ":" in text:
            name, _, tag = text.partition(":")
            return cls(check_name(name), tag=check_tag(tag))
        if not text:
            raise InvalidRef("empty mask ref")
        return cls(check_name(text), tag=LATEST)

    def __str__(self) -> str:
        if self.digest_prefix:
            return self.digest_prefix
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}:{self.tag}"
