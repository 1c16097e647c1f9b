"""Library errors name the settings they are about (``yolo_weights ...``, the config field); the
command lines (``mkgan-engine sr``, ``mkgan-engine export``) name the flags that set them."""

from __future__ import annotations

import re

SETTING_FLAGS = {"yolo_weights": "--yolo-weights", "sam_checkpoint": "--sam-checkpoint", "sam_type": "--sam-type",
                 "engines_dir": "--engines", "workspace_gb": "--workspace", "backend": "--backend", "formats": "--format",
                 "imgsz": "--imgsz", "device": "--device"}
_ANYWHERE = [name for name in SETTING_FLAGS if "_" in name]  # unambiguous names
_LEADING = [name for name in SETTING_FLAGS if "_" not in name]  # plain words: only as the subject of a message


def with_flags(message: str) -> str:
    """A library error message with the setting names it mentions replaced by the CLI's flags."""
    message = re.sub(r"\b(" + "|".join(_ANYWHERE) + r")\b", lambda m: SETTING_FLAGS[m.group(1)], message)
    return re.sub(r"(^|; )(" + "|".join(_LEADING) + r") ", lambda m: m.group(1) + SETTING_FLAGS[m.group(2)] + " ", message)
