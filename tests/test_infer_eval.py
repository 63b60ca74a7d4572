"""ppllava infer and ppllava eval with a tiny checkpoint on generated clips; answer parsing and scoring
against hand-computed values; a 2-process eval gathers the same results as one process."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_models import STOPS, greedy_by_hand, save_talkative_checkpoint
from procs import kill_tree

from ppllava.cli import main
from ppllava.evaluate import LETTERS, Question, accuracy, answer_all, extract_choice, load_benchmark, mc_prompt
from ppllava.model.tiny import save_tiny_checkpoint
from videos import write_text, write_video

ROOT = Path(__file__).resolve().parents[1]
TWO_PROCESS_DEADLINE_S = 900          # the 2-process eval takes 10-30 s on 2 cores: a deadline for a hang, not a timing


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    for i in range(3):
        write_video(root / f"v{i}.mp4", 12, size=(48, 64), noise=False)
    write_text(root / "broken.mp4")
    return {"root": root, "model": save_tiny_checkpoint(root / "model")}


@pytest.fixture(scope="module")
def talk(bed):
    """The talkative tiny checkpoint (tests/infer_models.py): greedy answers of varied words, no natural stop."""
    from ppllava.infer import Pipeline

    model = save_talkative_checkpoint(bed["root"] / "talkative")
    return {"model": model, "pipe": Pipeline.load(model, frames=4)}


def one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


# -- infer ---------------------------------------------------------------------------------------------
def test_infer_answers_the_greedy_tokens_streamed_and_as_json(bed, talk, capsys):
    video, prompt = bed["root"] / "v0.mp4", "what happens in the video"
    pipe = talk["pipe"]
    tokens = greedy_by_hand(pipe, pipe.read(video), prompt, 5)
    text = pipe.tokenizer.decode(tokens)
    assert len(tokens) == 5 and len(text.strip()) >= 5 and text.strip().replace(" ", "").isalpha()   # words, no stop
    argv = ["infer", "--model", str(talk["model"]), "--video", str(video), "--prompt", prompt, "--frames", "4",
            "--max-new-tokens", "5"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == text.strip() and out["tokens"] == 5
    assert out["visual_tokens"] == 2 * 8 * 8                               # 4 frames, (2,3,3) on 24x24
    assert set(out["seconds"]) == {"decode", "vision", "first_token", "generate"}
    assert main(argv) == 0                                                 # streamed: the pieces, then a newline
    assert capsys.readouterr().out == text + "\n"


@pytest.mark.parametrize("stop", STOPS)
def test_the_answer_ends_at_a_stop_token_the_model_generates(bed, talk, stop):
    """The LM head is biased to make `stop` the third token: the answer is the two tokens before it, and
    generation ends there (no fourth step). Without the bias the model would go on (checked first)."""
    pipe, question = talk["pipe"], "how many people are there"
    visual = pipe.read(bed["root"] / "v2.mp4")
    free = greedy_by_hand(pipe, visual, question, 6)
    assert len(free) == 6                                                  # no stop of its own
    stop_id, steps = pipe.tokenizer.convert_tokens_to_ids(stop), []

    def force(module, args, logits):
        steps.append(logits.shape[1])
        if len(steps) == 3:                                                # the step that picks the third token
            logits = logits.clone()
            logits[:, -1, stop_id] += 1e4
        return logits

    pieces = []
    handle = pipe.model.language_model.lm_head.register_forward_hook(force)
    try:
        answer = pipe.ask(visual, question, max_new_tokens=6, stream=pieces.append)
    finally:
        handle.remove()
    expected = pipe.tokenizer.decode(free[:2])
    assert expected.strip() and (answer.text, answer.tokens) == (expected.strip(), 2)
    assert "".join(pieces) == expected
    assert len(steps) == 3, f"generation went on for {len(steps)} steps after the stop token"


def test_chat_reuses_the_frames_and_follows_the_question(bed):
    from ppllava.infer import Pipeline

    pipe = Pipeline.load(bed["model"], frames=4)
    end_of_turn, eos = pipe.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert set(pipe.stop_ids) == {end_of_turn, eos}                        # found in the chat template
    visual = pipe.read(bed["root"] / "v1.mp4")
    chat = pipe.chat(visual)
    chat.ask("what happens in the video", max_new_tokens=3)
    inputs = pipe.inputs(visual, chat.messages + [{"role": "user", "content": [{"type": "text", "text": "who"}]}])
    assert inputs["patches"] is visual.patches                             # not re-encoded
    assert pipe.model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]   # forward takes them too
    prompt = pipe.prompt_tokenizer.decode(inputs["prompt_input_ids"][0], skip_special_tokens=True)
    assert "what happens in the video" in prompt and "who" in prompt       # the questions so far, not the answers
    answer = chat.ask("who", max_new_tokens=3)
    assert len(chat.messages) == 4 and chat.messages[-1]["content"][0]["text"] == answer.text   # the history holds it


@pytest.mark.parametrize("case", ["missing", "unreadable", "not-ppllava"])
def test_infer_bad_input_exits_2_with_one_line(bed, capsys, tmp_path, case):
    video, model = bed["root"] / "v0.mp4", bed["model"]
    if case == "missing":
        video, needle = tmp_path / "nope.mp4", "does not exist"
    elif case == "unreadable":
        video, needle = bed["root"] / "broken.mp4", "broken.mp4"
    else:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
        model, needle = tmp_path, "not ppllava"
    one_line_error(capsys, ["infer", "--model", str(model), "--video", str(video), "--prompt", "what", "--frames", "4"],
                   needle)


def test_frames_default_to_those_the_checkpoint_was_trained_with(bed, tmp_path, capsys):
    """A checkpoint whose config says default_frames 4 (ppllava train writes it) is read at 4 frames unless --frames
    says otherwise, and the run says which it used; one that does not say gets 32."""
    import shutil

    trained = shutil.copytree(bed["model"], tmp_path / "trained")
    config = json.loads((trained / "config.json").read_text())
    (trained / "config.json").write_text(json.dumps({**config, "default_frames": 4}))
    argv = ["infer", "--video", str(bed["root"] / "v0.mp4"), "--prompt", "what", "--max-new-tokens", "1", "--json"]
    seen = {}
    for name, model, more in [("trained", trained, []), ("explicit", trained, ["--frames", "8"]),
                              ("untrained", bed["model"], [])]:
        assert main(argv + ["--model", str(model)] + more) == 0
        captured = capsys.readouterr()
        seen[name] = (json.loads(captured.out)["visual_tokens"],
                      "4 frames per video, as the checkpoint was trained (--frames to change)" in captured.err)
    assert seen == {"trained": (2 * 8 * 8, True), "explicit": (4 * 8 * 8, False), "untrained": (16 * 8 * 8, False)}


def test_batch_infer_writes_a_line_per_question_and_continues(bed, tmp_path, capsys):
    requests = tmp_path / "q.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "video": str(bed["root"] / "v0.mp4"), "question": "what happens"},
        {"id": "b", "video": str(bed["root"] / "broken.mp4"), "question": "what happens"},
        {"id": "c", "question": "describe the image in detail"}]))
    out = tmp_path / "answers.jsonl"
    argv = ["infer", "--model", str(bed["model"]), "--batch", str(requests), "--out", str(out), "--frames", "4",
            "--max-new-tokens", "3"]
    assert main(argv) == 1                                                 # one error
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"a", "b", "c"} and "error" in rows["b"] and "answer" in rows["a"] and "answer" in rows["c"]
    assert rows["a"]["visual_tokens"] == 128 and rows["c"]["visual_tokens"] == 0
    assert main(argv) == 1                                                 # a rerun retries only the failed one
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b", "c", "b"]
    assert "answered 0, errors 1, already in" in capsys.readouterr().err


# -- answers and accuracy -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("B", 1), ("(C) bird", 2), ("A. cat", 0), ("The answer is D.", 3), ("Answer: (B)", 1), ("I think it is a dog", 1),
    ("dog or cat", None), ("", None), ("E", None), ("answer: b", None), ("Option C", 2), ("A dog.", 1),
    ("(A) cat is wrong, the answer is B", 1), ("(A) or (B)", None)])
def test_extract_choice(text, expected):
    assert extract_choice(text, ("cat", "dog", "bird", "fish")) == expected


def test_extract_choice_reads_option_text_as_whole_words():
    assert extract_choice("A person cooking", ("a cat", "a dog", "a person cooking")) == 2
    assert extract_choice("12", ("2", "12", "3")) == 1
    assert extract_choice("the cats", ("cat", "dog")) is None


class Scripted:
    """A pipeline that answers from a script: the test knows every answer, so it knows the accuracy."""

    def __init__(self, answers):
        self.answers = answers

    def read(self, path, window=(None, None), fps=None):
        if "broken" in path:
            from ppllava.data import UnreadableSample
            raise UnreadableSample(path, "not a video")
        return path

    def ask(self, visual, prompt, max_new_tokens, pooling_text):
        assert "Answer with" not in pooling_text and pooling_text.startswith("q\n")
        class A:
            text = self.answers[visual]
        return A()


def test_accuracy_by_hand():
    qs = [Question(str(i), f"v{i}", "q", ("x", "y", "z"), answer, cat) for i, (answer, cat) in
          enumerate([(0, "count"), (1, "count"), (2, "order"), (0, "order"), (1, "order")])]
    answers = {"v0": "A", "v1": "(C)", "v2": "The answer is C", "v3": "no idea", "v4": "y"}
    rows = answer_all(Scripted(answers), qs, progress=False)
    assert [r["choice"] for r in rows] == ["A", "C", "C", None, "B"]
    result = accuracy(rows)
    assert result == {"accuracy": pytest.approx(3 / 5), "scored": 5, "total": 5, "unparsed": 1, "per_group": {},
                      "per_category": {"count": {"accuracy": 0.5, "n": 2},
                                       "order": {"accuracy": pytest.approx(2 / 3), "n": 3}}}
    broken = answer_all(Scripted(answers), [Question("b", "broken.mp4", "q", ("x", "y"), 0, "count")], progress=False)
    assert broken[0]["correct"] is False and broken[0]["choice"] is None and "not a video" in broken[0]["error"]
    # an error row is scored as wrong, and it is not an unparsed answer: there was no answer
    assert accuracy(rows + broken) == {"accuracy": pytest.approx(3 / 6), "scored": 6, "total": 6, "unparsed": 1,
                                       "per_group": {},
                                       "per_category": {"count": {"accuracy": pytest.approx(1 / 3), "n": 3},
                                                        "order": {"accuracy": pytest.approx(2 / 3), "n": 3}}}


def test_shards_keep_each_video_on_one_process():
    from ppllava.evaluate.runner import shard

    qs = [Question(str(i), f"v{i % 3}", "q", ("x", "y"), 0, "c") for i in range(8)]
    parts = [shard(qs, rank, 2) for rank in (0, 1)]
    assert sorted(q.id for part in parts for q in part) == sorted(q.id for q in qs)
    assert {q.video for q in parts[0]} == {"v0", "v2"} and {q.video for q in parts[1]} == {"v1"}


def test_mc_prompt_lists_lettered_options():
    q = Question("1", "v", "What is on the mat?", ("a cat", "a dog"), 0, "c")
    assert mc_prompt(q) == ("What is on the mat?\nOptions:\n(A) a cat\n(B) a dog\n"
                            "Answer with the option's letter from the given choices directly.")


# -- the four formats -----------------------------------------------------------------------------------
def test_formats_read_the_same_question(tmp_path):
    options = ["a cat", "a dog", "a bird", "a fish", "a cow"]
    (tmp_path / "mv").mkdir()
    (tmp_path / "mv" / "action_count.json").write_text(json.dumps(
        [{"video": "v0.mp4", "question": "What?", "candidates": options[:4], "answer": "a bird"}]))
    (tmp_path / "vmme.jsonl").write_text(json.dumps(
        {"question_id": "001-1", "videoID": "v0", "question": "What?", "options": [f"{LETTERS[i]}. {o}" for i, o in
         enumerate(options[:4])], "answer": "C", "task_type": "Counting Problem", "duration": "short"}))
    with (tmp_path / "nextqa.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                    "a0", "a1", "a2", "a3", "a4"])
        w.writerow(["v0", 10, 64, 48, "what", 2, 7, "CW", *options])
    (tmp_path / "ego.json").write_text(json.dumps([{"q_uid": "v0", "question": "What?",
                                                    **{f"option {i}": o for i, o in enumerate(options)}}]))
    (tmp_path / "subset_answers.json").write_text(json.dumps({"v0": 2}))
    read = {name: load_benchmark(name, tmp_path / file)[0] for name, file in
            [("mvbench", "mv"), ("videomme", "vmme.jsonl"), ("nextqa", "nextqa.csv"), ("egoschema", "ego.json")]}
    for name, q in read.items():
        assert q.answer == 2 and q.options[2] == "a bird" and q.video == str(tmp_path / "v0.mp4"), name
    assert (read["mvbench"].category, read["videomme"].category, read["nextqa"].category) == \
        ("action_count", "Counting Problem", "CW")
    with pytest.raises(ValueError, match="not in the videomme format"):
        load_benchmark("videomme", tmp_path / "ego.json")


def test_public_layouts_mvbench_task_folders_and_windows_nextqa_id_map(tmp_path, bed):
    from ppllava.infer import Pipeline

    (tmp_path / "json").mkdir()
    (tmp_path / "video" / "star" / "Charades_segment").mkdir(parents=True)
    write_video(tmp_path / "video" / "star" / "Charades_segment" / "c1.mp4", 25, size=(48, 64), noise=False)
    (tmp_path / "json" / "action_sequence.json").write_text(json.dumps(
        [{"video": "c1.mp4", "question": "What?", "candidates": ["x", "y"], "answer": "y", "start": 0.4, "end": 0.8}]))
    q = load_benchmark("mvbench", tmp_path / "json", tmp_path / "video")[0]
    assert q.video == str(tmp_path / "video" / "star" / "Charades_segment" / "c1.mp4") and q.window == (0.4, 0.8)
    visual = Pipeline.load(bed["model"], frames=4).read(q.video, window=q.window)
    assert all(10 <= i < 20 for i in visual.indices)                     # 25 fps: seconds 0.4-0.8 are frames 10-19

    with (tmp_path / "nextqa.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"])
        w.writerow(["4010069381", "what", 1, 3, "TN", "a", "b", "c", "d", "e"])
    (tmp_path / "map_vid_vidorID.json").write_text(json.dumps({"4010069381": "0000/4010069381"}))
    assert load_benchmark("nextqa", tmp_path / "nextqa.csv", tmp_path / "NExTVideo")[0].video == \
        str(tmp_path / "NExTVideo" / "0000" / "4010069381.mp4")


# -- eval end to end ------------------------------------------------------------------------------------
def run_to_exit(argv, deadline_s, **kwargs):
    """(returncode, stderr) of a command waited on until it exits. Past `deadline_s` its whole process tree is
    killed (torchrun's workers run in sessions of their own) and the test fails saying so."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        _, stderr = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        _, stderr = proc.communicate()
        pytest.fail(f"{' '.join(map(str, argv[:6]))} ... did not exit within the {deadline_s} s deadline; its "
                    f"processes were killed. stderr tail:\n{stderr[-3000:]}")
    return proc.returncode, stderr


@pytest.fixture(scope="module")
def benchmark(bed):
    path = bed["root"] / "bench.jsonl"
    rows = [{"question_id": str(i), "videoID": f"v{i % 3}", "question": "what happens in the video",
             "options": ["A. a cat", "B. a dog", "C. a person cooking"], "answer": "ABC"[i % 3],
             "task_type": ["count", "order"][i % 2], "duration": ["short", "short", "long"][i % 3]} for i in range(6)]
    rows.append({**rows[0], "question_id": "x", "videoID": "broken"})
    path.write_text("\n".join(map(json.dumps, rows)))
    return path


# The answers the scripted eval gives per video, and what they must score as, worked out by hand from the
# benchmark rows above (question i: video v{i % 3}, answer "ABC"[i % 3], category count/order by i % 2,
# duration short/short/long by i % 3; "x" is question 0 on the unreadable video).
SCRIPT = {"v0.mp4": "A", "v1.mp4": "(C) a person cooking", "v2.mp4": "a cat or a dog"}   # right, wrong, unparsed
CHOICES = ["A", "C", None, "A", "C", None, None]
CORRECT = [True, False, False, True, False, False, False]


def test_eval_writes_results_that_check_by_hand(bed, benchmark, tmp_path, capsys, monkeypatch):
    from ppllava.infer import Pipeline

    real, asked = Pipeline.ask, []

    def scripted(self, visual, question, **kwargs):
        answer = real(self, visual, question, **kwargs)              # the model still answers; the script replaces it
        asked.append(Path(visual.path).name)
        return dataclasses.replace(answer, text=SCRIPT[Path(visual.path).name])

    monkeypatch.setattr(Pipeline, "ask", scripted)
    out = tmp_path / "results.json"
    assert main(["eval", "--benchmark", "videomme", "--data", str(benchmark), "--model", str(bed["model"]),
                 "--out", str(out), "--frames", "4", "--max-new-tokens", "4"]) == 0
    result = json.loads(out.read_text())
    assert sorted(asked) == sorted(f"v{i % 3}.mp4" for i in range(6))    # the unreadable video never reaches ask
    rows = result.pop("questions")
    assert [r["id"] for r in rows] == [str(i) for i in range(6)] + ["x"]
    assert [r["choice"] for r in rows] == CHOICES and [r["correct"] for r in rows] == CORRECT
    assert [r["answer"] for r in rows] == list("ABCABCA") and ["error" in r for r in rows] == [False] * 6 + [True]
    assert [r["output"] for r in rows] == [SCRIPT[f"v{i % 3}.mp4"] for i in range(6)] + [None]
    assert result == {"benchmark": "videomme", "accuracy": pytest.approx(2 / 7), "scored": 7, "total": 7,
                      "unparsed": 2, "errors": 1, "processes": 1,
                      "per_category": {"count": {"accuracy": pytest.approx(1 / 4), "n": 4},     # 0 right; 2, 4, x not
                                       "order": {"accuracy": pytest.approx(1 / 3), "n": 3}},    # 3 right; 1, 5 not
                      "per_group": {"long": {"accuracy": 0.0, "n": 2},                          # 2, 5
                                    "short": {"accuracy": pytest.approx(2 / 5), "n": 5}}}       # 0, 3 of 0, 1, 3, 4, x
    assert ("videomme: accuracy 28.57% over 7 scored of 7 questions (2 answers named no option, 1 unreadable videos; "
            "1 process(es))") in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_eval_says_before_loading_which_videos_do_not_exist(bed, tmp_path, capsys):
    """Some videos missing: said on stderr before the model loads, their questions answered as unreadable (wrong);
    none there (a wrong --videos): refused, exit 2, one line."""
    rows = [{"question_id": str(i), "videoID": video, "question": "what happens", "options": ["A. a", "B. b"],
             "answer": "A", "task_type": "count", "duration": "short"} for i, video in enumerate(["v0", "gone", "v0"])]
    data = tmp_path / "bench.jsonl"
    data.write_text("\n".join(map(json.dumps, rows)))
    common = ["eval", "--benchmark", "videomme", "--data", str(data), "--model", str(bed["model"]), "--frames", "4",
              "--max-new-tokens", "2"]
    out = tmp_path / "r.json"
    assert main([*common, "--videos", str(bed["root"]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"1 of 2 videos do not exist (the first: {bed['root'] / 'gone.mp4'}); their questions count as wrong" in err
    result = json.loads(out.read_text())
    assert ["error" in r for r in result["questions"]] == [False, True, False] and result["errors"] == 1
    assert main([*common, "--videos", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"none of the 2 videos exists (the first: {tmp_path / 'v0.mp4'}): check --videos" in err[0]


def test_a_crashed_eval_resumes_with_the_answers_so_far(bed, benchmark, tmp_path, monkeypatch, capsys, caplog):
    """Killed after three answers: the journal beside --out holds them; the same command asks only the rest, its
    results equal an uninterrupted run's, and the journals are gone. A journal of other settings is refused; a
    line cut short is asked again; journals of several processes are all read."""
    from ppllava.infer import Pipeline

    common = ["eval", "--benchmark", "videomme", "--data", str(benchmark), "--model", str(bed["model"]), "--frames",
              "4", "--max-new-tokens", "4"]
    clean = tmp_path / "clean.json"
    assert main([*common, "--out", str(clean)]) == 0
    real, asked = Pipeline.ask, []

    def ask(self, visual, question, **kwargs):
        if crash and len(asked) == 3:
            raise KeyboardInterrupt                                     # as Ctrl-C or a kill, mid-run
        asked.append(question)
        return real(self, visual, question, **kwargs)

    monkeypatch.setattr(Pipeline, "ask", ask)
    crash, out = True, tmp_path / "r.json"
    assert main([*common, "--out", str(out)]) == 130 and not out.exists()
    journal = tmp_path / ".r.json.answers-0.jsonl"
    header, *rows = journal.read_text().splitlines()
    assert [json.loads(r)["id"] for r in rows] == ["0", "1", "2"]
    # as if a second process had answered question 2, and the first was killed while writing question 3
    (tmp_path / ".r.json.answers-1.jsonl").write_text(header + "\n" + rows[2] + "\n")
    journal.write_text(header + "\n" + rows[0] + "\n" + rows[1] + "\n" + '{"id": "3", "categ')
    capsys.readouterr()
    crash = False
    assert main([*common, "--max-new-tokens", "3", "--out", str(out)]) == 2
    assert "a partial run with other settings (max_new_tokens 4 there, 3 now)" in capsys.readouterr().err
    asked.clear()
    assert main([*common, "--out", str(out)]) == 0
    assert len(asked) == 3                                  # questions 3, 4, 5 (x's video is unreadable, not asked)
    assert "resuming: 3 of this process's 7 questions" in caplog.text and "line 4 was cut short" in caplog.text
    assert json.loads(out.read_text()) == json.loads(clean.read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_journal_of_a_checkpoint_since_rewritten_is_refused(bed, benchmark, tmp_path, monkeypatch, capsys):
    """The same --model path holding other weights (trained again into it) no longer resumes the old answers."""
    import shutil

    from ppllava.infer import Pipeline

    model = shutil.copytree(bed["model"], tmp_path / "model")
    argv = ["eval", "--benchmark", "videomme", "--data", str(benchmark), "--model", str(model), "--frames", "4",
            "--max-new-tokens", "2", "--out", str(tmp_path / "r.json")]

    real, asked = Pipeline.ask, []

    def ask(self, visual, question, **kwargs):
        if asked:
            raise KeyboardInterrupt                                     # killed after one answer
        asked.append(question)
        return real(self, visual, question, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Pipeline, "ask", ask)
        assert main(argv) == 130 and (tmp_path / ".r.json.answers-0.jsonl").is_file()
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "a partial run with other settings (checkpoint " in err and "rerun with those, or delete it" in err, err


@pytest.mark.parametrize("line", ['{"id": [1], "x": 1}', '[1]', '"text"', '{"id": "3"}', '{"id": 3, "category": "all", '
                                  '"group": null, "video": "v", "answer": "A", "output": "A", "choice": "A", "correct": true}'])
def test_a_journal_line_that_is_not_a_row_is_named(tmp_path, line):
    """JSON but not a row eval wrote (an id that cannot be one, fields missing): refused in one line, not a
    traceback (an unhashable id) nor a row that breaks the scoring at the end."""
    from ppllava.errors import UserError
    from ppllava.evaluate.journal import Journal

    journal = Journal(tmp_path / "r.json", 0, {"frames": 4})
    journal.path.write_text('{"settings": {"frames": 4}}\n' + line + "\n")
    with pytest.raises(UserError, match=r"answers-0\.jsonl:2: not a journal line \(eval --out writes these\)"):
        journal.load()


def test_eval_out_in_a_folder_still_to_make(bed, benchmark, tmp_path):
    """The journal is written before --out: its folder is made for it, as for --out at the end."""
    out = tmp_path / "new" / "deeper" / "r.json"
    assert main(["eval", "--benchmark", "videomme", "--data", str(benchmark), "--model", str(bed["model"]), "--frames",
                 "4", "--max-new-tokens", "2", "--limit", "2", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["questions"]) == 2 and os.listdir(out.parent) == ["r.json"]


def test_eval_two_processes_gather_the_same_results(bed, benchmark, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    common = ["--benchmark", "videomme", "--data", str(benchmark), "--model", str(bed["model"]), "--frames", "4",
              "--max-new-tokens", "4"]
    assert main(["eval", *common, "--out", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    returncode, stderr = run_to_exit([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                      "2", "-m", "ppllava", "eval", *common, "--out", str(two)],
                                     TWO_PROCESS_DEADLINE_S, env=env, cwd=ROOT)
    assert returncode == 0, stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["processes"] == 2 and a["questions"] == b["questions"] and a["accuracy"] == b["accuracy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]        # both processes' journals removed


# -- the lmms-eval adapter (without lmms-eval: its requests are plain objects) -----------------------------
def test_lmms_adapter_answers_generate_until_requests_cut_at_until(bed, talk):
    from PIL import Image

    from ppllava.evaluate.lmms_adapter import Adapter

    class Request:
        def __init__(self, *args):
            self.args = args

    adapter = Adapter(model=str(talk["model"]), frames="4", max_new_tokens="3")
    frames = [Image.new("RGB", (64, 48), (10 * i, 0, 0)) for i in range(10)]
    image = Image.new("RGB", (64, 48), "red")
    docs = {"v": {"test": [{"video": str(bed["root"] / "v0.mp4")}, {"image": image}, {"frames": frames}]}}
    adapter.task_dict = docs
    # the un-cut answers, from the Pipeline itself
    pipe, question = adapter.pipeline, "what happens in the video"
    whole = pipe.ask(pipe.read(bed["root"] / "v0.mp4"), question, max_new_tokens=8).text
    image_answer = pipe.ask(pipe.from_frames(torch.from_numpy(np.array(image))[None], is_video=False),
                            "describe the image in detail", max_new_tokens=3).text          # the default: 3 tokens
    framed = pipe.ask(adapter._visual(frames), question, max_new_tokens=6).text
    assert len(whole) >= 8 and len(framed) >= 4 and image_answer        # words to cut
    cut, early, late = whole[4:6], framed[1:3], framed[3:]
    assert whole.index(cut) > 0 and 0 < framed.index(early) < framed.index(late)   # each cut leaves a shorter answer
    requests = [Request(question, {"max_new_tokens": 8, "until": cut}, lambda doc: [doc["video"]], 0, "v", "test"),
                Request("describe the image in detail", {}, lambda doc: [doc["image"]], 1, "v", "test"),
                Request(question, {"max_new_tokens": 6, "until": ["never in it", early, late]},
                        lambda doc: doc["frames"], 2, "v", "test"),
                Request(question, {"max_new_tokens": 6, "until": ["never in it"]}, lambda doc: doc["frames"], 2, "v",
                        "test")]
    answers = adapter.generate_until(requests)
    # by hand: each answer up to where the first of its until strings starts
    assert answers == [whole[:whole.index(cut)], image_answer, framed[:framed.index(early)], framed]
    # --batch_size 3: the same answers, requests of one token limit through the LLM together; an unreadable video
    # inside a batch is "" and the batch goes on
    batched = Adapter(model=str(talk["model"]), frames="4", max_new_tokens="3", batch_size="3")
    batched.task_dict = {"v": {"test": docs["v"]["test"] + [{"video": str(bed["root"] / "missing.mp4")}]}}
    sizes = []
    real = batched.pipeline.generate_batch
    batched.pipeline.generate_batch = lambda rows, *a, **k: sizes.append(len(rows)) or real(rows, *a, **k)
    broken = Request(question, {"max_new_tokens": 6, "until": ["never in it"]}, lambda doc: [doc["video"]], 3, "v",
                     "test")
    assert batched.generate_until(requests[:2] + [broken] + requests[2:]) == answers[:2] + [""] + answers[2:]
    assert sizes == [1, 1, 2] and len(batched.failures) == 1 and "missing.mp4" in batched.failures[0][1]
    visual = adapter._visual(frames)
    assert visual.is_video and len(visual.indices) == 4                   # 10 frames sampled down to --frames
    assert [int(f[0, 0, 0]) for f in visual.frames] == [10, 30, 60, 80]   # segment centres of 10: 1, 3, 6, 8
    assert adapter.device == adapter.pipeline.device
    assert adapter.rank == 0 and adapter.world_size == 1
    with pytest.raises(NotImplementedError, match="generate_until"):
        adapter.loglikelihood(requests)
