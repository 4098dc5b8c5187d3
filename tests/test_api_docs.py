"""Issue 36: every public function in nas/ says what it does, and public signatures name their
types. The exceptions are listed here, each with its reason."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAS = ROOT / "nas"

#: methods whose contract is documented once, on the base or protocol they implement:
#: nn.Module's ``forward``, and the hooks of ``Objective`` and ``Callback`` (nas/engine/loop.py)
LOOP = NAS / "engine" / "loop.py"
#: parameters typed ``Any`` on purpose: a batch is whatever the objective's ``epoch_batches`` returns
ANY_ALLOWED = {"nas/engine/loop.py Objective.step(batch)", "nas/engine/loop.py Loop.run_step(batch)"}


def _hooks() -> set[str]:
    """Method names documented on Objective and Callback."""
    tree = ast.parse(LOOP.read_text(encoding="utf-8"))
    names = set()
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name in ("Objective", "Callback"):
            for f in cls.body:
                if isinstance(f, ast.FunctionDef):
                    assert ast.get_docstring(f), f"{cls.name}.{f.name} documents the hook for its implementations"
                    names.add(f.name)
    return names


def _public_functions():
    """(file, qualified name, function node, enclosing class node or None) of every public function."""
    for path in sorted(NAS.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def walk(node, prefix, cls):
            for n in ast.iter_child_nodes(node):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not n.name.startswith("_"):
                    yield rel, prefix + n.name, n, cls
                elif isinstance(n, ast.ClassDef) and not n.name.startswith("_"):
                    yield from walk(n, prefix + n.name + ".", n)

        yield from walk(tree, "", None)


def _implements_hooks(cls: ast.ClassDef) -> bool:
    bases = {ast.unparse(b) for b in cls.bases}
    methods = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
    return "Callback" in bases or {"step", "epoch_batches"} <= methods  # an Objective (a structural protocol)


def _module_classes() -> set[str]:
    """Names of the package's classes that derive from nn.Module, directly or through its own classes."""
    bases = {}
    for path in NAS.rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(n, ast.ClassDef):
                bases[n.name] = {ast.unparse(b).split(".")[-1] for b in n.bases}
    found = {"Module", "Sequential"}
    while True:
        more = {name for name, bs in bases.items() if bs & found} - found
        if not more:
            return found
        found |= more


def test_every_public_function_has_a_docstring():
    hooks, modules = _hooks(), _module_classes()
    missing = []
    for rel, qual, fn, cls in _public_functions():
        if ast.get_docstring(fn):
            continue
        if cls is not None and fn.name == "forward" and cls.name in modules:
            continue
        if cls is not None and fn.name in hooks and _implements_hooks(cls):
            continue
        missing.append(f"{rel}:{fn.lineno} {qual}")
    assert not missing, f"{len(missing)} public functions without a docstring:\n" + "\n".join(missing)


def test_public_signatures_name_their_types():
    bare = set()
    for rel, qual, fn, _cls in _public_functions():
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        for a in args:
            if a.annotation is not None and ast.unparse(a.annotation) == "Any":
                bare.add(f"{rel} {qual}({a.arg})")
        if fn.returns is not None and ast.unparse(fn.returns) == "Any":
            bare.add(f"{rel} {qual} -> Any")
    assert bare <= ANY_ALLOWED, "bare Any in public signatures:\n" + "\n".join(sorted(bare - ANY_ALLOWED))
    assert ANY_ALLOWED <= bare, f"stale exceptions: {sorted(ANY_ALLOWED - bare)}"


def test_fmt_pct_is_the_one_percentage_formatter():
    from nas.runtime.cli import fmt_pct

    assert fmt_pct(81.4999) == "81.50%" and fmt_pct("12.25", digits=1, unit=" %") == "12.2 %"
    assert [fmt_pct(v) for v in (None, "", float("nan"), "x")] == ["n/a"] * 4
    helpers = [p.relative_to(ROOT).as_posix() for p in NAS.rglob("*.py")
               if "def pct(" in p.read_text(encoding="utf-8") and "fmt_pct" not in p.read_text(encoding="utf-8")]
    assert not helpers, f"percentage helpers of their own: {helpers}"
