"""Data config and annotation formats: what each record becomes, and the errors for bad ones."""

import json

import pytest

from ppllava.data.errors import DataError
from ppllava.data.sources import load_data_config, load_samples, parse_llava, parse_videochat2, read_records

TEXT = {"type": "text"}


def kinds(message):
    return [p["type"] if p["type"] != "text" else p["text"] for p in message["content"]]


def test_llava_marks_place_media_and_roles_map():
    record = {"image": ["a.jpg", "b.jpg"], "conversations": [
        {"from": "human", "value": "Compare <image> with\n<image> please"},
        {"from": "gpt", "value": "The first is red."}]}
    media, messages = parse_llava(record, "/data")
    assert [(m.kind, m.path) for m in media] == [("image", "/data/a.jpg"), ("image", "/data/b.jpg")]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert kinds(messages[0]) == ["Compare", "image", "with", "image", "please"]


def test_llava_without_marks_puts_media_before_the_first_user_text():
    media, messages = parse_llava({"video": "v.mp4", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "What happens?"},
        {"from": "gpt", "value": "A dog runs."}]}, "root")
    assert kinds(messages[1]) == ["video", "What happens?"] and kinds(messages[0]) == ["Be brief."]
    assert media[0].path == "root/v.mp4" and media[0].kind == "video"


def test_llava_text_only_and_errors():
    media, messages = parse_llava({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "")
    assert media == [] and kinds(messages[0]) == ["hi"]
    with pytest.raises(ValueError, match=r"2 <image>/<video> mark\(s\) in the conversation for its 1 media"):
        parse_llava({"image": "a.jpg", "conversations": [{"from": "human", "value": "<image><image>"},
                                                         {"from": "gpt", "value": "x"}]}, "")
    with pytest.raises(ValueError, match=r"must open with a user turn .* got roles \['assistant', 'user'\]"):
        parse_llava({"conversations": [{"from": "gpt", "value": "ask me"}, {"from": "human", "value": "what?"}]}, "")
    with pytest.raises(ValueError, match="has no assistant turn"):
        parse_llava({"image": "a.jpg", "conversations": [{"from": "human", "value": "<image> hi"}]}, "")
    with pytest.raises(ValueError, match="unknown speaker 'bot'"):
        parse_llava({"conversations": [{"from": "bot", "value": "x"}]}, "")
    with pytest.raises(ValueError, match="both 'image' and 'video'"):
        parse_llava({"image": "a", "video": "b", "conversations": []}, "")


def test_llava_video_records_marked_with_image_become_video_parts():
    media, messages = parse_llava({"video": "v.mp4", "conversations": [
        {"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "A dog runs."}]}, "")
    assert kinds(messages[0]) == ["video", "What happens?"] and media[0].kind == "video"


def test_videochat2_instruction_is_system_unless_the_question_is_empty():
    media, messages = parse_videochat2({"video": "v.mp4", "start": 1.5, "end": 4.0, "QA": [
        {"i": "Watch carefully.", "q": "What color is the car?", "a": "Red."},
        {"i": "", "q": "Where is it?", "a": "On a road."}]}, "r")
    assert media[0].window == (1.5, 4.0)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert kinds(messages[1]) == ["video", "What color is the car?"] and kinds(messages[4]) == ["On a road."]
    _, messages = parse_videochat2({"video": "v.mp4", "QA": [{"i": "Describe the video.", "q": "", "a": "A cat."}]}, "r")
    assert [m["role"] for m in messages] == ["user", "assistant"] and kinds(messages[0]) == ["video", "Describe the video."]


def write_config(tmp_path, datasets, **extra):
    import yaml
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets, **extra}))
    return path


def test_config_paths_are_relative_to_the_file_and_samples_load(tmp_path):
    (tmp_path / "anno").mkdir()
    (tmp_path / "anno" / "a.jsonl").write_text(
        json.dumps({"video": "x.mp4", "QA": [{"q": "why?", "a": "because"}]}) + "\n\n" +
        json.dumps({"image": "y.png", "QA": [{"q": "what?", "a": "that"}]}) + "\n")
    (tmp_path / "anno" / "b.json").write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]))
    path = write_config(tmp_path, [
        dict(name="vc", format="videochat2", annotation="anno/a.jsonl", root="media", frames=8),
        dict(name="ll", format="llava", annotation="anno/b.json", root="/abs")], max_length=512)
    config = load_data_config(path)
    assert config.max_length == 512 and config.max_skip_fraction == 0.01
    assert config.datasets[0].root == str(tmp_path / "media") and config.datasets[1].root == "/abs"
    samples = load_samples(config)
    assert [(s.dataset, s.record) for s in samples] == [(0, 0), (0, 1), (1, 0)]
    assert samples[0].media[0].path == str(tmp_path / "media" / "x.mp4")


@pytest.mark.parametrize("datasets,extra,message", [
    ([dict(name="a", format="webvid", annotation="x", root="r")], {}, "format 'webvid' is not one of"),
    ([dict(name="a", format="llava", annotation="x", root="r", fsp=2)], {}, r"unknown key\(s\) \['fsp'\]"),
    ([dict(name="a", format="llava", annotation="x", root="r", fps=0)], {}, "fps must be a positive number"),
    ([dict(name="a", format="llava", annotation="x")], {}, r"needs \['root'\]"),
    ([dict(name="a", format="llava", annotation="x", root="r", frames=0)], {}, "frames must be a positive integer"),
    ([], {}, "must list at least one dataset"),
    ([dict(name="a", format="llava", annotation="x", root="r")], {"max_skip_fraction": 2}, "max_skip_fraction"),
])
def test_config_errors(tmp_path, datasets, extra, message):
    with pytest.raises(DataError, match=message):
        load_data_config(write_config(tmp_path, datasets, **extra))


def test_annotation_errors_name_the_file_and_record(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        read_records(bad)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"QA": []}\n\n{"QA": [}\n')
    with pytest.raises(DataError, match="bad.jsonl: line 3: not valid JSON"):
        read_records(lines)
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        read_records(tmp_path / "missing.json")
    anno = tmp_path / "a.json"
    anno.write_text(json.dumps([{"conversations": [{"from": "human", "value": "ok"}, {"from": "gpt", "value": "yes"}]},
                                {"QA": []}]))
    path = write_config(tmp_path, [dict(name="a", format="llava", annotation="a.json", root=".")])
    with pytest.raises(DataError, match=r"a.json: record 2: no field 'conversations' \(the llava format"):
        load_samples(load_data_config(path))
    anno.write_text(json.dumps([{"video": "v.mp4", "conversations": "what happens?"}]))   # a string, not turns
    with pytest.raises(DataError, match=r"a.json: record 1: not in the llava format \(TypeError: string indices"):
        load_samples(load_data_config(path))
