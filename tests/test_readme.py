"""The README's quickstart is what CI runs, and the top level holds exactly what it should."""

import os
import re

from helpers import REPO


def quickstart_commands():
    text = open(os.path.join(REPO, "README.md")).read()
    quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", quick, re.S)


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert "experiments.train --config configs/siglip_shapes.py" in commands[0]
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert commands[1] in ci.splitlines()


def test_top_level_layout():
    tracked = {p for p in os.listdir(REPO) if not p.startswith(".")} - {"__pycache__"}
    ignored = {"runs", "venv", "workdirs", "build"} | {p for p in tracked if p.endswith(".egg-info")}
    assert tracked - ignored == {"jvlm", "experiments", "configs", "tests", "launch", "pyproject.toml", "README.md"}
