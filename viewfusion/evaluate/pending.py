"""Sweeping a sample directory's pending folders: what a complete chunk's pack holds is deleted.

    pending.clean_pending("results/samples/tiny/final/ddim-10/v2")   # -> files deleted

`viewfusion sample` runs it when it starts and after it writes a chunk's marker: a run that died,
or a concurrent run that lost the race to complete a chunk, leaves pending files behind
(samplestore's layout). Only what a pack already serves under the same `made_by` goes.
"""

from __future__ import annotations

import os
from pathlib import Path

from viewfusion.errors import ViewFusionError
from viewfusion.evaluate.samplestore import CHUNK_MARKER, Pack, pack_path, tag_of
from viewfusion.fsutil import owner_tag, remove_stale_temps


def clean_pending(root) -> int:
    """Delete the pending files of sample directory `root` that a complete chunk (marker and pack)
    holds with the same `made_by`, and the temporary files of dead writers; drop emptied folders.
    Returns the files deleted.

    Safe beside live runs: what it deletes is served by a pack to any run that looks for it
    (ChunkStore reads packs after pending folders), and it keeps a live writer's temporary files
    and every file made by other settings (a run of them, live or to be resumed, needs it)."""
    root, removed = Path(root), 0
    folders = sorted(p for p in (root / "pending").glob("*-of-*") if p.is_dir() and not p.is_symlink())
    packs = _complete_packs(root) if folders else []
    try:
        for folder in folders:
            removed += remove_stale_temps(folder)
            for path in sorted(folder.iterdir()):
                # dot names are temporary files of live writers (dead ones' went above)
                if not path.name.startswith(".") and path.is_file() and not path.is_symlink():
                    removed += _drop_if_packed(path, [pk for pk in packs if path.name in pk.members])
            try:
                folder.rmdir()
            except OSError:  # not empty: kept files, or a writer's new ones
                pass
    finally:
        for pack in packs:
            pack.close()
    return removed


def _complete_packs(root: Path) -> list[Pack]:
    """The readable packs of the chunks whose marker says they are complete."""
    packs = []
    for marker in sorted((root / "chunks").glob("*.json")):
        path = pack_path(root, marker.stem)
        if CHUNK_MARKER.match(marker.name) and path.is_file():
            try:
                packs.append(Pack(path))
            except ViewFusionError:
                continue  # a damaged pack vouches for nothing
    return packs


def _drop_if_packed(path: Path, packs: list[Pack]) -> bool:
    """Delete pending file `path` if one of `packs` holds its member with the same made_by. It is
    moved aside first, so that a version a writer put there after the read survives."""
    try:
        with open(path, "rb") as fh:
            inode, tag = os.fstat(fh.fileno()).st_ino, tag_of(path.name, fh.read())
    except FileNotFoundError:
        return False
    if tag is None or all(tag_of(path.name, pack.read(path.name)) != tag for pack in packs):
        return False
    aside = path.with_name(f".{path.name}.tmp-{owner_tag()}")  # a temp name: swept if we die here
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    replaced = aside.stat().st_ino != inode
    if replaced and not path.exists():
        os.rename(aside, path)
    aside.unlink(missing_ok=True)
    return not replaced
