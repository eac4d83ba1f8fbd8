"""References from code and docs to ``docs/`` pages resolve, and nothing cites a document outside the repository.

A reference is ``docs/<page>.md``, optionally followed by sections (``docs/method.md §4.3b``,
``docs/method.md §8.2, §8.3``) or an anchor (``docs/method.md#s8-10``). A section ``§x.y`` resolves when the page has
a heading numbered ``x.y`` (``### 8.10 ...``); an anchor resolves when the page has ``<a id="...">`` with that id or a
heading whose GitHub slug it is. Anchor scheme: ``docs/method.md`` (first lines).
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
THIS_FILE = Path(__file__).resolve()
SCANNED_DIRS = ("lerobot_defi", "lerobot_policy_defi", "conversions", "configs", "benchmarks", "tests")
SCANNED_FILES = ("README.md",)
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".sh"}
EXCLUDED_DIRS = {REPO / "tests" / "data"}

SECTION = r"§[0-9A-Z][0-9A-Za-z.]*[0-9a-z]|§[A-Z]"
DOCS_REFERENCE = re.compile(
    r"(?<![\w/.-])docs/(?P<page>[\w-]+\.md)"
    r"(?:#(?P<anchor>[\w.-]+)"
    rf"|(?P<sections>[ \t]*(?:{SECTION})(?:[ \t]*(?:,|and|/|–|-)[ \t]*(?:{SECTION}))*))?"
)
SECTION_TOKEN = re.compile(SECTION)
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
NUMBERED_HEADING = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)*[a-z]?|[A-Z])\.?(?:[ \t]|$)")
EXPLICIT_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["'](?P<id>[^"']+)["']""")
# Relative Markdown links between docs/ pages: [text](data_flow.md#s7), [text](#s8-1).
RELATIVE_LINK = re.compile(r"\]\((?P<page>[\w-]+\.md)?(?:#(?P<anchor>[\w.-]+))?\)")

# References that point outside the repository: the team's method spec and other documents that lived beside
# the repository, and "spec N", "spec section N", "spec 8 item M" citations without a docs/ page.
OUTSIDE_REFERENCES = {
    "document outside the repository": re.compile(
        r"(?<!docs/)\b(?:defi_spec|lerobot_api|lerobot_plugin|performance|ARCHITECTURE|formats|calvin_env_install)"
        r"\.md\b"
    ),
    "path to the shared docs folder": re.compile(r"\bshared/docs\b"),
    "spec citation": re.compile(
        r"\bspec(?:'s)?[ \t]+(?:sections?[ \t]+|appendix[ \t]+|items?[ \t]+)?(?:[0-9]|[A-Z]\b)"
    ),
    "'the spec'": re.compile(r"\bthe spec\b"),
    "bare item citation": re.compile(r"\b(?:section[ \t]+)?[0-9]+,?[ \t]+items?[ \t]+[0-9]+"),
}


def scanned_files() -> list[Path]:
    files = [REPO / name for name in SCANNED_FILES if (REPO / name).is_file()]
    for folder in SCANNED_DIRS:
        for path in sorted((REPO / folder).rglob("*")):
            if (
                path.is_file()
                and path.suffix in SUFFIXES
                and path.resolve() != THIS_FILE
                and not any(parent in EXCLUDED_DIRS for parent in path.parents)
            ):
                files.append(path)
    return files


def docs_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md")) if DOCS.is_dir() else []


