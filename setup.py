"""Installs two import packages: `ppllava` (model, data, training, CLI) and `backends` (device facts, ops).

torch is required but deliberately loose (>= 2.6): install the build for your hardware first (CPU,
CUDA, or the one torch-npu pins) and this package will use it, never replace it. `make test` and
`make demo` do that for you in .venv.
"""

from setuptools import find_packages, setup

setup(
    name="ppllava",
    version="0.1.0",
    description="PPLLaVA: prompt-guided pooling video LLM, one codebase for CPU, NVIDIA GPUs and Ascend NPUs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ppllava", "ppllava.*", "backends", "backends.*"]),
    package_data={"ppllava.model": ["chat_templates/*.jinja"]},
    install_requires=[
        "torch>=2.6",
        "transformers>=5.24,<6",  # the dataclass configs (SubConfigSpec) of 5.2x; tested with 5.24
        "safetensors",
        "tokenizers",
        "sentencepiece",  # the slow tokenizers some bases ship (SigLIP's SiglipTokenizer, Llama/Vicuna's)
        "protobuf",  # read by sentencepiece-based tokenizer conversions
        "numpy",
        "pyyaml",
        "tqdm",
        "pillow",  # images and frame folders; the resize itself is torch (ppllava/data/preprocess.py)
    ],
    extras_require={
        "train": ["deepspeed>=0.16"],
        "cuda": ["triton>=3.1"],
        "npu": ["torch-npu"],  # needs the CANN toolkit; version must match torch (see README)
        # decord has no aarch64 wheel (most Ascend hosts): PyAV is the fallback reader there. The PyAV range is
        # what `make test-av` tests: the readers' tests on its lowest and highest release (Makefile AV_VERSIONS)
        "video": ["decord>=0.6; platform_machine == 'x86_64'", "av>=12,<19"],
        # needs FFmpeg 4-8 shared libraries on the system and a release that matches your torch
        "torchcodec": ["torchcodec"],
        # ppllava.evaluate.lmms_adapter: PPLLaVA in lmms-eval's task suite. lmms-eval 0.7.3 pins av<16 and needs
        # filelock 3.x (its evaluator patches filelock._api, gone in 4.x). It pulls torchvision, which on a CPU-only
        # torch does not load and breaks transformers' imports: README "lmms-eval" removes it there (make lmms)
        "lmms": ["lmms-eval==0.7.3", "av>=12,<16", "filelock>=3.16,<4"],
        # only to compare `ppllava align`'s losses with open_clip's (tests/test_align.py); it pulls torchvision,
        # which breaks transformers' imports where it cannot load (CPU-only machines): never in core or dev
        "openclip": ["open_clip_torch"],
        # triton: CI checks the cuda kernels in its interpreter on the CPU (Linux wheels only; ~290 MB)
        "dev": ["pytest>=8", "av>=12,<19", "decord>=0.6; platform_machine == 'x86_64'", "deepspeed>=0.16",
                "triton>=3.1; platform_system == 'Linux'"],
    },
    entry_points={"console_scripts": ["ppllava=ppllava.cli:main"],
                  "lmms_eval.models": ["ppllava=ppllava.evaluate.lmms_model:manifest"]},
)
