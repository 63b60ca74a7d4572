"""The four public bases as the Hub ships them (tests/hub_bases.py: real config values, tokenizers of the real
classes with the real ids, the processors' template files), each with its text tower: convert -> `ppllava infer`
answers; convert -> AutoProcessor + AutoModelForImageTextToText -> generate gives Pipeline's answer; the converted
model's projected visual tokens and LLM logits are the base's own; conversion.json lists every source tensor."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from hub_bases import BASES, EXPECTED_PROMPT, PAIRS, write_base, write_tower
from ppllava.cli import main
from ppllava.infer import Pipeline
from ppllava.model import load_model
from ppllava.model.aligned import AlignedTextTower, AlignedTextTowerConfig
from ppllava.model.convert import BASES as ARCHITECTURES
from videos import write_video

QUESTION = "What is shown in this image?"


def aligned_tower(clip_dir, base_dir, out):
    """What `ppllava align` writes for an InternVL base: the CLIP text tower with a patch projection from
    InternViT's width (random here), and the CLIP tokenizer."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(clip_dir)
    config = AlignedTextTowerConfig(text_config=clip.config.text_config.to_dict(),
                                    vision_config=AutoConfig.from_pretrained(base_dir).vision_config.to_dict())
    tower = AlignedTextTower(config)
    tower.text_tower.text_model.load_state_dict(clip.text_model.state_dict())
    tower.text_tower.text_projection.load_state_dict(clip.text_projection.state_dict())
    tower.save_pretrained(out)
    AutoTokenizer.from_pretrained(clip_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=sorted(BASES))
