import os
import subprocess
import sys
import warnings

import pytest
import torch

from backends import DeviceUnavailable, device_facts, resolve_device
from backends.device import REPRODUCIBLE_ENV, dist_backend, dtype_from_name, reproducible_numerics

no_accelerator = pytest.mark.skipif(torch.accelerator.is_available(), reason="an accelerator is present")


def test_cpu_facts():
    facts = device_facts("cpu")
    assert (facts.type, facts.dist_backend, facts.visible_devices_env) == ("cpu", "gloo", None)
    assert torch.bfloat16 in facts.autocast_dtypes
    assert facts.numerics["float32_matmul_precision"] == torch.get_float32_matmul_precision()


def test_collective_backend_per_device_type():
    assert (dist_backend("cuda"), dist_backend("npu"), dist_backend("cpu")) == ("nccl", "hccl", "gloo")


@no_accelerator
def test_auto_is_cpu_without_an_accelerator():
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None)


@pytest.mark.skipif("torch_npu" in sys.modules, reason="torch_npu is installed")
def test_npu_without_torch_npu_is_one_clear_error():
    with pytest.raises(DeviceUnavailable, match=r"device 'npu' needs the torch_npu package.*install torch-npu.*set_env.sh"):
        resolve_device("npu:0")


@no_accelerator
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceUnavailable, match="device 'cuda' is not available here"):
        resolve_device("cuda")


def test_unknown_device_and_dtype():
    with pytest.raises(DeviceUnavailable, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="unknown dtype 'half-ish'"):
        dtype_from_name("half-ish")


def test_importing_the_project_never_imports_torch_npu():
    code = "import sys, backends, ppllava, ppllava.cli, ppllava.parity; print('torch_npu' in sys.modules)"
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_first_npu_resolution_sets_the_hf32_switches_explicitly_and_records_them(monkeypatch):
    from types import SimpleNamespace

    from backends import device

    # torch_npu's defaults, on the namespace it adds as torch.npu (conv HF32 on, matmul HF32 off)
    npu = SimpleNamespace(matmul=SimpleNamespace(allow_hf32=False), conv=SimpleNamespace(allow_hf32=True),
                          is_available=lambda: False)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setattr(device, "_policy_applied", set())
    with pytest.raises(DeviceUnavailable):
        resolve_device("npu")  # this torch cannot parse 'npu'; the switches are set before that
    assert device.numerics_switches("npu") == {"float32_matmul_precision": torch.get_float32_matmul_precision(),
                                               "matmul.allow_hf32": False, "conv.allow_hf32": False}
    npu.matmul.allow_hf32 = True  # code may choose HF32 afterwards: kept, and recorded as it is
    with pytest.raises(DeviceUnavailable):
        resolve_device("npu:0")
    assert device.numerics_switches("npu")["matmul.allow_hf32"] is True


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="MKL is not this torch's CPU BLAS")
def test_reproducible_numerics_says_when_the_process_started_without_mkls_switch(monkeypatch):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        monkeypatch.delenv("MKL_CBWR", raising=False)
        with pytest.warns(UserWarning, match="MKL_CBWR not set when this process started.*MKL_CBWR=AUTO"):
            assert reproducible_numerics() is before
        assert torch.are_deterministic_algorithms_enabled() and os.environ["MKL_CBWR"] == "AUTO"   # for children
        monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")            # the user's own value is kept, and no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert reproducible_numerics() is True
        assert os.environ["MKL_CBWR"] == "COMPATIBLE" and set(REPRODUCIBLE_ENV) == {"MKL_CBWR"}
    finally:
        torch.use_deterministic_algorithms(before)
