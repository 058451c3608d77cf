"""The memory bank: construction, prototypes, merging, persistence and its failure modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from ntt.bank.memory import FORMAT_VERSION, BankError, MemoryBank, _digest

ENCODER = {"name": "vit_large_patch14_dinov2", "image_size": 518, "weights": "official", "dim": 3, "context_ratio": 0.2}

CAT, DOG, BIRD = {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 16, "name": "bird"}


def _shot(class_id, ann_id, image_id=1):
    return {
        "image_id": image_id,
        "image_path": f"/data/{image_id:012d}.jpg",
        "annotation_id": ann_id,
        "class_id": class_id,
    }


def _bank(**overrides):
    """Two classes (cat first although its id is larger), shots interleaved: cat, dog, cat."""
    args = dict(
        classes=[dict(CAT), dict(DOG)],
        shot_features=np.array([[3.0, 0.0, 0.0], [0.0, 0.0, -2.0], [3.0, 8.0, 0.0]], np.float32),
        shot_class_ids=np.array([17, 18, 17]),
        shots=[_shot(17, 101, 1), _shot(18, 102, 2), _shot(17, 103, 3)],
        encoder=dict(ENCODER),
        info={"seed": 33, "source": "unit test"},
    )
    args.update(overrides)
    return MemoryBank(**args)


def _split(raw: bytes):
    header_len = int.from_bytes(raw[:8], "little")
    return header_len, json.loads(raw[8 : 8 + header_len])


# ---- construction and prototypes -------------------------------------------------------------------


def test_class_prototypes_mean_then_normalise_in_class_order():
    bank = _bank()
    protos = bank.class_prototypes()
    assert protos.dtype == np.float32 and protos.shape == (2, 3)
    # cat: mean([3,0,0], [3,8,0]) = [3,4,0] -> [0.6, 0.8, 0] (normalising each shot first would give
    # a different direction: equal shot weights on the raw prototypes); dog: [0,0,-2] -> [0,0,-1].
    np.testing.assert_allclose(protos, [[0.6, 0.8, 0.0], [0.0, 0.0, -1.0]], atol=1e-7)


def test_properties_and_summary():
    bank = _bank()
    assert bank.class_ids == [17, 18]
    assert bank.class_names == ["cat", "dog"]
    assert bank.shots_per_class() == {"cat": 2, "dog": 1}
    assert bank.summary()["shots"] == 3 and bank.summary()["classes"] == 2
    assert bank.shot_features.dtype == np.float32 and bank.shot_class_ids.dtype == np.int64


def test_class_without_shots_has_no_prototype():
    bank = _bank(classes=[dict(CAT), dict(DOG), dict(BIRD)])
    with pytest.raises(BankError, match="bird"):
        bank.class_prototypes()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"shot_class_ids": np.array([17, 99, 17])}, "unknown"),
        ({"shot_class_ids": np.array([17, 18])}, "inconsistent"),
        ({"shots": [_shot(17, 101)]}, "inconsistent"),
        ({"classes": [dict(CAT), dict(DOG), {"id": 17, "name": "kitten"}]}, "duplicate"),
    ],
)
def test_inconsistent_construction(overrides, message):
    with pytest.raises(BankError, match=message):
        _bank(**overrides)


# ---- add / remove ----------------------------------------------------------------------------------


def test_add_merges_shots_and_classes():
    a = _bank()
    b = _bank(
        classes=[dict(BIRD), dict(CAT)],
        shot_features=np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], np.float32),
        shot_class_ids=np.array([16, 17]),
        shots=[_shot(16, 201, 9), _shot(17, 202, 9)],
        info={},
    )
    merged = a.add(b)
    assert merged.class_ids == [17, 18, 16]  # the existing order, then new classes
    assert merged.shot_class_ids.tolist() == [17, 18, 17, 16, 17]
    np.testing.assert_array_equal(merged.shot_features[3:], b.shot_features)
    assert [s["annotation_id"] for s in merged.shots] == [101, 102, 103, 201, 202]
    assert merged.shots_per_class() == {"cat": 3, "dog": 1, "bird": 1}
    # the operands are untouched
    assert len(a.shots) == 3 and a.class_ids == [17, 18]
    assert len(b.shots) == 2


def test_add_skips_shots_already_in_the_bank():
    a = _bank()
    b = _bank(
        classes=[dict(CAT)],
        shot_features=np.array([[9.0, 9.0, 9.0], [5.0, 5.0, 5.0]], np.float32),
        shot_class_ids=np.array([17, 17]),
        shots=[_shot(17, 101, 1), _shot(17, 301, 4)],  # 101 on image 1 is already there
        info={},
    )
    merged = a.add(b)
    assert [s["annotation_id"] for s in merged.shots] == [101, 102, 103, 301]
    np.testing.assert_array_equal(merged.shot_features[3], [5.0, 5.0, 5.0])
    assert merged.shots_per_class() == {"cat": 3, "dog": 1}


@pytest.mark.parametrize(
    "encoder_change",
    [{"name": "vit_small_patch14_dinov2"}, {"image_size": 224}, {"weights": "random:0"}],
)
def test_add_rejects_other_encoder(encoder_change):
    other = _bank(encoder={**ENCODER, **encoder_change})
    with pytest.raises(BankError, match="encoder"):
        _bank().add(other)


def _part(shots, class_ids, classes, negative=False, **info):
    """A bank to add: one feature per shot (distinct rows), shots made negatives when ``negative``."""
    shots = [{**shot, "negative": True} if negative else shot for shot in shots]
    features = np.arange(1, 3 * len(shots) + 1, dtype=np.float32).reshape(-1, 3)
    return MemoryBank(classes, features, np.array(class_ids), shots, dict(ENCODER), info)


def _from(source, class_id, ann_id, image_id=1, folder="a"):
    """A shot of ``source`` (a file's sha256, or ``dataset:<id>``)."""
    path = f"/{folder}/{image_id}.jpg"
    return {"image_id": image_id, "image_path": path, "annotation_id": ann_id, "class_id": class_id, "source": source}


def test_add_merges_classes_by_name_and_says_so():
    """A file that numbers its classes otherwise joins the bank's classes by name; a new name whose id the bank
    gives another class gets the next free id; neither raises."""
    notes = []
    other = _part(
        [_shot(3, 201, 9), _shot(17, 202, 9)],
        [3, 17],
        [{"id": 3, "name": "dog"}, {"id": 17, "name": "kitten"}],
        source="refs2.json",
    )
    merged = _bank().add(other, say=notes.append)
    assert merged.classes == [CAT, DOG, {"id": 19, "name": "kitten"}], "one 'dog', kitten off the cat's id"
    assert merged.shot_class_ids.tolist() == [17, 18, 17, 18, 19]
    assert [s["class_id"] for s in merged.shots[3:]] == [18, 19], "the provenance follows the new ids"
    assert merged.shots_per_class() == {"cat": 2, "dog": 2, "kitten": 1}
    assert notes == [
        "class 'dog' is id 3 in refs2.json and id 18 in the bank: added to the bank's 'dog'",
        "class 'kitten' is id 17 in refs2.json, the bank's 'cat': added as a new class, id 19",
    ]


def test_shots_of_two_files_numbered_alike_are_all_added():
    """Most tools number images and annotations from 1 in every file: a shot is its file's, image and annotation."""
    first = _part([_from("sha-1", 17, 1), _from("sha-1", 18, 2)], [17, 18], [dict(CAT), dict(DOG)])
    second = _part([_from("sha-2", 17, 1, folder="b"), _from("sha-2", 18, 2, folder="b")], [17, 18], [CAT, DOG])
    both = first.add(second)
    assert len(both.shots) == 4 and both.shots_per_class() == {"cat": 2, "dog": 2}
    assert both.add(second) is both and both.add(first) is both, "the same file again adds nothing"
    assert both.holds(_from("sha-2", 17, 1), negative=False), "the same label, whatever its image root"
    assert not both.holds(_from("sha-3", 17, 1), negative=False)


def test_shots_from_datasets_are_one_source():
    """FiftyOne ids are unique across datasets, and a clone keeps its labels' ids (and banks): the same labels."""
    bank = _part([_from("dataset:aaa", 17, "label1", "sample1")], [17], [dict(CAT)])
    assert bank.holds(_from("dataset:bbb", 17, "label1", "sample1"), negative=False)
    assert not bank.holds(_from("0123abcd", 17, "label1", "sample1"), negative=False)


@pytest.mark.parametrize(
    "old_path, new_path, held",
    [
        ("/a/1.jpg", "/a/1.jpg", True),  # the same file added again
        ("/a/1.jpg", "/b/1.jpg", False),  # another file's label, numbered alike
        (None, "/b/1.jpg", True),  # an in-memory image: ids are all there is
        ("/a/1.jpg", None, True),
    ],
)
def test_a_shot_without_source_matches_by_ids_and_image_path(old_path, new_path, held):
    """Shots of banks made before shots recorded their source."""
    old = _part([{**_shot(17, 1, 1), "image_path": old_path}], [17], [dict(CAT)])
    new = {**_shot(17, 1, 1), "image_path": new_path, "source": "sha-2"}
    assert old.holds(new, negative=False) is held
    assert old.holds({k: v for k, v in new.items() if k != "source"}, negative=False) is held
    assert not old.holds({**new, "annotation_id": 2}, negative=False)
    assert len(old.add(_part([new], [17], [dict(CAT)])).shots) == (1 if held else 2)


def test_a_shot_without_annotation_id_is_never_held():
    bank = _part([{"image_id": 1}], [17], [dict(CAT)])
    assert not bank.holds({"image_id": 1}, negative=False)
    assert len(bank.add(bank).shots) == 2


def test_a_negative_becomes_a_positive_and_back_the_newer_verdict_wins():
    bank = _bank()
    label = _from("sha-1", 17, 500, 7)
    notes = []
    negative = bank.add(_part([label], [17], [dict(CAT)], negative=True))
    assert negative.holds(label, negative=True) and not negative.holds(label, negative=False)
    positive = negative.add(_part([label], [17], [dict(CAT)]), say=notes.append)
    assert positive.negatives_per_class() == {} and positive.shots_per_class() == {"cat": 3, "dog": 1}
    assert notes == [
        "annotation 500 of image 7 (/a/7.jpg) was a negative of 'cat' and is now a positive: the newer "
        "verdict replaces the older"
    ]
    again = positive.add(_part([label], [17], [dict(CAT)], negative=True), say=notes.append)
    assert again.negatives_per_class() == {"cat": 1} and again.shots_per_class() == {"cat": 2, "dog": 1}
    assert "was a positive of 'cat' and is now a negative" in notes[-1]
    np.testing.assert_array_equal(again.shot_features[:3], bank.shot_features), "the other shots are untouched"


def test_a_relabelled_label_is_a_positive_of_one_class_and_a_negative_of_another():
    label = _from("dataset:d", 18, "pred-1", "sample-1")
    positive = _bank().add(_part([label], [18], [dict(DOG)]))
    both = positive.add(_part([{**label, "class_id": 17}], [17], [dict(CAT)], negative=True))
    assert both.shots_per_class() == {"cat": 2, "dog": 2} and both.negatives_per_class() == {"cat": 1}
    assert both.add(_part([label], [18], [dict(DOG)])) is both


def test_a_positive_replaced_by_its_negative_must_leave_its_class_a_positive():
    label = _shot(18, 102, 2)  # the dog's only shot
    with pytest.raises(BankError, match="negative shots only.*dog"):
        _bank().add(_part([label], [18], [dict(DOG)], negative=True))


@pytest.mark.parametrize("source", [5, "", ["sha"]])
def test_a_shot_source_must_be_a_string(source):
    with pytest.raises(BankError, match="shot 1: source must be a non-empty string"):
        _bank(shots=[_shot(17, 101, 1), {**_shot(18, 102, 2), "source": source}, _shot(17, 103, 3)])


def test_teach_turns_a_negative_into_a_positive_and_back():
    """``ntt.bank.teach`` asks the bank (``holds``): a label taught as a negative is taught as a positive later."""
    from oracle_scenes import DOG as LOOK_DOG
    from oracle_scenes import LookEncoder, look_scene

    from ntt.bank.encoder import build_bank
    from ntt.bank.teach import teach
    from ntt.config import get_config
    from ntt.types import Reference

    cfg = get_config("paper", {"model": {"device": "cpu"}})
    image, masks = look_scene([(60, 0, 0), (60, 2, 2), (180, 0, 3)])

    def ref(k):
        return Reference(image, LOOK_DOG, "dog", masks[k], image_id="img", annotation_id=k, extra={"source": "s"})

    bank = build_bank([ref(0), ref(1)], cfg, encoder=LookEncoder())
    negative = teach(bank, [], [ref(2)], cfg, encoder=LookEncoder())
    assert negative.negatives_per_class() == {"dog": 1}
    assert teach(negative, [], [ref(2)], cfg, encoder=LookEncoder()) is negative
    positive = teach(negative, [ref(2)], [], cfg, encoder=LookEncoder())
    assert positive.negatives_per_class() == {} and positive.shots_per_class() == {"dog": 3}
    assert teach(positive, [], [ref(1)], cfg, encoder=LookEncoder()).shots_per_class() == {"dog": 2}


@pytest.mark.parametrize(
    "ann_ids, class_names, kept_anns, kept_classes",
    [
        ([101], [], [102, 103], [17, 18]),
        (["101"], [], [102, 103], [17, 18]),  # ids compared as strings (JSON round trips)
        ([102], [], [101, 103], [17]),  # dog has no shot left: dropped
        ([101, 103], [], [102], [18]),
        ([], ["cat"], [102], [18]),
        ([], ["dog"], [101, 103], [17]),
        ([103], ["dog"], [101], [17]),
        ([999], ["horse"], [101, 102, 103], [17, 18]),  # unknown ids/names: nothing removed
    ],
)
def test_remove(ann_ids, class_names, kept_anns, kept_classes):
    bank = _bank()
    out = bank.remove(annotation_ids=ann_ids, class_names=class_names)
    assert [s["annotation_id"] for s in out.shots] == kept_anns
    assert out.class_ids == kept_classes
    assert len(out.shot_features) == len(out.shot_class_ids) == len(kept_anns)
    assert set(out.shot_class_ids.tolist()) == set(kept_classes)
    assert len(bank.shots) == 3  # the original is untouched


def test_remove_keeps_features_aligned():
    out = _bank().remove(annotation_ids=[102])
    np.testing.assert_array_equal(out.shot_features, [[3, 0, 0], [3, 8, 0]])
    np.testing.assert_allclose(out.class_prototypes(), [[0.6, 0.8, 0.0]], atol=1e-7)


# ---- check_encoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size, weights, fingerprint, ok",
    [
        ("vit_large_patch14_dinov2", 518, "official", "sha256:aa", True),
        ("vit_large_patch14_dinov2", "518", "official", "sha256:aa", True),
        # the same weights read from another file format: same fingerprint, accepted
        ("vit_large_patch14_dinov2", 518, "checkpoint:model.safetensors", "sha256:aa", True),
        ("vit_small_patch14_dinov2", 518, "official", "sha256:aa", False),
        ("vit_large_patch14_dinov2", 224, "official", "sha256:aa", False),
        # a file of the same name holding other weights: refused
        ("vit_large_patch14_dinov2", 518, "official", "sha256:bb", False),
    ],
)
def test_check_encoder(name, size, weights, fingerprint, ok):
    bank = _bank(encoder={**ENCODER, "fingerprint": "sha256:aa"})
    target = {"name": name, "image_size": size, "weights": weights, "fingerprint": fingerprint}
    if ok:
        bank.check_encoder(target)
    else:
        with pytest.raises(BankError, match=f"{weights}.*{fingerprint[:12]}"):
            bank.check_encoder(target)


