"""Applying masks to a live model: decoded masks in memory, the masked linear math, the vLLM worker extension,
and the plain-transformers reference path used as the test oracle."""
