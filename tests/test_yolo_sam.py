"""YOLO -> SAM masking: shared pre/post-processing, the torch backend, the loaders, the masker.

No pretrained weights exist here: models are randomly initialised from their configs (YOLOv8n from
ultralytics' yaml, SAM vit_b from segment_anything's registry) and saved the way users' files are,
so the real loaders are exercised. Random SAM vit_b's encoder is slow on CPU (30 s to minutes on a
shared 2-core machine), so it runs exactly once, in the one test marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mkgan_engine.config import MaskerConfig
from mkgan_engine.maskers.detection import (
    Detections,
    decode_predictions,
    letterbox,
    nms,
    xywh_to_xyxy,
)
from mkgan_engine.maskers.sam_processing import (
    PIXEL_MEAN,
    PIXEL_STD,
    boxes_to_encoder,
    postprocess_masks,
    preprocess_image,
    resized_shape,
)
from mkgan_engine.regions import RegionMap

NC = 3  # classes of the detector double


# ------------------------------------------------------------------------------ test doubles
class BoxDetector:
    """DetectorBackend double: raw (1, 4 + nc, A) predictions that encode known image-space boxes.

    Each known box appears with its score, plus a slightly shifted duplicate at a lower score (NMS
    must remove it) and low-confidence noise boxes (the confidence filter must remove them).
    """

    name = "double"

    def __init__(self, boxes: np.ndarray, scores, input_size: int = 320, classes=None, anchors: int = 64) -> None:
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(scores, np.float32)
        self.classes = np.zeros(len(self.boxes), int) if classes is None else np.asarray(classes)
        self.input_size = input_size
        self.anchors = anchors
        self.calls = 0

    def raw_for(self, image_shape) -> np.ndarray:
        lb = letterbox(np.zeros((*image_shape, 3), np.float32), self.input_size)
        rng = np.random.default_rng(1)
        raw = np.zeros((1, 4 + NC, self.anchors), np.float32)
        # noise: random boxes, scores below 0.5
        raw[0, 0:2] = rng.uniform(0, self.input_size, (2, self.anchors))
        raw[0, 2:4] = rng.uniform(5, 50, (2, self.anchors))
        raw[0, 4:] = rng.uniform(0, 0.45, (NC, self.anchors))
        inp = lb.to_input(self.boxes)
        xywh = np.stack([(inp[:, 0] + inp[:, 2]) / 2, (inp[:, 1] + inp[:, 3]) / 2,
                         inp[:, 2] - inp[:, 0], inp[:, 3] - inp[:, 1]], 1)
        for i, (b, s, c) in enumerate(zip(xywh, self.scores, self.classes)):
            a = 2 * i
            raw[0, :4, a] = b
            raw[0, 4:, a] = 0.0
            raw[0, 4 + c, a] = s
            raw[0, :4, a + 1] = b + np.array([1.0, -1.0, 2.0, 1.0])  # near-duplicate, IoU ~ 0.9
            raw[0, 4:, a + 1] = 0.0
            raw[0, 4 + c, a + 1] = s * 0.9
        return raw

    def __call__(self, images: np.ndarray) -> np.ndarray:
        assert images.shape == (1, 3, self.input_size, self.input_size) and images.dtype == np.float32
        self.calls += 1
        return self._raw

    def prepare(self, image_shape) -> "BoxDetector":
        self._raw = self.raw_for(image_shape)
        return self


class ConstEncoder:
    name = "double"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        assert image.shape == (1, 3, 1024, 1024)
        self.calls += 1
        return np.zeros((1, 256, 64, 64), np.float32)


class BoxMaskDecoder:
    """SamDecoderBackend double: each box's mask is exactly its rectangle (logit +10 in, -10 out)."""

    name = "double"

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def __call__(self, embeddings: np.ndarray, boxes: np.ndarray):
        self.calls.append(np.array(boxes))
        n = boxes.shape[0]
        logits = np.full((n, 1, 256, 256), -10.0, np.float32)
        c = (np.arange(256) + 0.5) * 4  # low-res pixel centres in the 1024 frame
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            inside = ((c >= y0) & (c < y1))[:, None] & ((c >= x0) & (c < x1))[None, :]
            logits[i, 0][inside] = 10.0
        return logits, np.full((n, 1), 0.9, np.float32)