# ---- persistence -----------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    bank = _bank()
    path = bank.save(tmp_path / "bank.safetensors")
    assert path == tmp_path / "bank.safetensors"
    loaded = MemoryBank.load(path)
    np.testing.assert_array_equal(loaded.shot_features, bank.shot_features)
    assert loaded.shot_features.dtype == np.float32
    np.testing.assert_array_equal(loaded.shot_class_ids, bank.shot_class_ids)
    assert loaded.shot_class_ids.dtype == np.int64
    assert loaded.classes == bank.classes
    assert loaded.shots == bank.shots
    assert loaded.encoder == bank.encoder
    assert loaded.info == bank.info
    np.testing.assert_array_equal(loaded.class_prototypes(), bank.class_prototypes())


def test_save_creates_folder_overwrites_and_leaves_no_temp_files(tmp_path):
    folder = tmp_path / "a" / "b"
    path = _bank().save(folder / "bank.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["bank.safetensors"]
    smaller = _bank().remove(class_names=["dog"])
    smaller.save(path)
    assert sorted(p.name for p in folder.iterdir()) == ["bank.safetensors"]
    assert MemoryBank.load(path).class_names == ["cat"]


def test_failed_save_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    import ntt.io.atomic as atomic_mod

    path = _bank().save(tmp_path / "bank.safetensors")
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_mod.os, "replace", boom)
    with pytest.raises(OSError):
        _bank().remove(class_names=["dog"]).save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors"]
    assert path.read_bytes() == before


