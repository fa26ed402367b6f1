"""Evaluation: perplexity (zero-shot, few-shot and speed reports build on the same model access)."""

from .perplexity import perplexity

__all__ = ["perplexity"]
