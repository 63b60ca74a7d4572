"""`ppllava infer --batch` on bad input and after crashes (issue 21): two questions with one id are refused before
anything runs; a binary or non-JSON batch file is named with its line; a question that is not valid text is an error
row and the batch goes on; a last answer line cut short by a crash is dropped and re-answered, never glued to the next
answer. The answers file is checked row by row after each rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infer_models import save_talkative_checkpoint

from ppllava.cli import main
from videos import write_video


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    write_video(root / "v0.mp4", 8, size=(48, 64), noise=False)
    return {"root": root, "model": save_talkative_checkpoint(root / "model")}


def argv(bed, batch, out):
    return ["infer", "--model", str(bed["model"]), "--batch", str(batch), "--out", str(out), "--frames", "4",
            "--max-new-tokens", "3"]


def one_line(capsys, args, words):
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_duplicate_ids_binary_and_non_json_files_are_refused_naming_the_line(bed, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "x", "question": "a"}\n{"id": "y", "question": "b"}\n\n{"id": "x", "question": "c"}\n')
    one_line(capsys, argv(bed, dup, out), [str(dup), "lines 1 and 4", "same id 'x'"])
    implicit = tmp_path / "implicit.jsonl"                   # no id: the line number, which id 1 also claims
    implicit.write_text('{"question": "a"}\n{"id": 1, "question": "b"}\n')
    one_line(capsys, argv(bed, implicit, out), [str(implicit), "lines 1 and 2", "same id 1"])
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"id": "x", "question": "a"}\n\x89PNG\r\n\x1a\n\x00\x00\xff\xd8')
    one_line(capsys, argv(bed, binary, out), [f"{binary}:2: not UTF-8 text", "byte 0x89 at column 1"])
    text = tmp_path / "text.jsonl"
    text.write_text('{"id": "x", "question": "a"}\nwhat is this video about?\n')
    one_line(capsys, argv(bed, text, out), [f"{text}:2: not JSON", "one JSON object a line"])
    empty = tmp_path / "empty.jsonl"                         # it answered nothing and exited 0
    empty.write_text("\n\n")
    one_line(capsys, argv(bed, empty, out), [f"{empty}: no questions"])
    assert not out.exists()                                  # refused before anything ran
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "x", "question": "a"}\n')
    out.write_text('{"id": "x", "answer": "hi"}\nnot a row\n{"id": "y", "answer": "ho"}\n')
    one_line(capsys, argv(bed, good, out), [f"{out}:2: not an answer row", "delete that line"])


def rows(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]     # every line a whole row


def test_a_torn_last_line_is_answered_again_and_a_bad_question_is_an_error_row(bed, tmp_path, capsys, caplog):
    video = str(bed["root"] / "v0.mp4")
    questions = tmp_path / "q.jsonl"
    lines = [{"id": "a", "video": video, "question": "what happens"},
             {"id": "b", "video": video, "question": "who is \ud800 there"},            # a lone surrogate, escaped
             {"id": "c", "question": "describe the picture"},
             {"id": "d", "video": video, "question": "what moves"}]
    questions.write_text("\n".join(json.dumps(q) for q in lines) + "\n")
    out = tmp_path / "answers.jsonl"
    assert main(argv(bed, questions, out)) == 1                                          # b failed, the rest ran
    first = rows(out)
    assert [r["id"] for r in first] == ["a", "b", "c", "d"]
    assert "error" in first[1] and "not valid text" in first[1]["error"] and first[1]["question"] == lines[1]["question"]
    assert all("error" not in r and r["answer"] and r["tokens"] == 3 for r in first[:1] + first[2:])

    whole = out.read_bytes()
    cut = whole.rfind(b"\n", 0, len(whole) - 1) + 1 + 17     # a crash while writing d's row: 17 bytes of it left
    out.write_bytes(whole[:cut])
    assert main(argv(bed, questions, out)) == 1
    assert "line 4 was cut short" in caplog.text and "answered 1, errors 1, already in" in capsys.readouterr().err
    second = rows(out)
    assert [r["id"] for r in second] == ["a", "b", "c", "b", "d"]                       # b retried, d once, in order
    assert second[:3] == first[:3] and second[4]["answer"] == first[3]["answer"]          # nothing glued, nothing lost

    out.write_bytes(out.read_bytes()[:-1])                   # a crash after the row but before its newline: kept
    assert main(argv(bed, questions, out)) == 1
    third = rows(out)
    assert third[:5] == second and [r["id"] for r in third] == ["a", "b", "c", "b", "d", "b"]
    answers = [r["id"] for r in third if "error" not in r]
    assert sorted(answers) == ["a", "c", "d"]                                            # each answered exactly once


def test_answers_are_added_only_under_the_settings_already_in_the_file(bed, tmp_path, capsys):
    """A rerun with another token limit (or model, frames, budget) would append answers of other settings to the
    same file: refused before the model loads, one line naming the setting. The same settings resume; an output
    with no answers yet takes any."""
    video = str(bed["root"] / "v0.mp4")
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"id": i, "video": video, "question": f"what happens {i}"})
                                   for i in "ab") + "\n")
    out = tmp_path / "answers.jsonl"
    short = questions.with_name("a.jsonl")
    short.write_text(questions.read_text().splitlines()[0] + "\n")
    assert main(argv(bed, short, out)) == 0                                    # question a, at 3 new tokens
    capsys.readouterr()
    one_line(capsys, [*argv(bed, questions, out)[:-1], "5"],
             ["answers.jsonl holds answers given with other settings (max_new_tokens 3 there, 5 now)"])
    one_line(capsys, [*argv(bed, questions, out), "--max-visual-tokens", "32"],
             ["other settings (max_visual_tokens None there, 32 now)"])
    assert [r["id"] for r in rows(out)] == ["a"]                              # nothing added by the refused runs
    assert main(argv(bed, questions, out)) == 0                                # the same settings: b is added
    assert [r["id"] for r in rows(out)] == ["a", "b"] and "already in" in capsys.readouterr().err
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text("")
    assert main([*argv(bed, questions, fresh)[:-1], "5"]) == 0 and len(rows(fresh)) == 2
