"""Mask Fine-Tuning (MFT) and the random and magnitude baselines: learning which weights a task removes."""
