"""Loading a saved PPLLaVA with errors that name what does not fit, before any weight is read."""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer

from ..errors import UserError, read_json
from .config import PPLLaVAConfig
from .modeling import PPLLaVAForConditionalGeneration

TIED_HEAD = "language_model.lm_head.weight"      # absent from checkpoints of LLMs with tied embeddings
PROMPT_TOKENIZER_DIR = "prompt_tokenizer"         # the prompt (CLIP/SigLIP text) tower's tokenizer, beside the LLM's


def expected_shapes(config: PPLLaVAConfig) -> dict[str, tuple[int, ...]]:
    """Every persistent tensor of PPLLaVAForConditionalGeneration(config), built on the meta device."""
    with torch.device("meta"):
        model = PPLLaVAForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_shapes(config: PPLLaVAConfig, shapes: dict[str, tuple[int, ...]], what: str, tied: set[str] = frozenset()) -> None:
    """ValueError naming missing, unexpected and wrongly shaped tensors (`tied` names may be absent)."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(shapes) - set(tied))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(shapes) & set(expected) if shapes[k] != expected[k])
    problems = ([f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}"] if unexpected else []) + \
               [f"{k} is {list(shapes[k])} but the config needs {list(expected[k])}" for k in wrong[:3]]
    if problems:
        raise ValueError(f"{what} does not fit its config: " + "; ".join(problems))


def _checkpoint_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    index = directory / "model.safetensors.index.json"
    files = sorted(set(read_json(index, f"checkpoint {directory}: ")["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    shapes = {}
    for name in files:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory}: {name} is missing")
        try:
            with safe_open(directory / name, framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        except SafetensorError as e:
            raise UserError(f"checkpoint {directory}: {name} is not a complete safetensors file ({e}); it may have "
                            f"been cut short: copy, convert or export it again") from e
    return shapes


def read_config(directory: str | Path) -> PPLLaVAConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory}: no config.json")
    saved = read_json(path, f"checkpoint {directory}: ")
    model_type = saved.get("model_type") if isinstance(saved, dict) else None
    if model_type != PPLLaVAConfig.model_type and isinstance(saved, dict) and saved.get("pooling") == "ppllava":
        raise ValueError(f"checkpoint {directory} is one of the authors' PPLLaVA releases ({model_type}): convert it "
                         f"first: ppllava convert --base {directory} --text-tower <a local copy of "
                         f"{saved.get('clip_weight') or 'the CLIP/SigLIP it names'}> --out <new folder>")
    if model_type != PPLLaVAConfig.model_type:
        raise ValueError(f"checkpoint {directory} is a {model_type!r} model, not ppllava "
                         f"(convert a base model first: ppllava convert --base ... --text-tower ... --out ...)")
    try:
        return PPLLaVAConfig.from_pretrained(directory)
    except (TypeError, KeyError, AttributeError) as e:     # a field of the wrong kind (ValueErrors pass as they are)
        raise UserError(f"checkpoint {directory}: {path.name} does not hold a PPLLaVA config ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); copy it again") from e


def load_model(directory: str | Path, dtype: torch.dtype | None = None, config: PPLLaVAConfig | None = None,
               **kwargs) -> PPLLaVAForConditionalGeneration:
    """from_pretrained after checking every tensor's name and shape against the config (the saved one,
    or `config`: the saved one with settings changed, such as the pooling kernels)."""
    directory = Path(directory)
    config = config or read_config(directory)
    tied = {TIED_HEAD} if config.text_config.tie_word_embeddings else set()
    check_shapes(config, _checkpoint_shapes(directory), f"checkpoint {directory}", tied)
    return PPLLaVAForConditionalGeneration.from_pretrained(directory, config=config, dtype=dtype, **kwargs)


def load_tokenizers(directory: str | Path):
    """(LLM tokenizer, prompt tokenizer) of a checkpoint folder, as `ppllava convert` writes them."""
    directory = Path(directory)
    found = []
    for what, path in (("LLM tokenizer", directory), ("prompt tokenizer", directory / PROMPT_TOKENIZER_DIR)):
        if not (path / "tokenizer_config.json").is_file():
            raise FileNotFoundError(f"checkpoint {directory}: no {what} in {path} (copy one there, e.g. from the "
                                    f"base model or the text tower)")
        try:
            found.append(AutoTokenizer.from_pretrained(path))
        except Exception as e:                  # tokenizers' own parse errors are plain Exceptions
            raise UserError(f"checkpoint {directory}: the {what} in {path} cannot be loaded ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}); its files may be cut short: copy them again") from e
    return tuple(found)


def writable_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`state` in `dtype`, each tensor with a storage of its own, as safetensors needs (DeepSpeed's consolidated
    weights can be views of one flat buffer). Tensors that already are so are passed through, not copied: a
    converted 7B model is held in memory once, not twice."""
    out, seen = {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage()
        whole = (tensor.is_contiguous() and tensor.storage_offset() == 0
                 and storage.nbytes() == tensor.numel() * tensor.element_size())
        if tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        elif not whole or storage.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def save_weights(config: PPLLaVAConfig, state: dict[str, torch.Tensor], directory: str | Path,
                 dtype: torch.dtype, what: str = "weights") -> None:
    """Write config.json and the safetensors weights of `state` (checked against the config) to `directory`."""
    config.npu_fused_kernels = None  # the machine that loads the folder chooses its kernels
    tied = {TIED_HEAD} if config.text_config.tie_word_embeddings else set()
    check_shapes(config, {k: tuple(v.shape) for k, v in state.items()}, what, tied)
    state = writable_state({k: v for k, v in state.items() if k not in tied}, dtype)   # one copy of tied embeddings
    config.dtype = dtype
    config.architectures = [PPLLaVAForConditionalGeneration.__name__]
    save_torch_state_dict(state, str(directory))
    config.save_pretrained(directory)
