"""`mask-serve`: vLLM's OpenAI server plus the `mask` field, mask admin routes, A/B experiments, auth, metrics."""
