"""README's two commands and .ci/run must stay in step: CI does what a new user does."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text.split("\n## ", 1)[0]  # the opening, before the first section
    return re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)


def test_readme_opens_with_exactly_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    install, tests = cmds
    assert install.strip().endswith("python -m nas demo")
    assert "torch==2.14.1" in install and "torchvision==0.29.1" in install
    assert tests.strip().startswith("python -m pytest")


def test_ci_runs_readme_commands_word_for_word():
    install, tests = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    setup_part = install.strip()[: -len("&& python -m nas demo")].strip()
    assert setup_part in ci, "the install part of README's first command must appear in .ci/run"
    assert tests.strip() in ci
    assert '"$rc" -eq 5' in ci  # pytest's "no tests collected" is not a failure
