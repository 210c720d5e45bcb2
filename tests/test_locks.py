"""The hashed lock files the Makefile installs from agree with pyproject.toml and with the environment."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"requirements/dev.lock": ["dev"], "requirements/demo.lock": ["openvino", "plot", "quantize", "track-eval"]}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked(path: str) -> dict[str, str]:
    text = (ROOT / path).read_text()
    return {_canon(m.group(1)): m.group(2) for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)==(\S+)", text, flags=re.M)}


def _wanted(extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {_canon(re.match(r"[A-Za-z0-9][\w.-]*", r).group(0)) for r in reqs}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_covers_pyproject_and_pins_every_package_with_hashes(lock):
    locked = _locked(lock)
    missing = _wanted(LOCKS[lock]) - set(locked) - {"torch", "torchvision"}
    assert not missing, f"{lock} lacks {sorted(missing)}: run `make lock` after changing pyproject.toml"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text().split("\n", 3)[3])
    for block in blocks:
        if block.strip() and not block.startswith("#"):
            assert "--hash=sha256:" in block, f"{lock}: {block.splitlines()[0]} has no hash"
    # what the Makefile installs on its own, or must never install beside opencv-python-headless
    assert not {"torch", "torchvision", "triton", "opencv-python"} & set(locked)
    assert not [name for name in locked if name.startswith("nvidia-cu")]


def test_demo_lock_takes_the_dev_lock_versions():
    dev, demo = _locked("requirements/dev.lock"), _locked("requirements/demo.lock")
    differ = {name: (version, dev.get(name)) for name, version in demo.items() if dev.get(name) != version}
    assert not differ, f"demo.lock and dev.lock disagree: {differ}"


def test_one_opencv_distribution_installed():
    names = {_canon(dist.metadata["Name"]) for dist in metadata.distributions()}
    opencv = sorted(name for name in names if name.startswith("opencv"))
    assert opencv == ["opencv-python-headless"], f"expected only opencv-python-headless, found {opencv}"
