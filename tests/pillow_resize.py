"""Pillow reference for the image tests (run by tools/fixtures/images.ts with Debian's /usr/bin/python3).

Usage: pillow_resize.py JOBS.json — runs each job (paths relative to the current directory) and
prints a JSON list with one result object per job.

Jobs:
- decode:     Image.open(input).convert("RGB") as LLaVA loads images; writes raw RGB [h, w, 3].
- pad_resize: raw RGB input (width × height) → LLaVA-1.5's expand2square with the CLIP mean colour →
              CLIPImageProcessor's PIL resize to size × size with BICUBIC; writes raw RGB, and with
              "normalized" also float32 [3, size, size] computed as transformers' numpy code does.
- encode:     raw RGB or L input → Image.save(output, **options) (e.g. JPEG quality, subsampling,
              progressive).
"""

import json
import sys

import numpy as np
from PIL import Image

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def expand2square(pil_img, background_color):
    """LLaVA's llava/mm_utils.py expand2square."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def read_raw(path, width, height, mode="RGB"):
    with open(path, "rb") as f:
        return Image.frombytes(mode, (width, height), f.read())


def decode(job):
    image = Image.open(job["input"])
    mode = image.mode
    rgb = image.convert("RGB")
    with open(job["output"], "wb") as f:
        f.write(rgb.tobytes())
    return {"width": rgb.width, "height": rgb.height, "mode": mode}


def pad_resize(job):
    image = read_raw(job["input"], job["width"], job["height"])
    square = expand2square(image, tuple(int(x * 255) for x in CLIP_MEAN))
    size = job["size"]
    # transformers' resize: PIL resize with reducing_gap=None (the square makes the shortest edge
    # the output size); the centre crop to size × size is then a no-op.
    resized = square.resize((size, size), resample=Image.BICUBIC, reducing_gap=None)
    with open(job["output"], "wb") as f:
        f.write(resized.tobytes())
    if "normalized" in job:
        # transformers' rescale: float64 multiply, cast to float32; normalize in float32.
        pixels = (np.array(resized).astype(np.float64) * (1 / 255)).astype(np.float32)
        mean = np.array(CLIP_MEAN, dtype=pixels.dtype)
        std = np.array(CLIP_STD, dtype=pixels.dtype)
        pixels = (pixels - mean) / std
        with open(job["normalized"], "wb") as f:
            f.write(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype("<f4").tobytes())
    return {}


def encode(job):
    image = read_raw(job["input"], job["width"], job["height"], job["mode"])
    image.save(job["output"], **job["options"])
    return {}


OPS = {"decode": decode, "pad_resize": pad_resize, "encode": encode}

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    print(json.dumps([OPS[job["op"]](job) for job in jobs]))
