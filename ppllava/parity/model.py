"""Whole-checkpoint parity: dump every module that matters on one machine, find where another one departs.

`record_model` runs a checkpoint once on a video and a question and writes, in execution order, the
output of each module that matters (forward hooks on the model's modules; the two backend ops through
wrappers put in place for the run, never by changing model code):

    input/pixel_values                       the preprocessed frames
    vision_tower...embeddings, ...layers.i   each vision layer
    btadapter                                (models with a BT-Adapter)
    prompt_pooling.prompt_tower              the prompt tower's text feature
    prompt_pooling.patch_projection          its input: the vision features at the feature layer; its
                                             output: the patch embeddings
    relevance_map, prompt_guided_pool        the relevance map, the pooled tokens
    multi_modal_projector                    the visual tokens in the LLM's space
    language_model...layers.i, ...norm       every LLM decoder layer's hidden states
    language_model.lm_head                   the logits
and the greedy tokens of a short answer; with `grads`, the gradients of the trainable groups for a fixed
loss (next-token loss on the prompt's text). The decoded frames and every token id go into the file too,
so the other machine feeds the same inputs; it decodes the video itself only to report a decoder
difference, apart from the model's.

Each module's input is stored as well, unless it is a tensor already stored (the previous layer's output,
say), so `check_model` can re-run each module on the golden input of that module, as msprobe's compare
does: a module whose output is out of tolerance in the chained run but within it on the golden input only
inherits an earlier module's error; one out of tolerance on its golden input adds its own.

Size: by default the LLM's hidden states keep every visual token's position, the text before the first
one (the system prompt, which every later position attends to) and the last SAMPLE_TEXT text positions;
the logits the last SAMPLE_TEXT positions; the vision layers (and the pixels) SAMPLE_FRAMES frames. `full`
keeps every tensor whole. A module re-run on a sampled golden input takes the rows that were not stored
from this machine's own run: exact for the vision layers (their frames do not mix) and for the LLM's
positions up to the last visual token; only text between the visual tokens and the last SAMPLE_TEXT
positions (a long question) carries this machine's error into the re-run.
"""

from __future__ import annotations

import hashlib
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import backends
from backends.device import dtype_from_name, dtype_name

from ..errors import UserError
from . import goldfile
from .compare import Comparison, compare

SAMPLE_TEXT = 16          # last text positions kept of the LLM's hidden states and logits
SAMPLE_FRAMES = 3         # frames kept of each vision layer's output: the first, the middle and the last
GRAD_SAMPLE = 1024        # elements kept of each parameter's gradient
OPS = ("relevance_map", "prompt_guided_pool")
INPUT_KEYS = ("input_ids", "attention_mask", "prompt_input_ids", "prompt_attention_mask", "visual_frames",
              "visual_is_video", "visual_sample", "visual_image_size")


