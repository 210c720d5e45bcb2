"""The GPU end-to-end predictor. On the CPU (``allow_cpu``) it must give the CPU predictor's detections; the
CUDA tests (nvJPEG, CUDA graphs, fp16, stream overlap) skip cleanly without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import unideploy
from parity import assert_same_detections
from unideploy.core.errors import DeviceError

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory):
    pytest.importorskip("ultralytics")
    from torch_helpers import build_torch_models

    return build_torch_models(tmp_path_factory.mktemp("gpu_models"))


@pytest.mark.slow
def test_cpu_run_matches_cpu_predictor(torch_models, image_dir):
    from unideploy.runtime.gpu import GpuPredictor

    files = sorted(image_dir.iterdir())
    bad = image_dir.parent / "gpu_bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    sources = files[:5] + [bad] + files[5:]
    with unideploy.load(torch_models["pt"], backend="torch", device="cpu", conf=0.25, batch=4) as ref_pred:
        ref = {o.item.name: o for o in ref_pred.stream(sources)}
    with GpuPredictor(torch_models["pt"], device="cpu", allow_cpu=True, batch=4, conf=0.25) as pred:
        outs = list(pred.stream(sources, keep_images=True))
    assert [o.item.name for o in outs] == [o for o in ref]  # input order, failures in place
    total = 0
    for o in outs:
        r = ref[o.item.name]
        assert o.ok == r.ok, o.item.name
        if not o.ok:
            assert type(o.error) is type(r.error) and str(o.error) == str(r.error)
            continue
        assert_same_detections(o.result, r.result.xyxy, r.result.confidence, r.result.class_id, px=1.0, score_tol=1e-3,
                               where=o.item.name)
        assert o.image is not None and o.image.shape[:2] == o.result.image_shape
        total += len(o.result)
    assert total > 50


@pytest.mark.slow
def test_cpu_predict_arrays_matches(torch_models, image_dir):
    from unideploy.runtime.gpu import GpuPredictor
    from unideploy.core.sources import read_image

    imgs = [read_image(f) for f in sorted(image_dir.iterdir())[:6]]
    with unideploy.load(torch_models["pt"], backend="torch", conf=0.25) as ref_pred:
        ref = ref_pred(imgs)
    with GpuPredictor(torch_models["pt"], device="cpu", allow_cpu=True, batch=3, conf=0.25) as pred:
        ours = pred(imgs)
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert_same_detections(o, r.xyxy, r.confidence, r.class_id, px=1.0, score_tol=1e-3, where=f"array{i}")


@pytest.mark.slow
def test_batch_none_means_the_gpu_default(torch_models):
    """`unideploy predict m.pt --device cuda:0` without --batch passes batch=None: the GPU default, not 1."""
    from unideploy.runtime.gpu import GpuPredictor

    with GpuPredictor(torch_models["pt"], device="cpu", allow_cpu=True, batch=None) as pred:
        assert pred.batch == 32


def test_refuses_cpu_without_allow_cpu(tmp_path):
    from unideploy.runtime.gpu import GpuPredictor

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 84, 1), torch.nn.Flatten(2)).eval()
    path = tmp_path / "net.pt"
    torch.save(net, path)
    with pytest.raises((DeviceError, Exception)):
        GpuPredictor(path, device="cpu", imgsz=64, spec={"names": {i: str(i) for i in range(80)}, "family": "yolo"})


def test_refuses_fast_decode_in_one_line(torch_models):
    """nvJPEG decodes at full size: fast_decode is refused before the model is opened, naming the option."""
    from unideploy.core.errors import OptionError
    from unideploy.runtime.gpu import GpuPredictor

    with pytest.raises(OptionError, match="^fast_decode the GPU predictor decodes JPEGs at full size"):
        GpuPredictor(torch_models["pt"], device="cpu", allow_cpu=True, fast_decode=True)


def test_selection_rule():
    from unideploy.runtime.gpu import wants_gpu_predictor

    assert wants_gpu_predictor("torch", "cuda:0")
    assert wants_gpu_predictor(None, "cuda:1", "yolov8n.pt")
    assert not wants_gpu_predictor("torch", "cpu")
    assert not wants_gpu_predictor("onnxruntime", "cuda:0")
    assert not wants_gpu_predictor(None, "cuda:0", "model.onnx")


# ------------------------------------------------------------------------------------------ CUDA

cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@cuda_only
@pytest.mark.gpu
def test_cuda_ops_match_cpu():
    from unideploy.runtime.gpu.letterbox import letterbox_batch, resize_linear

    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 256, (3, 333, 517), dtype=np.uint8))
    assert torch.equal(resize_linear(img.cuda(), (206, 320)).cpu(), resize_linear(img, (206, 320)))
    a, _ = letterbox_batch([img.cuda()], (320, 320))
    b, _ = letterbox_batch([img], (320, 320))
    assert torch.equal(a.cpu(), b)


@cuda_only
@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_run_matches_cpu_predictor(torch_models, image_dir):
    """fp32 on CUDA vs the CPU predictor: boxes within 1 px, scores within 1e-3 (JPEG decoders differ: nvJPEG vs libjpeg)."""
    from unideploy.runtime.gpu import GpuPredictor

    files = sorted(image_dir.iterdir())
    with unideploy.load(torch_models["pt"], backend="torch", conf=0.25) as ref_pred:
        ref = {o.item.name: o.result for o in ref_pred.stream(files)}
    with GpuPredictor(torch_models["pt"], device="cuda:0", batch=8, conf=0.25) as pred:
        outs = list(pred.stream(files))
        assert pred.session.cuda_graph  # captured, not fallen back
    for o in outs:
        r = ref[o.item.name]
        assert_same_detections(o.result, r.xyxy, r.confidence, r.class_id, px=1.0, score_tol=1e-3, where=o.item.name)


@cuda_only
@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager(torch_models):
    from unideploy.runtime.backends.torch import TorchBackend

    x = torch.rand(4, 3, 320, 320, device="cuda")
    with TorchBackend.open(torch_models["pt"], "cuda:0", cuda_graph=False) as eager, \
            TorchBackend.open(torch_models["pt"], "cuda:0", cuda_graph=True) as graphed:
        a = eager.run_tensor(x)[0]
        b1 = graphed.run_tensor(x)[0]
        b2 = graphed.run_tensor(x)[0]  # replay
        assert torch.allclose(a, b1, atol=1e-4) and torch.equal(b1, b2)
        y = graphed.run(x.cpu().numpy())[0]
        t = graphed.last_timings
        assert None not in (t.h2d, t.compute, t.d2h)
        assert np.allclose(y, a.cpu().numpy(), atol=1e-4)
