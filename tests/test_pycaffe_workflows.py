"""The classic pycaffe workflows, run with ``import brewnet as caffe``.

Classifying an image with a Transformer, net surgery (fully connected weights cast
into a convolution), and a hand-written training loop over solver.step.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import brewnet as caffe

# ============================================================================ classify
DEPLOY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
MEAN = np.array([104.0, 117.0, 123.0])


def reference_resize(image, height, width):
    """Bilinear resize, centers aligned, zero beyond the border, written per pixel."""
    in_h, in_w, channels = image.shape
    out = np.zeros((height, width, channels))
    for i in range(height):
        for j in range(width):
            r = (i + 0.5) * in_h / height - 0.5
            c = (j + 0.5) * in_w / width - 0.5
            r0, c0 = int(np.floor(r)), int(np.floor(c))
            for rr, wr in ((r0, 1 - (r - r0)), (r0 + 1, r - r0)):
                for cc, wc in ((c0, 1 - (c - c0)), (c0 + 1, c - c0)):
                    if 0 <= rr < in_h and 0 <= cc < in_w:
                        out[i, j] += wr * wc * image[rr, cc]
    return out


def caffe_resize(image, height, width):
    """pycaffe's resize: scale to [0, 1], resize, scale back."""
    low, high = image.min(), image.max()
    standard = (image - low) / (high - low)
    return reference_resize(standard, height, width) * (high - low) + low


def softmax(values):
    exp = np.exp(values - values.max())
    return exp / exp.sum()


@pytest.fixture
def tiny(tmp_path):
    """Return (deploy path, weights path, W, b) of a fixed 48 -> 3 classifier."""
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 0.01, size=(3, 48)).astype(np.float32)
    bias = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    net = caffe.Net(str(deploy), caffe.TEST)
    net.params["fc"][0].data[...] = weights
    net.params["fc"][1].data[...] = bias
    model = tmp_path / "tiny.caffemodel"
    net.save(str(model))
    return str(deploy), str(model), weights, bias


@pytest.fixture
def png(tmp_path):
    """Write a 6 x 5 RGB PNG and return (path, pixels as uint8 H x W x 3)."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    path = tmp_path / "cat.png"
    Image.fromarray(pixels, "RGB").save(path)
    return str(path), pixels


def expected_input(image, height, width):
    """pycaffe's preprocessing: resize, HWC -> CHW, RGB -> BGR, * 255, - mean."""
    resized = caffe_resize(image.astype(np.float64), height, width)
    return resized.transpose(2, 0, 1)[[2, 1, 0]] * 255 - MEAN[:, None, None]


def test_classify_image_with_transformer(tiny, png):
    deploy, model, weights, bias = tiny
    path, pixels = png
    net = caffe.Net(deploy, model, caffe.TEST)
    image = caffe.io.load_image(path)
    assert image.shape == (6, 5, 3)
    np.testing.assert_array_equal(image, pixels.astype(np.float32) / 255)

    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", MEAN)
    net.blobs["data"].data[...] = transformer.preprocess("data", image)
    out = net.forward()

    expected = expected_input(image, 4, 4)
    np.testing.assert_allclose(net.blobs["data"].data[0], expected, rtol=1e-5, atol=2e-4)
    probabilities = softmax(weights.astype(np.float64) @ expected.ravel() + bias)
    np.testing.assert_allclose(out["prob"][0], probabilities, rtol=1e-5)
    assert out["prob"][0].argmax() == probabilities.argmax()


def test_deprocess_inverts_preprocess(tiny):
    transformer = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", MEAN)
    transformer.set_input_scale("data", 0.5)
    image = np.random.default_rng(1).random((4, 4, 3)).astype(np.float32)
    restored = transformer.deprocess("data", transformer.preprocess("data", image)[np.newaxis])
    np.testing.assert_allclose(restored, image, atol=1e-5)


def test_classifier_center_crop(tiny, png):
    deploy, model, weights, bias = tiny
    path, _ = png
    classifier = caffe.Classifier(
        deploy, model, image_dims=(6, 6), mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0)
    )
    image = caffe.io.load_image(path)
    predictions = classifier.predict([image], oversample=False)
    assert predictions.shape == (1, 3)
    resized = caffe_resize(image.astype(np.float64), 6, 6)
    crop = resized[1:5, 1:5]
    net_input = crop.transpose(2, 0, 1)[[2, 1, 0]] * 255 - MEAN[:, None, None]
    expected = softmax(weights.astype(np.float64) @ net_input.ravel() + bias)
    np.testing.assert_allclose(predictions[0], expected, rtol=1e-4)


def test_classifier_oversample_averages_ten_crops(tiny, png):
    deploy, model, weights, bias = tiny
    path, _ = png
    classifier = caffe.Classifier(deploy, model, image_dims=(6, 6), mean=MEAN, raw_scale=255)
    image = caffe.io.load_image(path)
    predictions = classifier.predict([image, image[::-1]])
    assert predictions.shape == (2, 3)
    resized = caffe_resize(image.astype(np.float64), 6, 6)
    probabilities = []
    for top, left in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1)):
        crop = resized[top : top + 4, left : left + 4]
        for version in (crop, crop[:, ::-1]):
            net_input = version.transpose(2, 0, 1) * 255 - MEAN[:, None, None]
            probabilities.append(softmax(weights.astype(np.float64) @ net_input.ravel() + bias))
    np.testing.assert_allclose(predictions[0], np.mean(probabilities, axis=0), rtol=1e-4)


