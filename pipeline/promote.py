"""``finsent promote``: switch the serving bundle for every worker, with a record of who did what.

The serving path (FINSENT_MODEL_BUNDLE) is a symbolic link to a bundle folder; promotion points
it at another bundle with one atomic rename, so every worker that reads the path (one host, or a
shared volume) swaps between two batches within its bundle poll (2 s), and none ever sees half a
bundle. Each switch writes an audit document (who, when, from and to, forced or not, the shadow
report's figures) to ``<prefix>-audit`` before it happens (marked ``failed`` if the rename fails);
``rollback`` points the link back where the last switch came from.
"""

from __future__ import annotations

import getpass
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from .bundle import open_bundle


class PromotionRefused(ValueError):
    """The switch did not happen; the message says why and what to do."""


def audit_index(prefix: str) -> str:
    return f"{prefix}-audit"


def current_target(link: Path) -> Path:
    if not link.is_symlink():
        raise PromotionRefused(
            f"{link} (FINSENT_MODEL_BUNDLE) is not a symbolic link, so it cannot be switched atomically: "
            f"move the bundle to a folder of its own and link to it, e.g. "
            f"`mv {link} {link.parent}/bundle-1 && ln -s bundle-1 {link}`"
        )
    return (link.parent / os.readlink(link)).resolve()


def switch(link: Path, target: Path) -> None:
    """Points ``link`` at ``target`` atomically (a new link renamed over the old one)."""
    temporary = link.parent / f".{link.name}.{uuid.uuid4().hex[:8]}"
    os.symlink(target.resolve(), temporary)
    os.replace(temporary, link)


def version_of(path: Path) -> str | None:
    try:
        return open_bundle(path, verify_checksums=False).model_version
    except Exception:
        return None


def audit_record(
    action: str, previous: Path, target: Path, by: str | None, forced: bool, evidence: dict | None
) -> dict:
    return {
        "id": uuid.uuid4().hex,
        "action": action,
        "by": by or getpass.getuser(),
        "at": datetime.now(UTC).isoformat(),
        "from_path": str(previous),
        "from_version": version_of(previous),
        "to_path": str(target.resolve()),
        "to_version": version_of(target),
        "forced": forced,
        "evidence": evidence,
    }


def write_audit(es, prefix: str, record: dict) -> None:
    es.index(index=audit_index(prefix), id=record["id"], document=record, refresh="wait_for")


def last_switch(es, prefix: str) -> dict | None:
    index = audit_index(prefix)
    if not es.indices.exists(index=index):
        return None
    done = {"bool": {"must_not": {"exists": {"field": "failed"}}}}  # a switch that failed changed nothing
    hits = es.search(index=index, size=1, query=done, sort=[{"at": {"order": "desc"}}])["hits"]["hits"]
    return hits[0]["_source"] if hits else None


def check_evidence(summary: dict | None, version: str, force: bool) -> list[str]:
    """Why the shadow evidence does not allow promoting ``version`` (empty: it does, or forced)."""
    if force:
        return []
    if summary is None:
        return ["no shadow report was given (--run-id or --since): run the candidate in shadow first"]
    problems = []
    if set(summary["candidate_models"]) != {version}:
        problems.append(f"the shadow records are of {sorted(summary['candidate_models'])}, not of {version}")
    return problems + summary["verdict"]["reasons"]
