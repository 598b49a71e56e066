"""Fill in the size and sha256 of the curated models' files, from the hub's own listing.

A pull of a curated model keeps only files whose size and sha256 match the figures its entry
of ``lemonade_jupyter/core/curated_models.json`` pins (so a mirror cannot substitute another
model). This script is how those figures are obtained: for each entry, it lists the
repository, picks the files a pull of that entry would fetch (the same choice as a pull) and
reads their size and LFS sha256 from the listing. Run it against the real hub, never a mirror,
when an entry is added or changed, and review the diff:

    python scripts/curated_figures.py            # print the figures, change nothing
    python scripts/curated_figures.py --write    # write them into the curated list

``HF_ENDPOINT`` and ``HF_TOKEN`` are honoured (a gated repository needs a token). An entry
whose files the hub does not list with a sha256 is reported and left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lemonade_jupyter.core.catalog import CURATED_FILE  # noqa: E402
from lemonade_jupyter.core.hub import (  # noqa: E402
    DEFAULT_ENDPOINT, RepoFile, parse_checkpoint, plan_pull,
)
from lemonade_jupyter.core.hub_transfer import Hangup, HubSession  # noqa: E402


def figures(entry: dict[str, Any], session: HubSession) -> dict[str, dict[str, Any]]:
    """The ``files`` figures of one curated entry; ValueError when the hub lacks a sha256."""
    ref = parse_checkpoint(entry["checkpoint"])
    if ref is None:
        raise ValueError(f"{entry['checkpoint']!r} is not a hub checkpoint")
    listed = {f.path: f for f in session.list_files(ref.repo_id)}
    plan = plan_pull(ref, [RepoFile(f.path, f.size) for f in listed.values()],
                     entry.get("mmproj") or None)
    found: dict[str, dict[str, Any]] = {}
    for f in plan.all_files:
        item = listed[f.path]
        if item.sha256 is None or item.size is None:
            raise ValueError(f"{ref.repo_id} lists {f.path} without an LFS sha256 and size")
        found[f.path] = {"size": item.size, "sha256": item.sha256}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the figures into the list")
    parser.add_argument("--list", type=Path, default=CURATED_FILE, help="the curated list")
    args = parser.parse_args(argv)
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    entries = json.loads(args.list.read_text(encoding="utf-8"))
    missing = []
    with HubSession(endpoint, os.environ.get("HF_TOKEN") or None, Hangup()) as session:
        for entry in entries:
            try:
                entry["files"] = figures(entry, session)
            except Exception as exc:  # noqa: BLE001 - reported, the entry is left as it is
                missing.append(entry["model_name"])
                print(f"{entry['model_name']}: not established ({exc})", file=sys.stderr)
                continue
            print(json.dumps({entry["model_name"]: entry["files"]}))
    if args.write:
        lines = ",\n".join(" " + json.dumps(entry) for entry in entries)
        args.list.write_text(f"[\n{lines}\n]\n", encoding="utf-8")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