def test_bank_size_on_disk(tmp_path):
    rng = np.random.default_rng(0)
    classes = [{"id": i + 1, "name": f"class {i + 1}"} for i in range(20)]
    ids = np.repeat(np.arange(1, 21), 30)
    shots = [
        {
            "image_id": 100000 + k,
            "image_path": f"/data/coco/train2017/{100000 + k:012d}.jpg",
            "annotation_id": 2000000 + k,
            "class_id": int(c),
        }
        for k, c in enumerate(ids)
    ]
    bank = MemoryBank(
        classes=classes,
        shot_features=rng.standard_normal((600, 1024)).astype(np.float32),
        shot_class_ids=ids,
        shots=shots,
        encoder={**ENCODER, "dim": 1024},
    )
    path = bank.save(tmp_path / "big.safetensors")
    assert path.stat().st_size <= 3_000_000
    assert MemoryBank.load(path).shots_per_class() == {f"class {i + 1}": 30 for i in range(20)}


def test_tampered_tensor_data_fails_checksum(tmp_path):
    path = _bank().save(tmp_path / "bank.safetensors")
    raw = bytearray(path.read_bytes())
    header_len, _ = _split(bytes(raw))
    raw[8 + header_len + 5] ^= 0x01  # inside shot_features or shot_class_ids
    path.write_bytes(bytes(raw))
    with pytest.raises(BankError, match="checksum"):
        MemoryBank.load(path)


