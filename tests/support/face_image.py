"""A drawn face that OpenCV's frontal-face cascade finds (no photo needed)."""

from PIL import Image, ImageDraw, ImageFilter


def drawn_face(size: int = 128, background: int = 90) -> Image.Image:
    image = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(image)
    cx, cy, r = size / 2, size / 2, size * 0.3
    draw.ellipse((cx - r, cy - r * 1.25, cx + r, cy + r * 1.25), fill=200)  # face
    for side in (-0.38, 0.38):                                                 # eyes, brows
        x = cx + side * r
        draw.ellipse((x - r * 0.2, cy - r * 0.44, x + r * 0.2, cy - r * 0.26), fill=40)
        draw.rectangle((x - r * 0.25, cy - r * 0.62, x + r * 0.25, cy - r * 0.55), fill=60)
    draw.polygon([(cx, cy - r * 0.2), (cx - r * 0.12, cy + r * 0.25), (cx + r * 0.12, cy + r * 0.25)], fill=170)
    draw.ellipse((cx - r * 0.35, cy + r * 0.5, cx + r * 0.35, cy + r * 0.65), fill=70)  # mouth
    return image.filter(ImageFilter.GaussianBlur(size / 128)).convert("RGB")


def picture_with_a_face(width: int = 320, height: int = 240, at: tuple[int, int] = (150, 60),
                        size: int = 128) -> Image.Image:
    """A grey picture with a gradient, and one face at `at`."""
    picture = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    picture.paste(drawn_face(size), at)
    return picture
