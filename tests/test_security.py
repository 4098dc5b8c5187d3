"""Untrusted files never run code.

* A checkpoint carrying a pickled payload (an object whose ``__reduce__`` creates a file) is
  refused by ``nas.runtime.checkpoint.safe_load`` and by every script that reads checkpoints: one line,
  exit status 2, and the marker file is never created.
* No ``eval``/``exec``, unsafe ``torch.load``/``pickle``/``yaml.load`` anywhere in the package,
  the scripts or the benchmarks (checked on the syntax tree, so ``model.eval()`` and
  ``evaluate`` are not false hits; the checker itself is tested on snippets).
* Genotype names (``--arch``, ``--export``) resolve only inside ``genotypes/``.
"""
from __future__ import annotations

import ast
import os
import pickle
import string
from pathlib import Path

import pytest

from nas.models.genotypes import PUBLISHED_DIR
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.runtime.checkpoint import atomic_save, safe_load
from nas.runtime.errors import FerNasError
from nas.models.genotypes import export_genotype, is_genotype_name, load_genotype
from tests.cli_util import CHECKPOINT_READERS, ROOT, assert_one_line_error, run_inprocess, run_script


# ------------------------------------------------------------------------------------------ payloads
class OpenPayload:
    """Unpickling calls ``open(marker, "w")``: the file appears if the payload runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class SystemPayload:
    """Unpickling runs a shell command (``os.system``) that creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def good_state() -> dict:
    """What a real checkpoint looks like (so the payload hides among normal entries)."""
    return {"model": {"w": torch.ones(2, 2)}, "epoch": 3, "args": {"arch": "FER_V1", "epochs": 5},
            "kind": "train"}


