"""Pre- and post-processing against references: TF's resize, hand-computed NMS, known boxes."""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.errors import InputError
from device_runtime.postprocess import (batched_nms, cosine_similarity, decode_ssd, decode_yolo, nms,
                                        segmentation_mask, top_k)
from device_runtime.preprocess import ImageSpec, Letterbox, frame_audio, preprocess_image, resize_bilinear


def test_resize_matches_tensorflow_half_pixel_bilinear():
    from converters import _tf

    tf = _tf.tensorflow()
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for size in ((224, 224), (20, 30), (48, 64), (97, 13)):
        ours = resize_bilinear(frame, *size)
        ref = tf.image.resize(frame[None].astype(np.float32), size, method="bilinear", antialias=False)[0]
        np.testing.assert_allclose(ours, ref.numpy(), atol=2e-3)  # float32 rounding on 0..255


def test_upsample_by_hand():
    image = np.array([[0, 100], [200, 255]], np.uint8)[..., None]
    out = resize_bilinear(image, 4, 4)[..., 0]
    # Half-pixel centres: output row 1 sits at source y = 0.25, column 2 at x = 0.75.
    expected = (1 - 0.25) * ((1 - 0.75) * 0 + 0.75 * 100) + 0.25 * ((1 - 0.75) * 200 + 0.75 * 255)
    assert out[1, 2] == pytest.approx(expected, abs=1e-4)
    assert out[0, 0] == 0 and out[3, 3] == 255


def test_normalisation_layout_and_bgr():
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[..., 0] = 255  # red in RGB, blue in BGR
    spec = ImageSpec(4, 4, 3, "NCHW", mean=(127.5,), std=(127.5,))
    rgb, _ = preprocess_image(frame, spec)
    assert rgb.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(rgb[0, :, 0, 0], [1.0, -1.0, -1.0])
    bgr, _ = preprocess_image(frame, spec, color_order="BGR")
    np.testing.assert_allclose(bgr[0, :, 0, 0], [-1.0, -1.0, 1.0])


def test_letterbox_geometry_and_exact_round_trip():
    frame = np.zeros((480, 640, 3), np.uint8)
    tensor, box = preprocess_image(frame, ImageSpec(320, 320, resize="letterbox"))
    assert tensor.shape == (1, 320, 320, 3)
    assert (box.scale_x, box.scale_y, box.pad_x, box.pad_y) == (0.5, 0.5, 0.0, 40.0)
    np.testing.assert_array_equal(box.to_model([[100, 100, 200, 200]]), [[50, 90, 100, 140]])
    boxes = np.random.default_rng(1).uniform(0, 480, (50, 4))
    np.testing.assert_allclose(box.to_original(box.to_model(boxes)), boxes, rtol=0, atol=1e-9)
    assert (tensor[0, :40] == 114 / 255).all() and (tensor[0, 40:280] == 0).all()


def test_centre_crop():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 255  # the centre square is white
    tensor, box = preprocess_image(frame, ImageSpec(10, 10, resize="crop"))
    assert (tensor == 1.0).all()
    np.testing.assert_allclose(box.to_original([[0, 0, 10, 10]]), [[50, 0, 150, 100]])


def test_top_k_orders_and_labels():
    result = top_k(np.array([[0.1, 0.5, 0.2, 0.5, 0.0]]), 3, ["a", "b", "c", "d", "e"])
    assert [(r.index, r.label) for r in result] == [(1, "b"), (3, "d"), (2, "c")]


def test_nms_hand_computed():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # IoU(0, 1) = 90 / 110 = 0.818: suppressed at 0.5, kept at 0.85; box 3 duplicates box 0.
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.85).tolist() == [0, 1, 2]
    classes = np.array([0, 1, 0, 1])
    assert sorted(batched_nms(boxes, scores, classes, 0.5).tolist()) == [0, 1, 2]


def _yolo_output(objects, n_anchors=200, classes=3, channels_first=True):
    rng = np.random.default_rng(2)
    pred = np.zeros((n_anchors, 4 + classes), np.float32)
    pred[:, :4] = rng.uniform(10, 300, (n_anchors, 4))
    pred[:, 4:] = rng.uniform(0, 0.2, (n_anchors, classes))  # background below threshold
    row = 0
    for (cx, cy, w, h), cls, score in objects:
        for jitter in (0.0, 1.0, -1.5):  # each object predicted three times, slightly shifted
            pred[row, :4] = (cx + jitter, cy, w, h)
            pred[row, 4 + cls] = score - abs(jitter) * 0.01
            row += 1
    return (pred.T if channels_first else pred)[None]


