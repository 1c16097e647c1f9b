"""Plain, exportable ``nn.Module`` wrappers around YOLOv8 and SAM, and the loaders for user weights.

These modules are the single definition of "the model" for every backend: the torch backend runs
them eagerly, ``mkgan_engine.export`` traces them to ONNX / TensorRT / AOTInductor. Their inputs and
outputs are exactly the tensors of the backend protocols in :mod:`mkgan_engine.backends.base`; all
pre- and post-processing (letterbox, NMS, SAM resize/normalise/pad, mask upscaling) lives in
:mod:`mkgan_engine.maskers.detection` and :mod:`mkgan_engine.maskers.sam_processing`.

- :class:`DetectorModule` ``(1, 3, S, S)`` float in [0, 1] -> raw predictions ``(1, 4 + nc, A)``
  (cx, cy, w, h in input pixels, then sigmoid class scores; before NMS).
- :class:`SamEncoderModule` ``(1, 3, 1024, 1024)`` normalised + padded -> ``(1, 256, 64, 64)``.
- :class:`SamBoxDecoderModule` ``(embeddings (1, 256, 64, 64), boxes (N, 4) xyxy in the 1024
  frame)`` -> ``(low-res logits (N, 1, 256, 256), iou (N, 1))``; N is dynamic (no Python loop or
  shape-dependent branch over N).

``ultralytics`` and ``segment_anything`` are imported only inside :func:`load_yolo` /
:func:`load_sam`, so importing this module is cheap and runtime backends that run from exported
files never need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mkgan_engine.config import SAM_TYPES

__all__ = [
    "DetectorModule",
    "SamBoxDecoderModule",
    "SamEncoderModule",
    "load_sam",
    "load_yolo",
    "yolo_input_size",
]


# ------------------------------------------------------------------------------------- modules
def _detect_head(model: nn.Module) -> nn.Module | None:
    """The last module of an ultralytics model (its Detect/Segment/Pose head), if recognisable."""
    layers = getattr(model, "model", None)
    if isinstance(layers, (nn.Sequential, nn.ModuleList)) and len(layers):
        return layers[-1]
    return None


class DetectorModule(nn.Module):
    """YOLOv8 (ultralytics ``DetectionModel``) -> only the raw prediction tensor.

    forward(images: float (1, 3, S, S) RGB in [0, 1]) -> (1, 4 + nc, A): rows cx, cy, w, h in input
    pixels, then the nc class scores (sigmoid, in [0, 1]); A anchors (8400 at S = 640). This is
    ultralytics' export layout before NMS. In eval mode ultralytics returns ``(y, raw)``; only ``y``
    is kept. Segment/Pose heads append mask coefficients / keypoints after the class scores; those
    rows are dropped, so the output always has exactly 4 + nc rows.

    The wrapped model is put in eval mode with gradients off. End-to-end (NMS-free) heads, whose eval output is
    (B, max_det, 6), are switched to their one-to-many branch so the layout stays the same.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)  # inference wrapper (legacy ONNX tracing needs this)
        head = _detect_head(model)
        nc = getattr(head, "nc", None) or getattr(model, "nc", None)
        if nc is None:
            raise ValueError("not a YOLO detection model: no class count (nc) on the model or its head")
        self.num_classes = int(nc)
        if head is not None:
            if getattr(head, "end2end", False) and getattr(head, "cv2", None) is not None:
                head.end2end = False  # keep the (B, 4 + nc, A) layout; NMS is ours
            if getattr(head, "xyxy", False):
                head.xyxy = False  # boxes as cx, cy, w, h

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: Any = self.model(images)
        while isinstance(out, (tuple, list)):
            out = out[0]
        return out[:, : 4 + self.num_classes]


