"""Cut a COCO train split once, seeded, into a fit part and a held-out part: tuning scores on the held-out part,
so val is never looked at before the final run (the autopilot, bench/recipe_search.py, bench/ablation.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path


def split_train(train_json: Path | str, out: Path | str, holdout: float, seed: int = 0,
                images: Path | str | None = None) -> tuple[Path, Path]:
    """(fit, held-out) COCO files under ``out``/annotations from one COCO file: whole images, seeded, categories
    kept; ``out``/images links to the images (``images``, default ``images/`` beside the annotations' folder) so
    the loader finds them beside the annotations, as in the COCO layout."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout = {holdout}: give the held-out fraction between 0 and 1 (e.g. 0.2)")
    train_json, out = Path(train_json), Path(out)
    d = json.loads(train_json.read_text(encoding="utf-8"))
    ids = sorted(im["id"] for im in d["images"])
    if len(ids) < 2:
        raise ValueError(f"{train_json}: {len(ids)} image(s); a fit and a held-out part need at least 2")
    random.Random(seed).shuffle(ids)
    held = set(ids[: min(len(ids) - 1, max(1, round(len(ids) * holdout)))])
    out.mkdir(parents=True, exist_ok=True)
    link = out / "images"
    if not link.exists():
        src = Path(images) if images else train_json.resolve().parents[1] / "images"
        link.symlink_to(src.resolve(), target_is_directory=True)
    ann = out / "annotations"
    ann.mkdir(exist_ok=True)
    paths = []
    for name, keep in (("fit", lambda i: i not in held), ("holdout", lambda i: i in held)):
        part = {**d, "images": [im for im in d["images"] if keep(im["id"])],
                "annotations": [a for a in d["annotations"] if keep(a["image_id"])]}
        p = ann / f"instances_{name}.json"
        p.write_text(json.dumps(part), encoding="utf-8")
        paths.append(p)
    return paths[0], paths[1]
