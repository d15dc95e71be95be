"""The wheel is what `pip install claudio` and pipx give people: it must bring the shipped
model, and an installed daemon must find it without a source checkout beside it.

Built for real (pip, setuptools from the index) from a copy of the project, installed into a
fresh virtual environment, and run as its console script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claudio-esc50-se_resnet18.onnx"
PROJECT = ("pyproject.toml", "README.md", "LICENSE", "claudio_daemon", "training", "models")


@pytest.mark.slow
def test_wheel_installs_the_shipped_model_where_the_daemon_finds_it(tmp_path: Path) -> None:
    if not (ROOT / "models" / MODEL).is_file():
        pytest.skip("no shipped model in models/")
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    src.mkdir()
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "Could not find a version" in build.stderr:
        pytest.skip(f"no package index to build with: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("claudio-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(n.endswith(f".data/data/share/claudio/models/{MODEL}") for n in names), names

    # A fresh environment with its own pip, so the install cannot touch this one (pip
    # --prefix from here would uninstall this environment's claudio first), run isolated
    # (-I) from tmp_path in a clean environment (from the checkout, `python -m` put its
    # claudio.egg-info on sys.path and pip took claudio for "already installed"). Only once
    # the wheel is in does it borrow this one's dependencies (a .pth line): nothing is
    # downloaded, and the editable install's own finder (a .pth inside the borrowed
    # folder) is not loaded.
    env = {k: v for k, v in os.environ.items() if k not in ("CLAUDIO_MODEL", "PYTHONPATH")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, cwd=tmp_path)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-m", "pip", "install", "--no-deps"]
        + ["--no-compile", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    assert (purelib / "claudio_daemon" / "app.py").is_file(), install.stdout
    (purelib / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c"]
        + ["from claudio_daemon import app; print(app.__file__); print(app.shipped_model())"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    module, model = where.stdout.splitlines()
    assert Path(module).is_relative_to(purelib)  # the wheel's code, not the checkout's
    assert Path(model) == venv / "share" / "claudio" / "models" / MODEL

    check = subprocess.run(
        [str(venv / "bin" / "claudio-daemon"), "check", str(ROOT / "rules.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    assert "labels" in check.stdout and "no model" not in check.stdout, check.stdout
