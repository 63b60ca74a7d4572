"""Plain transformers code on a PPLLaVA folder: AutoProcessor + AutoModelForImageTextToText give the inputs and the
greedy answer `Pipeline` gives (one path from a question and frames to model inputs)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import ppllava.model  # noqa: F401  (registers PPLLaVA with the Auto classes)
from infer_models import save_talkative_checkpoint
from ppllava.infer import Pipeline
from ppllava.model.convert import convert
from ppllava.processing import PPLLaVAProcessor
from tiny_checkpoints import save_llava_onevision, save_siglip_pair

QUESTION = "what happens in the video"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("processor")
    save_llava_onevision(root / "ov"), save_siglip_pair(root / "siglip")
    convert(root / "ov", root / "siglip", root / "converted", dtype=torch.float32)
    return {"talkative": save_talkative_checkpoint(root / "talkative"), "converted": root / "converted"}


def frames(seed, count=4, size=40):
    return torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def messages(kind="video"):
    return [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": QUESTION}]}]


@pytest.mark.parametrize("which", ["talkative", "converted"])
def test_auto_classes_give_the_pipelines_inputs_and_answer(folders, which):
    folder = folders[which]
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert isinstance(processor, PPLLaVAProcessor)
    video = frames(1)
    inputs = processor.apply_chat_template(messages(), add_generation_prompt=True, tokenize=True, return_dict=True,
                                           videos=[video])
    pipe = Pipeline.load(folder, device="cpu", dtype=torch.float32)
    visual = pipe.from_frames(video, is_video=True)
    expected = pipe.inputs(visual, messages())
    for name in ("input_ids", "attention_mask", "visual_frames", "visual_is_video", "visual_sample",
                 "prompt_input_ids", "prompt_attention_mask"):
        assert torch.equal(inputs[name], expected[name]), name
    placeholders = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert placeholders == model.config.visual_tokens(4, True)
    with torch.no_grad():
        torch.testing.assert_close(model.vision_patches(inputs["pixel_values"]), visual.patches, rtol=0, atol=0)
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = pipe.generate(visual, messages(), max_new_tokens=6)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stop = next((i for i, t in enumerate(new) if t in pipe.stop_ids), len(new))
    assert pipe.tokenizer.decode(new[:stop], skip_special_tokens=True).strip() == answer.text
    if which == "talkative":
        assert answer.tokens >= 3 and answer.text           # a real answer, not an empty one


def test_the_two_step_form_and_images_give_the_same_inputs(folders):
    processor = PPLLaVAProcessor.from_pretrained(folders["talkative"])
    for kind, media in (("video", {"videos": [frames(2)]}), ("image", {"images": [frames(3, count=1)[0]]})):
        text = processor.apply_chat_template(messages(kind), add_generation_prompt=True)
        assert isinstance(text, str) and QUESTION in text
        two_step = processor(text=text, prompt=QUESTION, **media)
        one_step = processor.apply_chat_template(messages(kind), add_generation_prompt=True, tokenize=True,
                                                 return_dict=True, **media)
        assert sorted(two_step) == sorted(one_step)
        for name in one_step:
            assert torch.equal(two_step[name], one_step[name]), (kind, name)
        assert one_step["visual_is_video"].tolist() == [kind == "video"]
    text = processor.apply_chat_template(messages(), add_generation_prompt=True)
    with pytest.raises(ValueError, match="prompt: the user's question"):
        processor(text=text, videos=[frames(2)])
    with pytest.raises(ValueError, match="the messages hold more videos than were given"):
        processor(text=text, prompt=QUESTION)
    with pytest.raises(ValueError, match="expected uint8 RGB frames"):
        processor(text=text, videos=[frames(2).float()], prompt=QUESTION)


def test_convert_writes_the_processor_config(folders):
    import json

    config = json.loads((folders["converted"] / "processor_config.json").read_text())
    assert config == {"processor_class": "PPLLaVAProcessor"}
