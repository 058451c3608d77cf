"""Bank building from references: the shot prototype computation, box-only references, bad references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import BoxEchoProposer
from PIL import Image

from ntt.bank.encoder import InvalidReferenceError, build_bank, masks_from_boxes, patch_weights
from ntt.geometry import context_crop_box
from ntt.io.images import load_image
from ntt.models import get_dinov2
from ntt.types import Reference


def _fss_pair(fss, name="apple", index=1):
    image = load_image(fss / "images" / name / f"{index}.jpg")
    mask_img = Image.open(fss / "masks" / name / f"{index}.png").convert("L")
    return image, np.asarray(mask_img) > 127


def test_shot_prototype_is_mask_weighted_mean_of_crop_tokens(fss, smoke_config):
    image, mask = _fss_pair(fss)
    ref = Reference(image=image, class_id=5, class_name="apple", mask=mask, image_id=1, annotation_id=11)
    bank = build_bank([ref], smoke_config)

    # Recompute by hand: 20 % context crop, bicubic image / bilinear mask to 224, nearest mask to 16x16.
    ys, xs = np.nonzero(mask)
    box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    x1, y1, x2, y2 = context_crop_box(box, mask.shape, 0.2)
    crop = torch.tensor(image[y1:y2, x1:x2]).permute(2, 0, 1)[None].float() / 255
    crop = F.interpolate(crop, size=(224, 224), mode="bicubic", align_corners=False)
    soft = torch.tensor(mask[y1:y2, x1:x2]).float()[None, None]
    soft = F.interpolate(soft, size=(224, 224), mode="bilinear", align_corners=False)
    weights = soft[0, 0, ::14, ::14].reshape(-1, 1)  # nearest 224 -> 16 samples every 14th pixel
    tokens = get_dinov2(smoke_config.model)(crop)[0].reshape(-1, 384)
    expected = (tokens * weights).sum(0) / weights.sum()

    np.testing.assert_allclose(bank.shot_features[0], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert bank.classes == [{"id": 5, "name": "apple"}]
    assert bank.shots[0]["annotation_id"] == 11 and bank.shots[0]["box_only"] is False
    assert bank.encoder["name"] == "dinov2_vits14" and bank.encoder["weights"] == "random:seed=0"


def test_uneven_shots_and_several_instances_per_image(fss, smoke_config):
    refs = []
    for i in (1, 2, 3):
        image, mask = _fss_pair(fss, "apple", i)
        refs.append(Reference(image=image, class_id=1, class_name="apple", mask=mask, annotation_id=i))
    image, mask = _fss_pair(fss, "basketball", 1)
    half = mask.copy()
    half[: int(np.nonzero(mask)[0].mean())] = False  # the lower part of the ball
    refs.append(Reference(image=image, class_id=2, class_name="ball", mask=mask, annotation_id=10))
    refs.append(Reference(image=image, class_id=2, class_name="ball", mask=half, annotation_id=11))
    bank = build_bank(refs, smoke_config)
    assert bank.shots_per_class() == {"apple": 3, "ball": 2}
    # Two instances of one image are two different shots.
    assert not np.allclose(bank.shot_features[3], bank.shot_features[4])


def test_empty_mask_names_the_annotation(fss, smoke_config):
    image, mask = _fss_pair(fss)
    ref = Reference(image=image, class_id=1, class_name="apple", mask=np.zeros_like(mask), annotation_id=77)
    with pytest.raises(InvalidReferenceError, match="annotation 77.*empty"):
        build_bank([ref], smoke_config)


def test_mask_of_wrong_size_names_the_annotation(fss, smoke_config):
    image, mask = _fss_pair(fss)
    ref = Reference(image=image, class_id=1, class_name="apple", mask=mask[:-3], annotation_id=78)
    with pytest.raises(InvalidReferenceError, match="annotation 78.*mask is 224x221 but the image is 224x224"):
        build_bank([ref], smoke_config)


def test_unreadable_reference_image_names_it(tmp_path, smoke_config):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    ref = Reference(image=bad, class_id=1, class_name="x", mask=np.ones((4, 4), bool), annotation_id=3)
    with pytest.raises(InvalidReferenceError, match="annotation 3.*broken.jpg"):
        build_bank([ref], smoke_config)


def test_box_only_reference_masks_follow_the_box(smoke_config):
    image = np.zeros((120, 200, 3), np.uint8)  # non-square: catches swapped x / y scaling
    masks = masks_from_boxes(image, [[40, 30, 100, 60]], smoke_config, proposer=BoxEchoProposer())
    ys, xs = np.nonzero(masks[0])
    assert masks[0].shape == (120, 200)
    assert abs(xs.min() - 40) <= 2 and abs(xs.max() - 139) <= 2
    assert abs(ys.min() - 30) <= 2 and abs(ys.max() - 89) <= 2


def test_box_only_references_build_a_bank(fss, smoke_config):
    image, mask = _fss_pair(fss)
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    ref = Reference(image=image, class_id=1, class_name="apple", box=box, annotation_id=5)
    bank = build_bank([ref], smoke_config, proposer=BoxEchoProposer())
    assert bank.shots[0]["box_only"] is True and bank.shot_features.shape == (1, 384)


def test_thin_mask_falls_back_to_area_weights():
    soft = torch.zeros(1, 1, 28, 28)
    soft[0, 0, :, 5] = 1.0  # a one-pixel column that nearest sampling (every 14th pixel) misses
    weights = patch_weights(soft, 2)
    assert weights.sum() > 0
    assert weights[:, 0].sum() > 0 and weights[:, 1].sum() == 0


@pytest.mark.parametrize(
    "names, message",
    [
        ([(1, "dog"), (2, "Dog ")], "differ only in case or spaces"),
        ([(1, "dog"), (1, "cat")], "class id 1 is named both"),
        ([(1, "dog"), (2, "dog")], "has two ids"),
    ],
)
def test_inconsistent_class_names_are_rejected(names, message, smoke_config):
    mask = np.ones((8, 8), bool)
    refs = [Reference(image=np.zeros((8, 8, 3), np.uint8), class_id=i, class_name=n, mask=mask) for i, n in names]
    with pytest.raises(InvalidReferenceError, match=message):
        build_bank(refs, smoke_config)


@pytest.mark.parametrize(
    "box, expected",
    [
        ([10, 10, 20, 20], [10, 10, 20, 20]),
        ([-5, 90, 20, 20], [0, 90, 15, 10]),  # clipped to the 100x100 image
        ([50, 50, 0, 10], None),  # zero width
        ([120, 10, 5, 5], None),  # entirely outside
        ([float("nan"), 0, 5, 5], None),
        (None, None),
    ],
)
def test_clip_box(box, expected):
    from ntt.bank.encoder import clip_box

    assert clip_box(box, (100, 100)) == expected


def test_box_only_reference_outside_the_image_names_it(smoke_config):
    ref = Reference(image=np.zeros((50, 60, 3), np.uint8), class_id=1, class_name="x", box=[70, 5, 10, 10])
    ref.annotation_id = 404
    with pytest.raises(InvalidReferenceError, match="annotation 404.*no area inside the image"):
        build_bank([ref], smoke_config, proposer=BoxEchoProposer())


def test_all_ones_mask_is_a_valid_whole_image_shot(fss, smoke_config):
    image, _ = _fss_pair(fss)
    ref = Reference(image=image, class_id=1, class_name="scene", mask=np.ones(image.shape[:2], bool))
    bank = build_bank([ref], smoke_config)
    assert np.isfinite(bank.shot_features).all()


def test_broken_box_on_a_mask_reference_falls_back_to_the_mask(fss, smoke_config):
    image, mask = _fss_pair(fss)
    good = build_bank([Reference(image=image, class_id=1, class_name="a", mask=mask)], smoke_config)
    broken = Reference(image=image, class_id=1, class_name="a", mask=mask, box=[0, 0, 0, 0])
    np.testing.assert_allclose(build_bank([broken], smoke_config).shot_features, good.shot_features, rtol=1e-5)