@pytest.mark.parametrize("keep", [0, 4, 7, 60, -1, -20])
def test_truncated_file(tmp_path, keep):
    path = _bank().save(tmp_path / "bank.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(BankError):
        MemoryBank.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(BankError, match="not found"):
        MemoryBank.load(tmp_path / "nope.safetensors")


def _saved_meta(tmp_path) -> dict:
    """The metadata of a genuine bank file (valid checksum for ``_bank()``'s tensors)."""
    _, header = _split(_bank().save(tmp_path / "genuine.safetensors").read_bytes())
    return header["__metadata__"]


@pytest.mark.parametrize(
    "tensors, metadata",
    [
        pytest.param({"x": np.zeros(3, np.float32)}, None, id="no-metadata"),
        pytest.param({"x": np.zeros(3, np.float32)}, {"format": "pt"}, id="foreign-metadata"),
        pytest.param(
            {"shot_features": np.zeros((1, 3), np.float32), "shot_class_ids": np.zeros(1, np.int64)},
            {"ntt_bank": "{not json"},
            id="bad-json",
        ),
        pytest.param({"shot_features": np.zeros((1, 3), np.float32)}, "BANK", id="missing-tensor"),
        pytest.param(
            {
                "shot_features": np.zeros((3, 3), np.float32),
                "shot_class_ids": np.zeros(3, np.int64),
                "extra": np.zeros(1, np.float32),
            },
            "BANK",
            id="extra-tensor",
        ),
        pytest.param(
            {"shot_features": np.zeros((1, 3), np.float32), "shot_class_ids": np.zeros(1, np.int64)},
            {"ntt_bank": "[1, 2]"},
            id="metadata-not-an-object",
        ),
    ],
)
def test_not_an_ntt_bank(tmp_path, tensors, metadata):
    if metadata == "BANK":
        metadata = _saved_meta(tmp_path)
    path = tmp_path / "other.safetensors"
    path.write_bytes(st_save(tensors, metadata=metadata))
    with pytest.raises(BankError, match="not a valid ntt bank"):
        MemoryBank.load(path)


def _rewrite_meta(path, edit, sign=True):
    """Rewrite a bank file's JSON header after ``edit``; ``sign``: with a checksum that matches the edit
    (so the structural checks are what is tested), else with the old one (a tampered file)."""
    raw = path.read_bytes()
    _, header = _split(raw)
    meta = json.loads(header["__metadata__"]["ntt_bank"])
    edit(meta)
    bank = _bank()
    if sign:
        unsigned = {k: v for k, v in meta.items() if k != "checksum"}
        meta["checksum"] = _digest(unsigned, bank.shot_features, bank.shot_class_ids)
    path.write_bytes(
        st_save(
            {"shot_features": bank.shot_features, "shot_class_ids": bank.shot_class_ids},
            metadata={"ntt_bank": json.dumps(meta)},
        )
    )


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None, str(FORMAT_VERSION)])
def test_wrong_format_version(tmp_path, version):
    path = _bank().save(tmp_path / "bank.safetensors")
    _rewrite_meta(path, lambda meta: meta.update(format_version=version))
    with pytest.raises(BankError, match="version"):
        MemoryBank.load(path)