# ============================================================================ net surgery
FULLY_CONNECTED = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 }
  bias_filler { type: "gaussian" std: 1 } } }
"""
CONVOLUTIONAL = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "fc-conv" type: "Convolution" bottom: "data" top: "fc-conv"
  convolution_param { num_output: 4 kernel_size: 3 } }
"""


def test_net_surgery_fc_to_conv(tmp_path):
    (tmp_path / "fc.prototxt").write_text(FULLY_CONNECTED)
    (tmp_path / "conv.prototxt").write_text(CONVOLUTIONAL)
    caffe.set_random_seed(11)
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    net_full_conv = caffe.Net(str(tmp_path / "conv.prototxt"), caffe.TEST)
    fc_params = {name: (v[0].data, v[1].data) for name, v in net.params.items()}
    conv_params = {name: (v[0].data, v[1].data) for name, v in net_full_conv.params.items()}
    assert fc_params["fc"][0].shape == (4, 18)
    assert conv_params["fc-conv"][0].shape == (4, 2, 3, 3)
    conv_params["fc-conv"][0].flat = fc_params["fc"][0].flat
    conv_params["fc-conv"][1][...] = fc_params["fc"][1]

    image = np.random.default_rng(5).normal(size=(1, 2, 5, 5)).astype(np.float32)
    net_full_conv.blobs["data"].data[...] = image
    score_map = net_full_conv.forward()["fc-conv"]
    assert score_map.shape == (1, 4, 3, 3)
    for row in range(3):
        for col in range(3):
            net.blobs["data"].data[...] = image[:, :, row : row + 3, col : col + 3]
            scores = net.forward()["fc"]
            np.testing.assert_allclose(score_map[0, :, row, col], scores[0], rtol=1e-5, atol=1e-5)


# ============================================================================ training loop
TRAIN_NET = """
name: "regression"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 1 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 4 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "pred"
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "y" top: "loss" }
"""


def write_solver(tmp_path, extra=""):
    net_path = tmp_path / "train.prototxt"
    net_path.write_text(TRAIN_NET)
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(
        f'net: "{net_path}"\ntest_iter: 1\ntest_interval: 1000\n'
        f'base_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.0\nmax_iter: 100\n'
        f'display: 0\nsnapshot_prefix: "{tmp_path / "snap"}"\nsolver_mode: CPU\n{extra}'
    )
    return str(solver_path)


def numpy_sgd(xs, ys, steps, rate=0.1):
    """Plain SGD on 0.5 * mean((w x + b - y)^2); return per-step losses and (w, b)."""
    w = b = 0.0
    losses = []
    for x, y in zip(xs[:steps], ys[:steps]):
        residual = w * x + b - y
        losses.append(np.sum(residual**2) / (2 * len(x)))
        w -= rate * np.sum(residual * x) / len(x)
        b -= rate * np.sum(residual) / len(x)
    return losses, (w, b)


def test_hand_written_training_loop(tmp_path):
    solver = caffe.SGDSolver(write_solver(tmp_path))
    rng = np.random.default_rng(2)
    xs = rng.uniform(-1, 1, size=(6, 4)).astype(np.float32)
    ys = (2 * xs + 1).astype(np.float32)
    losses = []
    for it in range(6):
        solver.net.blobs["x"].data[...] = xs[it][:, None]
        solver.net.blobs["y"].data[...] = ys[it][:, None]
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
        assert solver.iter == it + 1
    expected_losses, (w, b) = numpy_sgd(xs.astype(np.float64), ys.astype(np.float64), 6)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    assert solver.net.params["ip"][0].data[0, 0] == pytest.approx(w, rel=1e-5)
    assert solver.net.params["ip"][1].data[0] == pytest.approx(b, rel=1e-5)
    # The test at iteration 0 (test_initialization) made the test net share the
    # train net's weights, so it has every later update.
    test_net = solver.test_nets[0]
    np.testing.assert_array_equal(test_net.params["ip"][0].data, solver.net.params["ip"][0].data)
    test_net.blobs["x"].data[...] = [[0.0], [1.0], [2.0], [3.0]]
    test_net.forward()
    np.testing.assert_allclose(test_net.blobs["pred"].data.ravel(), w * np.arange(4) + b, rtol=1e-5)


def test_callbacks_see_gradients(tmp_path):
    solver = caffe.get_solver(write_solver(tmp_path))
    events = []
    solver.add_callback(
        lambda: events.append(("start", solver.iter)),
        lambda: events.append(("gradients", float(solver.net.params["ip"][1].diff[0]))),
    )
    solver.net.blobs["x"].data[...] = [[1.0], [1.0], [1.0], [1.0]]
    solver.net.blobs["y"].data[...] = [[3.0], [3.0], [3.0], [3.0]]
    solver.step(2)
    # Iteration 0: residual -3 everywhere, so the bias diff is -3; after the update
    # w = b = 0.3, the residual is -2.4.
    assert events[0] == ("start", 0)
    assert events[1][0] == "gradients"
    assert events[1][1] == pytest.approx(-3.0)
    assert events[2] == ("start", 1)
    assert events[3][1] == pytest.approx(-2.4, rel=1e-6)


