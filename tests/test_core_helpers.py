"""The small shared helpers of core/: the progress bar and the cache folder."""

from __future__ import annotations

from pathlib import Path

from unideploy.core.cache import cache_dir
from unideploy.core.progress import NullBar, progress_bar


def test_no_bar_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("unideploy.core.progress.on_terminal", lambda: False)
    with progress_bar(3, "eval") as bar:
        assert isinstance(bar, NullBar)
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_disabled_progress_bar_is_silent(capsys):
    with progress_bar(3, "eval", enabled=False) as bar:
        assert isinstance(bar, NullBar)
        bar.update(2)
    assert capsys.readouterr().err == ""


def test_progress_bar_counts_on_stderr_of_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("unideploy.core.progress.on_terminal", lambda: True)
    with progress_bar(2, "eval") as bar:
        bar.update(1)
        bar.update(1)
    err = capsys.readouterr().err
    assert "eval" in err and "2/2" in err


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIDEPLOY_CACHE", str(tmp_path / "u"))
    assert cache_dir("openvino") == tmp_path / "u" / "openvino"
    monkeypatch.delenv("UNIDEPLOY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "unideploy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir("rknn-toolkit2") == Path(tmp_path, ".cache", "unideploy", "rknn-toolkit2")


def test_backends_and_converters_share_the_cache_dir(monkeypatch, tmp_path):
    from unideploy.runtime.backends.openvino import default_cache_dir
    from unideploy.runtime.backends.rknn_toolkit import venv_dir

    monkeypatch.setenv("UNIDEPLOY_CACHE", str(tmp_path))
    monkeypatch.delenv("UNIDEPLOY_RKNN_VENV", raising=False)
    assert default_cache_dir() == tmp_path / "openvino"
    assert venv_dir() == tmp_path / "rknn-toolkit2"
