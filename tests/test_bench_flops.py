"""`ppllava bench flops`: the counted FLOPs against a count by hand (the MLP projector's matrix products)."""

import json

from ppllava.cli import main
from ppllava.model.factory import load_config


def test_projector_before_pooling_costs_what_its_matrix_products_say(capsys):
    assert main(["bench", "flops", "--architecture", "tiny", "--frames", "4", "--json"]) == 0
    after, before = json.loads(capsys.readouterr().out)
    config = load_config("tiny")
    dv, dl, grid = config.vision_config.hidden_size, config.text_config.hidden_size, config.patch_grid
    patches, tokens = 4 * grid * grid, config.visual_tokens(4, True)
    assert after["visual_tokens"] == before["visual_tokens"] == tokens == 2 * 8 * 8
    per_token = 2 * (dv * dl + dl * dl)                   # linear_1 and linear_2: 2 FLOPs per multiply-add
    pooling = 2 * patches * (dl - dv)                     # the weighted sum of each window, now over dl channels
    assert round((before["visual_path_gflop"] - after["visual_path_gflop"]) * 1e9) == \
        (patches - tokens) * per_token + pooling
    assert before["vision_gflop"] == after["vision_gflop"] and before["llm_prefill_gflop"] == after["llm_prefill_gflop"]


def test_bad_frames_is_one_line(capsys):
    assert main(["bench", "flops", "--frames", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--frames" in err[0]
