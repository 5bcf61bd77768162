"""Jit-compatible augmentation of training batches, applied on the device, and its settings (AugmentConfig).

Images are float32 (B, H, W, C) in [0, 1] with the garment bright on black, so pixels moved in from
outside the frame are 0. Each transform draws its own random strength per image from its key.
"""
from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from pydantic import Field

from fmnist_jax.checks import Real, Settings, Whole


def _strength(label: str, high: float, ui_label: str, step: float, text: str) -> Any:
    """A strength from 0 to `high`; the Data page draws its slider from this metadata over the same range, so a
    stored value is always one the slider can show (it once clamped rotation 90 to its own 45 and saved that)."""
    return Field(0.0, ge=0, le=high, title=f"augmentation '{label}'",
                 json_schema_extra={"ui": {"label": ui_label, "step": step, "help": text}})


class AugmentConfig(Settings):
    """Training-batch augmentation strengths; every one is off (0) by default."""

    kind: ClassVar[str] = "augmentation"

    flip: Real = _strength("flip", 1, "Horizontal flip (probability)", 0.05,
                           "Mirror left-right; clothes look the same mirrored.")
    shift: Real = _strength("shift", 0.5, "Shift (fraction of the side)", 0.01,
                            "Move the garment up to this share of the image.")  # max translation
    crop: Whole = Field(0, ge=0, le=8, title="augmentation 'crop'", json_schema_extra={"ui": {
        "label": "Random crop (pixels)", "step": 1, "help": "Move the garment by up to this many whole pixels each "
        "way (pad with black, crop back): the cheapest shift, no resampling."}})  # random crop of the padded image
    rotation: Real = _strength("rotation", 180, "Rotation (degrees)", 1.0,
                               "Rotate by up to this many degrees either way.")
    zoom: Real = _strength("zoom", 0.9, "Zoom (relative)", 0.01, "Scale in or out by up to this share.")
    shear: Real = _strength("shear", 1, "Shear", 0.01, "Slant the image by up to this factor.")
    erasing: Real = _strength("erasing", 1, "Random erasing (probability)", 0.05,
                              "Black out a random rectangle (cutout).")
    # Photo robustness: brightness offset, relative contrast change, 3x3 Gaussian blur, Gaussian pixel noise, and
    # thicker or thinner outlines (grey dilation/erosion).
    brightness: Real = _strength("brightness", 1, "Brightness", 0.01,
                                 "Add or remove up to this share of full brightness.")
    contrast: Real = _strength("contrast", 0.9, "Contrast", 0.01, "Stretch or squash contrast by up to this share.")
    blur: Real = _strength("blur", 1, "Blur (probability)", 0.05, "Soften with a 3×3 blur, like a resized photo.")
    noise: Real = _strength("noise", 1, "Noise", 0.01, "Gaussian pixel noise (share of full scale).")
    thickness: Real = _strength("thickness", 1, "Outline thickness (probability)", 0.05,
                                "Thicken or thin the garment's outline.")

    # The Data page's two groups of sliders, in this order.
    GEOMETRY: ClassVar[tuple[str, ...]] = ("flip", "shift", "crop", "rotation", "zoom", "shear", "erasing")
    PHOTO: ClassVar[tuple[str, ...]] = ("brightness", "contrast", "blur", "noise", "thickness")

    def validate(self) -> "AugmentConfig":  # type: ignore[override]
        """Raise ValueError for strengths outside their ranges (fields may have been assigned since construction)."""
        self.recheck()
        return self

    def active(self) -> bool:
        """True if any augmentation is on."""
        return any(getattr(self, name) for name in type(self).model_fields)


def _affine(image: jax.Array, key: jax.Array, cfg: AugmentConfig) -> jax.Array:
    height, width, channels = image.shape
    k_rot, k_zoom, k_shear, k_shift = jax.random.split(key, 4)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-cfg.rotation, maxval=cfg.rotation))
    zoom = 1.0 + jax.random.uniform(k_zoom, (), minval=-cfg.zoom, maxval=cfg.zoom)
    shear = jax.random.uniform(k_shear, (), minval=-cfg.shear, maxval=cfg.shear)
    shift = jax.random.uniform(k_shift, (2,), minval=-cfg.shift, maxval=cfg.shift) * jnp.array([height, width])
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Output -> source mapping (the inverse of rotate . shear . zoom, then translate).
    forward = jnp.array([[cos, -sin], [sin, cos]]) @ jnp.array([[1.0, shear], [0.0, 1.0]]) * zoom
    inverse = jnp.linalg.inv(forward)
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    coords = jnp.stack([ys.ravel(), xs.ravel()]) - (centre + shift)[:, None]
    source = inverse @ coords + centre[:, None]
    out = [jax.scipy.ndimage.map_coordinates(image[..., c], [source[0], source[1]], order=1, mode="constant", cval=0.0)
           for c in range(channels)]
    return jnp.stack(out, axis=-1).reshape(height, width, channels)


