"""`ppllava align` and PPLLaVA on InternVL3, with tiny random InternVL-architecture models (no download).

    losses      CLIP's and SigLIP's contrastive losses against slow loops, against open_clip's loss.py (installed
                by `make install` without its dependencies; a failure in CI when missing), and gathered over 2
                processes against one process on the whole batch (gradients too)
    pairs       list files and tar shards give the same pairs; unreadable ones are Skipped, never replaced
    align run   a 2-process DeepSpeed run (torchrun, gloo) on generated coloured-shape pairs: the loss falls,
                held-out image -> caption retrieval rises well above chance; resumed runs (from a copied
                checkpoint, and after SIGTERM) repeat its losses and keep retrieval.json's accuracy before
    convert     InternVL checkpoint + the aligned text tower -> PPLLaVA: every part kept, the model generates what
                a greedy loop over its own forward gives
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from align_data import CAPTIONS, write_pairs
from align_loss_worker import batch, loss_and_grads
from procs import Launched
from ppllava.align.config import load_align_config
from ppllava.align.losses import ClipLoss, SigLipLoss
from ppllava.align.pairs import PairDataset, load_pairs
from ppllava.cli import main
from ppllava.data import DataError, Preprocessor, Skipped
from ppllava.model import AlignedTextTower, load_config, load_model
from ppllava.model.convert import convert
from ppllava.model.synthetic import make_batch
from ppllava.train.config import load_train_config
from ppllava.train.deepspeed_config import deepspeed_config
from tiny_checkpoints import save_clip_text, save_internvl

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "align" / "tiny.yaml"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ROOT / "build" / "torch_extensions"),
            "PYTHONWARNINGS": "ignore::FutureWarning"}


# Deadlines: on a loaded 2-core machine an alignment run takes about 30 s and a stop about 10 s; these only end a
# hang, with a message naming what was awaited and the tail of the log.
RUN_DEADLINE, STOP_DEADLINE = 900, 300


def job(argv, log: Path) -> Launched:
    """A command in a session of its own (tests/procs.py): waits fail with what was awaited and the log's tail;
    leaving the `with` kills its whole tree (torchrun's workers run in sessions of their own)."""
    return Launched(argv, log, env=env(), cwd=ROOT)


def run(argv, log: Path, what: str, timeout: float = RUN_DEADLINE) -> str:
    """Run to the end; it must exit 0 and cleanly. Its output (stdout and stderr)."""
    with job(argv, log) as launched:
        code = launched.finish(timeout)
        output, tail = launched.output(), launched.tail(6000)
    assert code == 0, f"{what}: exit {code}\n{tail}"
    assert "terminate called" not in output, tail
    return output


# -- losses ------------------------------------------------------------------------------------------------
def features(n=6, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    return image, text


def clip_oracle(image, text, scale):
    n, total = len(image), 0.0
    for i in range(n):
        rows = [scale * float(image[i] @ text[j]) for j in range(n)]
        cols = [scale * float(image[j] @ text[i]) for j in range(n)]
        total += -(rows[i] - math.log(sum(math.exp(r) for r in rows)))
        total += -(cols[i] - math.log(sum(math.exp(c) for c in cols)))
    return total / (2 * n)


def siglip_oracle(image, text, scale, bias):
    n, total = len(image), 0.0
    for i in range(n):
        for j in range(n):
            z = (1 if i == j else -1) * (scale * float(image[i] @ text[j]) + bias)
            total += math.log(1 + math.exp(-z))
    return total / n


def test_losses_match_loop_oracles():
    image, text = features()
    scale, bias = torch.tensor(7.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    assert float(ClipLoss()(image, text, scale)) == pytest.approx(clip_oracle(image, text, 7.0), rel=1e-12)
    assert float(SigLipLoss()(image, text, scale, bias)) == pytest.approx(siglip_oracle(image, text, 7.0, -2.0),
                                                                          rel=1e-12)


def test_valid_mask_leaves_rows_out():
    image, text = features(n=7)
    valid = torch.tensor([True, True, False, True, True, False, True])
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    garbage = image.clone()
    garbage[~valid] = 9.0                                    # whatever padded rows hold is ignored
    for loss, args in ((ClipLoss(), (scale,)), (SigLipLoss(), (scale, bias))):
        torch.testing.assert_close(loss(garbage, text, *args, valid=valid) if len(args) == 2 else
                                   loss(garbage, text, *args, None, valid), loss(image[valid], text[valid], *args),
                                   rtol=1e-12, atol=0)


OPEN_CLIP = "open_clip_torch==3.3.0"                        # what `make install` adds (with --no-deps)


def open_clip_losses():
    """open_clip's loss module, open_clip/loss.py loaded on its own (it needs only torch; open_clip's __init__
    imports torchvision, which is not installed: see the Makefile): from OPEN_CLIP_PATH (an unpacked wheel's
    open_clip/ folder) or the installed open_clip_torch. None when neither is there; an error loading it is raised."""
    if os.environ.get("OPEN_CLIP_PATH"):
        path = Path(os.environ["OPEN_CLIP_PATH"]) / "loss.py"
        if not path.is_file():
            raise FileNotFoundError(f"OPEN_CLIP_PATH={os.environ['OPEN_CLIP_PATH']} holds no loss.py")
    else:
        try:
            path = Path(importlib.metadata.distribution("open_clip_torch").locate_file("open_clip/loss.py"))
        except importlib.metadata.PackageNotFoundError:
            return None
    spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_losses_match_open_clip():
    loss = open_clip_losses()
    if loss is None:
        message = f"{OPEN_CLIP} is not installed (`make install` adds it, or pip install --no-deps {OPEN_CLIP})"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message)                             # CI installs it: missing there is a broken install
        pytest.skip(message)
    assert "open_clip" not in sys.modules                    # its __init__ (torchvision) was never imported
    OpenClipLoss, OpenSigLipLoss = loss.ClipLoss, loss.SigLipLoss
    image, text = features(n=9, d=8)
    scale, bias = torch.tensor(12.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    torch.testing.assert_close(ClipLoss()(image, text, scale), OpenClipLoss()(image, text, scale), rtol=1e-12, atol=0)
    torch.testing.assert_close(SigLipLoss()(image, text, scale, bias),
                               OpenSigLipLoss(rank=0, world_size=1)(image, text, scale, bias), rtol=1e-12, atol=0)


def test_two_process_gathered_losses_equal_one_process(tmp_path):
    run(TORCHRUN + [str(ROOT / "tests" / "align_loss_worker.py"), str(tmp_path)], tmp_path / "torchrun.log",
        "the 2-process loss worker")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    images, texts = batch()
    valid = torch.ones(len(images), dtype=torch.bool)
    valid[[1, 2, 5]] = False
    for (name, masked), (loss0, grads0) in ranks[0].items():
        rows = valid if masked else slice(None)
        loss, grads = loss_and_grads(name, images[rows], texts[rows])   # one process, the whole batch
        loss1, grads1 = ranks[1][name, masked]
        # the mean of the processes' losses is the one-process loss (CLIP: every process has the global loss)
        torch.testing.assert_close((loss0 + loss1) / 2, loss, rtol=1e-12, atol=0)
        if name == "clip":
            torch.testing.assert_close(loss0, loss1, rtol=1e-12, atol=0)
        for g0, g1, g in zip(grads0, grads1, grads):                  # and the averaged gradients are its gradients
            torch.testing.assert_close(g0, g, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(g1, g, rtol=1e-10, atol=1e-12)


# -- pairs -------------------------------------------------------------------------------------------------
def test_list_and_shards_give_the_same_pairs(tmp_path):
    listed, sharded = load_pairs(write_pairs(tmp_path / "list", 10, seed=3)), load_pairs(
        write_pairs(tmp_path / "shards", 10, seed=3, shards=3))
    preprocess = Preprocessor(48, False, (0.5,) * 3, (0.5,) * 3)
    a, b = PairDataset(listed, preprocess), PairDataset(sharded, preprocess)
    order = sorted(range(10), key=lambda i: (i % 3, i))                # shard s holds pairs s, s+3, ...
    assert len(a) == len(b) == 10
    for j, i in enumerate(order):
        assert a[i]["caption"] == b[j]["caption"] and a[i]["caption"] in CAPTIONS
        assert torch.equal(a[i]["pixel_values"], b[j]["pixel_values"])
    records = [json.loads(line) for line in (tmp_path / "list" / "pairs.jsonl").read_text().splitlines()]
    (tmp_path / "list" / "pairs.tsv").write_text("".join(f"{r['image']}\t{r['caption']}\n" for r in records))
    tsv = PairDataset(load_pairs(tmp_path / "list" / "pairs.tsv"), preprocess)
    assert [tsv[i]["caption"] for i in range(10)] == [a[i]["caption"] for i in range(10)]
    assert torch.equal(tsv[7]["pixel_values"], a[7]["pixel_values"])
    (tmp_path / "list" / "images" / "000004.png").write_bytes(b"not a png")
    skipped = a[4]
    assert isinstance(skipped, Skipped) and skipped.path.endswith("000004.png") and "Pillow" in skipped.reason
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: expected a JSON object with 'image' and 'caption'"):
        load_pairs(tmp_path / "bad.jsonl")


# -- recipes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", sorted((ROOT / "configs" / "align").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_align_recipe_loads_and_fills_a_deepspeed_config(recipe):
    cfg = load_align_config(recipe)
    ds = deepspeed_config(cfg, accumulation=cfg.global_batch_size // cfg.micro_batch_size // 2, world_size=2)
    assert ds["train_batch_size"] == cfg.global_batch_size and ds["zero_optimization"]["stage"] == 2


def test_internvl3_recipes_agree():
    cfg = load_align_config(ROOT / "configs" / "align" / "internvl3-8b.yaml")
    assert (cfg.loss, cfg.epochs, cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == ("siglip", 1, -1, "default")
    for world in (16, 32):                     # 16 x A100 and 32 x 910B: the same global batch divides
        assert cfg.global_batch_size % (cfg.micro_batch_size * world) == 0
    train = load_train_config(ROOT / "configs" / "train" / "internvl3-8b.yaml")
    model = load_config("internvl3-8b")
    assert train.model_overrides["video_kernel"] == model.video_kernel and train.frames == 32
    assert model.visual_tokens(32, True) == 1024 and model.tower_family().name == "internvl"


# -- the alignment run and PPLLaVA on InternVL ------------------------------------------------------------
@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("align")
    save_internvl(root / "internvl")
    save_clip_text(root / "clip-text", CAPTIONS * 10)
    bed = {"root": root, "internvl": root / "internvl", "text": root / "clip-text",
           "train": write_pairs(root / "train", 256, seed=0), "val": write_pairs(root / "val", 96, seed=1)}
    out = root / "run"
    bed["log"] = run(TORCHRUN + ["-m", "ppllava", "align", "--config", str(RECIPE), f"vision={bed['internvl']}",
                                 f"text={bed['text']}", f"data={bed['train']}", f"eval_data={bed['val']}",
                                 f"output_dir={out}"], root / "align.log", "the alignment run")
    bed["out"] = out
    return bed


def test_alignment_loss_falls_and_retrieval_rises(aligned):
    out = aligned["out"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 81))            # 10 epochs of 256 pairs / 32
    assert all(r["samples"] == 32 for r in rows)
    losses = [r["loss"] for r in rows]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    retrieval = json.loads((out / "retrieval.json").read_text())
    chance = retrieval["after"]["chance"]
    assert chance == pytest.approx(1 / 12) and retrieval["after"]["pairs"] == 96
    assert retrieval["before"]["accuracy"] < 2.5 * chance                # random towers: near chance
    assert retrieval["after"]["accuracy"] > 4 * chance, retrieval        # aligned: well above it
    print(f"\nloss {first:.3f} -> {last:.3f}; retrieval {retrieval['before']['accuracy']:.1%} -> "
          f"{retrieval['after']['accuracy']:.1%} (chance {chance:.1%})")
    assert "held-out retrieval after" in aligned["log"]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000060", "step-000080"]
    # the temperature clamp (max_logit_scale 9, below SigLIP's start of 10) holds on the optimizer's fp32 master
    # copy too, which ZeRO copies over the parameter at every step
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    limit = load_align_config(RECIPE).max_logit_scale
    master = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), tag="step-000080")["logit_scale"]
    assert float(master.detach()) <= math.log(limit) + 1e-6 and max(r["scale"] for r in rows) <= limit * (1 + 1e-6)
    tower = AlignedTextTower.from_pretrained(out / "text_tower")
    assert tower.config.loss == "siglip" and tower.config.vision_config.model_type == "internvl_vision"
    assert (out / "checkpoints" / "step-000080" / "text_tower" / "tokenizer.json").is_file()


def align_argv(aligned, out, *overrides, launcher=TORCHRUN) -> list[str]:
    return launcher + ["-m", "ppllava", "align", "--config", str(RECIPE), f"vision={aligned['internvl']}",
                       f"text={aligned['text']}", f"data={aligned['train']}", f"output_dir={out}", *overrides]


def test_killed_alignment_resumes_on_the_same_loss_curve(aligned, tmp_path):
    """A run stopped after step 60 (its checkpoint and its retrieval.json, which then holds only the accuracy
    before alignment, copied to a fresh output_dir) and rerun with the same command repeats the uninterrupted
    run's steps 61-80, ends on the same tower, and keeps the accuracy before alignment beside the one after."""
    out, first = tmp_path / "resumed", aligned["out"]
    shutil.copytree(first / "checkpoints" / "step-000060", out / "checkpoints" / "step-000060")
    uninterrupted_retrieval = json.loads((first / "retrieval.json").read_text())
    (out / "retrieval.json").write_text(json.dumps({"before": uninterrupted_retrieval["before"]}))
    log = run(align_argv(aligned, out, f"eval_data={aligned['val']}"), tmp_path / "resumed.log", "the resumed run")
    assert f"resumed from {out / 'checkpoints' / 'step-000060'}: step 60," in log, log[-3000:]
    assert "held-out retrieval before" not in log                     # measured by the first run, not remeasured

    def losses(folder):
        return {r["step"]: r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())}

    resumed, uninterrupted = losses(out), losses(first)
    assert sorted(resumed) == list(range(61, 81))
    torch.testing.assert_close([resumed[s] for s in range(61, 81)], [uninterrupted[s] for s in range(61, 81)],
                               rtol=1e-6, atol=0)
    a, b = (AlignedTextTower.from_pretrained(f / "text_tower").state_dict() for f in (first, out))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    retrieval = json.loads((out / "retrieval.json").read_text())
    assert sorted(retrieval) == ["after", "before"] and retrieval["before"] == uninterrupted_retrieval["before"]
    after, expected = retrieval["after"], uninterrupted_retrieval["after"]      # the same tower: the same accuracy
    assert after["pairs"] == 96 and abs(after["accuracy"] - expected["accuracy"]) <= 2 / 96, (after, expected)


def test_sigterm_saves_a_checkpoint_then_the_same_command_finishes(aligned, tmp_path):
    """As Slurm or torchrun stop a job: SIGTERM to torchrun reaches every process (and its DataLoader worker);
    each finishes its step, they save one checkpoint and stop without writing a text tower; rerunning resumes,
    and retrieval.json keeps the first run's accuracy before alignment beside the one after."""
    out = tmp_path / "stopped"
    argv = align_argv(aligned, out, f"eval_data={aligned['val']}", "workers=1", "save_every=1000")
    metrics, retrieval = out / "metrics.jsonl", out / "retrieval.json"

    def rows() -> list[dict]:
        return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []

    with job(argv, tmp_path / "stopped.log") as stopped:
        stopped.wait_for(lambda: len(rows()) >= 3, "3 rows in metrics.jsonl (3 steps) to signal the run after",
                         RUN_DEADLINE)
        stopped.send_signal(signal.SIGTERM)
        code, log = stopped.finish(STOP_DEADLINE), stopped.output()
    steps = [r["step"] for r in rows()]
    assert f"stopped by signal at step {steps[-1]}" in log, log[-3000:]      # torchrun itself exits 1 on a signal
    assert steps[-1] < 80 and sorted(p.name for p in (out / "checkpoints").glob("step-*")) == [f"step-{steps[-1]:06d}"]
    assert not (out / "text_tower").exists()
    before = json.loads(retrieval.read_text())
    assert sorted(before) == ["before"]                                    # the same start as the first alignment
    assert before["before"] == json.loads((aligned["out"] / "retrieval.json").read_text())["before"]
    log = run(argv, tmp_path / "resumed.log", "the rerun of the stopped alignment")
    assert f"resumed from {out / 'checkpoints' / f'step-{steps[-1]:06d}'}: step {steps[-1]}," in log, log[-3000:]
    assert [r["step"] for r in rows()] == list(range(1, 81))
    assert (out / "text_tower" / "config.json").is_file()
    after = json.loads(retrieval.read_text())
    assert sorted(after) == ["after", "before"] and after["before"] == before["before"], after
    assert after["after"]["accuracy"] > 4 * after["after"]["chance"], after


def test_sigterm_to_a_single_process_alignment_exits_143(aligned, tmp_path):
    """Without torchrun (whose agent exits 1 on a signal) `ppllava align` itself exits 128 + SIGTERM after saving."""
    out = tmp_path / "alone"
    argv = align_argv(aligned, out, "eval_data=null", "save_every=1000", launcher=[sys.executable])
    metrics = out / "metrics.jsonl"
    with job(argv, tmp_path / "alone.log") as alone:
        alone.wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2,
                       "2 rows in metrics.jsonl to signal the run after", RUN_DEADLINE)
        alone.send_signal(signal.SIGTERM)
        code, log = alone.finish(STOP_DEADLINE), alone.output()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert code == 143, log[-3000:]
    assert f"stopped by signal at step {steps[-1]}" in log
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == [f"step-{steps[-1]:06d}"]


@pytest.fixture(scope="module")
def converted(aligned):
    out = aligned["root"] / "ppllava-internvl"
    assert main(["convert", "--base", str(aligned["internvl"]), "--text-tower", str(aligned["out"] / "text_tower"),
                 "--out", str(out), "--dtype", "float32"]) == 0
    return load_model(out).eval()


def test_internvl_conversion_keeps_every_part(aligned, converted):
    from transformers import InternVLForConditionalGeneration

    base = InternVLForConditionalGeneration.from_pretrained(aligned["internvl"]).eval()
    tower = AlignedTextTower.from_pretrained(aligned["out"] / "text_tower", dtype=torch.float32).eval()
    config = converted.config
    assert config.tower_family().name == "internvl" and (config.native_grid, config.pixel_shuffle) == (12, 2)
    assert (config.video_kernel, config.image_kernel) == ([2, 2, 2], [1, 2, 2])     # tiles the grid, as the recipe
    assert config.patch_grid == 6 and config.visual_tokens(4, True) == 2 * 3 * 3 and config.visual_tokens(1, False) == 9
    assert config.prompt_config.max_position_embeddings == 248
    assert config.relevance_scale == pytest.approx(float(tower.logit_scale.detach().exp()), rel=1e-6)
    pixels = torch.randn(2, 3, 48, 48)
    ids = torch.randint(2, 200, (1, 9))
    with torch.no_grad():
        # the vision path up to the projector is InternVL's own (pixel shuffle, LayerNorm + MLP)
        tokens = converted.vision_patches(pixels)
        assert tokens.shape == (2, 6, 6, 4 * 32)
        torch.testing.assert_close(converted.multi_modal_projector(tokens.flatten(1, 2)),
                                   base.model.get_image_features(pixel_values=pixels).pooler_output)
        assert torch.equal(converted.language_model(input_ids=ids).logits, base(input_ids=ids).logits)
        # the prompt tower is the aligned one, and a merged token's relevance feature is its patches' mean
        short = torch.randint(2, 100, (2, 8))
        short[:, -1] = 1
        torch.testing.assert_close(converted.prompt_pooling.encode_prompt(short),
                                   tower.text_tower(input_ids=short).text_embeds)
        patches = tokens.unflatten(-1, (4, 32))
        torch.testing.assert_close(converted.prompt_pooling.embed_patches(tokens),
                                   tower.patch_projection(patches).mean(-2))


def greedy(model, batch, steps):
    """Greedy decoding the slow way, with no token repeated (generate's no_repeat_ngram_size=1: the tiny random
    LLM ties its embeddings and would repeat its first token forever): the whole sequence through the model's own
    forward at every step (no cache), the argmax of the last logits over the tokens not yet produced appended;
    positions count the unpadded tokens (rows are left-padded), and a row that produced eos is continued with
    padding, as generate() does. (new tokens (B, <= steps), the first step's logits)."""
    embed = model.get_input_embeddings()
    embeds, mask = model.embed_inputs(**{k: v for k, v in batch.items() if k != "attention_mask"}), batch["attention_mask"]
    eos, pad = model.config.text_config.eos_token_id, model.config.text_config.pad_token_id
    new, done, first = [], torch.zeros(len(mask), dtype=torch.bool), None
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]
        first = logits if first is None else first
        for row, tokens in enumerate(torch.stack(new, dim=1).tolist() if new else []):
            logits[row, tokens] = -math.inf
        token = torch.where(done, pad, logits.argmax(-1))
        new.append(token)
        done |= token == eos
        embeds = torch.cat([embeds, embed(token)[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if done.all():
            break
    return torch.stack(new, dim=1), first


@pytest.mark.filterwarnings("ignore:Passing `no_repeat_ngram_size` with `inputs_embeds`:UserWarning")  # as wanted
def test_converted_internvl_model_generates(converted):
    """generate() gives the tokens of a greedy loop over the model's own forward, and what the model sees depends
    on the pixels of its own row's video (and not on the other row's)."""
    batch = make_batch(converted.config, [(4, True, 0), (1, False, 1)], prompt_len=12, seed=2)
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        out = converted.generate(**batch, max_new_tokens=6, do_sample=False, no_repeat_ngram_size=1)
        expected, logits = greedy(converted, batch, 6)
        other = {**batch, "pixel_values": batch["pixel_values"].clone()}
        other["pixel_values"][:4] = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(9))
        changed = greedy(converted, other, 1)[1]
    assert torch.equal(out[:, :length], batch["input_ids"])
    assert torch.equal(out[:, length:], expected), (out[:, length:], expected)
    assert not torch.allclose(changed[0], logits[0], rtol=1e-3, atol=1e-4)      # row 0's video frames changed
    torch.testing.assert_close(changed[1], logits[1])                           # row 1's image did not


def test_internvl_conversion_and_align_errors(aligned, tmp_path, capsys):
    tower_dir = tmp_path / "tower"                     # the aligned tower with its tokenizer, one field changed
    shutil.copytree(aligned["out"] / "text_tower", tower_dir)
    config = json.loads((tower_dir / "config.json").read_text())
    config["vision_feature_layer"] = -2
    (tower_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"aligned on vision features \(-2, 'default'\).*base uses \(-1, 'default'\)"):
        convert(aligned["internvl"], tower_dir, tmp_path / "out")
    # a tower aligned to another vision tower (48 wide, the base's is 32)
    config = AlignedTextTower.from_pretrained(aligned["out"] / "text_tower").config
    config.vision_config.hidden_size = 48
    shutil.copytree(aligned["out"] / "text_tower", tmp_path / "wide")
    AlignedTextTower(config).save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="vision hidden size mismatch: the base's vision tower has 32.*48"):
        convert(aligned["internvl"], tmp_path / "wide", tmp_path / "out")
    # on the command line: one line, exit 2, before any process group starts
    capsys.readouterr()
    common = ["align", "--config", str(RECIPE), f"data={aligned['train']}", f"output_dir={tmp_path / 'run'}"]
    assert main(common + [f"vision={aligned['text']}", f"text={aligned['text']}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a 'clip_text_model' model; expected 'internvl'" in err[0]
    assert main(common + [f"vision={aligned['internvl']}", f"text={aligned['text']}", "temperature=3"]) == 2
    assert "unknown key 'temperature'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