@pytest.mark.parametrize("channels_first", [True, False])
def test_yolo_decode_recovers_known_objects_through_letterbox(channels_first):
    box = Letterbox(0.5, 0.5, 0.0, 40.0, 640, 480)  # 640x480 letterboxed into 320x320
    objects = [((100, 150, 40, 60), 0, 0.9), ((200, 100, 80, 40), 2, 0.8), ((101, 151, 40, 60), 1, 0.7)]
    dets = decode_yolo(_yolo_output(objects, channels_first=channels_first), box, labels=["a", "b", "c"])
    assert [(d.class_id, d.label) for d in dets] == [(0, "a"), (2, "c"), (1, "b")]
    np.testing.assert_allclose(dets[0].box, [160, 160, 240, 280], atol=1e-4)  # (80..120, 120..180) model px
    np.testing.assert_allclose(dets[1].box, [320, 80, 480, 160], atol=1e-4)  # (160..240, 80..120) model px
    assert dets[0].score == pytest.approx(0.9)


def test_ssd_decode():
    box = Letterbox(0.5, 0.5, 0.0, 40.0, 640, 480)
    boxes = np.array([[[0.25, 0.25, 0.75, 0.5], [0.0, 0.0, 0.1, 0.1]]])  # ymin, xmin, ymax, xmax
    dets = decode_ssd(boxes, np.array([[3, 1]]), np.array([[0.9, 0.1]]), np.array([2]), box, (320, 320))
    assert len(dets) == 1 and dets[0].class_id == 3
    np.testing.assert_allclose(dets[0].box, [160, 80, 320, 400])


def test_segmentation_mask_maps_back_through_letterbox():
    frame = np.zeros((60, 120, 3), np.uint8)
    _, box = preprocess_image(frame, ImageSpec(64, 64, resize="letterbox"))
    scores = np.zeros((1, 64, 64, 2), np.float32)
    scores[0, :, 32:, 1] = 1.0  # right half of the model input is class 1
    mask = segmentation_mask(scores, box)
    assert mask.shape == (60, 120)
    assert (mask[:, :60] == 0).all() and (mask[:, 60:] == 1).all()


def test_audio_framing():
    pcm = (np.arange(10) * 1000).astype(np.int16)
    frames = frame_audio(pcm, 4)
    assert frames.shape == (3, 4)
    np.testing.assert_allclose(frames[0], np.array([0, 1000, 2000, 3000]) / 32768)
    np.testing.assert_allclose(frames[2], [8000 / 32768, 9000 / 32768, 0, 0])
    assert frame_audio(np.zeros(16000, np.float32), 16000).shape == (1, 16000)
    assert frame_audio(np.zeros(20, np.float32), 8, hop_length=4).shape == (4, 8)
    with pytest.raises(InputError, match="mono"):
        frame_audio(np.zeros((2, 100)), 10)


def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(a, a), [[1, 2 ** -0.5], [2 ** -0.5, 1]], atol=1e-6)


def test_bad_images_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="image file not found"):
        preprocess_image(tmp_path / "none.png", ImageSpec(8, 8))
    with pytest.raises(InputError, match="must be uint8"):
        preprocess_image(np.zeros((8, 8, 3), np.float32), ImageSpec(8, 8))
    for engine in ("numpy", "opencv"):
        with pytest.raises(InputError, match=r"needs at least one pixel; got shape \(0, 5, 3\)"):
            preprocess_image(np.zeros((0, 5, 3), np.uint8), ImageSpec(8, 8), engine=engine)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image"):
        preprocess_image(tmp_path / "bad.png", ImageSpec(8, 8))


def test_yolo_decode_in_quantized_domain_matches_float():
    box = Letterbox(0.5, 0.5, 0.0, 40.0, 640, 480)
    objects = [((100, 150, 40, 60), 0, 0.9), ((200, 100, 80, 40), 2, 0.8)]
    float_out = _yolo_output(objects)
    scale, zero = 300.0 / 255, -128  # int8 covering 0..300 (boxes) with the scores on the same grid
    stored = np.clip(np.round(float_out / scale) + zero, -128, 127).astype(np.int8)
    dequantized = (stored.astype(np.float32) - zero) * np.float32(scale)
    expected = decode_yolo(dequantized, box, score_threshold=0.5)
    got = decode_yolo(stored, box, score_threshold=0.5, quantization=(scale, zero))
    assert [(d.class_id, d.box) for d in got] == [(d.class_id, d.box) for d in expected]
    assert len(got) == 2