class SpyDecoder:
    """Wraps a decoder backend and records every call's boxes."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.calls = inner, inner.name, []

    def __call__(self, embeddings, boxes):
        self.calls.append(np.array(boxes))
        return self.inner(embeddings, boxes)


def rect_mask(shape, box) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    x0, y0, x1, y1 = box
    return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)


def boundary_band(shape, boxes, width: float = 2.0) -> np.ndarray:
    """Pixels within ``width`` of any box edge (where resampling may differ by a pixel)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    band = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        near_x = (np.abs(xx - x0) < width) | (np.abs(xx - x1) < width)
        near_y = (np.abs(yy - y0) < width) | (np.abs(yy - y1) < width)
        inside_y = (yy > y0 - width) & (yy < y1 + width)
        inside_x = (xx > x0 - width) & (xx < x1 + width)
        band |= (near_x & inside_y) | (near_y & inside_x)
    return band


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sam_vit_b():
    """A randomly initialised SAM vit_b (built once per module: slow on CPU)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    return sam_model_registry["vit_b"](checkpoint=None).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, sam_vit_b):
    """Random YOLOv8n saved the ultralytics way (.pt) and random SAM vit_b's state_dict (.pth)."""
    from ultralytics import YOLO

    d = tmp_path_factory.mktemp("weights")
    yolo_pt = d / "yolov8n_random.pt"
    YOLO("yolov8n.yaml").save(yolo_pt)
    sam_pth = d / "sam_vit_b_random.pth"
    torch.save(sam_vit_b.state_dict(), sam_pth)
    return yolo_pt, sam_pth


def small_config(**kw) -> MaskerConfig:
    base = dict(name="yolo-sam", min_region_area=16 * 16, device="cpu")
    base.update(kw)
    return MaskerConfig(**base)


# --------------------------------------------------------------------------- detection.py
def test_letterbox_round_trip_and_placement():
    rng = np.random.default_rng(0)
    for shape in [(90, 160), (200, 120), (64, 64)]:
        img = np.zeros((*shape, 3), np.float32)
        box = np.round(np.array([shape[1] * 0.25, shape[0] * 0.3, shape[1] * 0.75, shape[0] * 0.8])).astype(np.float32)
        img[rect_mask(shape, box)] = 1.0
        lb = letterbox(img, 320)
        assert lb.batch.shape == (1, 3, 320, 320) and lb.batch.dtype == np.float32
        # the white rectangle lands where to_input says
        ys, xs = np.nonzero(lb.batch[0, 0] > 0.7)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        np.testing.assert_allclose(found, lb.to_input(box)[0], atol=0.5 + lb.scale / 2)
        # padding is ultralytics' grey, image fits exactly one side
        assert np.isclose(lb.batch[0, 0, 0, 0], 114 / 255) or np.isclose(lb.batch[0, 0, -1, -1], 114 / 255) \
            or shape[0] == shape[1]
        boxes = np.sort(rng.uniform(0, 1, (10, 2, 2)) * [shape[1], shape[0]], axis=1).reshape(10, 2, 2)
        boxes = boxes.transpose(0, 2, 1).reshape(10, 4)[:, [0, 2, 1, 3]]  # x0 y0 x1 y1
        back = lb.to_image(lb.to_input(boxes))
        np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_decode_maps_boxes_back_nms_and_confidence():
    shape = (120, 200)
    known = np.array([[20, 10, 80, 70], [100, 40, 190, 110]], np.float32)
    det = BoxDetector(known, [0.9, 0.6], input_size=320).prepare(shape)
    lb = letterbox(np.zeros((*shape, 3), np.float32), 320)
    out = decode_predictions(det._raw, lb, conf=0.5)
    assert isinstance(out, Detections) and len(out) == 2  # duplicates and noise gone
    np.testing.assert_allclose(out.boxes, known, atol=0.05)
    np.testing.assert_allclose(out.scores, [0.9, 0.6], atol=1e-6)
    # confidence filter: 0.6 box (and its 0.54 duplicate) vanish at 0.7; the threshold is inclusive
    assert len(decode_predictions(det._raw, lb, conf=0.7)) == 1
    assert len(decode_predictions(det._raw, lb, conf=0.9)) == 1
    assert len(decode_predictions(det._raw, lb, conf=0.95)) == 0
    # nothing >= conf -> empty, well-formed
    empty = decode_predictions(np.zeros((1, 4 + NC, 10), np.float32), lb, conf=0.5)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_nms_per_class_and_agnostic():
    boxes = np.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    keep = nms(boxes, scores, 0.7)
    assert keep.tolist() == [1, 2]  # best of the three overlapping first, the far box kept
    # decode: same boxes in two classes survive per-class NMS, not agnostic NMS
    lb = letterbox(np.zeros((64, 64, 3), np.float32), 64)
    raw = np.zeros((1, 4 + NC, 2), np.float32)
    raw[0, :4, 0] = raw[0, :4, 1] = [32, 32, 20, 20]
    raw[0, 4, 0], raw[0, 5, 1] = 0.9, 0.8
    assert len(decode_predictions(raw, lb, conf=0.5)) == 2
    assert len(decode_predictions(raw, lb, conf=0.5, agnostic=True)) == 1
    np.testing.assert_allclose(xywh_to_xyxy(np.array([[32, 32, 20, 10]])), [[22, 27, 42, 37]])


