"""The README and docs/ stay navigable: every relative link and image path (Markdown or HTML) resolves
to a file or folder of the checkout, every `#anchor` into a Markdown file names one of its headings (as
GitHub makes them), every hand-written docs page links back to the README, and every target
`make help` lists is named in the README. Offline, no make: the Makefile is read as `make help` reads it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GENERATED = {ROOT / "docs" / "results.md"}  # written by `make results`, not by hand: no back link

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
# ](target) and ](target "title") of Markdown links and images; src= and href= of HTML tags.
MARKDOWN_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_TARGET = re.compile(r"\b(?:src|href)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto: ...: not checked (no network)
HEADING = re.compile(r"^(#{1,6}) +(.*?)\s*#*\s*$")
# What `make help` lists: the grep -E of its recipe.
HELP_LINE = re.compile(r"^([a-z-]+):.*## ")


def prose_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, line, line with its inline code spans blanked) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line, CODE_SPAN.sub("``", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (code ticks too), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line, _ in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")  # GitHub numbers repeated headings
        seen[base] = count + 1
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """'page:line: target (why)' for each relative link or image path of `page` that does not resolve."""
    broken = []
    for number, _, line in prose_lines(page.read_text(encoding="utf-8")):
        for target in MARKDOWN_TARGET.findall(line) + HTML_TARGET.findall(line):
            if SCHEME.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(root)}:{number}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{where} (no heading with that anchor in {resolved.name})")
    return broken


def help_targets(makefile: Path) -> list[str]:
    return [m.group(1) for line in makefile.read_text().splitlines() if (m := HELP_LINE.match(line))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_and_image_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Large data sets\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#large-data-sets) ![gone](docs/gone.png) [bad](docs/a.md#nowhere)\n"
        '<img src="docs/missing.png"> `[in code](nope.md)` [web](https://example.com)\n'
        "```\n[fenced](nope.md)\n```\n",
        encoding="utf-8",
    )
    found = broken_links(page, tmp_path)
    assert [f.split(": ", 1)[1] for f in found] == [
        "docs/gone.png (no such file)",
        "docs/a.md#nowhere (no heading with that anchor in a.md)",
        "docs/missing.png (no such file)",
    ]


def test_anchors_follow_github() -> None:
    assert slug("Demo page: `make demo`") == "demo-page-make-demo"
    assert slug("DiT: a transformer denoiser") == "dit-a-transformer-denoiser"
    assert slug("Flow vs normflows' Glow, at equal time") == "flow-vs-normflows-glow-at-equal-time"


@pytest.mark.parametrize("page", sorted(set(PAGES[1:]) - GENERATED), ids=lambda p: p.name)
def test_every_docs_page_starts_with_a_link_back_to_the_readme(page: Path) -> None:
    first = page.read_text(encoding="utf-8").splitlines()[0]
    assert "](../README.md)" in first, f"{page.name}: the first line should link back to ../README.md"


def test_every_make_help_target_is_in_the_readme() -> None:
    targets = help_targets(ROOT / "Makefile")
    assert "help" in targets and "train" in targets  # the parse found the help lines
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [t for t in targets if not re.search(rf"make {re.escape(t)}(?![\w-])", readme)]
    assert missing == [], f"README.md does not name these `make help` targets: {missing}"