def test_rewritten_file_with_valid_metadata_loads(tmp_path):
    # Guards the helpers above: an unmodified rewrite must load, so the failures are due to the edits.
    path = _bank().save(tmp_path / "bank.safetensors")
    _rewrite_meta(path, lambda meta: None)
    assert MemoryBank.load(path).class_names == ["cat", "dog"]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda meta: meta.pop("classes"), id="no-classes"),
        pytest.param(lambda meta: meta.pop("shots"), id="no-shots"),
        pytest.param(lambda meta: meta.pop("encoder"), id="no-encoder"),
        pytest.param(lambda meta: meta["encoder"].update(dim=4), id="dim-mismatch"),
        pytest.param(lambda meta: meta.update(shots=meta["shots"][:2]), id="too-few-shots"),
        pytest.param(lambda meta: meta.update(classes=[{"id": 17, "name": "cat"}]), id="class-missing"),
        pytest.param(lambda meta: meta.update(classes=[{"name": "cat"}]), id="class-without-id"),
        pytest.param(lambda meta: meta.update(classes="cat,dog"), id="classes-not-a-list"),
    ],
)
def test_incomplete_or_inconsistent_metadata(tmp_path, edit):
    path = _bank().save(tmp_path / "bank.safetensors")
    _rewrite_meta(path, edit)
    with pytest.raises(BankError):
        MemoryBank.load(path)


