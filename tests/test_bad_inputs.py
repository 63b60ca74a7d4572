"""Bad input through the command line: one line naming the problem, exit 2, no traceback, nothing written (issue 21,
a first table: broken YAML and Python tags, a truncated checkpoint, a folder where a file belongs, text that is not
valid Unicode, an unknown PPLLAVA_LOG_LEVEL; and a reader that closes the pipe)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppllava.cli import main
from ppllava.data import available_readers
from ppllava.model.tiny import save_tiny_checkpoint
from train_data import write_training_data
from videos import write_video

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = str(ROOT / "configs" / "train" / "tiny.yaml")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    model = save_tiny_checkpoint(root / "model")
    cut = root / "cut"
    shutil.copytree(model, cut)
    weights = cut / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    shutil.copytree(model, root / "badconfig")
    config = root / "badconfig" / "config.json"
    os.truncate(config, config.stat().st_size // 2)
    (root / "onlystate").mkdir()
    (root / "onlystate" / "trainer_state.json").write_text('{"step": 3, "posit')
    (root / "vmme.jsonl").write_text('{"question_id": "1", "videoID": "v", "question": "q", "options": ["A. x", "B. y"], '
                                     '"answer": "A"}\n')
    (root / "syntax.yaml").write_text("epochs: [1,\n")
    (root / "tagged.yaml").write_text("epochs: !!python/object/apply:os.system ['true']\n")
    (root / "a-folder.yaml").mkdir()
    (root / "folder-out").mkdir()
    (root / "not-a-video.mp4").write_bytes(b"garbage")
    write_training_data(root / "data", videos=4, images=4)
    (root / "q.jsonl").write_text('{"id": "a", "video": "%s", "question": "hi"}\n' % write_video(root / "v.mp4", 8))
    return root


CASES = [  # (id, argv with {root} filled in, env, words the one line must hold)
    ("yaml syntax", ["train", "--config", "{root}/syntax.yaml"], {},
     ["syntax.yaml: not valid YAML (line 2, column 1"]),
    ("yaml python tag", ["train", "--config", "{root}/tagged.yaml"], {},
     ["tagged.yaml: not valid YAML", "python/object/apply:os.system"]),
    ("override python tag", ["train", "--config", TINY_RECIPE, "lr=!!python/name:os.system"], {},
     ["override 'lr=!!python/name:os.system': not valid YAML"]),
    ("override syntax", ["train", "--config", TINY_RECIPE, "lr=[1,"], {}, ["override 'lr=[1,': not valid YAML"]),
    ("recipe is a folder", ["train", "--config", "{root}/a-folder.yaml"], {}, ["a-folder.yaml is a folder"]),
    ("truncated weights: infer", ["infer", "--model", "{root}/cut", "--video", "{root}/v.mp4", "--prompt", "hi"], {},
     ["checkpoint", "model.safetensors is not a complete safetensors file", "cut short"]),
    ("truncated weights: explain", ["explain", "--model", "{root}/cut", "--video", "{root}/v.mp4", "--prompt", "hi",
                                    "--out", "{root}/x.png"], {}, ["model.safetensors is not a complete safetensors"]),
    ("truncated weights: train", ["train", "--config", TINY_RECIPE, "model={root}/cut", "data={root}/data/data.yaml",
                                  "output_dir={root}/run"], {},
     ["model.safetensors is not a complete safetensors"]),
    ("broken config.json: infer", ["infer", "--model", "{root}/badconfig", "--video", "{root}/v.mp4", "--prompt", "hi"],
     {}, ["checkpoint", "badconfig/config.json: not valid JSON", "copy it again"]),
    ("broken config.json: explain", ["explain", "--model", "{root}/badconfig", "--video", "{root}/v.mp4", "--prompt",
                                     "hi", "--out", "{root}/x.png"], {}, ["badconfig/config.json: not valid JSON"]),
    ("broken config.json: eval", ["eval", "--benchmark", "videomme", "--data", "{root}/vmme.jsonl", "--model",
                                  "{root}/badconfig"], {}, ["badconfig/config.json: not valid JSON"]),
    ("broken config.json: train", ["train", "--config", TINY_RECIPE, "model={root}/badconfig",
                                   "data={root}/data/data.yaml", "output_dir={root}/run"], {},
     ["badconfig/config.json: not valid JSON"]),
    ("broken config.json: convert", ["convert", "--base", "{root}/badconfig", "--text-tower", "{root}/model",
                                     "--out", "{root}/converted"], {}, ["base", "badconfig/config.json: not valid JSON"]),
    ("resume a broken trainer_state.json", ["train", "--config", TINY_RECIPE, "model={root}/model",
                                            "data={root}/data/data.yaml", "output_dir={root}/run",
                                            "resume={root}/onlystate"], {},
     ["checkpoint", "onlystate is damaged: trainer_state.json is not valid JSON", "give another checkpoint"]),
    ("reader not installed", ["infer", "--model", "{root}/model", "--video", "{root}/v.mp4", "--prompt", "hi",
                              "--reader", "torchcodec"], {}, ["reader 'torchcodec' cannot load", "pip install"]),
    ("a folder as --out", ["infer", "--model", "{root}/model", "--batch", "{root}/q.jsonl", "--out",
                           "{root}/folder-out"], {}, ["folder-out: Is a directory"]),
    ("undecodable prompt", ["infer", "--model", "{root}/model", "--video", "{root}/v.mp4", "--prompt",
                            b"\xff\xfe what".decode("utf-8", "surrogateescape")], {},
     ["message 0 (user) is not valid text", "pass UTF-8"]),
    # refused before decoding: the video is not a video at all, and that is not what the line says
    ("frames beyond the LLM", ["infer", "--model", "{root}/model", "--video", "{root}/not-a-video.mp4", "--prompt", "hi",
                               "--frames", "100000"], {},
     ["--frames 100000: a video of 100000 frames becomes 3200000 visual tokens", "at most 127 frames fit"]),
    ("prompt beyond the LLM", ["infer", "--model", "{root}/model", "--video", "{root}/v.mp4", "--prompt",
                               "word " * 5000, "--frames", "8"], {}, ["positions", "> the LLM's 4096"]),
    ("log level", ["env"], {"PPLLAVA_LOG_LEVEL": "LOUD"}, ["PPLLAVA_LOG_LEVEL='LOUD'", "DEBUG, INFO, WARNING, ERROR"]),
]


@pytest.mark.parametrize("argv,env,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(bed, capsys, monkeypatch, argv, env, words):
    if "--reader" in argv and argv[argv.index("--reader") + 1] in available_readers():
        pytest.skip("the reader is installed here")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = sorted(p.name for p in bed.iterdir())
    capsys.readouterr()
    code = main([a.replace("{root}", str(bed)) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert code == 2 and len(err) == 1, err
    assert "Traceback" not in err[0] and all(w in err[0] for w in words), err[0]
    assert sorted(p.name for p in bed.iterdir()) == before                     # nothing written beside
    assert not any((bed / "folder-out").iterdir()) and not (bed / "run").exists()


def test_a_reader_that_closes_the_pipe_is_no_error(bed):
    """`ppllava env --json | head -c 10`: no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    producer = subprocess.Popen([sys.executable, "-m", "ppllava", "env", "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=ROOT)
    producer.stdout.read(10)
    producer.stdout.close()                                  # the reader leaves before the end
    err = producer.stderr.read().decode()
    producer.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert producer.returncode in (0, 141)
