"""`ppllava convert` accounts for every source tensor: each one written (by value) or dropped by a named rule in
conversion.json; a tensor no rule covers, a folder missing tensors, an unreadable tokenizer: exit 2, nothing written."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ppllava.cli import main
from ppllava.model.convert import BASE_RULES, REPORT
from ppllava.model.mapping import Ledger, UnmappedTensor
from tiny_checkpoints import save_clip_pair, save_llava_next, save_llava_onevision, save_siglip_pair


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("rules")
    save_llava_onevision(root / "ov"), save_siglip_pair(root / "siglip")
    save_llava_next(root / "next"), save_clip_pair(root / "clip")
    return root


def file_tensors(folder) -> dict[str, torch.Tensor]:
    """The tensors of a folder's safetensors file, read with safetensors itself (not through transformers)."""
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("base,tower,dropped", [
    ("ov", "siglip", {"image_newline": 1, "logit_bias": 1, "vision tower": None}),
    ("next", "clip", {"image_newline": 1, "logit_bias": 0, "vision tower": None}),
])
def test_every_source_tensor_is_written_by_value_or_dropped_by_a_named_rule(folders, tmp_path, capsys, base, tower,
                                                                            dropped):
    out = tmp_path / "out"
    assert main(["convert", "--base", str(folders / base), "--text-tower", str(folders / tower), "--out", str(out),
                 "--dtype", "float32"]) == 0
    assert f"every tensor listed in {out / REPORT}" in capsys.readouterr().out
    report = json.loads((out / REPORT).read_text())
    rows = {(r["source"], r["name"]): r for r in report["tensors"]}
    written = load_file(out / "model.safetensors")
    sources = {"base": file_tensors(folders / base), "text tower": file_tensors(folders / tower)}
    # as many rows per source as its file has tensors (the tied LM head, absent from the file, is one row more)
    tied = int("lm_head.weight" not in str(list(sources["base"])))
    assert sum(r[0] == "base" for r in rows) == len(sources["base"]) + tied
    assert sum(r[0] == "text tower" for r in rows) == len(sources["text tower"])
    # every row says where its tensor went or why not, and every written tensor comes from one row
    assert all(("to" in r) + bool(r.get("dropped")) + ("config" in r) == 1 and r["rule"] for r in rows.values())
    targets = [r["to"] for r in rows.values() if "to" in r]
    assert len(targets) == len(set(targets)) and set(targets) >= set(written)
    # a written tensor equals its source tensor, found in the source file by its values' fingerprint
    by_value = {}
    for source, tensors in sources.items():
        for name, t in tensors.items():
            by_value.setdefault((source, tuple(t.shape), float(t.double().sum()), float(t.double().abs().max())), t)
    for r in rows.values():
        if "to" in r and r["to"] in written and "extended" not in r["rule"]:
            t = written[r["to"]]
            key = (r["source"], tuple(t.shape), float(t.double().sum()), float(t.double().abs().max()))
            assert key in by_value and torch.equal(by_value[key], t), r
    # the position table is the one extended row; the logit scale went to the config
    extended = [r for r in rows.values() if "extended" in r["rule"]]
    assert len(extended) == 1 and extended[0]["source"] == "text tower"
    scale = [r for r in rows.values() if r.get("config") == "relevance_scale"]
    assert [r["name"] for r in scale] == ["logit_scale"]
    assert report["relevance_scale"] == pytest.approx(float(sources["text tower"]["logit_scale"].exp()), rel=1e-6)
    drops = [r for r in rows.values() if r.get("dropped")]
    assert sum("image_newline" in r["name"] for r in drops) == dropped["image_newline"]
    assert sum(r["name"] == "logit_bias" for r in drops) == dropped["logit_bias"]
    # the dual model's vision tower is dropped except the parts the per-patch projection uses
    vision = [n for (s, n) in rows if s == "text tower" and n.startswith("vision_model.")]
    kept = [n for n in vision if "to" in rows[("text tower", n)]]
    assert kept and all(n.startswith(("vision_model.post_layernorm.", "vision_model.head.")) for n in kept)
    assert len(vision) - len(kept) == sum(r["source"] == "text tower" and r["name"].startswith("vision_model.")
                                          for r in drops)