# ----------------------------------------------------------------------- sam_processing.py
def test_sam_preprocess_and_postprocess():
    img = np.random.default_rng(0).uniform(0, 1, (60, 100, 3)).astype(np.float32)
    sin = preprocess_image(img)
    assert sin.batch.shape == (1, 3, 1024, 1024) and sin.resized_shape == resized_shape((60, 100)) == (614, 1024)
    assert np.all(sin.batch[0, :, 614:, :] == 0)  # padding bottom (zero after normalisation)
    mean_in = sin.batch[0, :, :614].mean(axis=(1, 2)) * PIXEL_STD + PIXEL_MEAN
    np.testing.assert_allclose(mean_in, img.mean(axis=(0, 1)) * 255, rtol=0.02)
    box = np.array([[10, 5, 60, 40]], np.float32)
    enc = boxes_to_encoder(box, (60, 100))
    np.testing.assert_allclose(enc, [[102.4, 51.17, 614.4, 409.33]], atol=0.1)
    logits, _ = BoxMaskDecoder()(sin.batch, enc)
    masks = postprocess_masks(logits, sin, 0.5)
    assert masks.shape == (1, 60, 100) and masks.dtype == bool
    exp = rect_mask((60, 100), box[0])
    band = boundary_band((60, 100), box)
    assert np.array_equal(masks[0][~band], exp[~band])
    # threshold is on the sigmoid probability: sigmoid(10) ~ 0.99995
    assert not postprocess_masks(logits, sin, 0.99999).any()


# ------------------------------------------------------------------------- masker plumbing
def test_yolo_sam_one_decoder_call_and_exact_union(monkeypatch):
    from mkgan_engine.maskers import yolo_sam

    shape = (96, 128)
    img = np.random.default_rng(0).uniform(0, 1, (*shape, 3)).astype(np.float32)
    # two overlapping boxes (union = one L-shaped object) and one far-away box of another class
    known = np.array([[10, 10, 60, 50], [40, 30, 80, 80], [100, 5, 124, 30]], np.float32)
    det = BoxDetector(known, [0.95, 0.8, 0.7], classes=[0, 0, 2]).prepare(shape)
    enc, dec = ConstEncoder(), BoxMaskDecoder()
    seen = {}
    real_finalize = yolo_sam.finalize

    def spy_finalize(labels, *a, **k):
        seen["labels"] = np.array(labels)
        return real_finalize(labels, *a, **k)

    monkeypatch.setattr(yolo_sam, "finalize", spy_finalize)
    masker = yolo_sam.YoloSamMasker(small_config(blocky_factor=0.0), detector=det, encoder=enc, decoder=dec)
    rm = masker(img)

    assert det.calls == 1 and enc.calls == 1
    assert len(dec.calls) == 1 and dec.calls[0].shape == (3, 4)  # all boxes, ONE decoder call
    np.testing.assert_allclose(dec.calls[0], boxes_to_encoder(known, shape), atol=0.1)
    assert masker.last_masks.shape == (3, *shape)  # one mask per box, at LR size
    union = seen["labels"]
    assert union.dtype == bool and union.shape == shape
    assert np.array_equal(union, masker.last_masks.any(axis=0))
    expected = np.zeros(shape, bool)
    for b in known:
        expected |= rect_mask(shape, b)
    band = boundary_band(shape, known)
    assert np.array_equal(union[~band], expected[~band])
    # post-processed: largest component = the L-shaped object (the small far box is dropped)
    assert isinstance(rm, RegionMap) and rm.labels.shape == shape and rm.fallback_reason is None
    assert sorted(rm.label_ids) == [0, 1]
    obj = rm.mask(1)
    lshape = rect_mask(shape, known[0]) | rect_mask(shape, known[1])
    iou = (obj & lshape).sum() / (obj | lshape).sum()
    assert iou > 0.9
    assert not obj[rect_mask(shape, known[2])].any()
    assert all(r.source == "yolo-sam" for r in rm.regions)
    assert rm.regions[[r.label for r in rm.regions].index(1)].score == pytest.approx(0.95)
    assert set(rm.timings) >= {"detector", "sam_encoder", "sam_decoder", "postprocess", "total"}


