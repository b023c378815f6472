"""Draws scenes of the shapes task with Pillow (plain, no antialiasing, no noise): the second
renderer for checking the demo model on scenes it was not trained on pixel for pixel.

    python3 tools/train/render_pillow.py scenes.json OUT_DIR    # writes OUT_DIR/{seed}.png
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from scenes_pillow import draw_scene  # noqa: E402


def main():
    scenes_path, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(scenes_path) as f:
        scenes = json.load(f)
    for item in scenes:
        draw_scene(item["scene"]).save(os.path.join(out, f"{item['seed']}.png"))
    print(f"wrote {len(scenes)} scenes to {out}")


if __name__ == "__main__":
    main()
