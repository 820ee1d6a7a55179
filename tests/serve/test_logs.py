"""maskserve's log lines reach vLLM's configured handler at INFO, and the server says what it does with masks."""

import logging

import pytest
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging_if_needed

import mask_store.local
import mask_store.paths
import mask_store.s3
import runtime.engine
import runtime.worker
import serve.masks
import serve.plugin
import serve.router
from mask_store.format import save_mask
from mask_store.store import Store
from tests.mask_store.helpers import random_mask

from .fake_vllm import build, connect


@pytest.fixture(autouse=True)
def vllm_logging():
    configure_logging_if_needed(LoggingConfig())  # what AsyncLLM and LLM do in every vLLM process


def test_every_logger_is_under_vllms_configured_logger():
    vllm_logger = logging.getLogger("vllm")
    assert vllm_logger.handlers  # what VLLM_CONFIGURE_LOGGING set up
    modules = (runtime.engine, runtime.worker, serve.masks, serve.plugin, serve.router)
    stores = (mask_store.local, mask_store.s3, mask_store.paths)  # their warnings came out unformatted
    for logger in [m.logger for m in modules] + [m.log for m in stores]:
        assert logger.name.startswith("vllm.maskserve."), logger.name
        assert logger.getEffectiveLevel() <= logging.INFO  # a logger outside `vllm` drops INFO (root: WARNING)


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_loads_unloads_and_experiments_are_logged(tmp_path):
    store = Store(tmp_path / "store")
    save_mask(random_mask(0), tmp_path / "m.mask")
    store.push(tmp_path / "m.mask", "math")
    lines = Lines()
    logging.getLogger("vllm.maskserve").addHandler(lines)  # `vllm` does not propagate to the root, so no caplog
    try:
        app, _ = build(store.uri, store.resolve("math").base_id, tmp_path)
        with connect(app) as client:
            assert client.post("/v1/masks/load", json={"mask": "math"}).status_code == 200
            assert client.post("/v1/masks/unload", json={"mask": "math"}).status_code == 200
            spec = {"name": "e", "arms": [{"mask": "base", "weight": 1}, {"mask": "math", "weight": 3}]}
            assert client.post("/v1/experiments", json=spec).status_code == 200
    finally:
        logging.getLogger("vllm.maskserve").removeHandler(lines)
    text = "\n".join(lines.lines)
    assert "masks for base-model" in text and "admin routes need the admin key" in text
    assert "loaded mask math@1" in text and "unloaded mask math@1" in text
    assert "experiment e set: base x1, math x3" in text
