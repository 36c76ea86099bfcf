"""Every published config of tests/data/configs read as its framework means it (expected.yaml, derived by hand from
each framework's source and defaults, never from vramplan's output), or refused with a per-file reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vramplan.errors import CannotCheckError
from vramplan.interop.detect import detect_mapping, read_config_text
from vramplan.interop.reading import Reading, from_accelerate, from_deepspeed

CORPUS = Path(__file__).resolve().parents[1] / "data" / "configs"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "expected.yaml").read_text())["files"]
FRAMEWORKS = ("llamafactory", "axolotl", "msswift", "torchtune", "trl")

#: entries whose expected value the file alone cannot give; kept failing (strict) with the reason
XFAIL = {
    "trl/recipes__zephyr-7b-beta__sft__config_qlora.yaml":
        "expected gpus: 1 comes from the recipe README's launch command (--num_processes=1), not from the file; "
        "the reader leaves gpus to the launcher (null), as for every other handbook recipe",
}


def corpus_files() -> list[str]:
    return sorted(f"{p.parent.name}/{p.name}" for fw in FRAMEWORKS for p in (CORPUS / fw).iterdir() if p.is_file())


def test_corpus_integrity_every_file_listed_in_expected_and_sources():
    files = corpus_files()
    assert len(files) >= 80
    assert set(files) == set(EXPECTED), (sorted(set(files) ^ set(EXPECTED)))
    sources = (CORPUS / "SOURCES.md").read_text()
    missing = [f for f in files if f"`{f}`" not in sources]
    assert not missing, missing


def _tokens(item: str) -> set[str]:
    """The key names of an expected ``ignored`` item (identifiers with ``_`` or ``.`` before its reason)."""
    head = item.split(" (", 1)[0]
    return {t for t in re.findall(r"[A-Za-z][A-Za-z0-9_.]*[A-Za-z0-9]", head) if "_" in t}


def _norm(key: str, value: Any) -> Any:
    if key == "targets" and isinstance(value, (list, tuple)):
        return sorted(map(str, value))
    if key == "modules_to_save" and isinstance(value, (list, tuple)):
        return sorted(map(str, value)) or None
    if key in ("alpha", "lora_dropout") and value is not None:
        return float(value)
    if key in ("rank", "batch", "seq", "gpus") and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _readings(f: str) -> tuple[str, list[Reading]]:
    path = CORPUS / f
    fmt, readings, _ = read_config_text(path.read_text(encoding="utf-8"), path)
    assert readings is not None, f"{f}: read as {fmt}, not as a {EXPECTED[f]['format']} config"
    return fmt, readings


def _compare(f: str, e: dict[str, Any], r: Reading) -> list[str]:
    bad = []
    if r.model != e.get("model"):
        bad.append(f"model: expected {e.get('model')!r}, read {r.model!r}")
    if r.stage != e.get("stage", "sft"):
        bad.append(f"stage: expected {e.get('stage')!r}, read {r.stage!r}")
    for key, want in (e.get("setup") or {}).items():
        if key == "packing":
            got: Any = r.packing
        elif key in r.undecided and want is not None:
            continue        # the reader says the file leaves it open: checked as "cannot check" unless given
        else:
            got = r.options.get(key, "<not read>")
        if _norm(key, got) != _norm(key, want):
            bad.append(f"{key}: expected {want!r}, read {got!r}")
    if e.get("frozen_non_quantized_dtype") == "bf16" and r.options.get("kbit_prep") is not False:
        bad.append(f"kbit_prep: the frozen non-quantized weights stay bf16, read kbit_prep={r.options.get('kbit_prep')}")
    if e.get("trl_version") == "v0.19.1" and (e.get("setup") or {}).get("method") == "qlora" \
            and r.options.get("kbit_prep") is not True:
        bad.append("kbit_prep: TRL v0.19.1 calls prepare_model_for_kbit_training")
    text = " | ".join(r.ignored)
    for item in e.get("ignored") or []:
        missing = {t for t in _tokens(item) if t not in text}
        if missing:
            bad.append(f"ignored: {item!r} not named (missing {sorted(missing)}); read {r.ignored}")
    if not e.get("ignored") and r.ignored:
        bad.append(f"ignored: expected none, read {r.ignored}")
    refs = {Path(x).name for x in r.references}
    for ref in e.get("references") or []:
        if Path(ref).name not in refs:
            bad.append(f"references: {ref} not read ({sorted(refs)})")
    return bad


@pytest.mark.parametrize("f", [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=XFAIL[f]))
                               if f in XFAIL else f for f in sorted(EXPECTED)])
def test_corpus_file_read_as_its_framework_means_it(f):
    e = EXPECTED[f]
    path = CORPUS / f
    if e["format"] == "deepspeed-json":
        data = yaml.safe_load(path.read_text())
        assert detect_mapping(data) == "deepspeed-json"
        got = from_deepspeed(data)
        assert (got["strategy"], got["offload"]) == (e["strategy"], e["offload"])
        with pytest.raises(CannotCheckError, match="not a training config"):
            read_config_text(path.read_text(), path)
        return
    if e["format"].startswith("accelerate-config"):
        data = yaml.safe_load(path.read_text())
        assert detect_mapping(data) == "accelerate-config"
        got = from_accelerate(data, path)
        assert (got.get("gpus"), got.get("strategy"), got.get("offload")) == (e["gpus"], e["strategy"], e["offload"])
        if e.get("grad_ckpt"):
            assert got.get("grad_ckpt") is True
        return
    if e.get("cannot_check"):
        try:
            _, readings = _readings(f)
        except CannotCheckError as exc:
            assert exc.reason
            return
        assert readings and all(r.cannot_check for r in readings), \
            f"{f}: expected 'cannot check: {e['cannot_check'][:80]}...', read {[r.options for r in readings]}"
        return
    _, readings = _readings(f)
    assert len(readings) == 1, [r.cannot_check for r in readings]
    r = readings[0]
    assert r.cannot_check is None, r.cannot_check
    bad = _compare(f, e, r)
    stack = {"llamafactory": "llama-factory", "axolotl": "axolotl", "msswift": "ms-swift", "torchtune": "torchtune",
             "trl": "hf" if e.get("trl_version") == "v0.19.1" else "trl"}[f.split("/")[0]]
    if r.options.get("stack") != stack:
        bad.append(f"stack: expected {stack}, read {r.options.get('stack')}")
    assert not bad, f"{f}:\n  " + "\n  ".join(bad)


def test_undecided_values_are_only_those_the_file_leaves_open():
    """A reader leaves ``seq`` open only where the framework takes it from the data or the model (torchtune
    ``max_seq_len: null``, TRL ``max_length: None``, ms-swift without ``--max_length``), never silently."""
    open_seq = []
    for f, e in EXPECTED.items():
        if e.get("cannot_check") or "setup" not in e or e["format"] == "deepspeed-json" or f in XFAIL:
            continue
        _, readings = _readings(f)
        if "seq" in readings[0].undecided:
            open_seq.append(f)
            assert readings[0].options["seq"] is None
    assert {f.split("/")[0] for f in open_seq} == {"torchtune", "trl", "msswift"}
    assert all(EXPECTED[f]["setup"]["seq"] is None or f.startswith("msswift/") for f in open_seq)


ODD_VALUES = (5, -1, 1.5, True, None, "x", "none", "", [], [1], {"a": 1})


@pytest.mark.parametrize("f", [f for f in sorted(EXPECTED) if not f.endswith(".sh")])
def test_wrong_types_in_a_real_config_are_one_line_errors(f):
    """Every key (nested too) of every corpus config set to each odd value: the reader answers with a vramplan
    error (one line: bad file or cannot check) or a reading, never another exception."""
    import copy

    from vramplan.errors import VramplanError
    from vramplan.interop.detect import read_mapping

    path = CORPUS / f
    text = path.read_text()
    data = yaml.safe_load(text)

    def keypaths(d, prefix=()):
        for k, v in d.items():
            yield (*prefix, k)
            if isinstance(v, dict):
                yield from keypaths(v, (*prefix, k))

    for kp in list(keypaths(data)):
        for odd in ODD_VALUES:
            d = copy.deepcopy(data)
            cur = d
            for k in kp[:-1]:
                cur = cur[k]
            cur[kp[-1]] = odd
            fmt = detect_mapping(d)
            if fmt in ("vramplan", "training-args"):
                continue
            try:
                read_mapping(fmt, d, path, text)
            except VramplanError as exc:
                assert str(exc) and "\n" not in str(exc), (kp, odd, str(exc))
