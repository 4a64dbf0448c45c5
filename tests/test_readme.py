"""The README's two set-up commands are the ones CI and users run: keep them honest."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(setup)
    assert len(blocks) == 2, "the Set up section holds exactly two commands"
    run_cmd, test_cmd = blocks
    assert "\n" not in run_cmd and "\n" not in test_cmd, "each is a single copy-paste line"
    assert run_cmd.endswith("streamlit run streamlit_app.py")
    assert "python3 -m venv" in run_cmd and "python3 -m venv" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, ".ci/run must run the README's test command verbatim"


def test_requirements_are_exact_pins():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line.split(";")[0], line


def test_every_setting_is_in_the_readme_table():
    names = set(re.findall(r'"(STUDIO_[A-Z_]+)"', (ROOT / "lib" / "settings.py").read_text()))
    table = (ROOT / "README.md").read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(STUDIO_[A-Z_]+)` \|", table, flags=re.M))
    assert names and names <= rows, sorted(names - rows)
