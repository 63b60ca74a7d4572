import os

# MKL reads its reproducibility switch when it loads (with torch, just below): the tests that rerun a
# training or alignment and compare bit for bit need it from the start (backends.device.REPRODUCIBLE_ENV).
os.environ.setdefault("MKL_CBWR", "AUTO")

import pytest  # noqa: E402
import torch  # noqa: E402

import backends  # noqa: E402
from backends.dispatch import ENV_VAR  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Without a GPU the Triton kernels (the cuda implementations) run in Triton's interpreter, on CPU tensors. This
# must be set before triton is first imported: triton builds its own @jit helpers (tl.max, ...) then.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _children_temp(tmp_path_factory):
    """The tests' subprocesses keep their temporary files (torchrun's torchelastic_* log folders, ...) under
    pytest's own temporary folder, which pytest prunes, instead of leaving them in /tmp."""
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))


@pytest.fixture(autouse=True)
def _default_ops(monkeypatch):
    """Every test starts and ends with auto dispatch and no PPLLAVA_OPS."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    backends.configure_ops(None)
    yield
    backends.configure_ops(None)


@pytest.fixture(params=["native", "cpu"])
def pool_impl(request):
    """Run the test once per prompt_guided_pool implementation available on the CPU."""
    backends.configure_ops({"prompt_guided_pool": request.param})
    return request.param


@pytest.fixture(params=["native", "cpu"])
def relevance_impl(request):
    backends.configure_ops({"relevance_map": request.param})
    return request.param
