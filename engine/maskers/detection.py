"""YOLOv8 pre- and post-processing shared by every detector backend (torch, onnxruntime, tensorrt,
aoti): letterbox, decoding of the raw ``(1, 4 + nc, A)`` predictions, NMS, mapping boxes back.

Pure numpy + OpenCV: no ultralytics import, so it runs with backends built from exported files.

Typical use::

    lb = letterbox(image, detector.input_size)          # image HxWx3 float in [0, 1]
    raw = detector(lb.batch)                              # (1, 4 + nc, A)
    det = decode_predictions(raw, lb, conf=0.5)           # Detections in image pixels
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114.0 / 255.0
"""Letterbox padding grey, as ultralytics uses (114 on 0..255)."""

__all__ = [
    "PAD_VALUE",
    "Detections",
    "Letterbox",
    "box_iou",
    "decode_predictions",
    "letterbox",
    "nms",
    "xywh_to_xyxy",
]


@dataclass(frozen=True)
class Letterbox:
    """A letterboxed detector input and the transform that made it.

    batch: float32 (1, 3, S, S) RGB in [0, 1] (the detector's input). scale: resize factor
    image -> input (same on both axes); pad: (left, top) padding in input pixels; image_shape:
    (H, W) of the original image; size: S.

    Input coordinates = image coordinates * scale + pad; :meth:`to_image` inverts this.
    """

    batch: np.ndarray
    scale: float
    pad: tuple[float, float]
    image_shape: tuple[int, int]
    size: int

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) x0, y0, x1, y1 in image pixels -> input (letterboxed) pixels."""
        b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        offset = np.array([self.pad[0], self.pad[1], self.pad[0], self.pad[1]], np.float32)
        return b * np.float32(self.scale) + offset

    def to_image(self, boxes_xyxy: np.ndarray, clip: bool = True) -> np.ndarray:
        """Boxes (N, 4) x0, y0, x1, y1 in input pixels -> image pixels (clipped to the image)."""
        b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        offset = np.array([self.pad[0], self.pad[1], self.pad[0], self.pad[1]], np.float32)
        out = (b - offset) / np.float32(self.scale)
        if clip:
            h, w = self.image_shape
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out


@dataclass
class Detections:
    """Detected boxes in image pixels, best first.

    boxes: float32 (N, 4) x0, y0, x1, y1; scores: float32 (N,) confidence (max class score);
    classes: int64 (N,) class index.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))


def letterbox(image: np.ndarray, size: int = 640, pad_value: float = PAD_VALUE) -> Letterbox:
    """Resize ``image`` (HxWx3 RGB, float in [0, 1] or uint8) keeping its aspect ratio so that it
    fits ``size`` x ``size``, centre it and pad with ``pad_value`` (ultralytics' grey).

    The resized side is ``round(side * scale)`` with ``scale = min(size / H, size / W)``; padding is
    split evenly (left/top get the floor, as ultralytics does). Upscales small images too.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {img.shape}")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32, copy=False)
    h, w = img.shape[:2]
    scale = min(size / h, size / w)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    left = int(round((size - nw) / 2 - 0.1))
    top = int(round((size - nh) / 2 - 0.1))
    canvas = np.full((size, size, 3), pad_value, np.float32)
    canvas[top : top + nh, left : left + nw] = img
    batch = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None]).clip(0.0, 1.0)
    # The scale actually applied per axis can differ slightly from `scale` after rounding; use the
    # mean of the two so the round trip is exact to well under a pixel.
    eff = 0.5 * (nw / w + nh / h)
    return Letterbox(batch=batch, scale=float(eff), pad=(float(left), float(top)), image_shape=(h, w), size=size)


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """(N, 4) centre x, centre y, width, height -> x0, y0, x1, y1."""
    b = np.asarray(xywh, np.float32).reshape(-1, 4)
    half = b[:, 2:4] / 2
    return np.concatenate([b[:, 0:2] - half, b[:, 0:2] + half], axis=1)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (N, 4), all x0, y0, x1, y1."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.7) -> np.ndarray:
    """Greedy non-maximum suppression. boxes (N, 4) xyxy, scores (N,) -> kept indices (best first).

    A box is dropped when its IoU with an already kept, higher-scoring box is > ``iou_threshold``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def decode_predictions(
    raw: np.ndarray,
    transform: Letterbox,
    conf: float = 0.5,
    iou: float = 0.7,
    *,
    agnostic: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
    classes: list[int] | None = None,
) -> Detections:
    """Raw YOLOv8 predictions -> :class:`Detections` in image pixels.

    raw: (1, 4 + nc, A) (or (4 + nc, A)): cx, cy, w, h in input pixels, then class scores in [0, 1].
    Confidence = the max class score; anchors with confidence >= ``conf`` are kept, boxes go
    xywh -> xyxy, NMS at ``iou`` (per class unless ``agnostic``, like ultralytics), at most
    ``max_det`` boxes; then mapped back through the letterbox ``transform`` and clipped to the image.
    Boxes that end up with no area after clipping are dropped. ``classes`` keeps only those class ids.
    """
    p = np.asarray(raw, np.float32)
    if p.ndim == 3:
        if p.shape[0] != 1:
            raise ValueError(f"decode_predictions handles one image, got batch {p.shape[0]}")
        p = p[0]
    if p.ndim != 2 or p.shape[0] < 5:
        raise ValueError(f"raw predictions must be (1, 4 + nc, A), got shape {np.shape(raw)}")
    p = p.T  # (A, 4 + nc)
    cls_scores = p[:, 4:]
    cls = cls_scores.argmax(axis=1)
    score = cls_scores[np.arange(p.shape[0]), cls]
    keep = score >= conf
    if classes is not None:
        keep &= np.isin(cls, np.asarray(classes))
    if not keep.any():
        return Detections.empty()
    boxes, score, cls = xywh_to_xyxy(p[keep, :4]), score[keep], cls[keep].astype(np.int64)
    if boxes.shape[0] > max_nms:
        top = np.argsort(-score, kind="stable")[:max_nms]
        boxes, score, cls = boxes[top], score[top], cls[top]
    # Per-class NMS in one pass: shift each class's boxes far apart.
    offset = 0.0 if agnostic else cls[:, None].astype(np.float32) * (float(np.abs(boxes).max()) + 1.0) * 2
    idx = nms(boxes + offset, score, iou)[:max_det]
    boxes = transform.to_image(boxes[idx], clip=True)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[valid].astype(np.float32), score[idx][valid].astype(np.float32), cls[idx][valid])