@pytest.mark.parametrize(
    "name,type_name",
    [
        ("SGDSolver", "SGD"),
        ("NesterovSolver", "Nesterov"),
        ("AdaGradSolver", "AdaGrad"),
        ("RMSPropSolver", "RMSProp"),
        ("AdaDeltaSolver", "AdaDelta"),
        ("AdamSolver", "Adam"),
    ],
)
def test_solver_classes_by_name(tmp_path, name, type_name):
    path = write_solver(tmp_path, f'type: "{type_name}"\n')
    if type_name in ("AdaGrad", "RMSProp"):
        # These solvers take no momentum; drop the field.
        text = (tmp_path / "solver.prototxt").read_text().replace("momentum: 0.0\n", "")
        if type_name == "RMSProp":
            text += "rms_decay: 0.9\n"
        (tmp_path / "solver.prototxt").write_text(text)
    if type_name in ("AdaDelta", "Adam"):
        text = (tmp_path / "solver.prototxt").read_text().replace("momentum: 0.0", "momentum: 0.9")
        (tmp_path / "solver.prototxt").write_text(text)
    solver = getattr(caffe, name)(path)
    assert type(solver).__name__ == name
    assert type(caffe.get_solver(path)).__name__ == name
    solver.net.blobs["x"].data[...] = 1
    solver.net.blobs["y"].data[...] = 3
    solver.step(1)
    assert solver.iter == 1
    assert solver.net.params["ip"][1].data[0] > 0


def test_snapshot_and_restore(tmp_path):
    path = write_solver(tmp_path)
    solver = caffe.SGDSolver(path)
    solver.net.blobs["x"].data[...] = 1
    solver.net.blobs["y"].data[...] = 3
    solver.step(2)
    model_path, state_path = solver.snapshot()
    resumed = caffe.SGDSolver(path)
    resumed.restore(state_path)
    assert resumed.iter == 2
    np.testing.assert_array_equal(resumed.net.params["ip"][1].data, solver.net.params["ip"][1].data)
    weights = caffe.Net(str(tmp_path / "train.prototxt"), model_path, caffe.TEST)
    np.testing.assert_array_equal(weights.params["ip"][0].data, solver.net.params["ip"][0].data)


# ============================================================================ detector
def test_detector_windows_without_context(tiny, png):
    deploy, model, weights, bias = tiny
    path, _ = png
    detector = caffe.Detector(deploy, model, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    np.testing.assert_array_equal(detector.crop_dims, [4, 4, 3])
    windows = [np.array([0, 0, 4, 4]), np.array([1, 1, 6, 5])]
    detections = detector.detect_windows([(path, windows)])
    assert [d["filename"] for d in detections] == [path, path]
    np.testing.assert_array_equal(detections[1]["window"], [1, 1, 6, 5])
    image = caffe.io.load_image(path)
    for detection, (top, left, bottom, right) in zip(detections, windows):
        net_input = expected_input(image[top:bottom, left:right], 4, 4)
        expected = softmax(weights.astype(np.float64) @ net_input.ravel() + bias)
        np.testing.assert_allclose(detection["prediction"], expected, rtol=1e-4)


def test_detector_context_pad_fills_with_mean(tiny, png):
    deploy, model, _, _ = tiny
    path, _ = png
    detector = caffe.Detector(
        deploy, model, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=1
    )
    # The mean goes back to raw RGB space in [0, 1]: (123, 117, 104) / 255.
    np.testing.assert_allclose(detector.crop_mean.ravel(), [123 / 255, 117 / 255, 104 / 255])
    image = caffe.io.load_image(path)
    # Window (0, 0, 1, 1) with context: scale 4 / (4 - 2) = 2 around center (1, 1)
    # gives box (-1, -1, 3, 3); one row and column fall outside and become mean.
    crop = detector.crop(image, np.array([0, 0, 1, 1]))
    assert crop.shape == (4, 4, 3)
    np.testing.assert_allclose(crop[1:, 1:], image[0:3, 0:3], rtol=1e-6)
    np.testing.assert_allclose(crop[0, 0], detector.crop_mean.ravel(), rtol=1e-6)
    np.testing.assert_allclose(crop[2, 0], detector.crop_mean.ravel(), rtol=1e-6)
    # Preprocessing maps the padding to zero input.
    net_input = detector.transformer.preprocess("data", crop)
    np.testing.assert_allclose(net_input[:, 0, :], 0, atol=1e-4)


def test_detector_selective_search_unavailable(tiny):
    deploy, model, _, _ = tiny
    detector = caffe.Detector(deploy, model)
    with pytest.raises(NotImplementedError, match="compute the windows yourself"):
        detector.detect_selective_search(["a.jpg"])