def test_stored_threshold_picks_exactly_what_the_float_comparison_picks():
    from device_runtime.postprocess import dequantize, stored_threshold

    rng = np.random.default_rng(5)
    levels = np.arange(-128, 128)
    for _ in range(300):
        quantization = (float(np.float32(rng.uniform(1e-4, 0.05))), int(rng.integers(-128, 128)))
        floats = dequantize(levels, quantization)
        # thresholds that are exactly a level's float (the rounding edge), and ones between levels
        for threshold in (float(rng.choice(floats)), float(rng.uniform(floats[0], floats[-1]))):
            picked = levels >= stored_threshold(threshold, quantization)
            np.testing.assert_array_equal(picked, floats >= threshold)
    with pytest.raises(ValueError, match="finite number; got nan"):
        stored_threshold(float("nan"), (0.1, 0))


def test_yolo_decode_keeps_a_score_exactly_at_the_threshold():
    """Scores stored one level below, at and above the threshold: the quantized decode keeps the two
    that the float decode of the dequantized output keeps."""
    # threshold / scale + zero is 12.000004 here, so a comparison with that would drop the score at 12
    scale, zero, at = 0.006732655223459005, -128, 12
    output = np.full((1, 4 + 2, 8), zero, np.int8)  # 8 anchors, the last 5 scoring 0
    output[0, :4, :3] = np.array([[20, 80, 140], [20, 20, 20], [10, 10, 10], [10, 10, 10]]) / 160 / scale + zero
    output[0, 4, :3] = [at - 1, at, at + 1]
    threshold = float((np.float32(at - zero)) * np.float32(scale))
    box = Letterbox(1.0, 1.0, 0.0, 0.0, 160, 160)
    dequantized = (output.astype(np.float32) - zero) * np.float32(scale)
    expected = decode_yolo(dequantized, box, score_threshold=threshold, input_size=(160, 160))
    got = decode_yolo(output, box, score_threshold=threshold, input_size=(160, 160), quantization=(scale, zero))
    assert len(got) == 2 and [(d.score, d.box) for d in got] == [(d.score, d.box) for d in expected]


def test_yolo_decode_of_a_float16_output_compares_the_scores_it_returns():
    output = np.zeros((1, 5, 8), np.float16)
    output[0, :, 0] = [10, 10, 4, 4, 0.2]  # float16 keeps 0.2 as 0.19995, below a threshold of 0.2
    box = Letterbox(1.0, 1.0, 0.0, 0.0, 64, 64)
    assert decode_yolo(output, box, score_threshold=0.2) == []
    (found,) = decode_yolo(output, box, score_threshold=float(np.float16(0.2)))
    assert found.score == pytest.approx(0.19995, abs=1e-5) and found.box == (8.0, 8.0, 12.0, 12.0)


def test_top_k_ties_take_the_lower_index():
    scores = np.zeros(50)
    scores[[7, 30]] = 1.0
    assert [c.index for c in top_k(scores, 4)] == [7, 30, 0, 1]


def test_ssd_outputs_found_by_shape_and_values_in_any_order():
    from device_runtime.postprocess import ssd_outputs

    boxes = np.zeros((1, 5, 4))
    classes = np.array([[3.0, 1.0, 0.0, 2.0, 1.0]])
    scores = np.array([[0.9, 0.8, 0.5, 0.3, 0.1]])
    count = np.array([5.0])
    got = ssd_outputs([scores, count, boxes, classes])
    assert got[0] is boxes and got[1] is classes and got[2] is scores and got[3] is count
    named = ssd_outputs([scores, classes, count, boxes], ["score", "category", "number of detections", "location"])
    assert named[1] is classes and named[2] is scores


def test_bad_runtime_arguments_are_typed_errors():
    """They were bare ValueErrors, which the CLI reports as "internal error"; ArgumentError is still a
    ValueError, so code that caught that keeps working."""
    from device_runtime.errors import ArgumentError, DeviceRuntimeError
    from device_runtime.preprocess import ImageSpec

    with pytest.raises(ArgumentError, match="channels must be 1 or 3; got 2") as caught:
        ImageSpec(8, 8, channels=2)
    assert isinstance(caught.value, DeviceRuntimeError) and isinstance(caught.value, ValueError)
    with pytest.raises(ArgumentError, match="mean/std need 1 or 3 values"):
        ImageSpec(8, 8, channels=3, mean=(1.0, 2.0))
