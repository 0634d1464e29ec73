"""The one error of the image library: its message tells the image's author what to change."""

from __future__ import annotations


class ImageError(ValueError):
    """An archive, manifest, config or layer that cannot be run; the message is user-facing."""