def test_a_tensor_no_rule_covers_is_named():
    state = {"model.vision_tower.w": torch.zeros(1), "model.image_newline": torch.zeros(2), "extra.bias": torch.ones(1)}
    with pytest.raises(UnmappedTensor, match=r"base tensor\(s\) 'model.image_newline', 'extra.bias' are covered by no "
                                             r"conversion rule"):
        Ledger().apply("base", state, BASE_RULES)


def error_lines(err: str) -> list[str]:
    """stderr less transformers' weight-loading progress bar."""
    return [line for line in err.strip().splitlines() if line.strip() and not line.startswith("Loading weights")]


def _rewrite(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("what,change,message", [
    ("base", lambda t: t.__setitem__("language_model.model.extra_gate.weight", torch.zeros(3)),
     "holds tensors its config.json's architecture does not have: .*extra_gate"),
    ("base", lambda t: t.pop(next(k for k in t if "layers.1.mlp.up_proj" in k)),
     r"lacks tensors its config.json needs \(they would be random\): .*layers.1.mlp.up_proj"),
    ("tower", lambda t: t.__setitem__("text_model.head.weight", torch.zeros(5, 5)),
     "holds tensors of other shapes than its config.json says: text_model.head.weight"),
])
def test_a_folder_whose_tensors_do_not_fit_exits_2_and_writes_nothing(folders, tmp_path, capsys, what, change,
                                                                     message):
    base, tower = tmp_path / "ov", tmp_path / "siglip"
    shutil.copytree(folders / "ov", base), shutil.copytree(folders / "siglip", tower)
    _rewrite(base if what == "base" else tower, change)
    capsys.readouterr()
    assert main(["convert", "--base", str(base), "--text-tower", str(tower), "--out", str(tmp_path / "out")]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("ppllava convert: error: ")
    assert re.search(message, err[0]), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ov", "siglip"]        # no output, no partial folder


@pytest.mark.parametrize("role", ["base", "text tower"])
@pytest.mark.parametrize("damage", ["garbage", "absent"])
def test_an_unreadable_tokenizer_exits_2_and_writes_nothing(folders, tmp_path, capsys, role, damage):
    base, tower = tmp_path / "next", tmp_path / "clip"
    shutil.copytree(folders / "next", base), shutil.copytree(folders / "clip", tower)
    folder = base if role == "base" else tower
    if damage == "garbage":
        (folder / "tokenizer.json").write_text("{not json")
    else:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
            (folder / name).unlink(missing_ok=True)
    capsys.readouterr()
    assert main(["convert", "--base", str(base), "--text-tower", str(tower), "--out", str(tmp_path / "out")]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"{role} {folder}: " in err[0] and "tokenizer" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "next"]


def test_weights_are_written_without_a_second_copy_unless_they_share_storage():
    from ppllava.model.checkpoint import writable_state

    flat = torch.arange(10.0)
    own, other = torch.ones(3, 2), torch.zeros(4)
    state = {"own": own, "view": flat[2:6], "whole_flat": flat, "again": own, "cast": other.half()}
    out = writable_state(state, torch.float32)
    assert out["own"].data_ptr() == own.data_ptr()                        # passed through: no copy
    assert out["whole_flat"].data_ptr() != out["view"].data_ptr()
    ptrs = [t.untyped_storage().data_ptr() for t in out.values()]
    assert len(set(ptrs)) == len(ptrs)                                    # every tensor has its own storage
    for name, tensor in out.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, state[name].float()), name
        assert tensor.untyped_storage().nbytes() == tensor.numel() * 4
