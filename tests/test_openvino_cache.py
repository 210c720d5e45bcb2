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
    first = {p.name for p in cache.iterdir()}
    assert first, "OpenVINO wrote no compiled blob"
    past = time.time() - 3600
    for name in first:
        os.utime(cache / name, (past, past))
    # a cap below one blob: the older model's blob goes, the one just compiled stays
    with OpenVINOBackend.open(b, "CPU", cache_dir=str(cache), cache_max_mb=1e-6) as s:
        s.run(x)
    left = {p.name for p in cache.iterdir()}
    assert left and not (left & first)
    # the pruned model compiles again and gives the same outputs; with no cap nothing is deleted
    with OpenVINOBackend.open(a, "CPU", cache_dir=str(cache), cache_max_mb=0) as s:
        np.testing.assert_array_equal(s.run(x)[0], ya)
    assert left < {p.name for p in cache.iterdir()}


def test_bad_cap_is_one_clear_error(tmp_path):
    from unideploy.runtime.backends.openvino import OpenVINOBackend

    with pytest.raises(InputError, match="cache_max_mb must be a number of MB"):
        OpenVINOBackend.open(_tiny_onnx(tmp_path / "a.onnx", 4), "CPU", cache_dir=str(tmp_path / "c"), cache_max_mb="lots")
