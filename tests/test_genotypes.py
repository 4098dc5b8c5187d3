"""Genotype files: the published cells, validation with one-line errors, export rules."""
import json

import pytest

from nas.runtime.errors import FerNasError
from nas.models.genotypes import (PUBLISHED_DIR, Genotype, export_genotype, genotype_from_dict, genotype_to_dict,
                           list_genotypes, load_genotype, save_genotype)

FER_V1 = Genotype(
    normal=[("sep_conv_3x3", 0), ("conv_3x3", 1), ("dil_conv_5x5", 0), ("conv_1x1", 2), ("ghost", 2),
            ("dil_conv_5x5", 3), ("skip_connect", 0), ("conv_1x1", 1)], normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("dil_conv_5x5", 2), ("avg_pool_3x3", 1),
            ("skip_connect", 2), ("avg_pool_3x3", 0), ("sep_conv_3x3", 2)], reduce_concat=[2, 3, 4, 5])


def test_published_genotypes():
    assert load_genotype("FER_V1") == FER_V1
    d = load_genotype("DARTS_V2")
    assert d.normal[-1] == ("dil_conv_3x3", 2) and d.reduce[0] == ("max_pool_3x3", 0)
    assert {"FER_V1", "DARTS_V2"} <= set(list_genotypes())
    assert load_genotype(str(PUBLISHED_DIR / "FER_V1.json")) == FER_V1


def test_roundtrip(tmp_path):
    p = save_genotype(FER_V1, tmp_path / "g.json")
    assert load_genotype(str(p)) == FER_V1
    assert genotype_from_dict(json.loads(p.read_text())) == FER_V1
    assert genotype_from_dict(genotype_to_dict(FER_V1)) == FER_V1


def _bad(tmp_path, mutate):
    d = genotype_to_dict(FER_V1)
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(FerNasError) as e:
        load_genotype(str(p))
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    return msg


def test_validation_errors(tmp_path):
    assert "unknown op 'conv_9x9'" in _bad(tmp_path, lambda d: d["normal"].__setitem__(0, ["conv_9x9", 0]))
    assert "'none'" in _bad(tmp_path, lambda d: d["normal"].__setitem__(0, ["none", 0]))
    assert "even" in _bad(tmp_path, lambda d: d["reduce"].pop())
    assert "out of range for node 0" in _bad(tmp_path, lambda d: d["normal"].__setitem__(1, ["conv_1x1", 2]))
    assert "out of range" in _bad(tmp_path, lambda d: d["normal"].__setitem__(7, ["conv_1x1", -1]))
    assert "integer" in _bad(tmp_path, lambda d: d["normal"].__setitem__(7, ["conv_1x1", "1"]))
    assert "integer" in _bad(tmp_path, lambda d: d["normal"].__setitem__(7, ["conv_1x1", True]))
    assert "pair" in _bad(tmp_path, lambda d: d["normal"].__setitem__(7, ["conv_1x1", 1, 2]))
    assert "normal_concat" in _bad(tmp_path, lambda d: d.__setitem__("normal_concat", [2, 3, 6]))
    assert "twice" in _bad(tmp_path, lambda d: d.__setitem__("reduce_concat", [2, 2]))
    assert "non-empty" in _bad(tmp_path, lambda d: d.__setitem__("reduce_concat", []))
    assert "missing" in _bad(tmp_path, lambda d: d.pop("reduce"))
    assert "unknown key" in _bad(tmp_path, lambda d: d.__setitem__("normall", []))


def test_non_json_and_missing(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("Genotype(normal=[('sep_conv_3x3', 0)])")  # Python, never eval'ed
    with pytest.raises(FerNasError, match="not valid JSON"):
        load_genotype(str(p))
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FerNasError, match="UTF-8"):
        load_genotype(str(p))
    p.write_text("[1, 2]")
    with pytest.raises(FerNasError, match="JSON object"):
        load_genotype(str(p))
    with pytest.raises(FerNasError, match="not found"):
        load_genotype(str(tmp_path / "missing.json"))


def test_names_resolve_only_in_folder(tmp_path, monkeypatch):
    with pytest.raises(FerNasError, match="unknown genotype 'NOPE'.*FER_V1"):
        load_genotype("NOPE")
    for bad in ("FER V1", "FER-V1", "..", "a.b"):
        with pytest.raises(FerNasError, match=r"invalid genotype name"):
            load_genotype(bad)
    # the user's folder first, then the published genotypes; nothing outside the two
    user = tmp_path / "mine"
    user.mkdir()
    monkeypatch.setenv("FERNAS_GENOTYPES", str(user))
    (tmp_path / "OUTSIDE.json").write_text((PUBLISHED_DIR / "DARTS_V2.json").read_text())
    with pytest.raises(FerNasError, match="unknown genotype 'OUTSIDE'"):
        load_genotype("OUTSIDE")
    assert load_genotype("FER_V1") == FER_V1  # published, shipped with the package
    (user / "FER_V1.json").write_text((PUBLISHED_DIR / "DARTS_V2.json").read_text())
    assert load_genotype("FER_V1") == load_genotype(str(PUBLISHED_DIR / "DARTS_V2.json"))  # the user's wins
    with pytest.raises(FerNasError, match="published genotype"):
        export_genotype(FER_V1, "DARTS_V2", force=True)


def test_export(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNAS_GENOTYPES", str(tmp_path))
    p = export_genotype(FER_V1, "mine_1")
    assert p == tmp_path / "mine_1.json" and load_genotype("mine_1") == FER_V1
    other = load_genotype(str(PUBLISHED_DIR / "DARTS_V2.json"))
    with pytest.raises(FerNasError, match="already exists.*--force"):
        export_genotype(other, "mine_1")
    assert load_genotype("mine_1") == FER_V1
    export_genotype(other, "mine_1", force=True)
    assert load_genotype("mine_1") == other
    with pytest.raises(FerNasError, match=r"\[A-Za-z0-9_\]\+"):
        export_genotype(other, "../evil")
