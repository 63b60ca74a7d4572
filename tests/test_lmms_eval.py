"""lmms-eval's own entry point (`python -m lmms_eval`, i.e. lmms_eval.__main__.cli_evaluate) on a small local
task written here, with the shipped test bed checkpoint: every answer and the reported accuracy are those of
`ppllava infer --batch` on the same clips, at --batch_size 1 and 4; an unreadable video is counted as wrong
and listed, and the run goes on; lmms-eval exits 0 after a failed evaluation, ppllava.evaluate.lmms_run 1.

Needs lmms-eval, installed as README "lmms-eval" says: `make test-lmms` runs this file in build/lmms (CI runs
it through `make test`, with PPLLAVA_REQUIRE_LMMS=1 so that it can never be skipped there). The main .venv
has no lmms-eval (it pulls torchvision): there the file is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if os.environ.get("PPLLAVA_REQUIRE_LMMS") != "1":
    pytest.importorskip("lmms_eval", reason="lmms-eval is installed in build/lmms: run `make test-lmms`")
import lmms_eval  # noqa: E402,F401  (with PPLLAVA_REQUIRE_LMMS=1 a missing lmms-eval is an error, not a skip)

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "checkpoints" / "testbed"
FRAMES = 8                 # fewer than the clips' 16: the test bed gets some wrong, so the accuracy is no 1.0
MAX_NEW_TOKENS = 8
TASK = "ppllava_local"
DEADLINE_S = 600           # each run takes 10-20 s on 2 cores: a deadline for a hang, not a timing

UTILS = '''
def doc_to_visual(doc):
    return list(doc["visual"])          # [an mp4 path] or a clip's frames as PNG paths


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip() == doc["answer"])}
'''


def _env(tmp: Path) -> dict:
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    env.pop("PPLLAVA_TRACEBACK", None)
    return env


def _mp4(frames_dir: Path, out: Path) -> Path:
    """A clip's PNG frames as an H.264 mp4 (48x48: read by PyAV; decord cannot decode that size)."""
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.height = stream.width = 48
        stream.pix_fmt = "yuv420p"
        for png in sorted(frames_dir.glob("*.png")):
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(png).convert("RGB")), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The test bed's synthetic clips: even clips as mp4 files, odd ones as lists of frame files, two questions
    each, and one question about a text file named .mp4; a local json dataset and its lmms-eval task."""
    from ppllava.testbed.synthetic import write_split

    root = tmp_path_factory.mktemp("lmms")
    records = [r for r in write_split(root, "test", n_clips=4, seed=0, questions_per_clip=2) if r["kind"] != "describe"]
    docs = []
    for r in records:
        folder = root / "media" / r["video"]
        if r["clip"] % 2 == 0:
            mp4 = root / f"clip_{r['clip']}.mp4"
            if not mp4.exists():
                _mp4(folder, mp4)
            visual, video = [str(mp4)], str(mp4)
        else:
            visual, video = [str(p) for p in sorted(folder.glob("*.png"))], str(folder)
        docs.append({"id": r["id"], "question": r["conversations"][0]["value"].removeprefix("<video>\n"),
                     "answer": r["answer"], "visual": visual, "video": video})
    broken = root / "broken.mp4"
    broken.write_text("not a video\n")
    docs.insert(3, {"id": "broken", "question": docs[0]["question"], "answer": docs[0]["answer"],
                    "visual": [str(broken)], "video": str(broken)})
    (root / "docs.json").write_text(json.dumps(docs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / f"{TASK}.yaml").write_text(textwrap.dedent(f"""\
        task: {TASK}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {root / 'docs.json'}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        process_results: !function utils.process_results
        generation_kwargs:
          max_new_tokens: {MAX_NEW_TOKENS}
          until: ["\\n\\n"]
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        """))
    return {"root": root, "docs": docs, "tasks": tasks}


@pytest.fixture(scope="module")
def infer(task):
    """`ppllava infer --batch` on the same videos (mp4 files, and the frame folders), questions and checkpoint."""
    root = task["root"]
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": d["id"], "video": d["video"], "question": d["question"]}) + "\n"
                                 for d in task["docs"]))
    done = subprocess.run([sys.executable, "-m", "ppllava", "infer", "--model", str(TESTBED), "--batch", str(questions),
                           "--out", str(root / "answers.jsonl"), "--frames", str(FRAMES),
                           "--max-new-tokens", str(MAX_NEW_TOKENS)],
                          capture_output=True, text=True, env=_env(root), cwd=ROOT, timeout=DEADLINE_S)
    assert done.returncode == 1, done.stderr[-3000:]                       # 1: the broken video failed
    rows = {r["id"]: r for r in map(json.loads, (root / "answers.jsonl").read_text().splitlines())}
    assert set(rows) == {d["id"] for d in task["docs"]} and "error" in rows["broken"]
    assert sum("error" in r for r in rows.values()) == 1
    return {i: r.get("answer", "") for i, r in rows.items()}


def _lmms(task, out: Path, *extra: str, module: str = "lmms_eval", model: str = str(TESTBED)):
    argv = [sys.executable, "-m", module, "--model", "ppllava", "--model_args", f"model={model},frames={FRAMES}",
            "--tasks", TASK, "--include_path", str(task["tasks"]), "--output_path", str(out), "--log_samples", *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=_env(task["root"]), cwd=task["root"],
                          timeout=DEADLINE_S)


def _results(out: Path) -> tuple[dict, list[dict]]:
    (results,) = out.rglob("*_results.json")
    (samples,) = out.rglob(f"*_samples_{TASK}.jsonl")
    return json.loads(results.read_text()), [json.loads(line) for line in samples.read_text().splitlines()]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_lmms_eval_answers_as_ppllava_infer(task, infer, tmp_path, batch_size):
    done = _lmms(task, tmp_path / "out", "--batch_size", str(batch_size))
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "Error during evaluation" not in log, log[-4000:]
    results, samples = _results(tmp_path / "out")
    docs = task["docs"]
    assert len(samples) == len(docs)
    by_doc = {s["doc_id"]: s for s in samples}
    assert [by_doc[i]["target"] for i in range(len(docs))] == [d["answer"] for d in docs]
    answers = {docs[i]["id"]: s["filtered_resps"] for i, s in by_doc.items()}
    answers = {i: a[0] if isinstance(a, list) else a for i, a in answers.items()}   # a str here, a list in some tasks
    assert answers == infer                                                 # every answer, the broken one ""
    assert answers["broken"] == ""
    right = [float(infer[d["id"]] == d["answer"]) for d in docs]
    accuracy = results["results"][TASK]["exact_match,none"]
    assert accuracy == pytest.approx(sum(right) / len(right))
    assert 0 < sum(right) < len(right) - 1                                  # some right, some wrong besides broken
    # the unreadable video: named in the log, counted as wrong, the run went on
    broken = docs.index(next(d for d in docs if d["id"] == "broken"))
    (line,) = [line for line in log.splitlines() if f"ppllava: {TASK} doc {broken}: " in line]
    assert docs[broken]["video"] in line and 'answered "" (counted as wrong), the run goes on' in line
    assert f"1 of {len(docs)} requests failed and count as wrong" in log
    assert "one at a time" not in log and "batches of 1" not in log      # N at a time, the answers of one


def test_a_failed_evaluation_exits_0_from_lmms_eval_and_1_from_lmms_run(task, tmp_path):
    """A model folder that does not exist: lmms-eval prints "Error during evaluation" and exits 0 (so README says
    to run it through ppllava.evaluate.lmms_run), which runs the same entry point and exits 1 with one line."""
    missing = str(tmp_path / "no_model")
    plain = _lmms(task, tmp_path / "a", model=missing)
    assert plain.returncode == 0 and "Error during evaluation" in plain.stdout + plain.stderr
    wrapped = _lmms(task, tmp_path / "b", module="ppllava.evaluate.lmms_run", model=missing)
    assert wrapped.returncode == 1
    last = wrapped.stderr.strip().splitlines()[-1]
    assert last.startswith("ppllava lmms_run: error: 1 evaluation(s) failed: ") and "no_model" in last, last
    assert not list((tmp_path / "b").rglob("*_results.json"))


def test_lmms_run_passes_a_good_run_through(task, infer, tmp_path):
    done = _lmms(task, tmp_path / "out", "--batch_size", "1", module="ppllava.evaluate.lmms_run")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    results, samples = _results(tmp_path / "out")
    assert len(samples) == len(task["docs"]) and TASK in results["results"]
