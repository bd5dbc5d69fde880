"""Where a run's data is: data.train / data.val as a COCO folder or an instances JSON, found or refused with a
message naming the path — without torch, so the command line and the TUI refuse a missing path before a run
folder is made or torch loads."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A data problem; the message names the file (and item) and what to do."""


def locate(spec: str, split: str) -> tuple[Path, Path]:
    """(images_dir, ann_json) for a data.train / data.val that is a COCO folder or an instances JSON."""
    key = f"data.{split}" if split in ("train", "val") else "data.train / data.val"
    path = Path(spec).expanduser()
    fix = f"set {key} to a COCO folder (images/ + annotations/instances_{split}.json), an instances JSON, " \
          f"or 'synthetic'"
    if not path.exists():
        where = "" if path.is_absolute() else (f" (relative to the current folder {Path.cwd()}: run nanxi-tune from "
                                               "the folder it is relative to, or give an absolute path)")
        raise DataError(f"{path}: no such file or folder{where}; {fix}")
    if path.is_dir():
        candidates = [path / "annotations" / f"instances_{split}.json", path / f"instances_{split}.json"]
        ann = next((c for c in candidates if c.is_file()), None)
        if ann is None:
            globbed = sorted((path / "annotations").glob(f"instances_{split}*.json")) + \
                sorted(path.glob(f"instances_{split}*.json"))
            ann = globbed[0] if globbed else None
        if ann is None:
            raise DataError(f"{path}: no annotations file found (looked for "
                            f"{', '.join(str(c) for c in candidates)}); {fix}")
        img_dir = path / "images" if (path / "images").is_dir() else path
        return img_dir, ann
    if path.suffix.lower() != ".json":
        raise DataError(f"{path}: not a folder or a .json annotations file; {fix}")
    for img_dir in (path.parent.parent / "images", path.parent / "images"):
        if img_dir.is_dir():
            return img_dir, path
    raise DataError(f"{path}: no images folder beside it (looked for {path.parent.parent / 'images'} and "
                    f"{path.parent / 'images'}); put the images there")


def check(cfg) -> None:
    """Refuse a config whose data paths are not there (DataError naming the key's path), before anything starts."""
    for split in ("train", "val"):
        spec = getattr(cfg.data, split)
        if spec != "synthetic":
            locate(spec, split)
