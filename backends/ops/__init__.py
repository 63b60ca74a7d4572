"""The two custom ops, each a CustomOp with its native spec and registered implementations."""

from ..dispatch import CustomOp, register_op
from . import pooling, relevance

relevance_map = register_op(CustomOp("relevance_map", check=relevance.check_args, native=relevance.relevance_native))
relevance_map.register("cpu", lambda: relevance.relevance_cpu)

prompt_guided_pool = register_op(CustomOp("prompt_guided_pool", check=pooling.check_args, native=pooling.pool_native))


def _load_pool_cpu():
    from .pooling_cpu import pool_cpu
    return pool_cpu


prompt_guided_pool.register("cpu", _load_pool_cpu)

__all__ = ["relevance_map", "prompt_guided_pool"]
