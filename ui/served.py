"""The engine's pixels as files Gradio serves as they are (lossless PNG, never re-encoded) or as data URIs."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets
from pathlib import Path

from PIL import Image, PngImagePlugin

from tmpdiff.atomic import write_atomically
from tmpdiff.engine.frames import write_animation

__all__ = ["data_uri", "png_bytes", "served_blind", "served_file", "served_png"]


def png_bytes(image: Image.Image, animated: bool = False) -> bytes:
    """The engine's pixels as PNG (lossless); ``animated``: a video's frame sheet as an animated PNG."""
    buffer = io.BytesIO()
    if animated:
        write_animation(image, buffer)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(image: Image.Image, animated: bool = False) -> str:
    """A PNG data URI of the engine's pixels; ``animated``: a video's frame sheet as an animated PNG."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, animated)).decode()


def served_png(image: Image.Image, name: str = "image.png") -> str:
    """The image as a PNG file that a component serves as it is (lossless, no copy): see :func:`served_file`."""
    return served_file(png_bytes(image), name)


def served_file(data: bytes, name: str) -> str:
    """``data`` as a file called ``name`` in Gradio's cache folder, where Gradio serves it as it is and deletes it
    an hour later. Its folder is named by the SHA-256 of the bytes, and the file is renamed into place once
    complete, so two visitors shown the same image (a cache hit) share one whole file. Gradio's own path for a
    PIL image rewrites the file for each of them, and a download racing the rewrite read a truncated file (seen
    in the load test); a folder of our own per image was never deleted."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / "tmpdiff" / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.exists():
        os.utime(path)  # handed out again: Gradio deletes served files by their age (ctime)
        return str(path)
    write_atomically(path, data)
    return str(path)


BLIND_PADDING = 4096  # most random bytes added to a blind pair's PNG: its size says nothing across pairs


def served_blind(png: bytes) -> str:
    """A blind pair's image, served under a name that says nothing: a random folder (never the content hash other
    pairs or tabs share) and ``image.png``, re-encoded losslessly with a random-length padding chunk, so neither
    its address nor its size repeats when the same image comes back in another pair. Pixels are unchanged."""
    from gradio.utils import get_upload_folder

    with Image.open(io.BytesIO(png)) as image:
        info = PngImagePlugin.PngInfo()
        info.add_text("padding", secrets.token_hex(secrets.randbelow(BLIND_PADDING // 2) + 1))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
    path = Path(get_upload_folder()) / "tmpdiff-blind" / secrets.token_hex(16) / "image.png"
    path.parent.mkdir(parents=True)
    write_atomically(path, buffer.getvalue())
    return str(path)
