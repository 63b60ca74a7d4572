"""Training data on the authors' converted releases (image_grid_pinpoints) reads an image as inference does: LLaVA-NeXT's
anyres crops with the image size, the same placeholder run, and visual_image_size through the collator, so that the
model's forward on a training batch computes the visual tokens the Pipeline serves (and the authors' forward,
tests/authors_oracle.py, computes on those crops).

The releases are tests/authors_layout.py's tiny ones (Vicuna + CLIP with BT-Adapter, Qwen + SigLIP) converted by
ppllava.model.convert, as in test_authors_weights.py.
"""

import json

import pytest
import torch
import yaml
from PIL import Image

import authors_layout
from authors_oracle import AuthorsModel
from test_authors_weights import assert_close
from videos import write_video

from ppllava.data.chat import ChatEncoder
from ppllava.data.collate import Collator
from ppllava.data.dataset import ConversationDataset
from ppllava.data.readers import read_image
from ppllava.data.sources import load_data_config, load_samples
from ppllava.infer import Pipeline
from ppllava.model import anyres, load_model
from ppllava.model.checkpoint import load_tokenizers
from ppllava.model.convert import convert

FAMILIES = ["vicuna", "qwen"]
QUESTION = "what does the person pick up after the red cup"
ANSWER = "a small blue box"
SIZE = (300, 700)               # (H, W): 1 x 3 crops of 336 (Vicuna's pinpoints), 1 x 2 of 384 (Qwen's)
SECOND = (420, 260)             # taller than wide, for the multi-image sample


def _record(media: dict, question: str = QUESTION) -> dict:
    mark = ("<image>\n" * len(media.get("image", []))) if "image" in media else ("<video>\n" if media else "")
    return {**media, "conversations": [{"from": "human", "value": mark + question}, {"from": "gpt", "value": ANSWER}]}


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors-anyres")
    media = root / "media"
    media.mkdir()
    for name, size, seed in (("wide.png", SIZE, 5), ("tall.png", SECOND, 6)):
        pixels = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        Image.fromarray(pixels.numpy()).save(media / name)
    write_video(media / "clip.mp4", 8, size=(64, 80))
    records = [_record({"image": ["wide.png"]}), _record({"video": "clip.mp4"}), _record({}),
               _record({"image": ["wide.png", "tall.png"]})]
    (root / "anno.json").write_text(json.dumps(records))
    (root / "data.yaml").write_text(yaml.safe_dump({"max_length": 1024, "datasets": [
        {"name": "mixed", "format": "llava", "annotation": "anno.json", "root": "media", "frames": 4}]}))
    data = load_data_config(root / "data.yaml")
    out = {"root": root, "media": media}
    for family in FAMILIES:
        paths = authors_layout.write_authors_checkpoint(family, root / family)
        converted = root / f"{family}-converted"
        convert(paths["model"], paths["text_tower"], converted)
        model = load_model(converted, dtype=torch.float32).eval()
        tokenizer, prompt_tokenizer = load_tokenizers(converted)
        config = model.config
        assert config.image_grid_pinpoints
        dataset = ConversationDataset(load_samples(data), data, config, ChatEncoder.for_config(tokenizer, config),
                                      train=True, seed=0)
        out[family] = {"paths": paths, "converted": converted, "model": model, "dataset": dataset,
                       "collator": Collator.for_model(config, tokenizer, prompt_tokenizer),
                       "pipeline": Pipeline(model, tokenizer, prompt_tokenizer, torch.device("cpu"), frames=4)}
    return out


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading ids two 1-D id tensors share."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


def batch_of(bed, family, *indices) -> dict:
    items = [bed[family]["dataset"][i] for i in indices]
    batch = bed[family]["collator"](items)
    assert batch.pop("skipped") == []
    return batch


