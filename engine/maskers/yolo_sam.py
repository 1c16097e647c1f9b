"""The model-based maskers of the Multi-KernelGAN paper: YOLOv8 boxes -> SAM box prompts ("yolo-sam",
the paper's best) and SAM alone ("sam").

Both run on any backend (``config.backend``), built by
:func:`mkgan_engine.backends.loader.load_backends`: "torch" loads the user's ``--yolo-weights`` .pt
and ``--sam-checkpoint`` .pth; the others load exported files. Backends can also be injected
(library users, test doubles): anything implementing the protocols of
:mod:`mkgan_engine.backends.base`; only the missing ones are loaded.

Per-stage wall times of a call are in the returned ``RegionMap.timings`` (seconds; keys "detector",
"sam_encoder", "sam_decoder", "postprocess", "total"; each model stage includes its own pre- and
post-processing), and the last detections in ``masker.last_detections``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mkgan_engine.backends.base import DetectorBackend, SamDecoderBackend, SamEncoderBackend
from mkgan_engine.backends.loader import load_backends
from mkgan_engine.config import MaskerConfig
from mkgan_engine.maskers.detection import Detections, decode_predictions, letterbox
from mkgan_engine.maskers.postprocess import finalize
from mkgan_engine.maskers.sam_processing import postprocess_masks, preprocess_image
from mkgan_engine.regions import RegionMap

log = logging.getLogger(__name__)

__all__ = ["SamMasker", "YoloSamMasker", "segment_boxes"]


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {img.shape}")
    return img.astype(np.float32, copy=False)


def segment_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    encoder: SamEncoderBackend,
    decoder: SamDecoderBackend,
    threshold: float = 0.5,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SAM masks for box prompts: image HxWx3 in [0, 1], boxes (N, 4) x0, y0, x1, y1 in image pixels
    -> (bool masks (N, H, W) at image size, predicted IoU (N,)).

    One encoder call and ONE decoder call with all N boxes. ``timings`` (if given) receives
    "sam_encoder" and "sam_decoder" seconds (pre/post-processing included).
    """
    t0 = time.perf_counter()
    sam_in = preprocess_image(image)
    embeddings = encoder(sam_in.batch)
    t1 = time.perf_counter()
    logits, iou = decoder(embeddings, sam_in.boxes_to_encoder(boxes))
    masks = postprocess_masks(logits, sam_in, threshold)
    t2 = time.perf_counter()
    if timings is not None:
        timings["sam_encoder"] = t1 - t0
        timings["sam_decoder"] = t2 - t1
    return masks, np.asarray(iou, np.float32).reshape(-1)


class _SamMaskerBase:
    name = "base"

    def __init__(self, config: MaskerConfig, detector, encoder, decoder, need_detector: bool) -> None:
        self.config = config
        missing = (need_detector and detector is None) or encoder is None or decoder is None
        if missing:
            d, e, c = load_backends(config, detector=need_detector and detector is None)
            detector = detector if detector is not None else d
            encoder = encoder if encoder is not None else e
            decoder = decoder if decoder is not None else c
        self.detector: DetectorBackend | None = detector
        self.encoder: SamEncoderBackend = encoder
        self.decoder: SamDecoderBackend = decoder
        self.last_detections: Detections = Detections.empty()
        self.last_masks: np.ndarray | None = None

    @property
    def backend_names(self) -> dict[str, str]:
        """Which backend runs each model, e.g. {"detector": "torch", ...}."""
        out = {"sam_encoder": getattr(self.encoder, "name", "?"), "sam_decoder": getattr(self.decoder, "name", "?")}
        if self.detector is not None:
            out = {"detector": getattr(self.detector, "name", "?"), **out}
        return out


