"""The authors' released checkpoints (issue 20): tiny folders in their layout (authors_layout.py) converted by
`ppllava convert`, then the converted model against an independent re-reading of their forward
(authors_oracle.py, float64): relevance maps, pooled tokens and logits for a video, a single-crop image and a
multi-image sample, for both families (Vicuna + CLIP with BT-Adapter, Qwen + SigLIP with their value head)."""

import json
import shutil

import pytest
import torch

import authors_layout
from authors_oracle import AuthorsModel

import backends
from ppllava.model import anyres
from ppllava.model import load_model
from ppllava.model.checkpoint import read_config
from ppllava.model.convert import REPORT, convert
from ppllava.model.mapping import UnmappedTensor
from ppllava.model.checkpoint import load_tokenizers

FAMILIES = ["vicuna", "qwen"]


def assert_close(ours, theirs, tol=1e-5):
    """float32 against float64: every element within tol of the tensor's scale (its largest magnitude)."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = float(theirs.abs().max())
    error = float((ours.double() - theirs).abs().max())
    assert error <= tol * scale, f"max error {error:.3g}, allowed {tol * scale:.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors")
    out = {}
    for family in FAMILIES:
        paths = authors_layout.write_authors_checkpoint(family, root / family)
        converted = root / f"{family}-converted"
        convert(paths["model"], paths["text_tower"], converted)
        model = load_model(converted, dtype=torch.float32).eval()
        out[family] = {**paths, "converted": converted, "model_ours": model,
                       "oracle": AuthorsModel(paths["model"], paths["text_tower"])}
    return out


def frames(config, n, seed):
    size = config.vision_config.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def prompt(bed, family, text="what does the person pick up after the red cup"):
    """Their evaluation's prompt-tower input: the question, padded to the extended length."""
    _, prompt_tokenizer = load_tokenizers(bed[family]["converted"])
    enc = prompt_tokenizer(text, padding="max_length", max_length=prompt_tokenizer.model_max_length, return_tensors="pt")
    mask = enc.get("attention_mask") if family == "vicuna" else None   # SigLIP's tokenizer returns none
    return enc["input_ids"], mask


def ours(model, kind, pixels, ids, mask, image_size=None):
    """Our relevance map (T, h, w) and the item's LLM-space tokens."""
    t = pixels.shape[0]
    video = kind == "video"
    layout = dict(visual_frames=torch.tensor([t]), visual_is_video=torch.tensor([video]), visual_sample=torch.tensor([0]),
                  visual_image_size=torch.tensor([image_size or (0, 0)]))
    with torch.no_grad():
        patches = model.vision_patches(pixels, [1] * t if image_size else [t])   # anyres crops: T = 1 each
        text = model.prompt_pooling.encode_prompt(ids, mask)
        embeds = model.prompt_pooling.embed_patches(patches)[None]
        relevance = backends.relevance_map(embeds, text, model.config.relevance_scale)[0]
        tokens = model.encode_visuals(pixels, prompt_input_ids=ids, prompt_attention_mask=mask, **layout)[0]
    return relevance, tokens, layout


