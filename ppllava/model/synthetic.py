"""Random model batches for tests, parity and benchmarks: items as (frames, is_video, row).

Each row holds its items' placeholder runs (left-padded) followed by text tokens; pixels and
prompts are random from a seeded CPU generator, so the batch is the same on every machine.
"""

from __future__ import annotations

import torch

from .config import side


def make_batch(config, items, text_len=6, prompt_len=8, seed=0, frame_px=None) -> dict[str, torch.Tensor]:
    """input_ids with each row's placeholders followed by text_len text tokens, plus the visual inputs."""
    gen = torch.Generator().manual_seed(seed)
    rows = 1 + max(row for _, _, row in items)
    size = frame_px or side(config.vision_config.image_size)
    runs = [[] for _ in range(rows)]
    for frames, is_video, row in items:
        runs[row] += config.placeholders(frames, is_video)
    length = max(len(r) for r in runs) + text_len
    vocab = min(config.image_token_id, config.video_token_id or config.image_token_id)
    input_ids = torch.randint(2, vocab, (rows, length), generator=gen)
    attention_mask = torch.ones(rows, length, dtype=torch.long)
    for row, run in enumerate(runs):
        pad = length - len(run) - text_len                       # left padding
        input_ids[row, :pad], attention_mask[row, :pad] = 0, 0
        input_ids[row, pad:pad + len(run)] = torch.tensor(run, dtype=torch.long)
    prompt_vocab = config.prompt_config.vocab_size
    prompt = torch.randint(2, prompt_vocab, (rows, prompt_len), generator=gen)
    prompt[:, -1] = config.prompt_config.eos_token_id
    frames = [f for f, _, _ in items]
    return dict(input_ids=input_ids, attention_mask=attention_mask,
                pixel_values=torch.randn(sum(frames), 3, size, size, generator=gen),
                visual_frames=torch.tensor(frames), visual_is_video=torch.tensor([v for _, v, _ in items]),
                visual_sample=torch.tensor([r for _, _, r in items]), prompt_input_ids=prompt)


def visual_kwargs(batch: dict) -> dict:
    """The keyword arguments of encode_visuals within a batch."""
    return {k: batch[k] for k in ("pixel_values", "visual_frames", "visual_is_video", "visual_sample", "prompt_input_ids")}
