"""README's contracts against the code they describe."""
import re
from pathlib import Path

from imgsim.failures import REASONS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_failure_reasons_are_the_reason_codes():
    section = README[README.index("### Failure reasons"):]
    section = section[:section.index("\n#", 1)]  # up to the next heading
    table = {code: meaning.replace("`", "") for code, meaning in re.findall(r"^\| `(\w+)` \| (.+?) \|$", section, re.M)}
    assert table == REASONS, "README's failure-reason table and imgsim.failures.REASONS differ"


def test_readme_commands_parse():
    """Every `imgsim ...` command in README's code blocks is a valid command line."""
    from imgsim.config.parser import parse

    commands = [line.split("#")[0].strip().removeprefix(".venv/bin/")
                for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.splitlines()]
    commands = [c for c in commands if c.startswith("imgsim ") and not c.endswith("\\")]
    assert len(commands) >= 5
    for command in commands:
        parse(command.split()[1:])
