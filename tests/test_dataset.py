"""The instruction-tuning data path end to end: media on disk -> dataset -> collator -> the tiny model."""

import json

import pytest
import torch
import yaml
from oracles import long_clip_positions
from tiny_checkpoints import llm_tokenizer, make_tokenizer, save_llava_onevision, save_siglip_pair
from videos import frame_index, write_frames_folder, write_image, write_text, write_video

from ppllava.data.chat import IGNORE, ChatEncoder
from ppllava.data.collate import Collator
from ppllava.data.dataset import ConversationDataset, Item, Skipped
from ppllava.data.errors import DataError, UnreadableSample
from ppllava.data.loader import SkipMonitor, build_loader
from ppllava.data.sampling import sample_indices
from ppllava.data.sources import load_data_config, load_samples
from ppllava.model import build_model, load_config

pytest.importorskip("av")

FRAMES = 4


def conv(question, answer, mark=""):
    return [{"from": "human", "value": mark + question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    media = root / "media"
    media.mkdir()
    write_video(media / "clip.mp4", 20, noise=False)
    write_video(media / "short.mp4", 3, noise=False)
    write_frames_folder(media / "stills", 12)
    write_image(media / "a.png", 5)
    write_image(media / "b.png", 9)
    write_text(media / "broken.mp4")
    llava = [
        {"video": "clip.mp4", "conversations": conv("what happens in the video", "the cat sits on the red mat")},
        {"image": "a.png", "conversations": conv("describe the image in detail", "a red mat")},
        {"image": ["a.png", "b.png"], "conversations": conv("how many people are there <image>", "two", "<image>\n")},
        {"conversations": conv("how many people", "none")},
        {"video": "stills", "conversations": conv("what happens", "the man opens the door")},
        {"video": "broken.mp4", "conversations": conv("what happens", "nothing")},
        {"video": "missing.mp4", "conversations": conv("what happens", "nothing")},
    ]
    (root / "llava.json").write_text(json.dumps(llava))
    (root / "vc.jsonl").write_text(json.dumps({"video": "short.mp4", "QA": [
        {"i": "Watch the video.", "q": "what happens in the video", "a": "a person is cooking"},
        {"q": "how many people are there", "a": "one"}]}) + "\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"max_length": 2048, "datasets": [
        dict(name="ll", format="llava", annotation="llava.json", root="media", frames=FRAMES),
        dict(name="vc", format="videochat2", annotation="vc.jsonl", root="media", frames=FRAMES, reader="pyav"),
        dict(name="st", format="videochat2", annotation="st.jsonl", root="media", frames=FRAMES, fps=2)]}))
    (root / "st.jsonl").write_text(json.dumps({"video": "stills", "start": 1.0, "end": 3.0, "QA": [
        {"q": "what happens", "a": "the door opens"}]}) + "\n")
    return root


