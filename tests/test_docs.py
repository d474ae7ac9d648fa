"""The front page and the docs pages: README.md stays short, cites the paper, gives the test command CI runs,
and every relative link in README.md and docs/*.md (and every #anchor) leads somewhere. Plain text only: no
torch, under a second."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def fenced_blocks(text):
    """(info string, body) of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL)]


def prose(text):
    """The text outside code: fenced blocks, indented code lines and inline code spans removed."""
    text = FENCE.sub("", text)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading):
    """GitHub's anchor for a heading: links to their text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor a page's headings give, with GitHub's -1, -2 ... for repeated headings."""
    seen, result = {}, set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            result.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return result


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    text = page.read_text()
    assert len(re.findall(r"^```", text, re.MULTILINE)) % 2 == 0, "a code block is not closed"
    broken = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_links_are_found():
    """The link pattern itself works: the README links every docs page."""
    linked = {target.partition("#")[0] for target in LINK.findall(prose((ROOT / "README.md").read_text()))}
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= linked


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert re.search(r"^Copyright \(c\) \d{4}(-\d{4})? the krony authors$", text, re.MULTILINE)
    assert "Permission is hereby granted, free of charge" in text


def test_readme_cites_the_paper():
    entries = [body for info, body in fenced_blocks((ROOT / "README.md").read_text()) if info == "bibtex"]
    assert len(entries) == 1
    entry = entries[0]
    assert re.match(r"@\w+\{\w+,", entry) and entry.count("{") == entry.count("}")
    assert re.search(r"eprint\s*=\s*\{2412\.12351\}", entry) and "archivePrefix = {arXiv}" in entry
    assert "Krony-PT" in entry and "Ben Ayad" in entry


def test_readme_test_command_is_what_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip().startswith("python -m pytest")]
    assert len(ci) == 1
    readme = [line.strip() for _, body in fenced_blocks((ROOT / "README.md").read_text()) for line in body.splitlines()]
    assert ci[0] in readme
