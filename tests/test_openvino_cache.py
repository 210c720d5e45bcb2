"""OpenVINO's compiled-model cache stays under its size cap: the oldest blobs go first, a fresh compile never."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from unideploy.runtime.backends.openvino import prune_cache
from unideploy.core.errors import InputError

ov = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")


def _files(d, sizes_and_ages):
    now = time.time()
    for name, size, age in sizes_and_ages:
        p = d / name
        p.write_bytes(b"\0" * size)
        os.utime(p, (now - age, now - age))


def test_prune_removes_oldest_until_under_cap(tmp_path):
    _files(tmp_path, [("a.blob", 400, 300), ("b.blob", 400, 200), ("c.blob", 400, 100), ("d.blob", 400, 0)])
    removed = prune_cache(tmp_path, 900)
    assert sorted(p.name for p in removed) == ["a.blob", "b.blob"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.blob", "d.blob"]
    assert prune_cache(tmp_path, 900) == []  # already under the cap


def test_prune_never_removes_what_this_compile_wrote(tmp_path):
    _files(tmp_path, [("old.blob", 1000, 500), ("new.blob", 1000, 0)])
    removed = prune_cache(tmp_path, 10, keep_since=time.time() - 60)
    assert [p.name for p in removed] == ["old.blob"] and (tmp_path / "new.blob").exists()


def _tiny_onnx(path, channels):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((channels, 3, 3, 3), 0.01, np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 32, 32])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_open_caps_the_cache_folder(tmp_path):
    from unideploy.runtime.backends.openvino import OpenVINOBackend

    cache = tmp_path / "cache"
    a, b = _tiny_onnx(tmp_path / "a.onnx", 8), _tiny_onnx(tmp_path / "b.onnx", 16)
    x = np.ones((1, 3, 32, 32), np.float32)
    with OpenVINOBackend.open(a, "CPU", cache_dir=str(cache)) as s:
        ya = s.run(x)[0]
    first = {p.name for p in cache.glob("*.blob")}
    assert first, "OpenVINO wrote no compiled blob"
    past = time.time() - 3600
    for name in first:
        os.utime(cache / name, (past, past))
    # a cap below one blob: the older model's blob goes, the one just compiled stays
    with OpenVINOBackend.open(b, "CPU", cache_dir=str(cache), cache_max_mb=1e-6) as s:
        s.run(x)
    left = {p.name for p in cache.glob("*.blob")}
    assert left and not (left & first)
    # the pruned model compiles again and gives the same outputs; with no cap nothing is deleted
    with OpenVINOBackend.open(a, "CPU", cache_dir=str(cache), cache_max_mb=0) as s:
        np.testing.assert_array_equal(s.run(x)[0], ya)
    assert left < {p.name for p in cache.glob("*.blob")}


def test_bad_cap_is_one_clear_error(tmp_path):
    from unideploy.runtime.backends.openvino import OpenVINOBackend

    with pytest.raises(InputError, match="cache_max_mb must be a number of MB"):
        OpenVINOBackend.open(_tiny_onnx(tmp_path / "a.onnx", 4), "CPU", cache_dir=str(tmp_path / "c"), cache_max_mb="lots")


def _try_lock(path) -> bool:
    """Whether a new descriptor of ``path`` can take an exclusive lock right now (and at once lets it go)."""
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_folder_lock_excludes_other_descriptors_and_processes(tmp_path):
    import subprocess
    import sys

    from unideploy.core.cache import LOCK_NAME, folder_lock

    pytest.importorskip("fcntl")
    lock = tmp_path / LOCK_NAME
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')\n")
    with folder_lock(tmp_path) as held:
        assert held and lock.exists()
        assert not _try_lock(lock)  # another thread of this process (its own descriptor) would wait
        out = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "held"  # and so would another process
    assert _try_lock(lock)
    out = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "free"


def test_folder_lock_goes_on_unlocked_where_it_cannot_lock(tmp_path):
    from unideploy.core.cache import folder_lock

    with folder_lock(tmp_path / "missing") as held:
        assert held is False


def test_prune_keeps_the_lock_file(tmp_path):
    from unideploy.core.cache import LOCK_NAME

    _files(tmp_path, [(LOCK_NAME, 10, 900), ("a.blob", 400, 300)])
    assert [p.name for p in prune_cache(tmp_path, 0)] == ["a.blob"]
    assert (tmp_path / LOCK_NAME).exists()


def test_compile_holds_the_folder_lock_and_retries_a_vanished_blob(tmp_path):
    """The compile runs under the cache folder's lock; a compile that fails once (a blob deleted between
    OpenVINO's exists() and its read) is tried once more, and a second failure is the usual ModelError."""
    from unideploy.core.cache import LOCK_NAME
    from unideploy.core.errors import ModelError
    from unideploy.runtime.backends.openvino import OpenVINOBackend

    cache = tmp_path / "cache"
    x = np.ones((1, 3, 32, 32), np.float32)
    s = OpenVINOBackend.open(_tiny_onnx(tmp_path / "a.onnx", 4), "CPU", cache_dir=str(cache))
    core, calls = s._compile_args["core"], []

    class Flaky:
        def __getattr__(self, name):
            return getattr(core, name)

        def compile_model(self, *a, **k):
            calls.append(_try_lock(cache / LOCK_NAME))  # False: the lock is held during the compile
            if len(calls) == 1:
                raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nblob vanished")
            return core.compile_model(*a, **k)

    s._compile_args["core"] = Flaky()
    assert s.run(x)[0].shape == (1, 4, 32, 32)
    assert calls == [False, False]
    s.close()

    s = OpenVINOBackend.open(_tiny_onnx(tmp_path / "b.onnx", 4), "CPU", cache_dir=str(cache))

    class Broken(Flaky):
        def compile_model(self, *a, **k):
            calls.append(1)
            raise RuntimeError("unsupported operation")

    s._compile_args["core"], calls[:] = Broken(), []
    with pytest.raises(ModelError, match="openvino could not compile it for CPU: unsupported operation"):
        s.run(x)
    assert len(calls) == 2
    s.close()


def test_ov_message_skips_the_source_location_line():
    from unideploy.runtime.backends.openvino import ov_message

    e = RuntimeError("Exception from src/inference/src/cpp/core.cpp:132:\nfilesystem error: cannot set permissions: "
                     "No such file or directory [/c/1.blob]\n")
    assert ov_message(e) == "filesystem error: cannot set permissions: No such file or directory [/c/1.blob]"
    assert ov_message(RuntimeError("Check 'x' failed at src/core/shape.cpp:17:\nrank mismatch")) == "rank mismatch"
    assert ov_message(RuntimeError("plain text")) == "plain text"
    assert ov_message(RuntimeError("Exception from a.cpp:1:")) == "Exception from a.cpp:1:"  # nothing better
    assert ov_message(ValueError()) == "ValueError"