@pytest.fixture(scope="module")
def parts(root):
    config = load_config("tiny")
    config.image_token_id, config.video_token_id = 300, 301       # the tiny LLM tokenizer's <image>, <video>
    tokenizer = llm_tokenizer()
    prompt_tokenizer = make_tokenizer(300, ["<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", "<|endoftext|>")
    data = load_data_config(root / "data.yaml")
    return config, tokenizer, prompt_tokenizer, data, load_samples(data)


def dataset(parts, **kwargs):
    config, tokenizer, _, data, samples = parts
    return ConversationDataset(samples, data, config, ChatEncoder.for_config(tokenizer, config), **kwargs)


def collator(parts):
    config, tokenizer, prompt_tokenizer, *_ = parts
    return Collator.for_model(config, tokenizer, prompt_tokenizer)


def test_evaluation_reads_the_segment_centres(parts):
    ds = dataset(parts, train=False)
    clip, = ds.load_media(ds.samples[0])
    assert [frame_index(f) for f in clip] == sample_indices(20, FRAMES, train=False) == [2, 7, 12, 17]
    stills, = ds.load_media(ds.samples[4])
    assert [frame_index(f) for f in stills] == [1, 4, 7, 10]
    short, = ds.load_media(ds.samples[7])                          # 3 frames for 4: repeats in order
    assert [frame_index(f) for f in short] == [0, 1, 1, 2]
    window, = ds.load_media(ds.samples[8])                         # 1.0-3.0 s at fps 2: frames 2..5
    assert [frame_index(f) for f in window] == [2, 3, 4, 5]
    image, = ds.load_media(ds.samples[1])
    assert image.shape[0] == 1 and frame_index(image[0]) == 5


def test_training_offsets_are_random_per_epoch_and_reproducible(parts):
    ds = dataset(parts, train=True, seed=3)
    picks = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        picks.append([frame_index(f) for f in ds.load_media(ds.samples[0], ds._generator(0))[0]])
    for pick in picks:
        assert all(5 * i <= p < 5 * (i + 1) for i, p in enumerate(pick))   # one frame in each 5-frame segment
    assert len({tuple(p) for p in picks}) > 1
    ds.set_epoch(2)
    assert [frame_index(f) for f in ds.load_media(ds.samples[0], ds._generator(0))[0]] == picks[2]


def test_interleaved_batch_runs_through_the_model_with_answer_only_labels(parts):
    config = parts[0]
    ds = dataset(parts, train=True)
    items = [ds[i] for i in (0, 1, 2, 3, 4, 7)]                    # video, image, two images, text, frames, 2-turn
    assert all(isinstance(i, Item) for i in items)
    assert items[5].prompt == "what happens in the video\nhow many people are there"
    batch = collator(parts)(items)
    assert batch["visual_frames"].tolist() == [FRAMES, 1, 1, 1, FRAMES, FRAMES]
    assert batch["visual_is_video"].tolist() == [True, False, False, False, True, True]
    assert batch["visual_sample"].tolist() == [0, 1, 2, 2, 4, 5]
    assert batch["pixel_values"].shape == (3 * FRAMES + 3, 3, 48, 48)
    video, image = config.visual_tokens(FRAMES, True), config.visual_tokens(1, False)
    assert (batch["input_ids"] == 301).sum(1).tolist() == [video, 0, 0, 0, video, video]
    assert (batch["input_ids"] == 300).sum(1).tolist() == [0, image, 2 * image, 0, 0, 0]
    tokenizer = parts[1]
    answers = [tokenizer.decode(row[row != IGNORE]) for row in batch["labels"]]
    assert answers[2] == "two<|im_end|>\n" and answers[5] == "a person is cooking<|im_end|>\none<|im_end|>\n"
    assert (batch["attention_mask"].sum(1) == torch.tensor([len(i.input_ids) for i in items])).all()
    model = build_model(config, seed=0)
    batch.pop("skipped")
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0


@pytest.mark.parametrize("index,reason", [(5, "broken.mp4"), (6, "missing.mp4")])
def test_unreadable_media_is_skipped_in_training_and_an_error_in_inference(parts, index, reason):
    skipped = dataset(parts, train=True)[index]
    assert isinstance(skipped, Skipped) and skipped.path.endswith(reason) and skipped.reason
    with pytest.raises(UnreadableSample, match=reason):
        dataset(parts, train=False)[index]


def test_a_time_window_on_frames_without_an_fps_is_skipped_with_the_fix(parts):
    config, tokenizer, _, data, samples = parts
    specs = data.datasets[:2] + (type(data.datasets[2])(**{**data.datasets[2].__dict__, "fps": None}),)
    ds = ConversationDataset(samples, type(data)(datasets=specs), config, ChatEncoder.for_config(tokenizer, config))
    item = ds[8]
    assert isinstance(item, Skipped) and "set its dataset's fps in the data config" in item.reason


def test_too_long_samples_are_skipped_with_the_count(parts):
    config, tokenizer, prompt_tokenizer, data, samples = parts
    short = type(data)(datasets=data.datasets, max_length=100)
    ds = ConversationDataset(samples, short, config, ChatEncoder.for_config(tokenizer, config))
    item = ds[0]
    assert isinstance(item, Skipped) and "exceed max_length 100" in item.reason
    assert isinstance(ds[3], Item)                                   # text only: fits


def test_skips_cross_worker_processes_and_the_cap_stops_the_run(parts):
    ds = dataset(parts, train=True)
    loader = build_loader(ds, collator(parts), batch_size=3, workers=1, shuffle=False)
    monitor = SkipMonitor(total=len(ds), max_fraction=0.25)
    rows = sum(len(b["input_ids"]) for b in monitor.watch(loader))
    assert (rows, monitor.skipped, monitor.seen) == (7, 2, 9)
    assert "broken.mp4" in monitor.summary() and "missing.mp4" in monitor.summary()
    strict = SkipMonitor(total=len(ds), max_fraction=0.1)             # allows 0 of 9
    with pytest.raises(DataError, match=r"1 samples skipped .* max_skip_fraction 0.1 allows \(0\); first: .*broken.mp4"):
        for _ in strict.watch(build_loader(ds, collator(parts), batch_size=3, workers=0, shuffle=False)):
            pass


def test_a_batch_of_skips_only_is_not_yielded():
    batch = Collator(0, None, 10, False)([Skipped(0, "x.mp4", "empty file")])
    assert batch == {"skipped": [Skipped(0, "x.mp4", "empty file")]}
    monitor = SkipMonitor(total=10, max_fraction=0.5)
    assert list(monitor.watch([batch])) == [] and monitor.skipped == 1


# -- SigLIP prompts: padded to the full length in the collator and the pipeline ---------------------------------
def test_siglip_prompts_are_padded_to_the_full_length_and_read_as_siglip_reads_them(tmp_path):
    """SigLIP's text tower was trained on max-length padded text and pools the last position. The oracle is
    transformers' SiglipTextModel itself with the dual model's weights and its position table stretched by
    Long-CLIP's loop (tests/oracles.py), run on ids padded to the full 196 by hand."""
    from transformers import SiglipTextModel

    from ppllava.infer import Pipeline
    from ppllava.model.convert import convert

    save_llava_onevision(tmp_path / "ov")
    dual = save_siglip_pair(tmp_path / "siglip").eval()
    convert(tmp_path / "ov", tmp_path / "siglip", tmp_path / "ppllava")
    pipe = Pipeline.load(tmp_path / "ppllava", device="cpu", frames=2)
    config, tokenizer = pipe.config, pipe.prompt_tokenizer
    full = 4 * 64 - 3 * 20                                             # SigLIP's 64 positions, stretched
    assert config.tower_family().name == "siglip" and config.prompt_config.max_position_embeddings == full
    questions = ["what happens in the video", "how many people are there"]
    padded = []
    for q in questions:
        ids = tokenizer(q)["input_ids"]
        assert 3 < len(ids) <= 20
        padded.append(ids + [tokenizer.pad_token_id] * (full - len(ids)))
    padded = torch.tensor(padded)

    text_config = dual.config.text_config.to_dict()
    text_config["max_position_embeddings"] = full
    oracle = SiglipTextModel(type(dual.config.text_config)(**text_config)).eval()
    state = dict(dual.text_model.state_dict())
    key = "embeddings.position_embedding.weight"
    state[key] = long_clip_positions(state[key]).float()
    oracle.load_state_dict(state)
    with torch.no_grad():
        expected = oracle(input_ids=padded).pooler_output
        unpadded = oracle(input_ids=padded[:1, :len(tokenizer(questions[0])["input_ids"])]).pooler_output
    assert (unpadded[0] - expected[0]).abs().max() > 0.1               # the padding changes the feature

    seen = []                                                          # what the model's prompt tower reads and gives
    pipe.model.prompt_pooling.prompt_tower.register_forward_hook(
        lambda module, args, kwargs, out: seen.append((kwargs["input_ids"], out.pooler_output)), with_kwargs=True)
    frames = torch.randint(0, 256, (2, 54, 54, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    visual = pipe.from_frames(frames, is_video=True)
    runs = [config.placeholders(2, True)]

    def message(q):
        return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}]

    # the pipeline: one question
    inputs = pipe.inputs(visual, message(questions[0]))
    assert torch.equal(inputs["prompt_input_ids"], padded[:1])
    with torch.no_grad():
        pipe.model(**inputs)
    assert torch.equal(seen[-1][0], padded[:1])
    torch.testing.assert_close(seen[-1][1], expected[:1], rtol=1e-5, atol=1e-5)

    # the collator: two items of different prompt lengths, both padded to the full length
    items = []
    for q in questions:
        ids = pipe.encoder.encode(message(q), runs, add_generation_prompt=True).input_ids
        items.append(Item(ids, torch.full_like(ids, IGNORE), pipe.preprocess(frames), (2,), (True,), q, ("x.mp4",)))
    batch = Collator.for_model(config, pipe.tokenizer, tokenizer)(items)
    assert torch.equal(batch["prompt_input_ids"], padded)
    batch.pop("skipped")
    with torch.no_grad():
        pipe.model(**batch)
    assert torch.equal(seen[-1][0], padded)
    torch.testing.assert_close(seen[-1][1], expected, rtol=1e-5, atol=1e-5)
