"""maskserve's loggers, named under vLLM's `vllm` logger: the one vLLM configures (vllm/logger.py,
DEFAULT_LOGGING_CONFIG, with VLLM_CONFIGURE_LOGGING and VLLM_LOGGING_LEVEL). So our lines come out with vLLM's format,
level and stream in the API server, the engine's worker processes and `mask-eval` alike; a logger outside that
namespace reaches only Python's last-resort handler, warnings and up, unformatted. It lives in mask_store, the
package every other one imports, so the store's own lines (`vllm.maskserve.store`) come out the same way."""

import logging

NAMESPACE = "vllm.maskserve"


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"{NAMESPACE}.{component}")
