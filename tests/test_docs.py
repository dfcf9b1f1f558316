"""Documentation the next engineer can check: citations point into the repository, README's layout is complete.

The prior-work digest and library notes the code was first written from live outside the repository; their facts
now sit in docs/research-facts.md, and code cites that file's sections (`docs/research-facts.md#anchor`).
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "docs" / "research-facts.md"
SCANNED_DIRS = ("hdmap", "sweeps", "tests", "benchmarks", "cluster")
SCANNED_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".sh", ".sbatch"}
# Notes outside the repository: "prior-work digest", "digest §2" / "digest 5.3", the library notes, the shared
# research folder, BRIEF.md / DESIGN.md. A hash's digest (hexdigest, `digest = ...`) is not a citation.
PRIVATE_CITATION = re.compile(
    r"prior[- ]work digest|\bdigest\s*(?:§|\d)|library[- ]notes|/work/shared|shared/research|\b(?:BRIEF|DESIGN)\.md",
    re.IGNORECASE,
)
FACTS_LINK = re.compile(r"research-facts\.md#([\w-]+)")


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for name in SCANNED_DIRS:
        files += [p for p in (ROOT / name).rglob("*") if p.suffix in SCANNED_SUFFIXES and p.is_file()]
    return [p for p in files if p != Path(__file__).resolve() and "__pycache__" not in p.parts]


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_no_file_cites_notes_outside_the_repository():
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _scanned_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if PRIVATE_CITATION.search(line)
    ]
    assert hits == [], "cite docs/research-facts.md#<section> (or the primary source) instead:\n" + "\n".join(hits)


def test_every_research_facts_link_names_an_existing_section():
    headings = re.findall(r"^#{2,4} (.+)$", FACTS.read_text(), flags=re.MULTILINE)
    anchors = {_github_anchor(h) for h in headings}
    broken = [
        f"{path.relative_to(ROOT)}: #{anchor}"
        for path in _scanned_files()
        for anchor in FACTS_LINK.findall(path.read_text(errors="replace"))
        if anchor not in anchors
    ]
    assert broken == [], f"no such section in {FACTS.relative_to(ROOT)} (sections: {sorted(anchors)}):\n" + "\n".join(
        broken
    )


def _readme_layout_paths() -> set[str]:
    """Paths named by README's "## Layout" block: an entry indented under a folder entry lies inside it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1]
    block = section.split("```\n", 1)[1].split("```", 1)[0]
    paths, parents = set(), []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        parents = parents[:depth]
        path = "".join(parents) + line.split()[0]
        paths.add(path)
        if path.endswith("/"):
            parents.append(line.split()[0])
    return paths


def test_readme_layout_lists_every_module():
    """Every module of hdmap/ and sweeps/ has its line (a package's __init__.py: its folder's line)."""
    listed = _readme_layout_paths()
    modules = set()
    for package in ("hdmap", "sweeps"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            modules.add(rel.removesuffix("__init__.py") if path.name == "__init__.py" else rel)
    missing = sorted(modules - listed)
    assert missing == [], "README.md's Layout section misses: " + ", ".join(missing)
