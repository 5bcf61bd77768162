"""Data for adapting a Fashion-MNIST model to real photos: labelled photos mixed with Fashion-MNIST.

The photos (through the photo pipeline, set-valued labels, "outside the classes" folders) are cut into a
training part and a held-out part, per folder. Training sees every training photo `photo_repeat` times
per epoch (small folders more often: weight count^-balance, as many repeats on average) beside as many
Fashion-MNIST training images, so the model learns photos without forgetting the dataset; the held-out
photos are the validation split (model choice, early stopping, calibration); the test split stays
Fashion-MNIST's own test set, so its accuracy is comparable with every other run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmnist_jax.data.catalogue import Dataset
from fmnist_jax.data.splitting import Splits, SplitSpec
from fmnist_jax.photos.folders import PhotoInputs, split_photos


@dataclass
class PhotoMix:
    """How photos and Fashion-MNIST are mixed for adaptation."""

    held_out: float = 0.2     # share of each folder's photos kept for validation and calibration (0: none)
    photo_repeat: int = 6     # mean times each training photo appears per epoch
    balance: float = 1.0      # repeat weight count^-balance per folder (0: as they come, 1: equal folders)
    fmnist_ratio: float = 1.0 # Fashion-MNIST images per photo sample in the training split
    seed: int = 0

    def validate(self) -> "PhotoMix":
        """ValueError with a message a user can act on."""
        if not (self.held_out == 0 or 0.05 <= self.held_out <= 0.5):
            raise ValueError(f"the held-out share of photos must be 0 (train on all) or 0.05-0.5, got {self.held_out}")
        if not 1 <= self.photo_repeat <= 100:
            raise ValueError(f"photo repeats must be 1-100, got {self.photo_repeat}")
        if not 0 <= self.balance <= 1:
            raise ValueError(f"folder balance must be 0-1, got {self.balance}")
        if not 0 <= self.fmnist_ratio <= 20:
            raise ValueError(f"Fashion-MNIST images per photo must be 0-20, got {self.fmnist_ratio}")
        return self


def _repeats(folders: np.ndarray, mean_repeat: int, balance: float) -> np.ndarray:
    """Per-photo repeat counts: folder weight count^-balance, scaled so the mean repeat is `mean_repeat`."""
    names, inverse, counts = np.unique(folders, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -balance
    return np.maximum(1, np.round(mean_repeat * weights / weights.mean())).astype(np.int64)


FMNIST_VALIDATION = 2000  # validation images when no photo is held out (the final fit on every photo)


def adaptation_splits(fashion: Dataset, photos: PhotoInputs, mix: PhotoMix) -> tuple[Splits, np.ndarray]:
    """(splits, indices of the held-out photos in `photos`): train = repeated photos + Fashion-MNIST,
    validation = held-out photos (or, with none held out, Fashion-MNIST images kept out of training),
    test = Fashion-MNIST test."""
    mix.validate()
    if photos.images.shape[1:] != fashion.input_shape:
        raise ValueError(f"photos are {photos.images.shape[1:]} but the dataset is {fashion.input_shape}")
    if mix.held_out:
        train_idx, held_idx = split_photos(photos, mix.held_out, mix.seed)
    else:
        train_idx, held_idx = np.arange(len(photos.labels)), np.zeros(0, np.int64)
    folders = np.asarray(photos.folders)
    repeated = np.repeat(train_idx, _repeats(folders[train_idx], mix.photo_repeat, mix.balance))
    order = np.random.default_rng(mix.seed).permutation(len(fashion.train_labels))
    fmnist_count = min(len(order) - FMNIST_VALIDATION, int(round(mix.fmnist_ratio * len(repeated))))
    fmnist_idx, fmnist_val = np.sort(order[:fmnist_count]), np.sort(order[-FMNIST_VALIDATION:])
    train_images = np.concatenate([fashion.train_images[fmnist_idx], photos.images[repeated]])
    train_labels = np.concatenate([fashion.train_labels[fmnist_idx], photos.labels[repeated]]).astype(np.int32)
    if len(held_idx):
        val_images, val_labels = photos.images[held_idx], photos.labels[held_idx]
    else:
        val_images, val_labels = fashion.train_images[fmnist_val], fashion.train_labels[fmnist_val]
    splits = Splits(train_images, train_labels, val_images, val_labels, fashion.test_images, fashion.test_labels,
                    fashion.class_names, SplitSpec(mode="official", seed=mix.seed))
    return splits, held_idx
