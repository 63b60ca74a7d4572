import pytest
import torch
import torch.nn.functional as F

import backends
from backends.ops import pooling, relevance
from ppllava.cli import main
from ppllava.parity import CASES, check, compare, load_golden, record
from ppllava.parity.compare import MODEL_COSINE, RMS_FLOOR, TOLERANCES

FAST = [c for c in CASES if c.name in ("relevance_map/masked", "prompt_guided_pool/video(2,3,3)",
                                        "relevance_map->prompt_guided_pool", "model/tiny:logits")]
MODEL = [c for c in CASES if c.name == "model/tiny:logits"]


def test_metrics_by_hand():
    g = torch.tensor([1.0, -2.0, 4.0, 0.0])
    a = torch.tensor([1.01, -2.0, 4.0, 0.0])
    r = compare(a, g, torch.float32)
    assert r.max_abs == pytest.approx(0.01)
    assert r.max_rel == pytest.approx(0.01)            # |1.01 - 1| / 1
    assert r.mean_rel == pytest.approx(0.01 / 4)
    assert r.off_ratio == pytest.approx(1 / 4)         # one element off by more than 1/1000
    assert r.cosine == pytest.approx(float(a @ g / (a.norm() * g.norm())))
    assert not r.ok and any("off_ratio" in f for f in r.failures)
    assert compare(g.clone(), g, torch.float32).ok


def test_small_values_are_compared_absolutely():
    g = torch.tensor([1.0, 1e-9])
    a = torch.tensor([1.0, 2e-9])  # 100% relative error on a value far below the tensor's scale
    r = compare(a, g, torch.float32)
    assert r.ok and r.max_rel == pytest.approx(1e-9 / (RMS_FLOOR * 0.5 ** 0.5), rel=1e-3)   # floor: of the rms


def test_peers_rules_and_non_finite():
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert "nan/inf" in compare(g.clone().index_fill_(0, torch.tensor([3]), float("nan")), g, torch.float32).failures
    assert any(f.startswith("cosine") for f in compare(torch.randn(1000), g, torch.float32).failures)
    assert any(f.startswith("max_abs") for f in compare(g + 2.0 * (torch.arange(1000) == 7), g, torch.bfloat16).failures)
    assert compare(g[:10], g, torch.float32).failures[0].startswith("shape")


def test_a_golden_of_one_implementation_passes_another_with_margin(tmp_path):
    """Recorded with the native spec, checked with the cpu implementations (another summation order), and the
    reverse: every tensor passes, and by the margins README "Parity across machines" quotes."""
    backends.configure_ops("native")
    golden = record(tmp_path / "native.pt", torch.device("cpu"), ("float32", "bfloat16"), FAST)
    assert load_golden(tmp_path / "native.pt")["meta"]["impls"] == {"relevance_map": "native",
                                                                     "prompt_guided_pool": "native"}
    backends.configure_ops("cpu")
    rows = check(golden, torch.device("cpu"), cases=FAST)
    assert len(rows) == 2 * sum(len(c.differentiable) + 1 for c in FAST)
    assert all(r.comparison.ok for r in rows), [r for r in rows if not r.comparison.ok]
    # not a determinism check: in float32 the two implementations differ in every case
    assert {r.case for r in rows if r.dtype == "float32" and r.comparison.max_abs > 0} == {c.name for c in FAST}
    rule = {c.name: c.rule for c in FAST}
    for r in rows:
        dtype = getattr(torch, r.dtype)
        if rule[r.case] == "model":      # the whole model's 1 - cosine at least 10x inside its floor
            assert 1 - r.comparison.cosine <= (1 - MODEL_COSINE[dtype]) / 10, r
        elif r.tensor != "grad/text_embeds":
            # the mean error 10x inside its bound; the text gradients (a sum over every position with
            # cancellation) are the tightest tensors, 6-27x inside depending on the CPU's vector code
            assert r.comparison.mean_rel <= TOLERANCES[dtype].mere / 10, r
    # and the other way round: a golden of the cpu implementations passes the spec
    golden = record(tmp_path / "cpu.pt", torch.device("cpu"), ("float32",), FAST)
    assert golden["meta"]["impls"] == {"relevance_map": "cpu", "prompt_guided_pool": "cpu"}
    backends.configure_ops("native")
    rows = check(golden, torch.device("cpu"), cases=FAST)
    assert all(r.comparison.ok for r in rows), [r for r in rows if not r.comparison.ok]