# (kind, frames or crops, image size): a video, one crop, an anyres image (wider and taller than the grid
# resolutions' aspect: both unpadding directions), several images as one item
CASES = [("video", 4, None), ("image", 1, None), ("anyres", None, (500, 300)), ("anyres", None, (310, 1000)),
         ("multi-image", 2, None)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind,count,image_size", CASES)
def test_converted_model_computes_what_their_code_computes(bed, family, kind, count, image_size):
    model, oracle = bed[family]["model_ours"], bed[family]["oracle"]
    if kind == "anyres":
        rows, cols = anyres.grid_shape(image_size, model.config.image_grid_pinpoints, model.config.vision_config.image_size)
        count, kind = 1 + rows * cols, "image"
        assert rows * cols > 1
    pixels = frames(model.config, count, seed=count)
    ids, mask = prompt(bed, family)
    theirs = oracle.encode(kind, pixels.double(), ids[0], None if mask is None else mask[0], image_size=image_size)
    relevance, tokens, layout = ours(model, kind, pixels, ids, mask, image_size)
    assert_close(relevance, theirs["relevance"].reshape(relevance.shape))
    assert_close(tokens, theirs["features"])
    assert tokens.shape[0] == model.config.visual_tokens(count, kind == "video", image_size)

    # the LLM's logits over a prompt with the item's placeholders, theirs with one image token per block
    image = model.config.image_token_id
    text = [1, 3067, 338, 263] if family == "vicuna" else [151644, 872, 198]
    after = [29973, 13] if family == "vicuna" else [30, 151645]
    theirs_ids = text + [image] * len(theirs["blocks"]) + after
    ours_ids = torch.tensor([text + model.config.placeholders(count, kind == "video", image_size) + after])
    with torch.no_grad():
        logits = model(input_ids=ours_ids, pixel_values=pixels, prompt_input_ids=ids, prompt_attention_mask=mask,
                       **layout).logits[0]
    expected = oracle.logits(theirs_ids, [(kind, pixels.double(), image_size)], ids[0],
                             None if mask is None else mask[0])
    assert_close(logits, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_of_theirs_is_accounted_for(bed, family):
    report = json.loads((bed[family]["converted"] / REPORT).read_text())
    theirs = dict(authors_layout.authors_tensor_names(family))
    rows = {r["name"]: r for r in report["tensors"]}
    assert set(rows) == set(theirs)
    assert all(("to" in r) + ("config" in r) + bool(r.get("dropped")) == 1 for r in rows.values())
    config = read_config(bed[family]["converted"])
    assert config.project_before_pooling and config.image_newline and config.frame_resize == "squash"
    assert config.relevance_scale == pytest.approx(torch.tensor(authors_layout.FACTS[family].logit_scale)
                                                   .to(torch.bfloat16).float().exp().item(), rel=1e-6)
    if family == "vicuna":
        assert config.btadapter_depth == 3 and config.btadapter_max_frames == authors_layout.FACTS[family].max_T
        assert rows["multi_modal_projector.clip_text_model.embeddings.position_embedding_res"]["to"] == \
            "prompt_pooling.prompt_tower.text_model.embeddings.position_embedding.weight"
    else:
        assert config.siglip_patch_head == "value" and config.btadapter_depth == 0
        assert rows["multi_modal_projector.logit_bias"]["dropped"]


def test_a_tensor_no_rule_covers_is_refused_by_name(tmp_path):
    paths = authors_layout.write_authors_checkpoint("vicuna", tmp_path / "theirs")
    authors_layout.add_stray_tensor(paths["model"], "multi_modal_projector.clip_extra_gate")
    with pytest.raises(UnmappedTensor, match="clip_extra_gate"):
        convert(paths["model"], paths["text_tower"], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_their_folder_given_to_load_model_names_the_convert_command(bed):
    with pytest.raises(ValueError, match="ppllava convert --base .* --text-tower .*openai/clip-vit-large-patch14-336"):
        load_model(bed["vicuna"]["model"])


QUESTION = "what does the person pick up after the red cup"


@pytest.mark.parametrize("family", FAMILIES)
def test_infer_and_explain_on_the_converted_folder_follow_their_forward(bed, family, tmp_path, capsys):
    """`ppllava infer` answers what greedy decoding of their forward (the oracle's logits, one token at a
    time) answers, from the same frames and prompts; `ppllava explain`'s per-frame shares are their relevance
    map summed per frame."""
    from ppllava.cli import main
    from ppllava.infer import Pipeline
    from videos import write_video

    video = write_video(tmp_path / "clip.mp4", 8, size=(64, 80))
    converted, oracle = bed[family]["converted"], bed[family]["oracle"]
    capsys.readouterr()
    assert main(["infer", "--model", str(converted), "--video", str(video), "--prompt", QUESTION, "--frames", "4",
                 "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    pipe = Pipeline.load(converted, device="cpu", dtype=torch.float32, frames=4)
    visual = pipe.read(video)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    inputs = pipe.inputs(visual, messages)
    pixels = pipe.preprocess(visual.frames).double()
    ids = inputs["input_ids"][0]
    keep = ~pipe.model.placeholder_mask(ids)
    first = int((~keep).nonzero()[0])                    # their prompt: one image token where our run is
    theirs = ids[:first].tolist() + [pipe.model.config.image_token_id] + ids[first:][keep[first:]].tolist()
    prompt_ids, mask = inputs["prompt_input_ids"][0], inputs.get("prompt_attention_mask")
    mask = mask if family == "vicuna" else None          # their SigLIP tokenizer gives the text tower no mask
    new = []
    for _ in range(4):
        logits = oracle.logits(theirs + new, [("video", pixels)], prompt_ids, None if mask is None else mask[0])
        new.append(int(logits[-1].argmax()))
        if new[-1] in pipe.stop_ids:
            new.pop()
            break
    assert answer["answer"] == pipe.tokenizer.decode(new, skip_special_tokens=True).strip()

    assert main(["explain", "--model", str(converted), "--video", str(video), "--prompt", QUESTION, "--frames", "4",
                 "--out", str(tmp_path / "r.png"), "--device", "cpu", "--dtype", "float32", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    question = pipe.processor.prompt_inputs(QUESTION)
    relevance = oracle.encode("video", pixels, question["prompt_input_ids"][0],
                              question["prompt_attention_mask"][0] if family == "vicuna" else None)
    expected = relevance["relevance"].reshape(4, -1).sum(dim=1)
    torch.testing.assert_close(torch.tensor(summary["shares"], dtype=torch.float64), expected, rtol=0, atol=1e-5)


def test_parity_records_and_checks_a_converted_authors_folder(bed, tmp_path):
    """`ppllava parity` on their converted Vicuna (BT-Adapter, projector before pooling, image_newline): a
    native golden passes the cpu and npu op implementations; a BT-Adapter layer perturbed by 1e-2 is the first
    module named, and what follows only inherits its error."""
    from safetensors.torch import load_file, save_file

    from ppllava.parity.model import check_model, record_model
    from videos import write_video

    video, golden = write_video(tmp_path / "clip.mp4", 8, size=(64, 80)), tmp_path / "golden.safetensors"
    converted = bed["vicuna"]["converted"]
    backends.configure_ops("native")
    try:
        record_model(converted, video, QUESTION, golden, torch.device("cpu"), ["float32"], frames=4)
    finally:
        backends.configure_ops(None)
    for impl in ("cpu", "npu"):
        backends.configure_ops(impl)
        try:
            report = check_model(converted, golden, torch.device("cpu"))
        finally:
            backends.configure_ops(None)
        assert report.passed, [(s.name, s.chained.failures) for s in report.steps if not s.chained.ok]
        assert any(s.name.startswith("btadapter") for s in report.steps)
    perturbed = tmp_path / "perturbed"
    perturbed.mkdir()
    shutil.copytree(converted, perturbed, dirs_exist_ok=True)
    state = load_file(perturbed / "model.safetensors")
    name = "btadapter.spatial.1.mlp.fc2.weight"
    noise = torch.randn(state[name].shape, generator=torch.Generator().manual_seed(0))
    state[name] = state[name] + (1e-2 * noise).to(state[name].dtype)
    save_file(state, perturbed / "model.safetensors", metadata={"format": "pt"})
    report = check_model(perturbed, golden, torch.device("cpu"))
    assert not report.passed and report.first["float32"].startswith("btadapter")
    after = [s for s in report.steps if s.dtype == "float32"]
    first = next(i for i, s in enumerate(after) if s.name == report.first["float32"])
    assert all(s.status in ("ok", "inherited") for s in after[first + 1:] if s.kind != "input")


@pytest.mark.parametrize("family", FAMILIES)
def test_infer_on_an_image_reads_it_as_their_anyres_crops(bed, family, tmp_path, capsys):
    """`ppllava infer` on an image: cut into LLaVA-NeXT's anyres crops (Preprocessor.anyres, checked against
    transformers' image processor in test_preprocess.py), laid out as their encode_image lays them; the answer is
    greedy decoding of their forward on those crops."""
    from PIL import Image

    from ppllava.cli import main
    from ppllava.infer import Pipeline

    path = tmp_path / "wide.png"
    Image.fromarray(torch.randint(0, 256, (300, 700, 3), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(5)).numpy()).save(path)
    converted, oracle = bed[family]["converted"], bed[family]["oracle"]
    capsys.readouterr()
    assert main(["infer", "--model", str(converted), "--video", str(path), "--prompt", QUESTION,
                 "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    pipe = Pipeline.load(converted, device="cpu", dtype=torch.float32)
    visual = pipe.read(path)
    config = pipe.model.config
    rows, cols = anyres.grid_shape((300, 700), config.image_grid_pinpoints, config.vision_config.image_size)
    assert visual.image_size == (300, 700) and visual.patches.shape[0] == 1 + rows * cols > 2
    assert answer["visual_tokens"] == config.visual_tokens(1 + rows * cols, False, (300, 700))
    crops = pipe.processor.pixels(visual.frames, False).double()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = pipe.inputs(visual, messages)
    ids = inputs["input_ids"][0]
    keep = ~pipe.model.placeholder_mask(ids)
    first = int((~keep).nonzero()[0])
    theirs = ids[:first].tolist() + [config.image_token_id] + ids[first:][keep[first:]].tolist()
    mask = inputs["prompt_attention_mask"][0] if family == "vicuna" else None
    new = []
    for _ in range(4):
        logits = oracle.logits(theirs + new, [("image", crops, (300, 700))], inputs["prompt_input_ids"][0], mask)
        new.append(int(logits[-1].argmax()))
        if new[-1] in pipe.stop_ids:
            new.pop()
            break
    assert answer["answer"] == pipe.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_a_release_missing_a_tensor_it_needs_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    paths = authors_layout.write_authors_checkpoint("qwen", tmp_path / "theirs")
    index = json.loads((paths["model"] / "model.safetensors.index.json").read_text())
    name = "multi_modal_projector.logit_scale"
    shard = paths["model"] / index["weight_map"].pop(name)
    state = load_file(shard)
    del state[name]
    save_file(state, shard, metadata={"format": "pt"})
    (paths["model"] / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnmappedTensor, match="lacks multi_modal_projector.logit_scale"):
        convert(paths["model"], paths["text_tower"], tmp_path / "out")
