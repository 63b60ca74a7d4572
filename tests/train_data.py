"""A small generated instruction-tuning set for training tests: pattern videos and images, llava format."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from videos import write_image, write_text, write_video

ANSWERS = ["the cat sits on the red mat", "a person is cooking food in a small kitchen"]


def write_training_data(root, videos: int = 8, images: int = 4, frames: int = 8, text_only: int = 0,
                        broken: int = 0, dataset_frames: tuple[int, ...] = ()) -> Path:
    """Media under root/media, the annotation root/anno.json, and root/data.yaml (returned): one dataset, or with
    `dataset_frames` one per count, each sampling that many frames per video of the same records."""
    root = Path(root)
    (root / "media").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(videos):
        write_video(root / "media" / f"v{i}.mp4", frames, size=(48, 64), noise=False)
        records.append({"video": f"v{i}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nwhat happens in the video"},
            {"from": "gpt", "value": ANSWERS[i % 2]}]})
    for i in range(images):
        write_image(root / "media" / f"i{i}.png", index=i, size=(48, 64))
        records.append({"image": f"i{i}.png", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image in detail"},
            {"from": "gpt", "value": ANSWERS[i % 2]}]})
    for i in range(text_only):                   # media-free rows: the visual path runs a zero-weight stand-in
        records.append({"conversations": [{"from": "human", "value": "how many people are there"},
                                          {"from": "gpt", "value": ANSWERS[i % 2]}]})
    for i in range(broken):                      # unreadable: skipped, counted, never replaced
        write_text(root / "media" / f"broken{i}.mp4")
        records.append({"video": f"broken{i}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nwhat happens in the video"}, {"from": "gpt", "value": ANSWERS[0]}]})
    (root / "anno.json").write_text(json.dumps(records))
    dataset = {"name": "synthetic", "format": "llava", "annotation": "anno.json", "root": "media"}
    datasets = [{**dataset, "name": f"synthetic{n}", "frames": n} for n in dataset_frames] or [dataset]
    config = {"max_length": 512, "max_skip_fraction": 0.25, "datasets": datasets}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root / "data.yaml"