def github_slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (except ``-`` and ``_``), spaces to ``-``."""
    title = re.sub(r"<[^>]+>", "", title).strip().lower()
    title = re.sub(r"[^\w\- ]", "", title)
    return title.replace(" ", "-")


def page_targets(page: Path) -> tuple[set[str], set[str]]:
    """``(section numbers, anchors)`` that references into ``page`` may use."""
    text = page.read_text(encoding="utf-8")
    text_without_code = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    sections, anchors = set(), set()
    for match in HEADING.finditer(text_without_code):
        title = match["title"]
        anchors.add(github_slug(title))
        numbered = NUMBERED_HEADING.match(re.sub(r"<[^>]+>", "", title).strip())
        if numbered:
            sections.add(numbered["number"])
    anchors.update(m["id"] for m in EXPLICIT_ANCHOR.finditer(text))
    return sections, anchors


def find_docs_references(text: str) -> list[tuple[int, str, str | None, list[str]]]:
    """``(line, page, anchor, sections)`` of every ``docs/<page>.md`` reference in ``text``."""
    found = []
    for match in DOCS_REFERENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        sections = [token[1:] for token in SECTION_TOKEN.findall(match["sections"] or "")]
        found.append((line, match["page"], match["anchor"], sections))
    return found


def find_relative_links(text: str, page: str) -> list[tuple[int, str, str | None, list[str]]]:
    """``(line, page, anchor, [])`` of every relative Markdown link of a docs/ page (``page`` for ``#anchor``)."""
    found = []
    for match in RELATIVE_LINK.finditer(text):
        if match["page"] or match["anchor"]:
            line = text.count("\n", 0, match.start()) + 1
            found.append((line, match["page"] or page, match["anchor"], []))
    return found


def unresolved(references, pages: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    problems = []
    for where, page, anchor, sections in references:
        if page not in pages:
            problems.append(f"{where}: docs/{page} does not exist")
            continue
        numbers, anchors = pages[page]
        if anchor is not None and anchor not in anchors:
            problems.append(f"{where}: docs/{page} has no anchor #{anchor}")
        problems.extend(
            f"{where}: docs/{page} has no section §{s}" for s in sections if s.rstrip(".") not in numbers
        )
    return problems


def all_pages() -> dict[str, tuple[set[str], set[str]]]:
    return {page.name: page_targets(page) for page in docs_pages()}


def test_docs_references_resolve():
    """(a) Every docs/<page>.md [§x.y | #anchor] reference in code, configs, tests, README and docs/ resolves, and so
    does every relative link between docs/ pages."""
    references = []
    for path in scanned_files() + docs_pages():
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(REPO)
        references += [(f"{rel}:{line}", *rest) for line, *rest in find_docs_references(text)]
        if path.parent == DOCS:
            references += [(f"{rel}:{line}", *rest) for line, *rest in find_relative_links(text, path.name)]
    assert not unresolved(references, all_pages()), "\n".join(unresolved(references, all_pages()))


def test_no_references_outside_the_repository():
    """(b) Nothing in code, configs, tests or README cites a document outside the repository."""
    hits = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for kind, pattern in OUTSIDE_REFERENCES.items():
                if pattern.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{number}: {kind}: {line.strip()}")
    assert not hits, f"{len(hits)} reference(s) outside the repository:\n" + "\n".join(hits)


# --- the checker itself ------------------------------------------------------------------------------------------
def test_method_page_has_every_spec_section_and_quirk():
    """docs/method.md keeps the numbering the code cites: sections 1-9, A, B, and quirks 8.1-8.26."""
    sections, anchors = page_targets(DOCS / "method.md")
    expected = {str(n) for n in range(1, 10)} | {"A", "B"} | {f"8.{i}" for i in range(1, 27)}
    expected |= {"4.3", *(f"4.3{part}" for part in "abcdefg"), "2.5", "3.1", "5.4", "6.1", "6.2"}
    assert expected <= sections, sorted(expected - sections)
    assert {f"s8-{i}" for i in range(1, 27)} <= anchors


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("see docs/method.md §8.10 and docs/method.md §4.3b", 0),
        ("(docs/method.md §8.2, §8.3)", 0),
        ("docs/method.md#s8-10, docs/data_flow.md#s6-1", 0),
        ("docs/method.md §A", 0),
        ("docs/method.md §99.1", 1),
        ("docs/method.md §8.2, §8.99", 1),
        ("docs/method.md#no-such-anchor", 1),
        ("docs/no_such_page.md", 1),
        ("tensorflow/datasets docs/catalog/fractal20220817_data.md", 0),
    ],
)
def test_reference_checker(text, problems):
    references = [(f"example:{line}", *rest) for line, *rest in find_docs_references(text)]
    assert len(unresolved(references, all_pages())) == problems


@pytest.mark.parametrize(
    ("line", "outside"),
    [
        ("# Official quirk (spec 8, item 2).", True),
        ('"""GIDM (spec section 3)."""', True),
        ("recipe (spec appendix A)", True),
        ("3.6, 4.9; section 8 items 16, 17, 19, 20).", True),
        ("see ../shared/docs/defi_spec.md", True),
        ("defaults = official recipe where the spec gives one", True),
        ("# Official quirk (docs/method.md §8.2).", False),
        ("see docs/performance.md", False),
        ("spec = builder.spec(_steps(key))", False),
        ("if spec.kind != 'image'", False),
    ],
)
def test_outside_reference_patterns(line, outside):
    assert any(p.search(line) for p in OUTSIDE_REFERENCES.values()) == outside


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("[§7](data_flow.md#s7), [8.1](#s8-1), [page](method.md)", 0),
        ("[x](data_flow.md#s99)", 1),
        ("[x](#nope)", 1),
    ],
)
def test_relative_link_checker(text, problems):
    references = [(f"example:{line}", *rest) for line, *rest in find_relative_links(text, "method.md")]
    assert len(unresolved(references, all_pages())) == problems
