"""`ppllava eval` on bad input (issue 21): --limit below 1 and a missing --videos folder are refused before any model is
loaded; an answer that is not one of the question's options names the file, the record and the field; and an empty
answer is shown (infer prints a note on stderr, the eval results keep the empty string); options given as one
string, a question that is not text and --max-new-tokens 0 are refused."""

from __future__ import annotations

import csv
import json

import pytest

from ppllava.cli import main
from ppllava.errors import UserError
from ppllava.evaluate import load_benchmark
from ppllava.model.tiny import save_tiny_checkpoint
from videos import write_video

OPTIONS = ["A. a cat", "B. a dog", "C. a bird"]


def videomme(path, answers):
    path.write_text("".join(json.dumps({"question_id": str(i), "videoID": "v0", "question": "what?", "options": OPTIONS,
                                        "answer": a, "task_type": "count"}) + "\n" for i, a in enumerate(answers)))
    return path


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-inputs")
    write_video(root / "v0.mp4", 8, size=(48, 64), noise=False)
    return {"root": root, "model": save_tiny_checkpoint(root / "model"), "data": videomme(root / "q.jsonl", "AB")}


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_limit_below_one_is_refused(bed, capsys, limit):
    assert main(["eval", "--benchmark", "videomme", "--data", str(bed["data"]), "--model", str(bed["model"]),
                 "--limit", limit]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--limit {limit}" in err[0] and ">= 1" in err[0], err


def test_a_missing_videos_folder_is_refused(bed, capsys):
    assert main(["eval", "--benchmark", "videomme", "--data", str(bed["data"]), "--model", str(bed["model"]),
                 "--videos", str(bed["root"] / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--videos {bed['root'] / 'nowhere'} does not exist" in err[0], err


def test_wrong_answers_name_the_file_record_and_field(tmp_path):
    with pytest.raises(UserError, match=r"q\.jsonl: line 2: 'answer' 'E' is not one of its options' letters \(A, B, C\)"):
        load_benchmark("videomme", videomme(tmp_path / "q.jsonl", "AE"))
    mv = tmp_path / "mv.json"
    mv.write_text(json.dumps([{"video": "v", "question": "q", "candidates": ["x", "y"], "answer": "y"},
                              {"video": "v", "question": "q", "candidates": ["x", "y"], "answer": "z"}]))
    with pytest.raises(UserError, match=r"mv\.json: record 2: 'answer' 'z' is none of its 'candidates' \('x', 'y'\)"):
        load_benchmark("mvbench", mv)
    nq = tmp_path / "nextqa.csv"
    with nq.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"])
        w.writerow(["v0", "what", 2, 1, "CW", "a", "b", "c", "d", "e"])
        w.writerow(["v0", "what", 7, 2, "CW", "a", "b", "c", "d", "e"])
    with pytest.raises(UserError, match=r"nextqa\.csv: line 3: 'answer' is '7'; expected an option number 0-4"):
        load_benchmark("nextqa", nq)
    ego = tmp_path / "ego.json"
    ego.write_text(json.dumps([{"q_uid": "v0", "question": "q", "answer": "two",
                                **{f"option {i}": str(i) for i in range(5)}}]))
    with pytest.raises(UserError, match=r"ego\.json: record 1: 'answer' is 'two'"):
        load_benchmark("egoschema", ego)
    missing = videomme(tmp_path / "m.jsonl", "A")
    missing.write_text(missing.read_text().replace('"videoID"', '"video"'))
    with pytest.raises(UserError, match=r"m\.jsonl: line 1: not in the videomme format: no field 'video_id'"):
        load_benchmark("videomme", missing)


def test_a_question_id_given_twice_is_refused(tmp_path):
    """Results rows, and the journal that resumes eval --out, are by question id: two questions of one id were both
    answered with the first's row when resumed."""
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps({"question_id": "7", "videoID": f"v{i}", "question": "what?", "options": OPTIONS,
                                           "answer": "A"}) for i in range(2)))
    with pytest.raises(UserError, match=r"q\.jsonl: question id '7' is given twice; give each question its own id"):
        load_benchmark("videomme", path)


def test_an_egoschema_q_uid_that_is_a_number_reads_as_text(tmp_path):
    """Every format's ids are str (as the journal and the results read back); subset_answers.json's keys are too."""
    ego = tmp_path / "ego.json"
    ego.write_text(json.dumps([{"q_uid": 5, "question": "q", **{f"option {i}": str(i) for i in range(5)}}]))
    (tmp_path / "subset_answers.json").write_text('{"5": 1}')
    [q] = load_benchmark("egoschema", ego)
    assert (q.id, q.answer, q.video) == ("5", 1, str(tmp_path / "5.mp4"))


def test_an_empty_answer_is_shown(bed, tmp_path, capsys):
    """The plain tiny checkpoint answers every prompt with newlines only: the answer is ''."""
    assert main(["infer", "--model", str(bed["model"]), "--video", str(bed["root"] / "v0.mp4"), "--prompt", "what?",
                 "--frames", "4", "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "" and "(empty answer: 3 generated token(s) decode to no text)" in captured.err
    out = tmp_path / "r.json"
    assert main(["eval", "--benchmark", "videomme", "--data", str(bed["data"]), "--model", str(bed["model"]),
                 "--frames", "4", "--max-new-tokens", "3", "--limit", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["questions"]
    assert [(r["output"], r["choice"], r["correct"]) for r in rows] == [("", None, False)]


def _record(path, **fields):
    row = {"question_id": "1", "videoID": "v0", "question": "what?", "options": OPTIONS, "answer": "A"}
    path.write_text(json.dumps({**row, **fields}) + "\n")
    return path


@pytest.mark.parametrize("argv,words", [
    # options as one string read as one option per character, a question that is a number failed in the prompt
    (["--benchmark", "videomme", "--data", "{root}/s.jsonl"], ["s.jsonl: line 1", "'options' is str 'A. a cat B. a dog'",
                                                               "expected a list of the options"]),
    (["--benchmark", "mvbench", "--data", "{root}/mv.json"], ["mv.json: record 1", "'candidates' is str 'xy'"]),
    (["--benchmark", "videomme", "--data", "{root}/n.jsonl"], ["n.jsonl: question 1: 'question' is 5; expected its text"]),
    (["--benchmark", "videomme", "--data", "{data}", "--max-new-tokens", "0"], ["--max-new-tokens must be >= 1, got 0"]),
])
def test_malformed_records_and_arguments_are_refused(bed, tmp_path, capsys, argv, words):
    _record(tmp_path / "s.jsonl", options="A. a cat B. a dog")
    _record(tmp_path / "n.jsonl", question=5)
    (tmp_path / "mv.json").write_text(json.dumps([{"video": "v0", "question": "q", "candidates": "xy", "answer": "x"}]))
    args = [a.replace("{root}", str(tmp_path)).replace("{data}", str(bed["data"])) for a in argv]
    assert main(["eval", *args, "--model", str(bed["model"]), "--frames", "4"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("ppllava eval: error: ") and all(w in err[0] for w in words), err


def test_a_broken_file_beside_the_annotations_is_named(tmp_path):
    """NExT-QA's map_vid_vidorID.json and EgoSchema's subset_answers.json cut short: the error named the csv / json."""
    nq = tmp_path / "nextqa.csv"
    nq.write_text("video,question,answer,qid,type,a0,a1,a2,a3,a4\nv0,what,2,1,CW,a,b,c,d,e\n")
    (tmp_path / "map_vid_vidorID.json").write_text('{"v0": "v0.mp4"')
    with pytest.raises(UserError, match=r"map_vid_vidorID\.json: not valid JSON"):
        load_benchmark("nextqa", nq)
    (tmp_path / "map_vid_vidorID.json").write_text('["v0.mp4"]')
    with pytest.raises(UserError, match=r"map_vid_vidorID\.json: expected a JSON object of id -> value, got a list"):
        load_benchmark("nextqa", nq)
    ego = tmp_path / "ego.json"
    ego.write_text(json.dumps([{"q_uid": "v0", "question": "q", **{f"option {i}": str(i) for i in range(5)}}]))
    (tmp_path / "subset_answers.json").write_text('{"v0": 1')
    with pytest.raises(UserError, match=r"subset_answers\.json: not valid JSON"):
        load_benchmark("egoschema", ego)
