"""The shapes task's scenes drawn with Pillow (the grammar lives in tools/fixtures/scenes.ts; this
is the second, independent renderer, used for training and for the cross-renderer check)."""

import math

from PIL import Image, ImageDraw

SCENE_SIZE = 336
SHAPE_COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 40), "purple": (140, 60, 180), "orange": (240, 140, 30),
}
BACKGROUNDS = {"white": (255, 255, 255), "light grey": (210, 210, 210), "beige": (245, 235, 215)}


def shape_height(kind, size):
    if kind == "triangle":
        return size * math.sqrt(3) / 2
    if kind == "star":
        return size * (1 + math.cos(math.pi / 5)) / (2 * math.sin(2 * math.pi / 5))
    return size


def shape_polygon(shape):
    cx, cy, size, kind = shape["cx"], shape["cy"], shape["size"], shape["kind"]
    height = shape_height(kind, size)
    if kind == "square":
        h = size / 2
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        return [(cx, cy - height / 2), (cx + size / 2, cy + height / 2), (cx - size / 2, cy + height / 2)]
    outer = size / (2 * math.sin(2 * math.pi / 5))
    inner = outer * 0.381966
    centre_y = cy - height / 2 + outer
    points = []
    for i in range(10):
        radius = outer if i % 2 == 0 else inner
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), centre_y + radius * math.sin(angle)))
    return points


def draw_scene(scene, scale=1, jitter=None):
    """Pillow drawing of a scene at SCENE_SIZE (drawn at `scale`x and box-downsampled when > 1)."""
    size = SCENE_SIZE * scale
    background = BACKGROUNDS[scene["background"]]
    image = Image.new("RGB", (size, size), jitter(background) if jitter else background)
    draw = ImageDraw.Draw(image)
    for shape in scene["shapes"]:
        colour = SHAPE_COLOURS[shape["color"]]
        colour = jitter(colour) if jitter else colour
        if shape["kind"] == "circle":
            r = shape["size"] / 2
            box = [(shape["cx"] - r) * scale, (shape["cy"] - r) * scale,
                   (shape["cx"] + r) * scale - 1, (shape["cy"] + r) * scale - 1]
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(x * scale, y * scale) for x, y in shape_polygon(shape)], fill=colour)
    if scale > 1:
        image = image.resize((SCENE_SIZE, SCENE_SIZE), Image.BOX)
    return image