def test_sam_masker_central_box_with_doubles():
    from mkgan_engine.maskers.yolo_sam import SamMasker

    shape = (100, 150)
    dec = BoxMaskDecoder()
    masker = SamMasker(small_config(name="sam"), encoder=ConstEncoder(), decoder=dec)
    rm = masker(np.zeros((*shape, 3), np.float32))
    assert len(dec.calls) == 1 and dec.calls[0].shape == (1, 4)
    assert sorted(rm.label_ids) == [0, 1] and rm.regions[0].source == "sam"
    assert 0.25 < rm.regions[[r.label for r in rm.regions].index(1)].area_fraction < 0.45  # ~0.6 x 0.6


def test_yolo_sam_random_sam_decoder_torch_backend(sam_vit_b):
    """The real (random) SAM vit_b decoder through the torch backend (encoder: a double, as the real
    one is slow on CPU): one decoder call with all boxes, one mask per box at LR size, dynamic N."""
    from mkgan_engine.backends.base import SamDecoderBackend, SamEncoderBackend
    from mkgan_engine.backends.torch_backend import TorchSamDecoder, TorchSamEncoder
    from mkgan_engine.maskers.yolo_sam import YoloSamMasker

    assert isinstance(TorchSamEncoder(sam_vit_b, "cpu"), SamEncoderBackend)
    shape = (72, 96)
    img = np.random.default_rng(0).uniform(0, 1, (*shape, 3)).astype(np.float32)
    known = np.array([[5, 5, 50, 40], [40, 20, 90, 70], [60, 2, 94, 30]], np.float32)
    det = BoxDetector(known, [0.9, 0.8, 0.7]).prepare(shape)
    dec = TorchSamDecoder(sam_vit_b, "cpu")
    assert isinstance(dec, SamDecoderBackend)
    spy = SpyDecoder(dec)
    masker = YoloSamMasker(small_config(), detector=det, encoder=ConstEncoder(), decoder=spy)
    rm = masker(img)
    assert len(spy.calls) == 1 and spy.calls[0].shape == (3, 4)
    assert masker.last_masks.shape == (3, *shape) and masker.last_masks.dtype == bool
    assert rm.labels.shape == shape and rm.labels.dtype == np.int32
    assert all(r.source == "yolo-sam" for r in rm.regions)
    emb = np.random.default_rng(1).standard_normal((1, 256, 64, 64)).astype(np.float32)
    for n in (1, 4):  # N is dynamic; the batch equals N separate calls
        boxes = np.array([[0, 0, 512, 512], [100, 200, 900, 1000], [10, 10, 60, 60], [0, 0, 1023, 1023]], np.float32)[:n]
        logits, iou = dec(emb, boxes)
        assert logits.shape == (n, 1, 256, 256) and iou.shape == (n, 1) and logits.dtype == np.float32
        if n > 1:
            one, _ = dec(emb, boxes[n - 1 : n])
            np.testing.assert_allclose(logits[n - 1 :], one, atol=1e-3)