class SamEncoderModule(nn.Module):
    """SAM image encoder: (1, 3, 1024, 1024) normalised and padded -> embeddings (1, 256, 64, 64).

    The input is already resized/normalised/padded by
    :func:`mkgan_engine.maskers.sam_processing.preprocess_image` (SAM's own ``preprocess`` is not used).
    """

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder.eval().requires_grad_(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class SamBoxDecoderModule(nn.Module):
    """SAM prompt encoder (box prompts only) + mask decoder, single-mask output.

    forward(embeddings (1, 256, 64, 64), boxes (N, 4) x0, y0, x1, y1 in the 1024-px encoder frame)
    -> (low-res mask logits (N, 1, 256, 256), predicted IoU (N, 1)).

    Equivalent to ``sam.prompt_encoder(points=None, boxes=boxes, masks=None)`` followed by
    ``sam.mask_decoder(..., multimask_output=False)``, written without in-place indexing or
    Python-level batch sizes so that N stays a dynamic dimension when traced/exported.
    """

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        pe = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder.eval().requires_grad_(False)
        self.pe_layer = pe.pe_layer
        h, w = pe.input_image_size
        self.register_buffer("coord_scale", torch.tensor([1.0 / w, 1.0 / h]), persistent=False)
        # Constant pieces of the prompt encoding, precomputed once.
        with torch.no_grad():
            corners = torch.cat([pe.point_embeddings[2].weight, pe.point_embeddings[3].weight], 0)  # (2, C)
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe.image_embedding_size)
            image_pe = pe.get_dense_pe()  # (1, C, 64, 64)
        self.register_buffer("corner_embed", corners.clone(), persistent=False)
        self.register_buffer("dense_embed", dense.clone().contiguous(), persistent=False)
        self.register_buffer("image_pe", image_pe.clone(), persistent=False)

    def forward(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coords = (boxes.reshape(-1, 2, 2) + 0.5) * self.coord_scale.to(boxes.dtype)  # (N, 2, 2) in [0, 1]
        sparse = self.pe_layer._pe_encoding(coords.to(self.corner_embed.dtype)) + self.corner_embed  # (N, 2, C)
        dense = self.dense_embed.expand(sparse.shape[0], -1, -1, -1)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=embeddings,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks[:, 0:1], iou[:, 0:1]


# ------------------------------------------------------------------------------------- loaders
def _check_file(path: Path | str | None, option: str, what: str, example: str) -> Path:
    if path is None or str(path) == "":
        raise ValueError(f"{what} needed: pass {option} {example}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{option} {p}: file not found")
    if not p.is_file():
        raise ValueError(f"{option} {p}: not a file")
    return p


def load_yolo(weights: Path | str | None, device: str | torch.device = "cpu") -> nn.Module:
    """Load the user's ultralytics YOLO detection weights (.pt) -> fused FP32 model in eval mode.

    Raises FileNotFoundError (missing file) or ValueError (no path, wrong kind of file, not a
    detection model) naming ``yolo_weights``; ImportError when ultralytics is not installed.
    Never downloads anything: the file must exist locally.
    """
    path = _check_file(weights, "yolo_weights", "YOLO weights are", "path/to/yolov8n.pt")
    if path.suffix.lower() != ".pt":
        raise ValueError(f"yolo_weights {path}: expected an ultralytics .pt checkpoint (got {path.suffix or 'no suffix'}); "
                         "exported engines go in engines_dir with the onnxruntime/tensorrt backends")
    try:
        from ultralytics.nn import tasks
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("yolo_weights needs ultralytics: pip install 'mkgan-engine[yolo]'") from e
    loader = getattr(tasks, "load_checkpoint", None) or getattr(tasks, "attempt_load_one_weight")
    try:
        model, _ = loader(str(path), device=torch.device("cpu"), fuse=False)
    except Exception as e:
        raise ValueError(f"yolo_weights {path}: cannot load as an ultralytics checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(model, tasks.DetectionModel) or type(model).__name__.startswith("RTDETR"):
        raise ValueError(f"yolo_weights {path}: a {type(model).__name__}, not a YOLO detection model "
                         "(use a yolov8*.pt detection checkpoint)")
    model = model.float().eval()
    try:
        model = model.fuse(verbose=False)
    except TypeError:  # older signatures
        model = model.fuse()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)


def yolo_input_size(model: nn.Module, default: int = 640) -> int:
    """The square input size the model was trained at (``model.args['imgsz']``), else ``default``."""
    args = getattr(model, "args", None)
    imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    if isinstance(imgsz, (list, tuple)) and imgsz:
        imgsz = max(imgsz)
    if isinstance(imgsz, int) and imgsz > 0:
        stride = int(max(getattr(model, "stride", torch.tensor([32])).max().item(), 32))
        return -(-imgsz // stride) * stride
    return default


def load_sam(checkpoint: Path | str | None, sam_type: str = "vit_b", device: str | torch.device = "cpu") -> nn.Module:
    """Build segment_anything's ``sam_type`` model and load the user's checkpoint (a state_dict .pth).

    Raises ValueError for an unknown ``sam_type`` (listing the valid ones, naming ``sam_type``),
    FileNotFoundError / ValueError naming ``sam_checkpoint`` for a missing or unreadable file or
    one that does not match the type; ImportError when segment_anything is not installed.
    """
    if sam_type not in SAM_TYPES:
        raise ValueError(f"sam_type {sam_type!r}: unknown SAM type; choose from {', '.join(SAM_TYPES)}")
    path = _check_file(checkpoint, "sam_checkpoint", "a SAM checkpoint is", "path/to/sam_vit_b_01ec64.pth")
    try:
        from segment_anything import sam_model_registry
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("sam_checkpoint needs segment-anything: pip install 'mkgan-engine[sam]'") from e
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"sam_checkpoint {path}: cannot read as a PyTorch state_dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.") for k in state):
        raise ValueError(f"sam_checkpoint {path}: not a segment-anything SAM state_dict (no image_encoder.* weights)")
    sam = sam_model_registry[sam_type](checkpoint=None)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ValueError(f"sam_checkpoint {path} does not match sam_type {sam_type} "
                         f"(is it a {'/'.join(t for t in SAM_TYPES if t != sam_type)} checkpoint?): {detail[:300]}") from e
    sam.eval()
    for p in sam.parameters():
        p.requires_grad_(False)
    return sam.to(device)
