"""Parity metrics (exported runtime vs eager torch), used at export time and by the tests.

- detector: max absolute error of the raw (1, 4 + nc, A) predictions (box rows are in input pixels,
  so the error is dominated by them; the score-row error is reported separately);
- SAM encoder: relative L2 error of the embeddings, ||a - b|| / ||b||;
- SAM decoder: IoU of the thresholded low-res masks (logit > 0, i.e. probability > 0.5), the minimum
  over boxes (1 for two empty masks), plus the max abs error of the logits and of the IoU head.
"""

from __future__ import annotations

import numpy as np

from mkgan_engine.backends.manifest import Parity

__all__ = ["TOLERANCES", "detector_parity", "decoder_parity", "encoder_parity", "mask_iou"]

TOLERANCES: dict[tuple[str, str], float] = {
    # (model, precision) -> tolerance of the model's metric (max for errors, min for IoU)
    ("yolo", "fp32"): 0.05,  # pixels on box rows (boxes span 0..640); scores agree to ~1e-5
    ("yolo", "fp16"): 2.0,
    ("sam_encoder", "fp32"): 1e-3,
    ("sam_encoder", "fp16"): 3e-2,
    ("sam_decoder", "fp32"): 0.98,
    ("sam_decoder", "fp16"): 0.90,
}


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-item IoU of boolean masks (N, ...) -> (N,); two empty masks have IoU 1."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    inter = np.logical_and(a, b).sum(1)
    union = np.logical_or(a, b).sum(1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _tol(model: str, precision: str) -> float:
    return TOLERANCES[(model, "fp16" if precision.startswith("fp16") else "fp32")]


def detector_parity(out, ref, precision: str = "fp32", runtime: str = "") -> Parity:
    out, ref = _np(out), _np(ref)
    if out.shape != ref.shape:
        raise ValueError(f"detector parity: output shape {out.shape} != torch {ref.shape}")
    err = np.abs(out - ref)
    value = float(err.max())
    tol = _tol("yolo", precision)
    return Parity("max_abs", value, tol, bool(value <= tol), runtime=runtime,
                  details={"boxes_max_abs": float(err[:, :4].max()), "scores_max_abs": float(err[:, 4:].max())
                           if out.shape[1] > 4 else 0.0})


def encoder_parity(out, ref, precision: str = "fp32", runtime: str = "") -> Parity:
    out, ref = _np(out), _np(ref)
    if out.shape != ref.shape:
        raise ValueError(f"encoder parity: output shape {out.shape} != torch {ref.shape}")
    value = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))
    tol = _tol("sam_encoder", precision)
    return Parity("rel_l2", value, tol, bool(value <= tol), runtime=runtime,
                  details={"max_abs": float(np.abs(out - ref).max())})


def decoder_parity(runs: list[tuple[tuple, tuple]], precision: str = "fp32", runtime: str = "") -> Parity:
    """runs: [((masks, iou) from the runtime, (masks, iou) from torch), ...] e.g. for 1 and 3 boxes."""
    ious, logit_err, iou_err, boxes = [], 0.0, 0.0, []
    for (m, q), (rm, rq) in runs:
        m, q, rm, rq = _np(m), _np(q), _np(rm), _np(rq)
        if m.shape != rm.shape or q.shape != rq.shape:
            raise ValueError(f"decoder parity: output shapes {m.shape}, {q.shape} != torch {rm.shape}, {rq.shape}")
        ious.append(mask_iou(m > 0, rm > 0))
        logit_err = max(logit_err, float(np.abs(m - rm).max()))
        iou_err = max(iou_err, float(np.abs(q - rq).max()))
        boxes.append(m.shape[0])
    value = float(np.concatenate(ious).min())
    tol = _tol("sam_decoder", precision)
    details = {"logits_max_abs": logit_err, "iou_head_max_abs": iou_err, "mean_mask_iou": float(np.concatenate(ious).mean())}
    details.update({f"boxes_run_{i}": float(n) for i, n in enumerate(boxes)})
    return Parity("mask_iou", value, tol, bool(value >= tol), runtime=runtime, details=details)