@pytest.mark.slow
def test_yolo_sam_full_torch_path_random_sam_vit_b(sam_vit_b):
    """Encoder + decoder of the real (random) SAM vit_b through the torch backend, once (slow on CPU)."""
    from mkgan_engine.backends.torch_backend import TorchSamDecoder, TorchSamEncoder
    from mkgan_engine.maskers.yolo_sam import YoloSamMasker

    shape = (72, 96)
    img = np.random.default_rng(0).uniform(0, 1, (*shape, 3)).astype(np.float32)
    known = np.array([[5, 5, 50, 40], [40, 20, 90, 70]], np.float32)
    det = BoxDetector(known, [0.9, 0.8]).prepare(shape)
    spy = SpyDecoder(TorchSamDecoder(sam_vit_b, "cpu"))
    masker = YoloSamMasker(small_config(), detector=det, encoder=TorchSamEncoder(sam_vit_b, "cpu"), decoder=spy)
    rm = masker(img)
    assert len(spy.calls) == 1 and spy.calls[0].shape == (2, 4)
    assert masker.last_masks.shape == (2, *shape)
    assert rm.labels.shape == shape
    t = rm.timings
    print(f"\nrandom SAM vit_b, {shape[1]}x{shape[0]} LR, CPU: encoder {t['sam_encoder']:.2f}s, "
          f"decoder (2 boxes) {t['sam_decoder']:.2f}s")


# --------------------------------------------------------------------- loaders, end to end
def test_end_to_end_random_weights_on_photo_falls_back(weights, load_photo):
    import cv2

    from mkgan_engine.backends.base import DetectorBackend
    from mkgan_engine.maskers import build_masker

    yolo_pt, sam_pth = weights
    photo = load_photo("set5/bird.png")
    lr = cv2.resize(photo, (photo.shape[1] // 2, photo.shape[0] // 2), interpolation=cv2.INTER_AREA)
    config = MaskerConfig(name="yolo-sam", yolo_weights=yolo_pt, sam_checkpoint=sam_pth, sam_type="vit_b", device="cpu")
    masker = build_masker(config)
    assert masker.name == "yolo-sam" and isinstance(masker.detector, DetectorBackend)
    assert masker.backend_names == {"detector": "torch", "sam_encoder": "torch", "sam_decoder": "torch"}
    rm = masker(lr)
    # random YOLO detects nothing at 0.5 -> one region, with the reason; SAM is not run
    assert rm.labels.shape == lr.shape[:2] and len(rm) == 1 and not rm.labels.any()
    assert rm.fallback_reason == "no objects detected (confidence >= 0.5)"
    assert rm.regions[0].source == "yolo-sam"
    assert "detector" in rm.timings and "sam_encoder" not in rm.timings
    # the raw output is the documented layout
    raw = masker.detector(letterbox(lr, masker.detector.input_size).batch)
    assert raw.shape == (1, 84, 8400) and raw.dtype == np.float32
    print(f"\nrandom YOLOv8n on {lr.shape[1]}x{lr.shape[0]}, CPU: detector {rm.timings['detector']:.2f}s")
    # SAM alone through the registry: SAM only, no detector loaded
    sam_only = build_masker(MaskerConfig(name="sam", sam_checkpoint=sam_pth, device="cpu"))
    assert sam_only.name == "sam" and sam_only.detector is None
    assert sam_only.backend_names == {"sam_encoder": "torch", "sam_decoder": "torch"}


def test_missing_or_wrong_weights_name_the_option(tmp_path, weights):
    from mkgan_engine.backends.torch_modules import load_sam, load_yolo
    from mkgan_engine.maskers.yolo_sam import YoloSamMasker

    yolo_pt, sam_pth = weights
    with pytest.raises(ValueError, match="yolo_weights"):
        load_yolo(None)
    with pytest.raises(FileNotFoundError, match="yolo_weights"):
        load_yolo(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="yolo_weights"):
        load_yolo(sam_pth)  # a .pth is not an ultralytics checkpoint
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="yolo_weights"):
        load_yolo(bad)
    with pytest.raises(ValueError, match="sam_type.*vit_b, vit_l, vit_h"):
        load_sam(sam_pth, "vit_x")
    with pytest.raises(FileNotFoundError, match="sam_checkpoint"):
        load_sam(tmp_path / "nope.pth", "vit_b")
    with pytest.raises(ValueError, match="sam_checkpoint"):
        load_sam(None, "vit_b")
    torch.save({"image_encoder.foo": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="sam_checkpoint.*sam_type vit_b"):
        load_sam(tmp_path / "wrong.pth", "vit_b")
    # through the masker (what the CLI builds)
    with pytest.raises(FileNotFoundError, match="yolo_weights"):
        YoloSamMasker(MaskerConfig(name="yolo-sam", yolo_weights=tmp_path / "missing.pt", sam_checkpoint=sam_pth))
    with pytest.raises(ValueError, match="yolo_weights"):
        YoloSamMasker(MaskerConfig(name="yolo-sam", sam_checkpoint=sam_pth))