def _crop(images: jax.Array, key: jax.Array, pixels: int) -> jax.Array:
    """Random crop of the zero-padded batch: each image moves by whole pixels, at most `pixels` either way on
    each axis (the standard "pad and crop" of small-image training; no interpolation, so it costs little)."""
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)))
    corners = jax.random.randint(key, (batch, 2), 0, 2 * pixels + 1)
    return jax.vmap(lambda image, corner: jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (height, width, channels)))(
        padded, corners)


def _erase(image: jax.Array, key: jax.Array, probability: float) -> jax.Array:
    height, width, _ = image.shape
    k_on, k_size, k_pos = jax.random.split(key, 3)
    size = jax.random.uniform(k_size, (2,), minval=0.1, maxval=0.4) * jnp.array([height, width])
    corner = jax.random.uniform(k_pos, (2,)) * (jnp.array([height, width]) - size)
    ys = jnp.arange(height)[:, None, None]
    xs = jnp.arange(width)[None, :, None]
    inside = (ys >= corner[0]) & (ys < corner[0] + size[0]) & (xs >= corner[1]) & (xs < corner[1] + size[1])
    on = jax.random.bernoulli(k_on, probability)
    return jnp.where(inside & on, 0.0, image)


def _blur(images: jax.Array) -> jax.Array:
    kernel = jnp.array([1.0, 2.0, 1.0]) / 4.0
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    rows = kernel[0] * padded[:, :-2] + kernel[1] * padded[:, 1:-1] + kernel[2] * padded[:, 2:]
    return kernel[0] * rows[:, :, :-2] + kernel[1] * rows[:, :, 1:-1] + kernel[2] * rows[:, :, 2:]


def _morph(images: jax.Array, grow: bool) -> jax.Array:
    dims, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    if grow:
        return jax.lax.reduce_window(images, -jnp.inf, jax.lax.max, dims, strides, "SAME")
    return -jax.lax.reduce_window(-images, -jnp.inf, jax.lax.max, dims, strides, "SAME")


def augment_batch(images: jax.Array, key: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """Augment a float batch in [0, 1]; `cfg` is static (a transform with strength 0 costs nothing)."""
    batch = images.shape[0]
    keys = jax.random.split(key, 8)
    if cfg.flip:
        flip = jax.random.bernoulli(keys[0], cfg.flip, (batch, 1, 1, 1))
        images = jnp.where(flip, images[:, :, ::-1, :], images)
    if cfg.rotation or cfg.zoom or cfg.shear or cfg.shift:
        images = jax.vmap(lambda img, k: _affine(img, k, cfg))(images, jax.random.split(keys[1], batch))
    if cfg.crop:
        images = _crop(images, jax.random.fold_in(keys[1], 1), int(cfg.crop))
    if cfg.thickness:
        choice = jax.random.uniform(keys[2], (batch, 1, 1, 1))
        half = cfg.thickness / 2
        images = jnp.where(choice < half, _morph(images, True),
                           jnp.where(choice < cfg.thickness, _morph(images, False), images))
    if cfg.blur:
        images = jnp.where(jax.random.bernoulli(keys[3], cfg.blur, (batch, 1, 1, 1)), _blur(images), images)
    if cfg.contrast or cfg.brightness:
        k_c, k_b = jax.random.split(keys[4])
        contrast = 1.0 + jax.random.uniform(k_c, (batch, 1, 1, 1), minval=-cfg.contrast, maxval=cfg.contrast)
        brightness = jax.random.uniform(k_b, (batch, 1, 1, 1), minval=-cfg.brightness, maxval=cfg.brightness)
        mean = images.mean(axis=(1, 2, 3), keepdims=True)
        images = (images - mean) * contrast + mean + brightness
    if cfg.noise:
        images = images + cfg.noise * jax.random.normal(keys[5], images.shape)
    if cfg.erasing:
        images = jax.vmap(lambda img, k: _erase(img, k, cfg.erasing))(images, jax.random.split(keys[6], batch))
    return jnp.clip(images, 0.0, 1.0)
