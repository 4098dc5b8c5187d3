"""The docs stay true to the code: the flag tables are the parsers', README's code map names
every module, links point at files that exist, and README stays short."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_flag_tables_are_the_parsers():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "make_flags.py"), "--check"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = (ROOT / "docs" / "training.md").read_text()
    assert "<!-- flags: train -->\n| flag | default | meaning |" in text and "`--patience`" in text


def test_every_command_has_a_flag_table():
    from nas.apps import COMMANDS

    blocks = {m for p in DOCS for m in re.findall(r"<!-- flags: ([a-z0-9_]+) -->", p.read_text())}
    assert set(COMMANDS) <= blocks, sorted(set(COMMANDS) - blocks)


def test_readme_is_short_and_its_code_map_names_every_module():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    code_map = text.split("## Code map", 1)[1].split("```", 2)[1]
    missing = []
    for p in sorted((ROOT / "nas").rglob("*.py")):
        rel = p.relative_to(ROOT / "nas")
        name = rel.name
        if name == "__init__.py" and rel.parent != Path("apps"):
            name = f"{rel.parent.name}/" if rel.parent.parts else "nas/"
        if not re.search(rf"(?<![\w/]){re.escape(name)}", code_map):
            missing.append(str(rel))
    assert not missing, missing


def test_links_point_at_files_that_exist():
    broken = []
    for page in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


# ----------------------------------------------------------------------------- figures and their files
#: a measured figure: a percentage or points with decimals, a rate, a time per call
FIGURE = re.compile(r"\d+\.\d+ ?%|\d+\.\d+ points|\d+(\.\d+)? img/s|faces/s|\d+(\.\d+)? µs")
#: where a section says what its figures come from
SOURCED = re.compile(r"bench/results-|bench/external/|bench/grids/[\w.\-]+|\*\*History\*\*")
CITED = re.compile(r"bench/(?:history/|external/)?results?-[\w.*|\-]+|bench/external/[\w.\-]+|bench/grids/[\w.*\-]+")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]


def _sections(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    out, start, head, fence = [], 0, "(top)", False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = not fence
        if line.startswith("#") and not fence:
            out.append((head, "\n".join(lines[start:i])))
            head, start = line, i
    out.append((head, "\n".join(lines[start:])))
    return out


def test_every_figure_comes_from_a_results_file_or_is_marked_history():
    """Issue 32: each measured number in README and docs/ sits in a section that names the results
    file a script wrote (bench/results-*, or a grid folder bench/grids/*, whose rows carry
    provenance), an external report (bench/external/), or says **History** (when, on what,
    which commit)."""
    missing = [f"{p.relative_to(ROOT)}: {head[:80]}" for p in PAGES for head, text in _sections(p)
               if FIGURE.search(text) and not SOURCED.search(text)]
    assert not missing, "sections with figures but no source:\n" + "\n".join(missing)


def test_cited_results_files_exist():
    import glob

    bad = []
    for p in PAGES:
        text = re.sub(r"--out \S+", "", p.read_text(encoding="utf-8"))  # a command's output, not a citation
        for ref in set(CITED.findall(text)):
            ref = ref.rstrip(".,;:)")
            patterns = [ref] if "|" not in ref else [ref.split("|")[0].rsplit(".", 1)[0] + "." + ext
                                                     for ext in ref.rsplit(".", 1)[1].split("|")]
            if not any(glob.glob(str(ROOT / pat)) for pat in patterns):
                bad.append(f"{p.relative_to(ROOT)}: {ref}")
    assert not bad, bad
