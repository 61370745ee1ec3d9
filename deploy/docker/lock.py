"""Writes deploy/docker/requirements.lock: the worker's dependencies as installed here, exact pins.

It walks finsent's runtime requirements (no extras) through the installed distributions, so the
lock holds the versions this environment's tests ran on; the images install from it, and
deploy/local/setup.sh installs with it as constraints, so CI keeps testing what the image ships.
Run after upgrading dependencies, on Linux x86-64 with the image's Python (3.11): `make lock`.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "deploy" / "docker" / "requirements.lock"


def closure(root: str) -> dict[str, str]:
    """name -> installed version of everything ``root`` needs at run time (markers for this Python)."""
    pins: dict[str, str] = {}
    todo = [Requirement(r) for r in distribution(root).requires or []]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in pins:
            continue
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            sys.exit(f"lock: {requirement} is needed but not installed (pip install -e . first)")
        if dist.version not in requirement.specifier:
            sys.exit(f"lock: installed {requirement.name} {dist.version} does not satisfy {requirement}")
        pins[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or []]
    return pins


def main() -> None:
    pins = closure("finsent")
    python = ".".join(map(str, sys.version_info[:2]))
    header = (
        f"# finsent's run-time dependencies as tested (python deploy/docker/lock.py; Python {python}, Linux x86-64)."
    )
    LOCK.write_text("\n".join([header] + [f"{n}=={v}" for n, v in sorted(pins.items())]) + "\n")
    print(f"{LOCK.relative_to(ROOT)}: {len(pins)} packages")


if __name__ == "__main__":
    main()
