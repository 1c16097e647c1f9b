"""C++/CUDA extensions, JIT-built on first use (see :func:`load_masked_crop`).

Placeholder loader: returns None (pure-PyTorch fallback) until the extension is wired in.
"""

from __future__ import annotations

from typing import Callable, Optional


def load_masked_crop() -> Optional[Callable]:
    return None
