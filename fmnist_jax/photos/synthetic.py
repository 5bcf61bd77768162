"""Photo-like renderings of dataset images, to measure and test the photo pipeline without a camera.

A Fashion-MNIST image is a negated product photo, so un-negating it gives back a garment on white. We
scale it up, tint it, rotate it, place it off-centre on a textured light background (a bed sheet, a
wooden floor, a wall) with a soft shadow, or keep it bright on a textured dark background, add sensor
noise and compress it as a JPEG: roughly what a phone photo of the garment would look like.

"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass
class PhotoSpec:
    """How one photo-like image is rendered (all drawn at random by `random_spec`)."""

    light_background: bool = True
    size: tuple[int, int] = (400, 300)          # (width, height) of the photo
    garment_fraction: float = 0.6               # garment's longest edge / photo's short side
    angle: float = 0.0                          # degrees, counter-clockwise
    offset: tuple[float, float] = (0.0, 0.0)    # garment centre offset, fraction of the free room (-1..1)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    texture: str = "fabric"                     # fabric, wood or wall
    background_level: float = 0.85              # mean background brightness
    shadow: float = 0.0                         # shadow darkness (0 = none)
    noise: float = 0.01                         # sensor noise std
    jpeg_quality: int = 85                      # 0 = PNG (lossless)


def random_spec(rng: np.random.Generator, light_background: bool | None = None) -> PhotoSpec:
    """A random but plausible photo setting."""
    light = bool(rng.random() < 0.75) if light_background is None else light_background
    hue = rng.random(3)
    saturation = rng.uniform(0.0, 0.6)
    tint = tuple(float(v) for v in (1 - saturation) + saturation * hue / max(hue.max(), 1e-6))
    width = int(rng.choice([320, 400, 480, 640]))
    height = int(width * rng.choice([0.75, 1.0, 1.333]))
    return PhotoSpec(
        light_background=light, size=(width, height), garment_fraction=float(rng.uniform(0.45, 0.85)),
        angle=float(rng.uniform(-12, 12)), offset=(float(rng.uniform(-0.8, 0.8)), float(rng.uniform(-0.8, 0.8))),
        tint=tint, texture=str(rng.choice(["fabric", "wood", "wall"])),
        background_level=float(rng.uniform(0.65, 0.95) if light else rng.uniform(0.03, 0.22)),
        shadow=float(rng.uniform(0.1, 0.3) if light and rng.random() < 0.5 else 0.0),
        noise=float(rng.uniform(0.005, 0.03)), jpeg_quality=int(rng.integers(40, 95)))


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed noise scaled to [-1, 1]; drawn at reduced resolution when sigma is large (same look, faster)."""
    factor = max(1, int(sigma // 4))
    small = (max(2, -(-shape[0] // factor)), max(2, -(-shape[1] // factor)))
    noise = ndimage.gaussian_filter(rng.normal(size=small), sigma / factor, mode="wrap")
    if factor > 1:
        noise = np.asarray(Image.fromarray(noise.astype(np.float32)).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))
    return noise / (np.abs(noise).max() + 1e-6)


def _texture(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = shape
    if kind == "wood":
        ys = np.mgrid[0:height, 0:width][0].astype(np.float32)
        warp = _smooth_noise(shape, 25, rng) * 20
        grain = np.sin((ys + warp) / rng.uniform(3, 8)) * 0.5 + np.sin((ys + 0.5 * warp) / rng.uniform(15, 30)) * 0.5
        return 0.05 * grain + 0.02 * _smooth_noise(shape, 1, rng)
    if kind == "fabric":
        return 0.06 * _smooth_noise(shape, 18, rng) + 0.025 * _smooth_noise(shape, 0.7, rng)
    return 0.03 * _smooth_noise(shape, 40, rng) + 0.01 * rng.normal(size=shape)


def render(image: np.ndarray, spec: PhotoSpec, rng: np.random.Generator) -> np.ndarray:
    """RGB float photo (H, W, 3) in [0, 1] of one uint8 dataset image (28, 28) or (28, 28, 1)."""
    negative = np.asarray(image, dtype=np.float32).reshape(image.shape[0], image.shape[1]) / 255.0
    width, height = spec.size
    side = max(8, int(spec.garment_fraction * min(width, height)))
    scale = side / max(negative.shape)
    size = (max(1, round(negative.shape[1] * scale)), max(1, round(negative.shape[0] * scale)))
    big = np.asarray(Image.fromarray(negative).resize(size, Image.Resampling.BICUBIC), dtype=np.float32).clip(0, 1)
    alpha = np.clip(big / 0.08, 0.0, 1.0)
    alpha = np.asarray(Image.fromarray(alpha).rotate(spec.angle, Image.Resampling.BILINEAR, expand=True))
    big = np.asarray(Image.fromarray(big).rotate(spec.angle, Image.Resampling.BILINEAR, expand=True))
    garment_h, garment_w = alpha.shape
    tint = np.asarray(spec.tint, dtype=np.float32)
    if spec.light_background:
        garment = (1.0 - big)[..., None] * tint          # the product photo: dark garment parts stay dark
    else:
        garment = big[..., None] * tint                  # bright garment on a dark background
    base = spec.background_level * (0.9 + 0.1 * rng.random(3)).astype(np.float32)
    texture = _texture(spec.texture, (height, width), rng)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = 1.0 + rng.uniform(-0.1, 0.1) * (xs / width - 0.5) + rng.uniform(-0.1, 0.1) * (ys / height - 0.5)
    photo = (base[None, None, :] * gradient[..., None] + texture[..., None]).astype(np.float32)
    room_y, room_x = max(0, height - garment_h), max(0, width - garment_w)
    top = int(np.clip(room_y / 2 * (1 + spec.offset[1]), 0, room_y))
    left = int(np.clip(room_x / 2 * (1 + spec.offset[0]), 0, room_x))
    full_alpha = np.zeros((height, width), np.float32)
    full_garment = np.zeros((height, width, 3), np.float32)
    visible_h, visible_w = min(garment_h, height), min(garment_w, width)
    full_alpha[top:top + visible_h, left:left + visible_w] = alpha[:visible_h, :visible_w]
    full_garment[top:top + visible_h, left:left + visible_w] = garment[:visible_h, :visible_w]
    if spec.shadow:
        shift = int(0.03 * min(width, height))
        shadow = ndimage.gaussian_filter(np.roll(np.roll(full_alpha, shift, 0), shift, 1), 0.02 * min(width, height))
        photo = photo * (1.0 - spec.shadow * shadow)[..., None]
    photo = photo * (1 - full_alpha[..., None]) + full_garment * full_alpha[..., None]
    photo = photo + spec.noise * rng.normal(size=photo.shape).astype(np.float32)
    return np.clip(photo, 0.0, 1.0)


def encode(photo: np.ndarray, jpeg_quality: int = 85) -> bytes:
    """JPEG (quality > 0) or PNG (quality 0) bytes of an RGB float photo."""
    image = Image.fromarray(np.clip(np.round(photo * 255), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    if jpeg_quality > 0:
        image.save(buffer, "JPEG", quality=int(jpeg_quality))
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def photo_bytes(image: np.ndarray, rng: np.random.Generator, light_background: bool | None = None) -> tuple[bytes, PhotoSpec]:
    """A random photo-like JPEG of a dataset image, and the setting it was rendered with."""
    spec = random_spec(rng, light_background)
    return encode(render(image, spec, rng), spec.jpeg_quality), spec


def evaluate_photo_like(model: object, images: np.ndarray, labels: np.ndarray, count: int = 1000, seed: int = 0) -> dict:
    """Accuracy of `model` on `count` photo-like renderings of (images, labels): the pipeline vs a naive resize."""
    from fmnist_jax.photos.decode import ImageError
    from fmnist_jax.photos.pipeline import naive_input, preprocess_photo

    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(labels))[:count]
    pipeline_inputs, naive_inputs, light, failed = [], [], [], 0
    for index in pick:
        payload, spec = photo_bytes(images[index], rng)
        try:
            pipeline_inputs.append(preprocess_photo(payload, model.preprocess, model.input_shape).model_input)
        except ImageError:
            failed += 1
            pipeline_inputs.append(np.zeros(model.input_shape, np.uint8))
        naive_inputs.append(naive_input(payload, model.input_shape))
        light.append(spec.light_background)
    truth = np.asarray(labels)[pick]
    light_mask = np.asarray(light)
    pipeline_right = model.predict_proba(np.stack(pipeline_inputs)).argmax(1) == truth
    naive_right = model.predict_proba(np.stack(naive_inputs)).argmax(1) == truth
    clean_right = model.predict_proba(np.asarray(images)[pick]).argmax(1) == truth

    def share(values: np.ndarray, where: np.ndarray) -> float | None:
        return round(float(values[where].mean()), 4) if where.any() else None

    return {"count": int(len(pick)), "seed": seed, "pipeline_accuracy": share(pipeline_right, np.ones_like(light_mask)),
            "naive_accuracy": share(naive_right, np.ones_like(light_mask)),
            "clean_accuracy": share(clean_right, np.ones_like(light_mask)),
            "light_background": {"count": int(light_mask.sum()), "pipeline_accuracy": share(pipeline_right, light_mask),
                                 "naive_accuracy": share(naive_right, light_mask)},
            "dark_background": {"count": int((~light_mask).sum()), "pipeline_accuracy": share(pipeline_right, ~light_mask),
                                "naive_accuracy": share(naive_right, ~light_mask)},
            "pipeline_failures": failed}
