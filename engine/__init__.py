"""The engine: everything that trains, evaluates and tunes the detector; it never imports the UI or the CLI.

Packages, from the bottom up (a package imports only those below it; ``tests/engine/test_layers.py`` checks it):

- ``code_version``: the fingerprint of the code this process runs (a study's owner checks it before each trial).
- ``config``, ``metric_keys``, ``grid``: the notes' hyperparameters (pydantic), the logged keys, the lr grid.
- ``run/``: the run folder and its record — paths, events, recorder, checkpoints, ownership and control.
- ``data/``: COCO loading, augmentation, the synthetic demo sets.
- ``model/``: the detector (backbone, neck, map/offset/shape head), its targets, loss and decode.
- ``evaluation/``: COCO AP, the error breakdown, evaluating a saved run.
- ``inference/``: predictions on images, drawing them, export to ONNX / TorchScript.
- ``diagnosis/``: the notes' rules, the watcher that runs them, pins and the val-plateau projection.
- ``train/``: the trainer loop, its lr plan, TensorBoard.
- ``workflows/``: the notes' method as jobs — studies (seven-stars sweeps), remedy trials, mean/std,
  the largest batch, post-processing tuning, the tuning schedule and the runs' records.
"""

from . import code_version  # noqa: F401, E402 - the code's fingerprint, taken at start (see its docstring)