def hub(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    base = write_base(name, root / "base", dtype="float32")
    tower = write_tower(PAIRS[name], root / "tower")
    if ARCHITECTURES[json.loads((base / "config.json").read_text())["model_type"]].model_type == "internvl":
        tower = aligned_tower(tower, base, root / "aligned")
    out = root / "ppllava"
    assert main(["convert", "--base", str(base), "--text-tower", str(tower), "--out", str(out),
                 "--dtype", "float32"]) == 0
    return {"name": name, "root": root, "base": base, "tower": tower, "out": out}


def file_tensor_names(folder) -> set[str]:
    names = set()
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            names |= set(f.keys())
    return names


def test_conversion_lists_every_source_tensor_and_keeps_the_template(hub):
    report = json.loads((hub["out"] / "conversion.json").read_text())
    rows = report["tensors"]
    base_rows = [r for r in rows if r["source"] == "base"]
    tied = json.loads((hub["base"] / "config.json").read_text()).get("text_config", {}).get("tie_word_embeddings")
    assert len(base_rows) == len(file_tensor_names(hub["base"])) + bool(tied)
    assert sum(r["source"] == "text tower" for r in rows) == len(file_tensor_names(hub["tower"]))
    # the LLM's tokenizer renders the Hub's own prompt (the template the processor's files carry)
    tokenizer = AutoTokenizer.from_pretrained(hub["out"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        EXPECTED_PROMPT[hub["name"]]
    assert report["content"] == "parts"


def test_visual_tokens_and_logits_are_the_bases_own(hub):
    facts = BASES[hub["name"]]
    model = load_model(hub["out"]).eval()
    base = AutoModelForImageTextToText.from_pretrained(hub["base"]).eval()
    size = model.config.vision_config.image_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(5, 2000, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = model.multi_modal_projector(model.vision_patches(pixels).flatten(1, 2))
        if model.config.tower_family().name == "internvl":
            expected = base.model.get_image_features(pixel_values=pixels).pooler_output
        else:                                          # LLaVA's path: the feature layer, CLS dropped for "default"
            hidden = base.model.vision_tower(pixels, output_hidden_states=True).hidden_states
            features = hidden[base.config.vision_feature_layer]
            if base.config.vision_feature_select_strategy == "default":
                features = features[:, 1:]
            expected = base.model.multi_modal_projector(features)
        torch.testing.assert_close(tokens, expected, rtol=1e-6, atol=1e-6)
        assert tokens.shape[1] == facts.token_grid[0] * facts.token_grid[1]
        torch.testing.assert_close(model.language_model(input_ids=ids).logits, base(input_ids=ids).logits,
                                   rtol=1e-6, atol=1e-6)


def test_infer_answers_and_plain_transformers_gives_the_same_answer(hub, capsys):
    video = write_video(hub["root"] / "clip.mp4", 8, size=(64, 80))
    capsys.readouterr()
    assert main(["infer", "--model", str(hub["out"]), "--video", str(video), "--prompt", QUESTION, "--frames", "4",
                 "--max-new-tokens", "5", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(answer["answer"], str) and answer["visual_tokens"] > 0
    pipe = Pipeline.load(hub["out"], device="cpu", dtype=torch.float32, frames=4)
    visual = pipe.read(video)
    expected = pipe.generate(visual, [{"role": "user", "content": [{"type": "video"},
                                                                    {"type": "text", "text": QUESTION}]}],
                             max_new_tokens=5)
    assert expected.text == answer["answer"] and expected.visual_tokens == answer["visual_tokens"]
    processor = AutoProcessor.from_pretrained(hub["out"])
    model = AutoModelForImageTextToText.from_pretrained(hub["out"]).eval()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           videos=[visual.frames])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stop = next((i for i, t in enumerate(new) if t in pipe.stop_ids), len(new))
    assert processor.tokenizer.decode(new[:stop], skip_special_tokens=True).strip() == expected.text


def test_a_base_without_any_template_gets_its_family_default_by_name(hub, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(hub["base"], base)
    for name in ("chat_template.json", "chat_template.jinja"):
        (base / name).unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["convert", "--base", str(base), "--text-tower", str(hub["tower"]), "--out", str(tmp_path / "out"),
                 "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "none shipped: the" in printed and "default" in printed
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        EXPECTED_PROMPT[hub["name"]]


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    root = tmp_path_factory.mktemp("onevision-files")
    return write_base("llava-onevision-qwen2-7b-ov", root / "base", dtype="float32"), \
        write_tower("siglip-so400m-patch14-384", root / "tower")


def _edited(folder, tmp_path, name, change):
    copy = tmp_path / "base"
    shutil.copytree(folder, copy)
    data = json.loads((copy / name).read_text())
    change(data)
    (copy / name).write_text(json.dumps(data))
    return copy


def test_the_bases_own_normalisation_is_kept(onevision, tmp_path):
    base, tower = onevision
    edited = _edited(base, tmp_path, "preprocessor_config.json", lambda d: d.update(image_mean=[0.4, 0.5, 0.5]))
    for folder, out in ((base, tmp_path / "plain"), (edited, tmp_path / "edited")):
        assert main(["convert", "--base", str(folder), "--text-tower", str(tower), "--out", str(out)]) == 0
    plain, changed = (Pipeline.load(tmp_path / name, device="cpu", dtype=torch.float32) for name in ("plain", "edited"))
    assert plain.config.image_mean is None and changed.config.image_mean == [0.4, 0.5, 0.5]
    frames = torch.randint(0, 256, (1, 50, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = plain.preprocess(frames), changed.preprocess(frames)
    torch.testing.assert_close(b[:, 0] - a[:, 0], torch.full_like(a[:, 0], 0.1 / 0.5))    # (x - 0.4) / 0.5
    assert torch.equal(a[:, 1:], b[:, 1:])
    assert "its own normalisation" in json.loads((tmp_path / "edited" / "conversion.json").read_text())[
        "image_processing"]


@pytest.mark.parametrize("name,change,message", [
    ("preprocessor_config.json", lambda d: d.update(size={"height": 336, "width": 336}),
     "resizes to [336] but the vision tower takes 384 px images"),
    ("preprocessor_config.json", lambda d: d.update(resample=2), "resample 2; PPLLaVA resizes with bicubic"),
    ("preprocessor_config.json", lambda d: d.update(do_center_crop=True), "do_center_crop True but this tower"),
    ("processor_config.json", lambda d: d.update(image_token="<video>"),
     "image_token '<video>' is token 151647 of the tokenizer, but the base's config uses 151646"),
])
def test_processor_files_that_do_not_fit_exit_2(onevision, tmp_path, capsys, name, change, message):
    base, tower = onevision
    edited = _edited(base, tmp_path, name, change)
    capsys.readouterr()
    assert main(["convert", "--base", str(edited), "--text-tower", str(tower), "--out", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
