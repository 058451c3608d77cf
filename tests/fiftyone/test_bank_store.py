"""Bank files never collide: every bank version has its own file in a folder of its dataset (by id, not by
name), so renaming, rebuilding, overwriting, deleting or cloning touches exactly one bank."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

import ntt.fo as nfo


def _build(ds, name, sample_index, config, **kwargs):
    """A bank from the instances of one sample (untagged afterwards, so the next build picks its own)."""
    refs = ds.skip(sample_index).limit(1)
    nfo.mark_references(refs)
    try:
        return nfo.build_bank(ds, name, label_field="gt", config=config, **kwargs)
    finally:
        nfo.unmark_references(refs)


def _same(a, b) -> bool:
    return a.shots == b.shots and np.array_equal(a.shot_features, b.shot_features)


def _files(ds) -> list[Path]:
    return sorted(nfo.forms.bank_dir(ds).glob("*.safetensors"))


def test_rename_then_rebuild_under_the_old_name_keeps_both(dataset, random_config):
    first = _build(dataset, "a", 0, random_config)
    nfo.rename_bank(dataset, "a", "b")
    second = _build(dataset, "a", 5, random_config)
    assert not _same(first, second)
    assert _same(nfo.load_bank(dataset, "b"), first), "the renamed bank must keep its own content"
    assert _same(nfo.load_bank(dataset, "a"), second)
    assert nfo.get_bank_info(dataset, "a")["bank_path"] != nfo.get_bank_info(dataset, "b")["bank_path"]


def test_deleting_one_of_two_banks_keeps_the_other(dataset, random_config):
    first = _build(dataset, "a", 0, random_config)
    nfo.rename_bank(dataset, "a", "b")
    _build(dataset, "a", 5, random_config)
    gone = Path(nfo.get_bank_info(dataset, "a")["bank_path"])
    nfo.delete_bank(dataset, "a")
    assert not gone.exists() and nfo.list_banks(dataset) == ["b"]
    assert _same(nfo.load_bank(dataset, "b"), first)
    assert _files(dataset) == [Path(nfo.get_bank_info(dataset, "b")["bank_path"])]


def test_datasets_with_same_looking_names_keep_their_own_banks(dataset, random_config):
    suffix = uuid.uuid4().hex[:6]
    one = dataset.clone(f"données-{suffix}")
    two = dataset.clone(f"donn_es-{suffix}")
    try:
        bank_one = _build(one, "b", 0, random_config)
        bank_two = _build(two, "b", 5, random_config)
        assert _same(nfo.load_bank(one, "b"), bank_one) and _same(nfo.load_bank(two, "b"), bank_two)
        nfo.delete_bank(two, "b")
        assert _same(nfo.load_bank(one, "b"), bank_one)
        assert nfo.forms.bank_dir(one) != nfo.forms.bank_dir(two)
    finally:
        one.delete()
        two.delete()


def test_overwrite_writes_a_new_file_and_keeps_exactly_one(dataset, random_config):
    _build(dataset, "a", 0, random_config)
    old = Path(nfo.get_bank_info(dataset, "a")["bank_path"])
    second = _build(dataset, "a", 5, random_config, overwrite=True)
    new = Path(nfo.get_bank_info(dataset, "a")["bank_path"])
    assert new != old and not old.exists(), "the old version is removed once the record points at the new one"
    assert _files(dataset) == [new]
    assert _same(nfo.load_bank(dataset, "a"), second)


def test_a_clones_bank_survives_the_source_deleting_its_own(dataset, random_config):
    first = _build(dataset, "a", 0, random_config)
    clone = dataset.clone()
    try:
        assert nfo.list_banks(clone) == ["a"]
        nfo.delete_bank(dataset, "a")  # the clone's copy of the run still points at the file
        assert _same(nfo.load_bank(clone, "a"), first)
        nfo.delete_bank(clone, "a")  # the last record gone: the file goes too
        assert _files(dataset) == []
    finally:
        clone.delete()


def test_a_renamed_dataset_and_a_new_one_under_its_old_name_keep_their_banks(dataset, random_config):
    old_name = dataset.name
    first = _build(dataset, "a", 0, random_config)
    dataset.name = f"renamed-{uuid.uuid4().hex[:6]}"
    newcomer = dataset.clone(old_name)
    try:
        newcomer.delete_runs()
        second = _build(newcomer, "a", 5, random_config)
        assert _same(nfo.load_bank(dataset, "a"), first) and _same(nfo.load_bank(newcomer, "a"), second)
        assert nfo.forms.bank_dir(dataset) != nfo.forms.bank_dir(newcomer)
    finally:
        newcomer.delete()


def test_foreign_runs_are_never_overwritten(dataset, random_config):
    dataset.register_run("other", dataset.init_run(kind="not a bank"))
    nfo.mark_references(dataset.limit(1))
    with pytest.raises(nfo.NTTFiftyOneError, match="not an NTT bank"):
        nfo.build_bank(dataset, "other", label_field="gt", config=random_config, overwrite=True)
    assert "other" in dataset.list_runs()


def test_schema_lock_uses_filelock_not_fcntl():
    import ast

    source = Path(nfo.__file__).parent
    for path in source.glob("*.py"):
        imported = {
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        }
        assert "fcntl" not in imported, f"{path.name} imports fcntl (no Windows)"
