"""edge_recovery (issue #10): identity, blur, zero-mean noise, constant image, eval registration."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fewstep.errors import FewstepError
from fewstep.imageio import read_rgb8
from fewstep.metrics import edge_recovery, get_metric

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "seeding_256.png"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_rgb8(EXAMPLE)


def test_identity_is_one(photo):
    assert edge_recovery(photo, photo) == pytest.approx(1.0, abs=1e-12)


def test_blur_lowers_it_monotonically(photo):
    scores = [edge_recovery(cv2.GaussianBlur(photo, (0, 0), s), photo) for s in (0.8, 1.5, 3.0)]
    assert scores[0] < 0.95
    assert scores[0] > scores[1] > scores[2] > 0.0


def test_zero_mean_noise_barely_changes_it(photo):
    rng = np.random.default_rng(0)
    noisy = photo.astype(np.float64) + rng.normal(0.0, 10.0, photo.shape)  # float on [0, 255], unclipped
    assert abs(edge_recovery(noisy, photo) - 1.0) < 0.02
    blurred = cv2.GaussianBlur(photo, (0, 0), 1.5).astype(np.float64)
    assert abs(edge_recovery(blurred + rng.normal(0.0, 10.0, photo.shape), photo) - edge_recovery(blurred, photo)) < 0.02


def test_constant_image_scores_zero(photo):
    flat = np.full_like(photo, 128)
    assert edge_recovery(flat, photo) == 0.0
    with pytest.raises(FewstepError, match="no edges"):
        edge_recovery(photo, flat)


def test_sharpening_beyond_the_reference_scores_above_one(photo):
    soft = cv2.GaussianBlur(photo, (0, 0), 1.0)
    sharp = np.clip(soft * 2.5 - cv2.GaussianBlur(soft, (0, 0), 2.0) * 1.5, 0, 255)
    assert edge_recovery(sharp, soft) > 1.0


def test_registered_for_eval_with_crop_border(photo):
    m = get_metric("edge_recovery", crop_border=4)
    assert m.needs_reference and not m.lower_better
    assert m(photo, photo) == pytest.approx(1.0)
    with pytest.raises(FewstepError, match="shape"):
        m(photo[:-1], photo)
