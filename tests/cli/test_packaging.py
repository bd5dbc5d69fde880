"""The engine never imports the UI; the wheel carries the three packages and the presets; --help is cheap."""

import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


def test_engine_never_imports_textual():
    code = ("import pkgutil, importlib, sys, nanxi_tune.engine as e\n"
            "mods = [importlib.import_module(f'nanxi_tune.engine.{m.name}') for m in pkgutil.iter_modules(e.__path__)]\n"
            "assert len(mods) >= 8, mods\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'nanxi_tune.tui', 'textual_plotext'))\n"
            "bad += [m for m in sys.modules if m.startswith('nanxi_tune.tui')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_does_not_import_torch():
    code = ("import sys\nfrom nanxi_tune.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "sys.exit(2 if 'torch' in sys.modules or 'textual' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "resume" in proc.stdout


@pytest.mark.slow
def test_wheel_carries_packages_and_presets(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheel = next(tmp_path.glob("nanxi_tune-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("engine", "cli", "tui", "presets"):
        assert f"nanxi_tune/{pkg}/__init__.py" in names
    for preset in ("demo", "coco-640", "bccd"):
        assert f"nanxi_tune/presets/{preset}.toml" in names
    assert "nanxi_tune/engine/train/trainer.py" in names and "nanxi_tune/cli/main.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)
