"""The documentation's contracts against the code they describe: README.md and docs/*.md."""
import re
from pathlib import Path

from imgsim.failures import REASONS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = {path.name: path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}


def test_the_failure_reasons_table_is_the_reason_codes():
    page = PAGES["operations.md"]
    section = page[page.index("## Failure reasons"):]
    section = section[:section.index("\n#", 1)]  # up to the next heading
    table = {code: meaning.replace("`", "") for code, meaning in re.findall(r"^\| `(\w+)` \| (.+?) \|$", section, re.M)}
    assert table == REASONS, "docs/operations.md's failure-reason table and imgsim.failures.REASONS differ"


def test_every_imgsim_command_in_the_docs_parses():
    """Every `imgsim ...` command in the code blocks of README and docs/ is a valid command line."""
    from imgsim.config.parser import parse

    commands = [line.split(" #")[0].strip().removeprefix(".venv/bin/")
                for text in (README, *PAGES.values())
                for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    commands = [c for c in commands if c.startswith("imgsim ") and not c.endswith("\\")]
    assert len(commands) >= 20
    for command in commands:
        parse(command.split()[1:])


def test_the_readme_is_a_front_door_linking_every_reference_page():
    """About 200 lines, the set-up and test commands, and a link to every page under docs/ (each of
    which exists): the reference lives there."""
    assert len(README.splitlines()) <= 220
    assert ".venv/bin/python -m pytest" in README and "pip install -c constraints.txt" in README
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README))
    assert linked == set(PAGES), (linked, set(PAGES))
    for name, page in PAGES.items():  # relative links inside docs/ resolve
        for target in re.findall(r"\]\((?!https?:|#)([^)#]+)", page):
            assert (ROOT / "docs" / target).exists(), f"docs/{name} links to {target}, which does not exist"
