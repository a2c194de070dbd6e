"""The code trees a side-by-side benchmark runs: this checkout, and with --before a checkout of an
earlier revision (e.g. `git worktree add /tmp/prev <rev>`), each named by its git revision."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_trees(before: str | None) -> list[str]:
    """This checkout first, then `before` when given."""
    return [str(ROOT)] + ([before] if before else [])


def revision(tree: str) -> str | None:
    """`git describe --always --dirty` of the tree (None outside git)."""
    out = subprocess.run(["git", "-C", tree, "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or None