@pytest.mark.parametrize("family", FAMILIES)
def test_a_training_image_is_the_anyres_input_inference_serves(bed, family):
    """One image sample: the dataset item and the collated batch hold the crops, placeholder run and image size
    the Pipeline builds for the same image and question; the model's visual token embeddings and logits on the
    shared prefix are the Pipeline's."""
    model, pipe = bed[family]["model"], bed[family]["pipeline"]
    config = model.config
    rows, cols = anyres.grid_shape(SIZE, config.image_grid_pinpoints, config.vision_config.image_size)
    crops = 1 + rows * cols
    assert rows * cols > 1

    item = bed[family]["dataset"][0]
    assert item.frames == (crops,) and item.is_video == (False,) and item.image_sizes == (SIZE,)
    batch = batch_of(bed, family, 0)
    assert batch["visual_frames"].tolist() == [crops] and batch["visual_image_size"].tolist() == [list(SIZE)]
    placeholders = int(model.placeholder_mask(batch["input_ids"]).sum())
    assert placeholders == config.visual_tokens(crops, False, SIZE)
    assert placeholders != config.visual_tokens(1, False)                  # what training read before: one crop

    visual = pipe.read(bed["media"] / "wide.png")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = pipe.inputs(visual, messages)
    assert torch.equal(batch["pixel_values"], pipe.processor.pixels(read_image(bed["media"] / "wide.png"), False))
    for key in ("visual_frames", "visual_is_video", "visual_image_size", "prompt_input_ids", "prompt_attention_mask"):
        assert torch.equal(batch[key], inputs[key]), key

    with torch.no_grad():
        ours = model.embed_inputs(**{k: v for k, v in batch.items() if k not in ("labels", "attention_mask")})[0]
        served = model.embed_inputs(**{k: v for k, v in inputs.items() if k != "attention_mask"})[0]
        train_mask = model.placeholder_mask(batch["input_ids"][0])
        serve_mask = model.placeholder_mask(inputs["input_ids"][0])
        assert_close(ours[train_mask], served[serve_mask].double(), tol=1e-6)

        # the training text is the served prompt followed by the answer: the same logits over the prompt
        common = common_prefix(inputs["input_ids"][0], batch["input_ids"][0])
        last_visual = int(serve_mask.nonzero()[-1])
        assert common > last_visual + len(pipe.tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
        logits = model(**batch).logits[0, :common]
        expected = model(**inputs).logits[0, :common]
        assert_close(logits, expected.double(), tol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_training_batch_with_an_anyres_image_computes_their_forward(bed, family):
    """The collated batch's logits against the authors' forward (float64, tests/authors_oracle.py) on the item's
    crops with the image size, to test_authors_weights' tolerance; and those crops are transformers' LLaVA-NeXT
    image processor's (Vicuna: its pinpoints and CLIP normalisation) to Pillow's rounding."""
    model = bed[family]["model"]
    oracle = AuthorsModel(bed[family]["paths"]["model"], bed[family]["paths"]["text_tower"])
    batch = batch_of(bed, family, 0)
    rows, cols = anyres.grid_shape(SIZE, model.config.image_grid_pinpoints, model.config.vision_config.image_size)
    assert batch["visual_frames"].tolist() == [1 + rows * cols] and batch["visual_image_size"].tolist() == [list(SIZE)]
    ids = batch["input_ids"][0]
    keep = ~model.placeholder_mask(ids)
    first = int((~keep).nonzero()[0])                    # their prompt: one image token where our run is
    theirs_ids = ids[:first].tolist() + [model.config.image_token_id] + ids[first:][keep[first:]].tolist()
    mask = batch["prompt_attention_mask"][0] if family == "vicuna" else None   # their SigLIP gets no mask
    expected = oracle.logits(theirs_ids, [("image", batch["pixel_values"].double(), SIZE)],
                             batch["prompt_input_ids"][0], mask)
    with torch.no_grad():
        logits = model(**batch).logits[0]
    assert_close(logits, expected)              # their image block stands where our placeholder run does

    if family == "vicuna":
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        from ppllava.data.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        reference = LlavaNextImageProcessorPil(image_grid_pinpoints=model.config.image_grid_pinpoints,
                                               size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                               image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD),
                                               do_pad=False)
        image = read_image(bed["media"] / "wide.png")
        crops = reference(images=[image[0].numpy()], return_tensors="pt")["pixel_values"][0]
        assert crops.shape == batch["pixel_values"].shape
        grey = ((batch["pixel_values"] - crops) * torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1) * 255).abs()
        assert float(grey.max()) <= 2.01 and float((grey > 0.01).float().mean()) < 0.01


@pytest.mark.parametrize("family", FAMILIES)
def test_a_multi_image_sample_is_read_as_the_processor_reads_it(bed, family):
    """Two images in one sample: each is its own medium, cut into its own anyres crops, as PPLLaVAProcessor
    (the one path to inference inputs) builds the same conversation."""
    model, pipe = bed[family]["model"], bed[family]["pipeline"]
    item = bed[family]["dataset"][3]
    images = [read_image(bed["media"] / name)[0] for name in ("wide.png", "tall.png")]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": QUESTION}]}]
    served = pipe.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                images=images)
    grids = [anyres.grid_shape(s, model.config.image_grid_pinpoints, model.config.vision_config.image_size)
             for s in (SIZE, SECOND)]
    assert item.frames == tuple(1 + r * c for r, c in grids) and item.image_sizes == (SIZE, SECOND)
    batch = batch_of(bed, family, 3)
    assert torch.equal(batch["pixel_values"], served["pixel_values"])
    for key in ("visual_frames", "visual_is_video", "visual_image_size"):
        assert torch.equal(batch[key], served[key]), key
    common = common_prefix(served["input_ids"][0], batch["input_ids"][0])      # the prompt, then the answer's turn
    assert common > int(model.placeholder_mask(served["input_ids"][0]).nonzero()[-1])
    assert int(model.placeholder_mask(batch["input_ids"]).sum()) == sum(
        model.config.visual_tokens(1 + r * c, False, s) for (r, c), s in zip(grids, (SIZE, SECOND)))
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_mixed_micro_batch_trains(bed, family):
    """A video, an anyres image and a text-only sample in one micro-batch: visual_image_size is 0 for the video,
    the image's row computes what it computes alone, and forward + backward (training mode: the BT-Adapter's drop
    path) gives a finite loss whose gradients reach the vision side and image_newline."""
    batch = batch_of(bed, family, 1, 0, 2)
    model = bed[family]["model"]
    config = model.config
    assert batch["visual_frames"].tolist()[0] == 4 and batch["visual_is_video"].tolist() == [True, False]
    assert batch["visual_sample"].tolist() == [0, 1]
    assert batch["visual_image_size"].tolist() == [[0, 0], list(SIZE)]
    per_row = model.placeholder_mask(batch["input_ids"]).sum(dim=1).tolist()
    crops = batch["visual_frames"].tolist()[1]
    assert per_row == [config.visual_tokens(4, True), config.visual_tokens(crops, False, SIZE), 0]

    alone = batch_of(bed, family, 0)
    with torch.no_grad():
        mixed = model(**batch).logits[1, :alone["input_ids"].shape[1]]
        single = model(**alone).logits[0]
    assert_close(mixed, single.double(), tol=1e-5)

    trained = load_model(bed[family]["converted"], dtype=torch.float32)
    trained.apply_trainable()
    trained.train()
    torch.manual_seed(0)
    loss = trained(**batch).loss
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    grads = {name: p.grad for name, p in trained.named_parameters() if p.requires_grad}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert float(grads["image_newline"].abs().sum()) > 0
    assert float(grads["multi_modal_projector.linear_1.weight"].abs().sum()) > 0