def write_payload(path: Path, marker: Path, kind: str) -> Path:
    """A checkpoint file whose unpickling would create ``marker``.

    kinds: ``zip`` (torch.save's format, payload among normal entries), ``legacy`` (a plain
    pickle stream, torch's old format), ``system`` (os.system payload), ``nested`` (payload deep
    inside the args dict), ``top`` (the payload is the whole object)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        torch.save({**good_state(), "extra": OpenPayload(marker)}, path)
    elif kind == "legacy":
        with open(path, "wb") as f:
            pickle.dump({**good_state(), "extra": OpenPayload(marker)}, f, protocol=2)
    elif kind == "system":
        torch.save({**good_state(), "model": SystemPayload(marker)}, path)
    elif kind == "nested":
        state = good_state()
        state["args"]["hook"] = [1, {"x": OpenPayload(marker)}]
        torch.save(state, path)
    elif kind == "top":
        torch.save(OpenPayload(marker), path)
    else:  # pragma: no cover
        raise ValueError(kind)
    return path


PAYLOAD_KINDS = ("zip", "legacy", "system", "nested", "top")


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_payload_is_live(tmp_path, kind):
    """The payloads used below really do run when loaded unsafely: the refusals are meaningful."""
    marker = tmp_path / "pwned"
    path = write_payload(tmp_path / "evil.pt", marker, kind)
    if kind == "legacy":
        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301 - proving the payload is live
    else:
        obj = torch.load(path, weights_only=False)  # what an unsafe loader would do
    if isinstance(obj, dict):
        for v in obj.values():
            if hasattr(v, "close"):
                v.close()
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_safe_load_refuses_payload(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = write_payload(tmp_path / "evil.pt", marker, kind)
    with pytest.raises(FerNasError) as e:
        safe_load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "refused" in msg, msg
    assert not marker.exists()
    # a run directory holding it is refused the same way (safe_load picks last.pt/best.pt)
    run = tmp_path / "run"
    write_payload(run / "last.pt", marker, kind)
    with pytest.raises(FerNasError, match="refused"):
        safe_load(run)
    assert not marker.exists()


def test_safe_load_reads_a_good_checkpoint(tmp_path):
    """The same entries without the payload load fine (the refusal is about the payload)."""
    atomic_save(good_state(), tmp_path / "ok.pt")
    state = safe_load(tmp_path / "ok.pt")
    assert torch.equal(state["model"]["w"], torch.ones(2, 2)) and state["epoch"] == 3


@pytest.mark.parametrize("cut", ["empty", "half", "junk", "text"])
def test_safe_load_corrupt_checkpoint_is_one_line(tmp_path, cut):
    """A truncated download, random bytes or a text file: one line naming the file."""
    good = tmp_path / "good.pt"
    atomic_save(good_state(), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes({"empty": b"", "half": data[: len(data) // 2], "junk": os.urandom(3000),
                     "text": b"epoch: 3\n"}[cut])
    with pytest.raises(FerNasError) as e:
        safe_load(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    assert "not a readable checkpoint" in str(e.value) or "refused" in str(e.value)


def test_model_loader_refuses_payload(tmp_path):
    """nas.engine.evaluate.load_model_from_checkpoint (ensemble, cross-dataset scripts) goes through safe_load."""
    from nas.engine.evaluate import load_model_from_checkpoint

    marker = tmp_path / "pwned"
    path = write_payload(tmp_path / "evil.pt", marker, "zip")
    with pytest.raises(FerNasError, match="refused"):
        load_model_from_checkpoint(path)
    assert not marker.exists()


def _cli_args(script: str, ckpt: Path, run: Path) -> list[str]:
    return [a.format(ckpt=ckpt, run=run) for a in CHECKPOINT_READERS[script]]


@pytest.mark.parametrize("script", sorted(CHECKPOINT_READERS))
def test_scripts_refuse_payload_checkpoint(tmp_path, script):
    """Every checkpoint-reading script: exit 2, one line naming the file, the payload never runs.
    (In-process through the script's own ``nas.runtime.cli.run`` entry; one subprocess case below.)"""
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    ckpt = write_payload(run / "last.pt", marker, "zip")
    (run / "config.yaml").write_text("arch: FER_V1\n")
    proc = run_inprocess(script, _cli_args(script, ckpt, run))
    assert_one_line_error(proc, "last.pt", "refused")
    assert not marker.exists()


def test_script_refuses_payload_subprocess(tmp_path):
    """The same through a real process: status 2, one stderr line, no traceback, no marker."""
    script = "train_searched.py"
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    ckpt = write_payload(run / "last.pt", marker, "system")
    proc = run_script(script, *_cli_args(script, ckpt, run))
    assert_one_line_error(proc, "refused")
    assert not marker.exists()


# ------------------------------------------------------------------------ no eval/exec, safe loads
def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Calls that could run code from data: ``eval``/``exec``/``compile``/``__import__`` as
    functions (not ``x.eval()``), ``pickle``/``marshal``/``dill`` loads, ``yaml.load``/
    ``yaml.unsafe_load`` without a safe loader, ``torch.load`` without ``weights_only=True``,
    ``numpy.load`` with ``allow_pickle=True``. Returns ``"file:line: what"`` strings."""
    tree = ast.parse(source, filename)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        kw = {k.arg: k.value for k in node.keywords if k.arg}

        def const(name):
            v = kw.get(name)
            return v.value if isinstance(v, ast.Constant) else ("<expr>" if v is not None else None)

        where = f"{filename}:{node.lineno}"
        if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__"):
            found.append(f"{where}: {f.id}(")
        elif isinstance(f, ast.Attribute):
            base = f.value.id if isinstance(f.value, ast.Name) else None
            if base == "builtins" and f.attr in ("eval", "exec"):
                found.append(f"{where}: builtins.{f.attr}(")
            elif base in ("pickle", "cPickle", "marshal", "dill", "cloudpickle", "joblib") and \
                    f.attr in ("load", "loads", "Unpickler"):
                found.append(f"{where}: {base}.{f.attr}(")
            elif base == "yaml" and f.attr in ("unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
                found.append(f"{where}: yaml.{f.attr}(")
            elif base == "yaml" and f.attr in ("load", "load_all"):
                loader = kw.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
                name = getattr(loader, "attr", getattr(loader, "id", None))
                if name not in ("SafeLoader", "CSafeLoader"):
                    found.append(f"{where}: yaml.{f.attr}( without SafeLoader")
            elif base == "torch" and f.attr == "load" and const("weights_only") is not True:
                found.append(f"{where}: torch.load( without weights_only=True")
            elif base in ("np", "numpy") and f.attr == "load" and const("allow_pickle") not in (None, False):
                found.append(f"{where}: {base}.load(allow_pickle=...)")
    return found


def test_unsafe_call_checker_finds_what_it_should():
    bad = """
import torch, pickle, yaml, builtins, numpy as np
eval("1")
exec("x = 1")
builtins.eval("2")
torch.load("a.pt")
torch.load("a.pt", weights_only=False)
pickle.loads(b"")
yaml.load(s)
yaml.unsafe_load(s)
np.load("a.npy", allow_pickle=True)
compile("1", "f", "eval")
"""
    assert len(unsafe_calls(bad)) == 10, unsafe_calls(bad)
    good = """
import torch, yaml
model.eval()
self.model.eval().cuda()
evaluate(model)
x = evaluation
torch.load("a.pt", map_location="cpu", weights_only=True)
yaml.safe_load(s)
yaml.load(s, Loader=yaml.SafeLoader)
"eval(" + "exec("
# eval(
np.load("a.npy")
"""
    assert unsafe_calls(good) == []


def _project_sources() -> list[Path]:
    files = sorted((ROOT / "nas").rglob("*.py")) + sorted(ROOT.glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    assert any(p.name == "checkpoint.py" for p in files)
    return files


def test_no_eval_exec_or_unsafe_load_in_package_and_scripts():
    found = []
    for p in _project_sources():
        found += unsafe_calls(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))
    assert found == [], "unsafe calls:\n" + "\n".join(found)


# ------------------------------------------------------------------- genotype names stay in genotypes/
ESCAPES = ["..", "../x", "../../etc/passwd", "/etc/passwd", "/tmp/x", "a/../b", "x y", "x.json", "",
           "FER_V1\x00", "FER_V1\n", "~", "~/x", "$HOME", "x;rm", "nul:", "C:\\x", "名前", "é", ".hidden",
           "-rf", "FER-V1", "FER.V1", " FER_V1"]


@pytest.fixture()
def gdir(tmp_path, monkeypatch):
    """A private genotypes/ folder (FERNAS_GENOTYPES) with FER_V1 in it, and a decoy outside it."""
    d = tmp_path / "deep" / "genotypes"
    d.mkdir(parents=True)
    (d / "FER_V1.json").write_text((PUBLISHED_DIR / "FER_V1.json").read_text())
    (tmp_path / "deep" / "OUTSIDE.json").write_text((PUBLISHED_DIR / "FER_V1.json").read_text())
    monkeypatch.setenv("FERNAS_GENOTYPES", str(d))
    return d


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("name", ESCAPES)
def test_export_names_cannot_escape(gdir, name):
    g = load_genotype("FER_V1")
    before = _all_files(gdir.parent.parent)
    with pytest.raises(FerNasError) as e:
        export_genotype(g, name)
    assert "\n" not in str(e.value) and "[A-Za-z0-9_]+" in str(e.value)
    assert _all_files(gdir.parent.parent) == before  # nothing written anywhere


def test_export_good_name_lands_in_genotypes(gdir):
    p = export_genotype(load_genotype("FER_V1"), "MY_CELL_2")
    assert p == gdir / "MY_CELL_2.json" and load_genotype("MY_CELL_2") == load_genotype("FER_V1")
    with pytest.raises(FerNasError, match="already exists"):
        export_genotype(load_genotype("FER_V1"), "MY_CELL_2")


def test_arch_names_resolve_only_in_genotypes(gdir, monkeypatch):
    """``OUTSIDE`` exists one level up, but as a name it is looked up in genotypes/ only;
    ``..``-style names are not names (a path must be given as a path, with '/' or .json)."""
    monkeypatch.chdir(gdir)
    with pytest.raises(FerNasError, match="unknown genotype 'OUTSIDE'"):
        load_genotype("OUTSIDE")
    for name in ("..", "..\\OUTSIDE", "FER_V1\x00", "~", "$HOME", " FER_V1", "FER-V1"):
        with pytest.raises(FerNasError, match="invalid genotype name"):
            load_genotype(name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=string.printable + "é名\x00./\\~", max_size=12))
def test_any_export_name_outside_the_pattern_is_refused(gdir, name):
    """Hypothesis: every name either matches [A-Za-z0-9_]+ and lands as genotypes/NAME.json,
    or is refused with one line; no file ever appears outside genotypes/."""
    outside_before = _all_files(gdir.parent.parent) - _all_files(gdir)
    try:
        p = export_genotype(load_genotype("FER_V1"), name, force=True)
    except FerNasError as e:
        assert not is_genotype_name(name) and "\n" not in str(e)
    else:
        assert is_genotype_name(name) and p.parent == gdir and p.name == f"{name}.json"
        p.unlink()
    assert _all_files(gdir.parent.parent) - _all_files(gdir) == outside_before


def test_search_export_escape_refused_through_cli(tmp_path, gdir):
    """search.py --export ../EVIL: one line, status 2, before any work, nothing written."""
    before = _all_files(tmp_path)
    for name in ("../EVIL", "/tmp/EVIL", "EV IL", "EVIL.json"):
        proc = run_inprocess("search.py", ["--export", name, "--save", tmp_path / "run", "--device", "cpu"])
        assert_one_line_error(proc, "--export", "[A-Za-z0-9_]+")
    assert _all_files(tmp_path) == before
    assert not (gdir.parent / "EVIL.json").exists()


def test_train_arch_escape_refused_through_cli(tmp_path, gdir):
    """train_searched.py --arch with a non-name: one line, status 2; the name is never looked
    up outside genotypes/ (OUTSIDE.json one level up is not found by name)."""
    from tests.fer_files import small_fer2013, write_fer2013_csv

    data = write_fer2013_csv(tmp_path / "fer2013.csv", *small_fer2013())
    for k, name in enumerate(("..", "OUTSIDE", "x y", "FER-V1", "~")):
        proc = run_inprocess("train_searched.py", ["--arch", name, "--save", tmp_path / f"run{k}", "--data", data,
                                                   "--epochs", "1", "--device", "cpu"])
        assert_one_line_error(proc, f"unknown architecture {name!r}", "FER_V1")