# -- the checkpoint, the video, the question ------------------------------------------------------------
def checkpoint_hash(directory: str | Path) -> dict:
    """sha256 of config.json and the weight files, in name order."""
    directory = Path(directory)
    files = [directory / "config.json", *sorted(directory.glob("*.safetensors"))]
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(path.name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
    return {"sha256": digest.hexdigest(), "files": [p.name for p in files if p.is_file()]}


def _reader_label(reader) -> str:
    try:
        library = reader.library()
        return f"{reader.name} {getattr(library, '__version__', '?')}"
    except Exception:                                    # a reader without a library (a folder of frames)
        return str(getattr(reader, "name", type(reader).__name__))


def decode(path: str | Path, frames: int, reader: str = "auto") -> tuple[torch.Tensor, list[int], bool, str]:
    """(uint8 (T, H, W, 3) frames, their indices, is_video, the decoder's name) as Pipeline.read decodes them."""
    from ..data import get_reader, read_image
    from ..data.readers import READERS, FrameFolderReader
    from ..data.sampling import read_clip
    from ..infer.pipeline import IMAGE_SUFFIXES

    path = str(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"--video {path} does not exist")
    if path.lower().endswith(IMAGE_SUFFIXES):
        return read_image(path), [0], False, "image"
    chosen = FrameFolderReader() if Path(path).is_dir() else get_reader(reader)
    with chosen.open(path) as clip:
        pixels, indices = read_clip(clip, frames, train=False)
        used = getattr(clip, "reader", None)                 # "auto" hands a file on: name the one that read it
    auto = getattr(chosen, "name", None) == "auto" and used in READERS
    return pixels, indices, True, _reader_label(READERS[used]() if auto else chosen)


def _messages(prompt: str, is_video: bool) -> list[dict]:
    if not prompt or not prompt.strip():
        raise UserError("--prompt is empty: ask a question")
    return [{"role": "user", "content": [{"type": "video" if is_video else "image"},
                                         {"type": "text", "text": prompt.strip()}]}]


def _token_inputs(pipe, frames: torch.Tensor, indices, is_video: bool, prompt: str) -> dict[str, torch.Tensor]:
    """Every id the model reads (on the CPU), through the pipeline's own path (Pipeline.inputs)."""
    from ..infer.pipeline import Visual

    visual = Visual("<parity>", is_video, list(indices), frames, patches=None)
    out = pipe.inputs(visual, _messages(prompt, is_video))
    out.pop("patches", None)
    return {k: v.cpu() for k, v in out.items()}


# -- sampling ----------------------------------------------------------------------------------------
@dataclass
class Sampling:
    full: bool
    frames: int                      # F: frames of the vision tower's batch
    length: int                      # L: positions of the LLM's input
    positions: list[int]             # kept LLM positions: every visual token and the last text ones

    @classmethod
    def of(cls, model, inputs, full: bool) -> "Sampling":
        ids = inputs["input_ids"][0]
        visual = model.placeholder_mask(ids[None])[0].nonzero().flatten().tolist()
        last = list(range(max(0, len(ids) - SAMPLE_TEXT), len(ids)))
        prefix = list(range(visual[0] if visual else 0))        # what every later position attends to
        frames = int(inputs["visual_frames"].sum()) if "visual_frames" in inputs else 0
        return cls(full, frames, len(ids), sorted(set(prefix) | set(visual) | set(last)))

    def spec(self, group: str | None, t: torch.Tensor) -> dict | None:
        """Which rows of `t` are kept: {"axis": a, "rows": [...]}, or None for the whole tensor."""
        if self.full or group is None or t.ndim < 2:
            return None
        if group == "vision" and t.shape[0] == self.frames:
            axis, rows = 0, sorted({0, self.frames // 2, self.frames - 1})
        elif group == "llm" and t.shape[1] == self.length:
            axis, rows = 1, self.positions
        elif group == "logits" and t.shape[1] == self.length:
            axis, rows = 1, list(range(max(0, self.length - SAMPLE_TEXT), self.length))
        else:
            return None
        return None if len(rows) >= t.shape[axis] else {"axis": axis, "rows": rows}


def take(t: torch.Tensor, spec: dict | None) -> torch.Tensor:
    if spec is None:
        return t
    return t.index_select(spec["axis"], torch.tensor(spec["rows"], device=t.device))


def _put(local: torch.Tensor, golden: torch.Tensor, spec: dict | None) -> torch.Tensor:
    """`local` with its kept rows replaced by the golden's (the whole of it when nothing was sampled)."""
    golden = golden.to(device=local.device, dtype=local.dtype)
    if spec is None:
        return golden.reshape(local.shape)
    return local.index_copy(spec["axis"], torch.tensor(spec["rows"], device=local.device), golden)


# -- the modules that matter ---------------------------------------------------------------------------
def _first_list(module: nn.Module) -> tuple[str, nn.ModuleList] | None:
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and len(child):
            return name, child
    return None


def _feature_index(model, layers) -> int:
    """How many vision layers run: those up to config.vision_feature_layer (TowerFamily.feature_layer)."""
    return model.config.vision_feature_layer % (len(layers) + 1)


def unused_vision_layers(model) -> set[str]:
    """Names of the vision layers after the feature layer: they never run (a golden recorded before the tower
    stopped at its feature layer holds them; their outputs reached nothing)."""
    names = {id(m): n for n, m in model.named_modules()}
    layers = _first_list(model.vision_tower)
    return set() if layers is None else {names[id(m)] for m in layers[1][_feature_index(model, layers[1]):]}


def taps(model) -> list[tuple[str, nn.Module, str | None]]:
    """(name, module, sampling group) of each module hooked, found by structure (any tower, any LLM)."""
    names = {id(m): n for n, m in model.named_modules()}
    out: list[tuple[str, nn.Module, str | None]] = []
    tower = model.vision_tower
    embeddings = next((m for n, m in tower.named_modules() if n.split(".")[-1] == "embeddings"), None)
    if embeddings is not None:
        out.append((names[id(embeddings)], embeddings, "vision"))
    layers = _first_list(tower)
    if layers is not None:                   # the layers up to the feature layer: the tower stops there
        out += [(names[id(m)], m, "vision") for m in layers[1][:_feature_index(model, layers[1])]]
    if getattr(model, "btadapter", None) is not None:
        out.append(("btadapter", model.btadapter, "vision"))
    pooling = model.prompt_pooling
    out.append((names[id(pooling.prompt_tower)], pooling.prompt_tower, None))
    out.append((names[id(pooling.patch_projection)], pooling.patch_projection, None))
    out.append(("multi_modal_projector", model.multi_modal_projector, None))
    llm = model.language_model
    layers = _first_list(llm)
    if layers is not None:
        out += [(names[id(m)], m, "llm") for m in layers[1]]
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if isinstance(norm, nn.Module):
        out.append((names[id(norm)], norm, "llm"))
    head = llm.get_output_embeddings()
    if head is not None:
        out.append((names[id(head)], head, "logits"))
    return out


def _output_tensor(output) -> torch.Tensor | None:
    """The tensor a module hands on: itself, the first of a tuple, or a tower's text feature."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("text_embeds", "pooler_output"):        # the prompt tower's feature (CLIP, SigLIP)
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


def _float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _module_input(args, kwargs) -> tuple | None:
    """Where a module's main input is: ("kw", "hidden_states"), ("arg", i) or ("kw", name)."""
    if _float(kwargs.get("hidden_states")):
        return ("kw", "hidden_states")
    for i, a in enumerate(args):
        if _float(a):
            return ("arg", i)
    for k, v in kwargs.items():
        if _float(v):
            return ("kw", k)
    return None


def _get(args, kwargs, where):
    return args[where[1]] if where[0] == "arg" else kwargs[where[1]]


def _replace(args, kwargs, where, value):
    args, kwargs = list(args), dict(kwargs)
    if where[0] == "arg":
        args[where[1]] = value
    else:
        kwargs[where[1]] = value
    return tuple(args), kwargs


# -- recording and replaying one forward -----------------------------------------------------------------
@dataclass
class Step:
    """One row of a check: the chained comparison, and the one of the module re-run on its golden input."""
    name: str
    kind: str                        # input | module | op | logits | grad | loss
    dtype: str
    shape: list
    chained: Comparison
    alone: Comparison | None = None  # None: nothing to re-run (integer inputs), or not re-run
    status: str = ""                 # ok | FIRST | inherited | new | differs (grads) | input | missing | unused
    note: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["chained"] = self.chained.as_dict()
        d["alone"] = self.alone.as_dict() if self.alone else None
        return d


def _fail(reason: str) -> Comparison:
    nan = float("nan")
    return Comparison(nan, nan, nan, nan, nan, (reason,))


class Tap:
    """Hooks on the modules that matter and wrappers on the two ops, for one forward.

    Recording: `entries` (the header's list, in execution order) and `tensors`. Checking against a golden
    run: `steps`, one per entry met."""

    def __init__(self, model, sampling: Sampling, dtype: str, golden: tuple[list, dict] | None = None):
        self.model, self.sampling, self.dtype = model, sampling, dtype
        self.entries: list[dict] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.steps: list[Step] = []
        self.golden = None if golden is None else {e["name"]: e for e in golden[0]}
        self.golden_tensors = None if golden is None else golden[1]
        self.counts: dict[str, int] = {}
        self.replaying = False
        self.previous: tuple[str, torch.Tensor, dict | None] | None = None
        self.whole: list[tuple[str, torch.Tensor]] = []          # tensors stored whole: candidates for inputs

    def key(self, name: str) -> str:
        return f"{self.dtype}/{name}"

    # -- a call seen --------------------------------------------------------------------------------------
    def seen(self, name: str, kind: str, group: str | None, inputs: list[torch.Tensor], output: torch.Tensor,
             rerun) -> None:
        count = self.counts.get(name, 0)
        self.counts[name] = count + 1
        name = name if not count else f"{name}#{count}"
        if self.golden is None:
            self._record(name, kind, group, inputs, output)
        else:
            self._check(name, kind, inputs, output, rerun)

    def _record(self, name, kind, group, inputs, output):
        spec = self.sampling.spec(group, output)
        entry = {"name": name, "kind": kind, "shape": list(output.shape), "spec": spec, "key": self.key(name),
                 "inputs": []}
        for j, t in enumerate(inputs):
            ispec = self.sampling.spec(group, t)
            ref = self._same_as(t, ispec)
            if ref is not None:
                entry["inputs"].append({"ref": ref, "shape": list(t.shape), "spec": ispec})
                continue
            key = f"{self.key(name)}:in{j}"
            self.tensors[key] = take(t, ispec).detach().cpu()
            entry["inputs"].append({"key": key, "shape": list(t.shape), "spec": ispec})
            if ispec is None:
                self.whole.append((key, t.detach()))
        self.tensors[entry["key"]] = take(output, spec).detach().cpu()
        self.entries.append(entry)
        self.previous = (entry["key"], output.detach(), spec)
        if spec is None:
            self.whole.append((entry["key"], output.detach()))

    def _same_as(self, t, spec) -> str | None:
        """The key of a tensor already stored with exactly these values (and rows), if there is one."""
        if self.previous is not None:
            key, prev, pspec = self.previous
            if prev.shape == t.shape and pspec == spec and torch.equal(prev, t):
                return key
        if spec is None:
            for key, other in reversed(self.whole):
                if other.numel() == t.numel() and other.dtype == t.dtype and torch.equal(other.reshape(-1), t.reshape(-1)):
                    return key
        return None

    def _golden_input(self, item: dict) -> torch.Tensor:
        return self.golden_tensors[item.get("key") or item["ref"]]

    def _check(self, name, kind, inputs, output, rerun):
        entry = self.golden.get(name)
        dtype = dtype_from_name(self.dtype)
        if entry is None:
            self.steps.append(Step(name, kind, self.dtype, list(output.shape), _fail("not in the golden file"),
                                   status="missing"))
            return
        if list(output.shape) != entry["shape"]:
            chained = _fail(f"shape {tuple(output.shape)} != golden {tuple(entry['shape'])}")
            self.steps.append(Step(name, kind, self.dtype, list(output.shape), chained))
            return
        golden_out = self.golden_tensors[entry["key"]]
        chained = compare(take(output, entry["spec"]), golden_out, dtype, "model")
        alone = chained if not inputs else None      # integer inputs only (ids): the golden input is this one's
        if rerun is not None and inputs and len(inputs) == len(entry["inputs"]):
            replaced = [_put(t, self._golden_input(item), item["spec"]) for t, item in zip(inputs, entry["inputs"])]
            self.replaying = True
            try:
                again = rerun(replaced)
            finally:
                self.replaying = False
            alone = compare(take(again, entry["spec"]), golden_out, dtype, "model")
        self.steps.append(Step(name, kind, self.dtype, entry["shape"], chained, alone))

    # -- installing the hooks ---------------------------------------------------------------------------
    @contextmanager
    def installed(self):
        handles = []
        for name, module, group in taps(self.model):
            handles.append(module.register_forward_hook(self._hook(name, group), with_kwargs=True))
        originals = {op: getattr(backends, op) for op in OPS}
        for op in OPS:
            setattr(backends, op, self._wrap(op, originals[op]))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for op, fn in originals.items():
                setattr(backends, op, fn)

    def _hook(self, name, group):
        def hook(module, args, kwargs, output):
            if self.replaying:
                return None
            out = _output_tensor(output)
            if out is None or not out.is_floating_point():
                return None
            where = _module_input(args, kwargs)
            inputs = [] if where is None else [_get(args, kwargs, where)]
            cached = kwargs.get("past_key_values", kwargs.get("past_key_value"))
            rerun = None
            if where is not None and cached is None:
                def rerun(replaced):
                    # forward, not __call__: the module's hooks stay out of it (transformers collects
                    # hidden_states with hooks on the layers; a second call would join that list)
                    a, k = _replace(args, kwargs, where, replaced[0])
                    return _output_tensor(module.forward(*a, **k))
            kind = "logits" if group == "logits" else "module"
            self.seen(name, kind, group, inputs, out, rerun)
            return None
        return hook

    def _wrap(self, op, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            if self.replaying:
                return out
            positions = [i for i, a in enumerate(args) if _float(a)]

            def rerun(replaced):
                a = list(args)
                for i, value in zip(positions, replaced):
                    a[i] = value
                return fn(*a, **kwargs)
            self.seen(op, "op", None, [args[i] for i in positions], out, rerun)
            return out
        return wrapped


# -- one run: forward, answer, grads ---------------------------------------------------------------------
@dataclass
class Run:
    entries: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    answer: list = field(default_factory=list)
    text: str = ""
    grads: dict = field(default_factory=dict)


def _on(pipe, inputs):
    return {k: v.to(pipe.device) for k, v in inputs.items()}


def _pixel_values(pipe, frames, is_video: bool):
    """As the pipeline feeds them: the frames preprocessed, or an image's anyres crops."""
    return pipe.processor.pixels(frames.to(pipe.device), is_video).to(pipe.model.dtype)


def _answer(pipe, pixel_values, inputs, max_new_tokens: int) -> list[int]:
    out = pipe.model.generate(**_on(pipe, inputs), pixel_values=pixel_values, max_new_tokens=max_new_tokens,
                              do_sample=False, pad_token_id=pipe.tokenizer.pad_token_id, eos_token_id=pipe.stop_ids)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stop = next((i for i, t in enumerate(new) if t in pipe.stop_ids), len(new))
    return new[:stop]


def _grad_sample(name: str, numel: int, full: bool) -> torch.Tensor | None:
    if full or numel <= GRAD_SAMPLE:
        return None
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randperm(numel, generator=gen)[:GRAD_SAMPLE].sort().values


def _grads(pipe, pixel_values, inputs, full: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """The loss and the (sampled) gradients of each trainable group, for next-token loss on the prompt."""
    model = pipe.model
    trains = model.apply_trainable()
    model.zero_grad(set_to_none=True)
    on = _on(pipe, inputs)
    with torch.enable_grad():
        out = model(pixel_values=pixel_values, **on, labels=on["input_ids"], use_cache=False)
        out.loss.backward()
    groups, tensors = {}, {"loss": out.loss.detach().float().reshape(1).cpu()}
    for group, params in model.parameter_groups().items():
        if not trains.get(group):
            continue
        parts, layout = [], []
        for pname, p in params:
            g = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten()
            index = _grad_sample(pname, g.numel(), full)
            part = g if index is None else g[index.to(g.device)]
            parts.append(part.cpu())
            layout.append([pname, part.numel()])
        if parts:
            tensors[f"grad/{group}"] = torch.cat(parts)
            groups[group] = layout
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    return groups, tensors


def run_once(pipe, frames, inputs, dtype: str, full: bool, max_new_tokens: int, grads: bool,
             golden: dict | None = None, golden_tensors: dict | None = None) -> Run:
    """Record (golden None) or check one dtype's run."""
    model = pipe.model
    sampling = Sampling.of(model, inputs, full)
    entries = golden["entries"] if golden else None
    tap = Tap(model, sampling, dtype, None if golden is None else (entries, golden_tensors))
    run = Run()
    with torch.no_grad():
        pixel_values = _pixel_values(pipe, frames, bool(inputs["visual_is_video"][0]))
        tap.seen("input/pixel_values", "input", "vision", [], pixel_values, None)
        with tap.installed():
            model(pixel_values=pixel_values, **_on(pipe, inputs), use_cache=False)
        run.answer = _answer(pipe, pixel_values, inputs, max_new_tokens)
    run.text = pipe.tokenizer.decode(run.answer, skip_special_tokens=True).strip()
    if golden is None:
        run.entries, run.tensors = tap.entries, {k: v for k, v in tap.tensors.items()}
        if grads:
            layout, tensors = _grads(pipe, pixel_values, inputs, full)
            run.grads = layout
            run.tensors.update({f"{dtype}/{k}": v for k, v in tensors.items()})
        return run
    run.steps = tap.steps
    met, unused = {s.name for s in run.steps}, unused_vision_layers(pipe.model)
    for e in entries:                                          # golden modules this run never called
        if e["name"] in unused:
            nan = float("nan")
            run.steps.append(Step(e["name"], e["kind"], dtype, e["shape"], Comparison(nan, nan, nan, nan, nan, ()),
                                  status="unused", note="after the vision feature layer: no longer run (its output "
                                                        "reached nothing)"))
        elif e["name"] not in met:
            run.steps.append(Step(e["name"], e["kind"], dtype, e["shape"], _fail("not run here"), status="missing"))
    if golden.get("grads"):
        _, tensors = _grads(pipe, pixel_values, inputs, full)
        d = dtype_from_name(dtype)
        run.steps.append(Step("loss", "loss", dtype, [1],
                              compare(tensors["loss"], golden_tensors[f"{dtype}/loss"], d, "op")))
        for group, layout in golden["grads"].items():
            got, want = tensors.get(f"grad/{group}"), golden_tensors[f"{dtype}/grad/{group}"]
            if got is None:
                run.steps.append(Step(f"grad/{group}", "grad", dtype, list(want.shape), _fail("group not trainable here")))
                continue
            step = Step(f"grad/{group}", "grad", dtype, list(want.shape), compare(got, want, d, "model"))
            if not step.chained.ok and got.shape == want.shape:
                step.note = "worst: " + _worst_param(got, want, layout, d)
            run.steps.append(step)
    return run


def _worst_param(got, want, layout, dtype) -> str:
    worst, start = None, 0
    for name, n in layout:
        c = compare(got[start:start + n], want[start:start + n], dtype, "model")
        if worst is None or c.cosine < worst[1]:
            worst = (name, c.cosine)
        start += n
    return f"{worst[0]} (cosine {worst[1]:.6f})" if worst else ""


# -- record -------------------------------------------------------------------------------------------------
def _load(model_dir, device, dtype, frames, reader):
    from ..infer import Pipeline

    return Pipeline.load(model_dir, device=device, dtype=dtype, frames=frames, reader=reader)


def record_model(model_dir, video, prompt: str, out, device, dtypes=None, grads: bool = False, full: bool = False,
                 frames: int = 32, max_new_tokens: int = 8, reader: str = "auto") -> dict:
    """Run the checkpoint on `video` and `prompt` in each dtype and write the golden file; returns its summary."""
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    _messages(prompt, True)                                         # an empty prompt fails before any loading
    dtypes = [dtype_name(dtype_from_name(d)) for d in dtypes] if dtypes else [None]
    pixels, indices, is_video, decoder = decode(video, frames, reader)
    runs, tensors, inputs, device_used = {}, {"input/frames": pixels}, None, None
    for name in dtypes:
        pipe = _load(model_dir, device, name, frames, reader)
        name = dtype_name(pipe.model.dtype)
        device_used = pipe.device
        if inputs is None:
            inputs = _token_inputs(pipe, pixels, indices, is_video, prompt)
            tensors.update({f"input/{k}": v for k, v in inputs.items()})
        run = run_once(pipe, pixels, inputs, name, full, max_new_tokens, grads)
        runs[name] = {"entries": run.entries, "answer": run.answer, "text": run.text, "grads": run.grads}
        tensors.update(run.tensors)
    meta = goldfile.provenance(device_used, list(runs), checkpoint=checkpoint_hash(model_dir),
                               model=str(model_dir))
    header = {"kind": "model", "meta": meta, "full": full, "max_new_tokens": max_new_tokens,
              "video": {"path": str(video), "decoder": decoder, "indices": list(indices), "is_video": is_video},
              "prompt": prompt.strip(), "inputs": list(inputs), "runs": runs}
    size = goldfile.write(out, header, tensors)
    return {**header, "bytes": size, "tensors": len(tensors)}


# -- check ----------------------------------------------------------------------------------------------------
@dataclass
class ModelReport:
    golden: dict                      # the golden file's header
    device: str
    impls: dict
    checkpoint_same: bool
    inputs: list[Step]                # decoder, tokenizer: differences of the inputs, apart from the model
    steps: list[Step]                 # per dtype, in execution order
    first: dict                       # dtype -> the first module out of tolerance (None: none)
    answers: dict                     # dtype -> {"golden", "here", "same", ...}

    @property
    def model_ok(self) -> bool:
        return all(s.chained.ok for s in self.steps)

    @property
    def inputs_ok(self) -> bool:
        return all(s.chained.ok for s in self.inputs)

    @property
    def answers_ok(self) -> bool:
        return all(a["same"] for a in self.answers.values())

    @property
    def passed(self) -> bool:
        return self.model_ok and self.inputs_ok and self.answers_ok

    def as_dict(self) -> dict:
        return {"golden": self.golden["meta"], "device": self.device, "impls": self.impls,
                "checkpoint_same": self.checkpoint_same, "passed": self.passed, "model_ok": self.model_ok,
                "inputs_ok": self.inputs_ok, "answers_ok": self.answers_ok, "first_divergence": self.first,
                "inputs": [s.as_dict() for s in self.inputs], "rows": [s.as_dict() for s in self.steps],
                "answers": self.answers}


def _frames_step(golden: torch.Tensor, here: torch.Tensor, decoder_there: str, decoder_here: str) -> Step:
    shape = list(golden.shape)
    if tuple(here.shape) != tuple(golden.shape):
        c = _fail(f"shape {tuple(here.shape)} != golden {tuple(golden.shape)}")
    else:
        diff = (here.int() - golden.int()).abs()
        off = float((diff > 0).double().mean())
        c = compare(here.float(), golden.float(), torch.float32, "model")
        failures = () if off == 0 else (f"{off:.2%} of the values differ, by up to {int(diff.max())}",)
        c = Comparison(c.cosine, c.max_abs, c.max_rel, c.mean_rel, off, failures)
    return Step("input/frames", "input", "uint8", shape, c, status="ok" if c.ok else "input",
                note=f"decoded here by {decoder_here}, there by {decoder_there}")


def _ids_step(golden: dict[str, torch.Tensor], here: dict[str, torch.Tensor]) -> Step:
    differ = [k for k in golden if k not in here or not torch.equal(golden[k], here[k])]
    c = Comparison(1.0, 0.0, 0.0, 0.0, 0.0, tuple(f"{k} differ" for k in differ))
    return Step("input/token ids", "input", "int64", list(golden["input_ids"].shape), c,
                status="ok" if c.ok else "input", note="tokenized here from the golden's prompt")


def _classify(steps: list[Step]) -> str | None:
    """Mark the first step out of tolerance, and whether each later one inherits or adds error."""
    first = None
    for s in steps:
        if s.status == "missing":
            first = first or s.name
            continue
        if s.status == "unused":
            continue
        if s.chained.ok:
            s.status = "ok"
        elif first is None:
            first, s.status = s.name, "FIRST"
        elif s.alone is None:                      # the gradients: nothing re-runs on a golden input
            s.status = "differs"
        else:
            s.status = "new" if not s.alone.ok else "inherited"
    return first


def check_model(model_dir, golden_path, device, dtypes=None, video=None, reader: str = "auto") -> ModelReport:
    header, tensors = goldfile.read(golden_path, kind="model")
    recorded = header["runs"]
    names = goldfile.chosen_dtypes(recorded, dtypes, "run")
    frames = tensors["input/frames"]
    inputs = {k: tensors[f"input/{k}"] for k in header["inputs"]}
    info = header["video"]
    input_steps: list[Step] = []
    video = video if video is not None else (info["path"] if Path(info["path"]).exists() else None)
    if video is not None and info["is_video"]:
        here, indices, _, decoder = decode(video, len(info["indices"]), reader)
        input_steps.append(_frames_step(frames, here, info["decoder"], decoder))
    checkpoint_same = checkpoint_hash(model_dir)["sha256"] == header["meta"]["checkpoint"]["sha256"]
    steps, first, answers, impls, device_used = [], {}, {}, {}, None
    for name in names:
        pipe = _load(model_dir, device, name, len(info["indices"]), reader)
        device_used = pipe.device
        impls = {r.op: r.impl for r in backends.describe(pipe.device.type)}
        if not input_steps or input_steps[-1].name != "input/token ids":
            here_ids = _token_inputs(pipe, frames, info["indices"], info["is_video"], header["prompt"])
            input_steps.append(_ids_step(inputs, here_ids))
        run = run_once(pipe, frames, inputs, name, header["full"], header["max_new_tokens"], False,
                       recorded[name], tensors)
        first[name] = _classify(run.steps)
        steps += run.steps
        want = recorded[name]["answer"]
        same = run.answer == want
        at = next((i for i, (a, b) in enumerate(zip(run.answer, want)) if a != b), min(len(run.answer), len(want)))
        answers[name] = {"same": same, "golden": recorded[name]["text"], "here": run.text,
                         "golden_tokens": want, "here_tokens": run.answer, "first_different_token": None if same else at}
    return ModelReport(header, str(device_used), impls, checkpoint_same, input_steps, steps, first, answers)


def _cell(c: Comparison | None) -> str:
    if c is None:
        return "-"
    return f"{c.cosine:.6f} " + ("ok" if c.ok else "FAIL")


def format_report(report: ModelReport, path: str | Path) -> str:
    meta = report.golden["meta"]
    lines = [f"golden: {path} ({Path(path).stat().st_size / 1e6:.2f} MB), recorded on {meta['device']} "
             f"({meta['device_name']}, {meta['machine']}), torch {meta['torch']}, transformers {meta['transformers']}, "
             f"implementations {meta['impls']}",
             f"checking on {report.device}, implementations {report.impls}",
             "checkpoint: the same as the golden's" if report.checkpoint_same else
             "checkpoint: DIFFERS from the golden's (another sha256 of config.json and the weights)", ""]
    lines.append("inputs (apart from the model, which runs on the golden's frames and ids):")
    for s in report.inputs:
        lines.append(f"  {s.name}: " + ("identical" if s.chained.ok else "DIFFERENT: " + "; ".join(s.chained.failures))
                     + f" ({s.note})")
    if not any(s.name == "input/frames" for s in report.inputs):
        lines.append("  input/frames: not decoded here (give --video to compare this machine's decoder)")
    header = ("module", "dtype", "shape", "cosine", "max_abs", "mean_rel", "result", "on golden input", "")
    body = []
    for s in report.steps:
        c = s.chained
        result = {"ok": "ok", "FIRST": "FAIL  <- first", "inherited": "FAIL  inherited", "new": "FAIL  new error",
                  "missing": "FAIL  missing", "differs": "FAIL", "unused": "skipped"}.get(s.status, "ok" if c.ok else "FAIL")
        body.append((s.name, s.dtype, "x".join(map(str, s.shape)), f"{c.cosine:.6f}", f"{c.max_abs:.2e}",
                     f"{c.mean_rel:.2e}", result, _cell(s.alone), "; ".join(c.failures + ((s.note,) if s.note else ()))))
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    table = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]]
    table.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", *table, ""]
    for dtype, first in report.first.items():
        if first is None:
            lines.append(f"{dtype}: every module within tolerance")
        else:
            new = [s.name for s in report.steps if s.dtype == dtype and s.status == "new"]
            lines.append(f"{dtype}: first divergence at {first}; after it "
                         + (f"new error in {', '.join(new)}" if new else "only inherited error"))
    for dtype, a in report.answers.items():
        lines.append(f"{dtype} answer: " + ("identical" if a["same"] else
                     f"DIFFERENT from token {a['first_different_token']}: golden {a['golden']!r}, here {a['here']!r}"))
    verdict = "PASS" if report.passed else "FAIL: " + ", ".join(
        w for w, ok in (("the inputs differ (decoder or tokenizer)", report.inputs_ok),
                        ("the model differs", report.model_ok), ("the answers differ", report.answers_ok)) if not ok)
    lines.append(verdict)
    return "\n".join(lines)


def summary_line(result: dict, out) -> str:
    runs = result["runs"]
    return (f"wrote {out}: {result['bytes'] / 1e6:.2f} MB, {result['tensors']} tensors; "
            + "; ".join(f"{d}: {len(r['entries'])} modules, answer {r['text']!r}" for d, r in runs.items())
            + f"; on {result['meta']['device']} ({result['meta']['device_name']}), implementations "
            f"{result['meta']['impls']}, decoder {result['video']['decoder']}")


__all__ = ["record_model", "check_model", "format_report", "summary_line", "ModelReport", "Step", "taps",
           "checkpoint_hash", "decode"]
