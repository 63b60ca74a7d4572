"""Batched generation (Pipeline.generate_batch / ask_batch): mixed videos, images and text-only questions through
the LLM together, left padded, each row cut at its own stop token, give token for token the greedy answers of
one question at a time; questions about one visual share its vision pass."""

import pytest
import torch
from infer_models import save_talkative_checkpoint

from ppllava.infer import Pipeline
from videos import write_video


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("batchgen")
    videos = [write_video(root / f"v{i}.mp4", 12 + 6 * i, size=(48, 64), noise=i == 1) for i in range(2)]
    model = save_talkative_checkpoint(root / "talkative")
    return {"videos": videos, "model": model, "pipe": Pipeline.load(model, frames=4)}


def test_batched_answers_equal_one_at_a_time(bed, monkeypatch):
    pipe = bed["pipe"]
    encoded = []
    monkeypatch.setattr(pipe, "encode_frames",
                        lambda frames, *more, f=pipe.encode_frames: encoded.append(len(frames)) or f(frames, *more))
    video_a, video_b = (pipe.read(v) for v in bed["videos"])
    image = pipe.from_frames(torch.randint(0, 255, (1, 40, 56, 3), dtype=torch.uint8), is_video=False, name="img")
    questions = [(video_a, "what happens in the video"), (None, "describe the cat"), (image, "what is on the mat"),
                 (video_a, "how many people are there in the small kitchen"), (video_b, "what happens"),
                 (None, "hi")]
    alone = [pipe.ask(v, q, max_new_tokens=7) for v, q in questions]
    together = pipe.ask_batch(questions, max_new_tokens=7)
    assert [a.ids for a in together] == [a.ids for a in alone]
    assert [a.text for a in together] == [a.text for a in alone]
    assert [a.visual_tokens for a in together] == [a.visual_tokens for a in alone] == [128, 0, 64, 128, 128, 0]
    assert encoded == [4, 4, 1]                       # three visuals, one vision pass each, none in the batches


def test_rows_stop_on_their_own(bed):
    """A row that stops early leaves the others generating; its answer ends at its own stop token."""
    pipe = bed["pipe"]
    video = pipe.read(bed["videos"][0])
    stop = pipe.ask(video, "what happens in the video", max_new_tokens=3).ids[1]
    pipe.stop_ids.append(stop)                        # that token now ends an answer
    try:
        questions = [(video, "what happens in the video"), (None, "describe the image in detail")]
        alone = [pipe.ask(v, q, max_new_tokens=6) for v, q in questions]
        together = pipe.ask_batch(questions, max_new_tokens=6)
    finally:
        pipe.stop_ids.pop()
    assert alone[0].tokens == 1 and [a.ids for a in together] == [a.ids for a in alone]


def test_infer_batch_size_groups_each_videos_questions_and_answers_the_same(bed, tmp_path, monkeypatch):
    import json

    from ppllava.cli import main

    model = str(bed["model"])
    v0, v1 = (str(v) for v in bed["videos"])
    requests = tmp_path / "q.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"id": 1, "video": v0, "question": "what happens in the video"}, {"id": 2, "video": v1, "question": "what"},
        {"id": 3, "question": "describe the cat"}, {"id": 4, "video": v0, "question": "how many people are there"},
        {"id": 5, "video": str(tmp_path / "missing.mp4"), "question": "what"},
        {"id": 6, "video": v0, "question": "what is the man holding"}]))
    reads = []
    monkeypatch.setattr(Pipeline, "read", lambda self, path, *a, f=Pipeline.read, **k: reads.append(path) or
                        f(self, path, *a, **k))
    rows = {}
    for size in (1, 4):
        out = tmp_path / f"a{size}.jsonl"
        reads.clear()
        argv = ["infer", "--model", model, "--batch", str(requests), "--out", str(out), "--frames", "4",
                "--max-new-tokens", "5", "--batch-size", str(size)]
        assert main(argv) == 1                                             # the missing video
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        if size == 1:                                                      # as before: the file's order
            assert [r["id"] for r in lines] == [1, 2, 3, 4, 5, 6]
        else:                                                              # each video's questions together
            assert [r["id"] for r in lines] == [1, 4, 6, 2, 3, 5]
            assert sorted(reads) == sorted([v0, v1, str(tmp_path / "missing.mp4")])   # each video read once
        rows[size] = {r["id"]: r.get("answer", r.get("error")) for r in lines}
    assert rows[1] == rows[4] and "does not exist" in rows[1][5]


def test_eval_answer_all_in_batches_gives_the_same_rows(bed):
    from ppllava.evaluate import Question, answer_all

    v0, v1 = (str(v) for v in bed["videos"])
    questions = [Question(f"q{i}", video, text, ("a cat", "a dog", "a bird"), i % 3, "c")
                 for i, (video, text) in enumerate([(v0, "what is there"), (v0, "what moves"), (v1, "what is there"),
                                                    ("/nowhere.mp4", "what"), (v1, "which animal")])]
    one = answer_all(bed["pipe"], questions, max_new_tokens=4, progress=False)
    three = answer_all(bed["pipe"], questions, max_new_tokens=4, progress=False, batch_size=3)
    assert one == three and "error" in one[3] and all("error" not in r for i, r in enumerate(one) if i != 3)