def _wrong_temperature(x, s, kernel, stride, temperature):
    return pooling.pool_native(x, s, kernel, stride, temperature * 1.05)


def _per_frame_softmax(video, text, scale, mask):
    logits = scale * torch.einsum("bthwc,bc->bthw", F.normalize(video.float(), dim=-1), F.normalize(text.float(), dim=-1))
    return (logits.flatten(2).softmax(-1).view_as(logits) / logits.shape[1]).to(video.dtype)


def _tf32_like(video, text, scale, mask):
    v = video.float()
    rounded = (v.detach().view(torch.int32) & ~0x1FFF).view(torch.float32)  # keep 10 mantissa bits
    return relevance.relevance_native(v + (rounded - v.detach()), text, scale, mask)


@pytest.mark.parametrize("op_name,wrong,dtypes", [
    ("prompt_guided_pool", _wrong_temperature, ("float32", "bfloat16", "float16")),
    ("relevance_map", _per_frame_softmax, ("float32", "bfloat16")),
    ("relevance_map", _tf32_like, ("float32",)),
])
def test_a_subtly_wrong_implementation_fails(tmp_path, op_name, wrong, dtypes):
    path = tmp_path / "golden.pt"
    record(path, torch.device("cpu"), dtypes, FAST)
    op = backends.get_op(op_name)
    op.register("wrong", lambda: wrong)
    try:
        backends.configure_ops({op_name: "wrong"})
        rows = check(load_golden(path), torch.device("cpu"), cases=FAST)
    finally:
        del op.loaders["wrong"]
    failed = {(r.dtype, r.case) for r in rows if not r.comparison.ok}
    for dtype in dtypes:
        assert (dtype, "relevance_map->prompt_guided_pool") in failed
    assert ("float32", "model/tiny:logits") in failed         # the model's logits show it too


def test_model_case_is_the_tiny_models_logits(tmp_path):
    path = tmp_path / "golden.pt"
    record(path, torch.device("cpu"), ("float32",), MODEL)
    golden = load_golden(path)["results"]["float32"]["model/tiny:logits"]
    assert golden["out"].shape[-1] == 512 and set(golden) == {"out", "grad/pixel_values"}
    assert golden["grad/pixel_values"].abs().sum() > 0       # the backward reached the pixels
    # another model (other weights) fails it
    from ppllava.parity import cases
    original = cases.MODEL_SEED
    cases.MODEL_SEED = original + 1
    try:
        rows = check(load_golden(path), torch.device("cpu"), cases=MODEL)
    finally:
        cases.MODEL_SEED = original
    assert not any(r.comparison.ok for r in rows)


def test_golden_without_the_dtype_is_a_clear_error(tmp_path):
    path = tmp_path / "golden.pt"
    record(path, torch.device("cpu"), ("float32",), FAST[:1])
    with pytest.raises(ValueError, match="golden file has no bfloat16 results .* record them with --dtype bfloat16"):
        check(load_golden(path), torch.device("cpu"), dtypes=["bf16"], cases=FAST[:1])


def test_cli_exit_codes(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "g.pt")
    case = ["--case", "prompt_guided_pool/video(2,3,3)"]
    assert main(["parity", "record", "--out", path, "--dtype", "float32", *case]) == 0
    assert main(["parity", "check", "--golden", path, *case]) == 0
    assert capsys.readouterr().out.strip().endswith("3 passed, 0 failed")  # out, grad/x, grad/relevance
    op = backends.get_op("prompt_guided_pool")
    op.register("wrong", lambda: _wrong_temperature)
    try:
        monkeypatch.setenv("PPLLAVA_OPS", "prompt_guided_pool=wrong")
        backends.dispatch.reset_cache()
        assert main(["parity", "check", "--golden", path, *case]) == 1
    finally:
        del op.loaders["wrong"]
    out = capsys.readouterr().out
    assert "FAIL" in out and out.strip().endswith("0 passed, 3 failed")
    (tmp_path / "junk.pt").write_text("not a golden file")
    assert main(["parity", "check", "--golden", str(tmp_path / "junk.pt")]) == 2
    assert main(["parity", "check", "--golden", path, "--case", "nope"]) == 2
    assert main(["parity", "check", "--golden", str(tmp_path)]) == 2       # a folder: it was "does not exist"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not a parity golden file" in err[0] and "unknown parity case(s) nope" in err[1]
    assert f"golden file {tmp_path} is a folder; give the file" in err[2]