def test_checksum_of_other_tensors(tmp_path):
    # Valid structure but features replaced (same shapes) without updating the checksum.
    path = _bank().save(tmp_path / "bank.safetensors")
    _, header = _split(path.read_bytes())
    bank = _bank()
    path.write_bytes(
        st_save(
            {"shot_features": bank.shot_features + 1, "shot_class_ids": bank.shot_class_ids},
            metadata=header["__metadata__"],
        )
    )
    with pytest.raises(BankError, match="checksum"):
        MemoryBank.load(path)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda meta: meta["classes"][0].update(name="lion"), id="class-name"),
        pytest.param(lambda meta: meta["encoder"].update(name="dinov2_vits14"), id="encoder-name"),
        pytest.param(lambda meta: meta["encoder"].update(fingerprint="sha256:other"), id="encoder-weights"),
        pytest.param(lambda meta: meta["shots"][0].update(annotation_id=999), id="shot-provenance"),
        pytest.param(lambda meta: meta["info"].update(seed=1), id="info"),
    ],
)
def test_edited_header_fails_checksum(tmp_path, edit):
    # Before format 2 the checksum covered the tensors only: an edited class name loaded silently.
    path = _bank().save(tmp_path / "bank.safetensors")
    _rewrite_meta(path, edit, sign=False)
    with pytest.raises(BankError, match="checksum"):
        MemoryBank.load(path)


def test_header_whitespace_and_key_order_do_not_matter(tmp_path):
    path = _bank().save(tmp_path / "bank.safetensors")
    raw = path.read_bytes()
    _, header = _split(raw)
    meta = json.loads(header["__metadata__"]["ntt_bank"])
    reordered = json.dumps(dict(reversed(list(meta.items()))), indent=3)
    bank = _bank()
    tensors = {"shot_features": bank.shot_features, "shot_class_ids": bank.shot_class_ids}
    path.write_bytes(st_save(tensors, metadata={"ntt_bank": reordered}))
    assert MemoryBank.load(path).class_names == ["cat", "dog"]


def test_empty_bank_is_refused_when_written_and_explained_when_used(tmp_path):
    empty = _bank().remove(class_names=["cat", "dog"])
    assert len(empty.shots) == 0 and empty.classes == []
    with pytest.raises(BankError, match="empty bank"):
        empty.save(tmp_path / "empty.safetensors")
    assert not (tmp_path / "empty.safetensors").exists()
    with pytest.raises(BankError, match="bank is empty"):
        empty.class_prototypes()


def test_fingerprint_follows_content_not_provenance(tmp_path):
    bank = _bank()
    loaded = MemoryBank.load(bank.save(tmp_path / "bank.safetensors"))
    assert loaded.fingerprint == bank.fingerprint and len(bank.fingerprint) == 64
    assert _bank(info={"other": 1}).fingerprint == bank.fingerprint
    assert bank.remove(annotation_ids=[103]).fingerprint != bank.fingerprint
    renamed = _bank(classes=[dict(CAT), {"id": 18, "name": "puppy"}])
    assert renamed.fingerprint != bank.fingerprint
