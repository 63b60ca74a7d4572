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


def _load_relevance_cuda():  # Triton kernels: ImportError without triton or a GPU, and dispatch runs native
    from .triton_support import require_launchable
    require_launchable()
    from .relevance_triton import relevance_triton
    return relevance_triton


def _load_pool_cuda():
    from .triton_support import require_launchable
    require_launchable()
    from .pooling_triton import pool_triton
    return pool_triton


relevance_map.register("cuda", _load_relevance_cuda)
prompt_guided_pool.register("cuda", _load_pool_cuda)


def _load_relevance_npu():  # plain torch ops: loads (and runs, on CPU tensors) without torch_npu
    from .relevance_npu import relevance_npu
    return relevance_npu


def _load_pool_npu():
    from .pooling_npu import pool_npu
    return pool_npu


relevance_map.register("npu", _load_relevance_npu)
prompt_guided_pool.register("npu", _load_pool_npu)

__all__ = ["relevance_map", "prompt_guided_pool"]
