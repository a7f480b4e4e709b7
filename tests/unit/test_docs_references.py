"""The design documents and the code point at each other, and every pointer resolves.

* Code (every .py file under app/, engine/, adapters/, migrations/, bench/, tests/) and the
  README cite design documents as ``docs/<name>.md``; each cited file must exist. A bare
  ``<name>.md`` naming a design document (or a document of the original brief that no longer
  exists under that name) is refused too: it would escape this check.
* The documents under docs/ name code by path (``app/jobs/artifacts.py``,
  ``tests/unit/test_x.py::test_y``) and each other by link; each must exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCANNED = ("app", "engine", "adapters", "migrations", "bench", "tests")
# Documents of the original brief, cited by those names before docs/ existed.
BRIEF_NAMES = ("product", "oracles", "style", "algorithm", "architecture")
CODE_PREFIXES = ("app/", "engine/", "adapters/", "migrations/", "tests/", "bench/")

DOC_REF = re.compile(r"docs/([A-Za-z0-9_.-]+?\.md)\b")
BACKTICKED = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _bare_ref(names: set[str]) -> re.Pattern[str]:
    """``<name>.md`` not preceded by a path (``docs/``, ``shared/``...) or a word."""
    alternatives = "|".join(sorted(re.escape(n) for n in names))
    return re.compile(r"(?<![\w/.-])(" + alternatives + r")\.md\b")


def doc_names() -> set[str]:
    names = {p.stem for p in DOCS.glob("*.md") if p.stem != "README"}
    return names | set(BRIEF_NAMES)


def sources() -> list[Path]:
    files = [p for top in SCANNED for p in sorted((ROOT / top).rglob("*.py"))]
    return [*files, ROOT / "README.md"]


def problems_in(text: str, names: set[str]) -> Iterator[str]:
    """What is wrong with the document references in ``text``."""
    for m in DOC_REF.finditer(text):
        if not (DOCS / m.group(1)).is_file():
            yield f"cites docs/{m.group(1)}, which does not exist"
    for m in _bare_ref(names).finditer(text):
        yield f"names {m.group(0)} without docs/: cite a file of docs/README.md as docs/<name>.md"


def test_every_document_the_code_cites_exists():
    names = doc_names()
    found = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        for line_no, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{line_no}: {p}" for p in problems_in(line, names)]
    assert not found, "\n".join(found)


def test_the_check_catches_bad_references():
    names, md = doc_names(), ".md"  # spelt apart so that this file cites nothing itself
    assert list(problems_in(f"see docs/contract{md}", names)) == []
    assert list(problems_in(f"see docs/no-such-document{md}", names))
    assert list(problems_in(f"the recipe in product{md}", names))  # a brief name, no folder
    assert list(problems_in(f"(oracles{md}, 'SDK traps')", names))
    assert list(problems_in(f"shared/docs/product{md}", names))  # outside the repository
    assert list(problems_in(f"results in bench/results/cloud_throughput{md}", names)) == []


def code_refs(text: str) -> Iterator[str]:
    """Code paths a document names in backticks (``path`` or ``path::test``)."""
    for m in BACKTICKED.finditer(text):
        token = m.group(1).strip()
        if token.startswith(CODE_PREFIXES) and " " not in token and "<" not in token:
            yield token


def _defines(path: Path, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def {re.escape(name)}\b", path.read_text(), re.M) is not None


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_path_and_link_a_document_names_exists(doc):
    text = (DOCS / doc).read_text(encoding="utf-8")
    missing = []
    for ref in code_refs(text):
        path, _, test = ref.partition("::")
        target = ROOT / path
        if not target.exists() or (test and not _defines(target, test)):
            missing.append(ref)
    for m in LINK.finditer(text):
        link = m.group(1)
        if "://" not in link and not (DOCS / link).exists():
            missing.append(link)
    missing += [p for p in problems_in(text, set()) if "does not exist" in p]
    assert not missing, f"{doc} names what does not exist: {missing}"
