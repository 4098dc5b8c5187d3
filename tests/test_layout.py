"""The package's floor plan: every import points down (apps → stages → engine/models/data →
runtime), data and models know nothing of each other, stages nothing of each other, and
no module is loaded by path. The walk reads every module's source (function-level imports
included); the ``if __name__ == "__main__":`` block of a module is its entry point, which
belongs to the apps layer."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "nas"

# group -> layer; a module may import its own group and groups of lower layers, except the
# groups listed as siblings in ISOLATED (same layer, must not know each other)
GROUPS = {
    "nas": -1,  # the package root holds only __version__, which anything may read
    "nas.runtime": 0,
    "nas.data": 1, "nas.models": 1,
    "nas.engine": 2,
    "nas.search": 3, "nas.relabel": 3, "nas.ensemble": 3, "nas.crossdata": 3, "nas.predict": 3,
    "nas.apps": 4,
}
# the public aliases of the contracts: each stands with the group it re-exports
ALIASES = {"nas.genotypes": "nas.models", "nas.fes": "nas.data"}


def group_of(module: str) -> str:
    if module in ALIASES:
        return ALIASES[module]
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        g = ".".join(parts[:k])
        if g in GROUPS and g != "nas":
            return g
    return "nas"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, imported module, in an entry point)`` for every import of the toolkit in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, entry: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = entry or _is_main_guard(child)
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name, inner) for a in child.names if a.name.split(".")[0] == "nas")
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}:{child.lineno}: relative import"
                if child.module and child.module.split(".")[0] == "nas":
                    if child.module == "nas":  # from nas import x: x may be a module
                        out.extend((child.lineno, f"nas.{a.name}" if (PKG / a.name).exists()
                                    or (PKG / f"{a.name}.py").exists() else "nas", inner) for a in child.names)
                    else:
                        out.append((child.lineno, child.module, inner))
            visit(child, inner)

    visit(tree, path.name == "__main__.py")
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_the_walk_sees_the_whole_package():
    names = {module_name(p) for p in MODULES}
    for expected in ("nas.engine.loop", "nas.engine.session", "nas.search.searcher", "nas.relabel.stage",
                     "nas.apps.train", "nas.data.ferplus", "nas.models.factory", "nas.runtime.seeds"):
        assert expected in names
    assert group_of("nas.engine.loop") == "nas.engine" and group_of("nas.fes") == "nas.data"
    # the walk finds function-level imports (apps import their stage inside main) and knows
    # an entry point when it sees one (nas/fes.py runs the fes app under __main__ only)
    assert ("nas.engine.trainer", False) in {(m, e) for _, m, e in imports(PKG / "apps" / "train.py")}
    assert {(m, e) for _, m, e in imports(PKG / "fes.py") if m.startswith("nas.apps")} == {("nas.apps.fes", True)}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_points_down(path):
    me = module_name(path)
    mine = "nas.apps" if path.name == "__main__.py" else group_of(me)
    bad = []
    for line, target, entry in imports(path):
        src = "nas.apps" if entry else mine
        dst = group_of(target)
        if target in ALIASES and src != "nas.apps" and not entry and me not in ALIASES:
            bad.append(f"line {line}: imports the public alias {target}; import {ALIASES[target]} inside the toolkit")
            continue
        if dst == src:
            continue
        if GROUPS[dst] >= GROUPS[src]:
            bad.append(f"line {line}: {src} (layer {GROUPS[src]}) imports {target} ({dst}, layer {GROUPS[dst]})")
    assert not bad, f"{me}: " + "; ".join(bad)


def test_no_module_is_loaded_by_path_or_name():
    pattern = re.compile(r"importlib|spec_from_file_location|__import__|runpy|(?<![\w.])(exec|eval)\(")
    hits = [f"{p.relative_to(ROOT)}:{k + 1}: {line.strip()}" for p in MODULES
            for k, line in enumerate(p.read_text(encoding="utf-8").splitlines()) if pattern.search(line)]
    assert not hits, hits


def test_the_six_scripts_are_a_few_lines_that_call_the_apps():
    for name, app in (("search", "search"), ("train_searched", "train"), ("relabel_training", "relabel"),
                      ("ensemble", "ensemble"), ("test_ck48", "ck48"), ("test_jaffe", "jaffe")):
        text = (ROOT / f"{name}.py").read_text()
        code = [ln for ln in ast.unparse(ast.parse(text)).splitlines() if not ln.startswith(("'", '"'))]
        assert len(text.splitlines()) <= 10, name
        assert f"from nas.apps.{app} import cli, get_args_parser, main" in text, name
        assert code[-2:] == ["if __name__ == '__main__':", "    cli()"], name


def test_every_training_stage_has_one_entry_that_takes_a_session():
    """Issue 36: each stage module offers ``run_<stage>(session, ...) -> results``; its app opens
    the session (check, then write) and calls it."""
    import inspect

    from nas.crossdata import run_crossdata
    from nas.engine.trainer import run_train
    from nas.relabel.stage import run_relabel
    from nas.search.searcher import run_search

    for entry, app in ((run_train, "train"), (run_search, "search"), (run_relabel, "relabel"),
                       (run_crossdata, "_crossval")):
        first = next(iter(inspect.signature(entry).parameters.values()))
        assert first.name == "s" and first.annotation in ("Session", "'Session'"), entry.__name__
        src = (ROOT / "nas" / "apps" / f"{app}.py").read_text(encoding="utf-8")
        assert "open_session(" in src and f"{entry.__name__}(s" in src, app
