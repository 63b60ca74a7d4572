"""Inference: load a checkpoint on any device, read videos, answer questions (one, a batch, a chat)."""

from .pipeline import Answer, Chat, Pipeline, Visual

__all__ = ["Pipeline", "Chat", "Visual", "Answer"]
