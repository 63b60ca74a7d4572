"""Bad input through every command, as a user meets it (issue 21): each row runs `python -m ppllava ...` in a
subprocess (PYTHONPATH = this checkout) and must exit 2 with exactly one line on stderr that holds the row's words,
no traceback, and nothing left in the row's output path. Library progress lines and our own log lines are dropped
first (DROP). Among the rows: checkpoints made by cutting each of their files (model.safetensors, config.json, the
tokenizers' files) at several offsets. Rows run two at a time."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ppllava.model.tiny import save_tiny_checkpoint
from train_data import write_training_data
from videos import write_text, write_video

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "train" / "tiny.yaml")
ALIGN = str(ROOT / "configs" / "align" / "tiny.yaml")
DROP = re.compile(r"^(\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|WARNING)\]|(DEBUG|INFO|WARNING) ppllava[.\w]*: |"
                  r"Loading weights|Writing model shards)")
INFER = ["infer", "--model", "{root}/model", "--video", "{root}/v.mp4", "--prompt", "what", "--frames", "4"]
EVAL = ["eval", "--benchmark", "videomme", "--data", "{root}/vmme.jsonl", "--model", "{root}/model", "--frames", "4"]
TRAIN = ["train", "--config", TINY, "model={root}/model", "data={root}/data/data.yaml", "output_dir={out}"]


def cut_file(src: Path, dest: Path, relative: str, offset) -> Path:
    """A copy of checkpoint `src` at `dest` with its file `relative` cut to `offset` bytes (an int, or "mid-header"
    / "mid-data" for a safetensors file: inside its JSON header, inside its tensor data)."""
    shutil.copytree(src, dest)
    path = dest / relative
    data = path.read_bytes()
    if offset == "mid-header":
        offset = 8 + struct.unpack("<Q", data[:8])[0] // 2
    elif offset == "mid-data":
        offset = (8 + struct.unpack("<Q", data[:8])[0] + len(data)) // 2
    elif offset == "mid":
        offset = len(data) // 2
    path.write_bytes(data[:offset])
    return dest


CUTS = [("model.safetensors", o) for o in (0, 5, "mid-header", "mid-data")] + \
       [("config.json", o) for o in (0, 7, "mid")] + [("tokenizer.json", o) for o in (0, 7, "mid")] + \
       [("tokenizer_config.json", o) for o in (0, "mid")] + [("prompt_tokenizer/tokenizer.json", "mid")]


def cut_name(relative, offset) -> str:
    return f"cut-{relative.replace('/', '_')}-{offset}"


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    model = save_tiny_checkpoint(root / "model")
    save_tiny_checkpoint(root / "adapter", overrides={"btadapter_depth": 2, "btadapter_max_frames": 4})
    for relative, offset in CUTS:
        cut_file(model, root / cut_name(relative, offset), relative, offset)
    write_video(root / "v.mp4", 8)
    write_video(root / "square.mp4", 8, size=(48, 48))
    write_text(root / "text.mp4")
    (root / "empty.mp4").write_bytes(b"")
    (root / "a-folder").mkdir()
    write_training_data(root / "data", videos=2, images=2)
    (root / "syntax.yaml").write_text("epochs: [1,\n")
    (root / "tagged.yaml").write_text("epochs: !!python/object/apply:os.system ['true']\n")
    (root / "unknown.yaml").write_text("epochs: 1\nlearning_rat: 0.1\n")
    (root / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    q = {"id": "a", "video": str(root / "v.mp4"), "question": "what"}
    (root / "q.jsonl").write_text(json.dumps(q) + "\n")
    (root / "dup.jsonl").write_text(json.dumps(q) + "\n" + json.dumps(q) + "\n")
    (root / "binary.jsonl").write_bytes(b'{"id": 1, "question": "a"}\n\x00\x01\xff\xfe')
    (root / "prose.jsonl").write_text("what happens in the video?\n")
    (root / "noquestion.jsonl").write_text('{"id": 1, "video": "v.mp4"}\n')
    (root / "torn-middle.jsonl").write_text('{"id": "a", "answer": "x"}\n{"id": "b", "ans\n{"id": "c", "answer": "y"}\n')
    row = {"question_id": "1", "videoID": "v", "question": "what", "options": ["A. x", "B. y"], "answer": "A"}
    (root / "vmme.jsonl").write_text(json.dumps(row) + "\n")
    (root / "vmme-letter.jsonl").write_text(json.dumps({**row, "answer": "E"}) + "\n")
    (root / "vmme-field.jsonl").write_text(json.dumps({k: v for k, v in row.items() if k != "options"}) + "\n")
    (root / "vmme-prose.jsonl").write_text("not json\n")
    (root / "mv.json").write_text(json.dumps([{"video": "v", "question": "q", "candidates": ["x"], "answer": "z"}]))
    (root / "vmme-options.jsonl").write_text(json.dumps({**row, "options": "A. x B. y"}) + "\n")
    (root / "nq").mkdir()
    (root / "nq" / "nq.csv").write_text("video,question,answer,qid,type,a0,a1,a2,a3,a4\nv,what,1,1,CW,a,b,c,d,e\n")
    (root / "nq" / "map_vid_vidorID.json").write_text('{"v": "v.mp4"')
    (root / "blank.jsonl").write_text("\n")
    (root / "golden.pt").write_bytes(b"not a torch file")
    (root / "onlystate").mkdir()
    (root / "onlystate" / "trainer_state.json").write_text('{"step": 3, "posit')
    (root / "cluster.yaml").write_text("nodes: [a, b\n")
    return root


# (id, argv, env, words the one line holds); {root} is the bed, {out} the row's own output path (must stay absent)
ROWS = [
    # infer: arguments and inputs
    ("infer no question", ["infer", "--model", "{root}/model", "--video", "{root}/v.mp4"], {}, ["give --prompt"]),
    ("infer missing video", [*INFER[:4], "{root}/nope.mp4", *INFER[5:]], {}, ["--video", "nope.mp4 does not exist"]),
    ("infer text as video", [*INFER[:4], "{root}/text.mp4", *INFER[5:]], {}, ["text.mp4", "cannot open it"]),
    ("infer empty video", [*INFER[:4], "{root}/empty.mp4", *INFER[5:]], {}, ["empty.mp4", "empty file (0 bytes)"]),
    ("infer missing model", ["infer", "--model", "{root}/nomodel", *INFER[3:]], {}, ["nomodel", "no config.json"]),
    ("infer folder not a model", ["infer", "--model", "{root}/a-folder", *INFER[3:]], {}, ["a-folder", "no config.json"]),
    ("infer frames 0", [*INFER[:-1], "0"], {}, ["--frames must be >= 1"]),
    ("infer frames 1", [*INFER[:-1], "1"], {}, ["--frames 1 is fewer than the video kernel"]),
    ("infer frames 100000", [*INFER[:-1], "100000"], {}, ["--frames 100000", "at most", "frames fit"]),
    ("infer frames over the BT-Adapter", ["infer", "--model", "{root}/adapter", *INFER[3:-1], "5"], {},
     ["--frames 5", "BT-Adapter's time embedding of 4 frames (btadapter_max_frames)"]),
    ("infer max tokens 0", [*INFER, "--max-new-tokens", "0"], {}, ["--max-new-tokens must be >= 1"]),
    ("infer long prompt", [*INFER[:6], "word " * 5000, *INFER[7:]], {}, ["positions", "> the LLM's 4096"]),
    ("infer prompt bytes", [*INFER[:6], b"\xff\xfe what".decode("utf-8", "surrogateescape"), *INFER[7:]], {},
     ["is not valid text", "pass UTF-8"]),
    ("infer bad device", [*INFER, "--device", "tpu"], {}, ["tpu"]),
    ("infer reader torchcodec", [*INFER, "--reader", "torchcodec"], {}, ["reader 'torchcodec' cannot load"]),
    ("infer chat and prompt", [*INFER, "--chat"], {}, ["--chat reads its questions from stdin"]),
    # infer --batch
    ("batch without out", ["infer", "--model", "{root}/model", "--batch", "{root}/q.jsonl"], {}, ["--batch needs --out"]),
    ("batch missing file", ["infer", "--model", "{root}/model", "--batch", "{root}/nope.jsonl", "--out", "{out}"], {},
     ["nope.jsonl does not exist"]),
    ("batch is a folder", ["infer", "--model", "{root}/model", "--batch", "{root}/a-folder", "--out", "{out}"], {},
     ["a-folder is a folder"]),
    ("batch duplicate ids", ["infer", "--model", "{root}/model", "--batch", "{root}/dup.jsonl", "--out", "{out}"], {},
     ["dup.jsonl: lines 1 and 2 have the same id 'a'"]),
    ("batch binary", ["infer", "--model", "{root}/model", "--batch", "{root}/binary.jsonl", "--out", "{out}"], {},
     ["binary.jsonl:2: not UTF-8 text"]),
    ("batch prose", ["infer", "--model", "{root}/model", "--batch", "{root}/prose.jsonl", "--out", "{out}"], {},
     ["prose.jsonl:1: not JSON"]),
    ("batch no question", ["infer", "--model", "{root}/model", "--batch", "{root}/noquestion.jsonl", "--out", "{out}"],
     {}, ["noquestion.jsonl:1: expected an object with a non-empty \"question\""]),
    ("batch out is a folder", ["infer", "--model", "{root}/model", "--batch", "{root}/q.jsonl", "--out",
                               "{root}/a-folder"], {}, ["a-folder: Is a directory"]),
    ("batch out not rows", ["infer", "--model", "{root}/model", "--batch", "{root}/q.jsonl", "--out",
                            "{root}/torn-middle.jsonl"], {}, ["torn-middle.jsonl:2: not an answer row"]),
    ("batch out where nothing is written", ["infer", "--model", "{root}/model", "--batch", "{root}/q.jsonl", "--out",
                                            "/proc/ppllava/a.jsonl"], {}, ["no file can be written in /proc"]),
    ("batch no questions", ["infer", "--model", "{root}/model", "--batch", "{root}/blank.jsonl", "--out", "{out}"],
     {}, ["blank.jsonl: no questions"]),
    # explain
    ("explain empty prompt", ["explain", "--model", "{root}/model", "--video", "{root}/v.mp4", "--prompt", " ",
                              "--out", "{out}.png"], {}, ["the prompt is empty"]),
    ("explain out where nothing is written", ["explain", "--model", "{root}/model", "--video", "{root}/v.mp4",
                                              "--prompt", "what", "--out", "/proc/ppllava/x.png"], {},
     ["no file can be written in /proc"]),
    ("explain missing video", ["explain", "--model", "{root}/model", "--video", "{root}/nope.mp4", "--prompt", "what",
                               "--out", "{out}.png"], {}, ["nope.mp4 does not exist"]),
    # eval
    ("eval limit -1", [*EVAL, "--limit", "-1"], {}, ["--limit -1", ">= 1"]),
    ("eval missing videos", [*EVAL, "--videos", "{root}/novideos"], {}, ["--videos", "novideos does not exist"]),
    ("eval no video there", [*EVAL, "--videos", "{root}/a-folder"], {},
     ["none of the", "videos exists (the first: ", "a-folder/", "check --videos"]),
    ("eval missing data", ["eval", "--benchmark", "videomme", "--data", "{root}/no.jsonl", "--model", "{root}/model"],
     {}, ["no.jsonl does not exist"]),
    ("eval wrong letter", [*EVAL[:4], "{root}/vmme-letter.jsonl", *EVAL[5:]], {},
     ["vmme-letter.jsonl: line 1: 'answer' 'E' is not one of its options' letters (A, B)"]),
    ("eval missing field", [*EVAL[:4], "{root}/vmme-field.jsonl", *EVAL[5:]], {},
     ["vmme-field.jsonl: line 1", "no field 'options'"]),
    ("eval not json", [*EVAL[:4], "{root}/vmme-prose.jsonl", *EVAL[5:]], {}, ["vmme-prose.jsonl: line 1: not JSON"]),
    ("eval mvbench answer", ["eval", "--benchmark", "mvbench", "--data", "{root}/mv.json", "--model", "{root}/model"],
     {}, ["mv.json: record 1: 'answer' 'z' is none of its 'candidates'"]),
    ("eval options a string", [*EVAL[:4], "{root}/vmme-options.jsonl", *EVAL[5:]], {},
     ["vmme-options.jsonl: line 1", "'options' is str 'A. x B. y'; expected a list of the options"]),
    ("eval max tokens 0", [*EVAL, "--max-new-tokens", "0"], {}, ["--max-new-tokens must be >= 1"]),
    ("eval nextqa map cut", ["eval", "--benchmark", "nextqa", "--data", "{root}/nq/nq.csv", "--model", "{root}/model"],
     {}, ["map_vid_vidorID.json: not valid JSON"]),
    ("eval out is a folder", [*EVAL, "--out", "{root}/a-folder"], {}, ["--out", "a-folder is a folder"]),
    ("eval out where nothing is written", [*EVAL, "--out", "/proc/ppllava/r.json"], {},
     ["--out /proc/ppllava/r.json: no file can be written in /proc"]),
    ("eval out under a file", [*EVAL, "--out", "{root}/v.mp4/r.json"], {}, ["v.mp4 is not a folder"]),
    # train and align recipes
    ("train yaml syntax", ["train", "--config", "{root}/syntax.yaml"], {}, ["syntax.yaml: not valid YAML (line 2"]),
    ("train python tag", ["train", "--config", "{root}/tagged.yaml"], {}, ["tagged.yaml: not valid YAML"]),
    ("train binary recipe", ["train", "--config", "{root}/binary.yaml"], {}, ["binary.yaml: not a UTF-8 text file"]),
    ("train unknown field", ["train", "--config", "{root}/unknown.yaml"], {}, ["learning_rat"]),
    ("train recipe folder", ["train", "--config", "{root}/a-folder"], {}, ["a-folder is a folder"]),
    ("train override tag", [*TRAIN, "lr=!!python/name:os.system"], {}, ["override 'lr=!!python/name:os.system'"]),
    ("train output a file", [*TRAIN[:-1], "output_dir={root}/q.jsonl"], {}, ["q.jsonl"]),
    ("train resume broken state", [*TRAIN, "resume={root}/onlystate"], {},
     ["onlystate is damaged: trainer_state.json is not valid JSON"]),
    ("align yaml syntax", ["align", "--config", "{root}/syntax.yaml"], {}, ["syntax.yaml: not valid YAML"]),
    ("align override tag", ["align", "--config", ALIGN, "lr=!!python/name:os.system"], {},
     ["override 'lr=!!python/name:os.system'"]),
    # the other commands
    ("export missing", ["export", "--checkpoint", "{root}/nocheckpoint", "--out", "{out}"], {}, ["nocheckpoint"]),
    ("export broken state", ["export", "--checkpoint", "{root}/onlystate", "--out", "{out}"], {},
     ["onlystate is damaged: trainer_state.json"]),
    ("convert missing base", ["convert", "--base", "{root}/nobase", "--text-tower", "{root}/model", "--out", "{out}"],
     {}, ["nobase: no config.json"]),
    ("launch cluster syntax", ["launch", "--cluster", "{root}/cluster.yaml", "--dry-run", "--", "train"], {},
     ["cluster.yaml: not valid YAML"]),
    ("parity golden not torch", ["parity", "check", "--golden", "{root}/golden.pt"], {}, ["golden.pt"]),
    ("parity golden a folder", ["parity", "check", "--golden", "{root}/a-folder"], {}, ["a-folder is a folder"]),
    ("parity record out folder", ["parity", "record", "--out", "{root}/a-folder", "--case", "relevance_map"], {},
     ["a-folder"]),
    ("demo missing model", ["demo", "--model", "{root}/nomodel", "--out", "{out}.png"], {}, ["nomodel"]),
    ("testbed tiny clips 0", ["testbed", "tiny", "--out", "{out}", "--clips", "0"], {}, ["--clips 0"]),
    ("env log level", ["env"], {"PPLLAVA_LOG_LEVEL": "LOUD"}, ["PPLLAVA_LOG_LEVEL='LOUD'"]),
    ("env bad device", ["env", "--device", "npu"], {}, ["npu"]),
]
# every file of a checkpoint cut short, through the commands that load one
CUT_COMMANDS = [INFER, ["explain", "--model", "{root}/model", "--video", "{root}/v.mp4", "--prompt", "what", "--out",
                        "{out}.png", "--frames", "4"], EVAL, TRAIN]
for n, (relative, offset) in enumerate(CUTS):
    argv = [a.replace("{root}/model", "{root}/" + cut_name(relative, offset)) for a in CUT_COMMANDS[n % 4]]
    words = {"model.safetensors": ["model.safetensors is not a complete safetensors file"],
             "config.json": ["config.json: not valid JSON"]}.get(relative, ["tokenizer", "cannot be loaded"])
    ROWS.append((f"{argv[0]} {relative} cut at {offset}", argv, {}, [cut_name(relative, offset), *words]))
ROWS.append(("convert base config cut", ["convert", "--base", "{root}/" + cut_name("config.json", "mid"),
                                         "--text-tower", "{root}/model", "--out", "{out}"], {},
             ["base", "config.json: not valid JSON"]))
ROWS.append(("demo weights cut", ["demo", "--model", "{root}/" + cut_name("model.safetensors", "mid-data"), "--out",
                                  "{out}.png"], {}, ["model.safetensors is not a complete safetensors file"]))

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "TORCH_EXTENSIONS_DIR": str(ROOT / "build" / "torch_extensions")}


def run_row(bed: Path, number: int, row) -> str | None:
    """None if the row behaves, else what went wrong."""
    name, argv, env, words = row
    out = bed / "outs" / f"row{number}"
    args = [a.replace("{root}", str(bed)).replace("{out}", str(out)) for a in argv]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ppllava", *args], env={**ENV, **env}, cwd=bed, capture_output=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    err = proc.stderr.decode("utf-8", "replace")
    lines = [line for line in err.splitlines() if line.strip() and not DROP.match(line)]
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit {proc.returncode}")
    if len(lines) != 1 or "Traceback" in err:
        problems.append(f"{len(lines)} lines")
    elif not (re.match(rf"ppllava( {argv[0]})?: error: ", lines[0]) and all(w in lines[0] for w in words)):
        problems.append(f"missing {[w for w in words if w not in lines[0]]}")
    left = [p.name for p in out.parent.glob(f"{out.name}*")]
    if left:
        problems.append(f"left {left}")
    if problems:
        return f"{name} ({time.perf_counter() - start:.1f} s): {', '.join(problems)}\n    " + "\n    ".join(err.splitlines()[-6:])
    return None


def test_every_bad_input_is_one_line_exit_2_and_leaves_nothing(bed):
    assert len(ROWS) >= 60
    if "torchcodec" in __import__("ppllava.data", fromlist=["x"]).available_readers():
        rows = [r for r in ROWS if r[0] != "infer reader torchcodec"]
    else:
        rows = ROWS
    (bed / "outs").mkdir()
    before = {p.name: p.stat().st_mtime_ns for p in bed.iterdir() if p.is_file()}
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:                       # two rows at a time on the 2 cores
        failures = [f for f in pool.map(lambda nr: run_row(bed, *nr), enumerate(rows)) if f]
    took = time.perf_counter() - start
    assert not failures, f"{len(failures)} of {len(rows)} rows wrong:\n" + "\n".join(failures)
    assert not any((bed / "outs").iterdir()) and not any((bed / "a-folder").iterdir())
    assert {p.name: p.stat().st_mtime_ns for p in bed.iterdir() if p.is_file()} == before   # inputs untouched
    print(f"{len(rows)} rows in {took:.0f} s")