class YoloSamMasker(_SamMaskerBase):
    """YOLOv8 boxes (confidence >= ``config.detection_confidence``) -> all boxes as SAM box prompts in
    one decoder call -> one mask per box (sigmoid >= ``config.sam_mask_threshold``) -> union =
    object (label 1), the rest background (label 0) -> shared post-processing
    (:func:`mkgan_engine.maskers.postprocess.finalize`: closing, largest component, blocky,
    minimum area).

    No detection -> one region (``RegionMap.single``) with the reason; SAM is not run then.
    detector/encoder/decoder: injected backends; those not given are built from ``config``.
    """

    name = "yolo-sam"

    def __init__(self, config: MaskerConfig, detector: DetectorBackend | None = None,
                 encoder: SamEncoderBackend | None = None, decoder: SamDecoderBackend | None = None) -> None:
        super().__init__(config, detector, encoder, decoder, need_detector=True)

    def detect(self, image: np.ndarray) -> Detections:
        """YOLO boxes in image pixels at ``config.detection_confidence``."""
        lb = letterbox(image, self.detector.input_size)
        raw = self.detector(lb.batch)
        return decode_predictions(raw, lb, conf=self.config.detection_confidence)

    def __call__(self, image: np.ndarray) -> RegionMap:
        img = _check_image(image)
        shape = img.shape[:2]
        timings: dict[str, float] = {}
        self.last_masks = None
        t_start = time.perf_counter()
        det = self.detect(img)
        timings["detector"] = time.perf_counter() - t_start
        self.last_detections = det
        if len(det) == 0:
            timings["total"] = time.perf_counter() - t_start
            reason = f"no objects detected (confidence >= {self.config.detection_confidence:g})"
            log.info("yolo-sam masker: %s; one region", reason)
            region_map = RegionMap.single(shape, self.name, reason)
            region_map.timings = timings
            return region_map

        masks, _ = segment_boxes(img, det.boxes, self.encoder, self.decoder, self.config.sam_mask_threshold, timings)
        self.last_masks = masks
        t0 = time.perf_counter()
        union = masks.any(axis=0)
        score = float(det.scores.max())
        result = finalize(union, self.config, self.name, names={1: "object"}, scores={1: score},
                          empty_reason=f"SAM returned empty masks for all {len(det)} detected boxes")
        timings["postprocess"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        result.timings = timings
        return result


class SamMasker(_SamMaskerBase):
    """SAM alone ("sam"): one box prompt covering the central region of the image (the central
    ``center_fraction`` of each side, default 60 %), no detector.

    As the Multi-KernelGAN paper found, SAM alone tends to return the largest segment rather than
    the object of interest, so this is an option, not the default (use "yolo-sam"). The region
    score is SAM's predicted IoU for the mask.
    """

    name = "sam"

    def __init__(self, config: MaskerConfig, encoder: SamEncoderBackend | None = None,
                 decoder: SamDecoderBackend | None = None, center_fraction: float = 0.6) -> None:
        if not 0 < center_fraction <= 1:
            raise ValueError(f"center_fraction must be in (0, 1], got {center_fraction}")
        self.center_fraction = center_fraction
        super().__init__(config, None, encoder, decoder, need_detector=False)

    def prompt_box(self, shape: tuple[int, int]) -> np.ndarray:
        """(1, 4) box of the central region, in image pixels."""
        h, w = shape
        m = (1 - self.center_fraction) / 2
        return np.array([[m * w, m * h, (1 - m) * w, (1 - m) * h]], np.float32)

    def __call__(self, image: np.ndarray) -> RegionMap:
        img = _check_image(image)
        shape = img.shape[:2]
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        masks, iou = segment_boxes(img, self.prompt_box(shape), self.encoder, self.decoder,
                                   self.config.sam_mask_threshold, timings)
        self.last_masks = masks
        t0 = time.perf_counter()
        result = finalize(masks[0], self.config, self.name, names={1: "object"},
                          scores={1: float(np.clip(iou[0], 0.0, 1.0))}, empty_reason="SAM returned an empty mask")
        timings["postprocess"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        result.timings = timings
        return result
